//! The control plane's Prometheus metrics (`prometheus-client`, OpenMetrics text).
//!
//! One [`ControlPlaneMetrics`] per control plane, created with its [`Store`](crate::Store)
//! (the value every component of the control plane already holds: distribution, the admin
//! API, the console) and shared by cloning. It holds the instruments that count or time
//! events as they happen; what already exists as state (the published version, the registry
//! of data planes) is read at scrape time by a collector instead of being copied into gauges
//! ([`Distribution::metrics_registry`](crate::Distribution::metrics_registry)).
//!
//! Every label value is one of a fixed set of identifiers chosen here (an operation, an
//! outcome, a status class), never a node id, a name or a path: cardinality is bounded by
//! the code, and nothing an operator or a client typed reaches the exposition
//! (`prometheus-client` does not escape label values). Counters with a fixed label set are
//! created at zero for every value, so `rate()` and `increase()` work from the first scrape.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the control plane's histograms: store operations, snapshot
/// publishes and propagation. Finer at the low end than the request path's
/// `modelgw_model::stats::LATENCY_BUCKETS_MS` (which start at 10 ms and must add up with the
/// data planes' statistics): a SQLite read, a publish of a small configuration or an ACK on
/// a local network take well under a millisecond to a few milliseconds, and a 10 s bound
/// still shows a stuck database or a data plane that takes seconds to compile.
pub const CONTROL_PLANE_BUCKETS_SECONDS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A label set of one label whose values are this enum's variants, each a fixed identifier.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident, $label:literal, { $($(#[$vdoc:meta])* $variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, for counters created at zero.
            pub const ALL: &[$name] = &[$($name::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value),+
                }
            }
        }

        impl EncodeLabelSet for $name {
            fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
                prometheus_client::encoding::EncodeLabel::encode(
                    &($label, self.as_str()),
                    encoder.encode_label(),
                )
            }
        }
    };
}

label_enum!(
    /// The store operations that are timed (`modelgw_store_operation_duration_seconds`): the
    /// ones the control plane runs on its own (polls, publishes, the health writer) and the
    /// ones on every admin request or change.
    StoreOperation, "operation", {
        /// The consistent read of the whole configuration, once per published version.
        LoadSnapshot => "load_snapshot",
        /// The version check of the publisher's poll.
        ConfigVersion => "config_version",
        /// The commit of a configuration change (and its audit row).
        ConfigCommit => "config_commit",
        /// Stored health reports, read on every poll.
        LoadEndpointHealth => "load_endpoint_health",
        /// The health writer's batch.
        WriteEndpointHealth => "write_endpoint_health",
        /// The API-token lookup of an admin request.
        FindApiToken => "find_api_token",
        /// The trace writer's batch insert.
        WriteTraces => "write_traces",
        /// The trace retention job's deletes.
        PruneTraces => "prune_traces",
    }
);

label_enum!(
    /// How an Azure discovery job ended: the status `GET /api/v1/azure/discoveries/{id}`
    /// shows.
    DiscoveryOutcome, "outcome", {
        Succeeded => "succeeded",
        Failed => "failed",
    }
);

label_enum!(
    /// How an Azure import request ended.
    ImportOutcome, "outcome", {
        /// Endpoints were created or updated (a new configuration version).
        Changed => "changed",
        /// Everything was imported already, as it is.
        Unchanged => "unchanged",
        /// The request was refused (validation, unknown discovery or deployment: 4xx).
        Refused => "refused",
        /// Azure or the store failed (5xx).
        Failed => "failed",
    }
);

label_enum!(
    /// The class of an admin API response's status.
    StatusClass, "status_class", {
        Informational => "1xx",
        Success => "2xx",
        Redirection => "3xx",
        ClientError => "4xx",
        ServerError => "5xx",
    }
);

impl StatusClass {
    /// The class of `status` (anything outside 100–599 counts as a server error: it is a bug).
    pub fn of(status: u16) -> StatusClass {
        match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }
}

label_enum!(
    /// Where request traces were dropped (`modelgw_traces_dropped_total`).
    TraceDropper, "by", {
        /// The data plane's trace queue was full (it reports how many with its next batch).
        DataPlane => "data_plane",
        /// The control plane's writer was behind, or the database refused the batch.
        ControlPlane => "control_plane",
    }
);

label_enum!(
    /// Why the retention job deleted traces (`modelgw_traces_deleted_total`).
    TraceDeletion, "reason", {
        /// Older than the gateway's `retention_days`.
        Age => "age",
        /// Beyond the gateway's `max_count`.
        Count => "count",
        /// The gateway no longer exists.
        Orphaned => "orphaned",
    }
);

fn timing_histogram() -> Histogram {
    Histogram::new(CONTROL_PLANE_BUCKETS_SECONDS)
}

type TimingFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The control plane's event instruments. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct ControlPlaneMetrics(Arc<Instruments>);

#[derive(Debug)]
struct Instruments {
    publish_duration: Histogram,
    propagation: Histogram,
    store_operations: TimingFamily<StoreOperation>,
    discovery_jobs: Family<DiscoveryOutcome, Counter>,
    imports: Family<ImportOutcome, Counter>,
    admin_requests: Family<StatusClass, Counter>,
    health_reports: Counter,
    stats_reports: Counter,
    traces_received: Counter,
    traces_stored: Counter,
    traces_dropped: Family<TraceDropper, Counter>,
    traces_deleted: Family<TraceDeletion, Counter>,
}

impl Default for ControlPlaneMetrics {
    fn default() -> Self {
        let instruments = Instruments {
            publish_duration: timing_histogram(),
            propagation: timing_histogram(),
            store_operations: Family::new_with_constructor(timing_histogram),
            discovery_jobs: Family::default(),
            imports: Family::default(),
            admin_requests: Family::default(),
            health_reports: Counter::default(),
            stats_reports: Counter::default(),
            traces_received: Counter::default(),
            traces_stored: Counter::default(),
            traces_dropped: Family::default(),
            traces_deleted: Family::default(),
        };
        for by in TraceDropper::ALL {
            instruments.traces_dropped.get_or_create_owned(by);
        }
        for reason in TraceDeletion::ALL {
            instruments.traces_deleted.get_or_create_owned(reason);
        }
        for outcome in DiscoveryOutcome::ALL {
            instruments.discovery_jobs.get_or_create_owned(outcome);
        }
        for outcome in ImportOutcome::ALL {
            instruments.imports.get_or_create_owned(outcome);
        }
        for class in StatusClass::ALL {
            instruments.admin_requests.get_or_create_owned(class);
        }
        ControlPlaneMetrics(Arc::new(instruments))
    }
}

impl ControlPlaneMetrics {
    /// A snapshot was loaded, validated, indexed and encoded in `took`, and published.
    pub fn snapshot_published(&self, took: Duration) {
        self.0.publish_duration.observe(took.as_secs_f64());
    }

    /// A data plane acknowledged a version `took` after it was published.
    pub fn snapshot_propagated(&self, took: Duration) {
        self.0.propagation.observe(took.as_secs_f64());
    }

    /// Times one store operation until the returned guard is dropped (an operation that
    /// fails or is cancelled is timed too).
    pub fn time_store(&self, operation: StoreOperation) -> StoreTimer<'_> {
        StoreTimer { metrics: self, operation, started: Instant::now() }
    }

    pub fn discovery_finished(&self, outcome: DiscoveryOutcome) {
        self.0.discovery_jobs.get_or_create(&outcome).inc();
    }

    pub fn import_finished(&self, outcome: ImportOutcome) {
        self.0.imports.get_or_create(&outcome).inc();
    }

    /// The admin API answered with `status`.
    pub fn admin_request(&self, status: u16) {
        self.0.admin_requests.get_or_create(&StatusClass::of(status)).inc();
    }

    /// A data plane's health report arrived on its stream.
    pub fn health_report_received(&self) {
        self.0.health_reports.inc();
    }

    /// A data plane's traffic statistics report arrived on its stream.
    pub fn stats_report_received(&self) {
        self.0.stats_reports.inc();
    }

    /// Request traces of a data plane's batch were accepted for storage.
    pub fn traces_received(&self, count: u64) {
        self.0.traces_received.inc_by(count);
    }

    /// Request traces were stored.
    pub fn traces_stored(&self, count: u64) {
        self.0.traces_stored.inc_by(count);
    }

    /// Request traces were lost, `by` the side whose queue was full.
    pub fn traces_dropped(&self, by: TraceDropper, count: u64) {
        self.0.traces_dropped.get_or_create(&by).inc_by(count);
    }

    /// The retention job deleted these traces.
    pub fn traces_deleted(&self, deleted: &crate::store::TraceRetention) {
        let by = [
            (TraceDeletion::Age, deleted.by_age),
            (TraceDeletion::Count, deleted.by_count),
            (TraceDeletion::Orphaned, deleted.orphaned),
        ];
        for (reason, count) in by {
            self.0.traces_deleted.get_or_create(&reason).inc_by(count);
        }
    }

    /// Registers every instrument (clones share the values) in `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        let i = &self.0;
        registry.register(
            "modelgw_snapshot_publish_duration_seconds",
            "Time to load, validate, index and encode a configuration snapshot before it is published",
            i.publish_duration.clone(),
        );
        registry.register(
            "modelgw_snapshot_propagation_seconds",
            "Time from a snapshot's publish to each connected data plane's ACK of it",
            i.propagation.clone(),
        );
        registry.register(
            "modelgw_store_operation_duration_seconds",
            "Latency of configuration store operations",
            i.store_operations.clone(),
        );
        registry.register(
            "modelgw_azure_discovery_jobs",
            "Azure discovery jobs finished, by outcome",
            i.discovery_jobs.clone(),
        );
        registry.register(
            "modelgw_azure_imports",
            "Azure import requests, by outcome",
            i.imports.clone(),
        );
        registry.register(
            "modelgw_admin_requests",
            "Admin API responses, by status class",
            i.admin_requests.clone(),
        );
        registry.register(
            "modelgw_health_reports",
            "Endpoint health reports received from data planes",
            i.health_reports.clone(),
        );
        registry.register(
            "modelgw_stats_reports",
            "Traffic statistics reports received from data planes",
            i.stats_reports.clone(),
        );
        registry.register(
            "modelgw_traces_received",
            "Request traces received from data planes for storage",
            i.traces_received.clone(),
        );
        registry.register(
            "modelgw_traces_stored",
            "Request traces stored in the database",
            i.traces_stored.clone(),
        );
        registry.register(
            "modelgw_traces_dropped",
            "Request traces lost because a queue was full, by the side that dropped them",
            i.traces_dropped.clone(),
        );
        registry.register(
            "modelgw_traces_deleted",
            "Request traces deleted by the retention job, by reason",
            i.traces_deleted.clone(),
        );
    }
}

/// Observes a store operation's duration when dropped.
#[must_use = "the operation is timed until the guard is dropped"]
pub struct StoreTimer<'a> {
    metrics: &'a ControlPlaneMetrics,
    operation: StoreOperation,
    started: Instant,
}

impl Drop for StoreTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .0
            .store_operations
            .get_or_create(&self.operation)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(metrics: &ControlPlaneMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    #[test]
    fn counters_of_every_fixed_label_start_at_zero_and_names_follow_the_contract() {
        let text = exposition(&ControlPlaneMetrics::default());
        for line in [
            "modelgw_azure_discovery_jobs_total{outcome=\"failed\"} 0",
            "modelgw_azure_imports_total{outcome=\"refused\"} 0",
            "modelgw_admin_requests_total{status_class=\"5xx\"} 0",
            "modelgw_health_reports_total 0",
            "modelgw_stats_reports_total 0",
            "modelgw_traces_dropped_total{by=\"data_plane\"} 0",
            "modelgw_traces_deleted_total{reason=\"count\"} 0",
            "modelgw_snapshot_propagation_seconds_count 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn events_are_counted_under_their_fixed_label() {
        let metrics = ControlPlaneMetrics::default();
        metrics.admin_request(201);
        metrics.admin_request(204);
        metrics.admin_request(422);
        metrics.import_finished(ImportOutcome::Changed);
        drop(metrics.time_store(StoreOperation::LoadSnapshot));
        metrics.snapshot_propagated(Duration::from_millis(3));
        let text = exposition(&metrics);
        for line in [
            "modelgw_admin_requests_total{status_class=\"2xx\"} 2",
            "modelgw_admin_requests_total{status_class=\"4xx\"} 1",
            "modelgw_azure_imports_total{outcome=\"changed\"} 1",
            "modelgw_store_operation_duration_seconds_count{operation=\"load_snapshot\"} 1",
            "modelgw_snapshot_propagation_seconds_bucket{le=\"0.005\"} 1",
            "modelgw_snapshot_propagation_seconds_bucket{le=\"0.0025\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn status_classes_cover_every_status() {
        assert_eq!(StatusClass::of(101), StatusClass::Informational);
        assert_eq!(StatusClass::of(200), StatusClass::Success);
        assert_eq!(StatusClass::of(308), StatusClass::Redirection);
        assert_eq!(StatusClass::of(499), StatusClass::ClientError);
        assert_eq!(StatusClass::of(503), StatusClass::ServerError);
        assert_eq!(StatusClass::of(999), StatusClass::ServerError);
    }
}
