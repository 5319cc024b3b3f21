//! Endpoint selection: which members of a gateway a request tries, in which order.
//!
//! Every policy shares the same frame: priority groups in ascending order (spillover — all
//! traffic goes to the lowest priority number that has an available member, the next group
//! only gets what the previous one could not serve); within a group the available members in
//! the policy's order, members low on quota headroom after the others (steered away from
//! before they answer 429, yet still tried before spilling to the next group), and the
//! unavailable members last, marked with the reason so the request log and the final answer
//! can account for them.
//!
//! Policies ([`EndpointSelector`], one struct each): [`PriorityWeighted`] (`weighted`),
//! [`Fastest`] (`fastest`), and [`ByStrategy`], which picks one of them per gateway from its
//! `routing.strategy`.

use std::sync::Arc;
use std::time::Instant;

use modelgw_model::RoutingStrategy;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::health::{EndpointView, HealthRegistry, Unavailable};
use crate::metrics::RouteMetrics;
use crate::routing_table::{CompiledEndpoint, CompiledGateway, CompiledMember};

/// Why a candidate is not tried for this request.
pub type Skip = Unavailable;

/// One member in the order the request should go through them.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub endpoint: Arc<CompiledEndpoint>,
    /// Set when the member must not be tried now.
    pub skip: Option<Skip>,
    /// The member's last answer said it is about to throttle; it was placed after the other
    /// available members of its group.
    pub low_headroom: bool,
    /// The (gateway, endpoint) pair's counters (`None` with metrics off).
    pub metrics: Option<Arc<RouteMetrics>>,
}

/// Orders a gateway's members for one request.
pub trait EndpointSelector: Send + Sync {
    fn candidates(
        &self,
        gateway: &CompiledGateway,
        health: &HealthRegistry,
        now: Instant,
    ) -> Vec<Candidate>;
}

/// Applies the shared frame (groups, headroom, skips) around `order`, which returns the
/// available members of one group (indices into `members`, with their views) in the order to
/// try them.
fn frame(
    gateway: &CompiledGateway,
    health: &HealthRegistry,
    now: Instant,
    mut order: impl FnMut(&[CompiledMember], &[(usize, EndpointView)]) -> Vec<usize>,
) -> Vec<Candidate> {
    let mut out = Vec::with_capacity(gateway.member_count());
    for group in &gateway.groups {
        let views: Vec<EndpointView> =
            group.members.iter().map(|m| health.view(m.endpoint.id, now)).collect();
        let available: Vec<(usize, EndpointView)> = views
            .iter()
            .enumerate()
            .filter(|(_, v)| v.unavailable.is_none())
            .map(|(i, v)| (i, *v))
            .collect();
        let ordered = order(&group.members, &available);
        let (roomy, low): (Vec<usize>, Vec<usize>) =
            ordered.into_iter().partition(|&i| !views[i].low_headroom);
        for i in roomy.into_iter().chain(low) {
            out.push(Candidate {
                endpoint: Arc::clone(&group.members[i].endpoint),
                skip: None,
                low_headroom: views[i].low_headroom,
                metrics: group.members[i].metrics.clone(),
            });
        }
        for (i, view) in views.iter().enumerate() {
            if let Some(skip) = view.unavailable {
                out.push(Candidate {
                    endpoint: Arc::clone(&group.members[i].endpoint),
                    skip: Some(skip),
                    low_headroom: view.low_headroom,
                    metrics: group.members[i].metrics.clone(),
                });
            }
        }
    }
    out
}

/// `weighted`: within a group a weighted-random order (a member comes first with probability
/// proportional to its weight; weight 0 = only after the weighted members).
#[derive(Clone, Copy, Debug, Default)]
pub struct PriorityWeighted;

impl EndpointSelector for PriorityWeighted {
    fn candidates(
        &self,
        gateway: &CompiledGateway,
        health: &HealthRegistry,
        now: Instant,
    ) -> Vec<Candidate> {
        let mut rng = rand::rng();
        frame(gateway, health, now, |members, available| {
            let weights: Vec<u32> = available.iter().map(|(i, _)| members[*i].weight).collect();
            weighted_order(&weights, &mut rng).into_iter().map(|k| available[k].0).collect()
        })
    }
}

/// `fastest`: latency-aware choice over the decaying EWMA of time to first byte.
///
/// This is power-of-d-choices with d = the whole group: a gateway's groups hold a handful of
/// regions, so comparing all of them is as cheap as comparing two, and plain two-choice
/// sampling would send a third of the traffic of a three-region group to its slower pair.
/// Herding onto one endpoint is bounded by the exploration share and by ties (estimates equal
/// to the millisecond, e.g. never-sampled members) going to the member with fewest requests
/// in flight. Exploration: with probability [`crate::health::HealthPolicy::exploration`] a
/// random available member goes first, and estimates decay toward zero while not sampled,
/// so a recovered or newly faster region is noticed within seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fastest;

impl EndpointSelector for Fastest {
    fn candidates(
        &self,
        gateway: &CompiledGateway,
        health: &HealthRegistry,
        now: Instant,
    ) -> Vec<Candidate> {
        let mut rng = rand::rng();
        let exploration = health.policy().exploration;
        frame(gateway, health, now, |_, available| fastest_order(available, exploration, &mut rng))
    }
}

/// Indices of `available` by ascending latency (ms), ties by fewest in flight then random;
/// with probability `exploration` a random member is moved to the front.
pub(crate) fn fastest_order<R: Rng + ?Sized>(
    available: &[(usize, EndpointView)],
    exploration: f64,
    rng: &mut R,
) -> Vec<usize> {
    let mut keyed: Vec<(u64, u32, u32, usize)> = available
        .iter()
        .map(|(i, v)| {
            let ms = v.latency_ms.unwrap_or(0.0).max(0.0).round() as u64;
            (ms, v.in_flight, rng.random::<u32>(), *i)
        })
        .collect();
    keyed.sort_unstable();
    let mut order: Vec<usize> = keyed.into_iter().map(|(.., i)| i).collect();
    if order.len() > 1 && rng.random_bool(exploration.clamp(0.0, 1.0)) {
        let pick = rng.random_range(0..order.len());
        let chosen = order.remove(pick);
        order.insert(0, chosen);
    }
    order
}

/// Picks [`PriorityWeighted`] or [`Fastest`] per gateway from its `routing.strategy`; what
/// `DataPlane::run` uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByStrategy;

impl EndpointSelector for ByStrategy {
    fn candidates(
        &self,
        gateway: &CompiledGateway,
        health: &HealthRegistry,
        now: Instant,
    ) -> Vec<Candidate> {
        match gateway.routing.strategy {
            RoutingStrategy::Weighted => PriorityWeighted.candidates(gateway, health, now),
            RoutingStrategy::Fastest => Fastest.candidates(gateway, health, now),
        }
    }
}

/// A random permutation of `0..weights.len()` where each index comes first with probability
/// proportional to its weight (Efraimidis–Spirakis: sort by `u^(1/w)` descending). Weight-0
/// entries get negative keys, so they follow all weighted ones in random order.
pub(crate) fn weighted_order<R: Rng + ?Sized>(weights: &[u32], rng: &mut R) -> Vec<usize> {
    if weights.len() <= 1 {
        return (0..weights.len()).collect();
    }
    if weights.iter().all(|w| *w == weights[0]) {
        let mut order: Vec<usize> = (0..weights.len()).collect();
        order.shuffle(rng);
        return order;
    }
    let mut keyed: Vec<(f64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let u: f64 = rng.random();
            let key = if w == 0 { -u - f64::MIN_POSITIVE } else { u.powf(1.0 / f64::from(w)) };
            (key, i)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthEvent;
    use crate::routing_table::RoutingTable;
    use crate::routing_table::tests::{endpoint, gateway, member};
    use modelgw_model::{ConfigVersion, Platform, Snapshot};
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::time::Duration;

    fn table(members: &[(u32, u32, bool)]) -> RoutingTable {
        let endpoints: Vec<_> = (0..members.len())
            .map(|i| endpoint(&format!("e{i}"), Platform::AzureOpenai, "gpt-4o"))
            .collect();
        let gw_members = endpoints
            .iter()
            .zip(members)
            .map(|(e, &(priority, weight, enabled))| member(e, enabled, priority, weight))
            .collect();
        let snapshot = Snapshot {
            version: ConfigVersion(1),
            gateways: vec![gateway("gw", "k", gw_members)],
            endpoints,
        };
        RoutingTable::compile(&snapshot).expect("compiles")
    }

    fn names(candidates: &[Candidate]) -> Vec<&str> {
        candidates.iter().map(|c| c.endpoint.name.as_str()).collect()
    }

    fn view(latency_ms: Option<f64>, in_flight: u32) -> EndpointView {
        EndpointView { unavailable: None, low_headroom: false, latency_ms, in_flight }
    }

    #[test]
    fn lower_priority_groups_come_first_and_disabled_members_never() {
        let t = table(&[(5, 1, true), (1, 1, true), (3, 1, true), (0, 1, false)]);
        let (health, _rx) = HealthRegistry::new(8);
        let gw = t.gateway_by_name("gw").expect("gw");
        for _ in 0..20 {
            let c = PriorityWeighted.candidates(gw, &health, Instant::now());
            assert_eq!(names(&c), vec!["e1", "e2", "e0"]);
            assert!(c.iter().all(|c| c.skip.is_none()));
        }
    }

    #[test]
    fn weights_set_how_often_a_member_goes_first() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut first = [0u32; 3];
        for _ in 0..4000 {
            let order = weighted_order(&[3, 1, 0], &mut rng);
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], 2, "weight 0 always comes last");
            first[order[0]] += 1;
        }
        // Expected 3000 : 1000 : 0.
        assert!((2800..=3200).contains(&first[0]), "{first:?}");
        assert!((800..=1200).contains(&first[1]), "{first:?}");
        assert_eq!(first[2], 0);
    }

    #[test]
    fn unhealthy_members_are_marked_skipped_with_the_reason() {
        let t = table(&[(0, 1, true), (1, 1, true), (2, 1, true)]);
        let gw = t.gateway_by_name("gw").expect("gw");
        let (health, _rx) = HealthRegistry::new(8);
        let now = Instant::now();
        let e0 = gw.groups[0].members[0].endpoint.id;
        let e1 = gw.groups[1].members[0].endpoint.id;
        health.record(
            e0,
            &HealthEvent::Throttled { retry_after: Duration::from_secs(5), reason: "429".into() },
            now,
        );
        health.record(e1, &HealthEvent::Failed { reason: "503".into() }, now);
        let c = PriorityWeighted.candidates(gw, &health, now);
        assert_eq!(names(&c), vec!["e0", "e1", "e2"]);
        assert!(matches!(c[0].skip, Some(Skip::Throttling { .. })));
        assert!(matches!(c[1].skip, Some(Skip::Error { .. })));
        assert_eq!(c[2].skip, None);

        let later = PriorityWeighted.candidates(gw, &health, now + Duration::from_secs(6));
        assert!(later.iter().all(|c| c.skip.is_none()), "windows expire");
    }

    #[test]
    fn within_a_group_available_then_low_headroom_then_skipped() {
        let t = table(&[(0, 1, true), (0, 1, true), (0, 1, true), (1, 1, true)]);
        let gw = t.gateway_by_name("gw").expect("gw");
        let (health, _rx) = HealthRegistry::new(8);
        let now = Instant::now();
        let id = |i: usize| gw.groups[0].members[i].endpoint.id;
        health.record(id(0), &HealthEvent::Failed { reason: "503".into() }, now);
        let mut low = http::HeaderMap::new();
        low.insert("x-ratelimit-remaining-requests", http::HeaderValue::from_static("0"));
        health.record_headroom(id(1), &low, now);
        for _ in 0..20 {
            for selector in [&PriorityWeighted as &dyn EndpointSelector, &Fastest] {
                let c = selector.candidates(gw, &health, now);
                assert_eq!(names(&c), vec!["e2", "e1", "e0", "e3"]);
                assert!(c[1].low_headroom && c[2].skip.is_some());
            }
        }
    }

    #[test]
    fn fastest_prefers_the_lowest_latency_ties_by_in_flight_and_explores() {
        let mut rng = StdRng::seed_from_u64(3);
        let available =
            [(0, view(Some(120.0), 0)), (1, view(Some(20.0), 4)), (2, view(Some(60.0), 0))];
        assert_eq!(fastest_order(&available, 0.0, &mut rng), vec![1, 2, 0]);
        let tied = [(0, view(Some(20.2), 3)), (1, view(Some(19.9), 1)), (2, view(None, 0))];
        assert_eq!(fastest_order(&tied, 0.0, &mut rng), vec![2, 1, 0], "never sampled goes first");
        let mut first = [0u32; 3];
        for _ in 0..10_000 {
            first[fastest_order(&available, 0.05, &mut rng)[0]] += 1;
        }
        // Exploration: 5 % random, so each slower member leads about 1.7 % of the time.
        assert!((9_500..=9_800).contains(&first[1]), "{first:?}");
        assert!(first[0] > 50 && first[2] > 50, "{first:?}");
    }
}
