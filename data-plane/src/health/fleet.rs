//! Fleet windows: what the control plane says about endpoints elsewhere in the fleet, merged
//! as *remote* windows beside the local state (the rules are in the module docs of `health`).

use std::collections::HashSet;
use std::time::{Instant, SystemTime};

use modelgw_model::EndpointState;

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
}
