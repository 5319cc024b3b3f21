//! Snapshot distribution: a publisher reloads the snapshot from the store after each change
//! (and on a poll tick, for control-plane replicas sharing one PostgreSQL) and pushes it to
//! every subscribed data plane over the gRPC `Stream`; the registry tracks each data plane's
//! applied version, last-seen time and reported endpoint health.
//!
//! CONTRACT: signatures fixed; bodies being implemented.

use chrono::{DateTime, Utc};
use modelgw_model::{ConfigVersion, EndpointId, EndpointState, NodeId};

/// Handle the admin API uses to say "configuration committed at this version": the publisher
/// reloads and pushes at once. Cheap to clone.
#[derive(Clone)]
pub struct ConfigChanges {
    _private: (),
}

#[allow(unused_variables, clippy::unimplemented)]
impl ConfigChanges {
    pub fn committed(&self, version: ConfigVersion) {
        unimplemented!()
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

/// Endpoint health as reported by data planes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointHealthView {
    pub state: EndpointState,
    pub reason: Option<String>,
    pub until: Option<DateTime<Utc>>,
    pub reported_by: Option<NodeId>,
}

/// Registry of data planes. Cheap to clone.
#[derive(Clone, Default)]
pub struct DataPlaneRegistry {
    _private: (),
}

#[allow(unused_variables, clippy::unimplemented)]
impl DataPlaneRegistry {
    /// All data planes ever seen by this control plane process, sorted by node id.
    pub fn data_planes(&self) -> Vec<DataPlaneStatus> {
        unimplemented!()
    }
    /// Health of an endpoint; `Healthy` with no reason when nothing was reported or the
    /// reported window has passed.
    pub fn endpoint_health(&self, id: EndpointId) -> EndpointHealthView {
        unimplemented!()
    }
}
