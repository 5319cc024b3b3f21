//! Applying what the control plane sends, in domain form: a snapshot is compiled and swapped
//! in (ACK) or rejected with a reason naming the field (NACK, the last good one keeps
//! serving); fleet health is merged into this node's health as remote windows; budget leases
//! go to the key limits. The transport (`control_plane_client`) decodes the wire and calls
//! these; tests call them directly.

use std::time::Instant;

use modelgw_model::protocol::{DataPlaneMessage, FleetHealth, Leases, Nack};
use modelgw_model::{ConfigVersion, Snapshot};
use tracing::{info, warn};

use crate::health::HealthRegistry;
use crate::limits::{KeyLimiter, LeasesApplied};
use crate::routing_table::{RoutingTable, SnapshotStore};

/// What applying one snapshot resulted in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Compiled and swapped in.
    Applied { version: ConfigVersion },
    /// Valid, but this version (or a newer one) is already served.
    AlreadyCurrent { version: ConfigVersion },
    /// Rejected; the previous table keeps serving. `reason` names the field, never a secret.
    Rejected { version: ConfigVersion, reason: String },
}

impl ApplyOutcome {
    /// The ACK or NACK for the control plane.
    pub fn to_message(&self) -> DataPlaneMessage {
        match self {
            ApplyOutcome::Applied { version } | ApplyOutcome::AlreadyCurrent { version } => {
                DataPlaneMessage::Ack { version: *version }
            }
            ApplyOutcome::Rejected { version, reason } => {
                DataPlaneMessage::Nack(Nack { version: *version, reason: reason.clone() })
            }
        }
    }

    /// A snapshot that could not even be read (the transport's decode failed): logged like
    /// any rejection.
    pub fn unreadable(store: &SnapshotStore, version: ConfigVersion, reason: String) -> Self {
        reject(store, version, reason)
    }
}

fn reject(store: &SnapshotStore, version: ConfigVersion, reason: String) -> ApplyOutcome {
    warn!(
        version = version.0,
        serving = store.version().0,
        %reason,
        "snapshot rejected; keeping the last good one"
    );
    ApplyOutcome::Rejected { version, reason }
}

/// Validates, compiles and swaps in `snapshot`. An older version than the one served is
/// rejected (versions only grow); the same version is acknowledged again.
pub fn apply_snapshot(store: &SnapshotStore, snapshot: &Snapshot) -> ApplyOutcome {
    let started = Instant::now();
    let version = snapshot.version;
    let table = match RoutingTable::compile(snapshot) {
        Ok(table) => table,
        Err(err) => return reject(store, version, err.to_string()),
    };
    let (gateways, endpoints) = (table.gateways().len(), table.endpoint_count());
    if store.swap_if_newer(table) {
        // Validation, compilation and the swap; protobuf decoding happened before.
        let apply_us = started.elapsed().as_micros() as u64;
        info!(version = version.0, gateways, endpoints, apply_us, "snapshot applied");
        return ApplyOutcome::Applied { version };
    }
    let serving = store.version();
    if serving == version {
        info!(version = version.0, "snapshot already applied");
        return ApplyOutcome::AlreadyCurrent { version };
    }
    let reason = format!("version {version} is older than the applied version {serving}");
    warn!(version = version.0, serving = serving.0, "stale snapshot rejected");
    ApplyOutcome::Rejected { version, reason }
}

/// Merges the control plane's fleet view into `health` as remote windows (replacing the
/// previous fleet view). Healthy entries and ended windows are ignored; entries that could
/// not be read were already left out by the decoder. Returns how many windows are active.
pub fn apply_fleet_health(health: &HealthRegistry, fleet: &FleetHealth) -> usize {
    let now = Instant::now();
    let active = health.apply_fleet(&fleet.endpoints, now);
    let cleared = health.apply_resets(&fleet.resets, now);
    let listed = fleet.endpoints.len() + fleet.skipped.len();
    if cleared > 0 {
        info!(cleared, "operator health reset applied to this data plane's own windows");
    }
    info!(listed, active, "fleet health applied");
    active
}

/// Applies the control plane's budget leases (grants are cumulative: only ever raised) and
/// renews every grant held for `valid_for`. Entries that could not be read were left out by
/// the decoder; they are logged here.
pub fn apply_leases(limits: &KeyLimiter, leases: &Leases) -> LeasesApplied {
    for skipped in &leases.skipped {
        warn!(reason = %skipped, "budget lease unreadable; ignored");
    }
    let done = limits.apply_leases(leases);
    if done.ignored > 0 {
        info!(ignored = done.ignored, "budget leases for unknown keys or ended windows ignored");
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing_table::tests::one_gateway as snapshot;
    use modelgw_model::{Credential, Secret};

    #[test]
    fn a_valid_snapshot_is_applied_and_acked() {
        let store = SnapshotStore::new();
        let outcome = apply_snapshot(&store, &snapshot(3));
        assert_eq!(outcome, ApplyOutcome::Applied { version: ConfigVersion(3) });
        assert_eq!(store.version(), ConfigVersion(3));
        assert_eq!(outcome.to_message(), DataPlaneMessage::Ack { version: ConfigVersion(3) });
        assert_eq!(
            apply_snapshot(&store, &snapshot(3)),
            ApplyOutcome::AlreadyCurrent { version: ConfigVersion(3) }
        );
    }

    #[test]
    fn an_invalid_snapshot_is_nacked_naming_the_field_and_the_old_one_keeps_serving() {
        let store = SnapshotStore::new();
        apply_snapshot(&store, &snapshot(3));
        let mut bad = snapshot(4);
        bad.endpoints[0].base_url = "ftp://eus".parse().expect("url");
        let outcome = apply_snapshot(&store, &bad);
        let ApplyOutcome::Rejected { version, reason } = &outcome else { panic!("{outcome:?}") };
        assert_eq!(*version, ConfigVersion(4));
        assert_eq!(reason, "endpoints[0].base_url: must be an http(s) URL");
        assert_eq!(store.version(), ConfigVersion(3), "the last good snapshot keeps serving");
        assert!(store.load().gateway_by_name("chat").is_some());
        assert_eq!(
            outcome.to_message(),
            DataPlaneMessage::Nack(Nack { version: ConfigVersion(4), reason: reason.clone() })
        );
    }

    #[test]
    fn compile_failures_are_nacked_without_the_secret() {
        let store = SnapshotStore::new();
        let mut bad = snapshot(2);
        bad.endpoints[0].credential = Credential::ApiKey(Secret::new("upstream\nsecret"));
        let ApplyOutcome::Rejected { reason, .. } = apply_snapshot(&store, &bad) else {
            panic!("expected a rejection")
        };
        assert_eq!(reason, "endpoints[0].credential: not a valid header value");
        assert!(!store.is_ready());
    }

    #[test]
    fn an_older_snapshot_is_nacked() {
        let store = SnapshotStore::new();
        apply_snapshot(&store, &snapshot(5));
        let outcome = apply_snapshot(&store, &snapshot(4));
        assert!(
            matches!(outcome, ApplyOutcome::Rejected { version: ConfigVersion(4), .. }),
            "{outcome:?}"
        );
        assert_eq!(store.version(), ConfigVersion(5));
    }
}
