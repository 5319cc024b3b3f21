//! Traffic statistics for the Admin Console: a rolling window of what every connected data
//! plane reported (`StatsReport` deltas on its stream, every `MODELGW_STATS_INTERVAL`), at
//! one-minute resolution for the last 24 hours, per (gateway, endpoint) pair and per gateway.
//!
//! - **Aggregation is by adding.** A report carries counts since the data plane's previous
//!   one, so reports from several data planes, and several reports within a minute, add into
//!   that minute's slot. Latency and time-to-first-token buckets add bucket by bucket (every
//!   data plane uses `modelgw_model::stats::LATENCY_BUCKETS_MS`), so quantiles over any window
//!   and any set of data planes come from merged buckets, never from averaged quantiles.
//! - **Time is the control plane's.** A report counts in the minute it was received (data
//!   planes send no timestamps, so their clocks do not matter); a data plane that was
//!   disconnected reports the traffic of that time in the minute it reconnects.
//! - **Only the current configuration.** Entries naming a pair or gateway the current snapshot
//!   does not hold are dropped on arrival, and the series of pairs and gateways that leave the
//!   configuration are dropped when the next snapshot publishes.
//! - **Bounded memory.** Each series is a ring of at most [`WINDOW_MINUTES`] minute slots
//!   (a `VecDeque` ordered by minute; a minute without traffic takes no slot; slots older than
//!   24 h are dropped). A pair's slot is [`ROUTE_SLOT_BYTES`] (148) bytes: at most
//!   1,440 × 148 B ≈ 208 KiB per pair, reached only by a pair with traffic in every minute of
//!   the day; a gateway's slot is [`GATEWAY_SLOT_BYTES`] (12) bytes, ≈ 17 KiB per gateway.
//!   The bound is therefore ≈ 208 KiB × pairs + 17 KiB × gateways of the current snapshot
//!   (e.g. 500 pairs busy around the clock: ≈ 100 MiB; the same pairs busy one hour a day:
//!   ≈ 4 MiB). Counts within one minute of one pair are `u32` and saturate (4 billion
//!   requests or tokens per minute per pair is far beyond any Azure quota).
//! - **Per process.** The window lives in this control plane's memory and holds the data
//!   planes connected to it; with several replicas each keeps its own, and a restart starts
//!   empty (see ARCHITECTURE.md).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use modelgw_model::stats::{Buckets, GatewayStats, LATENCY_BUCKETS_MS, RouteStats, StatsReport};
use modelgw_model::{EndpointId, GatewayId, Snapshot};

/// Minutes the window keeps: 24 hours at one-minute resolution.
pub const WINDOW_MINUTES: u32 = 24 * 60;

/// Buckets per latency histogram (the bounds, then the open top bucket).
const BUCKETS: usize = LATENCY_BUCKETS_MS.len() + 1;

/// Bytes of one pair's minute slot (asserted by a test).
pub const ROUTE_SLOT_BYTES: usize = std::mem::size_of::<RouteSlot>();

/// Bytes of one gateway's minute slot (asserted by a test).
pub const GATEWAY_SLOT_BYTES: usize = std::mem::size_of::<GatewaySlot>();

/// Where the window reads the time; tests inject their own.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Minutes since the Unix epoch (`u32` lasts until the year 10136).
fn minute_of(t: SystemTime) -> u32 {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    u32::try_from(secs / 60).unwrap_or(u32::MAX)
}

fn start_of(minute: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(minute) * 60)
}

fn sat32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// One minute of one (gateway, endpoint) pair, summed over data planes.
#[derive(Clone, Copy, Debug, Default)]
struct RouteSlot {
    minute: u32,
    requests: u32,
    errors: u32,
    throttled: u32,
    failed_attempts: u32,
    prompt_tokens: u32,
    completion_tokens: u32,
    latency: [u32; BUCKETS],
    ttft: [u32; BUCKETS],
}

/// One minute of what one gateway answered itself.
#[derive(Clone, Copy, Debug, Default)]
struct GatewaySlot {
    minute: u32,
    throttled: u32,
    unavailable: u32,
}

trait Slot: Default {
    fn minute(&self) -> u32;
    fn at(minute: u32) -> Self;
}

impl Slot for RouteSlot {
    fn minute(&self) -> u32 {
        self.minute
    }
    fn at(minute: u32) -> Self {
        RouteSlot { minute, ..Default::default() }
    }
}

impl Slot for GatewaySlot {
    fn minute(&self) -> u32 {
        self.minute
    }
    fn at(minute: u32) -> Self {
        GatewaySlot { minute, ..Default::default() }
    }
}

fn add_buckets(slot: &mut [u32; BUCKETS], buckets: &Buckets) {
    for (mine, theirs) in slot.iter_mut().zip(&buckets.counts) {
        *mine = mine.saturating_add(sat32(*theirs));
    }
}

impl RouteSlot {
    fn add(&mut self, r: &RouteStats) {
        self.requests = self.requests.saturating_add(sat32(r.requests));
        self.errors = self.errors.saturating_add(sat32(r.errors));
        self.throttled = self.throttled.saturating_add(sat32(r.throttled));
        self.failed_attempts = self.failed_attempts.saturating_add(sat32(r.failed_attempts));
        self.prompt_tokens = self.prompt_tokens.saturating_add(sat32(r.prompt_tokens));
        self.completion_tokens = self.completion_tokens.saturating_add(sat32(r.completion_tokens));
        add_buckets(&mut self.latency, &r.latency);
        add_buckets(&mut self.ttft, &r.ttft);
    }

    fn counts(&self) -> Counts {
        Counts {
            requests: u64::from(self.requests),
            errors: u64::from(self.errors),
            throttled: u64::from(self.throttled),
            failed_attempts: u64::from(self.failed_attempts),
            prompt_tokens: u64::from(self.prompt_tokens),
            completion_tokens: u64::from(self.completion_tokens),
        }
    }
}

/// A ring of minute slots, oldest first, strictly increasing minutes, at most
/// [`WINDOW_MINUTES`] of them.
#[derive(Debug, Default)]
struct Series<S> {
    slots: VecDeque<S>,
}

impl<S: Slot> Series<S> {
    /// The slot of `minute` (the newest slot when the clock went back: a report is never
    /// lost, only counted a minute late).
    fn slot(&mut self, minute: u32) -> &mut S {
        let newest = self.slots.back().map(Slot::minute);
        if newest.is_none_or(|newest| newest < minute) {
            self.slots.push_back(S::at(minute));
            while self.slots.len() > WINDOW_MINUTES as usize {
                self.slots.pop_front();
            }
        }
        let last = self.slots.len() - 1;
        &mut self.slots[last]
    }

    /// Drops the slots before `first` (the oldest minute still in the window).
    fn expire(&mut self, first: u32) {
        while self.slots.front().is_some_and(|s| s.minute() < first) {
            self.slots.pop_front();
        }
    }

    /// The slots of minutes `first..`, oldest first.
    fn since(&self, first: u32) -> impl Iterator<Item = &S> {
        let start = self.slots.partition_point(|s| s.minute() < first);
        self.slots.range(start..)
    }
}

/// Counts over a window (or one minute of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Answers clients got: for a pair, the answers its endpoint gave; for a gateway, also
    /// the answers the gateway gave itself (429 when every member was throttling, 503/504).
    pub requests: u64,
    /// 5xx answers passed on and streams cut after they started; for a gateway, also its own
    /// 503/504 answers.
    pub errors: u64,
    /// Attempts an endpoint answered 429; for a gateway, also its own 429 answers.
    pub throttled: u64,
    /// Attempts that failed over for another reason (5xx, transport, timeout).
    pub failed_attempts: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests = self.requests.saturating_add(o.requests);
        self.errors = self.errors.saturating_add(o.errors);
        self.throttled = self.throttled.saturating_add(o.throttled);
        self.failed_attempts = self.failed_attempts.saturating_add(o.failed_attempts);
        self.prompt_tokens = self.prompt_tokens.saturating_add(o.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(o.completion_tokens);
    }
}

/// The counts of one minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinuteCounts {
    /// The minute's start.
    pub at: SystemTime,
    pub counts: Counts,
}

/// A gateway over a window: its pairs' counts plus what it answered itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayTraffic {
    pub gateway_id: GatewayId,
    pub totals: Counts,
    /// Of `totals`: the gateway's own 429 answers (every member throttling).
    pub own_throttled: u64,
    /// Of `totals`: the gateway's own 503/504 answers (no member could serve, deadline).
    pub own_unavailable: u64,
    /// Minutes with traffic, oldest first.
    pub minutes: Vec<MinuteCounts>,
}

/// An endpoint over a window, for one gateway or summed over all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointTraffic {
    pub endpoint_id: EndpointId,
    pub totals: Counts,
    /// Minutes with traffic, oldest first.
    pub minutes: Vec<MinuteCounts>,
    /// End-to-end latency of its answers (empty when none).
    pub latency: Buckets,
    /// Streams' time to first token (empty when none).
    pub ttft: Buckets,
}

/// What the current snapshot holds: reports about anything else are dropped.
#[derive(Debug, Default)]
struct Configured {
    routes: HashSet<(GatewayId, EndpointId)>,
    gateways: HashSet<GatewayId>,
}

#[derive(Debug, Default)]
struct Inner {
    routes: HashMap<(GatewayId, EndpointId), Series<RouteSlot>>,
    gateways: HashMap<GatewayId, Series<GatewaySlot>>,
    /// `None` until the first snapshot is known (then everything is kept).
    configured: Option<Configured>,
    /// The minute of the last sweep of expired slots.
    swept: u32,
}

/// The rolling window. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct StatsWindow {
    inner: Arc<Mutex<Inner>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for StatsWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("StatsWindow")
            .field("routes", &inner.routes.len())
            .field("gateways", &inner.gateways.len())
            .finish_non_exhaustive()
    }
}

impl Default for StatsWindow {
    fn default() -> Self {
        StatsWindow::with_clock(Arc::new(SystemClock))
    }
}

/// What [`StatsWindow::record`] kept of a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub routes: usize,
    pub gateways: usize,
    /// Entries about pairs or gateways the current snapshot does not hold.
    pub unconfigured: usize,
}

impl StatsWindow {
    pub fn with_clock(clock: Arc<dyn Clock>) -> StatsWindow {
        StatsWindow { inner: Arc::default(), clock }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps only the pairs and gateways of `snapshot` (called when it publishes): their
    /// series stay, the others' are dropped, and later reports about others are ignored.
    pub fn configure(&self, snapshot: &Snapshot) {
        let mut configured = Configured::default();
        for g in &snapshot.gateways {
            configured.gateways.insert(g.id);
            for m in &g.members {
                configured.routes.insert((g.id, m.endpoint_id));
            }
        }
        let mut inner = self.lock();
        let (routes, gateways) = (inner.routes.len(), inner.gateways.len());
        inner.routes.retain(|key, _| configured.routes.contains(key));
        inner.gateways.retain(|id, _| configured.gateways.contains(id));
        let dropped = routes - inner.routes.len() + gateways - inner.gateways.len();
        if dropped > 0 {
            tracing::info!(
                dropped,
                config_version = snapshot.version.0,
                "traffic statistics of removed gateways and members dropped"
            );
        }
        inner.configured = Some(configured);
    }

    /// Adds one data plane's report to the current minute.
    pub fn record(&self, report: &StatsReport) -> Recorded {
        let minute = minute_of(self.clock.now());
        let mut inner = self.lock();
        inner.sweep(minute);
        let Inner { routes, gateways, configured, .. } = &mut *inner;
        let mut recorded = Recorded::default();
        for r in &report.routes {
            let key = (r.gateway_id, r.endpoint_id);
            if configured.as_ref().is_some_and(|c| !c.routes.contains(&key)) {
                recorded.unconfigured += 1;
                continue;
            }
            routes.entry(key).or_default().slot(minute).add(r);
            recorded.routes += 1;
        }
        for g in &report.gateways {
            let GatewayStats { gateway_id, throttled, unavailable } = *g;
            if configured.as_ref().is_some_and(|c| !c.gateways.contains(&gateway_id)) {
                recorded.unconfigured += 1;
                continue;
            }
            let slot = gateways.entry(gateway_id).or_default().slot(minute);
            slot.throttled = slot.throttled.saturating_add(sat32(throttled));
            slot.unavailable = slot.unavailable.saturating_add(sat32(unavailable));
            recorded.gateways += 1;
        }
        recorded
    }

    /// The first minute of a window of `minutes` (1..=[`WINDOW_MINUTES`]) ending now.
    fn first_minute(&self, minutes: u32) -> u32 {
        let now = minute_of(self.clock.now());
        now.saturating_sub(minutes.clamp(1, WINDOW_MINUTES) - 1)
    }

    /// Every gateway with traffic in the last `minutes` minutes (the current one included),
    /// sorted by id.
    pub fn gateways(&self, minutes: u32) -> Vec<GatewayTraffic> {
        let first = self.first_minute(minutes);
        let inner = self.lock();
        let mut by_gateway: HashMap<GatewayId, (Counts, u64, u64, HashMap<u32, Counts>)> =
            HashMap::new();
        for ((gateway_id, _), series) in &inner.routes {
            let (totals, _, _, per_minute) = by_gateway.entry(*gateway_id).or_default();
            for slot in series.since(first) {
                let counts = slot.counts();
                totals.add(&counts);
                per_minute.entry(slot.minute).or_default().add(&counts);
            }
        }
        for (gateway_id, series) in &inner.gateways {
            let (totals, own_throttled, own_unavailable, per_minute) =
                by_gateway.entry(*gateway_id).or_default();
            for slot in series.since(first) {
                let own = Counts {
                    requests: u64::from(slot.throttled) + u64::from(slot.unavailable),
                    errors: u64::from(slot.unavailable),
                    throttled: u64::from(slot.throttled),
                    ..Counts::default()
                };
                totals.add(&own);
                *own_throttled += u64::from(slot.throttled);
                *own_unavailable += u64::from(slot.unavailable);
                per_minute.entry(slot.minute).or_default().add(&own);
            }
        }
        let mut out: Vec<GatewayTraffic> = by_gateway
            .into_iter()
            .filter(|(_, (_, _, _, per_minute))| !per_minute.is_empty())
            .map(|(gateway_id, (totals, own_throttled, own_unavailable, per_minute))| {
                GatewayTraffic {
                    gateway_id,
                    totals,
                    own_throttled,
                    own_unavailable,
                    minutes: sorted_minutes(per_minute),
                }
            })
            .collect();
        out.sort_by_key(|g| g.gateway_id);
        out
    }

    /// Every endpoint with traffic in the last `minutes` minutes, through `gateway` or
    /// summed over every gateway, sorted by id.
    pub fn endpoints(&self, minutes: u32, gateway: Option<GatewayId>) -> Vec<EndpointTraffic> {
        let first = self.first_minute(minutes);
        let inner = self.lock();
        let mut by_endpoint: HashMap<EndpointId, (Counts, HashMap<u32, Counts>, RouteSlot)> =
            HashMap::new();
        for ((gateway_id, endpoint_id), series) in &inner.routes {
            if gateway.is_some_and(|g| g != *gateway_id) {
                continue;
            }
            let (totals, per_minute, buckets) = by_endpoint.entry(*endpoint_id).or_default();
            for slot in series.since(first) {
                let counts = slot.counts();
                totals.add(&counts);
                per_minute.entry(slot.minute).or_default().add(&counts);
                for (mine, theirs) in buckets.latency.iter_mut().zip(&slot.latency) {
                    *mine = mine.saturating_add(*theirs);
                }
                for (mine, theirs) in buckets.ttft.iter_mut().zip(&slot.ttft) {
                    *mine = mine.saturating_add(*theirs);
                }
            }
        }
        let buckets = |counts: &[u32; BUCKETS]| {
            if counts.iter().all(|c| *c == 0) {
                Buckets::default()
            } else {
                Buckets { counts: counts.iter().map(|c| u64::from(*c)).collect() }
            }
        };
        let mut out: Vec<EndpointTraffic> = by_endpoint
            .into_iter()
            .filter(|(_, (_, per_minute, _))| !per_minute.is_empty())
            .map(|(endpoint_id, (totals, per_minute, slot))| EndpointTraffic {
                endpoint_id,
                totals,
                minutes: sorted_minutes(per_minute),
                latency: buckets(&slot.latency),
                ttft: buckets(&slot.ttft),
            })
            .collect();
        out.sort_by_key(|e| e.endpoint_id);
        out
    }

    /// Slots held, pairs and gateways (for tests and the bound's check).
    #[cfg(test)]
    fn held(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        let slots = inner.routes.values().map(|s| s.slots.len()).sum::<usize>()
            + inner.gateways.values().map(|s| s.slots.len()).sum::<usize>();
        (slots, inner.routes.len(), inner.gateways.len())
    }
}

impl Inner {
    /// Drops slots older than the window, and series left empty (at most once a minute).
    fn sweep(&mut self, now: u32) {
        if self.swept == now {
            return;
        }
        self.swept = now;
        let first = now.saturating_sub(WINDOW_MINUTES - 1);
        for series in self.routes.values_mut() {
            series.expire(first);
        }
        for series in self.gateways.values_mut() {
            series.expire(first);
        }
        self.routes.retain(|_, s| !s.slots.is_empty());
        self.gateways.retain(|_, s| !s.slots.is_empty());
    }
}

fn sorted_minutes(per_minute: HashMap<u32, Counts>) -> Vec<MinuteCounts> {
    let mut minutes: Vec<MinuteCounts> = per_minute
        .into_iter()
        .map(|(minute, counts)| MinuteCounts { at: start_of(minute), counts })
        .collect();
    minutes.sort_by_key(|m| m.at);
    minutes
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use modelgw_model::{ConfigVersion, GatewayMember, RoutingPolicy};

    use super::*;

    /// A clock tests move by hand (seconds since the epoch).
    struct ManualClock(AtomicU64);

    impl ManualClock {
        fn at_minute(minute: u64) -> Arc<ManualClock> {
            Arc::new(ManualClock(AtomicU64::new(minute * 60 + 5)))
        }
        fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_secs(), Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
        }
    }

    const T0: u64 = 29_000_000; // a minute in 2025

    fn buckets(at: usize, n: u64) -> Buckets {
        let mut b = Buckets { counts: vec![0; BUCKETS] };
        b.counts[at] = n;
        b
    }

    fn route(g: GatewayId, e: EndpointId, requests: u64) -> RouteStats {
        RouteStats {
            gateway_id: g,
            endpoint_id: e,
            requests,
            errors: 1,
            throttled: 2,
            prompt_tokens: requests.saturating_mul(10),
            completion_tokens: requests.saturating_mul(5),
            latency: buckets(Buckets::index(120), requests),
            ..Default::default()
        }
    }

    fn report(routes: Vec<RouteStats>, gateways: Vec<GatewayStats>) -> StatsReport {
        StatsReport { routes, gateways, skipped: vec![] }
    }

    fn snapshot(version: u64, gateways: &[(GatewayId, &[EndpointId])]) -> Snapshot {
        Snapshot {
            version: ConfigVersion(version),
            endpoints: vec![],
            gateways: gateways
                .iter()
                .map(|(id, members)| modelgw_model::Gateway {
                    id: *id,
                    name: format!("g-{id}"),
                    members: members
                        .iter()
                        .map(|e| GatewayMember {
                            endpoint_id: *e,
                            enabled: true,
                            priority: 0,
                            weight: 1,
                        })
                        .collect(),
                    routing: RoutingPolicy::default(),
                    keys: vec![],
                    key_limits: Default::default(),
                    traces: Default::default(),
                    pin_key: modelgw_model::PinKey::new([0; 32]),
                })
                .collect(),
        }
    }

    #[test]
    fn reports_of_two_data_planes_in_one_minute_add_up() {
        let clock = ManualClock::at_minute(T0);
        let window = StatsWindow::with_clock(clock.clone());
        let (g, e) = (GatewayId::new(), EndpointId::new());
        window.configure(&snapshot(1, &[(g, &[e])]));
        // dp-1 and dp-2 report in the same minute.
        window.record(&report(vec![route(g, e, 3)], vec![]));
        clock.advance(Duration::from_secs(20));
        let mut second = route(g, e, 4);
        second.ttft = buckets(Buckets::index(300), 4);
        window.record(&report(
            vec![second],
            vec![GatewayStats { gateway_id: g, throttled: 1, unavailable: 2 }],
        ));

        let endpoints = window.endpoints(60, None);
        assert_eq!(endpoints.len(), 1);
        let ep = &endpoints[0];
        assert_eq!(ep.totals.requests, 7);
        assert_eq!((ep.totals.errors, ep.totals.throttled), (2, 4));
        assert_eq!((ep.totals.prompt_tokens, ep.totals.completion_tokens), (70, 35));
        assert_eq!(ep.latency.total(), 7, "buckets add up across data planes");
        assert_eq!(ep.ttft.total(), 4);
        assert_eq!(ep.minutes.len(), 1);
        assert_eq!(ep.minutes[0].at, start_of(T0 as u32));

        let gateways = window.gateways(60);
        assert_eq!(gateways.len(), 1);
        let gw = &gateways[0];
        assert_eq!((gw.own_throttled, gw.own_unavailable), (1, 2));
        assert_eq!(gw.totals.requests, 7 + 1 + 2, "its own answers are requests too");
        assert_eq!(gw.totals.throttled, 4 + 1, "the gateway's own 429 is a throttle");
        assert_eq!(gw.totals.errors, 2 + 2, "its own 503/504 are errors");
        assert_eq!(gw.minutes.len(), 1);
        assert_eq!(gw.minutes[0].counts, gw.totals);
    }

    #[test]
    fn a_new_minute_opens_a_new_slot_and_the_window_counts_only_its_minutes() {
        let clock = ManualClock::at_minute(T0);
        let window = StatsWindow::with_clock(clock.clone());
        let (g, e) = (GatewayId::new(), EndpointId::new());
        window.record(&report(vec![route(g, e, 1)], vec![]));
        clock.advance(Duration::from_secs(60));
        window.record(&report(vec![route(g, e, 2)], vec![]));
        clock.advance(Duration::from_secs(120));
        window.record(&report(vec![route(g, e, 4)], vec![]));

        let series: Vec<(SystemTime, u64)> =
            window.gateways(60)[0].minutes.iter().map(|m| (m.at, m.counts.requests)).collect();
        let t = |m: u64| start_of((T0 + m) as u32);
        assert_eq!(series, [(t(0), 1), (t(1), 2), (t(3), 4)], "idle minutes are left out");
        assert_eq!(window.gateways(1)[0].totals.requests, 4, "the current minute only");
        assert_eq!(window.gateways(3)[0].totals.requests, 6, "minutes T0+1..=T0+3");
        assert_eq!(window.endpoints(4, None)[0].totals.requests, 7);
        assert_eq!(window.held().0, 3, "one slot per minute with traffic");
    }

    #[test]
    fn slots_expire_after_24_hours() {
        let clock = ManualClock::at_minute(T0);
        let window = StatsWindow::with_clock(clock.clone());
        let (g, e) = (GatewayId::new(), EndpointId::new());
        window.record(&report(
            vec![route(g, e, 5)],
            vec![GatewayStats { gateway_id: g, throttled: 1, unavailable: 0 }],
        ));
        clock.advance(Duration::from_secs(u64::from(WINDOW_MINUTES - 1) * 60));
        assert_eq!(window.gateways(WINDOW_MINUTES)[0].totals.requests, 6, "still in the window");
        clock.advance(Duration::from_secs(60));
        assert!(window.gateways(WINDOW_MINUTES).is_empty(), "24 h later it is out");
        assert!(window.endpoints(WINDOW_MINUTES, None).is_empty());
        // The next report sweeps the expired slots and the series left empty.
        let other = EndpointId::new();
        window.record(&report(vec![route(g, other, 1)], vec![]));
        assert_eq!(window.held(), (1, 1, 0));
    }

    #[test]
    fn memory_is_bounded_by_one_slot_per_minute_per_series() {
        assert_eq!(ROUTE_SLOT_BYTES, 148, "the bound the module docs state");
        assert_eq!(GATEWAY_SLOT_BYTES, 12);
        let clock = ManualClock::at_minute(T0);
        let window = StatsWindow::with_clock(clock.clone());
        let (g, e) = (GatewayId::new(), EndpointId::new());
        // Two days of a report every 30 s, plus a clock that jumps back an hour.
        for i in 0..(2 * WINDOW_MINUTES * 2) {
            if i == WINDOW_MINUTES * 3 {
                clock.0.fetch_sub(3600, Ordering::SeqCst);
            }
            window.record(&report(
                vec![route(g, e, 1)],
                vec![GatewayStats { gateway_id: g, throttled: 1, unavailable: 0 }],
            ));
            clock.advance(Duration::from_secs(30));
        }
        let (slots, routes, gateways) = window.held();
        assert_eq!((routes, gateways), (1, 1));
        assert!(slots <= 2 * WINDOW_MINUTES as usize, "{slots} slots");
        let inner = window.lock();
        let series = &inner.routes[&(g, e)].slots;
        assert!(series.iter().zip(series.iter().skip(1)).all(|(a, b)| a.minute < b.minute));
    }

    #[test]
    fn removed_members_and_gateways_are_dropped_and_no_longer_recorded() {
        let clock = ManualClock::at_minute(T0);
        let window = StatsWindow::with_clock(clock);
        let (g1, g2) = (GatewayId::new(), GatewayId::new());
        let (e1, e2) = (EndpointId::new(), EndpointId::new());
        window.configure(&snapshot(1, &[(g1, &[e1, e2]), (g2, &[e1])]));
        let recorded = window.record(&report(
            vec![route(g1, e1, 1), route(g1, e2, 2), route(g2, e1, 4)],
            vec![GatewayStats { gateway_id: g2, throttled: 1, unavailable: 0 }],
        ));
        assert_eq!(recorded, Recorded { routes: 3, gateways: 1, unconfigured: 0 });
        assert_eq!(window.endpoints(60, None).len(), 2);
        assert_eq!(window.endpoints(60, Some(g2))[0].totals.requests, 4, "one gateway's share");
        assert_eq!(
            window
                .endpoints(60, None)
                .iter()
                .find(|e| e.endpoint_id == e1)
                .map(|e| e.totals.requests),
            Some(5),
            "summed over gateways"
        );

        // e2 leaves g1, g2 is deleted.
        window.configure(&snapshot(2, &[(g1, &[e1])]));
        let ids: Vec<GatewayId> = window.gateways(60).iter().map(|g| g.gateway_id).collect();
        assert_eq!(ids, [g1]);
        let endpoints = window.endpoints(60, None);
        assert_eq!(endpoints.len(), 1);
        assert_eq!((endpoints[0].endpoint_id, endpoints[0].totals.requests), (e1, 1));
        // A late report about them is not recorded.
        let recorded = window.record(&report(
            vec![route(g1, e2, 1), route(g2, e1, 1)],
            vec![GatewayStats { gateway_id: g2, throttled: 1, unavailable: 0 }],
        ));
        assert_eq!(recorded, Recorded { routes: 0, gateways: 0, unconfigured: 3 });
        assert_eq!(window.held(), (1, 1, 0));
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let window = StatsWindow::with_clock(ManualClock::at_minute(T0));
        let (g, e) = (GatewayId::new(), EndpointId::new());
        let mut huge = route(g, e, u64::MAX);
        huge.latency = buckets(0, u64::MAX);
        window.record(&report(vec![huge.clone()], vec![]));
        window.record(&report(vec![huge], vec![]));
        let ep = &window.endpoints(60, None)[0];
        assert_eq!(ep.totals.requests, u64::from(u32::MAX));
        assert_eq!(ep.latency.counts[0], u64::from(u32::MAX));
    }
}
