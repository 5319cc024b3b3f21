//! What a client of a key with limits sees of them: the 429's message and `Retry-After`, and
//! the key's `x-ratelimit-*` headers on every answer (in place of the upstream's, which
//! describe the shared Azure deployment, not the client's key).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use modelgw_model::keys::{Measure, Window};

use super::budget::{MEASURES, bit};
use super::chain::{KeyChain, Refusal, RefusalReason};
use super::unix_ms;

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// Azure once spelt `x-ratelimit-reset-tokens` this way: removed from answers to keys with
/// limits with the rest of the upstream's quota headers.
const OLD_RESET_TOKENS: HeaderName = HeaderName::from_static("x-rate-limit-reset-tokens");

impl Refusal {
    /// The 429's message: the window and measure that refused, never the key.
    pub(crate) fn message(&self) -> String {
        let secs = self.retry_after_secs();
        let plural = if secs == 1 { "" } else { "s" };
        if self.reason == RefusalReason::NoLease {
            return format!(
                "The gateway cannot check this key's limits right now (no budget lease from its control plane). Please retry after {secs} second{plural}."
            );
        }
        let whose = if self.inherited { " (set on a key above it)" } else { "" };
        format!(
            "Requests to this gateway key have exceeded its limit of {} {} per {}{whose}. Please retry after {secs} second{plural}.",
            self.limit,
            measure_words(self.measure),
            self.window.as_str(),
        )
    }

    /// `Retry-After` in whole seconds: rounded up, at least 1.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        let wait = self.retry_after;
        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
    }
}

fn measure_words(m: Measure) -> &'static str {
    match m {
        Measure::Requests => "requests",
        Measure::PromptTokens => "prompt tokens",
        Measure::CompletionTokens => "completion tokens",
        Measure::TotalTokens => "total tokens",
    }
}

/// The binding counter of one kind (requests or tokens): its limit, what remains fleet-wide
/// as this instance knows it, and when its window resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tightest {
    limit: u64,
    remaining: u64,
    reset: Duration,
    window: Window,
}

impl Tightest {
    /// The smaller remaining wins; on a tie, the window that resets first.
    fn keep(slot: &mut Option<Tightest>, candidate: Tightest) {
        let better = match slot {
            None => true,
            Some(t) => (candidate.remaining, candidate.reset) < (t.remaining, t.reset),
        };
        if better {
            *slot = Some(candidate);
        }
    }
}

/// Replaces the upstream's `x-ratelimit-*` headers with the key's, for the chain's tightest
/// request counter and tightest token counter (any limited window of the key or of an
/// ancestor; prompt, completion and total tokens alike). Nothing for a chain without limits;
/// a kind the chain does not limit gets no headers.
///
/// On every answer to a limited key, so kept cheap: an insert replaces the upstream's header of
/// the same name, so only the names not set (and Azure's old spelling) are removed, and only
/// when one pass over the answer's header names finds any quota header at all; the values are
/// written without `format!`.
pub(crate) fn set_headers(chain: &KeyChain, headers: &mut HeaderMap) {
    if !chain.limited() {
        return;
    }
    let now = unix_ms(SystemTime::now());
    let (requests, tokens) = tightest(chain, now);
    let upstream_sent_some = headers.keys().any(|k| k.as_str().starts_with("x-rate"));
    for (t, names) in [
        (requests, [LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS]),
        (tokens, [LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS]),
    ] {
        let [limit, remaining, reset] = names;
        match t {
            Some(t) => {
                headers.insert(limit, HeaderValue::from(t.limit));
                headers.insert(remaining, HeaderValue::from(t.remaining));
                headers.insert(reset, reset_value(t.reset));
            }
            None if upstream_sent_some => {
                for name in [limit, remaining, reset] {
                    headers.remove(name);
                }
            }
            None => {}
        }
    }
    if upstream_sent_some {
        headers.remove(OLD_RESET_TOKENS);
    }
}

/// The chain's tightest request and token counters at `now` (unix ms).
fn tightest(chain: &KeyChain, now: i64) -> (Option<Tightest>, Option<Tightest>) {
    let mut requests = None;
    let mut tokens = None;
    for link in chain.links.iter() {
        for (w, window) in Window::ALL.iter().enumerate() {
            let mask = link.mask[w];
            if mask == 0 {
                continue;
            }
            let start = window.start_of(now);
            let reset = Duration::from_millis((start + window.len_ms() - now).max(0) as u64);
            let cell = link.budget.current(*window);
            // A cell of an earlier window: nothing counted in this one yet.
            let current = cell.start_ms >= start;
            for m in 0..MEASURES {
                if mask & bit(m) == 0 {
                    continue;
                }
                let limit = link.limit[w][m];
                let remaining = if current { cell.remaining(m, limit) } else { limit };
                let t = Tightest { limit, remaining, reset, window: *window };
                let slot = if m == Measure::Requests.index() { &mut requests } else { &mut tokens };
                Tightest::keep(slot, t);
            }
        }
    }
    (requests, tokens)
}

/// A reset delay the way OpenAI writes it: `850ms`, `17s`, `6m0s`, `2h3m0s`.
fn reset_value(d: Duration) -> HeaderValue {
    let mut text = ResetText::default();
    let ms = d.as_millis() as u64;
    if ms < 1_000 {
        text.number(ms).push(b"ms");
    } else {
        let secs = ms.div_ceil(1_000);
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            text.number(h).push(b"h");
        }
        if h > 0 || m > 0 {
            text.number(m).push(b"m");
        }
        text.number(s).push(b"s");
    }
    // Digits and letters only: always a valid header value.
    HeaderValue::from_bytes(text.as_bytes()).unwrap_or(HeaderValue::from_static("0s"))
}

/// A reset text on the stack: at most three 20-digit numbers and their units.
struct ResetText {
    buf: [u8; 72],
    len: usize,
}

impl Default for ResetText {
    fn default() -> Self {
        ResetText { buf: [0; 72], len: 0 }
    }
}

impl ResetText {
    fn push(&mut self, bytes: &[u8]) -> &mut Self {
        let end = (self.len + bytes.len()).min(self.buf.len());
        self.buf[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
        self
    }

    fn number(&mut self, mut n: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..])
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use modelgw_model::GatewayKeyId;
    use modelgw_model::keys::{KeyLimits, Usage, WindowLimits};

    use crate::limits::{KeyBudget, Link, Shared};

    #[test]
    fn resets_read_like_openai_s() {
        assert_eq!(reset_value(Duration::from_millis(0)), "0ms");
        assert_eq!(reset_value(Duration::from_millis(850)), "850ms");
        assert_eq!(reset_value(Duration::from_millis(1_000)), "1s");
        assert_eq!(reset_value(Duration::from_millis(16_200)), "17s");
        assert_eq!(reset_value(Duration::from_secs(360)), "6m0s");
        assert_eq!(reset_value(Duration::from_secs(3_600)), "1h0m0s");
        assert_eq!(reset_value(Duration::from_secs(7_380)), "2h3m0s");
        assert_eq!(reset_value(Duration::from_secs(86_400)), "24h0m0s");
        let most = reset_value(Duration::MAX);
        assert!(most.to_str().is_ok_and(|t| t.ends_with('s') && t.contains('h')), "{most:?}");
    }

    #[test]
    fn the_tightest_counters_of_the_chain_replace_the_upstreams_headers() {
        // 2026-12-07T10:00:30Z: 30 s left in the minute, 3570 s in the hour.
        let now = 1_796_637_630_000;
        let shared = Arc::new(Shared::new());
        let child = Arc::new(KeyBudget::new(GatewayKeyId::new(), now));
        let parent = Arc::new(KeyBudget::new(GatewayKeyId::new(), now));
        let mut own = KeyLimits::default();
        own.per_minute.requests = Some(60);
        own.per_hour.total_tokens = Some(100_000);
        let mut above = KeyLimits::default();
        above.per_hour.requests = Some(1_000);
        above.per_hour.prompt_tokens = Some(5_000);
        let chain = KeyChain::new(
            vec![Link::new(Arc::clone(&child), &own), Link::new(Arc::clone(&parent), &above)],
            shared,
        );
        // The parent's hour already used 4,900 prompt tokens (fleet-wide, per its grant).
        let cell = parent.cell(Window::Hour, Window::Hour.start_of(now));
        let granted = WindowLimits { prompt_tokens: Some(50), ..WindowLimits::default() };
        cell.apply_grant(
            &granted,
            &Usage::request(4_900, 0),
            &Usage::default(),
            &WindowLimits::default(),
        );
        let (requests, tokens) = tightest(&chain, now);
        assert_eq!(
            requests,
            Some(Tightest {
                limit: 60,
                remaining: 60,
                reset: Duration::from_secs(30),
                window: Window::Minute
            })
        );
        assert_eq!(
            tokens,
            Some(Tightest {
                limit: 5_000,
                remaining: 100,
                reset: Duration::from_secs(3_570),
                window: Window::Hour
            })
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining-tokens", HeaderValue::from_static("61353"));
        headers.insert("x-rate-limit-reset-tokens", HeaderValue::from_static("55"));
        headers.insert("x-ms-region", HeaderValue::from_static("East US"));
        set_headers(&chain, &mut headers);
        assert!(!headers.contains_key("x-rate-limit-reset-tokens"));
        assert_eq!(headers["x-ratelimit-limit-requests"], "60");
        assert_eq!(headers["x-ratelimit-limit-tokens"], "5000");
        assert_eq!(headers["x-ms-region"], "East US");
        assert!(headers.contains_key("x-ratelimit-reset-tokens"));
    }

    #[test]
    fn a_kind_the_chain_does_not_limit_keeps_none_of_the_upstreams_headers() {
        let now = 1_796_637_630_000;
        let budget = Arc::new(KeyBudget::new(GatewayKeyId::new(), now));
        let mut own = KeyLimits::default();
        own.per_minute.requests = Some(60);
        let chain = KeyChain::new(vec![Link::new(budget, &own)], Arc::new(Shared::new()));
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-limit-requests", "1000"),
            ("x-ratelimit-remaining-requests", "999"),
            ("x-ratelimit-limit-tokens", "100000"),
            ("x-ratelimit-remaining-tokens", "61353"),
            ("x-ratelimit-reset-tokens", "5s"),
            ("x-rate-limit-reset-tokens", "5"),
            ("x-ms-region", "East US"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        set_headers(&chain, &mut headers);
        assert_eq!(headers["x-ratelimit-limit-requests"], "60");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "60");
        assert!(headers.contains_key("x-ratelimit-reset-requests"));
        for gone in [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
            "x-rate-limit-reset-tokens",
        ] {
            assert!(!headers.contains_key(gone), "{gone} kept: {headers:?}");
        }
        assert_eq!(headers.len(), 4, "{headers:?}");
        // An upstream without quota headers: the key's alone.
        let mut headers = HeaderMap::new();
        set_headers(&chain, &mut headers);
        assert_eq!(headers.len(), 3, "{headers:?}");
    }

    #[test]
    fn the_refusal_names_the_window_and_measure_never_the_key() {
        let refusal = Refusal {
            reason: RefusalReason::WindowSpent,
            window: Window::Hour,
            measure: Measure::TotalTokens,
            limit: 10_000,
            inherited: true,
            retry_after: Duration::from_millis(1_200),
            seen: None,
        };
        assert_eq!(
            refusal.message(),
            "Requests to this gateway key have exceeded its limit of 10000 total tokens per hour (set on a key above it). Please retry after 2 seconds."
        );
        assert_eq!(refusal.retry_after_secs(), 2);
    }
}
