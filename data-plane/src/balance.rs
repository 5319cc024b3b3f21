//! Endpoint selection: which members of a gateway a request tries, in which order.
//!
//! One small trait is the seam for a fuller routing engine later; [`PriorityWeighted`] is the
//! baseline policy.

use std::sync::Arc;
use std::time::Instant;

use rand::Rng;

use crate::health::{Health, HealthRegistry};
use crate::snapshot::{CompiledEndpoint, CompiledGateway, CompiledMember};

/// Why a candidate is not tried for this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    Throttling { until: Instant },
    Error { until: Instant },
}

impl Skip {
    pub fn until(self) -> Instant {
        match self {
            Skip::Throttling { until } | Skip::Error { until } => until,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Throttling { .. } => "throttling",
            Skip::Error { .. } => "error",
        }
    }
}

/// One member in the order the request should go through them. Skipped members stay in the
/// list (with the reason) so the request log and the final answer can account for them.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub endpoint: Arc<CompiledEndpoint>,
    pub skip: Option<Skip>,
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

/// Baseline policy: lowest priority group first; within a group a weighted-random order
/// (weight 0 = only after the weighted members); members currently throttling or in error
/// are marked skipped.
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
        let mut out = Vec::with_capacity(gateway.member_count());
        for group in &gateway.groups {
            for index in weighted_order(&group.members, &mut rng) {
                let endpoint = Arc::clone(&group.members[index].endpoint);
                let skip = match health.current(endpoint.id, now) {
                    Health::Healthy => None,
                    Health::Throttling { until } => Some(Skip::Throttling { until }),
                    Health::Error { until } => Some(Skip::Error { until }),
                };
                out.push(Candidate { endpoint, skip });
            }
        }
        out
    }
}

/// A random permutation where each member comes first with probability proportional to its
/// weight (Efraimidis–Spirakis: sort by `u^(1/w)` descending). Weight-0 members get negative
/// keys, so they follow all weighted ones in random order.
pub(crate) fn weighted_order<R: Rng + ?Sized>(
    members: &[CompiledMember],
    rng: &mut R,
) -> Vec<usize> {
    if members.len() <= 1 {
        return (0..members.len()).collect();
    }
    let mut keyed: Vec<(f64, usize)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let u: f64 = rng.random();
            let key = if m.weight == 0 {
                -u - f64::MIN_POSITIVE
            } else {
                u.powf(1.0 / f64::from(m.weight))
            };
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
    use crate::snapshot::RoutingTable;
    use crate::snapshot::tests::{endpoint, gateway, member};
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
        let t = table(&[(0, 3, true), (0, 1, true), (0, 0, true)]);
        let members = &t.gateway_by_name("gw").expect("gw").groups[0].members;
        let mut rng = StdRng::seed_from_u64(7);
        let mut first = [0u32; 3];
        for _ in 0..4000 {
            let order = weighted_order(members, &mut rng);
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
}
