//! Fleet windows: what the control plane says about endpoints elsewhere in the fleet, merged
//! as *remote* windows beside the local state (the rules are in the module docs of `health`).

use std::collections::HashSet;
use std::time::{Instant, SystemTime};

use modelgw_model::EndpointState;
use modelgw_model::protocol::HealthReset;

use super::breaker::{Kind, Window};
use super::{EndpointHealth, HealthRegistry};

impl HealthRegistry {
    /// Replaces the fleet view with `endpoints` (those unavailable somewhere in the fleet);
    /// endpoints not listed lose their remote window. Returns how many windows are active.
    pub fn apply_fleet(&self, endpoints: &[EndpointHealth], now: Instant) -> usize {
        let wall_now = SystemTime::now();
        let mut listed = HashSet::with_capacity(endpoints.len());
        let mut active = 0;
        for remote in endpoints {
            let kind = match remote.state {
                EndpointState::Throttling => Kind::Throttling,
                EndpointState::Error => Kind::Error,
                EndpointState::Healthy => continue,
            };
            // No window, or one that already ended (clocks differ by milliseconds at most).
            let Some(left) = remote.until.and_then(|until| until.duration_since(wall_now).ok())
            else {
                continue;
            };
            if left.is_zero() {
                continue;
            }
            let left = left.min(self.policy.max_throttle);
            listed.insert(remote.endpoint_id);
            self.entry(remote.endpoint_id).lock().remote = Some(Window { kind, until: now + left });
            active += 1;
        }
        for (id, entry) in self.endpoints.load().iter() {
            if !listed.contains(id) {
                entry.lock().remote = None;
            }
        }
        active
    }

    /// Applies operator resets: for each one newer than the last applied to its endpoint,
    /// forgets the local window, backoff and quota readings this data plane recorded
    /// before the reset (what it observed after the reset stands). Returns how many endpoints
    /// were cleared.
    pub fn apply_resets(&self, resets: &[HealthReset], now: Instant) -> usize {
        let wall_now = SystemTime::now();
        let mut cleared = 0;
        for reset in resets {
            let entry = self.entry(reset.endpoint_id);
            let mut state = entry.lock();
            if state.reset_seen.is_some_and(|seen| seen >= reset.at) {
                continue;
            }
            state.reset_seen = Some(reset.at);
            // The reset's instant on this clock; a reset stamped in the future (clock skew)
            // counts as now.
            let ago = wall_now.duration_since(reset.at).unwrap_or_default();
            let Some(reset_instant) = now.checked_sub(ago) else { continue };
            if state.local_since.is_some_and(|since| since <= reset_instant) {
                state.local = None;
                state.local_since = None;
                state.failures = 0;
                state.quota.forget_readings();
                state.published = None;
                cleared += 1;
            }
        }
        cleared
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use modelgw_model::EndpointId;

    use super::*;
    use crate::health::{Health, HealthEvent, Unavailable};

    fn throttled(secs: u64) -> HealthEvent {
        HealthEvent::Throttled { retry_after: Duration::from_secs(secs), reason: "429".into() }
    }

    #[test]
    fn remote_windows_never_shorten_local_ones_and_only_errors_clear_on_success() {
        let (registry, _rx) = HealthRegistry::new(16);
        let (a, b, c) = (EndpointId::new(), EndpointId::new(), EndpointId::new());
        let now = Instant::now();
        let wall = SystemTime::now();
        registry.record(a, &throttled(30), now);
        let remote = |id, state, ms: u64| EndpointHealth {
            endpoint_id: id,
            state,
            until: Some(wall + Duration::from_millis(ms)),
            reason: Some("elsewhere".into()),
        };
        let active = registry.apply_fleet(
            &[
                remote(a, EndpointState::Throttling, 5_000),
                remote(b, EndpointState::Throttling, 5_000),
                remote(c, EndpointState::Error, 5_000),
            ],
            now,
        );
        assert_eq!(active, 3);
        assert!(matches!(
            registry.view(a, now).unavailable,
            Some(Unavailable::Throttling { remote: false, .. })
        ));
        assert!(registry.current(a, now + Duration::from_secs(20)) != Health::Healthy);
        assert!(matches!(
            registry.admit(b, now),
            Err(Unavailable::Throttling { remote: true, .. })
        ));
        // A success here: clears the fleet's error window, not its throttle window.
        registry.record(b, &HealthEvent::Answered, now);
        registry.record(c, &HealthEvent::Answered, now);
        assert!(matches!(registry.current(b, now), Health::Throttling { .. }));
        assert_eq!(registry.current(c, now), Health::Healthy);
        assert_eq!(registry.current(b, now + Duration::from_secs(6)), Health::Healthy, "expires");

        registry.apply_fleet(&[remote(b, EndpointState::Error, 5_000)], now);
        assert!(matches!(registry.current(b, now), Health::Error { .. }));
        registry.apply_fleet(&[], now);
        assert_eq!(registry.current(b, now), Health::Healthy, "each report replaces the view");
    }

    #[test]
    fn a_reset_clears_local_windows_opened_before_it_once() {
        let (registry, _rx) = HealthRegistry::new(16);
        let (before, after) = (EndpointId::new(), EndpointId::new());
        let t0 = Instant::now();
        // The clock of this data plane reads `now` when the wall clock reads "now"; the reset
        // was made a second ago, so it falls between the two windows opened at t0 and t0 + 5 s.
        let now = t0 + Duration::from_secs(5);
        registry.record(before, &throttled(3_000), t0);
        registry.record(after, &throttled(3_000), now);
        let at = SystemTime::now() - Duration::from_secs(1);
        let reset = |id| HealthReset { endpoint_id: id, at };
        assert_eq!(registry.apply_resets(&[reset(before), reset(after)], now), 1);
        assert_eq!(registry.current(before, now), Health::Healthy);
        assert!(matches!(registry.current(after, now), Health::Throttling { .. }));
        // The same reset again changes nothing, even after a new local window opened before it.
        registry.record(before, &throttled(30), t0);
        assert_eq!(registry.apply_resets(&[reset(before)], now), 0);
        assert!(matches!(registry.current(before, now), Health::Throttling { .. }));
    }
}
