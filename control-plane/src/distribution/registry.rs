//! The registry of data planes: who is connected, what each applied, and what each reported
//! about endpoint health (aggregated into the fleet view pushed to every data plane) and
//! about its quota spend (summed in [`quota`](super::quota)).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use modelgw_model::protocol::{EndpointHealth, FleetHealth, StatsReport};
use modelgw_model::quota::QuotaReport;
use modelgw_model::{ConfigVersion, EndpointId, EndpointState, NodeId};
use tokio::sync::{Notify, watch};

use super::PublishedSnapshot;
use super::admission::{Owner, Peer};
use super::health::{self, EndpointHealthView};
use super::join_tokens::JoinTokens;
use super::quota::{PublishedFleetQuota, QuotaSharing, Recorded, RejectedReport};
use super::stats::StatsWindow;

/// Data planes the registry holds at most unless the operator sets a bound
/// (`MODELGW_MAX_DATA_PLANES`): far above any real fleet of one control plane, low enough that
/// `/api/v1/status` and the registry's memory stay small whatever connects.
pub const DEFAULT_MAX_DATA_PLANES: usize = 1_000;

/// How long a disconnected data plane stays in the registry (and `/api/v1/status`) unless the
/// operator sets it (`MODELGW_DATA_PLANE_RETENTION`): long enough to see a replica that went
/// away in the last incident or rollout, short enough that churned pod names do not pile up.
pub const DEFAULT_DATA_PLANE_RETENTION: Duration = Duration::from_secs(15 * 60);

/// Bounds on node registrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistrationLimits {
    /// Most entries (connected or not) at once; see [`DEFAULT_MAX_DATA_PLANES`].
    pub max_data_planes: usize,
    /// How long a disconnected entry is kept; see [`DEFAULT_DATA_PLANE_RETENTION`].
    pub retention: Duration,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        RegistrationLimits {
            max_data_planes: DEFAULT_MAX_DATA_PLANES,
            retention: DEFAULT_DATA_PLANE_RETENTION,
        }
    }
}

/// Why a registration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegistrationRefused {
    #[error("the registry holds its maximum of {max} connected data planes")]
    RegistryFull { max: usize },
    #[error("token {token:?} already has its maximum of {max} connected data planes")]
    TokenFull { token: String, max: u32 },
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
/// - One entry per node id, kept after disconnect (`connected = false`) for operators for
///   [`RegistrationLimits::retention`], then dropped.
/// - Bounded: at most [`RegistrationLimits::max_data_planes`] entries, and at most a token's
///   `max_data_planes` entries registered with that token. A new node id beyond a bound first
///   pushes out the oldest disconnected entry it counts against; with none, it is refused.
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
    pub(super) persist: Option<Arc<health::PendingWrites>>,
    /// The longest window a report may claim, from its reception (see [`health`]).
    max_health_window: Duration,
    /// The join tokens data planes may present (kept fresh while the gRPC port serves).
    pub(super) tokens: JoinTokens,
    /// Traffic statistics every data plane reports, for the Admin Console.
    stats: StatsWindow,
    /// Quota spend every data plane reports, summed into the fleet view pushed back.
    pub(super) quota: QuotaSharing,
}

impl Default for DataPlaneRegistry {
    fn default() -> Self {
        let (fleet, _) = watch::channel(Arc::new(FleetHealth::default()));
        DataPlaneRegistry {
            inner: Arc::default(),
            fleet: Arc::new(fleet),
            persist: None,
            max_health_window: health::DEFAULT_MAX_HEALTH_WINDOW,
            tokens: JoinTokens::default(),
            stats: StatsWindow::default(),
            quota: QuotaSharing::default(),
        }
    }
}

#[derive(Default)]
struct RegistryInner {
    nodes: BTreeMap<NodeId, NodeEntry>,
    /// Latest report per endpoint and data plane.
    health: HashMap<EndpointId, BTreeMap<NodeId, health::NodeReport>>,
    /// The latest operator reset per endpoint: reports received up to it do not count.
    resets: HashMap<EndpointId, DateTime<Utc>>,
    next_connection: u64,
    limits: RegistrationLimits,
}

struct NodeEntry {
    status: DataPlaneStatus,
    /// The stream that currently owns this entry.
    connection: ConnectionId,
    /// Woken when a newer stream with the same node id takes over.
    replaced: Arc<Notify>,
    /// How the stream that registered it authenticated.
    owner: Owner,
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
    /// A registry whose health reports are also queued for `persist`'s writer.
    pub(super) fn persisting(
        persist: Arc<health::PendingWrites>,
        max_health_window: Duration,
    ) -> Self {
        DataPlaneRegistry { persist: Some(persist), ..Default::default() }
            .with_max_health_window(max_health_window)
    }

    /// Caps every reported window at `max` from its reception (default
    /// [`health::DEFAULT_MAX_HEALTH_WINDOW`]).
    pub fn with_max_health_window(mut self, max: Duration) -> Self {
        self.max_health_window = max;
        self
    }

    /// The data planes connected now or within the retention, sorted by node id.
    pub fn data_planes(&self) -> Vec<DataPlaneStatus> {
        let mut inner = self.lock();
        inner.forget_departed(Utc::now());
        inner.nodes.values().map(|n| n.status.clone()).collect()
    }

    /// How many data planes are connected, and how many of those applied `version` (or a
    /// later one). For the metrics; copies nothing.
    pub fn connection_counts(&self, version: ConfigVersion) -> (usize, usize) {
        let inner = self.lock();
        let connected = inner.nodes.values().filter(|n| n.status.connected);
        connected.fold((0, 0), |(connected, current), n| {
            (connected + 1, current + usize::from(n.status.applied_version >= version))
        })
    }

    /// Sets the bounds on registrations (applied from the next registration on).
    pub fn set_limits(&self, limits: RegistrationLimits) {
        self.lock().limits = limits;
    }

    /// Tells distribution that a data-plane token was created or revoked: the active tokens
    /// are reloaded at once, and streams of a revoked token end.
    pub fn data_plane_tokens_changed(&self) {
        self.tokens.changed();
    }

    /// Fleet health of an endpoint; `Healthy` with no reason when nothing was reported.
    /// After every window has passed, the last failure's reason and reporter are kept (so
    /// operators can see what happened) but `until` is cleared.
    pub fn endpoint_health(&self, id: EndpointId) -> EndpointHealthView {
        let inner = self.lock();
        match inner.health.get(&id) {
            Some(reports) => health::aggregate(reports, inner.resets.get(&id).copied(), Utc::now()),
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
        let message = health::fleet_health(&inner.health, &inner.resets, Utc::now());
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
    /// A new node id must fit the bounds (see the type's docs), or it is refused.
    pub(crate) fn connect(
        &self,
        node_id: &NodeId,
        applied_version: ConfigVersion,
        peer: &Peer,
    ) -> Result<(ConnectionId, Arc<Notify>), RegistrationRefused> {
        let now = Utc::now();
        let owner = peer.owner();
        let mut inner = self.lock();
        inner.forget_departed(now);
        if !inner.nodes.contains_key(node_id) {
            if let Peer::Token(grant) = peer {
                let max = grant.max_data_planes;
                let held = inner.nodes.values().filter(|n| n.owner == owner).count();
                if held >= max as usize && !inner.evict_oldest_disconnected(|n| n.owner == owner) {
                    return Err(RegistrationRefused::TokenFull { token: grant.name.clone(), max });
                }
            }
            let max = inner.limits.max_data_planes;
            if inner.nodes.len() >= max && !inner.evict_oldest_disconnected(|_| true) {
                return Err(RegistrationRefused::RegistryFull { max });
            }
        }
        inner.next_connection += 1;
        let connection = ConnectionId(inner.next_connection);
        let replaced = Arc::new(Notify::new());
        let entry = NodeEntry {
            status: DataPlaneStatus {
                node_id: node_id.clone(),
                applied_version,
                connected: true,
                last_seen: now,
                last_nack: None,
            },
            connection,
            replaced: replaced.clone(),
            owner,
        };
        if let Some(old) = inner.nodes.insert(node_id.clone(), entry)
            && old.status.connected
        {
            // `notify_one` stores a permit, so the old stream sees it even if it is not
            // waiting at this instant.
            old.replaced.notify_one();
            tracing::warn!(node_id = %node_id, old_connection = %old.connection, new_connection = %connection, "a second stream with the same node id replaces the first");
        }
        Ok((connection, replaced))
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
                let mut report = health::NodeReport {
                    state: u.state,
                    until: u.until.map(DateTime::<Utc>::from),
                    reason: u.reason,
                    last_error,
                    updated_at: now,
                };
                if report.cap_window(self.max_health_window) {
                    tracing::warn!(
                        node_id = %node_id,
                        endpoint_id = %u.endpoint_id,
                        claimed_until = ?u.until.map(DateTime::<Utc>::from),
                        max_window_s = self.max_health_window.as_secs(),
                        "reported health window longer than the maximum; capped"
                    );
                }
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
            let (endpoint_id, node_id, mut report) = health::NodeReport::from_record(record);
            // Rows written before the cap existed, or by a replica configured with a longer one.
            report.cap_window(self.max_health_window);
            let reports = inner.health.entry(endpoint_id).or_default();
            if reports.get(&node_id).is_none_or(|r| r.updated_at < report.updated_at) {
                reports.insert(node_id, report);
            }
        }
        self.publish_fleet(&inner);
    }

    /// An operator cleared the endpoint's health at `at`: every report received up to then
    /// stops counting here and, through the next fleet push (sent at once when the aggregate
    /// changes), on every data plane, which also forget the local windows they opened before
    /// it. Returns the endpoint's health after the reset.
    pub fn reset_endpoint_health(&self, id: EndpointId, at: DateTime<Utc>) -> EndpointHealthView {
        {
            let mut inner = self.lock();
            inner.raise_reset(id, at);
            self.publish_fleet(&inner);
        }
        self.endpoint_health(id)
    }

    /// Merges resets read from the store (at start, and made through other replicas).
    pub(crate) fn merge_resets(&self, resets: Vec<(EndpointId, DateTime<Utc>)>) {
        let mut inner = self.lock();
        let mut changed = false;
        for (id, at) in resets {
            changed |= inner.raise_reset(id, at);
        }
        if changed {
            self.publish_fleet(&inner);
        }
    }

    /// Forgets reports received before `cutoff` whose windows also ended before it, and
    /// resets older than `cutoff` (no report they could clear is left).
    pub(crate) fn prune_health(&self, cutoff: DateTime<Utc>) {
        let mut inner = self.lock();
        for reports in inner.health.values_mut() {
            reports.retain(|_, r| !r.expired(cutoff));
        }
        inner.health.retain(|_, reports| !reports.is_empty());
        inner.resets.retain(|_, at| *at >= cutoff);
        self.publish_fleet(&inner);
    }

    /// The traffic statistics data planes reported (the last 24 h, per minute).
    pub fn stats(&self) -> &StatsWindow {
        &self.stats
    }

    /// Adds a data plane's statistics report to the window. Entries the decoder could not
    /// read, or about pairs and gateways outside the current configuration, are logged and
    /// left out.
    pub(crate) fn report_stats(&self, node_id: &NodeId, report: &StatsReport) {
        for skipped in &report.skipped {
            tracing::warn!(node_id = %node_id, reason = %skipped, "statistics report entry unreadable; skipped");
        }
        let recorded = self.stats.record(report);
        tracing::debug!(
            node_id = %node_id,
            routes = recorded.routes,
            gateways = recorded.gateways,
            unconfigured = recorded.unconfigured,
            "traffic statistics reported"
        );
    }

    /// Keeps the statistics of the gateways and members `published` holds, drops the rest.
    pub(super) fn retain_stats(&self, published: &PublishedSnapshot) {
        self.stats.configure(published.snapshot());
    }

    /// Records a data plane's quota report (entries about endpoints outside `published` are
    /// left out; a report with an impossible interval is ignored). The fleet view follows at
    /// the next push tick.
    pub(crate) fn report_quota(
        &self,
        node_id: &NodeId,
        report: &QuotaReport,
        published: &PublishedSnapshot,
    ) -> Result<Recorded, RejectedReport> {
        self.quota.report(node_id, report, published)
    }

    /// The fleet quota data planes are sent (at most once per push interval, when it
    /// changed); for in-process consumers and tests.
    pub fn subscribe_fleet_quota(&self) -> watch::Receiver<Arc<PublishedFleetQuota>> {
        self.quota.subscribe()
    }

    /// Forgets health of endpoints that are no longer configured.
    pub(super) fn retain_health(&self, published: &PublishedSnapshot) {
        let mut inner = self.lock();
        inner.health.retain(|id, _| published.contains_endpoint(*id));
        inner.resets.retain(|id, _| published.contains_endpoint(*id));
        self.publish_fleet(&inner);
    }
}

impl RegistryInner {
    /// Makes `at` the endpoint's reset unless a later one is held. Returns whether it changed.
    fn raise_reset(&mut self, id: EndpointId, at: DateTime<Utc>) -> bool {
        match self.resets.get_mut(&id) {
            Some(current) if *current >= at => false,
            Some(current) => {
                *current = at;
                true
            }
            None => {
                self.resets.insert(id, at);
                true
            }
        }
    }

    /// Drops the entries disconnected for longer than the retention.
    fn forget_departed(&mut self, now: DateTime<Utc>) {
        let retention =
            chrono::Duration::from_std(self.limits.retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = now.checked_sub_signed(retention).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let before = self.nodes.len();
        self.nodes.retain(|_, n| n.status.connected || n.status.last_seen >= cutoff);
        let dropped = before - self.nodes.len();
        if dropped > 0 {
            tracing::info!(
                dropped,
                retention_s = self.limits.retention.as_secs(),
                "disconnected data planes dropped from the registry"
            );
        }
    }

    /// Removes the disconnected entry with the oldest `last_seen` among those `counts`;
    /// false when every one of them is connected.
    fn evict_oldest_disconnected(&mut self, counts: impl Fn(&NodeEntry) -> bool) -> bool {
        let oldest = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.status.connected && counts(n))
            .min_by_key(|(_, n)| n.status.last_seen)
            .map(|(id, _)| id.clone());
        match oldest {
            Some(id) => {
                self.nodes.remove(&id);
                tracing::info!(node_id = %id, "disconnected data plane dropped to make room for a new one");
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use modelgw_model::Snapshot;

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
        let (first, _) =
            registry.connect(&n, ConfigVersion(1), &Peer::Unauthenticated).expect("room");
        let (second, _) =
            registry.connect(&n, ConfigVersion(2), &Peer::Unauthenticated).expect("room");
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
            registry.connect(&node(n), ConfigVersion(0), &Peer::Unauthenticated).expect("room");
        }
        let ids: Vec<String> = registry.data_planes().into_iter().map(|s| s.node_id.0).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    fn throttled_until(id: EndpointId, until: SystemTime) -> EndpointHealth {
        EndpointHealth {
            endpoint_id: id,
            state: EndpointState::Throttling,
            reason: Some("429".into()),
            until: Some(until),
        }
    }

    #[test]
    fn a_window_longer_than_the_maximum_is_capped_from_its_reception() {
        let registry =
            DataPlaneRegistry::default().with_max_health_window(Duration::from_secs(120));
        let id = EndpointId::new();
        let year_9999 = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_214_400);
        let before = Utc::now();
        registry.report_health(&node("dp-1"), vec![throttled_until(id, year_9999)]);
        let until = registry.endpoint_health(id).until.expect("a window");
        assert!(until <= Utc::now() + chrono::Duration::seconds(120), "{until}");
        assert!(until >= before + chrono::Duration::seconds(119), "{until}");
        let pushed = registry.subscribe_fleet_health().borrow().endpoints[0].until;
        assert_eq!(pushed, Some(SystemTime::from(until)), "the fleet is sent the capped window");
        // A stored row from before the cap is capped when merged.
        let mut record = crate::store::EndpointHealthRecord {
            endpoint_id: id,
            node_id: node("dp-2"),
            state: EndpointState::Error,
            until: Some(DateTime::<Utc>::from(year_9999)),
            reason: Some("503".into()),
            last_error: None,
            last_error_at: None,
            updated_at: Utc::now(),
        };
        record.endpoint_id = EndpointId::new();
        let stored = record.endpoint_id;
        registry.merge_stored(vec![record]);
        let until = registry.endpoint_health(stored).until.expect("a window");
        assert!(until <= Utc::now() + chrono::Duration::seconds(120), "{until}");
    }

    #[test]
    fn a_reset_clears_earlier_reports_everywhere_and_later_ones_count() {
        let registry = DataPlaneRegistry::default();
        let mut fleet = registry.subscribe_fleet_health();
        let (id, other) = (EndpointId::new(), EndpointId::new());
        let soon = SystemTime::now() + Duration::from_secs(60);
        registry.report_health(&node("dp-1"), vec![throttled_until(id, soon)]);
        registry.report_health(&node("dp-2"), vec![throttled_until(id, soon)]);
        registry.report_health(&node("dp-2"), vec![throttled_until(other, soon)]);
        fleet.borrow_and_update();

        let at = Utc::now();
        let view = registry.reset_endpoint_health(id, at);
        assert_eq!(view.state, EndpointState::Healthy);
        assert_eq!(view.last_error.map(|e| e.reason).as_deref(), Some("429"));
        assert!(fleet.has_changed().expect("open"), "the reset is pushed at once");
        let pushed = fleet.borrow_and_update().clone();
        let unavailable: Vec<EndpointId> = pushed.endpoints.iter().map(|e| e.endpoint_id).collect();
        assert_eq!(unavailable, [other], "only the reset endpoint is cleared");
        assert_eq!(pushed.resets.len(), 1);
        assert_eq!((pushed.resets[0].endpoint_id, pushed.resets[0].at), (id, at.into()));

        // A later report counts; an older reset merged from the store changes nothing.
        std::thread::sleep(Duration::from_millis(2));
        registry.report_health(&node("dp-1"), vec![throttled_until(id, soon)]);
        assert_eq!(registry.endpoint_health(id).state, EndpointState::Throttling);
        registry.merge_resets(vec![(id, at - chrono::Duration::seconds(1))]);
        assert_eq!(registry.endpoint_health(id).state, EndpointState::Throttling);
        // A newer reset from another replica clears it again.
        registry.merge_resets(vec![(id, Utc::now())]);
        assert_eq!(registry.endpoint_health(id).state, EndpointState::Healthy);
    }

    fn token_peer(name: &str, max: u32) -> Peer {
        Peer::Token(Arc::new(super::super::join_tokens::TokenGrant {
            id: crate::store::DataPlaneTokenId::new(),
            name: name.into(),
            max_data_planes: max,
        }))
    }

    #[test]
    fn a_token_registers_at_most_its_bound_making_room_from_its_disconnected_entries() {
        let registry = DataPlaneRegistry::default();
        let eastus = token_peer("eastus", 2);
        let other = token_peer("westus", 2);
        let (c1, _) = registry.connect(&node("eastus-1"), ConfigVersion(0), &eastus).expect("1");
        registry.connect(&node("eastus-2"), ConfigVersion(0), &eastus).expect("2");
        registry.connect(&node("westus-1"), ConfigVersion(0), &other).expect("another token");
        let refused = registry.connect(&node("eastus-3"), ConfigVersion(0), &eastus);
        assert_eq!(
            refused.err(),
            Some(RegistrationRefused::TokenFull { token: "eastus".into(), max: 2 })
        );
        // An existing node id reconnects whatever the count.
        registry.connect(&node("eastus-2"), ConfigVersion(0), &eastus).expect("reconnect");
        // A disconnected entry of the same token makes room.
        registry.disconnect(&node("eastus-1"), c1);
        registry.connect(&node("eastus-3"), ConfigVersion(0), &eastus).expect("room made");
        let ids: Vec<String> = registry.data_planes().into_iter().map(|s| s.node_id.0).collect();
        assert_eq!(ids, ["eastus-2", "eastus-3", "westus-1"]);
    }

    #[test]
    fn the_registry_is_bounded_and_forgets_departed_data_planes() {
        let registry = DataPlaneRegistry::default();
        registry.set_limits(RegistrationLimits {
            max_data_planes: 2,
            retention: Duration::from_secs(3600),
        });
        let (a, _) =
            registry.connect(&node("a"), ConfigVersion(0), &Peer::Unauthenticated).expect("a");
        registry.connect(&node("b"), ConfigVersion(0), &Peer::Unauthenticated).expect("b");
        let refused = registry.connect(&node("c"), ConfigVersion(0), &Peer::Unauthenticated);
        assert_eq!(refused.err(), Some(RegistrationRefused::RegistryFull { max: 2 }));
        registry.disconnect(&node("a"), a);
        registry.connect(&node("c"), ConfigVersion(0), &Peer::Unauthenticated).expect("room made");
        assert_eq!(registry.data_planes().len(), 2);

        registry.set_limits(RegistrationLimits {
            max_data_planes: 2,
            retention: Duration::from_secs(60),
        });
        let (c, _) =
            registry.connect(&node("c"), ConfigVersion(0), &Peer::Unauthenticated).expect("c");
        registry.disconnect(&node("c"), c);
        registry.lock().forget_departed(Utc::now() + chrono::Duration::seconds(61));
        let ids: Vec<String> = registry.data_planes().into_iter().map(|s| s.node_id.0).collect();
        assert_eq!(ids, ["b"], "a disconnected entry past the retention is gone");
    }
}
