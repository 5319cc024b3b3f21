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

mod grpc;
mod health;

pub use health::{
    DataPlaneHealth, EndpointHealthView, HEALTH_FLUSH_TIMEOUT, HEALTH_PRUNE_INTERVAL,
    HEALTH_RETENTION, LastError, UNTIMED_REPORT_WINDOW,
};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use modelgw_model::protocol::{EndpointHealth, FleetHealth};
use modelgw_model::{ConfigVersion, EndpointId, EndpointState, NodeId, Snapshot};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::Instrument as _;

use crate::{Store, StoreError};

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

/// What operators see of one data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPlaneStatus {
    pub node_id: NodeId,
    pub applied_version: ConfigVersion,
    pub connected: bool,
    pub last_seen: DateTime<Utc>,
    /// Reason of the last NACK, if the last snapshot sent was rejected.
    pub last_nack: Option<String>,
}

/// Registry of data planes. Cheap to clone.
///
/// Semantics:
/// - One entry per node id, kept after disconnect (`connected = false`) for operators.
/// - A second stream with the same node id takes over the entry; the older stream is ended
///   with `ABORTED`, so two processes that share a node id show up as a flapping connection
///   in the logs rather than as silently mixed state.
/// - `applied_version` comes from `Hello`, then from each `Ack` (which also clears
///   `last_nack`) and `Heartbeat`; every message refreshes `last_seen`.
/// - Endpoint health keeps the latest report per (endpoint, data plane) and aggregates them
///   into a fleet state (rules in [`health`]); reports naming endpoints outside the current
///   snapshot are ignored, and health of endpoints that leave the configuration is forgotten
///   when the next snapshot publishes.
/// - Whenever the fleet aggregate changes, the new `FleetHealth` is published to every stream
///   (a `watch`, so a burst of reports coalesces and nothing is sent when nothing changed).
/// - With a store attached (by [`Distribution::start`]) each report is also persisted by a
///   background writer, after the push; health is never configuration and never bumps the
///   version.
#[derive(Clone)]
pub struct DataPlaneRegistry {
    inner: Arc<Mutex<RegistryInner>>,
    fleet: Arc<watch::Sender<Arc<FleetHealth>>>,
    persist: Option<Arc<health::PendingWrites>>,
}

impl Default for DataPlaneRegistry {
    fn default() -> Self {
        let (fleet, _) = watch::channel(Arc::new(FleetHealth::default()));
        DataPlaneRegistry { inner: Arc::default(), fleet: Arc::new(fleet), persist: None }
    }
}

#[derive(Default)]
struct RegistryInner {
    nodes: BTreeMap<NodeId, NodeEntry>,
    /// Latest report per endpoint and data plane.
    health: HashMap<EndpointId, BTreeMap<NodeId, health::NodeReport>>,
    next_connection: u64,
}

struct NodeEntry {
    status: DataPlaneStatus,
    /// The stream that currently owns this entry.
    connection: ConnectionId,
    /// Woken when a newer stream with the same node id takes over.
    replaced: Arc<Notify>,
}

/// Identifies one gRPC stream within this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectionId(u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl DataPlaneRegistry {
    /// All data planes ever seen by this control plane process, sorted by node id.
    pub fn data_planes(&self) -> Vec<DataPlaneStatus> {
        self.lock().nodes.values().map(|n| n.status.clone()).collect()
    }

    /// Fleet health of an endpoint; `Healthy` with no reason when nothing was reported.
    /// After every window has passed, the last failure's reason and reporter are kept (so
    /// operators can see what happened) but `until` is cleared.
    pub fn endpoint_health(&self, id: EndpointId) -> EndpointHealthView {
        match self.lock().health.get(&id) {
            Some(reports) => health::aggregate(reports, Utc::now()),
            None => EndpointHealthView::healthy(),
        }
    }

    /// The fleet health data planes are sent: every endpoint unavailable somewhere. The
    /// receiver sees each change; for in-process consumers and tests.
    pub fn subscribe_fleet_health(&self) -> watch::Receiver<Arc<FleetHealth>> {
        self.fleet.subscribe()
    }

    /// Recomputes the fleet aggregate and publishes it if it changed. Called inside the
    /// caller's critical section, so publishes happen in the order of the changes.
    fn publish_fleet(&self, inner: &RegistryInner) {
        let message = health::fleet_health(&inner.health, Utc::now());
        let mut message = Some(message);
        let changed = self.fleet.send_if_modified(|current| {
            if message.as_ref().is_some_and(|m| m != current.as_ref())
                && let Some(m) = message.take()
            {
                *current = Arc::new(m);
                true
            } else {
                false
            }
        });
        if changed {
            let unavailable = self.fleet.borrow().endpoints.len();
            tracing::info!(unavailable, "fleet health changed; pushing to every data plane");
        }
    }

    fn lock(&self) -> MutexGuard<'_, RegistryInner> {
        // Every critical section leaves the maps consistent, so a panic elsewhere while the
        // lock was held does not make the data unusable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a stream after its `Hello`, taking over any older stream of the same node.
    pub(crate) fn connect(
        &self,
        node_id: &NodeId,
        applied_version: ConfigVersion,
    ) -> (ConnectionId, Arc<Notify>) {
        let mut inner = self.lock();
        inner.next_connection += 1;
        let connection = ConnectionId(inner.next_connection);
        let replaced = Arc::new(Notify::new());
        let entry = NodeEntry {
            status: DataPlaneStatus {
                node_id: node_id.clone(),
                applied_version,
                connected: true,
                last_seen: Utc::now(),
                last_nack: None,
            },
            connection,
            replaced: replaced.clone(),
        };
        if let Some(old) = inner.nodes.insert(node_id.clone(), entry)
            && old.status.connected
        {
            // `notify_one` stores a permit, so the old stream sees it even if it is not
            // waiting at this instant.
            old.replaced.notify_one();
            tracing::warn!(node_id = %node_id, old_connection = %old.connection, new_connection = %connection, "a second stream with the same node id replaces the first");
        }
        (connection, replaced)
    }

    /// Applies `f` to the node's status if `connection` still owns the entry; also marks
    /// the node seen now. Returns false when a newer stream has taken over.
    pub(crate) fn update(
        &self,
        node_id: &NodeId,
        connection: ConnectionId,
        f: impl FnOnce(&mut DataPlaneStatus),
    ) -> bool {
        let mut inner = self.lock();
        match inner.nodes.get_mut(node_id) {
            Some(entry) if entry.connection == connection => {
                entry.status.last_seen = Utc::now();
                f(&mut entry.status);
                true
            }
            _ => false,
        }
    }

    /// Marks the node disconnected, unless a newer stream owns the entry.
    pub(crate) fn disconnect(&self, node_id: &NodeId, connection: ConnectionId) {
        self.update(node_id, connection, |s| s.connected = false);
    }

    /// Records a data plane's report, pushes the fleet aggregate if it changed, then queues
    /// the report for persistence (in that order: the push must not wait on the database).
    pub(crate) fn report_health(&self, node_id: &NodeId, updates: Vec<EndpointHealth>) {
        let now = Utc::now();
        let mut written = Vec::with_capacity(updates.len());
        {
            let mut inner = self.lock();
            for u in updates {
                let reports = inner.health.entry(u.endpoint_id).or_default();
                let previous_error = reports.get(node_id).and_then(|r| r.last_error.clone());
                let last_error = if u.state == EndpointState::Healthy {
                    previous_error
                } else {
                    let reason = u.reason.clone().unwrap_or_else(|| u.state.as_str().to_owned());
                    Some((reason, now))
                };
                let report = health::NodeReport {
                    state: u.state,
                    until: u.until.map(DateTime::<Utc>::from),
                    reason: u.reason,
                    last_error,
                    updated_at: now,
                };
                written.push(report.to_record(u.endpoint_id, node_id));
                reports.insert(node_id.clone(), report);
            }
            self.publish_fleet(&inner);
        }
        if let Some(persist) = &self.persist {
            for record in written {
                persist.push(record);
            }
        }
    }

    /// Merges reports read from the store (at start, and from other replicas on each poll):
    /// a stored report replaces ours only when it is newer.
    pub(crate) fn merge_stored(&self, records: Vec<crate::store::EndpointHealthRecord>) {
        let mut inner = self.lock();
        for record in records {
            let (endpoint_id, node_id, report) = health::NodeReport::from_record(record);
            let reports = inner.health.entry(endpoint_id).or_default();
            if reports.get(&node_id).is_none_or(|r| r.updated_at < report.updated_at) {
                reports.insert(node_id, report);
            }
        }
        self.publish_fleet(&inner);
    }

    /// Forgets reports received before `cutoff` whose windows also ended before it.
    pub(crate) fn prune_health(&self, cutoff: DateTime<Utc>) {
        let mut inner = self.lock();
        for reports in inner.health.values_mut() {
            reports.retain(|_, r| !r.expired(cutoff));
        }
        inner.health.retain(|_, reports| !reports.is_empty());
        self.publish_fleet(&inner);
    }

    /// Forgets health of endpoints that are no longer configured.
    fn retain_health(&self, published: &PublishedSnapshot) {
        let mut inner = self.lock();
        inner.health.retain(|id, _| published.contains_endpoint(*id));
        self.publish_fleet(&inner);
    }
}

/// A snapshot as it is distributed: the validated domain value, the set of its endpoint ids
/// (health reports are checked against it in O(1)), and its protobuf encoding, made once per
/// version and shared by every stream.
#[derive(Debug)]
pub struct PublishedSnapshot {
    snapshot: Arc<Snapshot>,
    endpoint_ids: HashSet<EndpointId>,
    encoded: Bytes,
}

impl PublishedSnapshot {
    /// Indexes and encodes `snapshot` (once per version).
    pub fn new(snapshot: Snapshot) -> PublishedSnapshot {
        let endpoint_ids = snapshot.endpoints.iter().map(|e| e.id).collect();
        let encoded = modelgw_model::wire::encode_snapshot(&snapshot);
        PublishedSnapshot { snapshot: Arc::new(snapshot), endpoint_ids, encoded }
    }

    pub fn version(&self) -> ConfigVersion {
        self.snapshot.version
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    pub fn contains_endpoint(&self, id: EndpointId) -> bool {
        self.endpoint_ids.contains(&id)
    }

    /// The protobuf encoding of the `Snapshot` message (shared, reference-counted).
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
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
    /// Publisher, health writer, health pruner.
    _tasks: [AbortOnDrop; 3],
}

impl std::fmt::Debug for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distribution")
            .field("current_version", &self.current_version())
            .finish_non_exhaustive()
    }
}

impl Distribution {
    /// Loads the current snapshot and spawns the publisher, which reloads on
    /// [`ConfigChanges::committed`] and checks the store's version every `poll_interval`
    /// (at least [`MIN_POLL_INTERVAL`]) for changes made by other replicas.
    pub async fn start(store: Store, poll_interval: Duration) -> Result<Distribution, StoreError> {
        let started = Instant::now();
        let snapshot = store.load_snapshot().await?;
        let version = snapshot.version;
        let published = Arc::new(PublishedSnapshot::new(snapshot));
        log_publish(&published, started.elapsed());
        let (snapshot_tx, snapshots) = watch::channel(published);
        let (requested_tx, requested_rx) = watch::channel(version);
        let persist = Arc::new(health::PendingWrites::default());
        let registry = DataPlaneRegistry { persist: Some(persist.clone()), ..Default::default() };
        // What the fleet reported before this process started (or to other replicas).
        registry.merge_stored(store.load_endpoint_health().await?);
        let writer = tokio::spawn(
            persist.run_writer(store.clone()).instrument(tracing::info_span!("health_writer")),
        );
        let pruner = tokio::spawn(
            prune_health(store.clone(), registry.clone())
                .instrument(tracing::info_span!("health_pruner")),
        );
        let publisher = Publisher {
            store: store.clone(),
            registry: registry.clone(),
            snapshots: snapshot_tx,
            requested: requested_rx,
            poll_interval: poll_interval.max(MIN_POLL_INTERVAL),
        };
        let task =
            tokio::spawn(publisher.run().instrument(tracing::info_span!("config_publisher")));
        Ok(Distribution {
            snapshots,
            changes: ConfigChanges { requested: Arc::new(requested_tx) },
            registry,
            store,
            _tasks: [AbortOnDrop(task), AbortOnDrop(writer), AbortOnDrop(pruner)],
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

    /// The published snapshot (always the newest version), for in-process consumers and
    /// tests.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PublishedSnapshot>> {
        self.snapshots.clone()
    }

    /// Serves `ConfigDiscovery` on `listener` until `shutdown` resolves. Open streams are
    /// ended with `UNAVAILABLE` at shutdown (otherwise the server would wait for them
    /// forever), and data planes reconnect elsewhere or later. Health reports not yet
    /// persisted are written before it returns (for at most [`HEALTH_FLUSH_TIMEOUT`]).
    pub async fn serve_grpc(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let served =
            grpc::serve(self.snapshots.clone(), self.registry.clone(), listener, shutdown).await;
        if let Some(persist) = &self.registry.persist {
            persist.flush(&self.store, HEALTH_FLUSH_TIMEOUT).await;
        }
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

/// Aborts a background task when the `Distribution` goes away.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Publisher {
    store: Store,
    registry: DataPlaneRegistry,
    snapshots: watch::Sender<Arc<PublishedSnapshot>>,
    requested: watch::Receiver<ConfigVersion>,
    poll_interval: Duration,
}

impl Publisher {
    async fn run(mut self) {
        let start = tokio::time::Instant::now() + self.poll_interval;
        let mut ticker = tokio::time::interval_at(start, self.poll_interval);
        // After a stall, one check is enough: ticks carry no data.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let announced = tokio::select! {
                changed = self.requested.changed() => {
                    if changed.is_err() {
                        return; // every ConfigChanges handle is gone: nothing will announce
                    }
                    Some(*self.requested.borrow_and_update())
                }
                _ = ticker.tick() => {
                    // Reports other replicas received (their data planes are not ours).
                    match self.store.load_endpoint_health().await {
                        Ok(records) => self.registry.merge_stored(records),
                        Err(e) => tracing::warn!(error = %e, "endpoint health poll failed; retrying at the next tick"),
                    }
                    None
                }
            };
            let current = self.current();
            match announced {
                Some(v) if v <= current => continue,
                Some(_) => {}
                // The cheap version check first; a full load only when something changed.
                None => match self.store.config_version().await {
                    Ok(v) if v > current => {
                        tracing::debug!(config_version = %v, "poll found a newer version");
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "config version poll failed; retrying at the next tick");
                        continue;
                    }
                },
            }
            // A failed load is retried by the next poll tick, which sees the version still ahead.
            let started = Instant::now();
            match self.store.load_snapshot().await {
                Ok(snapshot) => self.publish(snapshot, started),
                Err(e) => {
                    tracing::warn!(error = %e, "loading the snapshot failed; retrying at the next poll tick");
                }
            }
        }
    }

    fn current(&self) -> ConfigVersion {
        self.snapshots.borrow().version()
    }

    /// Swaps in `snapshot` for every stream unless a newer one is already out; `started` is
    /// when its load from the store began (logged as the build time: load, validation,
    /// indexing and encoding).
    fn publish(&self, snapshot: Snapshot, started: Instant) {
        let version = snapshot.version;
        // Loads can finish out of order with concurrent writers: never encode (let alone
        // publish) a version streams already have or have passed.
        if version <= self.current() {
            return;
        }
        let mut fresh = Some(Arc::new(PublishedSnapshot::new(snapshot)));
        let published = self.snapshots.send_if_modified(|current| {
            if version > current.version()
                && let Some(p) = fresh.take()
            {
                *current = p;
                true
            } else {
                false
            }
        });
        if published {
            let current = self.snapshots.borrow().clone();
            self.registry.retain_health(&current);
            log_publish(&current, started.elapsed());
        }
    }
}

/// Logs a publish with its build time (store load, validation, wire encoding) and encoded
/// size. A snapshot that breaks a rule never gets here: the store's load refuses it.
fn log_publish(published: &PublishedSnapshot, build: Duration) {
    tracing::info!(
        config_version = published.version().0,
        endpoints = published.snapshot.endpoints.len(),
        gateways = published.snapshot.gateways.len(),
        bytes = published.encoded.len(),
        build_us = build.as_micros() as u64,
        "snapshot published"
    );
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId(s.to_owned())
    }

    #[test]
    fn an_expired_window_reads_as_healthy_and_keeps_the_reason() {
        let registry = DataPlaneRegistry::default();
        let (past, future) = (EndpointId::new(), EndpointId::new());
        registry.report_health(
            &node("dp-1"),
            vec![
                EndpointHealth {
                    endpoint_id: past,
                    state: EndpointState::Throttling,
                    reason: Some("429".into()),
                    until: Some(SystemTime::now() - Duration::from_secs(1)),
                },
                EndpointHealth {
                    endpoint_id: future,
                    state: EndpointState::Error,
                    reason: Some("503".into()),
                    until: Some(SystemTime::now() + Duration::from_secs(60)),
                },
            ],
        );
        let view = registry.endpoint_health(past);
        assert_eq!(view.state, EndpointState::Healthy);
        assert_eq!(view.reason.as_deref(), Some("429"));
        assert_eq!(view.until, None);
        assert_eq!(registry.endpoint_health(future).state, EndpointState::Error);
        assert_eq!(registry.endpoint_health(EndpointId::new()), EndpointHealthView::healthy());
    }

    #[test]
    fn fleet_health_is_published_only_when_the_aggregate_changes() {
        let registry = DataPlaneRegistry::default();
        let mut fleet = registry.subscribe_fleet_health();
        let id = EndpointId::new();
        let until = Some(SystemTime::now() + Duration::from_secs(60));
        let throttle = |name: &str| {
            registry.report_health(
                &node(name),
                vec![EndpointHealth {
                    endpoint_id: id,
                    state: EndpointState::Throttling,
                    reason: Some("429".into()),
                    until,
                }],
            );
        };
        throttle("dp-1");
        assert!(fleet.has_changed().expect("open"));
        let seen = fleet.borrow_and_update().clone();
        assert_eq!(seen.endpoints.len(), 1);
        assert_eq!(seen.endpoints[0].endpoint_id, id);
        // The same window from the same or another data plane changes nothing.
        throttle("dp-1");
        throttle("dp-2");
        assert!(!fleet.has_changed().expect("open"), "a repeat is not pushed");
        // dp-1 recovering leaves dp-2's window: still nothing to push.
        registry.report_health(
            &node("dp-1"),
            vec![EndpointHealth {
                endpoint_id: id,
                state: EndpointState::Healthy,
                reason: None,
                until: None,
            }],
        );
        assert!(!fleet.has_changed().expect("open"));
        let empty = Snapshot::new(ConfigVersion(1), vec![], vec![]).expect("valid");
        registry.retain_health(&PublishedSnapshot::new(empty));
        assert!(fleet.has_changed().expect("open"), "a removed endpoint is pushed");
        assert!(fleet.borrow_and_update().endpoints.is_empty());
    }

    #[test]
    fn a_newer_stream_owns_the_entry_and_the_old_one_cannot_update_it() {
        let registry = DataPlaneRegistry::default();
        let n = node("dp-1");
        let (first, _) = registry.connect(&n, ConfigVersion(1));
        let (second, _) = registry.connect(&n, ConfigVersion(2));
        assert!(!registry.update(&n, first, |s| s.applied_version = ConfigVersion(9)));
        registry.disconnect(&n, first);
        let status = &registry.data_planes()[0];
        assert!(status.connected);
        assert_eq!(status.applied_version, ConfigVersion(2));
        registry.disconnect(&n, second);
        assert!(!registry.data_planes()[0].connected);
    }

    #[test]
    fn data_planes_are_sorted_by_node_id() {
        let registry = DataPlaneRegistry::default();
        for n in ["c", "a", "b"] {
            registry.connect(&node(n), ConfigVersion(0));
        }
        let ids: Vec<String> = registry.data_planes().into_iter().map(|s| s.node_id.0).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }
}
