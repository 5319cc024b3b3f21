//! JSON request bodies, parsed by hand from bytes so every failure is a problem naming the
//! field, and no failure ever repeats a value the client sent.

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize as _;
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::problem::{ApiError, FieldError};

/// Largest accepted request body. The biggest legitimate body, a gateway with hundreds of
/// members, is a few tens of KiB; 1 MiB leaves room and bounds what one request can buffer.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Longest field name quoted back in an "unknown field" error, so a client cannot make the
/// error (and the debug log line) arbitrarily large.
const MAX_QUOTED_FIELD_CHARS: usize = 64;

/// A JSON request body of type `T`.
///
/// `content-type` must be `application/json` (or `application/*+json`), else 415; bodies over
/// [`MAX_BODY_BYTES`] get 413 (the router sets the matching `DefaultBodyLimit`); syntax errors
/// get 400 (`errors[0].field = "body"`); unknown, missing and mistyped fields get 422 naming
/// the field's JSON path.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit_bytes: MAX_BODY_BYTES }
            } else {
                ApiError::MalformedBody { detail: "the request body could not be read".to_owned() }
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses `bytes` as a `T`: 400 when it is not JSON at all, 422 when it is JSON of the wrong
/// shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Syntax first, on its own: a body that is broken JSON is a 400 even if it also has an
    // unknown field before the point where it breaks. `IgnoredAny` allocates nothing.
    if let Err(e) = serde_json::from_slice::<IgnoredAny>(bytes) {
        return Err(ApiError::MalformedBody {
            // serde_json syntax messages name the position and what was expected, never the
            // text found there.
            detail: format!("the request body is not valid JSON: {e}"),
        });
    }
    // serde's derived structs also accept arrays (fields by position); the API takes objects.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::Validation(vec![FieldError::new("body", "must be a JSON object")]));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let message = strip_position(&e.inner().to_string());
        ApiError::Validation(vec![describe_data_error(&path, &message)])
    })
}

/// serde_json appends ` at line L column C`; the path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Turns a serde data error into a field error. Only the parts serde takes from the type (field
/// names, expected types) are kept; the "unexpected" part, which quotes the client's value, is
/// dropped, so a mistyped `api_key` is never echoed.
fn describe_data_error(path: &str, message: &str) -> FieldError {
    let join = |field: &str| -> String {
        let field = quote_limited(field);
        if path == "." { field } else { format!("{path}.{field}") }
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let accepted = tail
            .strip_prefix(", expected one of ")
            .or_else(|| tail.strip_prefix(", expected "))
            .map_or_else(|| "none".to_owned(), str::to_owned);
        // serde_path_to_error already puts the unknown key on the path in some versions.
        let field = if path.ends_with(name) && path != "." { path.to_owned() } else { join(name) };
        return FieldError::new(field, format!("unknown field (accepted: {accepted})"));
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return FieldError::new(join(name), "is required");
    }
    if let Some(rest) = message.strip_prefix("duplicate field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return FieldError::new(join(name), "appears more than once");
    }
    let field = if path == "." { "body".to_owned() } else { path.to_owned() };
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        // `rest` is "<what was found>, expected <what the type wants>"; the found part may
        // quote the value, so only the expected part (which comes from our types) is used.
        let expected = rest.rsplit_once(", expected ").map(|(_, e)| e).unwrap_or_default();
        if rest.starts_with("null,") {
            return FieldError::new(field, "must not be null");
        }
        return FieldError::new(field, format!("must be {}", describe_expected(expected)));
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        let expected = rest.rsplit_once(", expected ").map(|(_, e)| e).unwrap_or_default();
        return FieldError::new(field, format!("must be {}", describe_expected(expected)));
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        let expected = rest.split_once(", expected ").map(|(_, e)| e).unwrap_or_default();
        if expected.starts_with("struct ") {
            return FieldError::new(field, "must be an object");
        }
    }
    FieldError::new(field, "has an invalid value")
}

/// Expected-type descriptions from serde, in the API's terms.
fn describe_expected(expected: &str) -> &'static str {
    match expected {
        "a string" => "a string",
        "a boolean" => "a boolean",
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" => "an integer",
        "a sequence" => "an array",
        e if e.starts_with("struct ") || e == "a map" => "an object",
        _ => "of a different type",
    }
}

fn quote_limited(name: &str) -> String {
    if name.chars().count() <= MAX_QUOTED_FIELD_CHARS {
        name.to_owned()
    } else {
        let mut short: String = name.chars().take(MAX_QUOTED_FIELD_CHARS).collect();
        short.push('…');
        short
    }
}

/// A nested object of type `T`, refusing the array form serde's derived structs also accept
/// (fields by position): the document says `object`, so `[…]` is refused as "must be an
/// object", with the path of the field.
struct ObjectOnly<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);

        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // The body parser words errors by serde's type names: this one reads "an
                // object".
                f.write_str("struct Object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        d.deserialize_map(Object(std::marker::PhantomData)).map(ObjectOnly)
    }
}

/// An optional nested object (`null` or absent: `None`); see [`ObjectOnly`]. Use with
/// `#[serde(default, deserialize_with = "…")]`.
pub(crate) fn optional_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    Option::<ObjectOnly<T>>::deserialize(d).map(|o| o.map(|ObjectOnly(v)| v))
}

/// A nested object that may be absent (`None`), `null` (`Some(None)`) or an object; see
/// [`ObjectOnly`]. Use with `#[serde(default, deserialize_with = "…")]`.
pub(crate) fn nullable_object<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    optional_object(d).map(Some)
}

/// An optional integer, also written as a number with a zero fraction (`90.0`): JSON Schema
/// calls that an integer too, so the document's `integer` must accept it.
pub(crate) fn optional_whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<i64>, D::Error> {
    struct Whole;

    impl serde::de::Visitor<'_> for Whole {
        type Value = Option<i64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // The body parser words errors by serde's type names: this one reads "an integer".
            f.write_str("i64")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            // Beyond i64 is beyond every bound: the range check names it.
            Ok(Some(i64::try_from(v).unwrap_or(i64::MAX)))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            // Whole and within i64: exact in f64 up to 2^53, and far past every bound beyond.
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                #[allow(clippy::cast_possible_truncation)]
                return Ok(Some(v as i64));
            }
            Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
        }
    }

    d.deserialize_any(Whole)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        api_key: String,
        #[serde(default)]
        members: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        id: String,
        weight: Option<i64>,
    }

    fn field_error(body: &str) -> FieldError {
        match parse_json::<Outer>(body.as_bytes()) {
            Err(ApiError::Validation(mut errors)) => {
                assert_eq!(errors.len(), 1);
                errors.remove(0)
            }
            Err(other) => panic!("expected a validation error, got {other:?}"),
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    #[test]
    fn syntax_errors_are_malformed_bodies() {
        for body in ["{", "{\"name\": }", "[1,]", "{} x", "", "\"unterminated"] {
            assert!(
                matches!(parse_json::<Outer>(body.as_bytes()), Err(ApiError::MalformedBody { .. })),
                "{body:?}"
            );
        }
    }

    #[test]
    fn broken_json_is_malformed_even_after_an_unknown_field() {
        let r = parse_json::<Outer>(br#"{"bogus": 1, "name": "#);
        assert!(matches!(r, Err(ApiError::MalformedBody { .. })));
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let e = field_error(r#"{"name":"n","api_key":"k","bogus":1}"#);
        assert_eq!(e.field, "bogus");
        assert!(e.reason.starts_with("unknown field"), "{}", e.reason);
        let e = field_error(r#"{"name":"n","api_key":"k","members":[{"id":"x","extra":true}]}"#);
        assert_eq!(e.field, "members[0].extra");
    }

    #[test]
    fn missing_fields_are_named() {
        assert_eq!(field_error(r#"{"name":"n"}"#).field, "api_key");
        let e = field_error(r#"{"name":"n","api_key":"k","members":[{"weight":1}]}"#);
        assert_eq!(e.field, "members[0].id");
        assert_eq!(e.reason, "is required");
    }

    #[test]
    fn wrong_types_name_the_path_and_never_the_value() {
        let e =
            field_error(r#"{"name":"n","api_key":"k","members":[{"id":"x","weight":"heavy"}]}"#);
        assert_eq!(e.field, "members[0].weight");
        assert_eq!(e.reason, "must be an integer");
        assert!(!e.reason.contains("heavy"));

        let e = field_error(r#"{"name":"n","api_key":12345678901234}"#);
        assert_eq!(e.field, "api_key");
        assert_eq!(e.reason, "must be a string");
        assert!(!format!("{e:?}").contains("12345678901234"));

        let e = field_error(r#"{"name":null,"api_key":"k"}"#);
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("name", "must not be null"));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_named_body() {
        for body in ["[]", r#"["n", "k"]"#, "1", "null", "\"s\""] {
            let e = field_error(body);
            assert_eq!((e.field.as_str(), e.reason.as_str()), ("body", "must be a JSON object"));
        }
        let e = field_error(r#"{"name":"n","api_key":"k","members":[["x"]]}"#);
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("members[0]", "must be an object"));
    }

    #[test]
    fn a_nested_object_is_not_taken_from_an_array() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Holder {
            #[serde(default, deserialize_with = "optional_object")]
            inner: Option<Inner>,
        }
        let e = match parse_json::<Holder>(br#"{"inner": ["x", 1]}"#) {
            Err(ApiError::Validation(errors)) => errors[0].clone(),
            other => panic!("expected a validation error, got {other:?}"),
        };
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("inner", "must be an object"));
        let ok = parse_json::<Holder>(br#"{"inner": {"id": "x"}}"#).expect("an object");
        assert_eq!(ok.inner.map(|i| i.id).as_deref(), Some("x"));
        assert!(parse_json::<Holder>(br#"{"inner": null}"#).expect("null").inner.is_none());
        assert!(parse_json::<Holder>(b"{}").expect("absent").inner.is_none());
        let e = match parse_json::<Holder>(br#"{"inner": {"id": "x", "bogus": 1}}"#) {
            Err(ApiError::Validation(errors)) => errors[0].clone(),
            other => panic!("expected a validation error, got {other:?}"),
        };
        assert_eq!(e.field, "inner.bogus");
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json_content_type(&h));
        for (value, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            h.insert(header::CONTENT_TYPE, value.parse().expect("header"));
            assert_eq!(is_json_content_type(&h), ok, "{value}");
        }
    }
}
