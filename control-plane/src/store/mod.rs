//! The configuration store. Every mutating call commits in one transaction that also bumps
//! the configuration version, and returns the version it committed.
//!
//! CONTRACT (shared with `modelgw-admin-api`): signatures here are fixed; bodies are being
//! implemented.

use chrono::{DateTime, Utc};
use modelgw_model::{
    ConfigVersion, EndpointId, GatewayId, GatewayKeyId, GatewayMember, Platform, Secret, Snapshot,
};

use crate::MasterKey;

/// Which database the store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// An Inference Endpoint as the admin API shows it: never the key, only its hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    pub id: EndpointId,
    pub name: String,
    pub platform: Platform,
    /// Base URL of the upstream resource (admin API field `endpoint`).
    pub endpoint: url::Url,
    pub deployment: String,
    pub model_name: String,
    pub model_version: String,
    pub region: String,
    /// e.g. `…a1b2`.
    pub api_key_hint: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A validated new endpoint (the admin API validated formats; the store enforces uniqueness).
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    pub name: String,
    pub platform: Platform,
    pub endpoint: url::Url,
    pub deployment: String,
    pub model_name: String,
    pub model_version: String,
    pub region: String,
    pub api_key: Secret,
}

/// A partial update: `None` leaves the field as it is.
#[derive(Clone, Debug, Default)]
pub struct EndpointPatch {
    pub name: Option<String>,
    pub platform: Option<Platform>,
    pub endpoint: Option<url::Url>,
    pub deployment: Option<String>,
    pub model_name: Option<String>,
    pub model_version: Option<String>,
    pub region: Option<String>,
    pub api_key: Option<Secret>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRecord {
    pub id: GatewayId,
    pub name: String,
    /// In the order they were given.
    pub members: Vec<GatewayMember>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewGateway {
    pub name: String,
    pub members: Vec<GatewayMember>,
}

#[derive(Clone, Debug, Default)]
pub struct GatewayPatch {
    pub name: Option<String>,
    /// Replaces the whole member list when present.
    pub members: Option<Vec<GatewayMember>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayKeyRecord {
    pub id: GatewayKeyId,
    pub gateway_id: GatewayId,
    pub name: String,
    /// Last four characters of the secret, e.g. `…9f3c`.
    pub hint: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Store failures. Messages name the field and never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    /// A uniqueness rule was violated, e.g. `field = "name"`.
    #[error("{field}: {reason}")]
    Conflict { field: String, reason: String },
    /// A gateway member names an endpoint that does not exist; `field` is e.g. `endpoints[1].endpoint_id`.
    #[error("{field}: unknown inference endpoint {endpoint_id}")]
    UnknownEndpoint { field: String, endpoint_id: EndpointId },
    /// The endpoint is a member of these gateways (by name); delete with force to remove it from them.
    #[error("inference endpoint is used by gateways: {}", gateways.join(", "))]
    InUse { gateways: Vec<String> },
    #[error("secret could not be decrypted or encrypted: {0}")]
    Crypto(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

/// The configuration store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    _private: (),
}

#[allow(unused_variables, clippy::unimplemented)]
impl Store {
    /// Connects and runs migrations. `sqlite:` URLs create the file if missing; `postgres://`
    /// URLs use PostgreSQL.
    pub async fn connect(url: &str, master_key: MasterKey) -> Result<Store, StoreError> {
        unimplemented!()
    }
    pub fn backend(&self) -> Backend {
        unimplemented!()
    }
    pub async fn config_version(&self) -> Result<ConfigVersion, StoreError> {
        unimplemented!()
    }

    pub async fn create_endpoint(
        &self,
        new: NewEndpoint,
    ) -> Result<(EndpointRecord, ConfigVersion), StoreError> {
        unimplemented!()
    }
    pub async fn list_endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        unimplemented!()
    }
    pub async fn get_endpoint(&self, id: EndpointId) -> Result<EndpointRecord, StoreError> {
        unimplemented!()
    }
    pub async fn update_endpoint(
        &self,
        id: EndpointId,
        patch: EndpointPatch,
    ) -> Result<(EndpointRecord, ConfigVersion), StoreError> {
        unimplemented!()
    }
    /// Refuses with `InUse` when a gateway uses it, unless `force` (then memberships go too).
    pub async fn delete_endpoint(
        &self,
        id: EndpointId,
        force: bool,
    ) -> Result<ConfigVersion, StoreError> {
        unimplemented!()
    }

    pub async fn create_gateway(
        &self,
        new: NewGateway,
    ) -> Result<(GatewayRecord, ConfigVersion), StoreError> {
        unimplemented!()
    }
    pub async fn list_gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        unimplemented!()
    }
    pub async fn get_gateway(&self, id: GatewayId) -> Result<GatewayRecord, StoreError> {
        unimplemented!()
    }
    pub async fn update_gateway(
        &self,
        id: GatewayId,
        patch: GatewayPatch,
    ) -> Result<(GatewayRecord, ConfigVersion), StoreError> {
        unimplemented!()
    }
    /// Deletes the gateway and its keys.
    pub async fn delete_gateway(&self, id: GatewayId) -> Result<ConfigVersion, StoreError> {
        unimplemented!()
    }

    /// Creates a key; returns the record and the secret, which is never retrievable again.
    pub async fn create_gateway_key(
        &self,
        gateway_id: GatewayId,
        name: String,
    ) -> Result<(GatewayKeyRecord, Secret, ConfigVersion), StoreError> {
        unimplemented!()
    }
    /// All keys of the gateway, revoked ones included (with `revoked_at`).
    pub async fn list_gateway_keys(
        &self,
        gateway_id: GatewayId,
    ) -> Result<Vec<GatewayKeyRecord>, StoreError> {
        unimplemented!()
    }
    pub async fn revoke_gateway_key(
        &self,
        gateway_id: GatewayId,
        key_id: GatewayKeyId,
    ) -> Result<ConfigVersion, StoreError> {
        unimplemented!()
    }

    /// The admin token's SHA-256: from `env_token` when given; else the stored one; else a new
    /// token is generated, its hash stored, and the plaintext returned once (to print).
    pub async fn admin_token(
        &self,
        env_token: Option<&str>,
    ) -> Result<([u8; 32], Option<Secret>), StoreError> {
        unimplemented!()
    }

    /// A consistent read of the whole configuration at one version, with endpoint keys
    /// decrypted and revoked gateway keys left out.
    pub async fn load_snapshot(&self) -> Result<Snapshot, StoreError> {
        unimplemented!()
    }
}
