//! Quota estimates: how much of an endpoint's quota is left for this data plane now, from the
//! `x-ratelimit-*` readings of its answers, what this data plane sent since, the refill rate,
//! and its share of the fleet's spending (issue #18; ARCHITECTURE.md, "Quota-aware routing").
//!
//! # The model
//! Azure (and OpenAI) meter a deployment with two token buckets, requests and tokens, charged
//! when a request is admitted (tokens: the prompt plus `max_tokens`) and refilled continuously.
//! An answer's `x-ratelimit-remaining-*` is the bucket's level right after its own request was
//! charged, somewhere between its admission here and its answer, usually soon after the
//! admission. The reading is placed at the answer, but no later than [`MAX_READING_DELAY`]
//! after the admission: placed at the admission, every delay before the upstream's charge — a
//! starved process, a busy network — was credited as refill that never happened, and at
//! saturation that became 429s (2–12 per 1,000 on a loaded machine); placed at the answer
//! whatever its latency, a whole round trip of refill went unspent (a 1 s round trip left a
//! region at 89.9 % of its quota). Everything this data plane admitted after the reading's own
//! request is still to be subtracted:
//!
//! `left = share × (min(capacity, remaining + refill × elapsed) − reserve) − sent since`
//!
//! - **Ordering**: every admission takes a sequence number; a reading older than the one in
//!   use (a slow answer to an earlier request) is ignored, so a roomy stale reading can never
//!   undo a newer, tighter one.
//! - **capacity** is `x-ratelimit-limit-*`, else the largest remaining seen; **refill** is
//!   `(capacity − remaining) / x-ratelimit-reset-*` when the answer says when the bucket is
//!   full again, else `capacity / window` (`routing.quota`: 10 s for requests and 60 s for
//!   tokens, Azure's renewal periods).
//! - **sent since** counts every request this data plane admitted after the reading's own,
//!   answered or still in flight: that is what the fixed "low headroom" margin of before got
//!   wrong (22 requests in flight at 1 s latency against a margin of 2.5).
//! - **share** is this data plane's part of the fleet's recent spending on the endpoint
//!   (`FleetQuota` from the control plane; 1 when alone), so N replicas do not each plan
//!   with the whole remaining quota and the whole refill.
//!
//! Selection weights a member by `left` in units of this request (tokens / its estimated
//! cost, requests / 1, the smaller), and admission refuses a member the request would not fit,
//! naming when the refill will make it fit: no fixed hold-off, nothing wasted.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use modelgw_model::protocol::{EndpointSpend, FleetQuota, QuotaReport};
use modelgw_model::quota::MAX_QUOTA_ENTRIES;
use modelgw_model::{EndpointId, QuotaPolicy};

use super::HealthRegistry;
use super::azure_headers::RateLimits;

/// Shortest a refusal for quota holds a member back: the refill estimate of a request that
/// is almost there is not worth a busier loop.
pub(super) const MIN_QUOTA_WAIT: Duration = Duration::from_millis(20);

/// How long after its admission a reading may be placed at most: the upstream charged the
/// request between our admission and its answer, usually right after the admission (the rest
/// of a round trip is the model's work). Placed at the answer, up to this long after the
/// admission, a reading absorbs the delays before the charge (a starved process, a busy
/// network) without leaving a whole round trip of refill unspent.
pub const MAX_READING_DELAY: Duration = Duration::from_millis(250);

/// Wait assumed when the refill rate is not known yet.
const UNKNOWN_REFILL_WAIT: Duration = Duration::from_secs(1);

/// Requests in flight to an endpoint whose quota is not known yet (no answer so far): a cold
/// gateway under load would otherwise send a whole round trip of traffic into a bucket it
/// knows nothing of (measured: a 25-request bucket got 34 at once behind 1 s of latency, 9
/// of them 429s). The first answer tells — its readings, or that it sends none, after which
/// the endpoint is never held back by the estimate.
pub const UNKNOWN_QUOTA_IN_FLIGHT: u32 = 8;

/// The smallest share a data plane plans with: one that has not sent to an endpoint lately
/// still gets some of its quota, and a report claiming a huge rate cannot starve the others.
const MIN_SHARE: f64 = 0.05;

/// How many report intervals a data plane's rates cover (its reports and its own rate): a
/// low-rate endpoint sends a few requests per second, so one interval's count is too coarse
/// (2 or 3 requests: ±20 %) for shares that must add up to one across the fleet.
pub const RATE_INTERVALS: usize = 5;

/// What one request will cost an endpoint's quota, and the gateway's rules for reading it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    /// Estimated tokens (prompt estimate plus the completion cap, as Azure charges them).
    pub tokens: u64,
    /// The gateway's `routing.quota`.
    pub policy: QuotaPolicy,
}

/// Where an admitted request sits on the endpoint's own clock: what this data plane had sent
/// when it was admitted (itself included) and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaMark {
    pub(super) requests: u64,
    pub(super) tokens: u64,
    pub(super) at: Instant,
}

/// Requests and estimated tokens, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Spend {
    pub(super) requests: u64,
    pub(super) tokens: u64,
}

/// One bucket (requests or tokens) as last read.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// The level right after the charge of the reading's request; `None` before any reading.
    remaining: Option<f64>,
    /// When the reading's request was sent.
    at: Option<Instant>,
    /// What this data plane had sent (in this bucket's unit) when that request was admitted,
    /// itself included.
    base: u64,
    capacity: f64,
    /// Per second; 0 until known.
    refill: f64,
}

impl Bucket {
    /// Applies a reading of this bucket. `remaining` and `limit` as sent (negative: no
    /// information); `window` for the refill when `reset` is absent.
    fn read(
        &mut self,
        remaining: Option<i64>,
        limit: Option<i64>,
        reset: Option<Duration>,
        window: u32,
        base: u64,
        at: Instant,
    ) {
        let Some(remaining) = remaining.filter(|r| *r >= 0).map(|r| r as f64) else { return };
        self.capacity = match limit.filter(|l| *l > 0) {
            Some(limit) => (limit as f64).max(remaining),
            None => self.capacity.max(remaining),
        };
        let missing = self.capacity - remaining;
        self.refill = match reset.filter(|r| !r.is_zero()) {
            Some(reset) if missing >= 1.0 => missing / reset.as_secs_f64(),
            // Full (nothing to learn from the reset) but known before: keep it.
            Some(_) if self.refill > 0.0 => self.refill,
            _ => self.capacity / f64::from(window.max(1)),
        };
        self.remaining = Some(remaining);
        self.at = Some(at);
        self.base = base;
    }

    /// What is left of this bucket for this data plane at `now`, after its own spending since
    /// the reading; `None` before any reading.
    fn left(&self, sent: u64, share: f64, reserve: f64, now: Instant) -> Option<f64> {
        let (remaining, at) = (self.remaining?, self.at?);
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        let level = (remaining + self.refill * elapsed).min(self.capacity);
        let since = sent.saturating_sub(self.base) as f64;
        Some(share * (level - reserve * self.capacity) - since)
    }

    /// How long until `left` reaches `need`, at this data plane's share of the refill.
    fn wait_for(&self, left: f64, need: f64, share: f64) -> Duration {
        let rate = self.refill * share;
        if rate <= 0.0 {
            return UNKNOWN_REFILL_WAIT;
        }
        Duration::from_secs_f64(((need - left) / rate).clamp(0.0, 3600.0))
    }

    /// Whether a request needing `need` can ever fit in this data plane's part of the bucket
    /// (a prompt larger than the whole token bucket is left for the upstream to judge).
    fn can_ever_fit(&self, need: f64, share: f64, reserve: f64) -> bool {
        need <= share * self.capacity * (1.0 - reserve)
    }
}

/// What the estimate says about one request now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Room {
    /// How many requests of this size fit now (fractional; below 1: this one does not).
    pub requests: f64,
    /// When `requests < 1`: how long until the refill makes this one fit.
    pub wait: Duration,
}

impl Room {
    pub fn fits(&self) -> bool {
        self.requests >= 1.0
    }
}

/// One endpoint's quota as this data plane knows it (kept in its health entry, under its lock).
#[derive(Debug)]
pub(super) struct Quota {
    requests: Bucket,
    tokens: Bucket,
    /// Everything this data plane admitted to the endpoint: the clock readings are placed on.
    pub(super) sent: Spend,
    /// `sent` at the last [`QuotaReport`](modelgw_model::protocol::QuotaReport).
    pub(super) reported: Spend,
    /// What was sent in each of the last [`RATE_INTERVALS`] report intervals (a ring indexed
    /// like [`QuotaIntervals`]).
    pub(super) recent: [Spend; RATE_INTERVALS],
    /// `sent.requests` at the admission of the request whose answer gave the reading in use.
    reading_seq: u64,
    /// This data plane's share of the endpoint's quota (1 alone).
    pub(super) share: f64,
    /// Requests per minute this data plane sent at its last report.
    pub(super) own_rpm: u64,
    /// Whether the last admission found the endpoint short (one log line per change).
    pub(super) short: bool,
    /// An answer came back without any quota header: nothing to wait for before sending more.
    pub(super) headerless: bool,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            requests: Bucket::default(),
            tokens: Bucket::default(),
            sent: Spend::default(),
            reported: Spend::default(),
            recent: [Spend::default(); RATE_INTERVALS],
            reading_seq: 0,
            share: 1.0,
            own_rpm: 0,
            short: false,
            headerless: false,
        }
    }
}

impl Quota {
    /// Counts one admitted request of `tokens` and places it on the endpoint's clock.
    #[inline]
    pub(super) fn charge(&mut self, tokens: u64, now: Instant) -> QuotaMark {
        self.sent.requests += 1;
        self.sent.tokens = self.sent.tokens.saturating_add(tokens);
        QuotaMark { requests: self.sent.requests, tokens: self.sent.tokens, at: now }
    }

    /// Applies the reading an answer to the request at `mark` carried, received at `answered`,
    /// unless a newer reading is already in use. Returns whether it was applied.
    pub(super) fn read(
        &mut self,
        limits: &RateLimits,
        mark: QuotaMark,
        answered: Instant,
        policy: &QuotaPolicy,
    ) -> bool {
        if mark.requests <= self.reading_seq {
            return false;
        }
        self.reading_seq = mark.requests;
        let at = answered.clamp(mark.at, mark.at + MAX_READING_DELAY);
        self.requests.read(
            limits.remaining_requests,
            limits.limit_requests,
            limits.reset_requests,
            policy.request_window_secs,
            mark.requests,
            at,
        );
        self.tokens.read(
            limits.remaining_tokens,
            limits.limit_tokens,
            limits.reset_tokens,
            policy.token_window_secs,
            mark.tokens,
            at,
        );
        true
    }

    /// Whether a request of `demand` waits for the endpoint's first answer: quota-aware
    /// routing on, nothing read yet, and [`UNKNOWN_QUOTA_IN_FLIGHT`] already in flight.
    pub(super) fn waits_for_a_reading(&self, demand: &Demand, in_flight: u32) -> bool {
        demand.policy.enabled
            && !self.headerless
            && self.requests.remaining.is_none()
            && self.tokens.remaining.is_none()
            && in_flight >= UNKNOWN_QUOTA_IN_FLIGHT
    }

    /// Forgets every reading (an operator reset): the endpoint is planned for as unknown
    /// until its next answer.
    pub(super) fn forget_readings(&mut self) {
        self.requests = Bucket::default();
        self.tokens = Bucket::default();
        self.short = false;
        self.headerless = false;
    }

    /// What the estimate says about a request of `demand` at `now`; `None` when quota-aware
    /// routing is off for the gateway or nothing was read yet.
    pub(super) fn room(&self, demand: &Demand, now: Instant) -> Option<Room> {
        if !demand.policy.enabled {
            return None;
        }
        let reserve = f64::from(demand.policy.reserve_percent) / 100.0;
        let share = self.share;
        // Shared with other data planes, each plans with readings up to a round trip older
        // than the others' sends: one request's worth of slack per data plane absorbs that
        // (measured: 7 upstream 429s per 1,000 at saturation without it, none with it).
        let slack = if share < 1.0 { 1.0 } else { 0.0 };
        let mut room: Option<Room> = None;
        let buckets = [
            (&self.requests, self.sent.requests, 1.0),
            (&self.tokens, self.sent.tokens, demand.tokens as f64),
        ];
        for (bucket, sent, need) in buckets {
            let Some(left) = bucket.left(sent, share, reserve, now) else { continue };
            let left = left - slack * need;
            if need <= 0.0 || !bucket.can_ever_fit(need, share, reserve) {
                continue;
            }
            let requests = left / need;
            let wait = if requests >= 1.0 {
                Duration::ZERO
            } else {
                bucket.wait_for(left, need, share).max(MIN_QUOTA_WAIT)
            };
            room = Some(match room {
                None => Room { requests, wait },
                Some(r) => Room { requests: r.requests.min(requests), wait: r.wait.max(wait) },
            });
        }
        room
    }

    /// Sets this data plane's share from the fleet's spending on the endpoint:
    /// `own / fleet` requests per minute; one that has not sent lately plans with an equal
    /// part among the `data_planes` that did and itself.
    pub(super) fn set_share(&mut self, fleet_rpm: u64, data_planes: u32) {
        self.share = if fleet_rpm == 0 {
            1.0
        } else if self.own_rpm == 0 {
            1.0 / (f64::from(data_planes) + 1.0)
        } else {
            self.own_rpm as f64 / (fleet_rpm.max(self.own_rpm) as f64)
        }
        .clamp(MIN_SHARE, 1.0);
    }
}

/// The lengths of the last [`RATE_INTERVALS`] report intervals: the span a report covers.
#[derive(Debug, Default)]
pub(super) struct QuotaIntervals {
    lengths: [u32; RATE_INTERVALS],
    taken: usize,
}

impl QuotaIntervals {
    /// Records an interval of `ms`; returns its slot and the span of the intervals kept.
    fn push(&mut self, ms: u32) -> (usize, u32) {
        let slot = self.taken % RATE_INTERVALS;
        self.lengths[slot] = ms;
        self.taken += 1;
        let span: u32 = self.lengths.iter().fold(0u32, |sum, l| sum.saturating_add(*l));
        (slot, span.clamp(1, 60_000))
    }
}

impl HealthRegistry {
    /// Reads the quota an answer (2xx or 429) received at `answered` reported for the request
    /// admitted at `mark`.
    pub fn record_quota(
        &self,
        id: EndpointId,
        limits: Option<&RateLimits>,
        mark: QuotaMark,
        answered: Instant,
        policy: &QuotaPolicy,
    ) {
        let entry = self.entry(id);
        let mut state = entry.lock();
        match limits {
            Some(limits) => {
                state.quota.read(limits, mark, answered, policy);
            }
            None => state.quota.headerless = true,
        }
    }

    /// What this data plane sent to each endpoint over the last [`RATE_INTERVALS`] report
    /// intervals, the latest of which ended now after `interval_ms` (the busiest
    /// [`MAX_QUOTA_ENTRIES`] when there are more); also sets each endpoint's own rate over
    /// the same span, which its share is measured against.
    pub fn take_quota_report(&self, interval_ms: u32) -> QuotaReport {
        let (slot, window_ms) = {
            let mut intervals = self.quota_intervals.lock().unwrap_or_else(PoisonError::into_inner);
            intervals.push(interval_ms)
        };
        let mut endpoints = Vec::new();
        for (id, entry) in self.endpoints.load().iter() {
            let mut state = entry.lock();
            let quota = &mut state.quota;
            quota.recent[slot] = Spend {
                requests: quota.sent.requests - quota.reported.requests,
                tokens: quota.sent.tokens.saturating_sub(quota.reported.tokens),
            };
            quota.reported = quota.sent;
            let spend = quota.recent.iter().fold(
                EndpointSpend { endpoint_id: *id, requests: 0, tokens: 0 },
                |sum, s| EndpointSpend {
                    requests: sum.requests + s.requests,
                    tokens: sum.tokens.saturating_add(s.tokens),
                    ..sum
                },
            );
            quota.own_rpm = spend.per_minute(window_ms).0;
            if spend.requests > 0 {
                endpoints.push(spend);
            }
        }
        if endpoints.len() > MAX_QUOTA_ENTRIES {
            endpoints.sort_unstable_by_key(|e| std::cmp::Reverse(e.requests));
            endpoints.truncate(MAX_QUOTA_ENTRIES);
        }
        QuotaReport { interval_ms: window_ms, endpoints, skipped: Vec::new() }
    }

    /// Takes the fleet's spending per endpoint from the control plane: each endpoint's share
    /// for this data plane; endpoints the fleet no longer spends on are this data plane's
    /// alone again. Returns how many endpoints are shared with other data planes.
    pub fn apply_fleet_quota(&self, fleet: &FleetQuota) -> usize {
        let spends: HashMap<EndpointId, (u64, u32)> = fleet
            .endpoints
            .iter()
            .map(|s| (s.endpoint_id, (s.requests_per_min, s.data_planes)))
            .collect();
        let mut shared = 0;
        for (id, entry) in self.endpoints.load().iter() {
            let mut state = entry.lock();
            let (rpm, data_planes) = spends.get(id).copied().unwrap_or((0, 0));
            state.quota.set_share(rpm, data_planes);
            if state.quota.share < 1.0 {
                shared += 1;
            }
        }
        // Endpoints this data plane has not met yet start with their share.
        for (id, (rpm, data_planes)) in spends {
            if rpm > 0 && !self.endpoints.load().contains_key(&id) {
                self.entry(id).lock().quota.set_share(rpm, data_planes);
                shared += 1;
            }
        }
        shared
    }

    /// This data plane's share of `id`'s quota (1 alone).
    pub fn quota_share(&self, id: EndpointId) -> f64 {
        self.endpoints.load().get(&id).map_or(1.0, |entry| entry.lock().quota.share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: i64, tokens: i64) -> RateLimits {
        RateLimits {
            remaining_requests: Some(requests),
            remaining_tokens: Some(tokens),
            limit_requests: Some(50),
            limit_tokens: Some(7_500),
            ..RateLimits::default()
        }
    }

    fn demand(tokens: u64) -> Demand {
        Demand {
            tokens,
            policy: QuotaPolicy {
                request_window_secs: 10,
                token_window_secs: 10,
                ..QuotaPolicy::default()
            },
        }
    }

    #[test]
    fn what_was_sent_after_a_reading_is_subtracted_and_the_refill_added() {
        let t0 = Instant::now();
        let mut quota = Quota::default();
        let d = demand(150);
        assert_eq!(quota.room(&d, t0), None, "nothing read: unknown");
        let first = quota.charge(150, t0);
        // 10 more requests go out before the first answer comes back.
        for _ in 0..10 {
            quota.charge(150, t0);
        }
        assert!(quota.read(&limits(20, 3_000), first, t0, &d.policy));
        let room = quota.room(&d, t0).expect("known");
        // Requests: 20 − 10 in flight = 10; tokens: (3000 − 1500) / 150 = 10.
        assert!((room.requests - 10.0).abs() < 1e-9, "{room:?}");
        // A second later 5 requests (and 750 tokens) refilled: 50 per 10 s.
        let room = quota.room(&d, t0 + Duration::from_secs(1)).expect("known");
        assert!((room.requests - 15.0).abs() < 1e-9, "{room:?}");
        // Never above the capacity.
        let room = quota.room(&d, t0 + Duration::from_secs(60)).expect("known");
        assert!((room.requests - 40.0).abs() < 1e-9, "{room:?}");
    }

    #[test]
    fn the_refill_counts_from_the_answer_up_to_a_bound_after_the_admission() {
        let t0 = Instant::now();
        let d = demand(0);
        // Answered 200 ms later: the level it reports may be as late as that, so that refill
        // (1 request at 5 a second) is not credited on top of it.
        let mut quota = Quota::default();
        let mark = quota.charge(0, t0);
        let answered = t0 + Duration::from_millis(200);
        quota.read(&limits(0, 7_500), mark, answered, &d.policy);
        assert!(!quota.room(&d, answered).expect("known").fits());
        let room = quota.room(&d, answered + Duration::from_millis(400)).expect("known");
        assert!((room.requests - 2.0).abs() < 1e-9, "{room:?}");
        // Answered a second later: the upstream charged it long before (the rest was the
        // model's work); placed 250 ms after the admission, 3.75 requests refilled by then.
        let mut quota = Quota::default();
        let mark = quota.charge(0, t0);
        let answered = t0 + Duration::from_secs(1);
        quota.read(&limits(0, 7_500), mark, answered, &d.policy);
        let room = quota.room(&d, answered).expect("known");
        assert!((room.requests - 3.75).abs() < 1e-9, "{room:?}");
    }

    #[test]
    fn until_its_first_answer_an_endpoint_gets_a_few_requests_at_a_time() {
        let (registry, _rx) = HealthRegistry::new(8);
        let (known, headerless) = (EndpointId::new(), EndpointId::new());
        let now = Instant::now();
        let d = Demand { tokens: 10, ..Demand::default() };
        for id in [known, headerless] {
            let first: Vec<_> = (0..UNKNOWN_QUOTA_IN_FLIGHT)
                .map(|_| registry.admit_for(id, now, &d).expect("within the first few"))
                .collect();
            let refused = registry.admit_for(id, now, &d).expect_err("waits for an answer");
            assert!(refused.awaits_first_answer() && refused.until() > Some(now), "{refused:?}");
            // Off for the gateway: no estimate, nothing held back.
            let off = Demand { policy: QuotaPolicy { enabled: false, ..d.policy }, ..d };
            drop(registry.admit_for(id, now, &off).expect("quota-aware routing off"));
            let answer = if id == known { Some(limits(40, 7_000)) } else { None };
            registry.record_quota(id, answer.as_ref(), first[0].mark(), now, &d.policy);
            // Read (or known to send nothing): the estimate decides from now on.
            let more: Vec<_> = (0..10)
                .map(|_| registry.admit_for(id, now, &d).expect("the first answer came back"))
                .collect();
            drop((first, more));
        }
    }

    #[test]
    fn an_older_reading_never_overrides_a_newer_one() {
        let t0 = Instant::now();
        let mut quota = Quota::default();
        let d = demand(150);
        let early = quota.charge(150, t0);
        let late = quota.charge(150, t0);
        assert!(quota.read(&limits(0, 100), late, t0, &d.policy));
        assert!(!quota.read(&limits(40, 6_000), early, t0, &d.policy), "the slow answer is older");
        assert!(!quota.room(&d, t0).expect("known").fits());
    }

    #[test]
    fn a_request_that_does_not_fit_is_told_when_it_will() {
        let t0 = Instant::now();
        let mut quota = Quota::default();
        let d = demand(150);
        let mark = quota.charge(150, t0);
        quota.read(&limits(0, 7_000), mark, t0, &d.policy);
        let room = quota.room(&d, t0).expect("known");
        assert!(!room.fits());
        // One request refills in 1/5 s.
        assert!((room.wait.as_secs_f64() - 0.2).abs() < 1e-6, "{room:?}");
        assert!(quota.room(&d, t0 + Duration::from_millis(201)).expect("known").fits());
        // Tokens short instead: 100 left, 150 needed, 750 per second.
        let mark = quota.charge(150, t0);
        quota.read(&limits(30, 100), mark, t0, &d.policy);
        let room = quota.room(&d, t0).expect("known");
        assert!(!room.fits());
        assert!((room.wait.as_secs_f64() - 50.0 / 750.0).abs() < 1e-6, "{room:?}");
        // A request larger than the whole token bucket is left to the upstream.
        assert!(quota.room(&demand(10_000), t0).expect("known").fits());
        // Off: no estimate at all.
        let off = Demand { policy: QuotaPolicy { enabled: false, ..d.policy }, ..d };
        assert_eq!(quota.room(&off, t0), None);
    }

    #[test]
    fn the_reset_header_sets_the_refill_rate() {
        let t0 = Instant::now();
        let mut quota = Quota::default();
        let d = demand(0);
        let mark = quota.charge(0, t0);
        let reading =
            RateLimits { reset_requests: Some(Duration::from_secs(2)), ..limits(40, 7_500) };
        quota.read(&reading, mark, t0, &d.policy);
        // 10 missing, full again in 2 s: 5 per second.
        let room = quota.room(&d, t0 + Duration::from_secs(1)).expect("known");
        assert!((room.requests - 45.0).abs() < 1e-9, "{room:?}");
    }

    #[test]
    fn the_share_and_the_reserve_shrink_what_is_planned_with() {
        let t0 = Instant::now();
        let mut quota = Quota::default();
        let mut d = demand(0);
        let mark = quota.charge(0, t0);
        quota.read(&limits(40, 7_500), mark, t0, &d.policy);
        quota.own_rpm = 300;
        quota.set_share(600, 2);
        // Half of 40, less one request of slack while shared.
        assert!((quota.room(&d, t0).expect("known").requests - 19.0).abs() < 1e-9);
        d.policy.reserve_percent = 20;
        // Half of (40 − 20 % of 50), less the slack.
        assert!((quota.room(&d, t0).expect("known").requests - 14.0).abs() < 1e-9);
        quota.own_rpm = 0;
        quota.set_share(600, 3);
        assert!((quota.share - 0.25).abs() < 1e-9, "an idle data plane takes an equal part");
        quota.set_share(0, 0);
        assert_eq!(quota.share, 1.0);
        quota.own_rpm = 1;
        quota.set_share(1_000_000, 9);
        assert_eq!(quota.share, MIN_SHARE);
    }

    #[test]
    fn reports_carry_what_was_sent_since_the_last_and_the_fleet_sets_the_share() {
        use modelgw_model::protocol::FleetSpend;
        let (registry, _rx) = HealthRegistry::new(8);
        let (a, b, idle) = (EndpointId::new(), EndpointId::new(), EndpointId::new());
        let now = Instant::now();
        let demand = Demand { tokens: 150, ..Demand::default() };
        for _ in 0..5 {
            drop(registry.admit_for(a, now, &demand).expect("admitted"));
        }
        drop(registry.admit_pinned(b, 40, now));
        drop(registry.admit_for(idle, now, &demand).expect("admitted"));
        let _ = registry.take_quota_report(1000);
        drop(registry.admit_for(a, now, &demand).expect("admitted"));
        drop(registry.admit_for(a, now, &demand).expect("admitted"));
        drop(registry.admit_pinned(b, 40, now));
        let mut report = registry.take_quota_report(500);
        report.endpoints.sort_by_key(|e| e.requests);
        assert_eq!(report.interval_ms, 1500, "the span of the intervals kept");
        assert_eq!(
            report.endpoints,
            vec![
                EndpointSpend { endpoint_id: idle, requests: 1, tokens: 150 },
                EndpointSpend { endpoint_id: b, requests: 2, tokens: 80 },
                EndpointSpend { endpoint_id: a, requests: 7, tokens: 1050 },
            ],
            "what was sent over the intervals kept"
        );
        // Own rates over 1.5 s: a 280/min, b 80/min, idle 40/min. The fleet sends a 1120/min
        // (4 data planes), b only what this one sends, idle 1600/min.
        let spend = |endpoint_id, requests_per_min, data_planes| FleetSpend {
            endpoint_id,
            requests_per_min,
            tokens_per_min: 0,
            data_planes,
        };
        let fleet = FleetQuota {
            endpoints: vec![spend(a, 1120, 4), spend(b, 80, 1), spend(idle, 1600, 2)],
            skipped: Vec::new(),
        };
        assert_eq!(registry.apply_fleet_quota(&fleet), 2);
        assert!((registry.quota_share(a) - 0.25).abs() < 1e-9);
        assert_eq!(registry.quota_share(b), 1.0);
        assert!((registry.quota_share(idle) - 0.05).abs() < 1e-9, "the floor");
        // Spends older than the intervals kept leave the rates.
        for _ in 0..RATE_INTERVALS {
            let _ = registry.take_quota_report(1000);
        }
        assert!(registry.take_quota_report(1000).endpoints.is_empty());
        assert_eq!(registry.apply_fleet_quota(&FleetQuota::default()), 0);
        assert_eq!(registry.quota_share(a), 1.0, "alone again when the fleet spends nothing");
    }
}
