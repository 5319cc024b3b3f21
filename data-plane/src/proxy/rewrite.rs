//! Rewriting the body's top-level `model` without re-serialising the JSON: locate the value's
//! byte span once per request, then splice the endpoint's deployment in per attempt. Bytes
//! outside the span (key order, whitespace, number formats, nested `model` keys) are untouched.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::de::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// The top-level `model` member of a JSON object body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModelField {
    /// Byte range of the value (including quotes for a string).
    pub span: Range<usize>,
    /// The decoded string, or `None` when the value is not a string (e.g. `null`, a number).
    pub value: Option<String>,
}

/// What the body says about `model`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ModelProbe {
    /// Not a JSON object (multipart audio, empty body, an array…): never touched.
    NotAnObject,
    /// A JSON object without a top-level `model`.
    Absent,
    Present(ModelField),
}

/// A borrowed raw value; unlike `Option<&RawValue>`, keeps `null` as a value.
enum Field<'a> {
    Absent,
    Raw(&'a RawValue),
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(deserializer).map(Field::Raw)
    }
}

#[derive(serde::Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default = "absent")]
    model: Field<'a>,
}

fn absent<'a>() -> Field<'a> {
    Field::Absent
}

pub(crate) fn probe_model(body: &[u8]) -> ModelProbe {
    // A derived struct would also accept a JSON array; only objects have members.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return ModelProbe::NotAnObject;
    }
    let Ok(probe) = serde_json::from_slice::<Probe<'_>>(body) else {
        return ModelProbe::NotAnObject;
    };
    let Field::Raw(raw) = probe.model else { return ModelProbe::Absent };
    let text = raw.get();
    // The raw value borrows from `body`, so its address gives its offset.
    let start = (text.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    let span = start..start + text.len();
    if body.get(span.clone()) != Some(text.as_bytes()) {
        return ModelProbe::NotAnObject;
    }
    let value = serde_json::from_str::<Cow<'_, str>>(text).ok().map(Cow::into_owned);
    ModelProbe::Present(ModelField { span, value })
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
            ModelProbe::Present(field) => field,
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
    fn bodies_without_a_model_or_not_objects() {
        assert_eq!(probe_model(br#"{"messages":[{"model":"x"}]}"#), ModelProbe::Absent);
        assert_eq!(probe_model(b"{}"), ModelProbe::Absent);
        assert_eq!(probe_model(br#"["model"]"#), ModelProbe::NotAnObject);
        assert_eq!(probe_model(b""), ModelProbe::NotAnObject);
        assert_eq!(
            probe_model(b"--boundary\r\nContent-Disposition: form-data"),
            ModelProbe::NotAnObject
        );
        assert_eq!(probe_model(br#"{"model":"a""#), ModelProbe::NotAnObject, "truncated JSON");
    }

    #[test]
    fn inserts_a_model_into_objects_without_one() {
        let body = Bytes::from_static(br#" {"messages":[]}"#);
        assert_eq!(&insert_model(&body, br#""dep""#)[..], br#" {"model":"dep","messages":[]}"#);
        let empty = Bytes::from_static(b"{ }");
        assert_eq!(&insert_model(&empty, br#""dep""#)[..], br#"{"model":"dep" }"#);
    }
}
