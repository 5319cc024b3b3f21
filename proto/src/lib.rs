//! Wire types of the control-plane ↔ data-plane protocol, generated from `proto/`.
//!
//! Only this crate sees generated types; the rest of the workspace converts them into the
//! domain model (`modelgw-model`) with `TryFrom`, which names the field that is wrong.

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
    }
}

pub use config::v1 as cfg;
