//! The thresholds of endpoint health, each with why it has its value, and the two rules that
//! turn an observation into a window: how long a 429 throttles and how long an error cools down.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::azure_headers::{retry_after_from_headers, retry_after_from_message};

/// Throttle window when a 429 says nothing about when to come back. Azure's standard
/// deployments usually ask for a few seconds; 10 s keeps a hot endpoint from being hammered
/// while its per-minute window refills, without losing it for long.
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(10);

/// Upper bound on any throttle window, whatever the upstream says. Daily quotas answer
/// with long windows, but trusting a bogus or misparsed value could silently drop an
/// endpoint for a day.
pub const MAX_THROTTLE: Duration = Duration::from_secs(3600);

/// Every threshold of the health state machine and the latency estimate used by the `fastest`
/// strategy (the quota rules are per gateway: `routing.quota`).
#[derive(Clone, Debug, PartialEq)]
pub struct HealthPolicy {
    /// See [`DEFAULT_THROTTLE`].
    pub default_throttle: Duration,
    /// See [`MAX_THROTTLE`].
    pub max_throttle: Duration,
    /// First error cooldown (2 s). Most 5xx and resets are transient; 2 s takes the endpoint
    /// out of a burst of requests without losing it for long, and the half-open trial finds
    /// out cheaply whether it is back.
    pub error_backoff_base: Duration,
    /// Longest error cooldown (60 s), reached after six consecutive failed trials. A dead
    /// region is then probed once a minute per data plane: negligible load, and recovery is
    /// noticed within a minute.
    pub error_backoff_max: Duration,
    /// Weight of a new time-to-first-byte sample in the EWMA (0.3): a sustained slowdown shows
    /// within two or three requests while one outlier moves the estimate by less than a third.
    pub latency_alpha: f64,
    /// Half-life of the decay of an endpoint's latency estimate toward zero (an optimistic
    /// prior) while it is not sampled (5 s). An endpoint that lost traffic for being slow is
    /// tried again after a few seconds, so a recovered region is noticed.
    pub latency_decay_half_life: Duration,
    /// Share of `fastest` decisions that pick a random available member of the group instead
    /// (5 %): keeps every region's estimate fresh at a small cost to the fast path.
    pub exploration: f64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            default_throttle: DEFAULT_THROTTLE,
            max_throttle: MAX_THROTTLE,
            error_backoff_base: Duration::from_secs(2),
            error_backoff_max: Duration::from_secs(60),
            latency_alpha: 0.3,
            latency_decay_half_life: Duration::from_secs(5),
            exploration: 0.05,
        }
    }
}

impl HealthPolicy {
    /// Cooldown after the `failures`-th consecutive failure (1-based): base·2^(n−1), capped.
    pub fn error_backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        self.error_backoff_base.saturating_mul(factor).min(self.error_backoff_max)
    }

    /// The throttle window a 429 asks for: `retry-after-ms`, else `Retry-After`, else "retry
    /// after N seconds" in the start of its `body`, else [`Self::default_throttle`]; capped
    /// at [`Self::max_throttle`]. The request path reads the body only when no header says
    /// anything (`None` here then stands for "not read").
    pub fn throttle_window(
        &self,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: SystemTime,
    ) -> Duration {
        retry_after_from_headers(headers, now)
            .or_else(|| body.and_then(retry_after_from_message))
            .unwrap_or(self.default_throttle)
            .min(self.max_throttle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tests::headers;

    #[test]
    fn throttle_window_falls_back_to_default_and_is_capped() {
        // The documented values (README, ARCHITECTURE): 10 s when a 429 says nothing, 1 h cap.
        let policy = HealthPolicy::default();
        let now = SystemTime::now();
        let none = HeaderMap::new();
        assert_eq!(policy.throttle_window(&none, None, now), Duration::from_secs(10));
        assert_eq!(policy.throttle_window(&none, Some(b"nothing"), now), Duration::from_secs(10));
        assert_eq!(
            policy.throttle_window(&none, Some(b"Please retry after 86400 seconds."), now),
            Duration::from_secs(3600)
        );
        assert_eq!(
            policy.throttle_window(&headers(&[("retry-after", "86400")]), None, now),
            Duration::from_secs(3600),
            "the cap applies to headers too"
        );
        assert_eq!(
            policy.throttle_window(&none, Some(b"Please retry after 7 seconds."), now),
            Duration::from_secs(7)
        );
        let h = headers(&[("retry-after", "2")]);
        assert_eq!(
            policy.throttle_window(&h, Some(b"retry after 9 seconds"), now),
            Duration::from_secs(2),
            "headers win over the message"
        );
    }

    #[test]
    fn throttle_window_follows_a_configured_policy() {
        let policy = HealthPolicy {
            default_throttle: Duration::from_secs(3),
            max_throttle: Duration::from_secs(20),
            ..HealthPolicy::default()
        };
        let now = SystemTime::now();
        let none = HeaderMap::new();
        assert_eq!(policy.throttle_window(&none, None, now), Duration::from_secs(3));
        let h = headers(&[("retry-after-ms", "45000")]);
        assert_eq!(policy.throttle_window(&h, None, now), Duration::from_secs(20));
    }

    #[test]
    fn error_cooldowns_double_up_to_a_minute() {
        let policy = HealthPolicy::default();
        assert_eq!(policy.error_backoff(1), Duration::from_secs(2));
        assert_eq!(policy.error_backoff(2), Duration::from_secs(4));
        assert_eq!(policy.error_backoff(5), Duration::from_secs(32));
        assert_eq!(policy.error_backoff(6), Duration::from_secs(60), "capped");
        assert_eq!(policy.error_backoff(u32::MAX), Duration::from_secs(60));
    }
}
