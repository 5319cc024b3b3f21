//! The domain model of Model Gateway, shared by the control plane and the data plane.
//!
//! Owns: identifiers and versions (newtypes), the configuration entities, the routing
//! snapshot in domain form and its one set of rules (`Snapshot::validate`), the limits and
//! reserved names of the configuration (`limits`), gateway keys' limits, usage and budget
//! leases (`keys`), request traces (`traces`), every message of the control-plane ↔
//! data-plane protocol in domain form (`protocol`), traffic statistics and their shared
//! latency buckets (`stats`), and the `Secret` and `PinKey` wrappers that keep
//! credentials and keys out of logs. With the `wire` feature, `wire` owns every conversion to and from
//! the generated types of `modelgw-proto`, with a typed error naming the field.
//! Never touches I/O.

mod ids;
pub mod keys;
pub mod limits;
pub mod protocol;
pub mod quota;
mod secret;
mod snapshot;
pub mod stats;
pub mod traces;
#[cfg(feature = "wire")]
pub mod wire;

pub use ids::{ConfigVersion, EndpointId, GatewayId, GatewayKeyId, NodeId};
pub use quota::QuotaPolicy;
pub use secret::{PinKey, Secret};
pub use snapshot::{
    Credential, DEFAULT_ENTRA_SCOPE, Endpoint, EndpointState, Gateway, GatewayKey, GatewayMember,
    GatewayState, InvalidSnapshot, Platform, RoutingPolicy, RoutingStrategy, Snapshot,
    gateway_key_hash,
};
