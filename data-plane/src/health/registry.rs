//! The registry: every endpoint's health entry, found by id without a lock, and the reads
//! selection makes of it. What changes an entry is in `breaker.rs` (windows, trials),
//! `fleet.rs`, `headroom.rs` and `latency.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use modelgw_model::{EndpointId, EndpointState};
use tokio::sync::mpsc;

use super::breaker::{Window, unavailable};
use super::quota::{Demand, Quota, Room};
use super::{EndpointHealth, HealthPolicy, Unavailable};

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
    /// What its quota estimate says about the request (`quota.rs`); `None` when unknown
    /// or quota-aware routing is off.
    pub room: Option<Room>,
    /// Decayed EWMA of time to first byte in ms; `None` when never sampled.
    pub latency_ms: Option<f64>,
    /// Requests currently in flight to it from this data plane.
    pub in_flight: u32,
}

/// One endpoint's health as this data plane sees it.
#[derive(Debug, Default)]
pub(super) struct State {
    /// The local window; past `until` it means half-open until a trial closes it.
    pub(super) local: Option<Window>,
    /// When the local window was last opened or extended (what an operator reset compares).
    pub(super) local_since: Option<Instant>,
    /// The latest operator reset applied to this endpoint.
    pub(super) reset_seen: Option<std::time::SystemTime>,
    /// Consecutive failures (backoff step); reset by a success that closes the breaker.
    pub(super) failures: u32,
    pub(super) trial_in_flight: bool,
    pub(super) remote: Option<Window>,
    pub(super) quota: Quota,
    pub(super) latency_ms: Option<f64>,
    pub(super) sampled_at: Option<Instant>,
    /// Last state published, so repeats are not.
    pub(super) published: Option<Window>,
}

#[derive(Debug, Default)]
pub(super) struct Entry {
    state: Mutex<State>,
    pub(super) in_flight: AtomicU32,
}

impl Entry {
    #[inline]
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Updates are a few field writes; a panic cannot leave a dangerous half state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Health of every endpoint this data plane has sent traffic to or heard about.
#[derive(Debug)]
pub struct HealthRegistry {
    pub(super) policy: HealthPolicy,
    /// Copy-on-write: read on every request by every serving thread, written once per
    /// endpoint ever seen. A lock-free load keeps the serving threads from contending on a
    /// reader count.
    pub(super) endpoints: ArcSwap<HashMap<EndpointId, Arc<Entry>>>,
    pub(super) changes: mpsc::Sender<EndpointHealth>,
    /// The report intervals quota rates are measured over (`quota.rs`).
    pub(super) quota_intervals: Mutex<super::quota::QuotaIntervals>,
}

impl HealthRegistry {
    /// A registry with the default policy and the receiving end of its change channel.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<EndpointHealth>) {
        Self::with_policy(HealthPolicy::default(), capacity)
    }

    /// A registry with `policy`.
    pub fn with_policy(
        policy: HealthPolicy,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<EndpointHealth>) {
        let (changes, rx) = mpsc::channel(capacity.max(1));
        let endpoints = ArcSwap::from_pointee(HashMap::new());
        (Self { policy, endpoints, changes, quota_intervals: Mutex::default() }, rx)
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// The effective health of `id` at `now` (unknown endpoints are healthy). A half-open
    /// endpoint whose trial is busy reads as `Error` until now.
    pub fn current(&self, id: EndpointId, now: Instant) -> Health {
        match self.view(id, now).unavailable {
            None => Health::Healthy,
            Some(Unavailable::Throttling { until, .. } | Unavailable::Quota { until, .. }) => {
                Health::Throttling { until }
            }
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

    /// Everything selection needs about `id`, under one lock (its quota room for a request
    /// of no tokens: see [`Self::view_for`]).
    pub fn view(&self, id: EndpointId, now: Instant) -> EndpointView {
        self.view_for(id, now, &Demand::default())
    }

    /// Everything selection needs about `id` for a request of `demand`, under one lock.
    #[inline]
    pub fn view_for(&self, id: EndpointId, now: Instant, demand: &Demand) -> EndpointView {
        let map = self.endpoints.load();
        let Some(entry) = map.get(&id) else {
            return EndpointView { unavailable: None, room: None, latency_ms: None, in_flight: 0 };
        };
        let state = entry.lock();
        EndpointView {
            unavailable: unavailable(&state, now),
            room: state.quota.room(demand, now),
            latency_ms: self.decayed_latency(&state, now),
            in_flight: entry.in_flight.load(Ordering::Acquire),
        }
    }

    /// The entry of `id`, added on first sight.
    pub(super) fn entry(&self, id: EndpointId) -> Arc<Entry> {
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
