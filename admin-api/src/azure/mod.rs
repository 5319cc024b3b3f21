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
//! Discovery jobs live in memory only, in this control-plane replica: the last
//! [`MAX_DISCOVERY_JOBS`] are kept (the oldest is dropped when a new one starts), and a restart
//! forgets them. The account keys a discovery read are held with its job as [`Secret`]s and never
//! returned; an import reads every key again (`listKeys`) so it stores the current one, unless
//! it imports in Entra ID mode (`auth: "entra"`): then no key is read at all, nor stored.
//!
//! [`Secret`]: modelgw_model::Secret

pub(crate) mod discovery;
pub(crate) mod import;
pub(crate) mod proposals;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use modelgw_control_plane::azure::arm::arm_endpoint_from_lookup;
use modelgw_control_plane::azure::credential::CredentialConfigError;
use modelgw_control_plane::azure::{
    ArmClient, ArmClientOptions, CredentialOptions, CredentialSettings, DiscoveryOptions,
    DiscoveryProgress, DiscoveryReport,
};
use tokio::sync::watch;
use uuid::Uuid;

pub use import::MAX_IMPORT_IDS;

/// Discovery jobs kept in memory. A job is looked at for minutes (polled to the end, then
/// imported); 20 covers several operators working at once without holding keys of long-gone
/// runs.
pub const MAX_DISCOVERY_JOBS: usize = 20;

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

/// The Azure import configuration and the in-memory discovery jobs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AzureImport {
    config: Arc<AzureImportConfig>,
    jobs: Arc<Mutex<VecDeque<Arc<Job>>>>,
}

impl AzureImport {
    pub fn new(config: AzureImportConfig) -> Self {
        Self { config: Arc::new(config), jobs: Arc::default() }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn find(&self, id: Uuid) -> Option<Arc<Job>> {
        self.jobs().iter().find(|j| j.id == id).cloned()
    }
}

#[derive(Debug)]
struct Job {
    id: Uuid,
    started_at: DateTime<Utc>,
    progress: watch::Receiver<DiscoveryProgress>,
    outcome: Mutex<Option<JobOutcome>>,
}

#[derive(Debug)]
struct JobOutcome {
    finished_at: DateTime<Utc>,
    result: Result<(DiscoveryReport, ArmClient), String>,
}

impl Job {
    fn outcome(&self) -> std::sync::MutexGuard<'_, Option<JobOutcome>> {
        self.outcome.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
