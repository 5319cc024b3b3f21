//! The state machine of one endpoint (see the module docs of `health`): what an attempt's
//! outcome does to its windows, who may send it a request now, and the half-open trial slot.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use modelgw_model::{EndpointId, EndpointState};

use super::quota::{Demand, MIN_QUOTA_WAIT, QuotaMark};
use super::registry::{Entry, State};
use super::{EndpointHealth, HealthRegistry, wall_time};

/// Why an endpoint cannot take a request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Answered 429 (here, or elsewhere in the fleet when `remote`).
    Throttling { until: Instant, remote: bool },
    /// Failed (5xx, transport, credential) here, or elsewhere in the fleet when `remote`.
    Error { until: Instant, remote: bool },
    /// Half-open and its one trial request is in flight.
    TrialBusy,
    /// Its quota estimate says this request would not fit before `until` (`quota.rs`); or,
    /// with `first_answer`, nothing is known of its quota yet and enough requests are already
    /// on their way to learn it: look again at `until`.
    Quota { until: Instant, first_answer: bool },
}

impl Unavailable {
    /// When the endpoint may be tried again (a busy trial: unknown, `None`).
    pub fn until(self) -> Option<Instant> {
        match self {
            Unavailable::Throttling { until, .. }
            | Unavailable::Error { until, .. }
            | Unavailable::Quota { until, .. } => Some(until),
            Unavailable::TrialBusy => None,
        }
    }

    /// Low-cardinality reason for logs and `x-modelgw-attempts`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::Throttling { remote: false, .. } => "throttling",
            Unavailable::Throttling { remote: true, .. } => "fleet_throttling",
            Unavailable::Error { remote: false, .. } => "error_cooldown",
            Unavailable::Error { remote: true, .. } => "fleet_error",
            Unavailable::TrialBusy => "half_open_trial_busy",
            Unavailable::Quota { .. } => "quota_exhausted",
        }
    }

    /// Out of quota: throttled by the upstream, or short by this data plane's estimate.
    pub fn is_throttling(self) -> bool {
        matches!(self, Unavailable::Throttling { .. } | Unavailable::Quota { .. })
    }

    /// Short by the quota estimate (no upstream said so).
    pub fn is_quota(self) -> bool {
        matches!(self, Unavailable::Quota { .. })
    }

    /// Held back only until the endpoint's first answer says what its quota is: a wait, not a
    /// throttle (a request is never refused for it while its deadline allows waiting).
    pub fn awaits_first_answer(self) -> bool {
        matches!(self, Unavailable::Quota { first_answer: true, .. })
    }
}

/// What one upstream attempt said about an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthEvent {
    /// Answered something that is not a failure of the endpoint itself.
    Answered,
    /// Answered 429; do not use it for `retry_after`.
    Throttled { retry_after: Duration, reason: String },
    /// Failed; cool down with the next backoff step.
    Failed { reason: String },
}

impl HealthEvent {
    /// The event's description; empty for an answer.
    pub fn reason(&self) -> &str {
        match self {
            HealthEvent::Answered => "",
            HealthEvent::Throttled { reason, .. } | HealthEvent::Failed { reason } => reason,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Throttling,
    Error,
}

/// A period in which an endpoint is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) kind: Kind,
    pub(super) until: Instant,
}

/// Permission to send one request to an endpoint: counts it in flight and, for a half-open
/// endpoint, holds the single trial slot. Dropping it releases both.
#[derive(Debug)]
pub struct Admission {
    entry: Arc<Entry>,
    trial: bool,
    mark: QuotaMark,
}

impl Admission {
    /// Where this request sits in the endpoint's quota sequence: what its answer's reading is
    /// ordered by ([`HealthRegistry::record_quota`]).
    pub fn mark(&self) -> QuotaMark {
        self.mark
    }

    /// Whether this request is the endpoint's half-open trial.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// Frees the trial slot once the trial's outcome is recorded, while the request itself
    /// (e.g. a long stream) stays counted in flight.
    pub fn finish_trial(&mut self) {
        if std::mem::take(&mut self.trial) {
            self.entry.lock().trial_in_flight = false;
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.entry.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.trial {
            self.entry.lock().trial_in_flight = false;
        }
    }
}

impl HealthRegistry {
    /// [`Self::admit_for`] a request that costs no tokens.
    pub fn admit(&self, id: EndpointId, now: Instant) -> Result<Admission, Unavailable> {
        self.admit_for(id, now, &Demand::default())
    }

    /// Claims the right to send one request of `demand` to `id` now: refused while a window is
    /// open, a half-open trial is in flight, or its quota estimate says the request would not
    /// fit; the half-open trial slot is taken when free. Admitted, the request is charged to
    /// the estimate under the same lock (concurrent requests cannot both take the last room).
    pub fn admit_for(
        &self,
        id: EndpointId,
        now: Instant,
        demand: &Demand,
    ) -> Result<Admission, Unavailable> {
        let entry = self.entry(id);
        let (trial, mark) = {
            let mut state = entry.lock();
            if let Some(reason) = unavailable(&state, now) {
                return Err(reason);
            }
            let room = state.quota.room(demand, now);
            let short = room.is_some_and(|room| !room.fits());
            // The logged state has hysteresis: at saturation an endpoint fits one request per
            // refill step and is short again at once; it is "out of quota" until it has room
            // for several, so the log gets a line per episode, not per refill.
            let logged_short = state.quota.short;
            let recovered = room.is_none_or(|room| room.requests >= QUOTA_ROOM_AGAIN);
            if (short && !logged_short) || (logged_short && recovered) {
                state.quota.short = short;
                log_quota_change(id, short, room);
            }
            if let (true, Some(room)) = (short, room) {
                return Err(Unavailable::Quota { until: now + room.wait, first_answer: false });
            }
            if state.quota.waits_for_a_reading(demand, entry.in_flight.load(Ordering::Acquire)) {
                return Err(Unavailable::Quota { until: now + MIN_QUOTA_WAIT, first_answer: true });
            }
            let half_open = state.local.is_some();
            if half_open {
                state.trial_in_flight = true;
            }
            (half_open, state.quota.charge(demand.tokens, now))
        };
        entry.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Admission { entry, trial, mark })
    }

    /// Like [`Self::admit`] for a call pinned to `id` (a follow-up on a response it holds):
    /// never refused, since no other endpoint can answer it — a window only made the others
    /// skip it — and never the half-open trial, so it cannot take that slot from the traffic
    /// whose outcome reopens the endpoint. Counted in flight like any request.
    pub fn admit_pinned(&self, id: EndpointId, tokens: u64, now: Instant) -> Admission {
        let entry = self.entry(id);
        let mark = entry.lock().quota.charge(tokens, now);
        entry.in_flight.fetch_add(1, Ordering::AcqRel);
        Admission { entry, trial: false, mark }
    }

    /// Applies what an attempt observed and publishes the change if the state changed.
    pub fn record(&self, id: EndpointId, event: &HealthEvent, now: Instant) {
        let entry = self.entry(id);
        let change = {
            let mut state = entry.lock();
            let open = state.local.filter(|w| w.until > now);
            match event {
                HealthEvent::Answered => {
                    if open.is_some() {
                        // Admitted before the window opened: says nothing about it.
                        return;
                    }
                    state.local = None;
                    state.failures = 0;
                    if state.remote.is_some_and(|w| w.kind == Kind::Error) {
                        state.remote = None;
                    }
                }
                HealthEvent::Throttled { retry_after, .. } => {
                    let until = now + (*retry_after).min(self.policy.max_throttle);
                    let later = open.is_some_and(|w| w.until >= until);
                    if !later {
                        state.local = Some(Window { kind: Kind::Throttling, until });
                        state.local_since = Some(now);
                    }
                }
                HealthEvent::Failed { .. } => {
                    if open.is_some() {
                        // A request admitted before the window opened; the failure that
                        // opened it already counted.
                        return;
                    }
                    state.failures = state.failures.saturating_add(1);
                    let until = now + self.policy.error_backoff(state.failures);
                    state.local = Some(Window { kind: Kind::Error, until });
                    state.local_since = Some(now);
                }
            }
            let now_state = state.local.filter(|w| w.until > now);
            if now_state == state.published {
                return;
            }
            state.published = now_state;
            let reason = event.reason();
            match now_state {
                None => EndpointHealth {
                    endpoint_id: id,
                    state: EndpointState::Healthy,
                    until: None,
                    reason: None,
                },
                Some(Window { kind, until }) => EndpointHealth {
                    endpoint_id: id,
                    state: match kind {
                        Kind::Throttling => EndpointState::Throttling,
                        Kind::Error => EndpointState::Error,
                    },
                    until: Some(wall_time(until, now)),
                    reason: Some(reason.to_owned()),
                },
            }
        };
        // Dropping when full is deliberate: reporting must never slow the request path.
        let _ = self.changes.try_send(change);
    }
}

/// Requests of room an endpoint short of quota needs before it is logged as having room again.
const QUOTA_ROOM_AGAIN: f64 = 5.0;

/// The one line an endpoint's quota state change gets (never one per request).
fn log_quota_change(id: EndpointId, short: bool, room: Option<super::quota::Room>) {
    if short {
        let wait_ms = room.map(|r| r.wait.as_millis() as u64);
        tracing::info!(endpoint_id = %id, wait_ms, "endpoint out of quota by its estimate; skipped until the refill");
    } else {
        tracing::info!(endpoint_id = %id, "endpoint has quota room again");
    }
}

/// Why `state` refuses a request at `now`, if it does: the later of the local and remote
/// windows, else a busy half-open trial.
#[inline]
pub(super) fn unavailable(state: &State, now: Instant) -> Option<Unavailable> {
    let as_unavailable = |w: Window, remote: bool| match w.kind {
        Kind::Throttling => Unavailable::Throttling { until: w.until, remote },
        Kind::Error => Unavailable::Error { until: w.until, remote },
    };
    let local = state.local.filter(|w| w.until > now).map(|w| as_unavailable(w, false));
    let remote = state.remote.filter(|w| w.until > now).map(|w| as_unavailable(w, true));
    match (local, remote) {
        (Some(l), Some(r)) => Some(if r.until() > l.until() { r } else { l }),
        (Some(window), None) | (None, Some(window)) => Some(window),
        (None, None) if state.local.is_some() && state.trial_in_flight => {
            Some(Unavailable::TrialBusy)
        }
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;

    fn throttled(secs: u64) -> HealthEvent {
        HealthEvent::Throttled { retry_after: Duration::from_secs(secs), reason: "429".into() }
    }

    fn failed() -> HealthEvent {
        HealthEvent::Failed { reason: "503".into() }
    }
    #[test]
    fn a_throttle_window_ends_in_a_single_half_open_trial_that_closes_on_success() {
        let (registry, mut rx) = HealthRegistry::new(16);
        let id = EndpointId::new();
        let t0 = Instant::now();
        assert_eq!(registry.current(id, t0), Health::Healthy);
        registry.record(id, &throttled(3), t0);
        let Health::Throttling { until } = registry.current(id, t0) else {
            panic!("expected throttling")
        };
        assert!(until >= t0 + Duration::from_secs(3) && until < t0 + Duration::from_millis(3002));
        let change = rx.try_recv().expect("published");
        assert_eq!(change.state, EndpointState::Throttling);
        assert_eq!(change.reason.as_deref(), Some("429"));
        assert!(change.until.is_some_and(|t| t > std::time::SystemTime::now()));
        assert!(matches!(
            registry.admit(id, t0 + Duration::from_secs(1)),
            Err(Unavailable::Throttling { remote: false, .. })
        ));
        registry.record(id, &HealthEvent::Answered, t0 + Duration::from_secs(1));
        assert!(
            matches!(registry.current(id, t0), Health::Throttling { .. }),
            "an answer inside the throttle window does not end it"
        );

        let t1 = t0 + Duration::from_secs(4);
        let trial = registry.admit(id, t1).expect("the trial is free");
        assert!(trial.is_trial());
        assert_eq!(registry.admit(id, t1).expect_err("busy"), Unavailable::TrialBusy);
        assert_eq!(registry.view(id, t1).in_flight, 1);
        drop(trial);
        assert_eq!(registry.view(id, t1).in_flight, 0);
        let mut trial = registry.admit(id, t1).expect("a dropped trial frees the slot");
        trial.finish_trial();
        let second = registry.admit(id, t1).expect("a finished trial frees the slot");
        assert!(second.is_trial());
        assert_eq!(registry.view(id, t1).in_flight, 2, "both still in flight");
        registry.record(id, &HealthEvent::Answered, t1);
        drop((trial, second));
        let normal = registry.admit(id, t1).expect("closed");
        assert!(!normal.is_trial());
        let again = registry.admit(id, t1).expect("closed admits many");
        drop((normal, again));
        assert_eq!(rx.try_recv().expect("published").state, EndpointState::Healthy);
        assert!(rx.try_recv().is_err(), "nothing else published");
    }

    #[test]
    fn error_cooldowns_back_off_exponentially_and_reset_on_success() {
        // The backoff steps themselves: `policy.rs`, `error_cooldowns_double_up_to_a_minute`.
        let (registry, _rx) = HealthRegistry::new(16);
        let id = EndpointId::new();
        let mut now = Instant::now();
        registry.record(id, &failed(), now);
        // Concurrent failures of requests admitted earlier do not advance the backoff.
        registry.record(id, &failed(), now);
        let window = |now| match registry.current(id, now) {
            Health::Error { until } => until - now,
            other => panic!("expected error, got {other:?}"),
        };
        assert!(window(now) <= Duration::from_millis(2001), "{:?}", window(now));
        for expected in [4u64, 8, 16] {
            now += Duration::from_secs(61);
            let trial = registry.admit(id, now).expect("half-open");
            assert!(trial.is_trial());
            registry.record(id, &failed(), now);
            drop(trial);
            let w = window(now);
            assert!(w > Duration::from_secs(expected - 1) && w <= Duration::from_secs(expected));
        }
        now += Duration::from_secs(61);
        let trial = registry.admit(id, now).expect("half-open");
        registry.record(id, &HealthEvent::Answered, now);
        drop(trial);
        registry.record(id, &failed(), now);
        assert!(window(now) <= Duration::from_secs(2), "a success resets the backoff");
    }

    #[test]
    fn an_endpoint_out_of_quota_gets_one_line_per_episode_not_per_refill() {
        use std::io::Write;
        use std::sync::Mutex;
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        let (registry, _rx) = HealthRegistry::new(16);
        let id = EndpointId::new();
        let t0 = Instant::now();
        let demand = Demand::default();
        tracing::subscriber::with_default(subscriber, || {
            // Empty: 0 of 50 requests left, 5 more a second.
            let mark = registry.admit_for(id, t0, &demand).expect("unknown: admitted").mark();
            let limits = super::super::RateLimits {
                remaining_requests: Some(0),
                limit_requests: Some(50),
                ..Default::default()
            };
            registry.record_quota(id, Some(&limits), mark, t0, &demand.policy);
            // Saturated for 4 s: one request fits per 200 ms refill step, the next does not.
            for step in 0..20u32 {
                let now = t0 + Duration::from_millis(200) * step + Duration::from_millis(1);
                let _ = registry.admit_for(id, now, &demand);
                assert!(registry.admit_for(id, now, &demand).is_err(), "step {step}");
            }
            // Idle for a while: room for many again.
            drop(registry.admit_for(id, t0 + Duration::from_secs(30), &demand).expect("room"));
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.matches("out of quota").count(), 1, "{text}");
        assert_eq!(text.matches("quota room again").count(), 1, "{text}");
    }

    #[test]
    fn a_full_channel_drops_changes_instead_of_blocking() {
        let (registry, mut rx) = HealthRegistry::new(1);
        let now = Instant::now();
        for _ in 0..3 {
            registry.record(EndpointId::new(), &failed(), now);
        }
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }
}
