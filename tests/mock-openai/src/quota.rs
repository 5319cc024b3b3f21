//! A region's token-bucket quota, as Azure OpenAI enforces a deployment's requests-per-minute
//! and tokens-per-minute (azure-wire.md §1.5, §1.6): two buckets that start full, refill
//! continuously and are charged when a request is *admitted*, with the request's maximum token
//! count (its prompt estimate plus the completion tokens it asks for), before any work is done.
//! A request that does not fit in either bucket is refused with a 429 saying when it would fit,
//! and costs nothing.
//!
//! Everything here is pure arithmetic over an `Instant` the caller passes in, so tests drive
//! the buckets with a clock of their own.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::Operation;

/// Completion tokens charged when a request names no maximum: OpenAI's default `max_tokens`
/// for the legacy completions API, and what the brief of the quota tests fixes.
pub const DEFAULT_MAX_TOKENS: u64 = 16;

/// Characters per token of the prompt estimate: OpenAI's rule of thumb for English text, and
/// what Azure's admission estimate is documented to approximate.
pub const CHARS_PER_TOKEN: u64 = 4;

/// Whether an operation is charged to the quota: the inference calls whose cost is their
/// prompt and completion tokens. Images, audio, stored-response calls and the model list are
/// not (their quotas are separate at Azure, or they have none).
pub(crate) fn is_metered(op: Operation) -> bool {
    matches!(
        op,
        Operation::Chat | Operation::Completions | Operation::Embeddings | Operation::Responses
    )
}

/// Which quota headers a region's answers carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaHeaders {
    /// `x-ratelimit-remaining-*`, `x-ratelimit-limit-*` and `x-ratelimit-reset-*` for
    /// requests and tokens: the newest Azure dumps plus OpenAI's reset headers.
    #[default]
    Full,
    /// Only `x-ratelimit-remaining-requests` and `x-ratelimit-remaining-tokens`: Azure's
    /// minimal dump (§1.5, [I1]).
    RemainingOnly,
    /// No quota headers at all: what a purely reactive router has to live with.
    None,
}

/// A region's quota: one request bucket and one token bucket, each holding `rate × window`
/// and refilled at `rate` per second.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    /// Refill rate of the request bucket.
    pub requests_per_sec: f64,
    /// Refill rate of the token bucket.
    pub tokens_per_sec: f64,
    /// What each bucket holds, in seconds of its refill: Azure's `renewalPeriod` (10 s for
    /// requests, 60 s for tokens on standard deployments; one window here for both).
    #[serde(rename = "window_ms", with = "millis")]
    pub window: Duration,
    /// Which headers answers carry.
    #[serde(default)]
    pub headers: QuotaHeaders,
}

/// Why a [`Quota`] cannot be used; names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("quota.{field}: {reason}")]
pub struct InvalidQuota {
    pub field: &'static str,
    pub reason: &'static str,
}

impl Quota {
    /// Checks that both rates are positive and finite and the window is not zero.
    pub fn validate(&self) -> Result<(), InvalidQuota> {
        let positive = |field, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(InvalidQuota { field, reason: "must be a positive, finite number" })
            }
        };
        positive("requests_per_sec", self.requests_per_sec)?;
        positive("tokens_per_sec", self.tokens_per_sec)?;
        if self.window.is_zero() {
            return Err(InvalidQuota { field: "window_ms", reason: "must be at least 1" });
        }
        Ok(())
    }

    /// Requests the bucket holds when full.
    pub fn request_capacity(&self) -> f64 {
        self.requests_per_sec * self.window.as_secs_f64()
    }

    /// Tokens the bucket holds when full.
    pub fn token_capacity(&self) -> f64 {
        self.tokens_per_sec * self.window.as_secs_f64()
    }
}

/// `Duration` as whole milliseconds in JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// What one inference request costs at admission: one request, and
/// `ceil(prompt characters / 4) + its maximum completion tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    pub requests: u64,
    pub tokens: u64,
}

impl Cost {
    /// The cost of a JSON request body (chat completions, completions, embeddings, responses).
    /// The prompt is the text of the messages' contents, or of `input` / `prompt`; the maximum
    /// is `max_completion_tokens`, else `max_tokens`, else `max_output_tokens`, else
    /// [`DEFAULT_MAX_TOKENS`]. Azure charges the maximum at admission, whatever the answer
    /// then uses.
    pub fn of_request(body: Option<&Value>) -> Cost {
        let Some(body) = body else {
            return Cost { requests: 1, tokens: DEFAULT_MAX_TOKENS };
        };
        let prompt_chars: u64 = match body.get("messages").and_then(Value::as_array) {
            Some(messages) => {
                messages.iter().filter_map(|m| m.get("content")).map(text_chars).sum()
            }
            None => ["input", "prompt"].iter().filter_map(|k| body.get(*k)).map(text_chars).sum(),
        };
        let max_tokens = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_u64))
            .unwrap_or(DEFAULT_MAX_TOKENS);
        Cost {
            requests: 1,
            tokens: prompt_chars.div_ceil(CHARS_PER_TOKEN).saturating_add(max_tokens),
        }
    }
}

/// Characters of the text in a content or input value: a string, an array of strings or of
/// parts (`{"type":"text","text":…}`, Responses items with `content`), or token ids (each
/// counted as one token's worth of characters).
fn text_chars(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.chars().count() as u64,
        Value::Number(_) => CHARS_PER_TOKEN,
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(o) => {
            ["text", "content"].iter().filter_map(|k| o.get(*k)).map(text_chars).sum()
        }
        Value::Null | Value::Bool(_) => 0,
    }
}

/// One bucket: `level` of `capacity` at `at`, refilled at `rate` per second.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    capacity: f64,
    rate: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: f64, rate: f64, now: Instant) -> Bucket {
        Bucket { capacity, rate, level: capacity, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + self.rate * elapsed).min(self.capacity);
        self.at = self.at.max(now);
    }

    /// A cost beyond the capacity would never fit: it is admitted when the bucket is full and
    /// empties it (Azure's behaviour for such a request is not documented).
    fn fits(&self, cost: f64) -> bool {
        self.level >= cost.min(self.capacity)
    }

    /// How long until `cost` fits (zero if it does).
    fn wait_for(&self, cost: f64) -> Duration {
        let missing = cost.min(self.capacity) - self.level;
        if missing <= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(missing / self.rate) }
    }

    fn take(&mut self, cost: f64) {
        self.level = (self.level - cost.min(self.capacity)).max(0.0);
    }

    /// How long until the bucket is full again.
    fn until_full(&self) -> Duration {
        self.wait_for(self.capacity)
    }

    /// What is left, as a header reports it: whole units, rounded down.
    fn remaining(&self) -> u64 {
        self.level.max(0.0).floor() as u64
    }

    fn limit(&self) -> u64 {
        self.capacity.max(0.0).floor() as u64
    }
}

/// A deployment's two buckets.
#[derive(Clone, Copy, Debug)]
pub struct Buckets {
    requests: Bucket,
    tokens: Bucket,
    headers: QuotaHeaders,
}

/// What a bucket pair says about one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Admission {
    /// Charged; the reading after the charge.
    Admitted(Reading),
    /// Refused, nothing charged: it would fit after `retry_after`.
    Throttled { reading: Reading, retry_after: Duration },
}

impl Admission {
    pub fn reading(&self) -> &Reading {
        match self {
            Admission::Admitted(r) | Admission::Throttled { reading: r, .. } => r,
        }
    }
}

/// The state of a bucket pair at one instant, as an answer's headers report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub headers: QuotaHeaders,
    pub remaining_requests: u64,
    pub remaining_tokens: u64,
    pub limit_requests: u64,
    pub limit_tokens: u64,
    pub reset_requests: Duration,
    pub reset_tokens: Duration,
}

impl Reading {
    /// The `x-ratelimit-*` headers this reading's [`QuotaHeaders`] asks for.
    pub fn header_pairs(&self) -> Vec<(&'static str, String)> {
        let remaining = [
            ("x-ratelimit-remaining-requests", self.remaining_requests.to_string()),
            ("x-ratelimit-remaining-tokens", self.remaining_tokens.to_string()),
        ];
        match self.headers {
            QuotaHeaders::None => Vec::new(),
            QuotaHeaders::RemainingOnly => remaining.to_vec(),
            QuotaHeaders::Full => {
                let mut all = remaining.to_vec();
                all.extend([
                    ("x-ratelimit-limit-requests", self.limit_requests.to_string()),
                    ("x-ratelimit-limit-tokens", self.limit_tokens.to_string()),
                    ("x-ratelimit-reset-requests", go_duration(self.reset_requests)),
                    ("x-ratelimit-reset-tokens", go_duration(self.reset_tokens)),
                ]);
                all
            }
        }
    }
}

impl Buckets {
    /// Both buckets full at `now`.
    pub fn new(quota: &Quota, now: Instant) -> Buckets {
        Buckets {
            requests: Bucket::full(quota.request_capacity(), quota.requests_per_sec, now),
            tokens: Bucket::full(quota.token_capacity(), quota.tokens_per_sec, now),
            headers: quota.headers,
        }
    }

    /// Charges `cost` if both buckets have room for it at `now`; otherwise charges nothing and
    /// says when it would fit.
    pub fn admit(&mut self, cost: Cost, now: Instant) -> Admission {
        self.requests.refill(now);
        self.tokens.refill(now);
        let (requests, tokens) = (cost.requests as f64, cost.tokens as f64);
        if self.requests.fits(requests) && self.tokens.fits(tokens) {
            self.requests.take(requests);
            self.tokens.take(tokens);
            Admission::Admitted(self.reading())
        } else {
            let retry_after = self.requests.wait_for(requests).max(self.tokens.wait_for(tokens));
            Admission::Throttled { reading: self.reading(), retry_after }
        }
    }

    /// The reading at `now`, charging nothing (answers that are not metered still report it).
    pub fn peek(&mut self, now: Instant) -> Reading {
        self.requests.refill(now);
        self.tokens.refill(now);
        self.reading()
    }

    fn reading(&self) -> Reading {
        Reading {
            headers: self.headers,
            remaining_requests: self.requests.remaining(),
            remaining_tokens: self.tokens.remaining(),
            limit_requests: self.requests.limit(),
            limit_tokens: self.tokens.limit(),
            reset_requests: self.requests.until_full(),
            reset_tokens: self.tokens.until_full(),
        }
    }
}

/// A region's quota counters since its quota was set (or the region reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaCounts {
    /// Inference requests the quota admitted (charged), whatever their answer.
    pub admitted: u64,
    /// Inference requests answered 2xx.
    pub served: u64,
    /// Inference requests the quota refused with a 429.
    pub throttled: u64,
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` (Go's `time.Duration`) writes it, to
/// the millisecond, rounded up: `0s`, `350ms`, `8.2s`, `1m3s`, `1h2m0.5s`.
pub fn go_duration(d: Duration) -> String {
    let total_ms = d.as_nanos().div_ceil(1_000_000);
    if total_ms == 0 {
        return "0s".to_owned();
    }
    if total_ms < 1000 {
        return format!("{total_ms}ms");
    }
    let (hours, rest) = (total_ms / 3_600_000, total_ms % 3_600_000);
    let (minutes, ms) = (rest / 60_000, rest % 60_000);
    let mut out = String::new();
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    let (secs, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        let _ = write!(out, "{secs}s");
    } else {
        let frac = format!("{frac:03}");
        let _ = write!(out, "{secs}.{}s", frac.trim_end_matches('0'));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn quota(rps: f64, tps: f64, window_secs: u64) -> Quota {
        Quota {
            requests_per_sec: rps,
            tokens_per_sec: tps,
            window: Duration::from_secs(window_secs),
            headers: QuotaHeaders::Full,
        }
    }

    const ONE: Cost = Cost { requests: 1, tokens: 150 };

    #[test]
    fn a_full_bucket_admits_its_capacity_then_throttles_until_the_refill() {
        let t0 = Instant::now();
        // 5 req/s and 750 tok/s over 10 s: 50 requests of 150 tokens.
        let mut b = Buckets::new(&quota(5.0, 750.0, 10), t0);
        for i in 0..50 {
            match b.admit(ONE, t0) {
                Admission::Admitted(r) => {
                    assert_eq!(r.remaining_requests, 49 - i, "request {i}");
                    assert_eq!(r.remaining_tokens, 7500 - 150 * (i + 1));
                }
                other => panic!("request {i} refused: {other:?}"),
            }
        }
        let Admission::Throttled { reading, retry_after } = b.admit(ONE, t0) else {
            panic!("the 51st request fits")
        };
        assert_eq!(retry_after, Duration::from_millis(200), "one request refills in 1/5 s");
        assert_eq!((reading.remaining_requests, reading.remaining_tokens), (0, 0));
        assert_eq!(reading.reset_requests, Duration::from_secs(10));
        // Nothing was charged: after 200 ms exactly one request fits again.
        let t1 = t0 + Duration::from_millis(200);
        assert!(matches!(b.admit(ONE, t1), Admission::Admitted(_)));
        assert!(matches!(b.admit(ONE, t1), Admission::Throttled { .. }));
    }

    #[test]
    fn refill_is_continuous_and_stops_at_capacity() {
        let t0 = Instant::now();
        let mut b = Buckets::new(&quota(10.0, 1000.0, 2), t0);
        for _ in 0..20 {
            assert!(matches!(
                b.admit(Cost { requests: 1, tokens: 50 }, t0),
                Admission::Admitted(_)
            ));
        }
        let r = b.peek(t0 + Duration::from_millis(350));
        assert_eq!(r.remaining_requests, 3, "3.5 requests refilled, reported rounded down");
        assert_eq!(r.remaining_tokens, 2000 - 20 * 50 + 350);
        assert_eq!(r.reset_requests, Duration::from_millis(1650));
        let r = b.peek(t0 + Duration::from_secs(60));
        assert_eq!((r.remaining_requests, r.limit_requests), (20, 20), "never beyond capacity");
        assert_eq!((r.remaining_tokens, r.limit_tokens), (2000, 2000));
        assert_eq!(r.reset_tokens, Duration::ZERO);
    }

    #[test]
    fn the_token_bucket_alone_can_throttle_and_says_when_the_request_fits() {
        let t0 = Instant::now();
        let mut b = Buckets::new(&quota(100.0, 100.0, 1), t0);
        let big = Cost { requests: 1, tokens: 80 };
        assert!(matches!(b.admit(big, t0), Admission::Admitted(_)));
        let Admission::Throttled { reading, retry_after } = b.admit(big, t0) else {
            panic!("80 tokens fit in 20")
        };
        assert_eq!(retry_after, Duration::from_millis(600), "60 missing tokens at 100/s");
        assert_eq!(reading.remaining_requests, 99, "the refused request was not charged");
        // A request larger than the bucket is admitted once the bucket is full.
        let huge = Cost { requests: 1, tokens: 500 };
        let later = t0 + Duration::from_secs(5);
        assert!(matches!(b.admit(huge, later), Admission::Admitted(r) if r.remaining_tokens == 0));
    }

    #[test]
    fn cost_is_the_prompt_estimate_plus_the_maximum() {
        let chat = json!({"messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": [{"type": "text", "text": "abcdefghi"}]}
        ], "max_tokens": 100});
        assert_eq!(Cost::of_request(Some(&chat)), Cost { requests: 1, tokens: 4 + 100 });
        let o_series = json!({"messages": [{"role": "user", "content": "ab"}],
            "max_tokens": 7, "max_completion_tokens": 50});
        assert_eq!(Cost::of_request(Some(&o_series)).tokens, 1 + 50);
        let responses = json!({"input": [{"role": "user", "content": "abcdefgh"}],
            "max_output_tokens": 20});
        assert_eq!(Cost::of_request(Some(&responses)).tokens, 2 + 20);
        let embeddings = json!({"input": ["abcd", "abcd", [1, 2, 3]]});
        assert_eq!(Cost::of_request(Some(&embeddings)).tokens, 5 + DEFAULT_MAX_TOKENS);
        let completions = json!({"prompt": "é".repeat(5)});
        assert_eq!(Cost::of_request(Some(&completions)).tokens, 2 + DEFAULT_MAX_TOKENS);
        assert_eq!(Cost::of_request(None), Cost { requests: 1, tokens: DEFAULT_MAX_TOKENS });
    }

    #[test]
    fn headers_follow_the_chosen_dump() {
        let t0 = Instant::now();
        let mut q = quota(5.0, 750.0, 10);
        let names = |q: &Quota| {
            let mut b = Buckets::new(q, t0);
            b.peek(t0).header_pairs().into_iter().map(|(n, _)| n).collect::<Vec<_>>()
        };
        assert_eq!(names(&q).len(), 6);
        q.headers = QuotaHeaders::RemainingOnly;
        assert_eq!(names(&q), ["x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"]);
        q.headers = QuotaHeaders::None;
        assert!(names(&q).is_empty());
    }

    #[test]
    fn durations_are_written_like_go_and_openai() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_micros(1)), "1ms", "rounded up");
        assert_eq!(go_duration(ms(350)), "350ms");
        assert_eq!(go_duration(ms(1000)), "1s");
        assert_eq!(go_duration(ms(8200)), "8.2s");
        assert_eq!(go_duration(ms(8640)), "8.64s");
        assert_eq!(go_duration(ms(63_000)), "1m3s");
        assert_eq!(go_duration(ms(360_000)), "6m0s");
        assert_eq!(go_duration(ms(3_720_500)), "1h2m0.5s");
    }

    #[test]
    fn invalid_quotas_name_the_field() {
        let mut q = quota(5.0, 750.0, 10);
        assert_eq!(q.validate(), Ok(()));
        q.tokens_per_sec = f64::NAN;
        assert_eq!(q.validate().map_err(|e| e.field), Err("tokens_per_sec"));
        q = quota(0.0, 1.0, 1);
        assert_eq!(q.validate().map_err(|e| e.field), Err("requests_per_sec"));
        q = quota(1.0, 1.0, 0);
        assert_eq!(
            q.validate().map_err(|e| e.to_string()),
            Err("quota.window_ms: must be at least 1".into())
        );
    }

    #[test]
    fn json_shape() {
        let q: Quota = serde_json::from_value(json!({
            "requests_per_sec": 5, "tokens_per_sec": 750.5, "window_ms": 5000,
            "headers": "remaining_only"
        }))
        .expect("valid quota JSON");
        assert_eq!(q.window, Duration::from_secs(5));
        assert_eq!(q.headers, QuotaHeaders::RemainingOnly);
        let back = serde_json::to_value(q).expect("serializes");
        assert_eq!(back["window_ms"], 5000);
        let defaulted: Quota = serde_json::from_value(
            json!({"requests_per_sec": 1, "tokens_per_sec": 1, "window_ms": 1}),
        )
        .expect("headers default");
        assert_eq!(defaulted.headers, QuotaHeaders::Full);
    }
}
