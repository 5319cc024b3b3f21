//! Wire types of the control-plane ↔ data-plane protocol, generated from `proto/`.
//!
//! Only `modelgw-model`'s `wire` module (the conversions) and the two transport files (the
//! control plane's gRPC server, the data plane's control-plane client) name these types; the
//! rest of the workspace speaks the domain model.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod config {
    pub mod v1 {
        tonic::include_proto!("modelgw.config.v1");

        impl std::fmt::Debug for Credential {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match &self.kind {
                    Some(credential::Kind::ApiKey(_)) => {
                        f.write_str("Credential::ApiKey(<redacted>)")
                    }
                    Some(credential::Kind::Entra(e)) => {
                        write!(f, "Credential::Entra({:?})", e.scope)
                    }
                    None => f.write_str("Credential::None"),
                }
            }
        }

        impl std::fmt::Debug for Gateway {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("Gateway")
                    .field("id", &self.id)
                    .field("name", &self.name)
                    .field("members", &self.members)
                    .field("keys", &self.keys)
                    .field("routing", &self.routing)
                    .field("key_limits", &self.key_limits)
                    .field("traces", &self.traces)
                    .field("pin_key", &"<redacted>")
                    .finish()
            }
        }
    }
}

pub use config::v1 as cfg;

/// The control plane's server of `ConfigDiscovery/Stream` whose responses are pre-encoded
/// [`cfg::ControlPlaneFrame`]s (see `frames.proto`): the same route and wire bytes as
/// `cfg::config_discovery_server`, without a deep clone or re-encode per stream.
pub mod frames {
    include!(concat!(env!("OUT_DIR"), "/frames/modelgw.config.v1.ConfigDiscovery.rs"));
}
