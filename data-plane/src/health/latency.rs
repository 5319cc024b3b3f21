//! The latency estimate behind the `fastest` strategy: an EWMA of time to first byte that
//! decays toward zero (an optimistic prior) while an endpoint is not sampled.

use std::time::{Duration, Instant};

use modelgw_model::EndpointId;

use super::HealthRegistry;
use super::registry::State;

impl HealthRegistry {
    /// Feeds a time-to-first-byte sample into the endpoint's latency estimate.
    pub fn record_latency(&self, id: EndpointId, ttfb: Duration, now: Instant) {
        let entry = self.entry(id);
        let mut state = entry.lock();
        let sample = ttfb.as_secs_f64() * 1000.0;
        let alpha = self.policy.latency_alpha.clamp(0.0, 1.0);
        state.latency_ms = Some(match self.decayed_latency(&state, now) {
            Some(previous) => previous + alpha * (sample - previous),
            None => sample,
        });
        state.sampled_at = Some(now);
    }

    /// The estimate at `now`: halved per `latency_decay_half_life` since the last sample.
    #[inline]
    pub(super) fn decayed_latency(&self, state: &State, now: Instant) -> Option<f64> {
        let latency = state.latency_ms?;
        let age = state.sampled_at.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let half_life = self.policy.latency_decay_half_life.as_secs_f64();
        if half_life <= 0.0 {
            return Some(latency);
        }
        Some(latency * 0.5f64.powf(age.as_secs_f64() / half_life))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_an_ewma_that_decays_toward_zero_when_not_sampled() {
        let (registry, _rx) = HealthRegistry::new(4);
        let id = EndpointId::new();
        let now = Instant::now();
        assert_eq!(registry.view(id, now).latency_ms, None);
        registry.record_latency(id, Duration::from_millis(100), now);
        assert_eq!(registry.view(id, now).latency_ms, Some(100.0));
        registry.record_latency(id, Duration::from_millis(200), now);
        let ewma = registry.view(id, now).latency_ms.expect("sampled");
        assert!((ewma - 130.0).abs() < 1e-9, "{ewma}");
        let later = registry.view(id, now + Duration::from_secs(5)).latency_ms.expect("sampled");
        assert!((later - 65.0).abs() < 1e-6, "one half-life halves it: {later}");
    }
}
