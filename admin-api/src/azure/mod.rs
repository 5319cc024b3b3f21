//! `/api/v1/azure/…`: discovery jobs over Azure Resource Manager, importing what they found as
//! Inference Endpoints, and gateway proposals over the imported endpoints.
//!
//! This file owns what the three share: the Azure import configuration and the in-memory
//! discovery jobs ([`AzureImport`]). Each part of the API has its own file (the routes are
//! in the crate's `router`):
//! - [`discovery`]: start a discovery job, poll it;
//! - [`import`]: import deployments a recent discovery found;
//! - [`proposals`]: propose gateways over the imported endpoints.
//!
//! Discovery jobs live in the database (`discovery_jobs`, `modelgw_control_plane::store`), so
//! any control-plane replica answers for any job and can import what it found. The replica
//! that started a job runs it: it writes the progress as it changes (at most every
//! [`PROGRESS_WRITE_INTERVAL`]) and a heartbeat every [`JobHeartbeat::every`]; a running job
//! whose heartbeat is older than [`JobHeartbeat::stale_after`] is shown, and marked in the
//! database, as failed by whichever replica reads it first ("the control-plane replica running
//! this discovery stopped"). The newest [`MAX_DISCOVERY_JOBS`] are kept.
//!
//! No account key is ever stored with a job: the stored report serializes without them, and an
//! import reads every key again (`listKeys`, with an ARM client built from the configuration
//! on the replica that imports) so it stores the current one, unless it imports in Entra ID
//! mode (`auth: "entra"`): then no key is read at all, nor stored.

pub(crate) mod discovery;
pub(crate) mod import;
pub(crate) mod proposals;

use std::sync::Arc;
use std::time::Duration;

use modelgw_control_plane::azure::arm::arm_endpoint_from_lookup;
use modelgw_control_plane::azure::credential::CredentialConfigError;
use modelgw_control_plane::azure::{
    ARM_SCOPE, ArmClient, ArmClientOptions, CredentialOptions, CredentialSettings,
    DiscoveryOptions, resolve,
};
use modelgw_control_plane::store::DiscoveryReplica;
use uuid::Uuid;

pub use import::MAX_IMPORT_IDS;

/// Discovery jobs kept (the newest, across all replicas). A job is looked at for minutes
/// (polled to the end, then imported); 20 covers several operators working at once, and a
/// count (rather than an age) bounds the table whatever the rate of discoveries.
pub const MAX_DISCOVERY_JOBS: usize = 20;

/// How often a running job writes its progress when it changed: what another replica's answer
/// may lag behind the one running it. Each write is one small `UPDATE`.
pub const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_millis(500);

/// How a running discovery job shows that its replica is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobHeartbeat {
    /// The running replica writes a heartbeat this often, even when nothing progressed (a
    /// discovery waiting out a 429's `Retry-After` makes no progress for up to a minute).
    pub every: Duration,
    /// A running job whose last heartbeat is older than this is failed: its replica stopped.
    /// Six missed heartbeats, so a slow database write or a GC-like pause never fails a live
    /// job; replicas' clocks must agree far better than this (they compare timestamps).
    pub stale_after: Duration,
}

impl Default for JobHeartbeat {
    fn default() -> Self {
        Self { every: Duration::from_secs(5), stale_after: Duration::from_secs(30) }
    }
}

/// Where discovery gets its credential and which ARM it talks to. Read once at control-plane
/// start ([`AzureImportConfig::from_env`]); tests build one pointing at mocks.
#[derive(Clone, Debug)]
pub struct AzureImportConfig {
    pub credential: CredentialSettings,
    pub credential_options: CredentialOptions,
    pub arm_endpoint: url::Url,
    pub arm_options: ArmClientOptions,
    pub discovery: DiscoveryOptions,
}

/// A bad Azure import configuration in the environment.
#[derive(Debug, thiserror::Error)]
pub enum AzureConfigError {
    #[error(transparent)]
    Credential(#[from] CredentialConfigError),
    #[error("MODELGW_ARM_ENDPOINT is not a URL: {0}")]
    ArmEndpoint(#[from] url::ParseError),
}

impl AzureImportConfig {
    /// `MODELGW_AZURE_CREDENTIAL`, `AZURE_*`, `MODELGW_ARM_ENDPOINT`,
    /// `MODELGW_AZURE_SUBSCRIPTIONS` from the process environment.
    pub fn from_env() -> Result<Self, AzureConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AzureConfigError> {
        Ok(Self {
            credential: CredentialSettings::from_lookup(&lookup)?,
            credential_options: CredentialOptions::default(),
            arm_endpoint: arm_endpoint_from_lookup(&lookup)?,
            arm_options: ArmClientOptions::default(),
            discovery: DiscoveryOptions::from_lookup(&lookup),
        })
    }
}

/// The Azure import configuration, this replica's identity and the heartbeat rule of
/// discovery jobs (the jobs themselves are in the store). Cheap to clone.
#[derive(Clone, Debug)]
pub struct AzureImport {
    config: Arc<AzureImportConfig>,
    replica: Arc<DiscoveryReplica>,
    heartbeat: JobHeartbeat,
}

impl AzureImport {
    /// A new replica identity: a random instance id (a restarted process is another replica,
    /// so the heartbeat rule covers jobs its previous life left running) and the host name.
    pub fn new(config: AzureImportConfig) -> Self {
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown host".to_owned());
        let replica = DiscoveryReplica { instance_id: Uuid::new_v4().simple().to_string(), host };
        Self {
            config: Arc::new(config),
            replica: Arc::new(replica),
            heartbeat: JobHeartbeat::default(),
        }
    }

    /// Another heartbeat rule (tests shorten it).
    pub fn with_heartbeat(mut self, heartbeat: JobHeartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// The replica that jobs started here are recorded as running on.
    pub fn replica(&self) -> &DiscoveryReplica {
        &self.replica
    }
}

/// An ARM client over the configured credential, as discovery and import use it. The error
/// names every credential tried and why each failed; it never holds a secret.
async fn arm_client(config: &AzureImportConfig) -> Result<ArmClient, String> {
    let resolved = resolve(&config.credential, &config.credential_options, ARM_SCOPE)
        .await
        .map_err(|e| e.to_string())?;
    ArmClient::new(config.arm_endpoint.clone(), resolved.credential, config.arm_options.clone())
        .map_err(|e| e.to_string())
}
