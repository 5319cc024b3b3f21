//! Field validation that collects every error of a request before answering. The limits it
//! enforces (lengths, ranges, reserved gateway names) are `modelgw_model::limits`.

use modelgw_model::limits::{
    MAX_API_KEY_CHARS, MAX_GATEWAY_NAME_CHARS, MAX_TEXT_CHARS, base_url_pattern,
    is_gateway_name_char, is_reserved_gateway_name,
};
use modelgw_model::{Platform, RoutingStrategy, Secret};

use crate::problem::{ApiError, FieldError};

/// `limits::base_url_pattern`, the document's pattern of base URLs, compiled once.
static BASE_URL: std::sync::LazyLock<Result<regex::Regex, regex::Error>> =
    std::sync::LazyLock::new(|| regex::Regex::new(&base_url_pattern()));

/// Collects field errors; `finish` turns any into a 422.
#[derive(Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn error(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError::new(field, reason));
    }

    /// A string of at most `MAX_TEXT_CHARS` without control characters that is not empty once
    /// trimmed; the trimmed value. The limits apply to the value as sent, so that the
    /// document's `maxLength` and `pattern` (`limits::text_pattern`) state them exactly.
    pub fn text(&mut self, field: &str, value: &str) -> String {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            self.error(field, "must not be empty");
        } else if value.chars().count() > MAX_TEXT_CHARS {
            self.error(field, format!("must be at most {MAX_TEXT_CHARS} characters"));
        } else if value.chars().any(char::is_control) {
            self.error(field, "must not contain control characters");
        }
        trimmed.to_owned()
    }

    pub fn platform(&mut self, field: &str, value: &str) -> Option<Platform> {
        // Exact, like the document's enum: no trimming, no other case.
        let platform = Platform::parse(value);
        if platform.is_none() {
            self.error(field, "must be one of: azure_openai, openai_compatible");
        }
        platform
    }

    /// An absolute http(s) base URL with a host, without credentials, query or fragment; a
    /// trailing slash is removed from the path.
    pub fn base_url(&mut self, field: &str, value: &str) -> Option<url::Url> {
        let raw = value;
        let value = value.trim();
        let mut url = match url::Url::parse(value) {
            Ok(url) => url,
            Err(_) => {
                self.error(field, "must be an absolute http(s) URL");
                return None;
            }
        };
        let mut ok = true;
        if !matches!(url.scheme(), "http" | "https") {
            self.error(field, "must be an http(s) URL");
            ok = false;
        }
        if url.host_str().is_none_or(str::is_empty) {
            self.error(field, "must have a host");
            ok = false;
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Credentials belong in `api_key`, which is sealed at rest; a URL is not.
            self.error(field, "must not contain credentials");
            ok = false;
        }
        if url.query().is_some() {
            self.error(field, "must not have a query string");
            ok = false;
        }
        if url.fragment().is_some() {
            self.error(field, "must not have a fragment");
            ok = false;
        }
        if ok && !BASE_URL.as_ref().is_ok_and(|pattern| pattern.is_match(raw)) {
            // What the URL parser also takes but the document's pattern does not: IPv6 and
            // IDNA hosts, labels with `_` or `--`, characters a browser would escape.
            self.error(
                field,
                "must be http(s)://host[:port][/path] with a host name of letters, digits and \
                 hyphens or an IPv4 address, and a path of URL characters",
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        let trimmed = url.path().trim_end_matches('/').to_owned();
        url.set_path(&trimmed);
        Some(url)
    }

    pub fn api_key(&mut self, field: &str, value: &str) -> Option<Secret> {
        // Trimmed: a key pasted with a trailing newline would otherwise fail upstream. The
        // length counts the value as sent, like the document's `maxLength`.
        let sent_chars = value.chars().count();
        let value = value.trim();
        // Reasons never quote the value.
        if value.is_empty() {
            self.error(field, "must not be empty");
            None
        } else if sent_chars > MAX_API_KEY_CHARS {
            self.error(field, format!("must be at most {MAX_API_KEY_CHARS} characters"));
            None
        } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
            // It is sent as an HTTP header value upstream.
            self.error(field, "must consist of printable ASCII characters without spaces");
            None
        } else {
            Some(Secret::new(value))
        }
    }

    pub fn routing_strategy(&mut self, field: &str, value: &str) -> RoutingStrategy {
        match value {
            "weighted" => RoutingStrategy::Weighted,
            "fastest" => RoutingStrategy::Fastest,
            _ => {
                self.error(field, "must be one of: weighted, fastest");
                RoutingStrategy::default()
            }
        }
    }

    /// An id in a body: a UUID in its hyphenated form (the document's `limits::UUID_PATTERN`).
    pub fn uuid<T: std::str::FromStr>(&mut self, field: &str, value: &str) -> Option<T> {
        // 36 characters: the hyphenated form only (the parser also takes simple, braced and
        // URN forms, which the document does not allow).
        let id = (value.len() == 36).then(|| value.parse().ok()).flatten();
        if id.is_none() {
            self.error(field, "must be a UUID");
        }
        id
    }

    /// A gateway name: it is the `{deployment}` path segment clients call.
    pub fn gateway_name(&mut self, field: &str, value: &str) -> String {
        let len = value.chars().count();
        if len == 0 || len > MAX_GATEWAY_NAME_CHARS {
            self.error(field, format!("must be 1 to {MAX_GATEWAY_NAME_CHARS} characters"));
        } else if !value.chars().all(is_gateway_name_char) {
            self.error(field, "may contain only A-Z, a-z, 0-9, '.', '_' and '-'");
        } else if is_reserved_gateway_name(value) {
            self.error(field, "is reserved");
        }
        value.to_owned()
    }

    pub fn in_range(
        &mut self,
        field: &str,
        value: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> u32 {
        if !range.contains(&value) {
            self.error(field, format!("must be between {} and {}", range.start(), range.end()));
        }
        u32::try_from(value).unwrap_or_default()
    }

    /// `Ok(value)` when no error was recorded, else a 422 with all of them.
    pub fn finish<T>(self, value: T) -> Result<T, ApiError> {
        if self.errors.is_empty() { Ok(value) } else { Err(ApiError::Validation(self.errors)) }
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// An id from the request path. One that does not parse names no resource, so it is a 404
/// like an unknown id (the value is not quoted back).
pub fn path_id<T: std::str::FromStr>(entity: &str, raw: &str) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound { detail: format!("{entity} not found (not a valid id)") })
}

#[cfg(test)]
mod tests {
    use modelgw_model::limits::{PRIORITY_RANGE, WEIGHT_RANGE};

    use super::*;

    fn errors_of(f: impl FnOnce(&mut Validator)) -> Vec<FieldError> {
        let mut v = Validator::new();
        f(&mut v);
        match v.finish(()) {
            Ok(()) => vec![],
            Err(ApiError::Validation(errors)) => errors,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_base_url_pattern_compiles() {
        assert!(BASE_URL.is_ok(), "{:?}", BASE_URL.as_ref().err());
    }

    #[test]
    fn base_urls_are_normalised() {
        let mut v = Validator::new();
        let url = v.base_url("endpoint", " https://eus.openai.azure.com/ ").expect("valid");
        assert_eq!(url.as_str(), "https://eus.openai.azure.com/");
        let url = v.base_url("endpoint", "http://127.0.0.1:8080/v1/").expect("valid");
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/v1");
        assert!(!v.has_errors());
    }

    #[test]
    fn bad_base_urls_are_rejected_with_a_reason() {
        for (input, reason) in [
            ("eus.openai.azure.com", "must be an absolute http(s) URL"),
            ("/relative", "must be an absolute http(s) URL"),
            ("ftp://host", "must be an http(s) URL"),
            ("https://u:p@host", "must not contain credentials"),
            ("https://host/?api-version=1", "must not have a query string"),
            ("https://host/#x", "must not have a fragment"),
            ("", "must be an absolute http(s) URL"),
        ] {
            let errors = errors_of(|v| {
                v.base_url("endpoint", input);
            });
            assert_eq!(errors, vec![FieldError::new("endpoint", reason)], "{input}");
        }
    }

    #[test]
    fn gateway_names_follow_the_url_segment_rules() {
        for ok in ["gpt-4o", "a", "GPT_4o.mini", &"x".repeat(64)] {
            assert!(
                errors_of(|v| {
                    let _ = v.gateway_name("name", ok);
                })
                .is_empty(),
                "{ok}"
            );
        }
        for bad in ["", "auto", "AUTO", ".", "..", "has space", "a/b", "ü", &"x".repeat(65)] {
            assert_eq!(
                errors_of(|v| {
                    let _ = v.gateway_name("name", bad);
                })
                .len(),
                1,
                "{bad}"
            );
        }
    }

    #[test]
    fn texts_are_trimmed_and_must_not_be_empty() {
        let mut v = Validator::new();
        assert_eq!(v.text("name", "  eus  "), "eus");
        assert!(!v.has_errors());
        assert_eq!(
            errors_of(|v| {
                let _ = v.text("name", "   ");
            })
            .len(),
            1
        );
        assert_eq!(
            errors_of(|v| {
                let _ = v.text("name", "a\u{7}b");
            })
            .len(),
            1
        );
    }

    #[test]
    fn api_key_reasons_never_contain_the_key() {
        let errors = errors_of(|v| {
            let _ = v.api_key("api_key", "sk-has a space-1234");
        });
        assert_eq!(errors.len(), 1);
        assert!(!errors[0].reason.contains("sk-has"));
    }

    #[test]
    fn ranges_are_inclusive() {
        assert!(
            errors_of(|v| {
                let _ = v.in_range("w", 1, WEIGHT_RANGE);
            })
            .is_empty()
        );
        assert!(
            errors_of(|v| {
                let _ = v.in_range("w", 1000, WEIGHT_RANGE);
            })
            .is_empty()
        );
        assert_eq!(
            errors_of(|v| {
                let _ = v.in_range("w", 0, WEIGHT_RANGE);
            }),
            vec![FieldError::new("w", "must be between 1 and 1000")]
        );
        assert_eq!(
            errors_of(|v| {
                let _ = v.in_range("p", -1, PRIORITY_RANGE);
            })
            .len(),
            1
        );
    }
}
