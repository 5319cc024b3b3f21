//! Property tests of what a hostile client or upstream controls: route parsing, the `model`
//! probe and rewrite, the header filter and SSE framing. Bounded case counts keep them fast
//! in CI.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;

use super::operations::ALL;
use super::rewrite::{BodyRefusal, ModelProbe, probe_model, splice};
use super::route::{Route, parse_route};
use super::sse::SseFramer;
use super::upstream::{
    CLIENT_ADDRESS_HEADERS, FORWARDED_HEADERS, FORWARDED_PREFIXES, IDENTITY_HEADERS,
    filtered_query, upstream_headers, upstream_query,
};

/// Whether `text` ends with a blank line: a line end (CRLF, LF or CR) right after another.
fn ends_with_blank_line(text: &[u8]) -> bool {
    let rest = text
        .strip_suffix(b"\r\n")
        .or_else(|| text.strip_suffix(b"\n"))
        .or_else(|| text.strip_suffix(b"\r"));
    rest.is_some_and(|rest| rest.is_empty() || rest.ends_with(b"\n") || rest.ends_with(b"\r"))
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("openai".to_owned()),
        Just("v1".to_owned()),
        Just("deployments".to_owned()),
        Just("chat".to_owned()),
        Just("completions".to_owned()),
        Just("files".to_owned()),
        Just("responses".to_owned()),
        Just("models".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just(String::new()),
        "[a-zA-Z0-9_.%-]{1,8}",
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::HEAD),
        Just(Method::PATCH),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the path: a served route is exactly an operation of the table at its own path,
    /// with its method, and no dot segment ever gets through.
    #[test]
    fn routes_are_served_only_as_the_table_says(
        segments in prop::collection::vec(segment(), 0..7),
        method in method(),
    ) {
        let path = format!("/{}", segments.join("/"));
        if let Route::Call(call) = parse_route(&method, &path) {
            prop_assert_eq!(&method, &call.operation.method());
            // A call on a stored response carries its id: `responses/{id}[/cancel|/input_items]`.
            let tail = match (call.object, call.operation.object_suffix()) {
                (Some(id), Some(suffix)) => format!("{}/{id}{suffix}", call.operation.path()),
                (None, None) => call.operation.path().to_owned(),
                (object, suffix) => {
                    return Err(TestCaseError::fail(format!("{path}: {object:?} with {suffix:?}")));
                }
            };
            prop_assert!(path.ends_with(&tail), "{path}");
            prop_assert!(!segments.iter().any(|s| s == ".." || s.eq_ignore_ascii_case("%2e")));
            let prefix = match (call.is_v1(), call.deployment) {
                (true, Some(d)) => format!("/openai/v1/deployments/{d}/"),
                (true, None) => "/openai/v1/".to_owned(),
                (false, Some(d)) => format!("/openai/deployments/{d}/"),
                (false, None) => "/openai/".to_owned(),
            };
            prop_assert_eq!(&path, &format!("{prefix}{tail}"));
        }
    }

    /// Every operation at every surface it is served on parses back to itself.
    #[test]
    fn every_operation_round_trips(index in 0..ALL.len(), deployment in "[a-z0-9-]{1,12}") {
        let op = ALL[index];
        let path = format!("/openai/v1/deployments/{deployment}/{}", op.path());
        if let Route::Call(call) = parse_route(&op.method(), &path) {
            prop_assert_eq!(call.operation, op);
            prop_assert_eq!(call.deployment, Some(deployment.as_str()));
        }
    }

    /// Any bytes: the probe never panics, and whatever it accepts is one JSON object whose
    /// top-level `model` is the one it found.
    #[test]
    fn the_probe_accepts_only_one_object_and_finds_its_model(body in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(probe) = probe_model(&body) {
            let value: serde_json::Value = serde_json::from_slice(&body).expect("accepted bodies are JSON");
            prop_assert!(value.is_object());
            match probe {
                ModelProbe::Present(field) => {
                    let found: serde_json::Value = serde_json::from_slice(&body[field.span]).expect("the span is a value");
                    prop_assert_eq!(Some(&found), value.get("model"));
                }
                ModelProbe::Absent => prop_assert!(value.get("model").is_none()),
                ModelProbe::Unread => prop_assert!(false, "JSON bodies are always read"),
            }
        }
    }

    /// Objects built from parts: the probe finds `model` wherever it is, a second `model` is
    /// always refused, and the splice changes the top-level `model` and nothing else.
    #[test]
    fn the_rewrite_changes_only_the_top_level_model(
        before in prop::collection::btree_map("[a-l]{1,6}", any::<i32>(), 0..4),
        after in prop::collection::btree_map("[n-z]{1,6}", "[ -~]{0,8}", 0..4),
        model in "[ -~]{0,12}",
        deployment in "[a-zA-Z0-9._-]{1,16}",
        ws in "[ \t\r\n]{0,2}",
        duplicate in any::<bool>(),
    ) {
        let mut members: Vec<String> = before.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        members.push(format!("\"model\"{ws}:{ws}{}", serde_json::to_string(&model).expect("json")));
        members.extend(after.iter().map(|(k, v)| format!("\"{k}\":{}", serde_json::to_string(v).expect("json"))));
        if duplicate {
            members.push("\"model\":\"other\"".to_owned());
        }
        let body = format!("{ws}{{{}}}{ws}", members.join(","));
        match probe_model(body.as_bytes()) {
            Err(BodyRefusal::DuplicateModel) => prop_assert!(duplicate),
            Ok(ModelProbe::Present(field)) => {
                prop_assert!(!duplicate);
                prop_assert_eq!(field.value.as_deref(), Some(model.as_str()));
                let replacement = serde_json::to_vec(&deployment).expect("json");
                let out = splice(&Bytes::from(body.clone()), field.span, &replacement);
                let mut original: serde_json::Value = serde_json::from_str(&body).expect("json");
                original["model"] = serde_json::Value::String(deployment);
                let rewritten: serde_json::Value = serde_json::from_slice(&out).expect("json");
                prop_assert_eq!(rewritten, original);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// Whatever headers a client sends, only allowlisted names go upstream — never a
    /// credential, cookie, proxy or platform header.
    #[test]
    fn only_allowlisted_headers_are_forwarded(
        names in prop::collection::vec(prop_oneof![
            "[a-z][a-z0-9-]{0,20}",
            Just("api-key".to_owned()),
            Just("authorization".to_owned()),
            Just("cookie".to_owned()),
            Just("x-forwarded-for".to_owned()),
            Just("ocp-apim-subscription-key".to_owned()),
            Just("metadata".to_owned()),
            Just("x-stainless-lang".to_owned()),
            Just("openai-beta".to_owned()),
            Just("openai-organization".to_owned()),
            Just("openai-project".to_owned()),
            Just("connection".to_owned()),
        ], 0..12),
        forward_address in any::<bool>(),
    ) {
        let mut client = HeaderMap::new();
        for name in &names {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                client.append(name, HeaderValue::from_static("v"));
            }
        }
        let out = upstream_headers(&client, &HeaderValue::from_static("id"), forward_address);
        prop_assert!(
            IDENTITY_HEADERS.iter().all(|name| !out.contains_key(*name)),
            "no header naming the account to bill goes upstream"
        );
        for name in out.keys() {
            let name = name.as_str();
            let allowed = ["accept", "accept-encoding", "accept-language", "content-type", "user-agent", "x-ms-client-request-id"].contains(&name)
                || FORWARDED_HEADERS.contains(&name)
                || FORWARDED_PREFIXES.iter().any(|p| name.starts_with(p))
                || (forward_address && CLIENT_ADDRESS_HEADERS.contains(&name));
            prop_assert!(allowed, "{name} was forwarded");
        }
    }

    /// The query filter's shortcut for one `api-version` pair answers exactly what the
    /// general pass over every pair answers.
    #[test]
    fn the_query_shortcut_agrees_with_the_general_filter(
        version in prop_oneof!["[a-z0-9-]{0,12}", "[a-z0-9%+&=-]{0,12}", Just("k3y".to_owned())],
        rest in prop_oneof![Just(String::new()), "&[a-z_-]{1,8}=[a-z0-9%-]{0,8}"],
        key in prop_oneof![Just(None), Just(Some(String::new())), Just(Some("k3y".to_owned()))],
    ) {
        let query = format!("api-version={version}{rest}");
        prop_assert_eq!(
            upstream_query(Some(&query), key.as_deref()),
            filtered_query(&query, key.as_deref())
        );
    }

    /// SSE framing of any stream cut into any chunks: what goes out is always whole events (a
    /// prefix of the input ending at a blank line), the rest comes out at the end, and nothing
    /// is held beyond the cap.
    #[test]
    fn sse_framing_emits_whole_events_and_stays_bounded(
        events in prop::collection::vec(("[ -~]{0,40}", prop_oneof![Just("\n\n"), Just("\r\n\r\n"), Just("\r\r"), Just("\n")]), 0..12),
        cuts in prop::collection::vec(0usize..400, 0..8),
        cap in 8usize..200,
    ) {
        let input: String = events.iter().map(|(data, end)| format!("data: {data}{end}")).collect();
        let bytes = input.as_bytes();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut framer = SseFramer::new(cap);
        let mut out = Vec::new();
        let mut start = 0;
        let mut failed = false;
        for cut in cuts {
            match framer.push(Bytes::copy_from_slice(&bytes[start..cut])) {
                Ok(events) => {
                    if !events.is_empty() {
                        out.extend_from_slice(&events);
                        prop_assert!(ends_with_blank_line(&out), "{:?}", String::from_utf8_lossy(&out));
                    }
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
            start = cut;
        }
        if !failed {
            out.extend_from_slice(&framer.finish().unwrap_or_default());
            prop_assert_eq!(&out[..], bytes, "everything comes out, in order");
        } else {
            prop_assert!(bytes.starts_with(&out));
        }
    }
}
