//! Reading what Azure OpenAI says about its own availability: when a 429 may be retried
//! (`retry-after-ms`, `Retry-After`, "retry after N seconds" in the error message, or OpenAI's
//! "try again in 20s") and how much
//! quota an answer says is left (`x-ratelimit-*`). Parsing only: what the values mean for an
//! endpoint's health is decided by [`super::HealthPolicy`].

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// `retry-after-ms` (milliseconds, PTU deployments), else `Retry-After` (delay-seconds or an
/// HTTP-date). Fractional values are accepted, as the OpenAI SDK does.
pub fn retry_after_from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = value("retry-after-ms").and_then(parse_non_negative) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let retry_after = value("retry-after")?;
    if let Some(secs) = parse_non_negative(retry_after) {
        return Some(Duration::from_secs_f64(secs));
    }
    let date = httpdate::parse_http_date(retry_after).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Finds "retry after N second(s)" or "try again in N second(s)" (any case) in an error body,
/// e.g. Azure's "Please retry after 6 seconds." or "Rate limit is exceeded. Try again in 50
/// seconds.", and OpenAI's compact form after the same phrase: "Please try again in 20s.",
/// "…in 6ms.", "…in 1m30.5s." (OpenAI-compatible endpoints whose 429 carries no `Retry-After`).
pub fn retry_after_from_message(body: &[u8]) -> Option<Duration> {
    const PHRASES: [&[u8]; 2] = [b"retry after ", b"try again in "];
    let lower = body.to_ascii_lowercase();
    for phrase in PHRASES {
        let mut from = 0;
        while let Some(pos) = find(&lower[from..], phrase) {
            let start = from + pos + phrase.len();
            if let Some(secs) = delay_after(&lower[start..]) {
                return Some(Duration::from_secs_f64(secs));
            }
            from = start;
        }
    }
    None
}

/// The delay at the start of `text` (lower case), in seconds: "N second(s)", or numbers with
/// the units `h`, `m`, `s`, `ms` run together ("1m30.5s", "6ms"). `None` for anything else
/// ("6 minutes", "a while").
fn delay_after(text: &[u8]) -> Option<f64> {
    let mut rest = text;
    let mut total = 0.0;
    let mut read_any = false;
    loop {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit() || **b == b'.').count();
        // Not a number (nothing, or the full stop ending the sentence): the delay ends here.
        let Some(value) = std::str::from_utf8(&rest[..digits]).ok().and_then(parse_non_negative)
        else {
            break;
        };
        let after = &rest[digits..];
        let spaced = &after[after.iter().take_while(|b| **b == b' ').count()..];
        if spaced.starts_with(b"second") {
            return Some(total + value);
        }
        let (unit, len) = if after.starts_with(b"ms") {
            (0.001, 2)
        } else if after.starts_with(b"s") {
            (1.0, 1)
        } else if after.starts_with(b"m") {
            (60.0, 1)
        } else if after.starts_with(b"h") {
            (3600.0, 1)
        } else {
            break;
        };
        total += value * unit;
        read_any = true;
        rest = &after[len..];
    }
    read_any.then_some(total)
}

/// The quota an answer reports. A header that is absent or not an integer reads as `None`;
/// negative values are kept (some APIs send them) for the caller to ignore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// `x-ratelimit-remaining-requests`.
    pub remaining_requests: Option<i64>,
    /// `x-ratelimit-remaining-tokens`.
    pub remaining_tokens: Option<i64>,
    /// `x-ratelimit-limit-requests`.
    pub limit_requests: Option<i64>,
    /// `x-ratelimit-limit-tokens`.
    pub limit_tokens: Option<i64>,
    /// `x-ratelimit-reset-requests`: until the request limit is whole again ("1s", "6m0s",
    /// "350ms", or plain seconds).
    pub reset_requests: Option<Duration>,
    /// `x-ratelimit-reset-tokens` (also Azure's older spelling `x-rate-limit-reset-tokens`).
    pub reset_tokens: Option<Duration>,
}

impl RateLimits {
    /// The answer's quota reading; `None` when it reports neither remaining requests nor
    /// remaining tokens (then nothing else is looked up: this runs on every answer).
    #[inline]
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let number = |name: &str| text(name).and_then(|v| v.parse::<i64>().ok());
        let remaining_requests = number("x-ratelimit-remaining-requests");
        let remaining_tokens = number("x-ratelimit-remaining-tokens");
        if remaining_requests.is_none() && remaining_tokens.is_none() {
            return None;
        }
        let reset = |name: &str| text(name).and_then(parse_reset);
        Some(Self {
            remaining_requests,
            remaining_tokens,
            limit_requests: number("x-ratelimit-limit-requests"),
            limit_tokens: number("x-ratelimit-limit-tokens"),
            reset_requests: reset("x-ratelimit-reset-requests"),
            reset_tokens: reset("x-ratelimit-reset-tokens")
                .or_else(|| reset("x-rate-limit-reset-tokens")),
        })
    }
}

/// A reset header's duration: plain seconds ("55", "0.5") or Go-style units run together
/// ("1s", "6m0s", "350ms", "1m3.5s").
fn parse_reset(value: &str) -> Option<Duration> {
    let secs = parse_non_negative(value).or_else(|| {
        delay_after(value.to_ascii_lowercase().as_bytes()).filter(|_| !value.is_empty())
    })?;
    Some(Duration::from_secs_f64(secs.min(1e9)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A finite, non-negative number of sane size, so that `Duration::from_secs_f64` cannot panic
/// on absurd input (the policy's `max_throttle` caps the window anyway).
fn parse_non_negative(s: &str) -> Option<f64> {
    const LARGEST: f64 = 1e12;
    let value: f64 = s.parse().ok()?;
    (value.is_finite() && (0.0..=LARGEST).contains(&value)).then_some(value)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::health::tests::headers;

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let h = headers(&[("retry-after-ms", "250"), ("retry-after", "6")]);
        assert_eq!(
            retry_after_from_headers(&h, SystemTime::now()),
            Some(Duration::from_millis(250))
        );
        let h = headers(&[("retry-after-ms", "1500.5")]);
        assert_eq!(
            retry_after_from_headers(&h, SystemTime::now()),
            Some(Duration::from_micros(1_500_500))
        );
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let h = headers(&[("retry-after", "6")]);
        assert_eq!(retry_after_from_headers(&h, SystemTime::now()), Some(Duration::from_secs(6)));
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]);
        assert_eq!(retry_after_from_headers(&h, now), Some(Duration::from_secs(30)));
        let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:00 GMT")]);
        assert_eq!(retry_after_from_headers(&h, now), Some(Duration::ZERO), "a past date is now");
        let h = headers(&[("retry-after", "soon")]);
        assert_eq!(retry_after_from_headers(&h, now), None);
        let h = headers(&[("retry-after", "-3")]);
        assert_eq!(retry_after_from_headers(&h, now), None);
    }

    #[test]
    fn retry_after_from_azure_message_texts() {
        let standard = br#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."}}"#;
        assert_eq!(retry_after_from_message(standard), Some(Duration::from_secs(6)));
        let variant = br#"{"error":{"code":"429","message":"Rate limit is exceeded. Try again in 50 seconds."}}"#;
        assert_eq!(retry_after_from_message(variant), Some(Duration::from_secs(50)));
        assert_eq!(retry_after_from_message(b"Retry after 1 second"), Some(Duration::from_secs(1)));
        assert_eq!(
            retry_after_from_message(b"retry after a while; retry after 3 seconds"),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_after_from_message(b"please retry after 6 minutes"), None);
        // OpenAI's compact form (its 429s may carry no Retry-After).
        let openai = |text: &str| retry_after_from_message(text.as_bytes());
        let tpm = "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): \
                   Limit 30000, Used 29850, Requested 300. Please try again in 300ms. Visit …";
        assert_eq!(openai(tpm), Some(Duration::from_millis(300)));
        assert_eq!(openai("Please try again in 20s."), Some(Duration::from_secs(20)));
        assert_eq!(openai("Please try again in 1m30.5s."), Some(Duration::from_millis(90_500)));
        assert_eq!(openai("Please try again in 2h."), Some(Duration::from_secs(7200)));
        assert_eq!(openai("Please try again in 1.5 seconds"), Some(Duration::from_millis(1500)));
        assert_eq!(openai("Please try again in 20 minutes"), None);
        assert_eq!(openai("Please try again in 2024-01-01"), None);
        assert_eq!(openai("Please try again in s"), None);
        assert_eq!(openai("Please try again in .s"), None);
        assert_eq!(retry_after_from_message(b"{}"), None);
    }

    #[test]
    fn rate_limit_headers_are_read_only_when_a_remaining_count_is_there() {
        assert_eq!(RateLimits::from_headers(&headers(&[("x-ratelimit-limit-tokens", "9")])), None);
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "-1"),
            ("x-ratelimit-remaining-tokens", " 61353 "),
            ("x-ratelimit-limit-tokens", "450000"),
        ]);
        assert_eq!(
            RateLimits::from_headers(&h),
            Some(RateLimits {
                remaining_requests: Some(-1),
                remaining_tokens: Some(61353),
                limit_tokens: Some(450000),
                ..RateLimits::default()
            })
        );
        let h = headers(&[("x-ratelimit-remaining-requests", "many")]);
        assert_eq!(RateLimits::from_headers(&h), None, "garbage is no reading");
    }

    #[test]
    fn limits_and_resets_are_read_in_every_spelling_seen() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "79"),
            ("x-ratelimit-limit-requests", "80"),
            ("x-ratelimit-reset-requests", "1m3.5s"),
            ("x-rate-limit-reset-tokens", "55"),
        ]);
        let limits = RateLimits::from_headers(&h).expect("a reading");
        assert_eq!(limits.limit_requests, Some(80));
        assert_eq!(limits.reset_requests, Some(Duration::from_millis(63_500)));
        assert_eq!(limits.reset_tokens, Some(Duration::from_secs(55)), "Azure's 2023 spelling");
        let reset = |v: &str| parse_reset(v);
        assert_eq!(reset("350ms"), Some(Duration::from_millis(350)));
        assert_eq!(reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(reset("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(reset("8.2S"), Some(Duration::from_millis(8200)));
        assert_eq!(reset(""), None);
        assert_eq!(reset("soon"), None);
        assert_eq!(reset("-1"), None);
    }
}
