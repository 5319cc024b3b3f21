//! The domain model of Model Gateway, shared by the control plane and the data plane.
//!
//! Owns: identifiers and versions (newtypes), the configuration entities, the routing
//! snapshot in domain form, and the `Secret` wrapper that keeps credentials out of logs.
//! Converts from the wire (`modelgw-proto`) with `TryFrom`, naming the field that is wrong.
//! Never touches I/O.

mod ids;
mod secret;
mod snapshot;

pub use ids::{ConfigVersion, EndpointId, GatewayId, GatewayKeyId, NodeId};
pub use secret::Secret;
pub use snapshot::{
    Credential, DEFAULT_ENTRA_SCOPE, Endpoint, EndpointState, Gateway, GatewayKey, GatewayMember,
    GatewayState, InvalidSnapshot, Platform, RoutingPolicy, RoutingStrategy, Snapshot,
    gateway_key_hash,
};
