//! Per-endpoint health as this data plane observes it, kept outside the routing table (keyed
//! by `EndpointId`) so it survives snapshot swaps.
//!
//! # State machine (one per endpoint, local view)
//! - `healthy → throttling` on 429, until `retry-after-ms`, else `Retry-After` (seconds or
//!   HTTP-date), else "retry after N seconds" in Azure's error message, else
//!   [`HealthPolicy::default_throttle`]; capped at [`HealthPolicy::max_throttle`].
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
//! # Fleet windows (remote)
//! The control plane sends `FleetHealth`: endpoints unavailable somewhere in the fleet. They
//! are kept apart from the local state as *remote* windows and the endpoint is skipped until
//! the later of both. A remote window never shortens a local one (they are independent and
//! the later wins). A local success clears a remote **error** window (it just worked from
//! here, and errors are often local to a path or node) but never a remote **throttle** window
//! (quota is shared by the whole fleet, so a success here only means this request got in
//! before the quota ran out). Each `FleetHealth` replaces the remote view; a data plane that
//! lost its control plane keeps its own view and the remote windows simply expire.
//!
//! # Quota headroom and latency
//! Each answer's `x-ratelimit-remaining-requests` / `-tokens` (and `x-ratelimit-limit-tokens`)
//! mark an endpoint *low on headroom* for [`HealthPolicy::headroom_ttl`]; selection then tries
//! it after the other available members of its group. Time to first byte feeds an EWMA used by
//! the `fastest` strategy, which decays toward an optimistic prior (zero) while an endpoint is
//! not sampled, so a recovered region is tried again.
//!
//! Locking: one `std::sync::Mutex` per endpoint, held for a few field updates and never across
//! an await; the map is copy-on-write behind an `ArcSwap` (lock-free reads), replaced only
//! when an endpoint is first seen. State
//! changes are offered to a bounded channel for the control-plane reporter; when it is full
//! the change is dropped (the next one supersedes it).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use modelgw_model::{EndpointId, EndpointState};
use tokio::sync::mpsc;

/// Throttle window when a 429 says nothing about when to come back. Azure's standard
/// deployments usually ask for a few seconds; 10 s keeps a hot endpoint from being hammered
/// while its per-minute window refills, without losing it for long.
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(10);

/// Upper bound on any throttle window, whatever the upstream says. Daily quotas answer
/// with long windows, but trusting a bogus or misparsed value could silently drop an
/// endpoint for a day.
pub const MAX_THROTTLE: Duration = Duration::from_secs(3600);

/// Capacity of the health-change channel towards the control-plane reporter. Changes are
/// rare (state transitions only); 1024 absorbs a burst across hundreds of endpoints.
pub const HEALTH_CHANNEL_CAPACITY: usize = 1024;

/// Every threshold of the health state machine, the quota-headroom rule and the latency
/// estimate used by the `fastest` strategy.
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
    /// An answer reporting at most this many remaining requests (`x-ratelimit-remaining-
    /// requests`) marks the endpoint low on headroom (5). Several data planes and concurrent
    /// requests draw from the same quota between two readings, so a margin of a few requests
    /// is what is left before the 429.
    pub low_headroom_requests: u64,
    /// An answer reporting fewer remaining tokens than this fraction of
    /// `x-ratelimit-limit-tokens` marks the endpoint low on headroom (5 %): about one large
    /// prompt's worth on an S0 deployment.
    pub low_headroom_token_fraction: f64,
    /// How long a low-headroom reading counts (10 s). Azure refills quota over sub-minute
    /// windows; a reading that old says nothing about now, and an endpoint steered away from
    /// gets no new reading.
    pub headroom_ttl: Duration,
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
            low_headroom_requests: 5,
            low_headroom_token_fraction: 0.05,
            headroom_ttl: Duration::from_secs(10),
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
}

/// Why an endpoint cannot take a request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Answered 429 (here, or elsewhere in the fleet when `remote`).
    Throttling { until: Instant, remote: bool },
    /// Failed (5xx, transport, credential) here, or elsewhere in the fleet when `remote`.
    Error { until: Instant, remote: bool },
    /// Half-open and its one trial request is in flight.
    TrialBusy,
}

impl Unavailable {
    /// When the endpoint may be tried again (a busy trial: unknown, `None`).
    pub fn until(self) -> Option<Instant> {
        match self {
            Unavailable::Throttling { until, .. } | Unavailable::Error { until, .. } => Some(until),
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
        }
    }

    pub fn is_throttling(self) -> bool {
        matches!(self, Unavailable::Throttling { .. })
    }
}

/// Effective health of an endpoint at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Usable: closed, or half-open with its trial free.
    Healthy,
    /// Answered 429; skip until `until`.
    Throttling { until: Instant },
    /// Failed (5xx, transport, credential), or a half-open trial is in flight.
    Error { until: Instant },
}

/// What selection needs to know about one endpoint, read under one short lock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EndpointView {
    /// `None` when it may take a request (possibly as the half-open trial).
    pub unavailable: Option<Unavailable>,
    /// The last answer said the quota is nearly used up (see [`HealthPolicy`]).
    pub low_headroom: bool,
    /// Decayed EWMA of time to first byte in ms; `None` when never sampled.
    pub latency_ms: Option<f64>,
    /// Requests currently in flight to it from this data plane.
    pub in_flight: u32,
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

/// An endpoint's state as the fleet (control plane) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteHealth {
    pub endpoint_id: EndpointId,
    /// `Throttling` or `Error`; `Healthy` entries are ignored.
    pub state: EndpointState,
    pub until_unix_ms: i64,
    pub reason: String,
}

pub use modelgw_model::GatewayState;

/// The gateway's state from its enabled members' states (the rule lives in the model, shared
/// with the admin API).
pub fn gateway_state(members: &[EndpointState]) -> GatewayState {
    GatewayState::of(members)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Throttling,
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    kind: Kind,
    until: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// The local window; past `until` it means half-open until a trial closes it.
    local: Option<Window>,
    /// Consecutive failures (backoff step); reset by a success that closes the breaker.
    failures: u32,
    trial_in_flight: bool,
    remote: Option<Window>,
    low_headroom_until: Option<Instant>,
    latency_ms: Option<f64>,
    sampled_at: Option<Instant>,
    /// Last state published, so repeats are not.
    published: Option<(Kind, Instant)>,
}

#[derive(Debug, Default)]
struct Entry {
    state: Mutex<State>,
    in_flight: AtomicU32,
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Updates are a few field writes; a panic cannot leave a dangerous half state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Permission to send one request to an endpoint: counts it in flight and, for a half-open
/// endpoint, holds the single trial slot. Dropping it releases both.
#[derive(Debug)]
pub struct Admission {
    entry: Arc<Entry>,
    trial: bool,
}

impl Admission {
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

/// Health of every endpoint this data plane has sent traffic to or heard about.
#[derive(Debug)]
pub struct HealthRegistry {
    policy: HealthPolicy,
    /// Copy-on-write: read on every request by every serving thread, written once per
    /// endpoint ever seen. A lock-free load keeps the serving threads from contending on a
    /// reader count.
    endpoints: ArcSwap<HashMap<EndpointId, Arc<Entry>>>,
    changes: mpsc::Sender<HealthChange>,
}

impl HealthRegistry {
    /// A registry with the default policy and the receiving end of its change channel.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<HealthChange>) {
        Self::with_policy(HealthPolicy::default(), capacity)
    }

    /// A registry with `policy`.
    pub fn with_policy(
        policy: HealthPolicy,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<HealthChange>) {
        let (changes, rx) = mpsc::channel(capacity.max(1));
        (Self { policy, endpoints: ArcSwap::from_pointee(HashMap::new()), changes }, rx)
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// The effective health of `id` at `now` (unknown endpoints are healthy). A half-open
    /// endpoint whose trial is busy reads as `Error` until now.
    pub fn current(&self, id: EndpointId, now: Instant) -> Health {
        match self.view(id, now).unavailable {
            None => Health::Healthy,
            Some(Unavailable::Throttling { until, .. }) => Health::Throttling { until },
            Some(Unavailable::Error { until, .. }) => Health::Error { until },
            Some(Unavailable::TrialBusy) => Health::Error { until: now },
        }
    }

    /// The endpoint's state as reported: `Healthy`, `Throttling` or `Error`.
    pub fn state(&self, id: EndpointId, now: Instant) -> EndpointState {
        match self.current(id, now) {
            Health::Healthy => EndpointState::Healthy,
            Health::Throttling { .. } => EndpointState::Throttling,
            Health::Error { .. } => EndpointState::Error,
        }
    }

    /// Everything selection needs about `id`, under one lock.
    pub fn view(&self, id: EndpointId, now: Instant) -> EndpointView {
        let map = self.endpoints.load();
        let Some(entry) = map.get(&id) else {
            return EndpointView {
                unavailable: None,
                low_headroom: false,
                latency_ms: None,
                in_flight: 0,
            };
        };
        let state = entry.lock();
        EndpointView {
            unavailable: unavailable(&state, now),
            low_headroom: state.low_headroom_until.is_some_and(|until| until > now),
            latency_ms: self.decayed_latency(&state, now),
            in_flight: entry.in_flight.load(Ordering::Acquire),
        }
    }

    /// Claims the right to send one request to `id` now: refused while a window is open or a
    /// half-open trial is in flight; the half-open trial slot is taken when free.
    pub fn admit(&self, id: EndpointId, now: Instant) -> Result<Admission, Unavailable> {
        let entry = self.entry(id);
        let trial = {
            let mut state = entry.lock();
            if let Some(reason) = unavailable(&state, now) {
                return Err(reason);
            }
            let half_open = state.local.is_some();
            if half_open {
                state.trial_in_flight = true;
            }
            half_open
        };
        entry.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Admission { entry, trial })
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
                }
            }
            let now_state = state.local.filter(|w| w.until > now).map(|w| (w.kind, w.until));
            if now_state == state.published {
                return;
            }
            state.published = now_state;
            let reason = match event {
                HealthEvent::Answered => "",
                HealthEvent::Throttled { reason, .. } | HealthEvent::Failed { reason } => reason,
            };
            match now_state {
                None => HealthChange {
                    endpoint_id: id,
                    state: EndpointState::Healthy,
                    until_unix_ms: 0,
                    reason: String::new(),
                },
                Some((kind, until)) => HealthChange {
                    endpoint_id: id,
                    state: match kind {
                        Kind::Throttling => EndpointState::Throttling,
                        Kind::Error => EndpointState::Error,
                    },
                    until_unix_ms: unix_ms(until, now),
                    reason: reason.to_owned(),
                },
            }
        };
        // Dropping when full is deliberate: reporting must never slow the request path.
        let _ = self.changes.try_send(change);
    }

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

    /// Reads the quota headers of an answer; a low reading steers selection away for
    /// [`HealthPolicy::headroom_ttl`], a healthy one clears it.
    pub fn record_headroom(&self, id: EndpointId, headers: &HeaderMap, now: Instant) {
        let Some(low) = low_headroom(&self.policy, headers) else { return };
        let entry = self.entry(id);
        entry.lock().low_headroom_until = low.then(|| now + self.policy.headroom_ttl);
    }

    /// Replaces the fleet view with `endpoints` (those unavailable somewhere in the fleet);
    /// endpoints not listed lose their remote window. Returns how many windows are active.
    pub fn apply_fleet(&self, endpoints: &[RemoteHealth], now: Instant) -> usize {
        let wall_now = unix_ms(now, now);
        let mut listed = HashSet::with_capacity(endpoints.len());
        let mut active = 0;
        for remote in endpoints {
            let kind = match remote.state {
                EndpointState::Throttling => Kind::Throttling,
                EndpointState::Error => Kind::Error,
                EndpointState::Healthy => continue,
            };
            let left = remote.until_unix_ms.saturating_sub(wall_now);
            if left <= 0 {
                continue;
            }
            let left = Duration::from_millis(left as u64).min(self.policy.max_throttle);
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

    fn decayed_latency(&self, state: &State, now: Instant) -> Option<f64> {
        let latency = state.latency_ms?;
        let age = state.sampled_at.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let half_life = self.policy.latency_decay_half_life.as_secs_f64();
        if half_life <= 0.0 {
            return Some(latency);
        }
        Some(latency * 0.5f64.powf(age.as_secs_f64() / half_life))
    }

    fn entry(&self, id: EndpointId) -> Arc<Entry> {
        loop {
            if let Some(entry) = self.endpoints.load().get(&id) {
                return Arc::clone(entry);
            }
            // First sight of this endpoint: publish a copy of the map with it added (rare:
            // once per endpoint per process; racing writers retry on the newer map).
            self.endpoints.rcu(|map| {
                if map.contains_key(&id) {
                    return Arc::clone(map);
                }
                let mut next = HashMap::clone(map);
                next.insert(id, Arc::default());
                Arc::new(next)
            });
        }
    }
}

/// Why `state` refuses a request at `now`, if it does: the later of the local and remote
/// windows, else a busy half-open trial.
fn unavailable(state: &State, now: Instant) -> Option<Unavailable> {
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

/// `Some(true)` when the quota headers say the endpoint is about to throttle, `Some(false)`
/// when they show room, `None` when the answer carried none.
pub fn low_headroom(policy: &HealthPolicy, headers: &HeaderMap) -> Option<bool> {
    let number = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok())
    };
    let requests = number("x-ratelimit-remaining-requests");
    let tokens = number("x-ratelimit-remaining-tokens");
    if requests.is_none() && tokens.is_none() {
        return None;
    }
    // Negative values have been seen on some APIs; they carry no information.
    let low_requests = requests.is_some_and(|r| r >= 0 && r as u64 <= policy.low_headroom_requests);
    let low_tokens = match (tokens, number("x-ratelimit-limit-tokens")) {
        (Some(remaining), Some(limit)) if remaining >= 0 && limit > 0 => {
            (remaining as f64) < policy.low_headroom_token_fraction * limit as f64
        }
        _ => false,
    };
    Some(low_requests || low_tokens)
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
        assert_eq!(change.reason, "429");
        assert!(change.until_unix_ms > 0);
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
        let policy = HealthPolicy::default();
        assert_eq!(policy.error_backoff(1), Duration::from_secs(2));
        assert_eq!(policy.error_backoff(2), Duration::from_secs(4));
        assert_eq!(policy.error_backoff(5), Duration::from_secs(32));
        assert_eq!(policy.error_backoff(6), Duration::from_secs(60), "capped");
        assert_eq!(policy.error_backoff(u32::MAX), Duration::from_secs(60));

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
    fn remote_windows_never_shorten_local_ones_and_only_errors_clear_on_success() {
        let (registry, _rx) = HealthRegistry::new(16);
        let (a, b, c) = (EndpointId::new(), EndpointId::new(), EndpointId::new());
        let now = Instant::now();
        let wall = unix_ms(now, now);
        registry.record(a, &throttled(30), now);
        let remote = |id, state, ms: i64| RemoteHealth {
            endpoint_id: id,
            state,
            until_unix_ms: wall + ms,
            reason: "elsewhere".into(),
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
