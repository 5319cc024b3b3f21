//! Traffic statistics in domain form: what a data plane reports to the control plane every
//! few seconds (counts since its previous report), and the one set of latency bucket bounds
//! shared by the data plane's Prometheus histograms, the reports and the control plane's
//! rolling window (so buckets add up across data planes and minutes without re-binning).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use crate::limits::{MAX_STATS_GATEWAYS_PER_REPORT, MAX_STATS_ROUTES_PER_REPORT};
use crate::protocol::InvalidMessage;
use crate::{EndpointId, GatewayId};

/// Upper bounds (inclusive, milliseconds) of the latency buckets: end-to-end latency and time
/// to first token. A value above the last bound lands in one more, open bucket, so a
/// [`Buckets`] has `LATENCY_BUCKETS_MS.len() + 1` counts.
pub const LATENCY_BUCKETS_MS: [u32; 14] =
    [10, 25, 50, 100, 250, 500, 1_000, 2_000, 4_000, 8_000, 15_000, 30_000, 60_000, 120_000];

/// Counts per latency bucket (see [`LATENCY_BUCKETS_MS`]); not cumulative: each observation
/// is in exactly one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    /// `LATENCY_BUCKETS_MS.len() + 1` counts once anything was observed; empty when nothing
    /// was (a report omits empty histograms).
    pub counts: Vec<u64>,
}

impl Buckets {
    /// The index of the bucket `ms` falls into.
    pub fn index(ms: u64) -> usize {
        LATENCY_BUCKETS_MS
            .iter()
            .position(|&bound| ms <= u64::from(bound))
            .unwrap_or(LATENCY_BUCKETS_MS.len())
    }

    /// Observations in all buckets.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s counts (bucket by bucket) to these.
    pub fn add(&mut self, other: &Buckets) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// The `q`-quantile (0..=1) in milliseconds, interpolated linearly inside its bucket (as
    /// Prometheus' `histogram_quantile` does); `None` when empty. The open top bucket reports
    /// its lower bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { f64::from(LATENCY_BUCKETS_MS[i - 1]) };
                let Some(&upper) = LATENCY_BUCKETS_MS.get(i) else { return Some(lower) };
                let within = (rank - seen as f64) / count as f64;
                return Some(lower + (f64::from(upper) - lower) * within.clamp(0.0, 1.0));
            }
            seen += count;
        }
        None
    }
}

/// What one (gateway, endpoint) pair did on one data plane during one report interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    pub gateway_id: GatewayId,
    pub endpoint_id: EndpointId,
    /// Answers this endpoint gave the gateway's clients (any status).
    pub requests: u64,
    /// Of `requests`: 5xx answers passed on, and streams cut after they started.
    pub errors: u64,
    /// Attempts this endpoint answered 429 (whether another endpoint then served or not).
    pub throttled: u64,
    /// Attempts that failed over for another reason (5xx, transport, timeout, no credential).
    pub failed_attempts: u64,
    /// Tokens from the answers' `usage` (prompt / input and completion / output).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// End-to-end latency of `requests`, from arrival to the end of the answer.
    pub latency: Buckets,
    /// Streams only: time from the request to its first token.
    pub ttft: Buckets,
}

impl RouteStats {
    /// Adds `other`'s counts (the same pair's, from another interval or data plane) to these.
    pub fn add(&mut self, other: &RouteStats) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.throttled = self.throttled.saturating_add(other.throttled);
        self.failed_attempts = self.failed_attempts.saturating_add(other.failed_attempts);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(other.completion_tokens);
        self.latency.add(&other.latency);
        self.ttft.add(&other.ttft);
    }

    /// Whether nothing happened (such entries are not sent).
    pub fn is_empty(&self) -> bool {
        self.requests == 0
            && self.throttled == 0
            && self.failed_attempts == 0
            && self.prompt_tokens == 0
            && self.completion_tokens == 0
            && self.latency.total() == 0
            && self.ttft.total() == 0
    }
}

/// What one gateway answered itself on one data plane during one report interval (no
/// endpoint served: all throttling, none available, deadline).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    pub gateway_id: GatewayId,
    /// 429: every member was throttling.
    pub throttled: u64,
    /// 503 / 504: no member could serve, or the deadline passed.
    pub unavailable: u64,
}

impl GatewayStats {
    /// Adds `other`'s counts (the same gateway's) to these.
    pub fn add(&mut self, other: &GatewayStats) {
        self.throttled = self.throttled.saturating_add(other.throttled);
        self.unavailable = self.unavailable.saturating_add(other.unavailable);
    }

    /// Whether nothing happened (such entries are not sent).
    pub fn is_empty(&self) -> bool {
        self.throttled == 0 && self.unavailable == 0
    }
}

/// A data plane's traffic since its previous report. Decoding keeps every readable entry and
/// lists the others in `skipped`, like the health report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsReport {
    pub routes: Vec<RouteStats>,
    pub gateways: Vec<GatewayStats>,
    /// Entries that could not be read (filled on decode only; never sent).
    pub skipped: Vec<InvalidMessage>,
}

impl StatsReport {
    /// Whether the report carries nothing (not sent).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.gateways.is_empty()
    }

    /// Adds `other` into this report, entry by entry (a pair or gateway in both is summed, so
    /// no count is lost or doubled); entries stay sorted by id. `skipped` is concatenated.
    pub fn merge(&mut self, other: StatsReport) {
        let mut routes: BTreeMap<(GatewayId, EndpointId), RouteStats> =
            self.routes.drain(..).map(|r| ((r.gateway_id, r.endpoint_id), r)).collect();
        for r in other.routes {
            match routes.entry((r.gateway_id, r.endpoint_id)) {
                Entry::Occupied(mut mine) => mine.get_mut().add(&r),
                Entry::Vacant(slot) => {
                    slot.insert(r);
                }
            }
        }
        self.routes = routes.into_values().collect();
        let mut gateways: BTreeMap<GatewayId, GatewayStats> =
            self.gateways.drain(..).map(|g| (g.gateway_id, g)).collect();
        for g in other.gateways {
            match gateways.entry(g.gateway_id) {
                Entry::Occupied(mut mine) => mine.get_mut().add(&g),
                Entry::Vacant(slot) => {
                    slot.insert(g);
                }
            }
        }
        self.gateways = gateways.into_values().collect();
        self.skipped.extend(other.skipped);
    }

    /// This report as reports of at most [`MAX_STATS_ROUTES_PER_REPORT`] routes and
    /// [`MAX_STATS_GATEWAYS_PER_REPORT`] gateways each, which together carry the same counts
    /// (one report, unchanged, when it fits; none when it is empty).
    pub fn into_bounded(self) -> Vec<StatsReport> {
        let chunks = self
            .routes
            .len()
            .div_ceil(MAX_STATS_ROUTES_PER_REPORT)
            .max(self.gateways.len().div_ceil(MAX_STATS_GATEWAYS_PER_REPORT));
        let mut routes = self.routes.into_iter();
        let mut gateways = self.gateways.into_iter();
        (0..chunks)
            .map(|_| StatsReport {
                routes: routes.by_ref().take(MAX_STATS_ROUTES_PER_REPORT).collect(),
                gateways: gateways.by_ref().take(MAX_STATS_GATEWAYS_PER_REPORT).collect(),
                skipped: Vec::new(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_index_is_inclusive_with_an_open_top() {
        assert_eq!(Buckets::index(0), 0);
        assert_eq!(Buckets::index(10), 0);
        assert_eq!(Buckets::index(11), 1);
        assert_eq!(Buckets::index(120_000), LATENCY_BUCKETS_MS.len() - 1);
        assert_eq!(Buckets::index(120_001), LATENCY_BUCKETS_MS.len());
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let mut b = Buckets { counts: vec![0; LATENCY_BUCKETS_MS.len() + 1] };
        assert_eq!(b.quantile_ms(0.5), None);
        // 10 observations in (100, 250].
        b.counts[4] = 10;
        let p50 = b.quantile_ms(0.5).expect("p50");
        assert!((p50 - 175.0).abs() < 1e-9, "{p50}");
        let mut other = Buckets::default();
        other.add(&b);
        other.add(&b);
        assert_eq!(other.total(), 20);
        let mut top = Buckets { counts: vec![0; LATENCY_BUCKETS_MS.len() + 1] };
        top.counts[LATENCY_BUCKETS_MS.len()] = 1;
        assert_eq!(top.quantile_ms(0.99), Some(120_000.0));
    }

    fn route(gateway_id: GatewayId, endpoint_id: EndpointId, requests: u64) -> RouteStats {
        let mut latency = Buckets { counts: vec![0; LATENCY_BUCKETS_MS.len() + 1] };
        latency.counts[3] = requests;
        RouteStats {
            gateway_id,
            endpoint_id,
            requests,
            throttled: 1,
            prompt_tokens: 10 * requests,
            latency,
            ..Default::default()
        }
    }

    #[test]
    fn merging_adds_the_same_entries_and_keeps_the_others() {
        let (g, e1, e2) = (GatewayId::new(), EndpointId::new(), EndpointId::new());
        let mut kept = StatsReport {
            routes: vec![route(g, e1, 2)],
            gateways: vec![GatewayStats { gateway_id: g, throttled: 1, unavailable: 0 }],
            skipped: vec![],
        };
        kept.merge(StatsReport {
            routes: vec![route(g, e2, 5), route(g, e1, 3)],
            gateways: vec![GatewayStats { gateway_id: g, throttled: 0, unavailable: 4 }],
            skipped: vec![],
        });
        assert_eq!(kept.routes.len(), 2);
        let first = kept.routes.iter().find(|r| r.endpoint_id == e1).expect("e1");
        assert_eq!((first.requests, first.throttled, first.prompt_tokens), (5, 2, 50));
        assert_eq!(first.latency.counts[3], 5);
        let second = kept.routes.iter().find(|r| r.endpoint_id == e2).expect("e2");
        assert_eq!(second.requests, 5);
        assert_eq!(kept.gateways, [GatewayStats { gateway_id: g, throttled: 1, unavailable: 4 }]);
    }

    #[test]
    fn a_large_report_is_split_into_bounded_ones_carrying_the_same_counts() {
        let g = GatewayId::new();
        let report = StatsReport {
            routes: (0..MAX_STATS_ROUTES_PER_REPORT * 2 + 1)
                .map(|_| route(g, EndpointId::new(), 1))
                .collect(),
            gateways: vec![GatewayStats { gateway_id: g, throttled: 1, unavailable: 0 }],
            skipped: vec![],
        };
        let parts = report.clone().into_bounded();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.routes.len() <= MAX_STATS_ROUTES_PER_REPORT));
        let requests: u64 = parts.iter().flat_map(|p| &p.routes).map(|r| r.requests).sum();
        assert_eq!(requests, report.routes.len() as u64);
        assert_eq!(parts.iter().map(|p| p.gateways.len()).sum::<usize>(), 1);
        assert_eq!(StatsReport::default().into_bounded(), Vec::<StatsReport>::new());
        let small = StatsReport { routes: vec![route(g, EndpointId::new(), 1)], ..report };
        assert_eq!(small.clone().into_bounded(), [small]);
    }
}
