//! Budget leases for gateway keys' limits (issue #14): how much of each limited key's window
//! the control plane lends each data-plane instance, and the per-stream task that keeps an
//! instance supplied.
//!
//! The allocation ([`grant`]) is a pure function of what the database holds for one
//! (key, window, window start): every instance's reported usage (charged + reserved,
//! cumulative) and lease (cumulative allowance, live until its `expires_at`). Per limited
//! measure, with limit `L` (plus the reset baseline, if an operator reset the counters):
//! - an instance's lease that is live counts `max(granted, used)`; an expired one (the
//!   instance vanished, or its control plane did) only `used`: its unspent part is released;
//! - `pool` = `L` − what every other instance counts − this instance's `used`: the most this
//!   instance's headroom (`granted − used`) may be, so the sum of grants never exceeds `L`
//!   (the overshoot is only what instances charged beyond their grants);
//! - `target` = `max(L / (4 × connected instances), one typical request)`: a quarter of the
//!   limit spread over the fleet, so the unspent budget out on loan is about a quarter of it;
//! - an instance with no live grant, or whose headroom fell under half its target, is topped
//!   up to `used + min(target, max(pool / connected, typical), pool)`: the whole target while
//!   budget is plentiful, an equal share of what is left when it is scarce (everyone keeps
//!   admitting, nobody takes the rest), at least one typical request while any is left;
//! - the grant also carries the instance's `ceiling`, `L` − what every other instance counts:
//!   the most it could ever be lent while the others hold what they hold, so a data plane can
//!   tell a refusal a top-up would cure (retry in a second) from one it would not (retry at
//!   the window's end);
//! - a data plane that refused a request a top-up would cure reports its reservation
//!   (`KeyUsage::wanted`): the instance is due, and its share is at least that (within the
//!   pool), so the average-sized share cannot leave it a few tokens short forever;
//! - grants never shrink within a window (a lowered limit applies as budget is spent, fully
//!   from the next window on), not even after a lapse: data planes only ever raise a grant,
//!   so an instance that returns is lent at least what it held. Budget released while it was
//!   away may have been lent to others meanwhile; that overlap is bounded by its headroom at
//!   the lapse, and belongs with the fail-open admissions of the overshoot bound.
//!
//! Safety across control-plane replicas sharing one database: the store computes and writes
//! an instance's grants in one transaction that first locks the (key, window, start) rows
//! (`Store::allocate_leases`), so no two replicas lend the same budget.
//!
//! Timing (per stream of an instance, [`LeaseSession`]): grants follow the snapshot (the
//! `Outbound` sends the snapshot a grant belongs to first), every snapshot, a usage report
//! that shows a top-up is due, the approach of a new window ([`NEXT_WINDOW_LEAD`] ahead:
//! grants for it), and a timer ([`RENEW_INTERVAL`]) that renews them. Each push carries every
//! grant of the instance with `valid_for` = [`VALID_FOR`]; the store keeps a lease live for
//! [`RELEASE_GRACE`] more, for clocks and transit.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use modelgw_model::keys::{
    KeyUsage, LeaseGrant, Leases, MAX_GRANTS_PER_LEASES, Measure, Usage, UsageReport, Window,
    WindowLimits,
};
use modelgw_model::{ConfigVersion, GatewayKeyId, NodeId, Snapshot};
use tokio::sync::{mpsc, watch};

use super::PublishedSnapshot;
use crate::Store;
use crate::store::LeaseRequest;

/// How long a data plane may use the unspent part of its grants after receiving them. Long
/// enough to ride out a control-plane restart or a short database outage; short enough that
/// budget held by a vanished instance comes back within a minute.
pub const VALID_FOR: Duration = Duration::from_secs(30);

/// How much longer than [`VALID_FOR`] the control plane counts a lease it did not renew:
/// covers the push's transit and clock differences between replicas, so budget is released
/// only once its holder can no longer use it.
pub const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// Grants are pushed (renewed) at least this often: a third of [`VALID_FOR`], so two pushes
/// can be lost before a data plane's leases lapse.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// How long before a window starts its grants are pushed. The design asks for at least 2 s;
/// one more covers the allocation's transaction and the push, so a data plane has its grants
/// when its first request of the window arrives.
pub const NEXT_WINDOW_LEAD: Duration = Duration::from_secs(3);

/// Prompt tokens of "one typical request" while a window has no traffic to learn it from:
/// a chat of a few KiB (the data plane estimates 1 token per 4 bytes).
pub const TYPICAL_PROMPT_TOKENS: u64 = 500;

/// Usage reports queued per stream for the lease task. Reports are cumulative, so when the
/// task falls behind a dropped one is superseded by the next: nothing is lost but latency.
const REPORT_QUEUE: usize = 8;

/// One instance's position in one (key, window, window start), as the store holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    pub instance: u64,
    /// Charged + reserved, cumulative in the window.
    pub used: Usage,
    /// The instance's cumulative allowance (`None` per measure = not limited), if it holds a
    /// lease.
    pub granted: Option<WindowLimits>,
    /// Until when the lease counts (unix ms); ignored without a lease.
    pub expires_at_ms: i64,
}

impl Holder {
    fn live(&self, now_ms: i64) -> bool {
        self.granted.is_some() && self.expires_at_ms > now_ms
    }

    /// What this holder takes from the limit of `m`.
    fn counts(&self, m: Measure, now_ms: i64) -> u64 {
        let used = self.used.get(m);
        match self.granted {
            Some(g) if self.live(now_ms) => used.max(g.get(m).unwrap_or(0)),
            _ => used,
        }
    }
}

/// Everything the allocation of one (key, window, window start) depends on.
#[derive(Clone, Copy, Debug)]
pub struct Budget<'a> {
    pub limits: WindowLimits,
    /// Fleet usage discarded by an operator's reset in this window (the limit counts on top).
    pub baseline: Usage,
    /// Every instance that reported usage or holds a lease here (the one asking included or
    /// not).
    pub holders: &'a [Holder],
    /// Data-plane instances with live leases (at least 1 is assumed).
    pub connected: usize,
    /// One typical request, when the window has no traffic yet.
    pub default_typical: Usage,
    /// The reservation this instance refused for a short grant (zero: none): its top-up
    /// covers at least that, when the pool allows.
    pub wanted: Usage,
}

/// What one instance is lent, and what it was computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub granted: WindowLimits,
    /// The fleet's usage in the window beyond the baseline.
    pub fleet_used: Usage,
    pub own_used: Usage,
    /// Per limited measure, the most the instance could be granted: the limit less what the
    /// others count (`own_used` + the pool).
    pub ceiling: WindowLimits,
    /// Per limited measure, the headroom the instance is topped up towards.
    pub target: Usage,
}

/// The grant of `instance` in `budget` at `now_ms` (see the module docs for the rules).
pub fn grant(budget: &Budget<'_>, instance: u64, now_ms: i64) -> Grant {
    let own = budget.holders.iter().find(|h| h.instance == instance);
    let own_used = own.map(|h| h.used).unwrap_or_default();
    let own_live = own.is_some_and(|h| h.live(now_ms));
    // A data plane only ever raises a grant it holds (`KeyLimiter::apply_leases`), even one
    // whose lease lapsed: lending it less than before would be lending what it keeps anyway.
    // So a returning instance is lent at least its previous grant, and counts it again.
    let own_previous = own.and_then(|h| h.granted);
    let fleet = budget.holders.iter().fold(Usage::default(), |sum, h| sum.saturating_add(h.used));
    let fleet_used = fleet.saturating_sub(budget.baseline);
    let typical = typical_request(fleet, budget.default_typical);
    let connected = budget.connected.max(1) as u64;
    let mut granted = WindowLimits::default();
    let mut ceiling = WindowLimits::default();
    let mut target = Usage::default();
    for m in Measure::ALL {
        let Some(limit) = budget.limits.get(m) else { continue };
        let effective = limit.saturating_add(budget.baseline.get(m));
        let others: u64 = budget
            .holders
            .iter()
            .filter(|h| h.instance != instance)
            .fold(0u64, |sum, h| sum.saturating_add(h.counts(m, now_ms)));
        let used = own_used.get(m);
        let pool = effective.saturating_sub(others).saturating_sub(used);
        ceiling.set(m, Some(effective.saturating_sub(others)));
        let held = own_previous.and_then(|g| g.get(m));
        let headroom = held.unwrap_or(0).saturating_sub(used);
        let typical_m = typical.get(m).max(1);
        let t = limit.div_ceil(4 * connected).max(typical_m).min(limit.max(1));
        target.set(m, t);
        let wanted = budget.wanted.get(m);
        let due =
            !own_live || held.is_none() || headroom.saturating_mul(2) < t || wanted > headroom;
        let value = if due {
            let share = t.min(pool.div_ceil(connected).max(typical_m)).max(wanted).min(pool);
            held.unwrap_or(0).max(used.saturating_add(share))
        } else {
            held.unwrap_or(0)
        };
        granted.set(m, Some(value));
    }
    Grant { granted, fleet_used, own_used, ceiling, target }
}

/// One typical request: the window's average so far (usage over requests, reservations of
/// requests in flight included), else `default`.
fn typical_request(fleet: Usage, default: Usage) -> Usage {
    if fleet.requests == 0 {
        return default;
    }
    let mut typical = Usage { requests: 1, ..Usage::default() };
    for m in [Measure::PromptTokens, Measure::CompletionTokens, Measure::TotalTokens] {
        typical.set(m, fleet.get(m).div_ceil(fleet.requests));
    }
    typical
}

/// Whether `usage` of an instance leaves less than half the target of a grant's measure.
pub fn top_up_due(granted: &WindowLimits, target: &Usage, usage: &Usage) -> bool {
    Measure::ALL.into_iter().any(|m| {
        granted
            .get(m)
            .is_some_and(|g| g.saturating_sub(usage.get(m)).saturating_mul(2) < target.get(m))
    })
}

/// The (key, window, window start)s an instance is lent budget for at `now_ms`: every limited
/// window of every key of the snapshot, in the current window, and in the next one when it
/// starts within [`NEXT_WINDOW_LEAD`].
pub fn lease_requests(snapshot: &Snapshot, now_ms: i64) -> Vec<LeaseRequest> {
    let lead = i64::try_from(NEXT_WINDOW_LEAD.as_millis()).unwrap_or(i64::MAX);
    let mut requests = Vec::new();
    for gateway in &snapshot.gateways {
        let completion = gateway.key_limits.completion_reservation();
        let default_typical = Usage::request(TYPICAL_PROMPT_TOKENS, completion);
        for key in &gateway.keys {
            for window in Window::ALL {
                let limits = *key.limits.window(window);
                if limits.is_unlimited() {
                    continue;
                }
                let start = window.start_of(now_ms);
                let next = start + window.len_ms();
                for window_start in [start, next] {
                    if window_start == next && next - now_ms > lead {
                        continue;
                    }
                    requests.push(LeaseRequest {
                        key_id: key.id,
                        window,
                        window_start,
                        limits,
                        default_typical,
                        wanted: Usage::default(),
                    });
                }
            }
        }
    }
    requests
}

/// When the next window boundary's lead time comes after `now_ms` (unix ms), for the windows
/// some key of `snapshot` limits; `None` when nothing is limited.
fn next_lead(snapshot: &Snapshot, now_ms: i64) -> Option<i64> {
    let lead = i64::try_from(NEXT_WINDOW_LEAD.as_millis()).unwrap_or(i64::MAX);
    let limited: HashSet<Window> = snapshot
        .gateways
        .iter()
        .flat_map(|g| g.keys.iter())
        .flat_map(|k| Window::ALL.into_iter().filter(|w| !k.limits.window(*w).is_unlimited()))
        .collect();
    limited
        .into_iter()
        .map(|w| {
            let next = w.start_of(now_ms) + w.len_ms();
            // Within the lead already: this window's grants are out; aim at the one after.
            if next - now_ms <= lead { next + w.len_ms() - lead } else { next - lead }
        })
        .min()
}

/// What a stream's lease task sends the response stream: the grants, and the snapshot
/// version they were computed for (the snapshot goes out first).
#[derive(Debug)]
pub(crate) struct LeasePush {
    pub version: ConfigVersion,
    pub leases: Leases,
}

/// The lease side of one data-plane instance's stream.
pub(crate) struct LeaseSession {
    pub instance: NonZeroU64,
    pub node_id: NodeId,
    pub store: Store,
    pub snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
    pub reports: mpsc::Receiver<UsageReport>,
    pub pushes: mpsc::Sender<LeasePush>,
    /// Last grant pushed per (key, window, start), with its target, for the due check.
    pub pushed: HashMap<(GatewayKeyId, Window, i64), (WindowLimits, Usage)>,
    /// Per (key, window, start), the reservation the instance last reported refusing for a
    /// short grant (only nonzero ones): the next allocation covers it when the limit allows.
    pub wanted: HashMap<(GatewayKeyId, Window, i64), Usage>,
    /// The previous report's requests per (key, window, start), to tell which keys served
    /// requests since (for `last_used_at`).
    pub seen_requests: HashMap<(GatewayKeyId, Window, i64), u64>,
}

/// The queue a stream's reader hands usage reports to its lease task through, and the task.
pub(crate) fn lease_channel() -> (mpsc::Sender<UsageReport>, mpsc::Receiver<UsageReport>) {
    mpsc::channel(REPORT_QUEUE)
}

impl LeaseSession {
    /// Pushes grants at once, then on every snapshot, due report, window lead and renewal,
    /// until the stream ends (its report queue or its response stream closes).
    pub(crate) async fn run(mut self) {
        let mut snapshot = self.snapshots.borrow_and_update().clone();
        if !self.push(&snapshot).await {
            return;
        }
        let mut renew = tokio::time::Instant::now() + RENEW_INTERVAL;
        loop {
            let now_ms = Utc::now().timestamp_millis();
            let lead = next_lead(snapshot.snapshot(), now_ms).map(|at| {
                tokio::time::Instant::now()
                    + Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0))
            });
            let wake = lead.map_or(renew, |l| l.min(renew));
            let push = tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    snapshot = self.snapshots.borrow_and_update().clone();
                    tracing::debug!(version = snapshot.version().0, "new snapshot; recomputing grants");
                    true
                }
                report = self.reports.recv() => {
                    let Some(report) = report else { return };
                    self.record(&report, snapshot.snapshot()).await
                }
                () = tokio::time::sleep_until(wake) => true,
            };
            if push {
                if !self.push(&snapshot).await {
                    return;
                }
                renew = tokio::time::Instant::now() + RENEW_INTERVAL;
            }
        }
    }

    /// Stores a report and marks the keys that served requests as used. Returns whether a
    /// top-up is due (some grant's headroom under half its target).
    async fn record(&mut self, report: &UsageReport, snapshot: &Snapshot) -> bool {
        for skipped in &report.skipped {
            tracing::warn!(reason = %skipped, "usage report entry unreadable; skipped");
        }
        let configured: HashSet<GatewayKeyId> =
            snapshot.gateways.iter().flat_map(|g| g.keys.iter().map(|k| k.id)).collect();
        let mut report = report.clone();
        let before = report.keys.len();
        report.keys.retain(|k| configured.contains(&k.key_id));
        if report.keys.len() < before {
            tracing::debug!(
                dropped = before - report.keys.len(),
                "usage for keys outside the snapshot (revoked or expired since); not stored"
            );
        }
        let now = Utc::now();
        if let Err(e) =
            self.store.record_key_usage(self.instance, &self.node_id, &report, now).await
        {
            tracing::warn!(error = %e, "storing a usage report failed; the next (cumulative) report covers it");
            return false;
        }
        let used = self.used_keys(&report.keys, snapshot);
        if let Err(e) = self.store.touch_gateway_keys(&used, now).await {
            tracing::warn!(error = %e, "recording keys' last use failed");
        }
        let mut due = false;
        for k in &report.keys {
            let slot = (k.key_id, k.window, k.window_start_unix_ms);
            if k.wanted.is_zero() {
                self.wanted.remove(&slot);
            } else {
                // A request was refused that a top-up would admit: allocate now.
                self.wanted.insert(slot, k.wanted);
                due = true;
            }
            due |= self.pushed.get(&slot).is_some_and(|(granted, target)| {
                top_up_due(granted, target, &k.charged.saturating_add(k.reserved))
            });
        }
        due
    }

    /// Keys that served a request themselves since the previous report, from whichever
    /// windows the report holds (a key's counters include its subtree: its own requests are
    /// its count minus its children's).
    fn used_keys(&mut self, entries: &[KeyUsage], snapshot: &Snapshot) -> Vec<GatewayKeyId> {
        let mut grew: HashMap<(GatewayKeyId, Window), u64> = HashMap::new();
        for k in entries {
            let total = k.charged.requests.saturating_add(k.reserved.requests);
            let slot = (k.key_id, k.window, k.window_start_unix_ms);
            let previous = self.seen_requests.insert(slot, total).unwrap_or(0);
            *grew.entry((k.key_id, k.window)).or_default() += total.saturating_sub(previous);
        }
        // Only the current and the previous window of each kind are reported.
        let now_ms = Utc::now().timestamp_millis();
        self.seen_requests.retain(|(_, w, start), _| *start >= w.start_of(now_ms) - w.len_ms());
        let mut own = grew.clone();
        for gateway in &snapshot.gateways {
            for key in &gateway.keys {
                let Some(parent) = key.parent else { continue };
                for w in Window::ALL {
                    if let (Some(child), Some(p)) =
                        (grew.get(&(key.id, w)), own.get_mut(&(parent, w)))
                    {
                        *p = p.saturating_sub(*child);
                    }
                }
            }
        }
        let used: HashSet<GatewayKeyId> =
            own.into_iter().filter(|(_, n)| *n > 0).map(|((k, _), _)| k).collect();
        used.into_iter().collect()
    }

    /// Allocates and pushes every grant of the instance. Returns false when the stream is
    /// gone.
    async fn push(&mut self, published: &PublishedSnapshot) -> bool {
        let now_ms = Utc::now().timestamp_millis();
        let mut requests = lease_requests(published.snapshot(), now_ms);
        for r in &mut requests {
            if let Some(wanted) = self.wanted.get(&(r.key_id, r.window, r.window_start)) {
                r.wanted = *wanted;
            }
        }
        // Windows no longer lent for (ended, or the key lost its limits) want nothing.
        let lent: HashSet<(GatewayKeyId, Window, i64)> =
            requests.iter().map(|r| (r.key_id, r.window, r.window_start)).collect();
        self.wanted.retain(|slot, _| lent.contains(slot));
        if requests.is_empty() && self.pushed.is_empty() {
            // Nothing limited, and nothing lent before: nothing to say.
            return !self.pushes.is_closed();
        }
        let allocated = match self
            .store
            .allocate_leases(self.instance, &self.node_id, &requests, now_ms)
            .await
        {
            Ok(allocated) => allocated,
            Err(e) => {
                // No renewal without the database: another replica may release these
                // grants, so renewing them here could lend the same budget twice. The data
                // plane keeps what it holds until `valid_for` passes.
                tracing::warn!(error = %e, "allocating leases failed; retrying at the next trigger");
                return !self.pushes.is_closed();
            }
        };
        self.pushed.clear();
        let mut grants = Vec::with_capacity(allocated.len());
        for (request, g) in requests.iter().zip(allocated) {
            self.pushed.insert(
                (request.key_id, request.window, request.window_start),
                (g.granted, g.target),
            );
            grants.push(LeaseGrant {
                key_id: request.key_id,
                window: request.window,
                window_start_unix_ms: request.window_start,
                granted: g.granted,
                fleet_used: g.fleet_used,
                own_used: g.own_used,
                ceiling: g.ceiling,
            });
        }
        tracing::debug!(grants = grants.len(), "pushing leases");
        let version = published.version();
        let mut chunks = grants.chunks(MAX_GRANTS_PER_LEASES).peekable();
        if chunks.peek().is_none() {
            // Everything that was limited no longer is: an empty lease list says so.
            let leases = Leases { grants: vec![], valid_for: VALID_FOR, skipped: vec![] };
            return self.pushes.send(LeasePush { version, leases }).await.is_ok();
        }
        for chunk in chunks {
            let leases = Leases { grants: chunk.to_vec(), valid_for: VALID_FOR, skipped: vec![] };
            if self.pushes.send(LeasePush { version, leases }).await.is_err() {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_638_662_500;
    const LIVE: i64 = NOW + 30_000;

    fn total(limit: u64) -> WindowLimits {
        WindowLimits { total_tokens: Some(limit), ..WindowLimits::default() }
    }

    fn tokens(n: u64) -> Usage {
        Usage { requests: n.div_ceil(100), total_tokens: n, ..Usage::default() }
    }

    fn holder(instance: u64, used: u64, granted: Option<u64>, expires_at_ms: i64) -> Holder {
        Holder { instance, used: tokens(used), granted: granted.map(total), expires_at_ms }
    }

    fn budget(limit: u64, holders: &[Holder], connected: usize) -> Budget<'_> {
        Budget {
            limits: total(limit),
            baseline: Usage::default(),
            holders,
            connected,
            default_typical: Usage::request(50, 50),
            wanted: Usage::default(),
        }
    }

    fn granted(g: &Grant) -> u64 {
        g.granted.total_tokens.expect("limited")
    }

    #[test]
    fn a_single_instance_gets_a_quarter_and_more_as_it_spends_up_to_the_whole_limit() {
        let mut h = vec![holder(1, 0, None, 0)];
        let first = grant(&budget(10_000, &h, 1), 1, NOW);
        assert_eq!(granted(&first), 2_500);
        assert_eq!(first.granted.requests, None, "unlimited measures stay unset");
        // Spending it all, top-up after top-up, ends at exactly the limit.
        let mut g = granted(&first);
        for _ in 0..100 {
            h[0] = holder(1, g, Some(g), LIVE);
            g = granted(&grant(&budget(10_000, &h, 1), 1, NOW));
        }
        assert_eq!(g, 10_000);
        // With headroom above half the target, nothing changes.
        h[0] = holder(1, 1_000, Some(2_500), LIVE);
        assert_eq!(granted(&grant(&budget(10_000, &h, 1), 1, NOW)), 2_500);
    }

    #[test]
    fn grants_never_exceed_the_limit_in_sum_whatever_the_order_of_requests() {
        // A deterministic pseudo-random walk of 5 instances spending what they hold.
        let limit = 10_000;
        let mut holders: Vec<Holder> = (1..=5).map(|i| holder(i, 0, None, 0)).collect();
        let mut seed: u64 = 7;
        for _ in 0..2_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let i = (seed >> 33) as usize % holders.len();
            let spend = (seed >> 13) % 300;
            let h = holders[i];
            let held = h.granted.and_then(|g| g.total_tokens).unwrap_or(0);
            let used = (h.used.total_tokens + spend).min(held);
            holders[i] = holder(h.instance, used, h.granted.and_then(|g| g.total_tokens), LIVE);
            let g = grant(&budget(limit, &holders, 5), h.instance, NOW);
            holders[i] = holder(h.instance, used, Some(granted(&g)), LIVE);
            let sum: u64 =
                holders.iter().map(|h| h.granted.and_then(|g| g.total_tokens).unwrap_or(0)).sum();
            assert!(sum <= limit, "grants {sum} over the limit {limit}");
        }
        let spent: u64 = holders.iter().map(|h| h.used.total_tokens).sum();
        assert!(spent > limit - 5 * 300, "the limit is usable: {spent} spent");
    }

    #[test]
    fn scarce_budget_is_split_evenly() {
        // 4 instances spent 9,000 of 10,000; their grants are used up.
        let mut holders: Vec<Holder> =
            (1..=4).map(|i| holder(i, 2_250, Some(2_250), LIVE)).collect();
        let first = grant(&budget(10_000, &holders, 4), 1, NOW);
        // A quarter of the 1,000 left, not the whole target (625 = 10,000 / 16).
        assert_eq!(granted(&first), 2_250 + 250);
        holders[0] = holder(1, 2_250, Some(granted(&first)), LIVE);
        for i in 2..=4 {
            let g = grant(&budget(10_000, &holders, 4), i, NOW);
            holders[i as usize - 1] = holder(i, 2_250, Some(granted(&g)), LIVE);
        }
        let extra: Vec<u64> = holders
            .iter()
            .map(|h| h.granted.and_then(|g| g.total_tokens).unwrap_or(0) - 2_250)
            .collect();
        // Each got a share of what was left when it asked, never below one typical request
        // (100 tokens) while budget remained, and the total is within the limit.
        assert_eq!(extra, [250, 188, 141, 106]);
        assert!(extra.iter().sum::<u64>() <= 1_000);
    }

    #[test]
    fn at_least_one_typical_request_while_budget_remains() {
        let holders = [holder(1, 9_900, Some(9_900), LIVE), holder(2, 0, None, 0)];
        // 100 left, 8 instances: an eighth (13) would admit nothing; one request (100) can.
        let g = grant(&budget(10_000, &holders, 8), 2, NOW);
        assert_eq!(granted(&g), 100);
    }

    #[test]
    fn an_expired_lease_is_released_but_its_usage_counts() {
        let holders = [holder(1, 1_000, Some(8_000), NOW - 1), holder(2, 0, None, 0)];
        let g = grant(&budget(10_000, &holders, 1), 2, NOW);
        // 9,000 available; the target is a quarter of the limit.
        assert_eq!(granted(&g), 2_500);
        let live = [holder(1, 1_000, Some(8_000), LIVE), holder(2, 0, None, 0)];
        let g = grant(&budget(10_000, &live, 1), 2, NOW);
        assert_eq!(granted(&g), 2_000, "a live lease keeps its unspent part");
        assert_eq!(g.fleet_used.total_tokens, 1_000);
        assert_eq!(g.own_used.total_tokens, 0);
    }

    #[test]
    fn a_returning_instance_is_lent_at_least_what_it_held() {
        // Instance 1's lease lapsed with 1,500 unspent; instance 2 was lent the rest meanwhile.
        let holders = [holder(1, 1_000, Some(2_500), NOW - 1), holder(2, 0, Some(7_500), LIVE)];
        let g = grant(&budget(10_000, &holders, 2), 1, NOW);
        assert_eq!(granted(&g), 2_500, "its data plane keeps 2,500 whatever it is sent");
        // With budget to spare, it is topped up as usual (the lapse made it due).
        let holders = [holder(1, 2_000, Some(2_500), NOW - 1), holder(2, 0, Some(2_000), LIVE)];
        let g = grant(&budget(10_000, &holders, 2), 1, NOW);
        assert_eq!(granted(&g), 2_000 + 1_250);
        let g = grant(&budget(10_000, &holders, 1), 1, NOW);
        assert_eq!(granted(&g), 2_000 + 2_500);
    }

    #[test]
    fn the_ceiling_is_the_limit_less_what_the_others_hold() {
        // Instance 2 holds 300 unspent of its grant: instance 1 can never get more than 9,700,
        // whatever the pool's state when it asks.
        let holders = [holder(1, 4_650, Some(4_700), LIVE), holder(2, 5_000, Some(5_300), LIVE)];
        let g = grant(&budget(10_000, &holders, 2), 1, NOW);
        assert_eq!(g.ceiling.total_tokens, Some(10_000 - 5_300));
        assert!(granted(&g) <= 4_700, "{}", granted(&g));
        // Its lease lapsed: only its use counts, the rest could be lent.
        let lapsed = [holder(1, 4_650, Some(4_700), LIVE), holder(2, 5_000, Some(5_300), NOW - 1)];
        let g = grant(&budget(10_000, &lapsed, 2), 1, NOW);
        assert_eq!(g.ceiling.total_tokens, Some(5_000));
        // Scarce: of the 350 left it is lent an equal share (2 connected), under the ceiling.
        assert_eq!(granted(&g), 4_650 + 175);
        // A reset baseline raises it like the limit.
        let mut b = budget(10_000, &holders, 2);
        b.baseline = tokens(1_000);
        assert_eq!(grant(&b, 1, NOW).ceiling.total_tokens, Some(11_000 - 5_300));
        // Measures without a limit have none.
        assert_eq!(g.ceiling.requests, None);
    }

    #[test]
    fn a_refused_reservation_is_covered_when_the_pool_allows() {
        // The end of a window (found by the process-level run): 61 tokens left to lend,
        // answers average 23 tokens, but the data plane reserves 34 per request (its prompt
        // estimate is above the billed count). Split evenly, the instance's top-up (31)
        // leaves it 33 of headroom: short of one reservation, forever.
        let used = |requests, total_tokens| Usage { requests, total_tokens, ..Usage::default() };
        let holders = [
            Holder {
                instance: 1,
                used: used(274, 6_028),
                granted: Some(total(6_061)),
                expires_at_ms: LIVE,
            },
            Holder {
                instance: 2,
                used: used(177, 3_900),
                granted: Some(total(3_911)),
                expires_at_ms: LIVE,
            },
        ];
        let mut b = budget(10_000, &holders, 2);
        assert_eq!(granted(&grant(&b, 1, NOW)), 6_061, "the even split raises nothing");
        // The data plane reports the reservation it refused: the top-up covers it.
        b.wanted = used(1, 34);
        assert_eq!(granted(&grant(&b, 1, NOW)), 6_028 + 34);
        // Never beyond the pool: what cannot be lent is not (the ceiling tells the data plane).
        b.wanted = used(1, 100);
        let g = grant(&b, 1, NOW);
        assert_eq!(granted(&g), 6_028 + 61);
        assert_eq!(g.ceiling.total_tokens, Some(6_028 + 61));
    }

    #[test]
    fn grants_never_shrink_and_overshoot_is_not_lent_again() {
        // Instance 1 charged beyond its grant (a request larger than its reservation).
        let holders = [holder(1, 6_000, Some(5_000), LIVE), holder(2, 4_000, Some(5_000), LIVE)];
        let g = grant(&budget(10_000, &holders, 2), 2, NOW);
        assert_eq!(granted(&g), 5_000, "nothing left to lend, and nothing taken back");
    }

    #[test]
    fn a_reset_baseline_makes_the_budget_count_from_there() {
        let holders = [holder(1, 10_000, Some(10_000), LIVE)];
        let mut b = budget(10_000, &holders, 1);
        assert_eq!(granted(&grant(&b, 1, NOW)), 10_000, "spent");
        b.baseline = tokens(10_000);
        let g = grant(&b, 1, NOW);
        assert_eq!(granted(&g), 12_500);
        assert_eq!(g.fleet_used.total_tokens, 0);
    }

    #[test]
    fn next_window_grants_come_within_the_lead_only() {
        use modelgw_model::{Gateway, GatewayId, GatewayKey, RoutingPolicy};
        let mut key = GatewayKey::new(GatewayKeyId::new(), [1; 32], "k");
        key.limits.per_minute.requests = Some(60);
        key.limits.per_day.total_tokens = Some(1_000_000);
        let snapshot = Snapshot::new(
            ConfigVersion(1),
            vec![],
            vec![Gateway {
                id: GatewayId::new(),
                name: "gw".into(),
                members: vec![],
                keys: vec![key.clone()],
                routing: RoutingPolicy::default(),
                key_limits: Default::default(),
                traces: Default::default(),
                pin_key: modelgw_model::PinKey::new([0; 32]),
            }],
        )
        .expect("valid");
        let minute = Window::Minute.start_of(NOW);
        let early = lease_requests(&snapshot, minute + 10_000);
        let starts: Vec<(Window, i64)> = early.iter().map(|r| (r.window, r.window_start)).collect();
        let day = Window::Day.start_of(NOW);
        assert_eq!(starts, [(Window::Minute, minute), (Window::Day, day)]);
        let late = lease_requests(&snapshot, minute + 57_500);
        let starts: Vec<(Window, i64)> = late.iter().map(|r| (r.window, r.window_start)).collect();
        assert_eq!(
            starts,
            [(Window::Minute, minute), (Window::Minute, minute + 60_000), (Window::Day, day)]
        );
        assert_eq!(early[0].default_typical, Usage::request(TYPICAL_PROMPT_TOKENS, 1_024));
        // The next lead: 3 s before the next minute; inside it, 3 s before the one after.
        assert_eq!(next_lead(&snapshot, minute + 10_000), Some(minute + 57_000));
        assert_eq!(next_lead(&snapshot, minute + 58_000), Some(minute + 117_000));
        // Next-window grants are computed like any other: nobody used anything yet.
        let g = grant(&budget(10_000, &[], 2), 1, minute + 57_500);
        assert_eq!(granted(&g), 1_250);
    }

    #[test]
    fn due_when_headroom_falls_under_half_the_target() {
        let g = total(2_500);
        let target = tokens(2_500);
        assert!(!top_up_due(&g, &target, &tokens(1_250)));
        assert!(top_up_due(&g, &target, &tokens(1_251)));
        assert!(!top_up_due(&WindowLimits::default(), &target, &tokens(9_999)), "unlimited");
    }
}
