//! Fleet-wide endpoint health: the latest report of every data plane about every endpoint,
//! aggregated into one state per endpoint, and the background writer that persists reports.
//!
//! Aggregation rules (evaluated at read time, so windows expire without a timer):
//! - a report counts while its window runs: `until` in the future, or, for an unhealthy
//!   report without `until`, [`UNTIMED_REPORT_WINDOW`] after it was received;
//! - the endpoint is `throttling` if any counting report says throttling, else `error` if any
//!   says error, else `healthy`; `until` is the latest `until` among the reports of that
//!   state, and `reason` / `reported_by` come from the report holding that `until`;
//! - reports of data planes that disconnected keep counting until their windows end: a 429
//!   seen by a replica that then died is still true of the endpoint;
//! - a window never runs longer than the registry's maximum ([`DEFAULT_MAX_HEALTH_WINDOW`])
//!   after the report was received, whatever `until` a data plane (or a stored row) claims;
//! - an operator's reset of an endpoint ([`DataPlaneRegistry::reset_endpoint_health`]) makes
//!   every report received up to that instant stop counting; later reports count again.
//!
//! [`DataPlaneRegistry::reset_endpoint_health`]: super::DataPlaneRegistry::reset_endpoint_health

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use modelgw_model::protocol::{EndpointHealth, FleetHealth, HealthReset};
use modelgw_model::{EndpointId, EndpointState, NodeId};
use tokio::sync::Notify;

use crate::Store;
use crate::store::EndpointHealthRecord;

/// How long an unhealthy report without `until` counts. Data planes normally send a window;
/// one that does not still re-reports within seconds while the failure lasts, and 30 s bounds
/// how long a lost recovery report can keep an endpoint out of the fleet's rotation.
pub const UNTIMED_REPORT_WINDOW: Duration = Duration::from_secs(30);

/// The longest window a report can hold an endpoint out of the fleet, counted from the
/// report's reception. Azure's own `Retry-After` values are seconds to about a minute; a
/// longer claim is capped, so one bad or hostile report cannot take an endpoint away for
/// long. Configurable (`MODELGW_MAX_HEALTH_WINDOW`).
pub const DEFAULT_MAX_HEALTH_WINDOW: Duration = Duration::from_secs(5 * 60);

/// How long a reset is pushed to data planes: as long as a data plane's own window can run
/// (its longest throttle window is one hour), so one that reconnects later still forgets
/// what it saw before the reset.
pub const RESET_PUSH_WINDOW: Duration = Duration::from_secs(60 * 60);

/// How long the report of a data plane is kept after both its reception and its window
/// passed: long enough for operators to see yesterday's failures (`last_error`), short
/// enough that node ids of replaced pods do not pile up.
pub const HEALTH_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How often old reports are pruned, in memory and in the store.
pub const HEALTH_PRUNE_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// How long shutdown waits to write reports still pending: long enough for one batch on a
/// healthy database, short enough not to hold up a restart when the database is down.
pub const HEALTH_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// After a failed write, the writer waits this long before retrying: the database is likely
/// down, and the rows stay pending (newest per endpoint and node) in the meantime.
pub const HEALTH_WRITE_RETRY: Duration = Duration::from_secs(2);

/// One data plane's latest report about one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeReport {
    pub state: EndpointState,
    pub until: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    /// Most recent failure this data plane reported, and when.
    pub last_error: Option<(String, DateTime<Utc>)>,
    pub updated_at: DateTime<Utc>,
}

impl NodeReport {
    /// The end of the window during which this report counts; `None` for healthy reports.
    fn window_end(&self) -> Option<DateTime<Utc>> {
        if self.state == EndpointState::Healthy {
            return None;
        }
        Some(self.until.unwrap_or_else(|| {
            self.updated_at
                + chrono::Duration::from_std(UNTIMED_REPORT_WINDOW)
                    .unwrap_or(chrono::Duration::zero())
        }))
    }

    /// The state this report stands for at `now` (healthy once its window ended).
    fn state_at(&self, now: DateTime<Utc>) -> EndpointState {
        match self.window_end() {
            Some(end) if end > now => self.state,
            _ => EndpointState::Healthy,
        }
    }

    /// Caps `until` at `max_window` after the report's reception. Returns whether it was
    /// capped.
    pub(crate) fn cap_window(&mut self, max_window: Duration) -> bool {
        let latest = self.updated_at
            + chrono::Duration::from_std(max_window).unwrap_or(chrono::Duration::MAX);
        match self.until {
            Some(until) if until > latest => {
                self.until = Some(latest);
                true
            }
            _ => false,
        }
    }

    /// The report as it counts after a reset at `reset_at`: one received up to the reset is
    /// healthy (its reason and last error stay visible).
    fn after_reset(&self, reset_at: Option<DateTime<Utc>>) -> std::borrow::Cow<'_, NodeReport> {
        match reset_at {
            Some(at) if self.updated_at <= at && self.state != EndpointState::Healthy => {
                std::borrow::Cow::Owned(NodeReport {
                    state: EndpointState::Healthy,
                    until: None,
                    ..self.clone()
                })
            }
            _ => std::borrow::Cow::Borrowed(self),
        }
    }

    pub(crate) fn to_record(
        &self,
        endpoint_id: EndpointId,
        node_id: &NodeId,
    ) -> EndpointHealthRecord {
        EndpointHealthRecord {
            endpoint_id,
            node_id: node_id.clone(),
            state: self.state,
            until: self.until,
            reason: self.reason.clone(),
            last_error: self.last_error.as_ref().map(|(r, _)| r.clone()),
            last_error_at: self.last_error.as_ref().map(|(_, at)| *at),
            updated_at: self.updated_at,
        }
    }

    pub(crate) fn from_record(r: EndpointHealthRecord) -> (EndpointId, NodeId, NodeReport) {
        let last_error = match (r.last_error, r.last_error_at) {
            (Some(reason), Some(at)) => Some((reason, at)),
            _ => None,
        };
        let report = NodeReport {
            state: r.state,
            until: r.until,
            reason: r.reason,
            last_error,
            updated_at: r.updated_at,
        };
        (r.endpoint_id, r.node_id, report)
    }

    /// Whether this report can be forgotten: received before `cutoff`, and its window (if
    /// any) also ended before it.
    pub(crate) fn expired(&self, cutoff: DateTime<Utc>) -> bool {
        self.updated_at < cutoff && self.window_end().is_none_or(|end| end < cutoff)
    }
}

/// The most recent failure any data plane reported for an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastError {
    pub reason: String,
    pub at: DateTime<Utc>,
    pub node_id: NodeId,
}

/// One data plane's view of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPlaneHealth {
    pub node_id: NodeId,
    /// `Healthy` once the reported window has passed.
    pub state: EndpointState,
    /// Until when this data plane avoids the endpoint (`None` when healthy).
    pub until: Option<DateTime<Utc>>,
    /// The reason of its latest report (kept after its window passed).
    pub reason: Option<String>,
    /// When the control plane received its latest report.
    pub updated_at: DateTime<Utc>,
}

/// Endpoint health as the fleet sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointHealthView {
    pub state: EndpointState,
    /// Why it is unavailable; when healthy, the reason of the last failure (if any).
    pub reason: Option<String>,
    /// Until when the fleet avoids it (`None` when healthy).
    pub until: Option<DateTime<Utc>>,
    /// The data plane whose report sets `state`, `until` and `reason`; when healthy, the one
    /// that reported the last failure.
    pub reported_by: Option<NodeId>,
    pub last_error: Option<LastError>,
    /// Every data plane that reported about the endpoint, sorted by node id.
    pub data_planes: Vec<DataPlaneHealth>,
}

impl EndpointHealthView {
    pub fn healthy() -> Self {
        EndpointHealthView {
            state: EndpointState::Healthy,
            reason: None,
            until: None,
            reported_by: None,
            last_error: None,
            data_planes: Vec::new(),
        }
    }
}

/// Applies the aggregation rules (module docs) to one endpoint's reports at `now`, given the
/// endpoint's last reset.
pub(crate) fn aggregate(
    reports: &BTreeMap<NodeId, NodeReport>,
    reset_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> EndpointHealthView {
    let reports: BTreeMap<&NodeId, std::borrow::Cow<'_, NodeReport>> =
        reports.iter().map(|(node, r)| (node, r.after_reset(reset_at))).collect();
    let mut view = EndpointHealthView::healthy();
    view.last_error = reports
        .iter()
        .filter_map(|(node, r)| {
            r.last_error.as_ref().map(|(reason, at)| LastError {
                reason: reason.clone(),
                at: *at,
                node_id: (*node).clone(),
            })
        })
        .max_by_key(|e| e.at);
    view.data_planes = reports
        .iter()
        .map(|(node, r)| {
            let state = r.state_at(now);
            DataPlaneHealth {
                node_id: (*node).clone(),
                state,
                until: r.window_end().filter(|_| state != EndpointState::Healthy),
                reason: r.reason.clone(),
                updated_at: r.updated_at,
            }
        })
        .collect();
    for wanted in [EndpointState::Throttling, EndpointState::Error] {
        let defining = reports
            .iter()
            .filter(|(_, r)| r.state_at(now) == wanted)
            .filter_map(|(node, r)| r.window_end().map(|end| (end, r.updated_at, node, r)))
            .max_by_key(|(end, updated, _, _)| (*end, *updated));
        if let Some((end, _, node, r)) = defining {
            view.state = wanted;
            view.until = Some(end);
            view.reason = r.reason.clone();
            view.reported_by = Some((*node).clone());
            return view;
        }
    }
    if let Some(e) = &view.last_error {
        view.reason = Some(e.reason.clone());
        view.reported_by = Some(e.node_id.clone());
    }
    view
}

/// The fleet health for `health` at `now`: every endpoint unavailable somewhere, and the
/// resets of the last [`RESET_PUSH_WINDOW`], each sorted by endpoint id so that equal states
/// compare equal.
pub(crate) fn fleet_health(
    health: &HashMap<EndpointId, BTreeMap<NodeId, NodeReport>>,
    resets: &HashMap<EndpointId, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> FleetHealth {
    let mut endpoints: Vec<EndpointHealth> = health
        .iter()
        .filter_map(|(id, reports)| {
            let view = aggregate(reports, resets.get(id).copied(), now);
            (view.state != EndpointState::Healthy).then(|| EndpointHealth {
                endpoint_id: *id,
                state: view.state,
                until: view.until.map(std::time::SystemTime::from),
                reason: view.reason,
            })
        })
        .collect();
    // UUID order is the order of their canonical text, as data planes and operators see it.
    endpoints.sort_by_key(|e| e.endpoint_id);
    let push_since = now - chrono::Duration::from_std(RESET_PUSH_WINDOW).unwrap_or_default();
    let mut resets: Vec<HealthReset> = resets
        .iter()
        .filter(|(_, at)| **at > push_since)
        .map(|(id, at)| HealthReset { endpoint_id: *id, at: std::time::SystemTime::from(*at) })
        .collect();
    resets.sort_by_key(|r| r.endpoint_id);
    FleetHealth { endpoints, resets, skipped: Vec::new() }
}

/// Reports waiting to be written: the newest per (endpoint, data plane), so the queue is
/// bounded by endpoints × data planes however fast reports arrive.
#[derive(Default)]
pub(crate) struct PendingWrites {
    rows: Mutex<HashMap<(EndpointId, NodeId), EndpointHealthRecord>>,
    wake: Notify,
}

impl PendingWrites {
    pub(crate) fn push(&self, record: EndpointHealthRecord) {
        let key = (record.endpoint_id, record.node_id.clone());
        self.rows.lock().unwrap_or_else(PoisonError::into_inner).insert(key, record);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<EndpointHealthRecord> {
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        rows.drain().map(|(_, r)| r).collect()
    }

    /// Puts back rows whose write failed, unless a newer report for the same key arrived.
    fn restore(&self, records: Vec<EndpointHealthRecord>) {
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        for r in records {
            rows.entry((r.endpoint_id, r.node_id.clone())).or_insert(r);
        }
    }

    /// Writes whatever is pending now, giving up after `timeout` (at shutdown).
    pub(crate) async fn flush(&self, store: &Store, timeout: Duration) {
        let rows = self.take();
        if rows.is_empty() {
            return;
        }
        match tokio::time::timeout(timeout, store.upsert_endpoint_health(&rows)).await {
            Ok(Ok(())) => tracing::debug!(rows = rows.len(), "pending endpoint health flushed"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, rows = rows.len(), "flushing endpoint health failed");
            }
            Err(_) => tracing::warn!(rows = rows.len(), "flushing endpoint health timed out"),
        }
    }

    /// Writes pending reports as they come, off the gRPC receive loop: a slow database
    /// delays persistence, never the fleet push.
    pub(crate) async fn run_writer(self: Arc<Self>, store: Store) {
        loop {
            self.wake.notified().await;
            let rows = self.take();
            if rows.is_empty() {
                continue;
            }
            match store.upsert_endpoint_health(&rows).await {
                Ok(()) => tracing::debug!(rows = rows.len(), "endpoint health persisted"),
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "persisting endpoint health failed; retrying");
                    self.restore(rows);
                    tokio::time::sleep(HEALTH_WRITE_RETRY).await;
                    self.wake.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset_s: i64) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(offset_s)
    }

    fn report(state: EndpointState, until: Option<i64>, reason: &str) -> NodeReport {
        NodeReport {
            state,
            until: until.map(at),
            reason: Some(reason.to_owned()),
            last_error: (state != EndpointState::Healthy).then(|| (reason.to_owned(), at(0))),
            updated_at: at(0),
        }
    }

    fn reports(entries: Vec<(&str, NodeReport)>) -> BTreeMap<NodeId, NodeReport> {
        entries.into_iter().map(|(n, r)| (NodeId(n.to_owned()), r)).collect()
    }

    #[test]
    fn throttling_anywhere_beats_error_elsewhere_and_takes_the_latest_until() {
        let r = reports(vec![
            ("a", report(EndpointState::Error, Some(600), "503")),
            ("b", report(EndpointState::Throttling, Some(30), "429 short")),
            ("c", report(EndpointState::Throttling, Some(60), "429 long")),
            ("d", report(EndpointState::Healthy, None, "")),
        ]);
        let view = aggregate(&r, None, Utc::now());
        assert_eq!(view.state, EndpointState::Throttling);
        assert_eq!(view.reason.as_deref(), Some("429 long"));
        assert_eq!(view.reported_by, Some(NodeId("c".into())));
        assert_eq!(view.until, r[&NodeId("c".into())].until);
        assert_eq!(view.data_planes.len(), 4);
    }

    #[test]
    fn an_expired_throttle_leaves_the_running_error() {
        let r = reports(vec![
            ("a", report(EndpointState::Error, Some(60), "503")),
            ("b", report(EndpointState::Throttling, Some(-1), "429")),
        ]);
        let view = aggregate(&r, None, Utc::now());
        assert_eq!((view.state, view.reason.as_deref()), (EndpointState::Error, Some("503")));
        let b = &view.data_planes[1];
        assert_eq!((b.state, b.until), (EndpointState::Healthy, None));
        assert_eq!(b.reason.as_deref(), Some("429"), "its last reason stays visible");
    }

    #[test]
    fn all_windows_passed_is_healthy_with_the_last_error_kept() {
        let mut older = report(EndpointState::Error, Some(-5), "old 503");
        older.last_error = Some(("old 503".into(), at(-10)));
        let r =
            reports(vec![("a", older), ("b", report(EndpointState::Throttling, Some(-1), "429"))]);
        let view = aggregate(&r, None, Utc::now());
        assert_eq!(view.state, EndpointState::Healthy);
        assert_eq!(view.until, None);
        let last = view.last_error.expect("last error");
        assert_eq!((last.reason.as_str(), last.node_id.0.as_str()), ("429", "b"));
    }

    #[test]
    fn an_unhealthy_report_without_until_counts_for_a_bounded_window() {
        let r = reports(vec![("a", report(EndpointState::Error, None, "reset"))]);
        assert_eq!(aggregate(&r, None, Utc::now()).state, EndpointState::Error);
        let later = Utc::now()
            + chrono::Duration::from_std(UNTIMED_REPORT_WINDOW).expect("fits")
            + chrono::Duration::seconds(1);
        assert_eq!(aggregate(&r, None, later).state, EndpointState::Healthy);
    }

    #[test]
    fn the_fleet_message_lists_only_unavailable_endpoints_in_a_stable_order() {
        let (x, y, z) = (EndpointId::new(), EndpointId::new(), EndpointId::new());
        let mut health = HashMap::new();
        health.insert(x, reports(vec![("a", report(EndpointState::Throttling, Some(60), "429"))]));
        health.insert(y, reports(vec![("a", report(EndpointState::Healthy, None, ""))]));
        health.insert(z, reports(vec![("b", report(EndpointState::Error, Some(60), "503"))]));
        let message = fleet_health(&health, &HashMap::new(), Utc::now());
        let mut expected = vec![x.to_string(), z.to_string()];
        expected.sort();
        let ids: Vec<String> =
            message.endpoints.iter().map(|e| e.endpoint_id.to_string()).collect();
        assert_eq!(ids, expected);
        assert_eq!(message, fleet_health(&health, &HashMap::new(), Utc::now()), "deterministic");
    }
}
