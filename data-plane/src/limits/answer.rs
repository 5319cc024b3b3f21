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

/// The upstream's quota headers, removed from answers to keys with limits (Azure once spelt
/// one `x-rate-limit-reset-tokens`).
const UPSTREAM_QUOTA_HEADERS: [HeaderName; 7] = [
    LIMIT_REQUESTS,
    REMAINING_REQUESTS,
    RESET_REQUESTS,
    LIMIT_TOKENS,
    REMAINING_TOKENS,
    RESET_TOKENS,
    HeaderName::from_static("x-rate-limit-reset-tokens"),
];

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
pub(crate) fn set_headers(chain: &KeyChain, headers: &mut HeaderMap) {
    if !chain.limited() {
        return;
    }
    let now = unix_ms(SystemTime::now());
    let (requests, tokens) = tightest(chain, now);
    for name in UPSTREAM_QUOTA_HEADERS {
        headers.remove(name);
    }
    let mut put = |t: Option<Tightest>, names: [HeaderName; 3]| {
        let Some(t) = t else { return };
        let [limit, remaining, reset] = names;
        headers.insert(limit, HeaderValue::from(t.limit));
        headers.insert(remaining, HeaderValue::from(t.remaining));
        if let Ok(value) = HeaderValue::from_str(&reset_text(t.reset)) {
            headers.insert(reset, value);
        }
    };
    put(requests, [LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS]);
    put(tokens, [LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS]);
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
fn reset_text(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1_000);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
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
        assert_eq!(reset_text(Duration::from_millis(850)), "850ms");
        assert_eq!(reset_text(Duration::from_millis(16_200)), "17s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
        assert_eq!(reset_text(Duration::from_secs(7_380)), "2h3m0s");
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
