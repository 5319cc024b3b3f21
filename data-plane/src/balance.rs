//! Endpoint selection: which members of a gateway a request tries, in which order.
//!
//! Every policy shares the same frame: priority groups in ascending order (spillover — all
//! traffic goes to the lowest priority number that has an available member, the next group
//! only gets what the previous one could not serve); within a group the available members in
//! the policy's order, then the members this request would not fit by their quota estimate
//! (`health/quota.rs`; soonest refill first — admission refuses them until then, so they
//! count as throttling, never as tried), and the unavailable members last, marked with the
//! reason so the request log and the final answer can account for them.
//!
//! Quota-aware routing (`routing.quota`, on by default): `weighted` weights each member by its
//! configured weight times the requests of this size its estimate has room for, so a group's
//! traffic follows the quota left in each member (a small region gets a small share, all the
//! time, instead of a third and then nothing); members not read yet count as the roomiest
//! one. The first choice is then made by smooth weighted round robin (nginx's algorithm,
//! [`Spread`]) rather than at random: over any few dozen requests each member's share is
//! within one request of its weight's, where a random draw strays by several (a region of a
//! tenth of the quota would see ±10 % of its traffic by chance). `fastest` orders the members
//! that fit by latency: it spends the fastest region's quota first.
//!
//! Policies ([`EndpointSelector`], one struct each): [`PriorityWeighted`] (`weighted`),
//! [`Fastest`] (`fastest`), and [`ByStrategy`], which picks one of them per gateway from its
//! `routing.strategy`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use modelgw_model::RoutingStrategy;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::health::{Demand, EndpointView, HealthRegistry, Unavailable};
use crate::routing_table::{CompiledEndpoint, CompiledGateway, CompiledMember, PriorityGroup};

/// Why a candidate is not tried for this request.
pub type Skip = Unavailable;

/// One member in the order the request should go through them.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub endpoint: Arc<CompiledEndpoint>,
    /// Set when the member must not be tried now.
    pub skip: Option<Skip>,
    /// Its quota estimate says this request would not fit now; it was placed after the
    /// members that fit.
    pub short: bool,
    /// Where the member is in the gateway (`groups[group].members[member]`): its counters
    /// are reached from there, by reference.
    pub group: usize,
    pub member: usize,
}

/// Orders a gateway's members for one request.
pub trait EndpointSelector: Send + Sync {
    fn candidates(
        &self,
        gateway: &CompiledGateway,
        health: &HealthRegistry,
        now: Instant,
        demand: &Demand,
    ) -> Vec<Candidate>;
}

/// Applies the shared frame (groups, quota, skips) around `order`, which returns the
/// available members of one group that fit this request (indices into `members`, with their
/// views) in the order to try them.
fn frame(
    gateway: &CompiledGateway,
    health: &HealthRegistry,
    now: Instant,
    demand: &Demand,
    mut order: impl FnMut(&PriorityGroup, &[(usize, EndpointView)]) -> Vec<usize>,
) -> Vec<Candidate> {
    let mut out = Vec::with_capacity(gateway.member_count());
    for (group_index, group) in gateway.groups.iter().enumerate() {
        let views: Vec<EndpointView> =
            group.members.iter().map(|m| health.view_for(m.endpoint.id, now, demand)).collect();
        let fits = |v: &EndpointView| v.room.is_none_or(|room| room.fits());
        let available: Vec<(usize, EndpointView)> = views
            .iter()
            .enumerate()
            .filter(|(_, v)| v.unavailable.is_none() && fits(v))
            .map(|(i, v)| (i, *v))
            .collect();
        let push = |out: &mut Vec<Candidate>, i: usize, short: bool| {
            out.push(Candidate {
                endpoint: Arc::clone(&group.members[i].endpoint),
                skip: views[i].unavailable,
                short,
                group: group_index,
                member: i,
            });
        };
        for i in order(group, &available) {
            push(&mut out, i, false);
        }
        let mut short: Vec<(std::time::Duration, usize)> = views
            .iter()
            .enumerate()
            .filter(|(_, v)| v.unavailable.is_none() && !fits(v))
            .map(|(i, v)| (v.room.map(|r| r.wait).unwrap_or_default(), i))
            .collect();
        short.sort_unstable();
        for (_, i) in short {
            push(&mut out, i, true);
        }
        for (i, view) in views.iter().enumerate() {
            if view.unavailable.is_some() {
                push(&mut out, i, false);
            }
        }
    }
    out
}

/// `weighted`: within a group a weighted-random order (a member comes first with probability
/// proportional to its weight times its quota room, when quota is known; weight 0 = only
/// after the weighted members).
#[derive(Clone, Copy, Debug, Default)]
pub struct PriorityWeighted;

impl EndpointSelector for PriorityWeighted {
    fn candidates(
        &self,
        gateway: &CompiledGateway,
        health: &HealthRegistry,
        now: Instant,
        demand: &Demand,
    ) -> Vec<Candidate> {
        let mut rng = rand::rng();
        frame(gateway, health, now, demand, |group, available| {
            let members = &group.members;
            let order = match roomy_weights(members, available) {
                Some(weights) => {
                    let first = group.spread.next(available, &weights);
                    let mut order = weighted_order_by(&weights, &mut rng);
                    if let Some(first) = first {
                        order.retain(|&k| k != first);
                        order.insert(0, first);
                    }
                    order
                }
                None => {
                    let weights: Vec<u32> =
                        available.iter().map(|(i, _)| members[*i].weight).collect();
                    weighted_order(&weights, &mut rng)
                }
            };
            order.into_iter().map(|k| available[k].0).collect()
        })
    }
}

/// Smooth weighted round robin over a priority group (nginx's `ngx_http_upstream_get_peer`):
/// each pick adds every available member's weight to its running score, takes the highest
/// score and subtracts the sum of the weights from it. Deterministic and even: over any run
/// of picks each member's count stays within one of its weight's share, also while the
/// weights (quota room) change between picks. One short lock per request; the state lives in
/// the compiled table and starts afresh with each snapshot.
#[derive(Debug, Default)]
pub struct Spread {
    scores: Mutex<Vec<f64>>,
}

impl Clone for Spread {
    fn clone(&self) -> Self {
        Spread::default()
    }
}

impl Spread {
    /// The position in `available` of the member to try first, given each one's weight
    /// (`None` when every weight is zero).
    fn next(&self, available: &[(usize, EndpointView)], weights: &[f64]) -> Option<usize> {
        let total: f64 = weights.iter().filter(|w| w.is_finite() && **w > 0.0).sum();
        if total <= 0.0 {
            return None;
        }
        let mut scores = self.scores.lock().unwrap_or_else(PoisonError::into_inner);
        let mut best: Option<(usize, f64)> = None;
        for (k, ((i, _), w)) in available.iter().zip(weights).enumerate() {
            if *i >= scores.len() {
                scores.resize(i + 1, 0.0);
            }
            let w = if w.is_finite() && *w > 0.0 { *w } else { continue };
            scores[*i] += w;
            if best.is_none_or(|(_, score)| scores[*i] > score) {
                best = Some((k, scores[*i]));
            }
        }
        let (k, _) = best?;
        scores[available[k].0] -= total;
        Some(k)
    }
}

/// Each available member's weight times the requests of this size its quota has room for;
/// members not read yet count as the roomiest member that was. `None` when no member's
/// quota is known (the configured weights alone then).
fn roomy_weights(
    members: &[CompiledMember],
    available: &[(usize, EndpointView)],
) -> Option<Vec<f64>> {
    let roomiest = available
        .iter()
        .filter_map(|(_, v)| v.room.map(|r| r.requests))
        .fold(None, |most: Option<f64>, r| Some(most.map_or(r, |m| m.max(r))))?;
    Some(
        available
            .iter()
            .map(|(i, v)| {
                let room = v.room.map_or(roomiest, |r| r.requests).max(0.0);
                f64::from(members[*i].weight) * room
            })
            .collect(),
    )
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
        demand: &Demand,
    ) -> Vec<Candidate> {
        let mut rng = rand::rng();
        let exploration = health.policy().exploration;
        frame(gateway, health, now, demand, |_, available| {
            fastest_order(available, exploration, &mut rng)
        })
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
        demand: &Demand,
    ) -> Vec<Candidate> {
        match gateway.routing.strategy {
            RoutingStrategy::Weighted => PriorityWeighted.candidates(gateway, health, now, demand),
            RoutingStrategy::Fastest => Fastest.candidates(gateway, health, now, demand),
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

/// [`weighted_order`] for real-valued weights (quota room): each index comes first with
/// probability proportional to its weight; zero weights follow in random order.
pub(crate) fn weighted_order_by<R: Rng + ?Sized>(weights: &[f64], rng: &mut R) -> Vec<usize> {
    if weights.len() <= 1 {
        return (0..weights.len()).collect();
    }
    let mut keyed: Vec<(f64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let u: f64 = rng.random();
            let key =
                if w > 0.0 && w.is_finite() { u.powf(1.0 / w) } else { -u - f64::MIN_POSITIVE };
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
        EndpointView { unavailable: None, room: None, latency_ms, in_flight }
    }

    #[test]
    fn lower_priority_groups_come_first_and_disabled_members_never() {
        let t = table(&[(5, 1, true), (1, 1, true), (3, 1, true), (0, 1, false)]);
        let (health, _rx) = HealthRegistry::new(8);
        let gw = t.gateway_by_name("gw").expect("gw");
        for _ in 0..20 {
            let c = PriorityWeighted.candidates(gw, &health, Instant::now(), &Demand::default());
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
        let c = PriorityWeighted.candidates(gw, &health, now, &Demand::default());
        assert_eq!(names(&c), vec!["e0", "e1", "e2"]);
        assert!(matches!(c[0].skip, Some(Skip::Throttling { .. })));
        assert!(matches!(c[1].skip, Some(Skip::Error { .. })));
        assert_eq!(c[2].skip, None);

        let later = PriorityWeighted.candidates(
            gw,
            &health,
            now + Duration::from_secs(6),
            &Demand::default(),
        );
        assert!(later.iter().all(|c| c.skip.is_none()), "windows expire");
    }

    #[test]
    fn within_a_group_fitting_then_short_of_quota_then_skipped() {
        let t = table(&[(0, 1, true), (0, 1, true), (0, 1, true), (1, 1, true)]);
        let gw = t.gateway_by_name("gw").expect("gw");
        let (health, _rx) = HealthRegistry::new(8);
        let now = Instant::now();
        let id = |i: usize| gw.groups[0].members[i].endpoint.id;
        health.record(id(0), &HealthEvent::Failed { reason: "503".into() }, now);
        read_quota(&health, id(1), 0, now);
        let demand = Demand::default();
        for _ in 0..20 {
            for selector in [&PriorityWeighted as &dyn EndpointSelector, &Fastest] {
                let c = selector.candidates(gw, &health, now, &demand);
                assert_eq!(names(&c), vec!["e2", "e1", "e0", "e3"]);
                assert!(c[1].short && c[1].skip.is_none() && c[2].skip.is_some());
            }
        }
        // Admission refuses the short member until its refill (1 request per 10 s / 50).
        let refusal = health.admit_for(id(1), now, &demand).expect_err("short");
        let Unavailable::Quota { until, .. } = refusal else { panic!("{refusal:?}") };
        assert_eq!(until - now, Duration::from_millis(200));
        assert!(health.admit_for(id(1), until, &demand).is_ok(), "refilled");
    }

    /// Gives `id` a reading of `remaining` requests out of 50 (refilling 50 per 10 s).
    fn read_quota(
        health: &HealthRegistry,
        id: modelgw_model::EndpointId,
        remaining: i64,
        now: Instant,
    ) {
        let mark = health.admit(id, now).expect("admitted").mark();
        let limits = crate::health::RateLimits {
            remaining_requests: Some(remaining),
            limit_requests: Some(50),
            ..Default::default()
        };
        let policy = modelgw_model::QuotaPolicy::default();
        health.record_quota(id, Some(&limits), mark, now, &policy);
    }

    #[test]
    fn weighted_spreads_by_quota_room_times_weight() {
        let t = table(&[(0, 1, true), (0, 1, true), (0, 2, true)]);
        let gw = t.gateway_by_name("gw").expect("gw");
        let (health, _rx) = HealthRegistry::new(8);
        let now = Instant::now();
        let id = |i: usize| gw.groups[0].members[i].endpoint.id;
        // Rooms 5, 25 and 25 requests; weights 1, 1, 2: shares 5 : 25 : 50.
        read_quota(&health, id(0), 5, now);
        read_quota(&health, id(1), 25, now);
        read_quota(&health, id(2), 25, now);
        // Smooth round robin: in every run of 80 picks exactly 5 : 25 : 50, never by chance.
        for _ in 0..10 {
            let mut first = [0u32; 3];
            for _ in 0..80 {
                let c = PriorityWeighted.candidates(gw, &health, now, &Demand::default());
                assert_eq!(c.len(), 3, "the others follow for failover");
                first[c[0].member] += 1;
            }
            assert_eq!(first, [5, 25, 50]);
        }
        // Quota-aware routing off: the weights alone.
        let off = Demand {
            policy: modelgw_model::QuotaPolicy { enabled: false, ..Default::default() },
            ..Demand::default()
        };
        let mut first = [0u32; 3];
        for _ in 0..8000 {
            first[PriorityWeighted.candidates(gw, &health, now, &off)[0].member] += 1;
        }
        assert!((1800..=2200).contains(&first[0]), "{first:?}");
    }

    #[test]
    fn real_valued_weights_set_how_often_a_member_goes_first() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut first = [0u32; 3];
        for _ in 0..6000 {
            let order = weighted_order_by(&[0.5, 1.5, 0.0], &mut rng);
            assert_eq!(order[2], 2, "zero weight last");
            first[order[0]] += 1;
        }
        assert!((1350..=1650).contains(&first[0]), "{first:?}");
        assert_eq!(first[2], 0);
        assert_eq!(weighted_order_by(&[f64::NAN, 1.0], &mut rng)[0], 1, "NaN counts as zero");
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
