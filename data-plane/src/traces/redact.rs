//! Captured bodies: JSON fields redacted at any depth, then the gateway's cap.
//!
//! A body is captured as text. JSON (every body of the chat, completions, embeddings and
//! Responses APIs, and their answers) is parsed, each member whose key the gateway redacts has
//! its value — string, number, object or array alike — replaced by `"[REDACTED]"`, and the
//! result is serialized compactly. Text that is not JSON is kept as it is only when the
//! gateway redacts nothing (its fields could not be found in it otherwise); binary bodies
//! (multipart audio and images) are never kept. Redaction happens before the cap, so a cut
//! never exposes what a whole body would have hidden.

use modelgw_model::traces::REDACTED;
use serde_json::Value;

use super::CompiledTraces;

/// Largest body parsed for capture: 8 MiB, the data plane's read-ahead cap, far above any
/// chat request or answer (a parse costs about 3 ms per MiB, on the request path, with
/// capture on only). Larger bodies are recorded by size only.
pub(crate) const MAX_CAPTURE_PARSE_BYTES: usize = 8 * 1024 * 1024;

/// A captured body: the text, and whether it was cut (or left out) by a bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Captured {
    pub text: String,
    pub truncated: bool,
}

/// Replaces the value of every member whose key `traces` redacts, at any depth. Depth is
/// bounded by serde_json's parser (128 levels), so the recursion is too.
pub(crate) fn redact(value: &mut Value, traces: &CompiledTraces) {
    match value {
        Value::Object(map) => {
            for (key, member) in map.iter_mut() {
                if traces.redacts(key) {
                    *member = Value::String(REDACTED.to_owned());
                } else {
                    redact(member, traces);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                redact(item, traces);
            }
        }
        _ => {}
    }
}

/// `value` redacted, serialized and capped.
pub(crate) fn capture_value(mut value: Value, traces: &CompiledTraces) -> Captured {
    redact(&mut value, traces);
    capped(value.to_string(), traces.payload_cap)
}

/// `bytes` as the trace keeps them (see the module docs); `None` for an empty body.
pub(crate) fn capture_body(bytes: &[u8], traces: &CompiledTraces) -> Option<Captured> {
    if bytes.is_empty() {
        return None;
    }
    if bytes.len() > MAX_CAPTURE_PARSE_BYTES {
        return Some(left_out(format!("[not captured: {} bytes]", bytes.len())));
    }
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        return Some(capture_value(value, traces));
    }
    Some(match std::str::from_utf8(bytes) {
        Ok(text) if traces.redact_fields.is_empty() => capped(text.to_owned(), traces.payload_cap),
        Ok(_) => left_out(format!(
            "[not captured: {} bytes of text that is not JSON, so fields cannot be redacted]",
            bytes.len()
        )),
        Err(_) => left_out(format!("[not captured: {} bytes of binary data]", bytes.len())),
    })
}

fn left_out(text: String) -> Captured {
    Captured { text, truncated: true }
}

/// `text` cut to at most `cap` bytes on a character boundary.
pub(crate) fn capped(mut text: String, cap: usize) -> Captured {
    if text.len() <= cap {
        return Captured { text, truncated: false };
    }
    let mut at = cap;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.truncate(at);
    Captured { text, truncated: true }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use modelgw_model::traces::TraceSettings;
    use serde_json::json;

    pub(crate) fn traces(fields: &[&str], cap: u32) -> CompiledTraces {
        let settings = TraceSettings {
            enabled: true,
            capture_payload: true,
            redact_fields: fields.iter().map(|f| f.to_string()).collect(),
            max_payload_bytes: Some(cap),
        };
        let compiled = CompiledTraces::compile(&settings).expect("enabled");
        std::sync::Arc::try_unwrap(compiled).expect("one owner")
    }

    #[test]
    fn named_fields_are_redacted_at_any_depth_whatever_their_value() {
        let t = traces(&["api_key", "SSN", "secret"], 64 * 1024);
        let body = json!({
            "api_key": "sk-1",
            "messages": [
                {"role": "user", "content": "hi", "metadata": {"ssn": "123-45-6789"}},
                {"role": "tool", "content": [{"type": "text", "secret": {"nested": [1, 2]}}]}
            ],
            "user": {"profile": {"deep": [[{"Api_Key": 42}]]}},
            "keep": "api_key is only a key's name here"
        });
        let captured = capture_body(body.to_string().as_bytes(), &t).expect("captured");
        assert!(!captured.truncated);
        let out: Value = serde_json::from_str(&captured.text).expect("json");
        assert_eq!(out["api_key"], REDACTED);
        assert_eq!(out["messages"][0]["metadata"]["ssn"], REDACTED);
        assert_eq!(out["messages"][1]["content"][0]["secret"], REDACTED);
        assert_eq!(out["user"]["profile"]["deep"][0][0]["Api_Key"], REDACTED);
        assert_eq!(out["messages"][0]["content"], "hi");
        assert_eq!(out["keep"], "api_key is only a key's name here");
        for secret in ["sk-1", "123-45-6789", "nested"] {
            assert!(!captured.text.contains(secret), "{secret} in {}", captured.text);
        }
    }

    #[test]
    fn bodies_are_cut_at_the_cap_after_redaction_on_a_character_boundary() {
        let t = traces(&["password"], 16);
        let captured =
            capture_body(br#"{"password":"hunter2hunter2hunter2","x":"aaaa"}"#, &t).expect("c");
        assert!(captured.truncated);
        assert_eq!(captured.text, r#"{"password":"[RE"#);
        // "é" is two bytes: a cut inside it moves before it.
        assert_eq!(capped("aé".to_owned(), 2), Captured { text: "a".into(), truncated: true });
        assert_eq!(capped("aé".to_owned(), 3), Captured { text: "aé".into(), truncated: false });
    }

    #[test]
    fn text_is_kept_only_when_nothing_is_redacted_and_binary_never() {
        let plain = traces(&[], 1024);
        assert_eq!(capture_body(b"not json", &plain).map(|c| c.text), Some("not json".into()));
        let redacting = traces(&["x"], 1024);
        let c = capture_body(b"x=secret", &redacting).expect("marker");
        assert!(c.truncated && !c.text.contains("secret"), "{c:?}");
        let c = capture_body(&[0xff, 0xfe, 0x00], &plain).expect("marker");
        assert_eq!(c.text, "[not captured: 3 bytes of binary data]");
        assert_eq!(capture_body(b"", &plain), None);
        let huge = vec![b' '; MAX_CAPTURE_PARSE_BYTES + 1];
        assert!(capture_body(&huge, &plain).expect("marker").text.starts_with("[not captured"));
    }
}
