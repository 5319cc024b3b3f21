//! Gateway keys' limits and usage on the data plane (issue #14): admission against the
//! budget leases the control plane lends this instance, the charge of every answer to its key
//! and every ancestor, and the cumulative usage reported back.
//!
//! - `budget.rs`: the counters — per key id a [`KeyBudget`](budget::KeyBudget) kept across
//!   snapshot swaps, with a cell per (window, window start): atomics only.
//! - `chain.rs`: per compiled key its chain (itself, then each ancestor) with the limits each
//!   sets, built when a snapshot is swapped in ([`KeyLimiter::attach`]); admission (all
//!   or nothing over the chain, never waiting) and the `Ticket` a request carries until its
//!   answer is charged.
//! - `estimate.rs`: what a request reserves (body bytes / 4 + its completion cap).
//! - `answer.rs`: the 429 and the `x-ratelimit-*` headers.
//! - `report.rs`: leases applied, usage reports built (cumulative, so a resent report
//!   never counts twice).
//!
//! The request path never locks, allocates or waits here beyond one `Arc` per new window;
//! the control-plane client applies leases and builds reports on its own task.

mod answer;
mod budget;
mod chain;
mod estimate;
mod report;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use modelgw_model::GatewayKeyId;
use modelgw_model::keys::{KeyLimitPolicy, KeyUsage, Window};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::proxy::operations::Operation;
use crate::routing_table::CompiledKey;

pub(crate) use answer::set_headers;
pub(crate) use budget::KeyBudget;
pub use chain::RefusalReason;
pub(crate) use chain::{KeyChain, Link, Now, Refusal, Ticket};
pub(crate) use estimate::{OutputCap, reservation};
pub use report::{LeasesApplied, UsageBatch};

/// How long after the window ends a fail-open warning about the same key may repeat.
const FAIL_OPEN_WARNING_INTERVAL_MS: i64 = 60_000;

/// What the limits counted (read by the Prometheus collector).
#[derive(Debug, Default)]
pub struct LimitCounters {
    refused: [AtomicU64; RefusalReason::ALL.len()],
    fail_open: AtomicU64,
    lease_expiries: AtomicU64,
}

impl LimitCounters {
    fn refused(&self, reason: RefusalReason) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests refused for `reason`.
    pub fn refusals(&self, reason: RefusalReason) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    /// Requests admitted without a valid lease on some limited counter (fail-open).
    pub fn fail_open(&self) -> u64 {
        self.fail_open.load(Ordering::Relaxed)
    }

    /// Times the leases held expired without renewal.
    pub fn lease_expiries(&self) -> u64 {
        self.lease_expiries.load(Ordering::Relaxed)
    }
}

/// What every chain shares: the lease clock, the counters, the early-report signal.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Lease validity is measured from here (monotonic), never on the wall clock.
    epoch: Instant,
    /// Milliseconds since `epoch` until which the grants held may be used; 0: none yet.
    lease_until_ms: AtomicU64,
    /// The current expiry was counted and logged.
    expiry_noted: AtomicBool,
    pub(crate) counters: LimitCounters,
    /// A grant's headroom fell under half: the control-plane client reports early.
    pub(crate) wants_report: Notify,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            lease_until_ms: AtomicU64::new(0),
            expiry_noted: AtomicBool::new(false),
            counters: LimitCounters::default(),
            wants_report: Notify::new(),
        }
    }

    /// `at` (a monotonic instant, e.g. a request's arrival) and the wall clock now.
    pub(crate) fn now(&self, at: Instant) -> Now {
        Now { unix_ms: unix_ms(SystemTime::now()), mono_ms: self.mono_ms(at) }
    }

    fn mono_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Whether the grants held may be used at `mono_ms`; the first check after they expired
    /// counts the expiry and says so once.
    #[inline]
    pub(crate) fn lease_valid(&self, mono_ms: u64) -> bool {
        let until = self.lease_until_ms.load(Ordering::Acquire);
        if mono_ms < until {
            return true;
        }
        if until != 0
            && !self.expiry_noted.load(Ordering::Relaxed)
            && !self.expiry_noted.swap(true, Ordering::Relaxed)
        {
            self.counters.lease_expiries.fetch_add(1, Ordering::Relaxed);
            warn!(
                expired_ms_ago = mono_ms - until,
                "budget leases expired without renewal (control plane away?): keys with limits now fail open, or closed where the gateway says so"
            );
        }
        false
    }

    /// Every grant held stays usable for `valid_for` from `mono_ms`.
    fn renew(&self, valid_for: Duration, mono_ms: u64) {
        let until = mono_ms.saturating_add(valid_for.as_millis() as u64).max(1);
        let had_expired = self.lease_until_ms.swap(until, Ordering::AcqRel) <= mono_ms;
        if self.expiry_noted.swap(false, Ordering::Relaxed) || had_expired {
            info!(
                valid_for_ms = valid_for.as_millis() as u64,
                "budget leases received: keys with limits are enforced against them"
            );
        }
    }

    /// A request admitted without a lease: counted, and logged once a minute per key.
    fn admitted_open(&self, budget: &KeyBudget, window: Window, lease: bool, now_unix_ms: i64) {
        self.counters.fail_open.fetch_add(1, Ordering::Relaxed);
        let last = budget.warned_at.load(Ordering::Relaxed);
        if now_unix_ms.saturating_sub(last) >= FAIL_OPEN_WARNING_INTERVAL_MS
            && budget
                .warned_at
                .compare_exchange(last, now_unix_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let reason = if lease { "no grant for this window yet" } else { "no valid lease" };
            warn!(
                key_id = %budget.id,
                window = window.as_str(),
                reason,
                "admitting requests to a key with limits unchecked (fail open; at most one line a minute per key)"
            );
        }
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The data plane's key limits: every key's budget by id, the lease clock, the counters and
/// this process's instance id. Owned by the [`SnapshotStore`](crate::routing_table::SnapshotStore),
/// which attaches each table to it before swapping it in.
#[derive(Debug)]
pub struct KeyLimiter {
    shared: Arc<Shared>,
    /// Drawn once per process: leases and usage reports belong to this instance.
    instance: NonZeroU64,
    budgets: Mutex<HashMap<GatewayKeyId, Arc<KeyBudget>>>,
    /// Keys that left the configuration, until what they counted went out.
    departed: Mutex<HashMap<GatewayKeyId, Arc<KeyBudget>>>,
}

impl Default for KeyLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyLimiter {
    pub fn new() -> KeyLimiter {
        let instance = loop {
            if let Some(id) = NonZeroU64::new(rand::random::<u64>()) {
                break id;
            }
        };
        KeyLimiter {
            shared: Arc::new(Shared::new()),
            instance,
            budgets: Mutex::default(),
            departed: Mutex::default(),
        }
    }

    /// This process's instance id (`Hello.instance`).
    pub fn instance(&self) -> NonZeroU64 {
        self.instance
    }

    /// What the limits counted.
    pub fn counters(&self) -> &LimitCounters {
        &self.shared.counters
    }

    /// Whether the grants held may be used now.
    pub fn lease_valid(&self) -> bool {
        self.shared.lease_valid(self.shared.mono_ms(Instant::now()))
    }

    /// Resolves when a grant's headroom fell under half since the last call (report early).
    pub async fn wants_report(&self) {
        self.shared.wants_report.notified().await;
    }

    fn budgets(&self) -> MutexGuard<'_, HashMap<GatewayKeyId, Arc<KeyBudget>>> {
        self.budgets.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn departed(&self) -> MutexGuard<'_, HashMap<GatewayKeyId, Arc<KeyBudget>>> {
        self.departed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives every key of `table` its chain (budgets kept from the previous table by id, new
    /// ones made, those of removed keys kept aside until their usage is reported). Called
    /// once per snapshot, before the table is swapped in.
    pub(crate) fn attach(&self, table: &mut crate::routing_table::RoutingTable) {
        let now = unix_ms(SystemTime::now());
        let mut budgets = self.budgets();
        let mut departed = self.departed();
        let mut kept: HashMap<GatewayKeyId, Arc<KeyBudget>> = HashMap::with_capacity(budgets.len());
        for gateway in table.gateways_mut() {
            for key in &mut gateway.keys {
                let links = key
                    .ancestry
                    .iter()
                    .map(|(id, limits)| {
                        let budget = kept
                            .get(id)
                            .cloned()
                            .or_else(|| budgets.remove(id))
                            .or_else(|| departed.remove(id))
                            .unwrap_or_else(|| Arc::new(KeyBudget::new(*id, now)));
                        kept.insert(*id, Arc::clone(&budget));
                        Link::new(budget, limits)
                    })
                    .collect();
                key.chain = Some(KeyChain::new(links, Arc::clone(&self.shared)));
            }
        }
        departed.extend(budgets.drain());
        *budgets = kept;
    }

    /// Usage of `key` in the current cell of `window` (this instance's, cumulative): the
    /// window's start, charged and reserved. `None` for a key this data plane does not know.
    pub fn usage(&self, key: GatewayKeyId, window: Window) -> Option<KeyUsage> {
        let budget = self.budgets().get(&key).cloned()?;
        let cell = budget.current(window);
        let (charged, reserved) = cell.totals();
        Some(KeyUsage {
            key_id: key,
            window,
            window_start_unix_ms: cell.start_ms,
            charged,
            reserved,
            wanted: cell.wanted(),
        })
    }
}

/// The request path's one call, once the body is read: the request's reservation (see
/// `estimate.rs`) admitted on its key's chain. `Ok(None)` for a key without a chain (a table
/// compiled outside a store); a refusal is logged here (the key's id, never its secret).
pub(crate) fn admit_request(
    key: &CompiledKey,
    policy: &KeyLimitPolicy,
    operation: Operation,
    body_len: usize,
    cap: &OutputCap,
    rid: &str,
) -> Result<Option<Ticket>, Refusal> {
    let Some(chain) = key.chain.as_ref() else { return Ok(None) };
    let reserve = reservation(operation, body_len, cap, policy);
    match chain.admit(&reserve, policy, chain.shared.now(Instant::now())) {
        Ok(ticket) => Ok(Some(ticket)),
        Err(refusal) => {
            info!(
                request_id = rid,
                key_id = %key.id,
                reason = refusal.reason.label(),
                window = refusal.window.as_str(),
                measure = refusal.measure.as_str(),
                retry_after_s = refusal.retry_after_secs(),
                needed = refusal.seen.map(|s| s.needed),
                used = refusal.seen.map(|s| s.used),
                granted = refusal.seen.map(|s| s.granted),
                lendable = refusal.seen.map(|s| s.lendable),
                "request refused by a key limit"
            );
            Err(refusal)
        }
    }
}
