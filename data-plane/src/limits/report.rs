//! The control plane's side of the limits, as this data plane sees it: leases applied to the
//! cells they are for, and usage reports built from the cells.
//!
//! Reports are cumulative per (key, window, window start): each carries what this instance
//! charged and has reserved there since the window began. A cell goes into a report when its
//! numbers changed since the last report handed to the transport (or, after a reconnect,
//! when it has any), so resending is harmless and nothing counted while the stream was down
//! is lost: it is still in the cells. Ended cells stay until their final numbers went out and
//! no request in flight holds them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use modelgw_model::keys::{KeyUsage, Leases, MAX_USAGE_ENTRIES_PER_REPORT, Usage, UsageReport};
use tracing::debug;

use super::budget::{KeyBudget, WindowCell};
use super::{KeyLimiter, unix_ms};

/// What [`KeyLimiter::apply_leases`] did with a `Leases` message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeasesApplied {
    pub applied: usize,
    /// Grants for keys this data plane does not know (yet), or for windows that have ended.
    pub ignored: usize,
}

/// Usage to report: entries whose numbers changed since the last report, with the cells
/// they came from (marked sent once the transport took them).
#[derive(Debug, Default)]
pub struct UsageBatch {
    entries: Vec<(Arc<WindowCell>, KeyUsage)>,
}

impl UsageBatch {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The reports to send, each within the protocol's bound.
    pub fn reports(&self) -> Vec<UsageReport> {
        self.entries
            .chunks(MAX_USAGE_ENTRIES_PER_REPORT)
            .map(|chunk| UsageReport {
                keys: chunk.iter().map(|(_, entry)| *entry).collect(),
                skipped: Vec::new(),
            })
            .collect()
    }

    /// Report `index` of [`UsageBatch::reports`] was handed to the transport.
    pub fn mark_sent(&self, index: usize) {
        let from = index.saturating_mul(MAX_USAGE_ENTRIES_PER_REPORT);
        let to = from.saturating_add(MAX_USAGE_ENTRIES_PER_REPORT).min(self.entries.len());
        for (cell, entry) in self.entries.get(from..to).unwrap_or_default() {
            *cell.sent() = Some((entry.charged, entry.reserved, entry.wanted));
        }
    }
}

impl KeyLimiter {
    /// Applies the control plane's grants (cumulative: only ever raised) and renews every
    /// grant held for `valid_for` from now.
    pub fn apply_leases(&self, leases: &Leases) -> LeasesApplied {
        let now = unix_ms(SystemTime::now());
        let mono = self.shared.mono_ms(Instant::now());
        let mut done = LeasesApplied::default();
        {
            let budgets = self.budgets();
            for g in &leases.grants {
                let Some(budget) = budgets.get(&g.key_id) else {
                    done.ignored += 1;
                    continue;
                };
                let now_start = g.window.start_of(now);
                let Some(cell) = budget.grant_cell(g.window, g.window_start_unix_ms, now_start)
                else {
                    done.ignored += 1;
                    continue;
                };
                cell.apply_grant(&g.granted, &g.fleet_used, &g.own_used, &g.ceiling);
                if g.window_start_unix_ms > now_start {
                    budget.catch_up(&cell, |current| {
                        current.apply_grant(&g.granted, &g.fleet_used, &g.own_used, &g.ceiling)
                    });
                }
                done.applied += 1;
            }
        }
        self.shared.renew(leases.valid_for, mono);
        debug!(
            applied = done.applied,
            ignored = done.ignored,
            valid_for_ms = leases.valid_for.as_millis() as u64,
            "budget leases applied"
        );
        done
    }

    /// Every key's usage that changed since it was last handed to the transport; ended cells
    /// already reported in full and held by no request are let go here.
    pub fn pending_usage(&self) -> UsageBatch {
        let (live, departed): (Vec<Arc<KeyBudget>>, Vec<Arc<KeyBudget>>) = (
            self.budgets().values().cloned().collect(),
            self.departed().values().cloned().collect(),
        );
        let mut batch = UsageBatch::default();
        for budget in live.iter().chain(&departed) {
            collect(budget, &mut batch);
        }
        // A departed key is let go once nothing of it is left to report.
        let mut gone = Vec::new();
        for budget in &departed {
            // Held by its slot and this look only: no request in flight, not in the batch.
            if budget.retired().is_empty()
                && budget.all_current(|cell| Arc::strong_count(cell) <= 2 && reported(cell))
            {
                gone.push(budget.id);
            }
        }
        if !gone.is_empty() {
            let mut map = self.departed();
            for id in gone {
                map.remove(&id);
            }
        }
        batch
    }

    /// After a reconnect: every cell with usage is reported again (cumulative, so the control
    /// plane keeps the larger and nothing counts twice).
    pub fn resend_all(&self) {
        let budgets: Vec<Arc<KeyBudget>> =
            self.budgets().values().cloned().chain(self.departed().values().cloned()).collect();
        for budget in budgets {
            budget.all_current(|cell| {
                *cell.sent() = None;
                true
            });
            for cell in budget.retired().iter() {
                *cell.sent() = None;
            }
        }
    }

    /// For tests and the lease clock: how long the grants held stay valid, from now.
    pub fn lease_left(&self) -> Option<Duration> {
        let until = self.shared.lease_until_ms.load(std::sync::atomic::Ordering::Acquire);
        let now = self.shared.mono_ms(Instant::now());
        (until > now).then(|| Duration::from_millis(until - now))
    }
}

/// Whether what `cell` holds now went out (or there is nothing to send).
fn reported(cell: &WindowCell) -> bool {
    let (charged, reserved) = cell.totals();
    let wanted = cell.wanted();
    match *cell.sent() {
        Some(sent) => sent == (charged, reserved, wanted),
        None => charged.is_zero() && reserved.is_zero() && wanted.is_zero(),
    }
}

/// Adds `budget`'s changed cells to `batch`, and lets go of ended cells that are done.
fn collect(budget: &KeyBudget, batch: &mut UsageBatch) {
    budget.all_current(|cell| {
        push_if_changed(budget, cell, batch);
        true
    });
    budget.retired().retain(|cell| {
        if push_if_changed(budget, cell, batch) {
            return true;
        }
        // Reported in full; kept only while a request in flight may still charge it.
        Arc::strong_count(cell) > 1
    });
}

/// Adds `cell` when its numbers changed since they were last sent; whether it did.
fn push_if_changed(budget: &KeyBudget, cell: &Arc<WindowCell>, batch: &mut UsageBatch) -> bool {
    if reported(cell) {
        return false;
    }
    let (charged, reserved): (Usage, Usage) = cell.totals();
    batch.entries.push((
        Arc::clone(cell),
        KeyUsage {
            key_id: budget.id,
            window: cell.window,
            window_start_unix_ms: cell.start_ms,
            charged,
            reserved,
            wanted: cell.wanted(),
        },
    ));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelgw_model::keys::{KeyLimitPolicy, Window};
    use modelgw_model::{ConfigVersion, Platform, Snapshot};

    use crate::routing_table::RoutingTable;
    use crate::routing_table::tests::{endpoint, gateway, member};

    fn table(version: u64, with_key: bool) -> RoutingTable {
        let e = endpoint("eus", Platform::AzureOpenai, "gpt-4o");
        let mut g = gateway("chat", "key-1", vec![member(&e, true, 0, 1)]);
        if !with_key {
            g.keys.clear();
        }
        let s = Snapshot { version: ConfigVersion(version), endpoints: vec![e], gateways: vec![g] };
        RoutingTable::compile(&s).expect("compiles")
    }

    #[test]
    fn reports_carry_what_changed_cumulatively_and_a_removed_key_leaves_once_reported() {
        let limiter = KeyLimiter::new();
        let mut first = table(1, true);
        limiter.attach(&mut first);
        let key = &first.gateways()[0].keys[0];
        let chain = key.chain.as_ref().expect("attached");
        let now = chain.shared.now(Instant::now());
        let policy = KeyLimitPolicy::default();
        for _ in 0..2 {
            let ticket = chain.admit(&Usage::request(10, 10), &policy, now).expect("no limits");
            ticket.settle(Some(Usage::request(3, 4)));
        }
        let batch = limiter.pending_usage();
        let reports = batch.reports();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].keys.len(), Window::ALL.len(), "one entry per window");
        assert!(
            reports[0].keys.iter().all(|e| e.charged.requests == 2 && e.charged.total_tokens == 14)
        );
        assert!(limiter.pending_usage().len() == 3, "nothing marked sent: still pending");
        batch.mark_sent(0);
        drop(batch);
        assert!(limiter.pending_usage().is_empty(), "sent and unchanged");
        limiter.resend_all();
        assert_eq!(limiter.pending_usage().len(), 3, "a new stream gets everything again");

        // The key leaves the configuration with its last numbers sent: it is let go.
        let batch = limiter.pending_usage();
        batch.mark_sent(0);
        drop(batch);
        let mut second = table(2, false);
        limiter.attach(&mut second);
        assert_eq!(limiter.departed().len(), 1);
        assert!(limiter.pending_usage().is_empty());
        assert!(limiter.departed().is_empty(), "nothing left to report");
    }
}
