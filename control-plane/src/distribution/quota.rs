//! Fleet-wide quota spend (issue #18, "Fleet-wide"): what every data plane reports it sends
//! to each endpoint (`QuotaReport`, about once a second), summed per endpoint into the
//! `FleetQuota` pushed to every data plane, so that N replicas do not each plan to spend the
//! same remaining quota.
//!
//! - **One report per data plane counts: its latest.** A report covers the data plane's last
//!   interval and lists every endpoint it sent to then (its busiest, beyond
//!   [`MAX_QUOTA_ENTRIES`]), so it replaces that data plane's previous one whole: an endpoint
//!   it stopped sending to leaves the sum at the next report rather than being counted for a
//!   whole freshness window after the traffic moved elsewhere. Hence at most one rate per
//!   (endpoint, node).
//! - **Fresh reports only.** A report counts for [`QUOTA_FRESHNESS`] after its reception (3 s:
//!   data planes report about once a second, so one lost report is tolerated); older ones are
//!   pruned at each push tick, so a data plane that stopped reporting (gone, or idle and
//!   silent) drops out of the sum within that window.
//! - **Unforgeable, bounded.** Only streams that authenticated and own their registry entry
//!   reach here (the gRPC session checks), and the node id is the one their credential is
//!   bound to, so one peer speaks for one node. Entries naming an endpoint outside the current
//!   snapshot are dropped on arrival (random ids cannot grow memory), a report with an
//!   interval outside 1..=60,000 ms is ignored whole, and each rate is capped at what one data
//!   plane may claim (`EndpointSpend::per_minute`). Memory is at most one report per
//!   registered data plane, each at most `min(MAX_QUOTA_ENTRIES, endpoints configured)`
//!   entries.
//! - **Pushed at most once per [`QUOTA_PUSH_INTERVAL`].** A task recomputes the view every
//!   interval and publishes it (encoded once, shared by every stream) only when it differs
//!   from the last one pushed; an empty view after a non-empty one is pushed too, so data
//!   planes stop assuming others spend. Staleness seen by a data plane: at most one report
//!   interval plus one push interval (≈ 2 s).
//! - **Per process.** Each control-plane replica sums the data planes connected to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use modelgw_model::quota::{FleetQuota, FleetSpend, MAX_QUOTA_ENTRIES, QuotaReport};
use modelgw_model::{EndpointId, NodeId};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::PublishedSnapshot;

/// How long a data plane's report counts after its reception: data planes report about once a
/// second, so 3 s tolerates one lost (or late) report without the data plane's share
/// vanishing, while a data plane that stopped sending drops out of the sum within 3 s.
pub const QUOTA_FRESHNESS: Duration = Duration::from_secs(3);

/// How often the fleet view is recomputed and, when it changed, pushed: at most one
/// `FleetQuota` per second to every data plane, whatever the number of reports.
pub const QUOTA_PUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest push interval honoured (a misconfigured zero would otherwise spin, and a
/// zero period is refused by the timer).
const MIN_QUOTA_PUSH_INTERVAL: Duration = Duration::from_millis(10);

/// The intervals a report may claim, in milliseconds: a report over more than a minute is no
/// longer a rate the fleet can plan with, and zero cannot be divided by.
pub const REPORT_INTERVAL_MS: std::ops::RangeInclusive<u32> = 1..=60_000;

/// How the fleet view is kept and pushed; [`Default`] gives the production values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaSharingSettings {
    /// How long a report counts; see [`QUOTA_FRESHNESS`].
    pub freshness: Duration,
    /// How often the view is recomputed and pushed when changed; see [`QUOTA_PUSH_INTERVAL`].
    pub push_interval: Duration,
}

impl Default for QuotaSharingSettings {
    fn default() -> Self {
        QuotaSharingSettings { freshness: QUOTA_FRESHNESS, push_interval: QUOTA_PUSH_INTERVAL }
    }
}

/// A fleet view as it is distributed: the domain value and its protobuf encoding, made once
/// per change and shared by every stream.
#[derive(Debug, Default)]
pub struct PublishedFleetQuota {
    quota: FleetQuota,
    encoded: Bytes,
}

impl PublishedFleetQuota {
    fn new(quota: FleetQuota) -> PublishedFleetQuota {
        let encoded = modelgw_model::wire::encode_fleet_quota(&quota);
        PublishedFleetQuota { quota, encoded }
    }

    pub fn quota(&self) -> &FleetQuota {
        &self.quota
    }

    /// The protobuf encoding of the `FleetQuota` message (shared, reference-counted).
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }
}

/// Why a report was ignored whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RejectedReport {
    #[error("QuotaReport.interval_ms {0} is outside 1..=60000")]
    Interval(u32),
}

/// What one report added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// Endpoints whose rate now counts for the reporting data plane.
    pub entries: usize,
    /// Entries naming endpoints outside the current snapshot (dropped).
    pub unconfigured: usize,
}

/// One endpoint's spend rate as one data plane reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rate {
    requests_per_min: u64,
    tokens_per_min: u64,
}

/// A data plane's latest report.
#[derive(Debug)]
struct NodeSpend {
    received: Instant,
    rates: HashMap<EndpointId, Rate>,
}

/// The latest report of every data plane; no I/O, time passed in (so tests control it).
#[derive(Debug, Default)]
struct QuotaLedger {
    nodes: HashMap<NodeId, NodeSpend>,
}

impl QuotaLedger {
    /// Makes `report` the node's latest, keeping only endpoints `configured` says exist.
    fn record(
        &mut self,
        node_id: &NodeId,
        report: &QuotaReport,
        configured: impl Fn(EndpointId) -> bool,
        now: Instant,
    ) -> Result<Recorded, RejectedReport> {
        if !REPORT_INTERVAL_MS.contains(&report.interval_ms) {
            return Err(RejectedReport::Interval(report.interval_ms));
        }
        let mut rates: HashMap<EndpointId, Rate> = HashMap::new();
        let mut unconfigured = 0;
        for spend in report.endpoints.iter().take(MAX_QUOTA_ENTRIES) {
            if !configured(spend.endpoint_id) {
                unconfigured += 1;
                continue;
            }
            let (requests_per_min, tokens_per_min) = spend.per_minute(report.interval_ms);
            if requests_per_min == 0 && tokens_per_min == 0 {
                // Sent nothing: not a contributor, and no memory spent on it.
                continue;
            }
            // A repeated id adds up, still within what one data plane may claim.
            let rate = rates.entry(spend.endpoint_id).or_default();
            rate.requests_per_min = rate
                .requests_per_min
                .saturating_add(requests_per_min)
                .min(modelgw_model::quota::MAX_REPORTED_REQUESTS_PER_MIN);
            rate.tokens_per_min = rate
                .tokens_per_min
                .saturating_add(tokens_per_min)
                .min(modelgw_model::quota::MAX_REPORTED_TOKENS_PER_MIN);
        }
        let recorded = Recorded { entries: rates.len(), unconfigured };
        self.nodes.insert(node_id.clone(), NodeSpend { received: now, rates });
        Ok(recorded)
    }

    /// Drops reports older than `freshness`, then sums the rest per endpoint that
    /// `configured` says exists: sorted by endpoint id, at most [`MAX_QUOTA_ENTRIES`] (the
    /// busiest by requests per minute).
    fn view(
        &mut self,
        now: Instant,
        freshness: Duration,
        configured: impl Fn(EndpointId) -> bool,
    ) -> FleetQuota {
        self.nodes.retain(|_, n| now.saturating_duration_since(n.received) <= freshness);
        let mut sums: HashMap<EndpointId, FleetSpend> = HashMap::new();
        for node in self.nodes.values() {
            for (&endpoint_id, rate) in &node.rates {
                if !configured(endpoint_id) {
                    continue;
                }
                let sum = sums.entry(endpoint_id).or_insert(FleetSpend {
                    endpoint_id,
                    requests_per_min: 0,
                    tokens_per_min: 0,
                    data_planes: 0,
                });
                sum.requests_per_min = sum.requests_per_min.saturating_add(rate.requests_per_min);
                sum.tokens_per_min = sum.tokens_per_min.saturating_add(rate.tokens_per_min);
                sum.data_planes = sum.data_planes.saturating_add(1);
            }
        }
        let mut endpoints: Vec<FleetSpend> = sums.into_values().collect();
        if endpoints.len() > MAX_QUOTA_ENTRIES {
            endpoints.select_nth_unstable_by(MAX_QUOTA_ENTRIES - 1, |a, b| {
                (b.requests_per_min, b.tokens_per_min)
                    .cmp(&(a.requests_per_min, a.tokens_per_min))
                    .then(a.endpoint_id.cmp(&b.endpoint_id))
            });
            endpoints.truncate(MAX_QUOTA_ENTRIES);
        }
        endpoints.sort_unstable_by_key(|e| e.endpoint_id);
        FleetQuota { endpoints, skipped: Vec::new() }
    }
}

/// The fleet's quota spend: data planes' reports in, the published view out. Cheap to clone.
#[derive(Clone)]
pub(crate) struct QuotaSharing {
    ledger: Arc<Mutex<QuotaLedger>>,
    published: Arc<watch::Sender<Arc<PublishedFleetQuota>>>,
}

impl Default for QuotaSharing {
    fn default() -> Self {
        let (published, _) =
            watch::channel(Arc::new(PublishedFleetQuota::new(FleetQuota::default())));
        QuotaSharing { ledger: Arc::default(), published: Arc::new(published) }
    }
}

impl QuotaSharing {
    fn lock(&self) -> MutexGuard<'_, QuotaLedger> {
        // Every critical section leaves the map consistent.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a data plane's report against the current snapshot, logging what was left
    /// out; a report with an impossible interval is ignored whole (and the node's previous
    /// report keeps counting until it ages out).
    pub(crate) fn report(
        &self,
        node_id: &NodeId,
        report: &QuotaReport,
        published: &PublishedSnapshot,
    ) -> Result<Recorded, RejectedReport> {
        for skipped in &report.skipped {
            tracing::debug!(node_id = %node_id, reason = %skipped, "quota report entry unreadable; skipped");
        }
        let recorded = self.lock().record(
            node_id,
            report,
            |id| published.contains_endpoint(id),
            Instant::now(),
        );
        match &recorded {
            Ok(r) => tracing::debug!(
                node_id = %node_id,
                interval_ms = report.interval_ms,
                entries = r.entries,
                unconfigured = r.unconfigured,
                "quota report received"
            ),
            Err(rejected) => {
                tracing::warn!(node_id = %node_id, reason = %rejected, "quota report ignored")
            }
        }
        recorded
    }

    /// Recomputes the fleet view at `now` and publishes it if it differs from the last one
    /// published. Returns whether it was published.
    fn publish(&self, now: Instant, freshness: Duration, published: &PublishedSnapshot) -> bool {
        let view = self.lock().view(now, freshness, |id| published.contains_endpoint(id));
        if view == *self.published.borrow().quota() {
            return false;
        }
        let entries = view.endpoints.len();
        // Encoded outside `send_replace`'s lock: every stream shares these bytes.
        self.published.send_replace(Arc::new(PublishedFleetQuota::new(view)));
        tracing::debug!(entries, "fleet quota changed; pushing to every data plane");
        true
    }

    /// The published view; the receiver sees each change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<PublishedFleetQuota>> {
        self.published.subscribe()
    }
}

/// Recomputes the fleet view every `settings.push_interval` and publishes it when it changed
/// (the streams send it); runs until aborted.
pub(super) async fn push_fleet_quota(
    sharing: QuotaSharing,
    snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
    settings: QuotaSharingSettings,
) {
    let mut ticker = tokio::time::interval(settings.push_interval.max(MIN_QUOTA_PUSH_INTERVAL));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let published = snapshots.borrow().clone();
        sharing.publish(Instant::now(), settings.freshness, &published);
    }
}

#[cfg(test)]
mod tests {
    use modelgw_model::quota::EndpointSpend;
    use modelgw_model::{ConfigVersion, Snapshot};

    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId(s.to_owned())
    }

    fn spend(endpoint_id: EndpointId, requests: u64, tokens: u64) -> EndpointSpend {
        EndpointSpend { endpoint_id, requests, tokens }
    }

    fn report(interval_ms: u32, endpoints: Vec<EndpointSpend>) -> QuotaReport {
        QuotaReport { interval_ms, endpoints, skipped: Vec::new() }
    }

    fn every(_: EndpointId) -> bool {
        true
    }

    fn summed(view: &FleetQuota) -> Vec<(EndpointId, u64, u64, u32)> {
        view.endpoints
            .iter()
            .map(|e| (e.endpoint_id, e.requests_per_min, e.tokens_per_min, e.data_planes))
            .collect()
    }

    #[test]
    fn fresh_reports_add_up_per_endpoint_and_count_their_data_planes() {
        let mut ledger = QuotaLedger::default();
        let now = Instant::now();
        let (a, b) = (EndpointId::new(), EndpointId::new());
        ledger
            .record(
                &node("dp-1"),
                &report(1000, vec![spend(a, 2, 300), spend(b, 1, 10)]),
                every,
                now,
            )
            .expect("valid");
        // Over 2 s: 4 requests are 120 a minute.
        ledger
            .record(&node("dp-2"), &report(2000, vec![spend(a, 4, 100)]), every, now)
            .expect("valid");
        let mut expected = vec![(a, 240, 21_000, 2), (b, 60, 600, 1)];
        expected.sort_unstable_by_key(|e| e.0);
        assert_eq!(summed(&ledger.view(now, QUOTA_FRESHNESS, every)), expected);
    }

    #[test]
    fn a_report_replaces_its_data_planes_previous_one_whole() {
        let mut ledger = QuotaLedger::default();
        let now = Instant::now();
        let (a, b) = (EndpointId::new(), EndpointId::new());
        ledger
            .record(&node("dp-1"), &report(1000, vec![spend(a, 5, 0)]), every, now)
            .expect("valid");
        // The traffic moved to b; a repeated id adds up; a zero entry is no contribution.
        let next = report(1000, vec![spend(b, 1, 0), spend(b, 2, 0), spend(a, 0, 0)]);
        let recorded = ledger.record(&node("dp-1"), &next, every, now).expect("valid");
        assert_eq!(recorded, Recorded { entries: 1, unconfigured: 0 });
        assert_eq!(summed(&ledger.view(now, QUOTA_FRESHNESS, every)), [(b, 180, 0, 1)]);
        assert_eq!(ledger.nodes.len(), 1, "one report per data plane");
    }

    #[test]
    fn endpoints_outside_the_snapshot_are_not_recorded_nor_pushed() {
        let mut ledger = QuotaLedger::default();
        let now = Instant::now();
        let (known, unknown) = (EndpointId::new(), EndpointId::new());
        let configured = |id| id == known;
        let recorded = ledger
            .record(
                &node("dp-1"),
                &report(1000, vec![spend(known, 1, 0), spend(unknown, 1, 0)]),
                configured,
                now,
            )
            .expect("valid");
        assert_eq!(recorded, Recorded { entries: 1, unconfigured: 1 });
        assert_eq!(ledger.nodes[&node("dp-1")].rates.len(), 1, "no memory for unknown ids");
        // An endpoint removed from the configuration since leaves the view at once.
        assert!(ledger.view(now, QUOTA_FRESHNESS, |_| false).endpoints.is_empty());
    }

    #[test]
    fn a_report_with_an_impossible_interval_is_ignored_whole() {
        let mut ledger = QuotaLedger::default();
        let now = Instant::now();
        let a = EndpointId::new();
        ledger
            .record(&node("dp-1"), &report(1000, vec![spend(a, 1, 0)]), every, now)
            .expect("valid");
        for interval_ms in [0, 60_001, u32::MAX] {
            let bad = report(interval_ms, vec![spend(a, 1_000, 0)]);
            assert_eq!(
                ledger.record(&node("dp-1"), &bad, every, now),
                Err(RejectedReport::Interval(interval_ms))
            );
        }
        // The previous report still counts, untouched.
        assert_eq!(summed(&ledger.view(now, QUOTA_FRESHNESS, every)), [(a, 60, 0, 1)]);
        assert!(ledger.record(&node("dp-1"), &report(60_000, vec![]), every, now).is_ok());
    }

    #[test]
    fn a_data_plane_that_stops_reporting_drops_out_after_the_freshness_window() {
        let mut ledger = QuotaLedger::default();
        let start = Instant::now();
        let a = EndpointId::new();
        ledger
            .record(&node("dp-1"), &report(1000, vec![spend(a, 1, 0)]), every, start)
            .expect("valid");
        let later = start + Duration::from_secs(2);
        ledger
            .record(&node("dp-2"), &report(1000, vec![spend(a, 2, 0)]), every, later)
            .expect("valid");
        let at_window = start + QUOTA_FRESHNESS;
        assert_eq!(summed(&ledger.view(at_window, QUOTA_FRESHNESS, every)), [(a, 180, 0, 2)]);
        let past = at_window + Duration::from_millis(1);
        assert_eq!(summed(&ledger.view(past, QUOTA_FRESHNESS, every)), [(a, 120, 0, 1)]);
        assert!(!ledger.nodes.contains_key(&node("dp-1")), "pruned");
        assert!(
            ledger.view(later + QUOTA_FRESHNESS * 2, QUOTA_FRESHNESS, every).endpoints.is_empty()
        );
        assert!(ledger.nodes.is_empty());
    }

    #[test]
    fn the_view_keeps_the_busiest_endpoints_sorted_by_id() {
        let mut ledger = QuotaLedger::default();
        let now = Instant::now();
        let ids: Vec<EndpointId> = (0..MAX_QUOTA_ENTRIES + 2).map(|_| EndpointId::new()).collect();
        // Two data planes, as one report holds at most MAX_QUOTA_ENTRIES entries; the two
        // quietest endpoints (1 request each) are the ones left out.
        let (first, rest) = ids.split_at(MAX_QUOTA_ENTRIES);
        let busy: Vec<EndpointSpend> = first.iter().map(|&id| spend(id, 10, 0)).collect();
        ledger.record(&node("dp-1"), &report(1000, busy), every, now).expect("valid");
        let quiet: Vec<EndpointSpend> = rest.iter().map(|&id| spend(id, 1, 0)).collect();
        ledger.record(&node("dp-2"), &report(1000, quiet), every, now).expect("valid");
        let view = ledger.view(now, QUOTA_FRESHNESS, every);
        assert_eq!(view.endpoints.len(), MAX_QUOTA_ENTRIES);
        assert!(view.endpoints.iter().all(|e| e.requests_per_min == 600));
        assert!(view.endpoints.windows(2).all(|w| w[0].endpoint_id < w[1].endpoint_id));
    }

    #[test]
    fn a_view_is_published_encoded_only_when_it_changes_and_an_empty_one_after_a_busy_one() {
        let sharing = QuotaSharing::default();
        let mut pushed = sharing.subscribe();
        let a = EndpointId::new();
        let endpoint = modelgw_model::Endpoint {
            id: a,
            name: "a".into(),
            platform: modelgw_model::Platform::AzureOpenai,
            base_url: url::Url::parse("https://a.openai.azure.com").expect("url"),
            deployment: "gpt-4o".into(),
            model_name: "gpt-4o".into(),
            model_version: "2024-11-20".into(),
            region: "eastus".into(),
            credential: modelgw_model::Credential::ApiKey(modelgw_model::Secret::new("k")),
        };
        let published = PublishedSnapshot::new(
            Snapshot::new(ConfigVersion(1), vec![endpoint], vec![]).expect("valid"),
        );
        let now = Instant::now();
        assert!(!sharing.publish(now, QUOTA_FRESHNESS, &published), "empty, as before");

        sharing
            .report(&node("dp-1"), &report(1000, vec![spend(a, 3, 30)]), &published)
            .expect("valid");
        assert!(sharing.publish(Instant::now(), QUOTA_FRESHNESS, &published));
        assert!(pushed.has_changed().expect("open"));
        let view = pushed.borrow_and_update().clone();
        assert_eq!(summed(view.quota()), [(a, 180, 1_800, 1)]);
        let decoded =
            modelgw_model::wire::decode_fleet_quota(view.encoded()).expect("encoded FleetQuota");
        assert_eq!(decoded, *view.quota(), "the bytes are the view");

        assert!(!sharing.publish(Instant::now(), QUOTA_FRESHNESS, &published), "unchanged");
        assert!(!pushed.has_changed().expect("open"));

        let later = Instant::now() + QUOTA_FRESHNESS + Duration::from_millis(1);
        assert!(sharing.publish(later, QUOTA_FRESHNESS, &published), "emptied: pushed");
        assert!(pushed.borrow_and_update().quota().endpoints.is_empty());
    }
}
