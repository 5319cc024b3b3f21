//! The counters of one key: a [`WindowCell`] per (window, window start) holding what this
//! instance charged and reserved and what the control plane granted it, and the
//! [`KeyBudget`] that keeps a key's cells across snapshot swaps (by key id).
//!
//! Every counter is an atomic. A cell's admission counter is `used` (charged + reserved, per
//! measure): a reservation is one compare-and-swap that keeps `used ≤ granted`, so no number
//! of threads admitting at once can take more than the grant. `charged` only grows (what
//! the usage reports carry must never go down); `reserved` is `used − charged`, read in that
//! order, which is never negative (see [`WindowCell::settle`]).
//!
//! Cells are `Arc`s: a request holds the cells it was admitted in until its answer ends, so it
//! is settled in the window that admitted it even when that window has ended meanwhile. A
//! key's current cell per window is swapped for a new one by whoever first meets the next
//! window (a request, or a grant for it); the old one goes to the key's retired list, where
//! the reporter finds it until its final numbers went out and no request holds it any more.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use modelgw_model::GatewayKeyId;
use modelgw_model::keys::{Measure, Usage, Window, WindowLimits};

/// Measures per window: requests, prompt, completion and total tokens (`Measure::index`).
pub(crate) const MEASURES: usize = Measure::ALL.len();
/// Windows per key: minute, hour, day (`Window::index`).
pub(crate) const WINDOWS: usize = Window::ALL.len();

/// An amount of each measure, indexed by `Measure::index`.
pub(crate) type Amounts = [u64; MEASURES];

/// `granted` of a measure no grant was received for.
const NO_GRANT: u64 = u64::MAX;

/// Most ended cells a key keeps for reporting. Ended cells normally leave at the next report;
/// only a data plane cut off from its control plane piles them up (one minute cell a minute
/// per key with traffic). 128 keeps two hours of minute rows; beyond it the oldest minute
/// cells go (their hour and day cells still carry the totals).
const MAX_RETIRED_PER_KEY: usize = 128;

pub(crate) fn amounts(u: &Usage) -> Amounts {
    [u.requests, u.prompt_tokens, u.completion_tokens, u.total_tokens]
}

pub(crate) fn usage(a: &Amounts) -> Usage {
    Usage { requests: a[0], prompt_tokens: a[1], completion_tokens: a[2], total_tokens: a[3] }
}

/// The bit of measure `m` in a measure mask.
#[inline]
pub(crate) const fn bit(m: usize) -> u8 {
    1 << m
}

/// What one instance did with one key in one window, and what it may do.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct WindowCell {
    /// Charged + reserved: the admission counter (one cache line with `charged`).
    used: [AtomicU64; MEASURES],
    /// Settled: actual usage of completed answers, reservations of cut ones.
    charged: [AtomicU64; MEASURES],
    /// The control plane's cumulative grant; [`NO_GRANT`] until one arrives.
    granted: [AtomicU64; MEASURES],
    /// `used` above this: ask the control plane for more now (half of the headroom the
    /// last grant left is spent).
    low_water: [AtomicU64; MEASURES],
    /// The fleet's charged + reserved, and this instance's part of it, as the control plane
    /// knew them at the last grant (remaining = limit − fleet − (own now − own then)).
    fleet_used: [AtomicU64; MEASURES],
    own_used: [AtomicU64; MEASURES],
    /// The most this instance could be granted, per the last grant ([`NO_GRANT`]: not known):
    /// the limit less what the other instances hold.
    ceiling: [AtomicU64; MEASURES],
    /// The reservation of the last request refused for a short grant while the limit had room
    /// (zero: none since the grant last rose): reported, so the next grant covers it.
    wanted: [AtomicU64; MEASURES],
    /// An early report was asked for since the last grant.
    asked: AtomicBool,
    pub(crate) window: Window,
    /// Unix ms, UTC-aligned to `window`.
    pub(crate) start_ms: i64,
    /// (charged, reserved, wanted) in the last report handed to the transport; the reporter's.
    sent: Mutex<Option<(Usage, Usage, Usage)>>,
}

impl WindowCell {
    pub(crate) fn new(window: Window, start_ms: i64) -> WindowCell {
        WindowCell {
            used: Default::default(),
            charged: Default::default(),
            granted: std::array::from_fn(|_| AtomicU64::new(NO_GRANT)),
            low_water: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            fleet_used: Default::default(),
            own_used: Default::default(),
            ceiling: std::array::from_fn(|_| AtomicU64::new(NO_GRANT)),
            wanted: Default::default(),
            asked: AtomicBool::new(false),
            window,
            start_ms,
            sent: Mutex::new(None),
        }
    }

    pub(crate) fn end_ms(&self) -> i64 {
        self.start_ms + self.window.len_ms()
    }

    /// The measures of `mask` this cell holds a grant for.
    #[inline]
    pub(crate) fn granted_mask(&self, mask: u8) -> u8 {
        let mut out = 0;
        for m in 0..MEASURES {
            if mask & bit(m) != 0 && self.granted[m].load(Ordering::Acquire) != NO_GRANT {
                out |= bit(m);
            }
        }
        out
    }

    /// Reserves `amount` on the measures of `reserve` (a measure outside it is not touched),
    /// checking `used + amount ≤ granted` on those of `checked` and adding unconditionally on
    /// the others (fail-open). `Ok(true)` when a checked measure crossed its low-water mark
    /// for the first time since the last grant; `Err(m)`: measure `m` does not fit, and
    /// nothing of this reservation stays on the cell.
    #[inline]
    pub(crate) fn reserve(
        &self,
        amount: &Amounts,
        reserve: u8,
        checked: u8,
    ) -> Result<bool, usize> {
        let mut low = false;
        for m in 0..MEASURES {
            let a = amount[m];
            if reserve & bit(m) == 0 || a == 0 {
                continue;
            }
            if checked & bit(m) == 0 {
                self.used[m].fetch_add(a, Ordering::Relaxed);
                continue;
            }
            let granted = self.granted[m].load(Ordering::Acquire);
            let mut current = self.used[m].load(Ordering::Relaxed);
            loop {
                let next = current.saturating_add(a);
                if next > granted {
                    self.release_below(amount, reserve, m);
                    return Err(m);
                }
                match self.used[m].compare_exchange_weak(
                    current,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        low |= next > self.low_water[m].load(Ordering::Relaxed);
                        break;
                    }
                    Err(actual) => current = actual,
                }
            }
        }
        Ok(low && !self.asked.load(Ordering::Relaxed) && !self.asked.swap(true, Ordering::Relaxed))
    }

    /// Takes back what [`WindowCell::reserve`] added for the measures before `upto`.
    fn release_below(&self, amount: &Amounts, reserve: u8, upto: usize) {
        for (m, a) in amount.iter().enumerate().take(upto) {
            if reserve & bit(m) != 0 && *a > 0 {
                self.used[m].fetch_sub(*a, Ordering::Relaxed);
            }
        }
    }

    /// Takes back a whole reservation (a request refused further up its chain).
    pub(crate) fn release(&self, amount: &Amounts, reserve: u8) {
        self.release_below(amount, reserve, MEASURES);
    }

    /// Settles one request: `actual` is charged; `reserved` (0 for measures the request did
    /// not reserve here) leaves the reservation.
    ///
    /// The order of the two updates keeps `used ≥ charged` at every instant, so a reader
    /// taking `charged` (acquire) and then `used` never sees a negative reservation: when
    /// the actual exceeds the reservation `used` grows first, else `charged` does.
    #[inline]
    pub(crate) fn settle(&self, actual: &Amounts, reserved: &Amounts) {
        for m in 0..MEASURES {
            let (a, r) = (actual[m], reserved[m]);
            if a >= r {
                if a > r {
                    self.used[m].fetch_add(a - r, Ordering::Relaxed);
                }
                if a > 0 {
                    self.charged[m].fetch_add(a, Ordering::Release);
                }
            } else {
                if a > 0 {
                    self.charged[m].fetch_add(a, Ordering::Release);
                }
                self.used[m].fetch_sub(r - a, Ordering::Relaxed);
            }
        }
    }

    /// Charged and reserved now.
    pub(crate) fn totals(&self) -> (Usage, Usage) {
        let mut charged = [0; MEASURES];
        let mut reserved = [0; MEASURES];
        for m in 0..MEASURES {
            charged[m] = self.charged[m].load(Ordering::Acquire);
            reserved[m] = self.used[m].load(Ordering::Relaxed).saturating_sub(charged[m]);
        }
        (usage(&charged), usage(&reserved))
    }

    /// Charged + reserved of measure `m` now.
    #[inline]
    pub(crate) fn used(&self, m: usize) -> u64 {
        self.used[m].load(Ordering::Relaxed)
    }

    /// The grant of measure `m`, if one was received.
    pub(crate) fn granted(&self, m: usize) -> Option<u64> {
        Some(self.granted[m].load(Ordering::Acquire)).filter(|g| *g != NO_GRANT)
    }

    /// The fleet-wide remaining of measure `m` under `limit` as far as this instance knows:
    /// `limit − fleet_used − (own now − own_used)` from the last grant, or `limit − own now`
    /// without one.
    pub(crate) fn remaining(&self, m: usize, limit: u64) -> u64 {
        let own_now = self.used(m);
        if self.granted(m).is_none() {
            return limit.saturating_sub(own_now);
        }
        let fleet = self.fleet_used[m].load(Ordering::Relaxed);
        let own_then = self.own_used[m].load(Ordering::Relaxed);
        limit.saturating_sub(fleet).saturating_sub(own_now.saturating_sub(own_then))
    }

    /// How much of measure `m` (limit `limit`) this instance could still be lent in this
    /// window beyond what it used: the fleet-wide remaining, and at most the ceiling of the
    /// last grant less own use (budget the other instances hold stays theirs until their
    /// leases lapse). A reservation above it waits for the window's end, not for a top-up.
    pub(crate) fn lendable(&self, m: usize, limit: u64) -> u64 {
        let ceiling = self.ceiling[m].load(Ordering::Relaxed);
        let reachable =
            if ceiling == NO_GRANT { u64::MAX } else { ceiling.saturating_sub(self.used(m)) };
        self.remaining(m, limit).min(reachable)
    }

    /// A request needing `amount` was refused because this instance's grant is short while
    /// the limit has room: ask the control plane to cover it.
    pub(crate) fn want(&self, amount: &Amounts) {
        for (m, a) in amount.iter().enumerate() {
            self.wanted[m].store(*a, Ordering::Relaxed);
        }
    }

    /// What [`WindowCell::want`] asked for since the grant last rose.
    pub(crate) fn wanted(&self) -> Usage {
        usage(&std::array::from_fn(|m| self.wanted[m].load(Ordering::Relaxed)))
    }

    /// Applies a grant: cumulative, so only ever raised; the low-water mark is set halfway
    /// through the headroom it leaves.
    /// A renewal that raises nothing leaves the mark (and an early report already asked for)
    /// as they are; the fleet's numbers and the ceiling are always the latest.
    pub(crate) fn apply_grant(
        &self,
        granted: &WindowLimits,
        fleet_used: &Usage,
        own_used: &Usage,
        ceiling: &WindowLimits,
    ) {
        let fleet = amounts(fleet_used);
        let own = amounts(own_used);
        let mut raised_any = false;
        for (m, measure) in Measure::ALL.iter().enumerate() {
            let Some(grant) = granted.get(*measure) else { continue };
            let grant = grant.min(NO_GRANT - 1);
            self.fleet_used[m].store(fleet[m], Ordering::Relaxed);
            self.own_used[m].store(own[m], Ordering::Relaxed);
            let top = ceiling.get(*measure).map_or(NO_GRANT, |c| c.min(NO_GRANT - 1));
            self.ceiling[m].store(top, Ordering::Relaxed);
            let before = self.granted[m].load(Ordering::Acquire);
            if before != NO_GRANT && grant <= before {
                continue;
            }
            raised_any = true;
            let headroom = grant.saturating_sub(self.used(m));
            self.low_water[m].store(grant - headroom / 2, Ordering::Relaxed);
            self.granted[m].store(grant, Ordering::Release);
        }
        if raised_any {
            self.asked.store(false, Ordering::Relaxed);
            for wanted in &self.wanted {
                wanted.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Whether nothing was ever counted or granted here.
    fn is_blank(&self) -> bool {
        (0..MEASURES).all(|m| self.used(m) == 0 && self.granted(m).is_none())
    }

    pub(crate) fn sent(&self) -> MutexGuard<'_, Option<(Usage, Usage, Usage)>> {
        self.sent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A key's current and next cell of one window kind.
#[derive(Debug)]
struct WindowSlots {
    current: ArcSwap<WindowCell>,
    /// A cell for a window that has not started, made by a grant that came ahead of it.
    next: ArcSwapOption<WindowCell>,
}

/// One key's counters, kept by key id across snapshot swaps.
#[derive(Debug)]
pub(crate) struct KeyBudget {
    pub(crate) id: GatewayKeyId,
    windows: [WindowSlots; WINDOWS],
    /// Ended cells not yet reported final (or still held by a request in flight).
    retired: Mutex<Vec<Arc<WindowCell>>>,
    /// Unix ms of the last fail-open warning about this key (one a minute at most).
    pub(crate) warned_at: AtomicI64,
}

impl KeyBudget {
    pub(crate) fn new(id: GatewayKeyId, now_unix_ms: i64) -> KeyBudget {
        KeyBudget {
            id,
            windows: Window::ALL.map(|w| WindowSlots {
                current: ArcSwap::from_pointee(WindowCell::new(w, w.start_of(now_unix_ms))),
                next: ArcSwapOption::empty(),
            }),
            retired: Mutex::new(Vec::new()),
            warned_at: AtomicI64::new(i64::MIN),
        }
    }

    pub(crate) fn retired(&self) -> MutexGuard<'_, Vec<Arc<WindowCell>>> {
        self.retired.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current cell of `window`, whatever window start it holds (no rotation).
    pub(crate) fn current(&self, window: Window) -> Guard<Arc<WindowCell>> {
        self.windows[window.index()].current.load()
    }

    /// The cell of `window` starting at `start_ms`, the current window: the current cell, or
    /// a new one (the grant's, when one came ahead) swapped in for an ended one. A start older
    /// than the current cell's (a clock read just before another thread moved on) gets the
    /// current cell.
    #[inline]
    pub(crate) fn cell(&self, window: Window, start_ms: i64) -> Arc<WindowCell> {
        let slots = &self.windows[window.index()];
        loop {
            let current = slots.current.load();
            if current.start_ms >= start_ms {
                return Guard::into_inner(current);
            }
            let ahead = slots.next.load_full().filter(|n| n.start_ms == start_ms);
            let fresh =
                ahead.clone().unwrap_or_else(|| Arc::new(WindowCell::new(window, start_ms)));
            let previous = slots.current.compare_and_swap(&current, Arc::clone(&fresh));
            if Arc::ptr_eq(&previous, &current) {
                if let Some(ahead) = &ahead {
                    slots.next.compare_and_swap(ahead, None::<Arc<WindowCell>>);
                }
                self.retire(Guard::into_inner(current));
                return fresh;
            }
            // Another thread moved on first: take what it installed.
        }
    }

    /// The cell a grant for (`window`, `start_ms`) goes to when the current window starts at
    /// `now_start_ms`: the current cell, a cell ahead (made now if needed), or none for a
    /// window that has ended.
    pub(crate) fn grant_cell(
        &self,
        window: Window,
        start_ms: i64,
        now_start_ms: i64,
    ) -> Option<Arc<WindowCell>> {
        let slots = &self.windows[window.index()];
        let current = slots.current.load();
        if start_ms == current.start_ms {
            return Some(Guard::into_inner(current));
        }
        if start_ms < current.start_ms {
            return None;
        }
        if start_ms <= now_start_ms {
            return Some(self.cell(window, start_ms));
        }
        if let Some(ahead) = slots.next.load_full().filter(|n| n.start_ms == start_ms) {
            return Some(ahead);
        }
        let ahead = Arc::new(WindowCell::new(window, start_ms));
        slots.next.store(Some(Arc::clone(&ahead)));
        Some(ahead)
    }

    /// After a grant went to a cell ahead: if that window became current meanwhile with
    /// another cell (a request moved on before the grant was stored), the grant goes there
    /// too.
    pub(crate) fn catch_up(&self, ahead: &Arc<WindowCell>, apply: impl FnOnce(&WindowCell)) {
        let current = self.windows[ahead.window.index()].current.load();
        if current.start_ms == ahead.start_ms && !Arc::ptr_eq(&current, ahead) {
            apply(&current);
        }
    }

    /// Moves `cell` to the retired list (untouched cells are simply dropped).
    fn retire(&self, cell: Arc<WindowCell>) {
        if cell.is_blank() && Arc::strong_count(&cell) == 1 {
            return;
        }
        let mut retired = self.retired();
        if retired.len() >= MAX_RETIRED_PER_KEY
            && let Some(oldest) =
                retired.iter().position(|c| c.window == Window::Minute && Arc::strong_count(c) == 1)
        {
            let dropped = retired.remove(oldest);
            tracing::warn!(
                key_id = %self.id,
                window_start_unix_ms = dropped.start_ms,
                "unreported minute usage of a key dropped (too many windows unreported; its hour and day totals are kept)"
            );
        }
        retired.push(cell);
    }

    /// Calls `f` with each window's current cell until it returns `false`; whether it never
    /// did.
    pub(crate) fn all_current(&self, mut f: impl FnMut(&Arc<WindowCell>) -> bool) -> bool {
        self.windows.iter().all(|slots| f(&slots.current.load_full()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 1_796_637_600_000;

    fn grant(cell: &WindowCell, m: Measure, value: u64) {
        let mut g = WindowLimits::default();
        g.set(m, Some(value));
        cell.apply_grant(&g, &Usage::default(), &Usage::default(), &WindowLimits::default());
    }

    #[test]
    fn a_reservation_fits_the_grant_or_leaves_nothing_behind() {
        let cell = WindowCell::new(Window::Hour, HOUR);
        grant(&cell, Measure::TotalTokens, 100);
        grant(&cell, Measure::Requests, 10);
        let all = 0b1111;
        let checked = cell.granted_mask(all);
        assert_eq!(checked, bit(0) | bit(3));
        assert_eq!(cell.reserve(&[1, 20, 20, 40], all, checked), Ok(false));
        assert_eq!(cell.reserve(&[1, 30, 40, 70], all, checked), Err(3), "110 > 100");
        assert_eq!(cell.used(0), 1, "the request of the refused reservation went back");
        assert_eq!((cell.used(1), cell.used(3)), (20, 40));
        // Settled: the actual replaces the reservation (more prompt, less completion).
        cell.settle(&[1, 25, 5, 30], &[1, 20, 20, 40]);
        let (charged, reserved) = cell.totals();
        assert_eq!(charged, Usage::request(25, 5));
        assert_eq!(reserved, Usage::default());
        assert_eq!(cell.reserve(&[1, 20, 30, 50], all, checked), Ok(true), "past half: ask");
        assert_eq!(cell.reserve(&[1, 1, 0, 1], all, checked), Ok(false), "asked once");
        let (_, reserved) = cell.totals();
        assert_eq!(
            reserved,
            Usage { requests: 2, prompt_tokens: 21, completion_tokens: 30, total_tokens: 51 }
        );
    }

    #[test]
    fn grants_only_grow_and_the_remaining_is_the_fleets() {
        let cell = WindowCell::new(Window::Minute, HOUR);
        assert_eq!(cell.remaining(3, 1000), 1000, "no grant: only what this instance used");
        let mut g = WindowLimits { total_tokens: Some(400), ..WindowLimits::default() };
        cell.apply_grant(
            &g,
            &Usage::request(300, 300),
            &Usage::request(100, 0),
            &WindowLimits::default(),
        );
        g.total_tokens = Some(300);
        cell.apply_grant(
            &g,
            &Usage::request(300, 300),
            &Usage::request(100, 0),
            &WindowLimits::default(),
        );
        assert_eq!(cell.granted(3), Some(400));
        // limit 1000 - fleet 600 - (own now 0 - own then 100, floored at 0) = 400.
        assert_eq!(cell.remaining(3, 1000), 400);
        cell.reserve(&[1, 150, 0, 150], 0b1000, 0b1000).expect("fits");
        assert_eq!(cell.remaining(3, 1000), 350);
    }

    #[test]
    fn a_new_window_rotates_the_cell_and_the_old_one_is_kept_for_reporting() {
        let budget = KeyBudget::new(GatewayKeyId::new(), HOUR + 5);
        let first = budget.cell(Window::Minute, HOUR);
        first.settle(&[1, 2, 3, 5], &[0; MEASURES]);
        // A grant for the next minute comes ahead of it.
        let ahead = budget.grant_cell(Window::Minute, HOUR + 60_000, HOUR).expect("ahead");
        grant(&ahead, Measure::Requests, 7);
        assert!(budget.grant_cell(Window::Minute, HOUR - 60_000, HOUR).is_none(), "ended");
        let second = budget.cell(Window::Minute, HOUR + 60_000);
        assert!(Arc::ptr_eq(&second, &ahead), "the grant's cell became current");
        assert_eq!(second.granted(0), Some(7));
        assert!(Arc::ptr_eq(&budget.cell(Window::Minute, HOUR), &second), "late clock");
        let retired = budget.retired();
        assert_eq!(retired.len(), 1);
        assert!(Arc::ptr_eq(&retired[0], &first));
    }
}
