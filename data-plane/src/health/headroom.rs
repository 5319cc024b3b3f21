//! Quota headroom: an answer whose `x-ratelimit-*` headers say the quota is nearly used up
//! marks its endpoint *low on headroom* for a while, so selection tries it after the others.

use std::time::Instant;

use http::HeaderMap;
use modelgw_model::EndpointId;

use super::azure_headers::RateLimits;
use super::{HealthPolicy, HealthRegistry};

impl HealthRegistry {
    /// Reads the quota headers of an answer; a low reading steers selection away for
    /// [`HealthPolicy::headroom_ttl`], a healthy one clears it.
    pub fn record_headroom(&self, id: EndpointId, headers: &HeaderMap, now: Instant) {
        self.record_rate_limits(id, RateLimits::from_headers(headers).as_ref(), now);
    }

    /// [`HealthRegistry::record_headroom`] with the answer's quota reading already parsed
    /// (the request path reads it once for health and metrics).
    pub fn record_rate_limits(&self, id: EndpointId, limits: Option<&RateLimits>, now: Instant) {
        let Some(low) = limits.map(|limits| is_low(&self.policy, limits)) else { return };
        let entry = self.entry(id);
        entry.lock().low_headroom_until = low.then(|| now + self.policy.headroom_ttl);
    }
}

/// `Some(true)` when the quota headers say the endpoint is about to throttle, `Some(false)`
/// when they show room, `None` when the answer carried none.
#[inline]
pub fn low_headroom(policy: &HealthPolicy, headers: &HeaderMap) -> Option<bool> {
    RateLimits::from_headers(headers).map(|limits| is_low(policy, &limits))
}

/// Whether a quota reading says the endpoint is about to throttle.
#[inline]
fn is_low(policy: &HealthPolicy, limits: &RateLimits) -> bool {
    let RateLimits { remaining_requests, remaining_tokens, limit_tokens } = *limits;
    // Negative values have been seen on some APIs; they carry no information.
    let low_requests =
        remaining_requests.is_some_and(|r| r >= 0 && r as u64 <= policy.low_headroom_requests);
    let low_tokens = match (remaining_tokens, limit_tokens) {
        (Some(remaining), Some(limit)) if remaining >= 0 && limit > 0 => {
            (remaining as f64) < policy.low_headroom_token_fraction * limit as f64
        }
        _ => false,
    };
    low_requests || low_tokens
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::tests::headers;

    #[test]
    fn quota_headers_mark_low_headroom() {
        let policy = HealthPolicy::default();
        let h = |pairs: &[(&'static str, &str)]| headers(pairs);
        assert_eq!(low_headroom(&policy, &HeaderMap::new()), None);
        assert_eq!(
            low_headroom(&policy, &h(&[("x-ratelimit-remaining-requests", "79")])),
            Some(false)
        );
        assert_eq!(
            low_headroom(&policy, &h(&[("x-ratelimit-remaining-requests", "5")])),
            Some(true)
        );
        let tokens = |remaining: &str| {
            low_headroom(
                &policy,
                &h(&[
                    ("x-ratelimit-remaining-tokens", remaining),
                    ("x-ratelimit-limit-tokens", "450000"),
                    ("x-ratelimit-remaining-requests", "-1"),
                ]),
            )
        };
        assert_eq!(tokens("61353"), Some(false));
        assert_eq!(tokens("22000"), Some(true), "below 5 % of the limit");
        assert_eq!(
            low_headroom(&policy, &h(&[("x-ratelimit-remaining-tokens", "10")])),
            Some(false),
            "without a limit a token count says nothing"
        );

        let (registry, _rx) = HealthRegistry::new(4);
        let id = EndpointId::new();
        let now = Instant::now();
        registry.record_headroom(id, &h(&[("x-ratelimit-remaining-requests", "1")]), now);
        assert!(registry.view(id, now).low_headroom);
        assert!(!registry.view(id, now + Duration::from_secs(11)).low_headroom, "expires");
        registry.record_headroom(id, &h(&[("x-ratelimit-remaining-requests", "900")]), now);
        assert!(!registry.view(id, now).low_headroom, "a healthy reading clears it");
    }
}
