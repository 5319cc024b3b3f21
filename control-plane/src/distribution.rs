//! Snapshot distribution: a publisher reloads the snapshot from the store after each change
//! (and on a poll tick, for control-plane replicas sharing one PostgreSQL) and pushes it to
//! every subscribed data plane over the gRPC `Stream`; the registry tracks each data plane's
//! applied version, last-seen time and reported endpoint health.
//!
//! The published value is one `watch` of `Arc<PublishedSnapshot>`: the validated domain
//! snapshot and its protobuf encoding, made once per version and shared by every stream (a
//! stream sends the encoded bytes, never a copy), only ever replaced by a newer version.
//! Streams read the latest value when they can send, so a slow data plane skips versions it
//! no longer needs (snapshots are complete, never deltas).
//!
//! Fleet health works the same way: the registry aggregates every data plane's reports into
//! one `watch` of `Arc<FleetHealth>` (replaced only when the aggregate changes), and
//! each stream sends it after every snapshot and on every change. A report therefore reaches
//! every other data plane in one in-memory hop; persisting it (for restarts and for other
//! replicas, which merge stored reports on each poll tick) happens afterwards, in a
//! background writer. Window ends are not pushed: every entry carries its `until`, which
//! data planes honour themselves.
//!
//! Key limits (issue #14, `leases.rs`): a data plane that enforces them names its process
//! (`Hello.instance`); its stream then gets a lease task that stores the instance's usage
//! reports and lends it budget for every limited key (`Leases`), in transactions that keep
//! replicas sharing the database from lending the same budget twice.
//!
//! Quota sharing (issue #18, `quota.rs`): each data plane reports what it sends to each
//! endpoint about once a second; a task sums the fresh reports per endpoint every second and,
//! when the sum changed, publishes `FleetQuota` through a `watch` (encoded once, shared by
//! every stream), so replicas split each endpoint's remaining quota instead of each spending
//! all of it.
//!
//! Traffic statistics ride the same streams the other way: each data plane sends the counts
//! it served since its previous report, and the registry adds them into a rolling window
//! (`stats.rs`: per minute, 24 h, memory bounded) that the admin API reads for the console.

mod admission;
pub mod dev_pki;
mod grpc;
mod health;
pub mod join_tokens;
pub mod leases;
mod notify;
mod publisher;
mod quota;
mod registry;
pub mod stats;
mod tls;
pub mod traces;

pub use grpc::{
    ClientAuth, GrpcSecurity, GrpcServeError, GrpcSettings, MAX_INBOUND_MESSAGE_BYTES,
    MAX_STREAMS_PER_CONNECTION, MESSAGE_BURST, MESSAGES_PER_SECOND, REGISTRATION_BURST,
    REGISTRATIONS_PER_SECOND,
};
pub use health::{
    DEFAULT_MAX_HEALTH_WINDOW, DataPlaneHealth, EndpointHealthView, HEALTH_FLUSH_TIMEOUT,
    HEALTH_PRUNE_INTERVAL, HEALTH_RETENTION, LastError, RESET_PUSH_WINDOW, UNTIMED_REPORT_WINDOW,
};
pub use publisher::PublishedSnapshot;
pub use quota::{
    PublishedFleetQuota, QUOTA_FRESHNESS, QUOTA_PUSH_INTERVAL, QuotaSharingSettings,
    REPORT_INTERVAL_MS,
};
pub(crate) use registry::ConnectionId;
pub use registry::{
    DEFAULT_DATA_PLANE_RETENTION, DEFAULT_MAX_DATA_PLANES, DataPlaneRegistry, DataPlaneStatus,
    RegistrationLimits,
};
pub use tls::{TLS_RELOAD_INTERVAL, TlsError, TlsFiles};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use modelgw_model::ConfigVersion;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::Instrument as _;

use crate::{Store, StoreError};
use publisher::{Publisher, log_publish};

/// Handle the admin API uses to say "configuration committed at this version": the publisher
/// reloads and pushes at once. Cheap to clone.
#[derive(Clone)]
pub struct ConfigChanges {
    /// Highest version announced so far; a `watch` coalesces bursts into one reload.
    requested: Arc<watch::Sender<ConfigVersion>>,
}

impl ConfigChanges {
    pub fn committed(&self, version: ConfigVersion) {
        let raised = self.requested.send_if_modified(|highest| {
            if version > *highest {
                *highest = version;
                true
            } else {
                false
            }
        });
        tracing::debug!(config_version = %version, reload_requested = raised, "config change announced");
    }
}

/// The smallest poll interval honoured: guards the database against a misconfigured `0`.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The running distribution: publisher task, registry and the gRPC service factory.
pub struct Distribution {
    snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
    changes: ConfigChanges,
    registry: DataPlaneRegistry,
    /// For the final health flush at shutdown.
    store: Store,
    /// Where streams hand request traces to the trace writer.
    traces: traces::TraceIntake,
    /// Publisher, health writer, health pruner, key usage pruner, trace writer, trace
    /// retention, fleet quota push.
    _tasks: [AbortOnDrop; 7],
    /// PostgreSQL: the listener for other replicas' changes (`notify.rs`).
    _listener: Option<AbortOnDrop>,
}

impl std::fmt::Debug for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distribution")
            .field("current_version", &self.current_version())
            .finish_non_exhaustive()
    }
}

/// How distribution behaves; [`Default`] gives the production defaults.
#[derive(Clone, Copy, Debug)]
pub struct DistributionSettings {
    /// How often the store is checked for changes made through other replicas (at least
    /// [`MIN_POLL_INTERVAL`]).
    pub poll_interval: Duration,
    /// The longest window one health report can hold an endpoint out of the fleet.
    pub max_health_window: Duration,
    /// How long quota reports count and how often the fleet quota is pushed.
    pub quota_sharing: QuotaSharingSettings,
}

impl Default for DistributionSettings {
    fn default() -> Self {
        DistributionSettings {
            poll_interval: Duration::from_secs(1),
            max_health_window: DEFAULT_MAX_HEALTH_WINDOW,
            quota_sharing: QuotaSharingSettings::default(),
        }
    }
}

impl Distribution {
    /// Loads the current snapshot and spawns the publisher, which reloads on
    /// [`ConfigChanges::committed`] and checks the store's version every poll interval for
    /// changes made by other replicas.
    pub async fn start(
        store: Store,
        settings: DistributionSettings,
    ) -> Result<Distribution, StoreError> {
        let DistributionSettings { poll_interval, max_health_window, quota_sharing } = settings;
        let started = Instant::now();
        let snapshot = store.load_snapshot().await?;
        let version = snapshot.version;
        let published = Arc::new(PublishedSnapshot::new(snapshot));
        let build = started.elapsed();
        store.metrics().snapshot_published(build);
        log_publish(&published, build);
        let (snapshot_tx, snapshots) = watch::channel(published);
        let (requested_tx, requested_rx) = watch::channel(version);
        let persist = Arc::new(health::PendingWrites::default());
        let registry = DataPlaneRegistry::persisting(persist.clone(), max_health_window);
        registry.retain_stats(&snapshots.borrow());
        // What the fleet reported before this process started (or to other replicas).
        registry.merge_stored(store.load_endpoint_health().await?);
        registry.merge_resets(store.load_health_resets().await?);
        let writer = tokio::spawn(
            persist.run_writer(store.clone()).instrument(tracing::info_span!("health_writer")),
        );
        let pruner = tokio::spawn(
            prune_health(store.clone(), registry.clone())
                .instrument(tracing::info_span!("health_pruner")),
        );
        let usage_pruner = tokio::spawn(
            prune_key_usage(store.clone()).instrument(tracing::info_span!("key_usage_pruner")),
        );
        let check = Arc::new(tokio::sync::Notify::new());
        let changes = ConfigChanges { requested: Arc::new(requested_tx) };
        let listener = store.listen_url().map(|url| {
            AbortOnDrop(tokio::spawn(
                notify::listen(Arc::from(url), changes.clone(), check.clone())
                    .instrument(tracing::info_span!("change_listener")),
            ))
        });
        let publisher = Publisher {
            store: store.clone(),
            registry: registry.clone(),
            snapshots: snapshot_tx,
            requested: requested_rx,
            poll_interval: poll_interval.max(MIN_POLL_INTERVAL),
            check,
            metrics: store.metrics().clone(),
        };
        let task =
            tokio::spawn(publisher.run().instrument(tracing::info_span!("config_publisher")));
        let quota_push = tokio::spawn(
            quota::push_fleet_quota(registry.quota.clone(), snapshots.clone(), quota_sharing)
                .instrument(tracing::info_span!("fleet_quota")),
        );
        let (trace_intake, trace_writer) = traces::start_writer(store.clone());
        let retention = tokio::spawn(
            traces::retain(store.clone()).instrument(tracing::info_span!("trace_retention")),
        );
        Ok(Distribution {
            snapshots,
            changes,
            registry,
            store,
            traces: trace_intake,
            _tasks: [
                AbortOnDrop(task),
                AbortOnDrop(writer),
                AbortOnDrop(pruner),
                AbortOnDrop(trace_writer),
                AbortOnDrop(retention),
                AbortOnDrop(usage_pruner),
                AbortOnDrop(quota_push),
            ],
            _listener: listener,
        })
    }

    pub fn changes(&self) -> ConfigChanges {
        self.changes.clone()
    }

    pub fn registry(&self) -> DataPlaneRegistry {
        self.registry.clone()
    }

    /// The version of the snapshot currently being distributed.
    pub fn current_version(&self) -> ConfigVersion {
        self.snapshots.borrow().version()
    }

    /// The control plane's Prometheus metrics for a `/metrics` scrape: the event instruments
    /// ([`ControlPlaneMetrics`], from the store) and, read at scrape time, the published
    /// version and the registry's data planes:
    /// - `modelgw_config_version`: the version being distributed;
    /// - `modelgw_connected_data_planes`: data planes with an open stream;
    /// - `modelgw_data_planes_current`: those of them that applied that version.
    ///
    /// Build it once; it is encoded at each scrape.
    pub fn metrics_registry(&self) -> prometheus_client::registry::Registry {
        let mut registry = prometheus_client::registry::Registry::default();
        self.store.metrics().register(&mut registry);
        registry.register_collector(Box::new(DistributionGauges {
            snapshots: self.snapshots.clone(),
            registry: self.registry.clone(),
        }));
        registry
    }

    /// The published snapshot (always the newest version), for in-process consumers and
    /// tests.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PublishedSnapshot>> {
        self.snapshots.clone()
    }

    /// Serves `ConfigDiscovery` on `listener`, secured and bounded by `settings`, until
    /// `shutdown` resolves. Open streams are ended with `UNAVAILABLE` at shutdown (otherwise
    /// the server would wait for them forever), and data planes reconnect elsewhere or later.
    /// Health reports not yet persisted, and request traces still queued, are written before
    /// it returns (for at most [`HEALTH_FLUSH_TIMEOUT`] each).
    pub async fn serve_grpc(
        &self,
        listener: tokio::net::TcpListener,
        settings: GrpcSettings,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GrpcServeError> {
        let served = grpc::serve(
            self.snapshots.clone(),
            self.registry.clone(),
            self.store.clone(),
            self.traces.clone(),
            listener,
            settings,
            shutdown,
        )
        .await;
        if let Some(persist) = &self.registry.persist {
            persist.flush(&self.store, HEALTH_FLUSH_TIMEOUT).await;
        }
        self.traces.flush(HEALTH_FLUSH_TIMEOUT).await;
        served
    }
}

/// Forgets old health reports every [`HEALTH_PRUNE_INTERVAL`], in memory and in the store.
async fn prune_health(store: Store, registry: DataPlaneRegistry) {
    let mut ticker = tokio::time::interval(HEALTH_PRUNE_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let retention =
        chrono::Duration::from_std(HEALTH_RETENTION).unwrap_or(chrono::Duration::days(1));
    loop {
        ticker.tick().await;
        let cutoff = Utc::now() - retention;
        registry.prune_health(cutoff);
        match store.prune_endpoint_health(cutoff).await {
            Ok(rows) => tracing::debug!(rows, "old endpoint health pruned"),
            Err(e) => {
                tracing::warn!(error = %e, "pruning endpoint health failed; retrying at the next interval")
            }
        }
    }
}

/// How often key usage history past its retention (`store::USAGE_RETENTION`) and leases of
/// ended windows are deleted: minute rows pile up at one per key, instance and minute, so
/// hourly pruning keeps at most an hour more than a day of them.
pub const USAGE_PRUNE_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Prunes key usage and leases every [`USAGE_PRUNE_INTERVAL`] (replicas may all do it: the
/// deletes are idempotent).
async fn prune_key_usage(store: Store) {
    let mut ticker = tokio::time::interval(USAGE_PRUNE_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match store.prune_key_usage(Utc::now()).await {
            Ok(rows) => tracing::debug!(rows, "old key usage and leases pruned"),
            Err(e) => {
                tracing::warn!(error = %e, "pruning key usage failed; retrying at the next interval")
            }
        }
    }
}

/// The gauges of [`Distribution::metrics_registry`], read from the published snapshot and the
/// registry at each scrape (no copy of either is kept in sync).
struct DistributionGauges {
    snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
    registry: DataPlaneRegistry,
}

impl std::fmt::Debug for DistributionGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributionGauges").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for DistributionGauges {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::gauge::ConstGauge;
        let version = self.snapshots.borrow().version();
        let (connected, current) = self.registry.connection_counts(version);
        let gauges = [
            (
                "modelgw_config_version",
                "The configuration version this control plane distributes",
                version.0,
            ),
            (
                "modelgw_connected_data_planes",
                "Data planes with an open configuration stream to this control plane",
                connected as u64,
            ),
            (
                "modelgw_data_planes_current",
                "Connected data planes that applied the version this control plane distributes",
                current as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Aborts a background task when the `Distribution` goes away.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
