//! Per-endpoint health as this data plane observes it, kept outside the routing table (keyed
//! by `EndpointId`) so it survives snapshot swaps.
//!
//! Baseline rules (a fuller routing engine can replace `HealthEvent` producers later):
//! - 429 → `Throttling` until `retry-after-ms`, else `Retry-After` (seconds or HTTP-date),
//!   else "retry after N seconds" in Azure's error message, else [`DEFAULT_THROTTLE`];
//!   capped at [`MAX_THROTTLE`].
//! - 5xx, connect error, timeout, reset, rejected credential → `Error` for [`ERROR_COOLDOWN`].
//! - any other answer → `Healthy`.
//!
//! Reads are lock-free (one atomic load per endpoint). The map itself sits behind a
//! `std::sync::RwLock` that is only written when an endpoint is seen for the first time and
//! never held across an await. State changes are offered to a bounded channel for the
//! control-plane reporter; when it is full the change is dropped (the next one supersedes it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use modelgw_model::{EndpointId, EndpointState};
use tokio::sync::mpsc;

/// Throttle window when a 429 says nothing about when to come back. Azure's standard
/// deployments usually ask for a few seconds; 10 s keeps a hot endpoint from being hammered
/// while its per-minute window refills, without losing it for long.
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(10);

/// Upper bound on any throttle window, whatever the upstream says. Daily quotas answer
/// "retry after 86400 seconds"; one probe request an hour is cheap, while trusting a bogus
/// or misparsed value could silently drop an endpoint for a day.
pub const MAX_THROTTLE: Duration = Duration::from_secs(3600);

/// How long an endpoint is avoided after a 5xx, connect error, timeout, reset or a rejected
/// credential. Short: most such failures are transient, and after the cooldown a single
/// request probes it again.
pub const ERROR_COOLDOWN: Duration = Duration::from_secs(5);

/// Capacity of the health-change channel towards the control-plane reporter. Changes are
/// rare (state transitions only); 1024 absorbs a burst across hundreds of endpoints.
pub const HEALTH_CHANNEL_CAPACITY: usize = 1024;

/// Effective health of an endpoint at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Answered 429; skip until `until`.
    Throttling {
        until: Instant,
    },
    /// Failed (5xx, transport, credential); skip until `until`.
    Error {
        until: Instant,
    },
}

/// What one upstream attempt said about an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthEvent {
    /// Answered something that is not a failure of the endpoint itself.
    Answered,
    /// Answered 429; do not use it for `retry_after`.
    Throttled { retry_after: Duration, reason: String },
    /// Failed; do not use it for [`ERROR_COOLDOWN`].
    Failed { reason: String },
}

/// A state change, as reported to the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthChange {
    pub endpoint_id: EndpointId,
    pub state: EndpointState,
    /// Unix milliseconds until which the endpoint should not be used; 0 when healthy.
    pub until_unix_ms: i64,
    /// Short, secret-free description of the failure; empty when healthy.
    pub reason: String,
}

const TAG_HEALTHY: u64 = 0;
const TAG_THROTTLING: u64 = 1;
const TAG_ERROR: u64 = 2;
const TAG_BITS: u32 = 2;

/// One endpoint's state packed into a word: the low two bits are the tag, the rest the
/// deadline in milliseconds since the registry's epoch. Lock-free to read and write.
#[derive(Debug, Default)]
struct EndpointHealth {
    packed: AtomicU64,
}

/// Health of every endpoint this data plane has sent traffic to.
#[derive(Debug)]
pub struct HealthRegistry {
    epoch: Instant,
    endpoints: RwLock<HashMap<EndpointId, Arc<EndpointHealth>>>,
    changes: mpsc::Sender<HealthChange>,
}

impl HealthRegistry {
    /// A registry and the receiving end of its change channel.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<HealthChange>) {
        let (changes, rx) = mpsc::channel(capacity.max(1));
        (Self { epoch: Instant::now(), endpoints: RwLock::new(HashMap::new()), changes }, rx)
    }

    /// The effective health of `id` at `now`; unknown endpoints are healthy, and a past
    /// deadline means healthy again (the next request probes it).
    pub fn current(&self, id: EndpointId, now: Instant) -> Health {
        let Some(entry) = self.get(id) else { return Health::Healthy };
        let (tag, until) = self.unpack(entry.packed.load(Ordering::Acquire));
        if until <= now {
            return Health::Healthy;
        }
        match tag {
            TAG_THROTTLING => Health::Throttling { until },
            TAG_ERROR => Health::Error { until },
            _ => Health::Healthy,
        }
    }

    /// Applies what an attempt observed and publishes the change if the state changed.
    pub fn record(&self, id: EndpointId, event: &HealthEvent, now: Instant) {
        let (tag, until, reason) = match event {
            HealthEvent::Answered => (TAG_HEALTHY, now, ""),
            HealthEvent::Throttled { retry_after, reason } => {
                (TAG_THROTTLING, now + (*retry_after).min(MAX_THROTTLE), reason.as_str())
            }
            HealthEvent::Failed { reason } => (TAG_ERROR, now + ERROR_COOLDOWN, reason.as_str()),
        };
        let packed = if tag == TAG_HEALTHY { TAG_HEALTHY } else { self.pack(tag, until) };
        let entry = self.entry(id);
        let mut previous = entry.packed.load(Ordering::Acquire);
        loop {
            let (previous_tag, previous_until) = self.unpack(previous);
            // An answer to a request admitted before the 429 says nothing about the quota
            // window: a throttle ends at its deadline, not at the next success.
            let keep_throttle =
                tag == TAG_HEALTHY && previous_tag == TAG_THROTTLING && previous_until > now;
            if previous == packed || keep_throttle {
                return;
            }
            match entry.packed.compare_exchange_weak(
                previous,
                packed,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => previous = actual,
            }
        }
        let (state, until_unix_ms) = match tag {
            TAG_THROTTLING => (EndpointState::Throttling, unix_ms(until, now)),
            TAG_ERROR => (EndpointState::Error, unix_ms(until, now)),
            _ => (EndpointState::Healthy, 0),
        };
        let change = HealthChange { endpoint_id: id, state, until_unix_ms, reason: reason.into() };
        // Dropping when full is deliberate: reporting must never slow the request path.
        let _ = self.changes.try_send(change);
    }

    fn get(&self, id: EndpointId) -> Option<Arc<EndpointHealth>> {
        let map = self.endpoints.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(&id).cloned()
    }

    fn entry(&self, id: EndpointId) -> Arc<EndpointHealth> {
        if let Some(entry) = self.get(id) {
            return entry;
        }
        let mut map = self.endpoints.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(map.entry(id).or_default())
    }

    fn pack(&self, tag: u64, until: Instant) -> u64 {
        // Round up so an endpoint is never used before its deadline.
        let since = until.saturating_duration_since(self.epoch);
        let ms =
            u64::try_from(since.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX >> TAG_BITS);
        (ms << TAG_BITS) | tag
    }

    fn unpack(&self, packed: u64) -> (u64, Instant) {
        let tag = packed & ((1 << TAG_BITS) - 1);
        (tag, self.epoch + Duration::from_millis(packed >> TAG_BITS))
    }
}

fn unix_ms(until: Instant, now: Instant) -> i64 {
    let wall = SystemTime::now() + until.saturating_duration_since(now);
    wall.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The throttle window a 429 asks for: headers first, then the message, else the default.
pub fn throttle_window(headers: &HeaderMap, body: Option<&[u8]>, now: SystemTime) -> Duration {
    retry_after_from_headers(headers, now)
        .or_else(|| body.and_then(retry_after_from_message))
        .unwrap_or(DEFAULT_THROTTLE)
        .min(MAX_THROTTLE)
}

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

/// Finds "retry after N second(s)" or "try again in N second(s)" (any case) in an Azure error
/// body, e.g. "Please retry after 6 seconds." or "Rate limit is exceeded. Try again in 50
/// seconds.".
pub fn retry_after_from_message(body: &[u8]) -> Option<Duration> {
    const PHRASES: [&[u8]; 2] = [b"retry after ", b"try again in "];
    let lower = body.to_ascii_lowercase();
    for phrase in PHRASES {
        let mut from = 0;
        while let Some(pos) = find(&lower[from..], phrase) {
            let start = from + pos + phrase.len();
            let digits =
                lower[start..].iter().take_while(|b| b.is_ascii_digit() || **b == b'.').count();
            let rest = &lower[start + digits..];
            let rest = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
            if digits > 0 && rest.starts_with(b"second") {
                let number = std::str::from_utf8(&lower[start..start + digits]).ok();
                if let Some(secs) = number.and_then(parse_non_negative) {
                    return Some(Duration::from_secs_f64(secs));
                }
            }
            from = start;
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A finite, non-negative number of sane size (so `Duration::from_secs_f64` cannot panic on
/// absurd input; [`MAX_THROTTLE`] caps the result anyway).
fn parse_non_negative(s: &str) -> Option<f64> {
    const LARGEST: f64 = 1e12;
    let value: f64 = s.parse().ok()?;
    (value.is_finite() && (0.0..=LARGEST).contains(&value)).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

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
        assert_eq!(retry_after_from_message(b"{}"), None);
    }

    #[test]
    fn throttle_window_falls_back_to_default_and_is_capped() {
        let now = SystemTime::now();
        assert_eq!(throttle_window(&HeaderMap::new(), None, now), DEFAULT_THROTTLE);
        assert_eq!(throttle_window(&HeaderMap::new(), Some(b"nothing"), now), DEFAULT_THROTTLE);
        assert_eq!(
            throttle_window(&HeaderMap::new(), Some(b"Please retry after 86400 seconds."), now),
            MAX_THROTTLE
        );
        let h = headers(&[("retry-after", "2")]);
        assert_eq!(
            throttle_window(&h, Some(b"retry after 9 seconds"), now),
            Duration::from_secs(2),
            "headers win over the message"
        );
    }

    #[test]
    fn states_expire_and_changes_are_published_once() {
        let (registry, mut rx) = HealthRegistry::new(16);
        let id = EndpointId::new();
        let t0 = Instant::now();
        assert_eq!(registry.current(id, t0), Health::Healthy);

        let throttled =
            HealthEvent::Throttled { retry_after: Duration::from_secs(3), reason: "429".into() };
        registry.record(id, &throttled, t0);
        let Health::Throttling { until } = registry.current(id, t0) else {
            panic!("expected throttling")
        };
        assert!(until >= t0 + Duration::from_secs(3) && until < t0 + Duration::from_millis(3002));
        assert_eq!(registry.current(id, t0 + Duration::from_secs(4)), Health::Healthy);
        let change = rx.try_recv().expect("published");
        assert_eq!(change.state, EndpointState::Throttling);
        assert_eq!(change.reason, "429");
        assert!(change.until_unix_ms > 0);

        registry.record(id, &HealthEvent::Answered, t0 + Duration::from_secs(1));
        assert!(
            matches!(registry.current(id, t0), Health::Throttling { .. }),
            "an answer inside the throttle window does not end it"
        );
        registry.record(id, &HealthEvent::Failed { reason: "503".into() }, t0);
        assert!(matches!(registry.current(id, t0), Health::Error { .. }));
        assert_eq!(rx.try_recv().expect("published").state, EndpointState::Error);

        registry.record(id, &HealthEvent::Answered, t0);
        registry.record(id, &HealthEvent::Answered, t0);
        assert_eq!(registry.current(id, t0), Health::Healthy);
        assert_eq!(rx.try_recv().expect("published").state, EndpointState::Healthy);
        assert!(rx.try_recv().is_err(), "a repeated state is not published again");
    }

    #[test]
    fn a_full_channel_drops_changes_instead_of_blocking() {
        let (registry, mut rx) = HealthRegistry::new(1);
        let now = Instant::now();
        for _ in 0..3 {
            registry.record(EndpointId::new(), &HealthEvent::Failed { reason: "x".into() }, now);
        }
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }
}
