//! The data plane's own accounting: what the request path counts, how it is exposed to
//! Prometheus (`GET /metrics` on its own listener, see `server.rs`), and the statistics
//! reported to the control plane for the Admin Console.
//!
//! Cost on the request path: the counters of a (gateway, endpoint) pair are attached to the
//! routing table when a snapshot is swapped in ([`Metrics::attach`]), so a request reaches
//! them through the member it was routed to — no lookup, no lock, no label formatting, no
//! allocation — and records with relaxed atomic adds. Label values are written only at scrape
//! time. Counters survive snapshot swaps (they are kept by id in the catalog) and disappear
//! with the gateway or endpoint they count. With metrics off (`MODELGW_METRICS_ADDR=off`)
//! nothing is attached and the request path records nothing.

mod histogram;
mod scrape;
pub mod server;
pub(crate) mod usage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use modelgw_model::stats::{Buckets, GatewayStats, LATENCY_BUCKETS_MS, RouteStats, StatsReport};
use modelgw_model::{EndpointId, GatewayId};

pub(crate) use histogram::{Bounds, Histogram, Merged};
pub use scrape::Scrape;

use crate::health::RateLimits;
use crate::routing_table::RoutingTable;

/// Latency (end to end, time to first token, time to first byte) in milliseconds: the shared
/// bounds of [`LATENCY_BUCKETS_MS`], exposed in seconds.
pub(crate) static LATENCY_MS: Bounds = Bounds { upper: &LATENCY_MS_U64, scale: 0.001 };
const LATENCY_MS_U64: [u64; LATENCY_BUCKETS_MS.len()] = {
    let mut out = [0u64; LATENCY_BUCKETS_MS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = LATENCY_BUCKETS_MS[i] as u64;
        i += 1;
    }
    out
};

/// Time per output token in microseconds (the GenAI semantic conventions' advised buckets,
/// 10 ms to 2.5 s), exposed in seconds.
pub(crate) static TOKEN_TIME_US: Bounds = Bounds {
    upper: &[
        10_000, 25_000, 50_000, 75_000, 100_000, 150_000, 200_000, 300_000, 400_000, 500_000,
        750_000, 1_000_000, 2_500_000,
    ],
    scale: 0.000_001,
};

/// Tokens per request (the GenAI semantic conventions' advised buckets: powers of 4).
pub(crate) static TOKENS: Bounds = Bounds {
    upper: &[
        1, 4, 16, 64, 256, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216,
        67_108_864,
    ],
    scale: 1.0,
};

/// The gateway's own time per request in microseconds, 50 µs to 250 ms, exposed in seconds.
pub(crate) static OVERHEAD_US: Bounds = Bounds {
    upper: &[50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000],
    scale: 0.000_001,
};

/// Operation labels, indexed like `proxy::operations::Operation` (`Operation::index`): one
/// per operation the gateway serves (public so that tests can check they cover every one).
pub const OPERATIONS: [&str; 14] = [
    "chat_completions",
    "completions",
    "embeddings",
    "responses",
    "image_generations",
    "image_edits",
    "audio_transcriptions",
    "audio_translations",
    "audio_speech",
    "models",
    "responses_retrieve",
    "responses_delete",
    "responses_cancel",
    "responses_input_items",
];

/// `gen_ai.operation.name` of each operation (GenAI semantic conventions), same index; the
/// calls on stored responses have no conventional name and keep their own.
pub(crate) const GEN_AI_OPERATIONS: [&str; 14] = [
    "chat",
    "text_completion",
    "embeddings",
    "chat",
    "generate_content",
    "generate_content",
    "generate_content",
    "generate_content",
    "generate_content",
    "models",
    "responses_retrieve",
    "responses_delete",
    "responses_cancel",
    "responses_input_items",
];

/// Attempt outcome labels: the `x-modelgw-attempts` labels of an attempt
/// (`proxy::attempt::Outcome`, in its declaration order), then of a skipped member
/// (`health::Unavailable`). Indexed by [`attempt_index`] / [`skip_index`].
pub(crate) const ATTEMPT_OUTCOMES: [&str; 17] = [
    "ok",
    "client_error",
    "server_error_passed_through",
    "credential_rejected",
    "throttled",
    "server_error",
    "connect_error",
    "timeout",
    "transport_error",
    "deadline",
    "no_credential",
    "skipped_throttling",
    "skipped_fleet_throttling",
    "skipped_error_cooldown",
    "skipped_fleet_error",
    "skipped_half_open_trial_busy",
    "skipped_quota_exhausted",
];
const FIRST_SKIP: usize = 11;
const THROTTLED: usize = 4;

/// The index of a skip reason (`Unavailable::as_str`) in [`ATTEMPT_OUTCOMES`].
pub(crate) fn skip_index(reason: &str) -> usize {
    ATTEMPT_OUTCOMES[FIRST_SKIP..]
        .iter()
        .position(|label| label.strip_prefix("skipped_") == Some(reason))
        .map_or(FIRST_SKIP, |i| FIRST_SKIP + i)
}

/// Answers the gateway gives itself: `(reason, status)`; indexed by [`Local`].
pub(crate) const LOCAL_RESPONSES: [(&str, &str); 12] = [
    ("unauthorized", "401"),
    ("not_found", "404"),
    ("bad_request", "400"),
    ("payload_too_large", "413"),
    ("all_throttling", "429"),
    ("no_endpoint", "503"),
    ("deadline", "504"),
    ("not_ready", "503"),
    ("auth_limited", "429"),
    ("body_timeout", "408"),
    ("key_limit", "429"),
    ("models", "200"),
];

/// Why the gateway answered a request itself (index into [`LOCAL_RESPONSES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Local {
    Unauthorized = 0,
    NotFound = 1,
    BadRequest = 2,
    PayloadTooLarge = 3,
    AllThrottling = 4,
    NoEndpoint = 5,
    Deadline = 6,
    NotReady = 7,
    AuthLimited = 8,
    BodyTimeout = 9,
    /// Over its key's limits (`limits`).
    KeyLimit = 10,
    /// The model list, which the gateway serves itself (`proxy/models.rs`).
    Models = 11,
}

impl Local {
    /// The reason of a local answer with `status` that no code path named more precisely.
    pub(crate) fn of_status(status: u16) -> Local {
        match status {
            401 => Local::Unauthorized,
            404 => Local::NotFound,
            408 => Local::BodyTimeout,
            413 => Local::PayloadTooLarge,
            429 => Local::AllThrottling,
            503 => Local::NoEndpoint,
            504 => Local::Deadline,
            _ => Local::BadRequest,
        }
    }
}

/// Label values of one (gateway, endpoint) pair, replaced when a snapshot renames either.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RouteLabels {
    pub gateway: Box<str>,
    pub endpoint: Box<str>,
    pub region: Box<str>,
}

/// What one operation did through one pair on one serving thread; allocated on the
/// operation's first request there. Aligned so that no two threads' counters share a cache
/// line.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct OperationMetrics {
    /// Answers by status class: index 0 = 1xx … 4 = 5xx.
    status: [AtomicU64; 5],
    /// To the end of the answer, in ms.
    duration: Histogram,
    /// Streams: to the first token, in ms.
    ttft: Histogram,
    /// Streams: between tokens after the first, in µs.
    token_time: Histogram,
    input_tokens: Histogram,
    output_tokens: Histogram,
}

impl OperationMetrics {
    fn new() -> Self {
        OperationMetrics {
            status: Default::default(),
            duration: Histogram::new(&LATENCY_MS),
            ttft: Histogram::new(&LATENCY_MS),
            token_time: Histogram::new(&TOKEN_TIME_US),
            input_tokens: Histogram::new(&TOKENS),
            output_tokens: Histogram::new(&TOKENS),
        }
    }
}

/// What one serving thread counted for one (gateway, endpoint) pair: each thread writes only
/// its own shard (no cache line bounces between cores on every request); a scrape adds them.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct RouteShard {
    attempts: [AtomicU64; ATTEMPT_OUTCOMES.len()],
    failovers: [AtomicU64; ATTEMPT_OUTCOMES.len()],
    /// Upstream time to the response head, in ms.
    ttfb: Histogram,
    /// Streams cut after they started (the endpoint's fault).
    stream_cuts: AtomicU64,
    operations: [OnceLock<Box<OperationMetrics>>; OPERATIONS.len()],
}

impl RouteShard {
    fn new() -> Self {
        RouteShard {
            attempts: Default::default(),
            failovers: Default::default(),
            ttfb: Histogram::new(&LATENCY_MS),
            stream_cuts: AtomicU64::new(0),
            operations: Default::default(),
        }
    }

    #[inline]
    fn operation(&self, op: usize) -> Option<&OperationMetrics> {
        let slot = self.operations.get(op)?;
        Some(slot.get_or_init(|| Box::new(OperationMetrics::new())))
    }
}

/// Everything counted for one (gateway, endpoint) pair, one shard per serving thread.
#[derive(Debug)]
pub struct RouteMetrics {
    gateway_id: GatewayId,
    endpoint_id: EndpointId,
    labels: ArcSwap<RouteLabels>,
    shards: Box<[RouteShard]>,
}

impl RouteMetrics {
    fn new(gateway_id: GatewayId, endpoint_id: EndpointId, shards: usize) -> Self {
        RouteMetrics {
            gateway_id,
            endpoint_id,
            labels: ArcSwap::from_pointee(RouteLabels::default()),
            shards: (0..shards.max(1)).map(|_| RouteShard::new()).collect(),
        }
    }

    /// The shard of serving thread `shard`.
    #[inline]
    fn at(&self, shard: usize) -> &RouteShard {
        &self.shards[shard % self.shards.len()]
    }

    /// Every shard's operation `op` that counted anything.
    fn operations(&self, op: usize) -> impl Iterator<Item = &OperationMetrics> {
        self.shards.iter().filter_map(move |s| s.operations[op].get().map(|b| &**b))
    }

    /// One attempt (or skip) with the outcome at `outcome` in [`ATTEMPT_OUTCOMES`]; `moved_on`
    /// when the request then went on to another member.
    #[inline]
    pub(crate) fn attempt(&self, shard: usize, outcome: usize, moved_on: bool) {
        let shard = self.at(shard);
        if let Some(count) = shard.attempts.get(outcome) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if moved_on && let Some(count) = shard.failovers.get(outcome) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The upstream's time to its response head.
    #[inline]
    pub(crate) fn time_to_first_byte(&self, shard: usize, ttfb: Duration) {
        self.at(shard).ttfb.observe(ttfb.as_millis() as u64);
    }

    /// An answer this endpoint gave for operation `op`, with `status`, passed to the client.
    #[inline]
    pub(crate) fn answered(&self, shard: usize, op: usize, status: u16) {
        if let Some(m) = self.at(shard).operation(op) {
            let class = usize::from(status / 100).clamp(1, 5) - 1;
            m.status[class].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The end of an answer for `op`: its duration since the request arrived, its `usage`
    /// when known, and for streams the time of its first token.
    pub(crate) fn finished(&self, shard: usize, op: usize, end: &Finished) {
        let shard = self.at(shard);
        let Some(m) = shard.operation(op) else { return };
        m.duration.observe(end.elapsed.as_millis() as u64);
        if let Some(first) = end.first_token {
            m.ttft.observe(first.as_millis() as u64);
        }
        if let Some(usage) = end.usage {
            m.input_tokens.observe(usage.input);
            m.output_tokens.observe(usage.output);
            if let Some(first) = end.first_token
                && usage.output > 1
            {
                let generating = end.elapsed.saturating_sub(first);
                m.token_time.observe(generating.as_micros() as u64 / (usage.output - 1));
            }
        }
        if end.cut {
            shard.stream_cuts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Attempts with `outcome` over all shards.
    fn attempts(&self, outcome: usize) -> u64 {
        self.shards.iter().map(|s| s.attempts[outcome].load(Ordering::Relaxed)).sum()
    }

    /// Failovers after `outcome` over all shards.
    fn failovers(&self, outcome: usize) -> u64 {
        self.shards.iter().map(|s| s.failovers[outcome].load(Ordering::Relaxed)).sum()
    }
}

/// How an answer ended, for [`RouteMetrics::finished`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Finished {
    /// From the request's arrival to the end of the answer.
    pub elapsed: Duration,
    /// Streams: from the request's arrival to its first token.
    pub first_token: Option<Duration>,
    pub usage: Option<usage::Usage>,
    /// The stream broke after it started (the endpoint's fault).
    pub cut: bool,
}

/// One serving thread's share of a gateway's counters.
#[derive(Debug)]
#[repr(align(128))]
struct GatewayShard {
    local: [AtomicU64; LOCAL_RESPONSES.len()],
    /// Time inside the gateway per request, in µs.
    overhead: Histogram,
}

/// What one gateway answered itself, and its overhead, one shard per serving thread.
#[derive(Debug)]
pub struct GatewayMetrics {
    gateway_id: Option<GatewayId>,
    name: ArcSwap<Box<str>>,
    shards: Box<[GatewayShard]>,
}

impl GatewayMetrics {
    fn new(gateway_id: Option<GatewayId>, name: &str, shards: usize) -> Self {
        GatewayMetrics {
            gateway_id,
            name: ArcSwap::from_pointee(Box::from(name)),
            shards: (0..shards.max(1))
                .map(|_| GatewayShard {
                    local: Default::default(),
                    overhead: Histogram::new(&OVERHEAD_US),
                })
                .collect(),
        }
    }

    #[inline]
    fn at(&self, shard: usize) -> &GatewayShard {
        &self.shards[shard % self.shards.len()]
    }

    /// An answer the gateway gave itself.
    #[inline]
    pub(crate) fn local(&self, shard: usize, why: Local) {
        self.at(shard).local[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The time a request spent in the gateway itself.
    #[inline]
    pub(crate) fn overhead(&self, shard: usize, spent: Duration) {
        self.at(shard).overhead.observe(spent.as_micros() as u64);
    }

    /// Local answers for `why` over all shards.
    fn locals(&self, why: usize) -> u64 {
        self.shards.iter().map(|s| s.local[why].load(Ordering::Relaxed)).sum()
    }
}

/// One endpoint's latest quota readings (`x-ratelimit-remaining-*`); -1 = never read.
#[derive(Debug)]
pub struct EndpointMetrics {
    endpoint_id: EndpointId,
    labels: ArcSwap<(Box<str>, Box<str>)>,
    remaining_requests: AtomicI64,
    remaining_tokens: AtomicI64,
}

impl EndpointMetrics {
    fn new(endpoint_id: EndpointId, name: &str, region: &str) -> Self {
        EndpointMetrics {
            endpoint_id,
            labels: ArcSwap::from_pointee((Box::from(name), Box::from(region))),
            remaining_requests: AtomicI64::new(-1),
            remaining_tokens: AtomicI64::new(-1),
        }
    }

    /// Records the quota an answer reported (its `x-ratelimit-remaining-*` headers, read once
    /// by the request path for health and metrics).
    #[inline]
    pub(crate) fn remaining(&self, limits: &RateLimits) {
        if let Some(requests) = limits.remaining_requests {
            self.remaining_requests.store(requests.max(0), Ordering::Relaxed);
        }
        if let Some(tokens) = limits.remaining_tokens {
            self.remaining_tokens.store(tokens.max(0), Ordering::Relaxed);
        }
    }
}

/// Every counter set, by id; written when a snapshot is attached, read at scrape and report
/// time — never on the request path.
#[derive(Debug, Default)]
struct Catalog {
    routes: HashMap<(GatewayId, EndpointId), Arc<RouteMetrics>>,
    gateways: HashMap<GatewayId, Arc<GatewayMetrics>>,
    endpoints: HashMap<EndpointId, Arc<EndpointMetrics>>,
}

/// Totals at the previous statistics report, by pair and by gateway.
#[derive(Debug, Default)]
struct Reported {
    routes: HashMap<(GatewayId, EndpointId), RouteStats>,
    gateways: HashMap<GatewayId, GatewayStats>,
}

/// The data plane's metrics: the catalog of counter sets and the process-wide counters.
#[derive(Debug)]
pub struct Metrics {
    enabled: bool,
    /// Shards per counter set: one per serving thread.
    shards: usize,
    catalog: Mutex<Catalog>,
    /// Answers given before a gateway was known (unknown key, unknown path, not ready).
    pub(crate) unrouted: Arc<GatewayMetrics>,
    pub(crate) open_streams: AtomicI64,
    pub(crate) failed_authentications: AtomicU64,
    control_plane_connected: AtomicI64,
    started: Instant,
    /// When the last snapshot was attached, in ms since `started` (-1: never).
    applied_at_ms: AtomicI64,
    /// Totals at the previous statistics report, by pair and by gateway.
    reported: Mutex<Reported>,
}

impl Default for Metrics {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Metrics::new(true, threads)
    }
}

impl Metrics {
    /// `enabled: false` attaches nothing: the request path then records nothing. `shards`:
    /// the serving threads, each of which records into its own copy of every counter.
    pub fn new(enabled: bool, shards: usize) -> Self {
        Metrics {
            enabled,
            shards: shards.max(1),
            catalog: Mutex::default(),
            unrouted: Arc::new(GatewayMetrics::new(None, "", shards)),
            open_streams: AtomicI64::new(0),
            failed_authentications: AtomicU64::new(0),
            control_plane_connected: AtomicI64::new(0),
            started: Instant::now(),
            applied_at_ms: AtomicI64::new(-1),
            reported: Mutex::default(),
        }
    }

    /// Whether the request path records.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives every gateway, member and endpoint of `table` its counter set (kept from the
    /// previous table by id, new ones created, those of removed ones dropped). Called once per
    /// snapshot, before the table is swapped in.
    pub fn attach(&self, table: &mut RoutingTable) {
        self.applied_at_ms.store(self.started.elapsed().as_millis() as i64, Ordering::Relaxed);
        if !self.enabled {
            return;
        }
        let mut catalog = self.catalog();
        let mut routes = HashMap::new();
        let mut gateways = HashMap::new();
        let mut endpoints = HashMap::new();
        for gateway in table.gateways_mut() {
            let g = catalog.gateways.remove(&gateway.id).unwrap_or_else(|| {
                Arc::new(GatewayMetrics::new(Some(gateway.id), &gateway.name, self.shards))
            });
            if ***g.name.load() != *gateway.name {
                g.name.store(Arc::new(Box::from(gateway.name.as_str())));
            }
            gateway.metrics = Some(Arc::clone(&g));
            gateways.insert(gateway.id, g);
            let gateway_id = gateway.id;
            let gateway_name = gateway.name.clone();
            for member in gateway.groups.iter_mut().flat_map(|g| g.members.iter_mut()) {
                let endpoint = &member.endpoint;
                let labels = RouteLabels {
                    gateway: Box::from(gateway_name.as_str()),
                    endpoint: Box::from(endpoint.name.as_str()),
                    region: Box::from(endpoint.region.as_str()),
                };
                let key = (gateway_id, endpoint.id);
                let route =
                    catalog.routes.remove(&key).or_else(|| routes.remove(&key)).unwrap_or_else(
                        || Arc::new(RouteMetrics::new(gateway_id, endpoint.id, self.shards)),
                    );
                if **route.labels.load() != labels {
                    route.labels.store(Arc::new(labels));
                }
                member.metrics = Some(Arc::clone(&route));
                routes.insert(key, route);
                let e = catalog
                    .endpoints
                    .remove(&endpoint.id)
                    .or_else(|| endpoints.remove(&endpoint.id))
                    .unwrap_or_else(|| {
                        Arc::new(EndpointMetrics::new(
                            endpoint.id,
                            &endpoint.name,
                            &endpoint.region,
                        ))
                    });
                let (name, region) = &**e.labels.load();
                if **name != *endpoint.name || **region != *endpoint.region {
                    e.labels.store(Arc::new((
                        Box::from(endpoint.name.as_str()),
                        Box::from(endpoint.region.as_str()),
                    )));
                }
                let _ = endpoint.metrics.set(Arc::clone(&e));
                endpoints.insert(endpoint.id, e);
            }
        }
        *catalog = Catalog { routes, gateways, endpoints };
    }

    /// Whether the control-plane stream is up (a gauge).
    pub fn set_control_plane_connected(&self, connected: bool) {
        self.control_plane_connected.store(i64::from(connected), Ordering::Relaxed);
    }

    /// Whether the control-plane stream is up now.
    pub fn control_plane_connected(&self) -> bool {
        self.control_plane_connected.load(Ordering::Relaxed) == 1
    }

    /// Seconds since the last snapshot was applied; `None` before the first.
    fn snapshot_age(&self) -> Option<f64> {
        let at = self.applied_at_ms.load(Ordering::Relaxed);
        (at >= 0).then(|| (self.started.elapsed().as_millis() as i64 - at) as f64 / 1000.0)
    }

    /// What happened since the previous call (the first call: since start), for the control
    /// plane's statistics; pairs and gateways with nothing new are left out.
    pub fn stats_report(&self) -> StatsReport {
        let (routes, gateways) = {
            let catalog = self.catalog();
            let routes: Vec<Arc<RouteMetrics>> = catalog.routes.values().cloned().collect();
            let gateways: Vec<Arc<GatewayMetrics>> = catalog.gateways.values().cloned().collect();
            (routes, gateways)
        };
        let mut reported = self.reported.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Reported { routes: previous_routes, gateways: previous_gateways } = &mut *reported;
        let mut report = StatsReport::default();
        let mut seen_routes = HashMap::with_capacity(routes.len());
        for route in &routes {
            let now = route_totals(route);
            let key = (route.gateway_id, route.endpoint_id);
            let before = previous_routes.remove(&key).unwrap_or_default();
            let delta = route_delta(&now, &before);
            if !delta.is_empty() {
                report.routes.push(delta);
            }
            seen_routes.insert(key, now);
        }
        *previous_routes = seen_routes;
        let mut seen_gateways = HashMap::with_capacity(gateways.len());
        for gateway in &gateways {
            let Some(id) = gateway.gateway_id else { continue };
            let now = gateway_totals(gateway, id);
            let before = previous_gateways
                .remove(&id)
                .unwrap_or(GatewayStats { gateway_id: id, ..Default::default() });
            let delta = GatewayStats {
                gateway_id: id,
                throttled: now.throttled.saturating_sub(before.throttled),
                unavailable: now.unavailable.saturating_sub(before.unavailable),
            };
            if !delta.is_empty() {
                report.gateways.push(delta);
            }
            seen_gateways.insert(id, now);
        }
        *previous_gateways = seen_gateways;
        report.routes.sort_by_key(|r| (r.gateway_id, r.endpoint_id));
        report.gateways.sort_by_key(|g| g.gateway_id);
        report
    }
}

/// A pair's totals since it was first counted.
fn route_totals(route: &RouteMetrics) -> RouteStats {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = RouteStats {
        gateway_id: route.gateway_id,
        endpoint_id: route.endpoint_id,
        throttled: route.attempts(THROTTLED),
        errors: route.shards.iter().map(|s| load(&s.stream_cuts)).sum(),
        ..Default::default()
    };
    out.failed_attempts =
        (0..FIRST_SKIP).filter(|i| *i != THROTTLED).map(|i| route.failovers(i)).sum();
    for op in 0..OPERATIONS.len() {
        for m in route.operations(op) {
            out.requests += m.status.iter().map(load).sum::<u64>();
            out.errors += load(&m.status[4]);
            out.prompt_tokens += m.input_tokens.sum();
            out.completion_tokens += m.output_tokens.sum();
            out.latency.add(&Buckets { counts: m.duration.counts() });
            out.ttft.add(&Buckets { counts: m.ttft.counts() });
        }
    }
    out
}

/// `now - before`, field by field (bucket by bucket); empty histograms stay empty.
fn route_delta(now: &RouteStats, before: &RouteStats) -> RouteStats {
    let buckets = |now: &Buckets, before: &Buckets| {
        if now.total() == before.total() {
            return Buckets::default();
        }
        Buckets {
            counts: now
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(before.counts.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    };
    RouteStats {
        gateway_id: now.gateway_id,
        endpoint_id: now.endpoint_id,
        requests: now.requests.saturating_sub(before.requests),
        errors: now.errors.saturating_sub(before.errors),
        throttled: now.throttled.saturating_sub(before.throttled),
        failed_attempts: now.failed_attempts.saturating_sub(before.failed_attempts),
        prompt_tokens: now.prompt_tokens.saturating_sub(before.prompt_tokens),
        completion_tokens: now.completion_tokens.saturating_sub(before.completion_tokens),
        latency: buckets(&now.latency, &before.latency),
        ttft: buckets(&now.ttft, &before.ttft),
    }
}

/// A gateway's totals of answers it gave itself.
fn gateway_totals(gateway: &GatewayMetrics, id: GatewayId) -> GatewayStats {
    let count = |why: Local| gateway.locals(why as usize);
    GatewayStats {
        gateway_id: id,
        throttled: count(Local::AllThrottling),
        unavailable: count(Local::NoEndpoint) + count(Local::Deadline),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use modelgw_model::{ConfigVersion, Platform, RoutingPolicy, Snapshot};

    use super::*;
    use crate::routing_table::tests::{endpoint, gateway, member};
    use crate::routing_table::{RoutingTable, SnapshotStore};

    fn store_with(snapshot: &Snapshot) -> (SnapshotStore, Arc<RouteMetrics>) {
        let store = SnapshotStore::with_metrics(Arc::new(Metrics::new(true, 2)));
        assert!(store.swap_if_newer(RoutingTable::compile(snapshot).expect("compiles")));
        let table = store.load();
        let route = table.gateways()[0].groups[0].members[0].metrics.clone().expect("attached");
        (store, route)
    }

    #[test]
    fn reports_carry_what_happened_since_the_previous_one_and_counters_survive_swaps() {
        let e = endpoint("east", Platform::AzureOpenai, "dep");
        let mut snapshot = Snapshot {
            version: ConfigVersion(1),
            endpoints: vec![e.clone()],
            gateways: vec![gateway("chat", "key-1", vec![member(&e, true, 0, 1)])],
        };
        snapshot.gateways[0].routing = RoutingPolicy::default();
        let (store, route) = store_with(&snapshot);
        let metrics = Arc::clone(store.metrics());
        route.answered(0, 0, 200);
        route.answered(1, 0, 503); // on the other serving thread
        route.attempt(0, 4, true); // throttled, moved on
        let usage = usage::Usage { input: 10, output: 5 };
        let end = Finished {
            elapsed: Duration::from_millis(120),
            first_token: Some(Duration::from_millis(40)),
            usage: Some(usage),
            cut: false,
        };
        route.finished(1, 0, &end);
        let first = metrics.stats_report();
        assert_eq!(first.routes.len(), 1);
        let r = &first.routes[0];
        assert_eq!((r.requests, r.errors, r.throttled), (2, 1, 1));
        assert_eq!((r.prompt_tokens, r.completion_tokens), (10, 5));
        assert_eq!(r.latency.counts[Buckets::index(120)], 1);
        assert_eq!(r.ttft.counts[Buckets::index(40)], 1);
        assert!(metrics.stats_report().is_empty(), "nothing new since");

        // A new version of the same pair keeps its counters; only news is reported.
        snapshot.version = ConfigVersion(2);
        assert!(store.swap_if_newer(RoutingTable::compile(&snapshot).expect("compiles")));
        let again = store.load().gateways()[0].groups[0].members[0].metrics.clone().expect("kept");
        assert!(Arc::ptr_eq(&route, &again));
        again.answered(0, 0, 200);
        let next = metrics.stats_report();
        assert_eq!(next.routes[0].requests, 1);
        assert_eq!(next.routes[0].latency, Buckets::default(), "no new latency observed");

        // Removing the endpoint drops its counters.
        snapshot.version = ConfigVersion(3);
        snapshot.gateways[0].members.clear();
        assert!(store.swap_if_newer(RoutingTable::compile(&snapshot).expect("compiles")));
        assert!(metrics.catalog().routes.is_empty());
    }

    #[test]
    fn with_metrics_off_nothing_is_attached() {
        let e = endpoint("east", Platform::AzureOpenai, "dep");
        let snapshot = Snapshot {
            version: ConfigVersion(1),
            endpoints: vec![e.clone()],
            gateways: vec![gateway("chat", "key-1", vec![member(&e, true, 0, 1)])],
        };
        let store = SnapshotStore::with_metrics(Arc::new(Metrics::new(false, 2)));
        assert!(store.swap_if_newer(RoutingTable::compile(&snapshot).expect("compiles")));
        let table = store.load();
        assert!(table.gateways()[0].metrics.is_none());
        assert!(table.gateways()[0].groups[0].members[0].metrics.is_none());
    }
}
