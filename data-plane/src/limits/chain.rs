//! A key's chain (itself, then each ancestor) as the request path uses it: admission against
//! every limited counter of the chain, all or nothing, and the [`Ticket`] a request carries
//! until its answer ends and is charged.

use std::sync::Arc;
use std::time::Duration;

use modelgw_model::keys::{KeyLimitPolicy, KeyLimits, MAX_KEY_DEPTH, Measure, Usage, Window};

use super::Shared;
use super::budget::{Amounts, KeyBudget, MEASURES, WINDOWS, WindowCell, amounts, bit};

/// Most cells one request is charged in: every window of its key and of each ancestor.
const MAX_CELLS: usize = (MAX_KEY_DEPTH + 1) * WINDOWS;

/// Why the limits refused a request (the `reason` of the refusal metric and log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// The fleet-wide remaining of the window is below the request's reservation: retry when
    /// the window ends.
    WindowSpent = 0,
    /// Only this instance's lease is short (the control plane is asked for more): retry in 1 s.
    LeaseShort = 1,
    /// No valid lease and the gateway fails closed: retry in 1 s.
    NoLease = 2,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 3] =
        [RefusalReason::WindowSpent, RefusalReason::LeaseShort, RefusalReason::NoLease];

    pub const fn label(self) -> &'static str {
        match self {
            RefusalReason::WindowSpent => "window_spent",
            RefusalReason::LeaseShort => "lease_short",
            RefusalReason::NoLease => "no_lease",
        }
    }
}

/// A request the limits refused: which counter, and when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: RefusalReason,
    pub(crate) window: Window,
    pub(crate) measure: Measure,
    pub(crate) limit: u64,
    /// The limit is an ancestor's (its subtree's), not the key's own.
    pub(crate) inherited: bool,
    pub(crate) retry_after: Duration,
    /// The counter's numbers at the refusal (none without a lease), for the log.
    pub(crate) seen: Option<Seen>,
}

/// One counter as a refusal saw it, in its measure's unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The request's reservation.
    pub(crate) needed: u64,
    /// This instance's charged + reserved in the window.
    pub(crate) used: u64,
    /// This instance's grant.
    pub(crate) granted: u64,
    /// What this instance could still be lent (`WindowCell::lendable`).
    pub(crate) lendable: u64,
}

/// Now, as admission reads it: the wall clock for UTC windows, and milliseconds since the
/// limiter started for lease validity (which must not jump with the wall clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Now {
    pub(crate) unix_ms: i64,
    pub(crate) mono_ms: u64,
}

/// One key of a chain: its counters and the limits it sets.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) budget: Arc<KeyBudget>,
    /// Per window, the measures this key limits.
    pub(crate) mask: [u8; WINDOWS],
    pub(crate) limit: [Amounts; WINDOWS],
}

impl Link {
    pub(crate) fn new(budget: Arc<KeyBudget>, limits: &KeyLimits) -> Link {
        let mut mask = [0; WINDOWS];
        let mut limit = [[0; MEASURES]; WINDOWS];
        for (w, window) in Window::ALL.iter().enumerate() {
            for (m, measure) in Measure::ALL.iter().enumerate() {
                if let Some(value) = limits.window(*window).get(*measure) {
                    mask[w] |= bit(m);
                    limit[w][m] = value;
                }
            }
        }
        Link { budget, mask, limit }
    }
}

/// A compiled key's chain: its own budget first, then each ancestor's, with their limits.
/// Built when a snapshot is swapped in; the request path only reads it.
#[derive(Debug)]
pub(crate) struct KeyChain {
    pub(crate) links: Box<[Link]>,
    /// Some key of the chain limits something.
    limited: bool,
    pub(crate) shared: Arc<Shared>,
}

impl KeyChain {
    pub(crate) fn new(links: Vec<Link>, shared: Arc<Shared>) -> KeyChain {
        let limited = links.iter().any(|l| l.mask.iter().any(|m| *m != 0));
        KeyChain { links: links.into_boxed_slice(), limited, shared }
    }

    /// Whether some key of the chain has limits (then answers carry the key's
    /// `x-ratelimit-*` headers, and streams are asked for their usage).
    #[inline]
    pub(crate) fn limited(&self) -> bool {
        self.limited
    }

    /// Admits a request reserving `reservation` on every limited counter of the chain, or
    /// refuses it with nothing reserved. Never waits: a few atomic operations per counter.
    pub(crate) fn admit(
        &self,
        reservation: &Usage,
        policy: &KeyLimitPolicy,
        now: Now,
    ) -> Result<Ticket, Refusal> {
        let amount = amounts(reservation);
        let mut ticket = Ticket::new(amount, self.limited);
        let starts = Window::ALL.map(|w| w.start_of(now.unix_ms));
        let lease = self.limited && self.shared.lease_valid(now.mono_ms);
        let needed = (0..MEASURES).filter(|m| amount[*m] > 0).fold(0u8, |acc, m| acc | bit(m));
        let mut fail_open: Option<(usize, Window)> = None;
        for (depth, link) in self.links.iter().enumerate() {
            for (w, window) in Window::ALL.iter().enumerate() {
                let cell = link.budget.cell(*window, starts[w]);
                let limited = link.mask[w];
                if limited == 0 {
                    ticket.push(cell, 0);
                    continue;
                }
                let checked = if lease { cell.granted_mask(limited & needed) } else { 0 };
                let unchecked = limited & needed & !checked;
                if unchecked != 0 {
                    if policy.fail_closed {
                        ticket.rollback();
                        let m = unchecked.trailing_zeros() as usize;
                        return Err(self.refused(
                            RefusalReason::NoLease,
                            depth,
                            w,
                            m,
                            Duration::from_secs(1),
                            None,
                        ));
                    }
                    fail_open.get_or_insert((depth, *window));
                }
                match cell.reserve(&amount, limited, checked) {
                    Ok(low) => {
                        if low {
                            self.shared.wants_report.notify_one();
                        }
                        ticket.push(cell, limited);
                    }
                    Err(m) => {
                        ticket.rollback();
                        let seen = Seen {
                            needed: amount[m],
                            used: cell.used(m),
                            granted: cell.granted(m).unwrap_or(0),
                            lendable: cell.lendable(m, link.limit[w][m]),
                        };
                        let (reason, wait) = if seen.lendable < amount[m] {
                            let left = cell.end_ms().saturating_sub(now.unix_ms).max(0);
                            (RefusalReason::WindowSpent, Duration::from_millis(left as u64))
                        } else {
                            // A top-up would admit it: ask for one now.
                            cell.want(&amount);
                            self.shared.wants_report.notify_one();
                            (RefusalReason::LeaseShort, Duration::from_secs(1))
                        };
                        return Err(self.refused(reason, depth, w, m, wait, Some(seen)));
                    }
                }
            }
        }
        if let Some((depth, window)) = fail_open {
            self.shared.admitted_open(&self.links[depth].budget, window, lease, now.unix_ms);
        }
        Ok(ticket)
    }

    fn refused(
        &self,
        reason: RefusalReason,
        depth: usize,
        w: usize,
        m: usize,
        retry_after: Duration,
        seen: Option<Seen>,
    ) -> Refusal {
        self.shared.counters.refused(reason);
        Refusal {
            reason,
            window: Window::ALL[w],
            measure: Measure::ALL[m],
            limit: self.links[depth].limit[w][m],
            inherited: depth > 0,
            retry_after,
            seen,
        }
    }
}

/// What one admitted request holds until its answer ends: the cells it is charged in and
/// what it reserved there. Settled once: explicitly, or when dropped (a client gone away,
/// a stream abandoned) with its reservation — the worst case it was admitted for.
pub(crate) struct Ticket {
    cells: [Option<Arc<WindowCell>>; MAX_CELLS],
    /// Per cell, the measures reserved there.
    reserved: [u8; MAX_CELLS],
    len: usize,
    reservation: Amounts,
    limited: bool,
    done: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("cells", &self.len)
            .field("reservation", &self.reservation)
            .field("done", &self.done)
            .finish()
    }
}

impl Ticket {
    fn new(reservation: Amounts, limited: bool) -> Ticket {
        Ticket {
            cells: std::array::from_fn(|_| None),
            reserved: [0; MAX_CELLS],
            len: 0,
            reservation,
            limited,
            done: false,
        }
    }

    #[inline]
    fn push(&mut self, cell: Arc<WindowCell>, reserved: u8) {
        // A chain is at most `MAX_KEY_DEPTH + 1` keys (the snapshot's rule), so this always
        // fits; were it not, the cell would simply not be charged.
        if let Some(slot) = self.cells.get_mut(self.len) {
            *slot = Some(cell);
            self.reserved[self.len] = reserved;
            self.len += 1;
        }
    }

    /// Whether the request's chain has limits.
    pub(crate) fn limited(&self) -> bool {
        self.limited
    }

    /// Takes back every reservation: the request is charged nothing.
    fn rollback(&mut self) {
        for i in 0..self.len {
            if let Some(cell) = &self.cells[i] {
                cell.release(&self.reservation, self.reserved[i]);
            }
        }
        self.done = true;
    }

    /// The answer is complete: charged its `usage`, or — without one (a stream cut before
    /// its usage, an answer that carries none) — its reservation.
    pub(crate) fn settle(mut self, usage: Option<Usage>) {
        let actual = usage.map_or(self.reservation, |u| amounts(&u));
        self.charge(&actual);
    }

    /// An error answer (the upstream's 4xx/5xx, or the gateway's own): one request, no
    /// tokens.
    pub(crate) fn settle_error(mut self) {
        self.charge(&[1, 0, 0, 0]);
    }

    fn charge(&mut self, actual: &Amounts) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        for i in 0..self.len {
            let Some(cell) = &self.cells[i] else { continue };
            let mut reserved = [0; MEASURES];
            for (m, r) in reserved.iter_mut().enumerate() {
                if self.reserved[i] & bit(m) != 0 {
                    *r = self.reservation[m];
                }
            }
            cell.settle(actual, &reserved);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let reservation = self.reservation;
        self.charge(&reservation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelgw_model::GatewayKeyId;
    use modelgw_model::keys::{LeaseGrant, WindowLimits};

    const T0: i64 = 1_796_637_600_000 + 1_000; // one second into an hour (and a minute)

    fn now(mono_ms: u64) -> Now {
        Now { unix_ms: T0 + mono_ms as i64, mono_ms }
    }

    fn limits(window: Window, measure: Measure, value: u64) -> KeyLimits {
        let mut l = KeyLimits::default();
        l.window_mut(window).set(measure, Some(value));
        l
    }

    /// A chain of `keys` (own key first) with their limits, sharing `shared`.
    fn chain(shared: &Arc<Shared>, keys: &[(&Arc<KeyBudget>, KeyLimits)]) -> KeyChain {
        let links = keys.iter().map(|(b, l)| Link::new(Arc::clone(b), l)).collect();
        KeyChain::new(links, Arc::clone(shared))
    }

    fn grant(shared: &Shared, budget: &KeyBudget, window: Window, measure: Measure, value: u64) {
        grant_under(shared, budget, window, measure, value, None);
    }

    /// A grant of `value` whose ceiling (the most the control plane could lend) is `ceiling`.
    fn grant_under(
        shared: &Shared,
        budget: &KeyBudget,
        window: Window,
        measure: Measure,
        value: u64,
        ceiling: Option<u64>,
    ) {
        let mut granted = WindowLimits::default();
        granted.set(measure, Some(value));
        let mut top = WindowLimits::default();
        top.set(measure, ceiling);
        let g = LeaseGrant {
            key_id: budget.id,
            window,
            window_start_unix_ms: window.start_of(T0),
            granted,
            fleet_used: Usage::default(),
            own_used: Usage::default(),
            ceiling: top,
        };
        let cell = budget.grant_cell(window, g.window_start_unix_ms, window.start_of(T0));
        cell.expect("current").apply_grant(&g.granted, &g.fleet_used, &g.own_used, &g.ceiling);
        shared.renew(Duration::from_secs(30), 0);
    }

    fn budget() -> Arc<KeyBudget> {
        Arc::new(KeyBudget::new(GatewayKeyId::new(), T0))
    }

    #[test]
    fn a_parent_limit_refuses_with_nothing_left_reserved_on_the_child() {
        let shared = Arc::new(Shared::new());
        let (child, parent) = (budget(), budget());
        let c = chain(
            &shared,
            &[
                (&child, limits(Window::Minute, Measure::Requests, 100)),
                (&parent, limits(Window::Hour, Measure::TotalTokens, 1_000)),
            ],
        );
        grant(&shared, &child, Window::Minute, Measure::Requests, 100);
        grant(&shared, &parent, Window::Hour, Measure::TotalTokens, 1_000);
        let policy = KeyLimitPolicy::default();
        let first = c.admit(&Usage::request(400, 400), &policy, now(1)).expect("fits");
        let refusal = c.admit(&Usage::request(100, 200), &policy, now(2)).expect_err("refused");
        assert_eq!(refusal.reason, RefusalReason::WindowSpent);
        assert_eq!((refusal.window, refusal.measure), (Window::Hour, Measure::TotalTokens));
        assert!(refusal.inherited);
        assert_eq!(refusal.limit, 1_000);
        let hour_left = Window::Hour.start_of(T0) + Window::Hour.len_ms() - (T0 + 2);
        assert_eq!(refusal.retry_after, Duration::from_millis(hour_left as u64));
        let minute = child.current(Window::Minute);
        assert_eq!(minute.used(0), 1, "the refused request's reservation was taken back");
        // The first one is charged less than it reserved: room for the second.
        first.settle(Some(Usage::request(300, 100)));
        let second = c.admit(&Usage::request(100, 200), &policy, now(3)).expect("fits now");
        drop(second); // dropped unsettled: charged its reservation
        let (charged, reserved) = parent.current(Window::Hour).totals();
        assert_eq!(
            charged,
            Usage { requests: 2, prompt_tokens: 400, completion_tokens: 300, total_tokens: 700 }
        );
        assert_eq!(reserved, Usage::default());
        let (child_minute, _) = child.current(Window::Minute).totals();
        assert_eq!(child_minute, charged, "every key of the chain is charged");
        assert_eq!(shared.counters.refusals(RefusalReason::WindowSpent), 1);
    }

    #[test]
    fn a_short_lease_with_room_in_the_fleet_asks_to_retry_in_a_second() {
        let shared = Arc::new(Shared::new());
        let key = budget();
        let c = chain(&shared, &[(&key, limits(Window::Day, Measure::Requests, 10))]);
        grant(&shared, &key, Window::Day, Measure::Requests, 2);
        let policy = KeyLimitPolicy::default();
        let a = c.admit(&Usage::request(1, 1), &policy, now(1)).expect("1");
        let _b = c.admit(&Usage::request(1, 1), &policy, now(1)).expect("2");
        let refusal = c.admit(&Usage::request(1, 1), &policy, now(1)).expect_err("3");
        assert_eq!(refusal.reason, RefusalReason::LeaseShort);
        assert_eq!(refusal.retry_after, Duration::from_secs(1));
        a.settle_error();
        let (charged, _) = key.current(Window::Day).totals();
        assert_eq!(charged, Usage { requests: 1, ..Usage::default() }, "an error: one request");
    }

    #[test]
    fn budget_held_by_other_instances_sends_a_refusal_to_the_window_end() {
        // 10 requests a day; the fleet used none but another instance holds 7 of them: this
        // instance was lent 2 and can never get more than 3.
        let shared = Arc::new(Shared::new());
        let key = budget();
        let c = chain(&shared, &[(&key, limits(Window::Day, Measure::Requests, 10))]);
        grant_under(&shared, &key, Window::Day, Measure::Requests, 2, Some(3));
        let policy = KeyLimitPolicy::default();
        let _a = c.admit(&Usage::request(1, 1), &policy, now(1)).expect("1");
        let _b = c.admit(&Usage::request(1, 1), &policy, now(1)).expect("2");
        // One more could still be lent: a top-up is worth a retry in a second.
        let refusal = c.admit(&Usage::request(1, 1), &policy, now(1)).expect_err("3");
        assert_eq!(refusal.reason, RefusalReason::LeaseShort);
        // The refused reservation is reported, so the control plane's top-up covers it.
        let cell = key.current(Window::Day);
        assert_eq!(cell.wanted(), Usage::request(1, 1));
        // The top-up came, and used up what could be lent: the next refusal is for the day.
        grant_under(&shared, &key, Window::Day, Measure::Requests, 3, Some(3));
        assert!(cell.wanted().is_zero(), "a raised grant answered the want");
        let _c = c.admit(&Usage::request(1, 1), &policy, now(2)).expect("3");
        let refusal = c.admit(&Usage::request(1, 1), &policy, now(2)).expect_err("4");
        assert_eq!(refusal.reason, RefusalReason::WindowSpent);
        let day_left = Window::Day.start_of(T0) + Window::Day.len_ms() - (T0 + 2);
        assert_eq!(refusal.retry_after, Duration::from_millis(day_left as u64));
    }

    #[test]
    fn without_a_valid_lease_admission_fails_open_or_closed() {
        let shared = Arc::new(Shared::new());
        let key = budget();
        let c = chain(&shared, &[(&key, limits(Window::Minute, Measure::TotalTokens, 10))]);
        let open = KeyLimitPolicy::default();
        let closed = KeyLimitPolicy { fail_closed: true, ..KeyLimitPolicy::default() };
        // No lease ever: open admits beyond the limit (and counts), closed refuses.
        for _ in 0..3 {
            c.admit(&Usage::request(10, 10), &open, now(1)).expect("open").settle(None);
        }
        assert_eq!(shared.counters.fail_open(), 3);
        let refusal = c.admit(&Usage::request(1, 1), &closed, now(1)).expect_err("closed");
        assert_eq!(
            (refusal.reason, refusal.retry_after),
            (RefusalReason::NoLease, Duration::from_secs(1))
        );
        // A lease that expires: enforced while valid, then open again, and the expiry counted once.
        grant(&shared, &key, Window::Minute, Measure::TotalTokens, 100);
        assert!(c.admit(&Usage::request(50, 50), &open, now(2)).is_err(), "60 + 100 > 100");
        let late = now(31_000);
        c.admit(&Usage::request(50, 50), &open, late).expect("expired: open").settle(None);
        c.admit(&Usage::request(50, 50), &open, late).expect("expired: open").settle(None);
        assert_eq!(shared.counters.lease_expiries(), 1);
        assert!(c.admit(&Usage::request(1, 1), &closed, late).is_err());
    }

    #[test]
    fn keys_without_limits_are_counted_but_never_refused() {
        let shared = Arc::new(Shared::new());
        let key = budget();
        let c = chain(&shared, &[(&key, KeyLimits::default())]);
        assert!(!c.limited());
        let policy = KeyLimitPolicy { fail_closed: true, ..KeyLimitPolicy::default() };
        let t = c.admit(&Usage::request(5, 5), &policy, now(0)).expect("unlimited");
        let (charged, reserved) = key.current(Window::Hour).totals();
        assert!(charged.is_zero() && reserved.is_zero(), "nothing reserved without limits");
        t.settle(Some(Usage::request(3, 4)));
        for w in Window::ALL {
            assert_eq!(key.current(w).totals().0, Usage::request(3, 4));
        }
    }

    /// Many threads admitting at once never take more than the grant, and once the answers
    /// are charged (never above their reservations) the charged total stays within it.
    #[test]
    fn concurrent_admissions_never_exceed_the_grant() {
        const GRANT: u64 = 50_000;
        let shared = Arc::new(Shared::new());
        let key = budget();
        let c =
            Arc::new(chain(&shared, &[(&key, limits(Window::Hour, Measure::TotalTokens, GRANT))]));
        grant(&shared, &key, Window::Hour, Measure::TotalTokens, GRANT);
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for thread in 0..8u64 {
                let c = Arc::clone(&c);
                let admitted = &admitted;
                scope.spawn(move || {
                    let policy = KeyLimitPolicy::default();
                    for i in 0..2_000u64 {
                        let size = 1 + (thread * 7919 + i * 104_729) % 97;
                        if let Ok(ticket) = c.admit(&Usage::request(size, size), &policy, now(5)) {
                            admitted.fetch_add(2 * size, std::sync::atomic::Ordering::Relaxed);
                            // Half the answers use less than they reserved.
                            let used = if i % 2 == 0 { size } else { size / 2 };
                            ticket.settle(Some(Usage::request(used, used)));
                        }
                    }
                });
            }
        });
        let cell = key.current(Window::Hour);
        let (charged, reserved) = cell.totals();
        assert!(reserved.is_zero());
        assert!(charged.total_tokens <= GRANT, "{} > {GRANT}", charged.total_tokens);
        assert!(cell.used(3) <= GRANT);
        // Not too careful either: the grant is used up to less than one request's worth.
        assert!(charged.total_tokens > GRANT - 2_000, "{}", charged.total_tokens);
        assert!(admitted.into_inner() >= charged.total_tokens);
    }
}
