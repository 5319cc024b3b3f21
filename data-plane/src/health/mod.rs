//! Per-endpoint health as this data plane observes it, kept outside the routing table (keyed
//! by `EndpointId`) so it survives snapshot swaps.
//!
//! # State machine (one per endpoint, local view; `breaker.rs`)
//! - `healthy → throttling` on 429, until `retry-after-ms`, else `Retry-After` (seconds or
//!   HTTP-date), else "retry after N seconds" in Azure's error message, else
//!   [`HealthPolicy::default_throttle`]; capped at [`HealthPolicy::max_throttle`]
//!   ([`HealthPolicy::throttle_window`]; the parsing is in `azure_headers.rs`).
//! - `healthy → error` on 5xx, connect errors, timeouts, resets and 401/403 (a rejected
//!   credential), for a cooldown of [`HealthPolicy::error_backoff_base`] doubled per
//!   consecutive failure up to [`HealthPolicy::error_backoff_max`]. Only the failure that opens
//!   the window and a failed half-open trial advance the backoff: a burst of concurrent
//!   requests failing together counts once.
//! - When a window has passed the endpoint is **half-open**: exactly one request at a time may
//!   try it (others skip it, reason `half_open_trial_busy`). A success closes it and resets the
//!   backoff; a failure re-opens it with the next backoff step; a 429 throttles it again.
//! - A success that arrives while a window is still open (a request admitted before the 429 or
//!   the failure) does not end the window.
//!
//! # Fleet windows (remote; `fleet.rs`)
//! The control plane sends `FleetHealth`: endpoints unavailable somewhere in the fleet. They
//! are kept apart from the local state as *remote* windows and the endpoint is skipped until
//! the later of both. A remote window never shortens a local one (they are independent and
//! the later wins). A local success clears a remote **error** window (it just worked from
//! here, and errors are often local to a path or node) but never a remote **throttle** window
//! (quota is shared by the whole fleet, so a success here only means this request got in
//! before the quota ran out). Each `FleetHealth` replaces the remote view; a data plane that
//! lost its control plane keeps its own view and the remote windows simply expire.
//!
//! # Quota and latency (`quota.rs`, `latency.rs`)
//! Each answer's `x-ratelimit-*` headers (2xx and 429) are a reading of the endpoint's quota,
//! placed at the moment its request was sent and ordered by it; with what this data plane sent
//! since, the refill rate and its share of the fleet's spending they give an estimate of the
//! room left (`quota.rs` has the model). Selection weights members by it, admission refuses a
//! member this request would not fit until the refill says it will. Time to first byte feeds an
//! EWMA used by the `fastest` strategy, which decays toward an optimistic prior (zero) while an
//! endpoint is not sampled, so a recovered region is tried again.
//!
//! Locking (`registry.rs`): one `std::sync::Mutex` per endpoint, held for a few field updates
//! and never across an await; the map is copy-on-write behind an `ArcSwap` (lock-free reads),
//! replaced only when an endpoint is first seen. State changes are offered to a bounded
//! channel for the control-plane reporter; when it is full the change is dropped (the next one
//! supersedes it).

mod azure_headers;
mod breaker;
mod fleet;
mod latency;
mod policy;
mod quota;
mod registry;

use std::time::{Instant, SystemTime};

use modelgw_model::EndpointState;

pub use azure_headers::{RateLimits, retry_after_from_headers, retry_after_from_message};
pub use breaker::{Admission, HealthEvent, Unavailable};
pub use modelgw_model::GatewayState;
pub use policy::{DEFAULT_THROTTLE, HealthPolicy, MAX_THROTTLE};
pub use quota::{Demand, QuotaMark, Room};
pub use registry::{EndpointView, Health, HealthRegistry};

/// Capacity of the health-change channel towards the control-plane reporter. Changes are
/// rare (state transitions only); 1024 absorbs a burst across hundreds of endpoints.
pub const HEALTH_CHANNEL_CAPACITY: usize = 1024;

/// A state change as reported to the control plane, and an endpoint's state as the fleet
/// reports it back: the protocol's one shape of a health fact.
pub use modelgw_model::protocol::EndpointHealth;

/// The gateway's state from its enabled members' states (the rule lives in the model, shared
/// with the admin API).
pub fn gateway_state(members: &[EndpointState]) -> GatewayState {
    GatewayState::of(members)
}

/// `until` on the wall clock, reading it once (`now` is the same instant).
fn wall_time(until: Instant, now: Instant) -> SystemTime {
    SystemTime::now() + until.saturating_duration_since(now)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn gateway_state_follows_its_members() {
        use EndpointState::{Error, Healthy, Throttling};
        assert_eq!(gateway_state(&[Healthy, Healthy]), GatewayState::Healthy);
        assert_eq!(gateway_state(&[Healthy, Throttling]), GatewayState::Degraded);
        assert_eq!(gateway_state(&[Error, Healthy]), GatewayState::Degraded);
        assert_eq!(gateway_state(&[Error, Throttling]), GatewayState::Throttling);
        assert_eq!(gateway_state(&[Throttling]), GatewayState::Throttling);
        assert_eq!(gateway_state(&[Error, Error]), GatewayState::Error);
        assert_eq!(gateway_state(&[]), GatewayState::Error);
    }
}
