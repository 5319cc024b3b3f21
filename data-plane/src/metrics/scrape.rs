//! The Prometheus view of the data plane: a `prometheus-client` collector that reads the
//! request path's atomics, endpoint health and the connection counters at scrape time.
//! Label values come from configuration (gateway, endpoint and region names) and are escaped
//! here, since the crate's text encoder writes them as given.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{
    ATTEMPT_OUTCOMES, GEN_AI_OPERATIONS, GatewayMetrics, Histogram, LOCAL_RESPONSES, Merged,
    Metrics, OPERATIONS, OperationMetrics, RouteMetrics,
};
use crate::health::HealthRegistry;
use crate::limits::RefusalReason;
use crate::proxy::connection::ConnectionStats;
use crate::routing_table::SnapshotStore;
use modelgw_model::EndpointState;

/// A label value escaped as the exposition format requires (`\`, `"` and line feeds).
#[derive(Debug)]
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Up to six `(name, value)` labels, values escaped.
struct Labels<'a>(&'a [(&'static str, &'a str)]);

impl EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        for (name, value) in self.0 {
            let mut label = encoder.encode_label();
            let mut key = label.encode_label_key()?;
            key.write_str(name)?;
            let mut value_encoder = key.encode_label_value()?;
            Escaped(value).encode(&mut value_encoder)?;
            value_encoder.finish()?;
        }
        Ok(())
    }
}

/// Everything the scrape reads.
#[derive(Debug)]
pub struct Scrape {
    pub metrics: Arc<Metrics>,
    pub health: Arc<HealthRegistry>,
    pub connections: Arc<ConnectionStats>,
    pub store: Arc<SnapshotStore>,
}

impl Scrape {
    /// A registry holding this collector (what the `/metrics` listener encodes).
    pub fn registry(self) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        registry
    }
}

/// One metric family with rows of `(labels, value)`.
fn family<T>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(Vec<(&'static str, &str)>, T)],
    mut write: impl FnMut(prometheus_client::encoding::MetricEncoder<'_>, &T) -> std::fmt::Result,
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    if let [(labels, value)] = rows
        && labels.is_empty()
    {
        // A single series without labels: `name value`, not `name{} value`.
        return write(metric, value);
    }
    for (labels, value) in rows {
        let labels = Labels(labels);
        let row = metric.encode_family(&labels)?;
        write(row, value)?;
    }
    Ok(())
}

fn counter(
    mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    v: &u64,
) -> std::fmt::Result {
    encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, u64, u64>(v, None)
}

fn gauge(mut encoder: prometheus_client::encoding::MetricEncoder<'_>, v: &i64) -> std::fmt::Result {
    encoder.encode_gauge(v)
}

fn gauge_f64(
    mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    v: &f64,
) -> std::fmt::Result {
    encoder.encode_gauge(v)
}

fn histogram(
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
    h: &Merged,
) -> std::fmt::Result {
    h.encode(encoder)
}

/// One histogram over every serving thread's copy, when anything was observed.
fn merged<'a>(parts: impl IntoIterator<Item = &'a Histogram>) -> Option<Merged> {
    Merged::of(parts).filter(|m| m.count() > 0)
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let (routes, gateways, endpoints) = {
            let catalog = self.metrics.catalog();
            let mut routes: Vec<Arc<RouteMetrics>> = catalog.routes.values().cloned().collect();
            let mut gateways: Vec<Arc<GatewayMetrics>> =
                catalog.gateways.values().cloned().collect();
            let mut endpoints: Vec<_> = catalog.endpoints.values().cloned().collect();
            routes.sort_by_key(|r| (r.gateway_id, r.endpoint_id));
            gateways.sort_by_key(|g| g.gateway_id);
            endpoints.sort_by_key(|e| e.endpoint_id);
            (routes, gateways, endpoints)
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let route_labels: Vec<_> = routes.iter().map(|r| r.labels.load_full()).collect();

        // Answers by endpoint, operation and status class.
        let mut requests = Vec::new();
        let mut durations = Vec::new();
        let mut ttfts = Vec::new();
        let mut token_times = Vec::new();
        let mut tokens = Vec::new();
        for (route, labels) in routes.iter().zip(&route_labels) {
            let base = [
                ("gateway", &*labels.gateway),
                ("endpoint", &*labels.endpoint),
                ("region", &*labels.region),
            ];
            for op in 0..OPERATIONS.len() {
                let parts: Vec<&OperationMetrics> = route.operations(op).collect();
                if parts.is_empty() {
                    continue;
                }
                for (class, class_label) in STATUS_CLASSES.iter().enumerate() {
                    let count: u64 = parts.iter().map(|m| load(&m.status[class])).sum();
                    if count > 0 {
                        let mut l = base.to_vec();
                        l.push(("operation", OPERATIONS[op]));
                        l.push(("status_class", class_label));
                        requests.push((l, count));
                    }
                }
                let mut l = base.to_vec();
                l.push(("gen_ai_operation_name", GEN_AI_OPERATIONS[op]));
                if let Some(h) = merged(parts.iter().map(|m| &m.duration)) {
                    durations.push((l.clone(), h));
                }
                if let Some(h) = merged(parts.iter().map(|m| &m.ttft)) {
                    ttfts.push((l.clone(), h));
                }
                if let Some(h) = merged(parts.iter().map(|m| &m.token_time)) {
                    token_times.push((l.clone(), h));
                }
                if let Some(input) = merged(parts.iter().map(|m| &m.input_tokens)) {
                    let output = Merged::of(parts.iter().map(|m| &m.output_tokens));
                    let mut input_labels = l.clone();
                    input_labels.push(("gen_ai_token_type", "input"));
                    tokens.push((input_labels, input));
                    if let Some(output) = output {
                        let mut output_labels = l;
                        output_labels.push(("gen_ai_token_type", "output"));
                        tokens.push((output_labels, output));
                    }
                }
            }
        }
        family(
            &mut encoder,
            "modelgw_requests",
            "Answers an endpoint gave the gateway's clients.",
            MetricType::Counter,
            &requests,
            counter,
        )?;

        let mut attempts = Vec::new();
        let mut failovers = Vec::new();
        let mut ttfbs = Vec::new();
        for (route, labels) in routes.iter().zip(&route_labels) {
            let base = [
                ("gateway", &*labels.gateway),
                ("endpoint", &*labels.endpoint),
                ("region", &*labels.region),
            ];
            for (i, outcome) in ATTEMPT_OUTCOMES.iter().enumerate() {
                let mut l = base.to_vec();
                l.push(("outcome", outcome));
                let tried = route.attempts(i);
                if tried > 0 {
                    attempts.push((l.clone(), tried));
                }
                let moved = route.failovers(i);
                if moved > 0 {
                    failovers.push((l, moved));
                }
            }
            if let Some(h) = merged(route.shards.iter().map(|s| &s.ttfb)) {
                ttfbs.push((base.to_vec(), h));
            }
        }
        family(
            &mut encoder,
            "modelgw_upstream_attempts",
            "Upstream attempts and skipped members, by outcome.",
            MetricType::Counter,
            &attempts,
            counter,
        )?;
        family(
            &mut encoder,
            "modelgw_failovers",
            "Failed attempts the gateway moved on from (to the next member, a recovery wait or its own answer).",
            MetricType::Counter,
            &failovers,
            counter,
        )?;
        family(
            &mut encoder,
            "modelgw_upstream_time_to_first_byte_seconds",
            "Upstream time to the response head, per attempt that got one.",
            MetricType::Histogram,
            &ttfbs,
            histogram,
        )?;
        family(
            &mut encoder,
            "gen_ai_server_request_duration_seconds",
            "Time from the request's arrival to the end of its answer.",
            MetricType::Histogram,
            &durations,
            histogram,
        )?;
        family(
            &mut encoder,
            "gen_ai_server_time_to_first_token_seconds",
            "Streams: time from the request's arrival to its first token.",
            MetricType::Histogram,
            &ttfts,
            histogram,
        )?;
        family(
            &mut encoder,
            "gen_ai_server_time_per_output_token_seconds",
            "Streams: time per output token after the first.",
            MetricType::Histogram,
            &token_times,
            histogram,
        )?;
        family(
            &mut encoder,
            "gen_ai_client_token_usage",
            "Tokens per answer, from its usage.",
            MetricType::Histogram,
            &tokens,
            histogram,
        )?;

        // Answers the gateway gave itself, and its overhead.
        let gateway_names: Vec<_> = gateways.iter().map(|g| g.name.load_full()).collect();
        let unrouted_name = self.metrics.unrouted.name.load_full();
        let all_gateways: Vec<(&GatewayMetrics, &str)> =
            std::iter::once((&*self.metrics.unrouted, &**unrouted_name))
                .chain(gateways.iter().map(|g| &**g).zip(gateway_names.iter().map(|n| &***n)))
                .collect();
        let mut local = Vec::new();
        let mut overheads = Vec::new();
        for (gateway, name) in &all_gateways {
            for (i, (reason, status)) in LOCAL_RESPONSES.iter().enumerate() {
                let count = gateway.locals(i);
                if count > 0 {
                    // Before a key named a gateway there is none: the label is left out (an
                    // empty label is the same to Prometheus, not to every parser).
                    let mut labels = Vec::with_capacity(3);
                    if !name.is_empty() {
                        labels.push(("gateway", *name));
                    }
                    labels.push(("status", *status));
                    labels.push(("reason", *reason));
                    local.push((labels, count));
                }
            }
            if let Some(h) = merged(gateway.shards.iter().map(|s| &s.overhead)) {
                overheads.push((vec![("gateway", *name)], h));
            }
        }
        family(
            &mut encoder,
            "modelgw_local_responses",
            "Answers the gateway gave itself (no endpoint's answer passed on).",
            MetricType::Counter,
            &local,
            counter,
        )?;
        family(
            &mut encoder,
            "modelgw_overhead_seconds",
            "Time a request spent in the gateway itself: end to end minus the waits on the client's body, the upstreams and recovery.",
            MetricType::Histogram,
            &overheads,
            histogram,
        )?;

        // Endpoints: health and quota.
        let now = Instant::now();
        let endpoint_labels: Vec<_> = endpoints.iter().map(|e| e.labels.load_full()).collect();
        let mut states = Vec::new();
        let mut remaining = Vec::new();
        let mut shares = Vec::new();
        for (endpoint, labels) in endpoints.iter().zip(&endpoint_labels) {
            let (name, region) = (&*labels.0, &*labels.1);
            let current = self.health.state(endpoint.endpoint_id, now);
            shares.push((
                vec![("endpoint", name), ("region", region)],
                self.health.quota_share(endpoint.endpoint_id),
            ));
            for (state, label) in [
                (EndpointState::Healthy, "healthy"),
                (EndpointState::Throttling, "throttling"),
                (EndpointState::Error, "error"),
            ] {
                let value = i64::from(current == state);
                states
                    .push((vec![("endpoint", name), ("region", region), ("state", label)], value));
            }
            for (kind, value) in [
                ("requests", endpoint.remaining_requests.load(Ordering::Relaxed)),
                ("tokens", endpoint.remaining_tokens.load(Ordering::Relaxed)),
            ] {
                if value >= 0 {
                    remaining.push((
                        vec![("endpoint", name), ("region", region), ("kind", kind)],
                        value,
                    ));
                }
            }
        }
        family(
            &mut encoder,
            "modelgw_endpoint_health_state",
            "1 for the endpoint's current health state as this data plane sees it, else 0.",
            MetricType::Gauge,
            &states,
            gauge,
        )?;
        family(
            &mut encoder,
            "modelgw_endpoint_ratelimit_remaining",
            "The quota left at the endpoint's last answer (x-ratelimit-remaining-*).",
            MetricType::Gauge,
            &remaining,
            gauge,
        )?;
        family(
            &mut encoder,
            "modelgw_endpoint_quota_share",
            "This data plane's share of the endpoint's quota: its part of the fleet's recent spending on it (1 when alone).",
            MetricType::Gauge,
            &shares,
            gauge_f64,
        )?;

        // The process.
        let none: Vec<(&'static str, &str)> = Vec::new();
        let open = self.connections.open() as i64;
        family(
            &mut encoder,
            "modelgw_open_connections",
            "Client connections open.",
            MetricType::Gauge,
            &[(none.clone(), open)],
            gauge,
        )?;
        family(
            &mut encoder,
            "modelgw_connections_refused",
            "Client connections refused at the connection limit.",
            MetricType::Counter,
            &[(none.clone(), self.connections.refused())],
            counter,
        )?;
        let streams = self.metrics.open_streams.load(Ordering::Relaxed).max(0);
        family(
            &mut encoder,
            "modelgw_open_streams",
            "Answers being streamed to clients now.",
            MetricType::Gauge,
            &[(none.clone(), streams)],
            gauge,
        )?;
        let failed = load(&self.metrics.failed_authentications);
        family(
            &mut encoder,
            "modelgw_failed_authentications",
            "Requests refused for an unknown or missing gateway key.",
            MetricType::Counter,
            &[(none.clone(), failed)],
            counter,
        )?;
        // Gateway keys' limits.
        let limits = self.store.key_limits();
        let counters = limits.counters();
        let refusals: Vec<_> = RefusalReason::ALL
            .iter()
            .map(|reason| (vec![("reason", reason.label())], counters.refusals(*reason)))
            .collect();
        family(
            &mut encoder,
            "modelgw_key_limit_refusals",
            "Requests refused by a gateway key's limits, by reason: window_spent (the window's fleet-wide remaining is below the request's reservation), lease_short (only this data plane's budget lease is short), no_lease (no valid lease and the gateway fails closed).",
            MetricType::Counter,
            &refusals,
            counter,
        )?;
        family(
            &mut encoder,
            "modelgw_key_limit_fail_open_admissions",
            "Requests to keys with limits admitted unchecked: no valid budget lease (control plane away, or no grant yet for the window) and the gateway fails open.",
            MetricType::Counter,
            &[(none.clone(), counters.fail_open())],
            counter,
        )?;
        family(
            &mut encoder,
            "modelgw_key_limit_lease_expiries",
            "Times the budget leases this data plane held expired without renewal.",
            MetricType::Counter,
            &[(none.clone(), counters.lease_expiries())],
            counter,
        )?;
        family(
            &mut encoder,
            "modelgw_key_limit_lease_valid",
            "1 while this data plane holds valid budget leases from its control plane.",
            MetricType::Gauge,
            &[(none.clone(), i64::from(limits.lease_valid()))],
            gauge,
        )?;
        let version = self.store.version().0 as i64;
        family(
            &mut encoder,
            "modelgw_snapshot_version",
            "Configuration version served (0: none yet).",
            MetricType::Gauge,
            &[(none.clone(), version)],
            gauge,
        )?;
        // A snapshot from disk is as old as the control plane's last word on it, not as the
        // moment it was loaded.
        let stale = self.store.stale();
        let age = match stale {
            Some(origin) => Some(origin.age().as_secs_f64()),
            None => self.metrics.snapshot_age(),
        };
        if let Some(age) = age {
            family(
                &mut encoder,
                "modelgw_snapshot_age_seconds",
                "Seconds since the snapshot served came from a control plane (from disk: since a control plane last sent or confirmed it).",
                MetricType::Gauge,
                &[(none.clone(), age)],
                gauge_f64,
            )?;
        }
        family(
            &mut encoder,
            "modelgw_snapshot_stale",
            "1 while the snapshot served was loaded from disk at start and no control plane has sent one since.",
            MetricType::Gauge,
            &[(none.clone(), i64::from(stale.is_some()))],
            gauge,
        )?;
        let connected = self.metrics.control_plane_connected.load(Ordering::Relaxed);
        family(
            &mut encoder,
            "modelgw_control_plane_connected",
            "1 while the control-plane stream is up.",
            MetricType::Gauge,
            &[(none, connected)],
            gauge,
        )?;
        Ok(())
    }
}
