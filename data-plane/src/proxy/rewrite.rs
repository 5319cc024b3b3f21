//! Reading and rewriting the body's top-level `model` without re-serialising the JSON: locate
//! the value's byte span once per request, then splice the endpoint's deployment in per
//! attempt. Bytes outside the span (key order, whitespace, number formats, nested `model`
//! keys) are untouched.
//!
//! Strict, because the gateway and the upstream must read the same `model`: a body the gateway
//! reads `model` from must be exactly one JSON object (JSON whitespace around it, nothing
//! else: no BOM, no second value, no trailing bytes), valid JSON throughout, with at most one
//! top-level `model` member (`"mod\u0065l"` counts: it is the same key once unescaped).
//! Anything else is refused ([`BodyRefusal`], a 400) before an upstream sees it: a parser
//! that keeps the last duplicate, skips a BOM or stops at the first value would otherwise
//! route by a `model` the gateway never checked.
//!
//! The same probe records the span of a top-level `previous_response_id` (at most one, like
//! `model`): the gateway splices the upstream's id in place of the pinned id a client sends
//! there (`proxy/pinning.rs`).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::limits::OutputCap;
use crate::routing_table::CompiledEndpoint;

/// A top-level member of a JSON object body (`model`, `previous_response_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModelField {
    /// Byte range of the value (including quotes for a string).
    pub span: Range<usize>,
    /// The decoded string, or `None` when the value is not a string (e.g. `null`, a number,
    /// a form part that is not UTF-8).
    pub value: Option<String>,
    /// How the value is written: what replaces it must be written the same way.
    pub syntax: ValueSyntax,
}

/// How a `model` value is written in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueSyntax {
    /// A JSON value (a string with its quotes).
    Json,
    /// The text of a multipart/form-data part (`multipart.rs`), as is.
    FormPart,
}

impl ModelField {
    /// The endpoint's deployment written as this value is: a JSON string, or a form part's
    /// text. `None` when it cannot be a form part's text: a line break could end the part (the
    /// admin API refuses control characters in deployments; only a hand-made snapshot has one),
    /// and the gateway never sends a form other than the one it checked.
    pub(crate) fn replacement<'e>(&self, endpoint: &'e CompiledEndpoint) -> Option<&'e [u8]> {
        match self.syntax {
            ValueSyntax::Json => Some(&endpoint.deployment_json),
            ValueSyntax::FormPart => {
                let text = endpoint.deployment.as_bytes();
                (!text.iter().any(|&b| b == b'\r' || b == b'\n')).then_some(text)
            }
        }
    }
}

/// What the body says about `model`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ModelProbe {
    /// The body is not read for `model` (an operation without a body).
    Unread,
    /// A JSON object without a top-level `model`, or a form without a `model` part.
    Absent,
    Present(ModelField),
}

/// Why a JSON body is refused (a 400 in Azure's shape).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BodyRefusal {
    /// Something other than one JSON object (an array, a BOM or other bytes first, empty).
    NotAnObject,
    /// A second top-level `model` member.
    DuplicateModel,
    /// A second top-level `previous_response_id` member.
    DuplicatePreviousResponse,
    /// Not valid JSON, or bytes after the object; serde's message with its position.
    Invalid(String),
}

impl BodyRefusal {
    /// The message of the 400; says where, never echoes the body.
    pub(crate) fn message(&self) -> String {
        match self {
            BodyRefusal::NotAnObject => {
                "The request body must be one JSON object (no byte order mark, nothing before or after it).".to_owned()
            }
            BodyRefusal::DuplicateModel => {
                "The request body has more than one top-level 'model' member.".to_owned()
            }
            BodyRefusal::DuplicatePreviousResponse => {
                "The request body has more than one top-level 'previous_response_id' member."
                    .to_owned()
            }
            BodyRefusal::Invalid(why) => {
                format!("The request body is not one valid JSON object: {why}.")
            }
        }
    }

    /// Low-cardinality reason for logs.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            BodyRefusal::NotAnObject => "not_one_object",
            BodyRefusal::DuplicateModel => "duplicate_model",
            BodyRefusal::DuplicatePreviousResponse => "duplicate_previous_response_id",
            BodyRefusal::Invalid(_) => "invalid_json",
        }
    }
}

/// The markers of the visitor's duplicate-member errors, told apart from serde's own errors.
const DUPLICATE_MODEL: &str = "duplicate top-level `model`";
const DUPLICATE_PREVIOUS_RESPONSE: &str = "duplicate top-level `previous_response_id`";

/// The top-level keys the probe reads (escapes decoded; no allocation for plain keys).
enum Key {
    Model,
    Stream,
    StreamOptions,
    MaxCompletionTokens,
    MaxTokens,
    MaxOutputTokens,
    N,
    PreviousResponseId,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "model" => Key::Model,
                    "stream" => Key::Stream,
                    "stream_options" => Key::StreamOptions,
                    "max_completion_tokens" => Key::MaxCompletionTokens,
                    "max_tokens" => Key::MaxTokens,
                    "max_output_tokens" => Key::MaxOutputTokens,
                    "n" => Key::N,
                    "previous_response_id" => Key::PreviousResponseId,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Whether a streamed answer will carry its token usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum StreamUsage {
    /// Not a streamed request (`stream` is absent or not `true`).
    #[default]
    NotStreamed,
    /// Streamed, without `stream_options`: the gateway may ask for usage itself.
    Unrequested,
    /// Streamed with `stream_options.include_usage: true`: the client asked.
    Requested,
    /// Streamed with `stream_options` that do not ask for usage: left as the client sent it.
    Declined,
}

/// The object's `model` value, raw and borrowed from the body, whether it streams with
/// usage, its completion caps (for the key limits' reservation) and its
/// `previous_response_id`, raw; every other member is skipped (still validated as JSON).
struct Probe<'a>(Option<&'a RawValue>, StreamUsage, OutputCap, Option<&'a RawValue>);

impl<'de> de::Deserialize<'de> for Probe<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Probe<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe<'de>, A::Error> {
                let mut model = None;
                let mut previous = None;
                let mut stream = false;
                let mut options = None;
                let mut cap = OutputCap::default();
                // A whole number, else nothing (the upstream will say what is wrong with it).
                let count = |raw: &RawValue| raw.get().parse::<u64>().ok();
                while let Some(key) = map.next_key()? {
                    match key {
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        Key::Model if model.is_some() => {
                            return Err(de::Error::custom(DUPLICATE_MODEL));
                        }
                        Key::Model => model = Some(map.next_value::<&'de RawValue>()?),
                        Key::PreviousResponseId if previous.is_some() => {
                            return Err(de::Error::custom(DUPLICATE_PREVIOUS_RESPONSE));
                        }
                        Key::PreviousResponseId => {
                            previous = Some(map.next_value::<&'de RawValue>()?);
                        }
                        // The last one counts, as in most parsers; only accounting reads them.
                        Key::Stream => stream = map.next_value::<&'de RawValue>()?.get() == "true",
                        Key::StreamOptions => options = Some(map.next_value::<&'de RawValue>()?),
                        Key::MaxCompletionTokens => {
                            cap.max_completion_tokens = count(map.next_value::<&'de RawValue>()?);
                        }
                        Key::MaxTokens => {
                            cap.max_tokens = count(map.next_value::<&'de RawValue>()?)
                        }
                        Key::MaxOutputTokens => {
                            cap.max_output_tokens = count(map.next_value::<&'de RawValue>()?);
                        }
                        Key::N => cap.n = count(map.next_value::<&'de RawValue>()?),
                    }
                }
                let usage = match (stream, options) {
                    (false, _) => StreamUsage::NotStreamed,
                    (true, None) => StreamUsage::Unrequested,
                    (true, Some(raw)) => {
                        #[derive(serde::Deserialize)]
                        struct Options {
                            include_usage: Option<bool>,
                        }
                        match serde_json::from_str::<Options>(raw.get()) {
                            Ok(Options { include_usage: Some(true) }) => StreamUsage::Requested,
                            _ => StreamUsage::Declined,
                        }
                    }
                };
                Ok(Probe(model, usage, cap, previous))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// The top-level `model` of a body that must be one JSON object; see the module docs.
#[cfg(test)]
pub(crate) fn probe_model(body: &[u8]) -> Result<ModelProbe, BodyRefusal> {
    probe_body(body).map(|probed| probed.model)
}

/// What the strict probe read from a JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProbedBody {
    pub model: ModelProbe,
    /// Whether the body asks for a stream with its usage.
    pub stream_usage: StreamUsage,
    /// Its completion caps.
    pub cap: OutputCap,
    /// Its top-level `previous_response_id` (Responses API), if it has one.
    pub previous_response: Option<ModelField>,
}

/// [`probe_model`], whether the body asks for a stream with its usage, its completion caps and
/// its `previous_response_id`.
pub(crate) fn probe_body(body: &[u8]) -> Result<ProbedBody, BodyRefusal> {
    // JSON's own whitespace only: a BOM or anything else before the object is refused here,
    // and `deserialize_map` alone would also take an array.
    let first = body.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(BodyRefusal::NotAnObject);
    }
    let probe = match serde_json::from_slice::<Probe<'_>>(body) {
        Ok(probe) => probe,
        Err(err) if err.to_string().starts_with(DUPLICATE_MODEL) => {
            return Err(BodyRefusal::DuplicateModel);
        }
        Err(err) if err.to_string().starts_with(DUPLICATE_PREVIOUS_RESPONSE) => {
            return Err(BodyRefusal::DuplicatePreviousResponse);
        }
        Err(err) => return Err(BodyRefusal::Invalid(err.to_string())),
    };
    let Probe(model, stream_usage, cap, previous) = probe;
    let model = match model {
        Some(raw) => ModelProbe::Present(located(body, raw)?),
        None => ModelProbe::Absent,
    };
    let previous_response = previous.map(|raw| located(body, raw)).transpose()?;
    Ok(ProbedBody { model, stream_usage, cap, previous_response })
}

/// The span of a raw value borrowed from `body`, and its decoded string (`None`: not a
/// string).
fn located(body: &[u8], raw: &RawValue) -> Result<ModelField, BodyRefusal> {
    let text = raw.get();
    // The raw value borrows from `body`, so its address gives its offset.
    let start = (text.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    let span = start..start + text.len();
    if body.get(span.clone()) != Some(text.as_bytes()) {
        // Unreachable: a borrowed raw value is a slice of the body.
        return Err(BodyRefusal::Invalid("value not located".to_owned()));
    }
    let value = serde_json::from_str::<Cow<'_, str>>(text).ok().map(Cow::into_owned);
    Ok(ModelField { span, value, syntax: ValueSyntax::Json })
}

/// `body` with `span` replaced by `replacement`.
pub(crate) fn splice(body: &Bytes, span: Range<usize>, replacement: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() - span.len() + replacement.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(replacement);
    out.extend_from_slice(&body[span.end..]);
    out.freeze()
}

/// `body` (a JSON object without `model`) with `"model":<value>` as its first member.
pub(crate) fn insert_model(body: &Bytes, value_json: &[u8]) -> Bytes {
    let Some(open) = body.iter().position(|b| *b == b'{') else { return body.clone() };
    let after = &body[open + 1..];
    let empty = after.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = BytesMut::with_capacity(body.len() + value_json.len() + 10);
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(b"\"model\":");
    out.extend_from_slice(value_json);
    if !empty {
        out.extend_from_slice(b",");
    }
    out.extend_from_slice(after);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(body: &str) -> ModelField {
        match probe_model(body.as_bytes()) {
            Ok(ModelProbe::Present(field)) => field,
            other => panic!("expected a model in {body}: {other:?}"),
        }
    }

    fn rewrite(body: &str, to: &str) -> String {
        let field = present(body);
        let bytes = Bytes::copy_from_slice(body.as_bytes());
        let json = serde_json::to_vec(to).expect("json");
        String::from_utf8(splice(&bytes, field.span, &json).to_vec()).expect("utf8")
    }

    #[test]
    fn replaces_only_the_top_level_model_value() {
        let body = r#"{"messages":[{"role":"user","content":"x","model":"inner"}],"model":"auto","tools":[{"model":"keep"}]}"#;
        assert_eq!(present(body).value.as_deref(), Some("auto"));
        assert_eq!(
            rewrite(body, "gpt-4o-eus"),
            r#"{"messages":[{"role":"user","content":"x","model":"inner"}],"model":"gpt-4o-eus","tools":[{"model":"keep"}]}"#
        );
    }

    #[test]
    fn keeps_whitespace_and_decodes_escapes() {
        let body = "{\n  \"model\" :  \"a\\u0075to\" ,\n  \"n\": 1.50\n}";
        let field = present(body);
        assert_eq!(field.value.as_deref(), Some("auto"), "escapes are decoded for comparison");
        assert_eq!(rewrite(body, "dep"), "{\n  \"model\" :  \"dep\" ,\n  \"n\": 1.50\n}");
    }

    #[test]
    fn escapes_the_replacement() {
        let body = r#"{"model":"auto"}"#;
        assert_eq!(rewrite(body, "we\"ird\\dep"), r#"{"model":"we\"ird\\dep"}"#);
    }

    #[test]
    fn non_string_models_are_present_without_a_value() {
        let field = present(r#"{"model":null}"#);
        assert_eq!(field.value, None);
        assert_eq!(field.span, 9..13);
        assert_eq!(present(r#"{"model":{"a":"auto"}}"#).value, None);
    }

    #[test]
    fn bodies_without_a_model_or_not_one_object() {
        assert_eq!(probe_model(br#"{"messages":[{"model":"x"}]}"#), Ok(ModelProbe::Absent));
        assert_eq!(probe_model(b" {}\r\n"), Ok(ModelProbe::Absent));
        assert_eq!(probe_model(br#"["model"]"#), Err(BodyRefusal::NotAnObject));
        assert_eq!(probe_model(b""), Err(BodyRefusal::NotAnObject));
        assert_eq!(
            probe_model(b"--boundary\r\nContent-Disposition: form-data"),
            Err(BodyRefusal::NotAnObject)
        );
        assert!(matches!(probe_model(br#"{"model":"a""#), Err(BodyRefusal::Invalid(_))));
    }

    #[test]
    fn what_could_route_by_another_model_is_refused() {
        let refused = |body: &[u8]| probe_model(body).expect_err("refused");
        assert_eq!(
            refused(br#"{"model":"gw","model":"o1-expensive"}"#),
            BodyRefusal::DuplicateModel
        );
        assert_eq!(refused(br#"{"model":"gw","mod\u0065l":"o1"}"#), BodyRefusal::DuplicateModel);
        assert_eq!(refused(b"\xEF\xBB\xBF{\"model\":\"gw\"}"), BodyRefusal::NotAnObject, "BOM");
        assert!(matches!(refused(br#"{"model":"gw"} {"model":"o1"}"#), BodyRefusal::Invalid(_)));
        assert!(matches!(refused(br#"{"model":"gw"}x"#), BodyRefusal::Invalid(_)));
        assert!(matches!(refused(br#"{"model":"gw",}"#), BodyRefusal::Invalid(_)));
        assert!(matches!(refused(br#"{"model":"gw" "n":1}"#), BodyRefusal::Invalid(_)));
        assert!(matches!(refused(b"{\"model\":\"g\xFFw\"}"), BodyRefusal::Invalid(_)));
        assert_eq!(
            refused(b"\x0c{}"),
            BodyRefusal::NotAnObject,
            "form feed is not JSON whitespace"
        );
        // Nested duplicates are not the top-level model: kept as they are.
        assert_eq!(
            probe_model(br#"{"a":{"model":1,"model":2},"model":"gw"}"#)
                .map(|p| matches!(p, ModelProbe::Present(_))),
            Ok(true)
        );
    }

    #[test]
    fn streamed_requests_say_whether_they_asked_for_usage() {
        let usage = |body: &str| probe_body(body.as_bytes()).expect("valid").stream_usage;
        assert_eq!(usage(r#"{"model":"gw"}"#), StreamUsage::NotStreamed);
        assert_eq!(usage(r#"{"stream":false}"#), StreamUsage::NotStreamed);
        assert_eq!(usage(r#"{"stream":"true"}"#), StreamUsage::NotStreamed);
        assert_eq!(usage(r#"{"stream":true,"model":"gw"}"#), StreamUsage::Unrequested);
        assert_eq!(
            usage(r#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            StreamUsage::Requested
        );
        assert_eq!(
            usage(r#"{"stream_options":{"include_usage":false},"stream":true}"#),
            StreamUsage::Declined
        );
        assert_eq!(usage(r#"{"stream":true,"stream_options":{}}"#), StreamUsage::Declined);
    }

    #[test]
    fn completion_caps_are_read_when_they_are_whole_numbers() {
        let cap = |body: &str| probe_body(body.as_bytes()).expect("valid").cap;
        assert_eq!(cap(r#"{"model":"gw"}"#), OutputCap::default());
        assert_eq!(
            cap(r#"{"max_tokens":50,"n":2,"max_completion_tokens":70,"max_output_tokens":9}"#),
            OutputCap {
                max_completion_tokens: Some(70),
                max_tokens: Some(50),
                max_output_tokens: Some(9),
                n: Some(2)
            }
        );
        assert_eq!(cap(r#"{"max_tokens":"50","n":1.5}"#), OutputCap::default());
        assert_eq!(
            cap(r#"{"messages":[{"max_tokens":5}]}"#),
            OutputCap::default(),
            "top level only"
        );
    }

    #[test]
    fn previous_response_id_is_located_once_at_the_top_level() {
        let body = r#"{"model":"gw","input":[{"previous_response_id":"inner"}],"previous_response_id" : "resp_mgw1\u0061b"}"#;
        let probed = probe_body(body.as_bytes()).expect("valid");
        let field = probed.previous_response.expect("present");
        assert_eq!(&body[field.span.clone()], r#""resp_mgw1\u0061b""#);
        assert_eq!(field.value.as_deref(), Some("resp_mgw1ab"), "escapes decoded");
        assert!(matches!(probed.model, ModelProbe::Present(_)));
        let none = probe_body(br#"{"model":"gw","input":"hi"}"#).expect("valid");
        assert_eq!(none.previous_response, None);
        let null = probe_body(br#"{"previous_response_id":null}"#).expect("valid");
        assert_eq!(null.previous_response.map(|f| f.value), Some(None), "present, not a string");
        for twice in [
            &br#"{"previous_response_id":"resp_1","previous_response_id":"resp_2"}"#[..],
            br#"{"previous_response_id":"resp_1","previous_respons\u0065_id":"resp_2"}"#,
        ] {
            assert_eq!(probe_body(twice), Err(BodyRefusal::DuplicatePreviousResponse));
        }
    }

    #[test]
    fn inserts_a_model_into_objects_without_one() {
        let body = Bytes::from_static(br#" {"messages":[]}"#);
        assert_eq!(&insert_model(&body, br#""dep""#)[..], br#" {"model":"dep","messages":[]}"#);
        let empty = Bytes::from_static(b"{ }");
        assert_eq!(&insert_model(&empty, br#""dep""#)[..], br#"{"model":"dep" }"#);
    }
}
