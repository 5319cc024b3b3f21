//! `/api/v1/azure/…`: discovery jobs over Azure Resource Manager, importing what they found as
//! Inference Endpoints, and gateway proposals over the imported endpoints.
//!
//! Discovery jobs live in memory only, in this control-plane replica: the last
//! [`MAX_DISCOVERY_JOBS`] are kept (the oldest is dropped when a new one starts), and a restart
//! forgets them. The account keys a discovery read are held with its job as [`Secret`]s and never
//! returned; an import reads every key again (`listKeys`) so it stores the current one, unless
//! it imports in Entra ID mode (`auth: "entra"`): then no key is read at all, nor stored.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::{StatusCode, header};
use modelgw_control_plane::azure::arm::arm_endpoint_from_lookup;
use modelgw_control_plane::azure::credential::CredentialConfigError;
use modelgw_control_plane::azure::{
    ARM_SCOPE, ArmClient, ArmClientOptions, CredentialOptions, CredentialSettings,
    DiscoveredDeployment, DiscoveryOptions, DiscoveryProgress, DiscoveryReport, discover, resolve,
};
use modelgw_control_plane::store::{AuthMode, AzureEndpointRecord, AzureImportItem, EndpointAuth};
use modelgw_model::EndpointId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::Instrument as _;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::body::JsonBody;
use crate::problem::{ApiError, FieldError, Problem};
use crate::validate::path_id;
use crate::{AdminState, ConfigChange};

/// Discovery jobs kept in memory. A job is looked at for minutes (polled to the end, then
/// imported); 20 covers several operators working at once without holding keys of long-gone
/// runs.
pub const MAX_DISCOVERY_JOBS: usize = 20;
/// Most deployment ids one import accepts: far above any real tenant's OpenAI deployments,
/// low enough that one request cannot hold the write transaction for long.
pub const MAX_IMPORT_IDS: usize = 1000;
/// Gateway member weights are 1..=1000 (see `validate::WEIGHT_RANGE`); the largest capacity of
/// a proposal gets the top weight.
const MAX_PROPOSAL_WEIGHT: u64 = 1000;
/// SKU names ending in this are provisioned throughput (PTU): reserved capacity, paid for
/// whether used or not, so proposals route to them first.
const PROVISIONED_SKU_SUFFIX: &str = "provisionedmanaged";
/// Longest gateway name (`validate::MAX_GATEWAY_NAME_CHARS`).
const MAX_GATEWAY_NAME_CHARS: usize = 64;

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

/// Where a discovery job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryStatus {
    Running,
    /// Finished; some scopes may still have failed (see `errors`).
    Succeeded,
    /// No credential worked, or no subscription could be read at all.
    Failed,
}

/// A started discovery.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveryStarted {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub status: DiscoveryStatus,
}

/// How far a discovery got.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveryProgressResponse {
    pub subscriptions_scanned: usize,
    pub subscriptions_total: usize,
    /// OpenAI/AIServices accounts; the total grows while subscriptions are scanned.
    pub accounts_scanned: usize,
    pub accounts_total: usize,
    pub deployments_found: usize,
}

/// A scope discovery could not read.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveryErrorResponse {
    /// `credential`, `/` (tenant), `/subscriptions/{id}` or an account's ARM id.
    pub scope: String,
    pub message: String,
    /// The RBAC permission missing, when known (403s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
}

/// A deployment discovery found. Never carries its account's key.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveredDeploymentResponse {
    /// ARM resource id of the deployment: what `POST /azure/imports` takes.
    pub id: String,
    pub subscription_id: String,
    pub resource_group: String,
    pub account: String,
    pub location: String,
    /// The account's Azure OpenAI endpoint.
    pub endpoint: String,
    pub deployment: String,
    pub model_name: String,
    pub model_version: String,
    pub sku: String,
    pub capacity: Option<u32>,
    /// What an operator should read before importing it.
    pub warnings: Vec<String>,
}

impl From<&DiscoveredDeployment> for DiscoveredDeploymentResponse {
    fn from(d: &DiscoveredDeployment) -> Self {
        Self {
            id: d.id.clone(),
            subscription_id: d.subscription_id.clone(),
            resource_group: d.resource_group.clone(),
            account: d.account.clone(),
            location: d.location.clone(),
            endpoint: d.endpoint.clone(),
            deployment: d.deployment.clone(),
            model_name: d.model_name.clone(),
            model_version: d.model_version.clone(),
            sku: d.sku.clone(),
            capacity: d.capacity,
            warnings: d.warnings.clone(),
        }
    }
}

/// A discovery job.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveryResponse {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub status: DiscoveryStatus,
    pub started_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    pub progress: DiscoveryProgressResponse,
    pub errors: Vec<DiscoveryErrorResponse>,
    /// Sorted by id; empty while running.
    pub deployments: Vec<DiscoveredDeploymentResponse>,
}

fn job_response(job: &Job) -> DiscoveryResponse {
    let progress = job.progress.borrow().clone();
    let outcome = job.outcome();
    let (status, finished_at, errors, deployments) = match outcome.as_ref() {
        None => (DiscoveryStatus::Running, None, Vec::new(), Vec::new()),
        Some(JobOutcome { finished_at, result: Err(message) }) => (
            DiscoveryStatus::Failed,
            Some(*finished_at),
            vec![DiscoveryErrorResponse {
                scope: "credential".to_owned(),
                message: message.clone(),
                permission: None,
            }],
            Vec::new(),
        ),
        Some(JobOutcome { finished_at, result: Ok((report, _)) }) => (
            if report_failed(report) {
                DiscoveryStatus::Failed
            } else {
                DiscoveryStatus::Succeeded
            },
            Some(*finished_at),
            report
                .errors
                .iter()
                .map(|e| DiscoveryErrorResponse {
                    scope: e.scope.clone(),
                    message: e.message.clone(),
                    permission: e.permission.clone(),
                })
                .collect(),
            report.deployments.iter().map(DiscoveredDeploymentResponse::from).collect(),
        ),
    };
    DiscoveryResponse {
        id: job.id,
        status,
        started_at: job.started_at,
        finished_at,
        progress: DiscoveryProgressResponse {
            subscriptions_scanned: progress.subscriptions_scanned,
            subscriptions_total: progress.subscriptions_total,
            accounts_scanned: progress.accounts_scanned,
            accounts_total: progress.accounts_total,
            deployments_found: progress.deployments_found,
        },
        errors,
        deployments,
    }
}

/// A run that read no subscription at all (the tenant-level list or every subscription failed)
/// found nothing for a reason the operator must fix: that is a failure, not an empty tenant.
fn report_failed(report: &DiscoveryReport) -> bool {
    report.deployments.is_empty()
        && !report.errors.is_empty()
        && report.errors.iter().all(|e| {
            e.scope == "/"
                || (e.scope.starts_with("/subscriptions/") && !e.scope.contains("/providers/"))
        })
}

/// Start a discovery of Azure OpenAI deployments.
#[utoipa::path(
    post,
    path = "/api/v1/azure/discoveries",
    operation_id = "start_azure_discovery",
    tag = "azure",
    responses(
        (status = 202, description = "Started; poll the Location", body = DiscoveryStarted,
            headers(("location" = String, description = "URL of the discovery job"))),
    )
)]
pub async fn start_discovery(State(state): State<AdminState>) -> impl IntoResponse {
    let azure = state.azure.clone();
    let (progress_tx, progress_rx) = watch::channel(DiscoveryProgress::default());
    let job = Arc::new(Job {
        id: Uuid::now_v7(),
        started_at: Utc::now(),
        progress: progress_rx,
        outcome: Mutex::new(None),
    });
    {
        let mut jobs = azure.jobs();
        while jobs.len() >= MAX_DISCOVERY_JOBS {
            if let Some(old) = jobs.pop_front() {
                tracing::info!(discovery.id = %old.id, "dropping the oldest discovery job");
            }
        }
        jobs.push_back(job.clone());
    }
    let config = azure.config.clone();
    let span = tracing::info_span!("azure.discovery.job", discovery.id = %job.id);
    let task_job = job.clone();
    tokio::spawn(
        async move {
            let result = run_discovery(&config, &progress_tx).await;
            match &result {
                Ok((report, _)) => tracing::info!(
                    deployments = report.deployments.len(),
                    errors = report.errors.len(),
                    "discovery job finished"
                ),
                Err(message) => tracing::warn!(error = %message, "discovery job failed"),
            }
            *task_job.outcome() = Some(JobOutcome { finished_at: Utc::now(), result });
        }
        .instrument(span),
    );
    tracing::info!(discovery.id = %job.id, "discovery started");
    let location = format!("/api/v1/azure/discoveries/{}", job.id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(DiscoveryStarted { id: job.id, status: DiscoveryStatus::Running }),
    )
}

async fn run_discovery(
    config: &AzureImportConfig,
    progress: &watch::Sender<DiscoveryProgress>,
) -> Result<(DiscoveryReport, ArmClient), String> {
    // The error lists every credential tried and why each failed; it never holds a secret.
    let resolved = resolve(&config.credential, &config.credential_options, ARM_SCOPE)
        .await
        .map_err(|e| e.to_string())?;
    let arm = ArmClient::new(
        config.arm_endpoint.clone(),
        resolved.credential,
        config.arm_options.clone(),
    )
    .map_err(|e| e.to_string())?;
    let report = discover(&arm, &config.discovery, progress).await;
    Ok((report, arm))
}

/// A discovery job: status, progress, errors and what it found.
#[utoipa::path(
    get,
    path = "/api/v1/azure/discoveries/{id}",
    operation_id = "get_azure_discovery",
    tag = "azure",
    params(("id" = String, Path, format = Uuid, description = "Discovery id")),
    responses(
        (status = 200, description = "The discovery", body = DiscoveryResponse),
        (status = 404, description = "No such discovery (or it was dropped)", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn get_discovery(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<DiscoveryResponse>, ApiError> {
    let id: Uuid = path_id("discovery", &id)?;
    let job = state.azure.find(id).ok_or_else(|| ApiError::NotFound {
        detail: format!(
            "discovery {id} not found (only the last {MAX_DISCOVERY_JOBS} are kept, in memory)"
        ),
    })?;
    Ok(Json(job_response(&job)))
}

/// Deployments to import.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// ARM resource ids of deployments found by a recent discovery.
    pub deployment_ids: Vec<String>,
    /// How the data plane will authenticate to the imported endpoints: `api_key` (the
    /// account's key, read with `listKeys` now) or `entra` (the data plane's own Microsoft
    /// Entra ID token; no key is read or stored). When given, existing endpoints are switched
    /// to this mode (switching to `entra` drops their stored key); when omitted, new endpoints
    /// use `api_key` and existing ones keep their mode.
    #[schema(default = "api_key", example = "entra")]
    pub auth: Option<String>,
}

/// What an import did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResponse {
    #[schema(value_type = Vec<String>)]
    pub created: Vec<EndpointId>,
    #[schema(value_type = Vec<String>)]
    pub updated: Vec<EndpointId>,
    #[schema(value_type = Vec<String>)]
    pub unchanged: Vec<EndpointId>,
    /// The configuration version after the import (unchanged when nothing changed).
    pub config_version: u64,
}

/// Import discovered deployments as Inference Endpoints (create, or update by ARM id).
#[utoipa::path(
    post,
    path = "/api/v1/azure/imports",
    operation_id = "import_azure_deployments",
    tag = "azure",
    request_body = ImportRequest,
    responses(
        (status = 200, description = "Imported", body = ImportResponse),
        (status = 422, description = "An id no recent discovery found, or an unknown auth",
            body = Problem,
            content_type = "application/problem+json"),
        (status = 502, description = "listKeys failed (api_key mode)", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn import(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<ImportRequest>,
) -> Result<Json<ImportResponse>, ApiError> {
    let requested = import_auth_mode(req.auth.as_deref())?;
    let found = resolve_ids(&state.azure, &req.deployment_ids)?;
    // Without `auth`, an endpoint imported before keeps its mode: a routine re-import (to pick
    // up a changed capacity or version) must not put keys back on an endpoint an operator moved
    // to Entra ID — its account may have local auth disabled. New endpoints use `api_key`.
    let existing = match requested {
        Some(_) => HashMap::new(),
        None => existing_auth_modes(&state).await?,
    };
    let mode_of = |d: &DiscoveredDeployment| {
        requested
            .or_else(|| existing.get(&d.id.to_ascii_lowercase()).copied())
            .unwrap_or(AuthMode::ApiKey)
    };
    // Keys read now, one listKeys per account: the discovery's may have been rotated since.
    // Entra mode reads none: the caller may not even hold `listKeys` permission.
    let mut keys = HashMap::new();
    for (deployment, arm) in found.iter().filter(|(d, _)| mode_of(d) == AuthMode::ApiKey) {
        let account_id = account_id_of(&deployment.id);
        if keys.contains_key(&account_id.to_ascii_lowercase()) {
            continue;
        }
        let fetched = arm.list_keys(&account_id).await.map_err(|e| {
            tracing::warn!(account = %account_id, error = %e, "listKeys failed at import");
            ApiError::AzureUnavailable { detail: format!("listKeys on {account_id}: {e}") }
        })?;
        keys.insert(account_id.to_ascii_lowercase(), fetched.key1);
    }
    let mut items = Vec::with_capacity(found.len());
    let mut errors = Vec::new();
    for (i, (d, _)) in found.iter().enumerate() {
        let Ok(endpoint) = url::Url::parse(&d.endpoint) else {
            errors.push(FieldError::new(
                format!("deployment_ids[{i}]"),
                "its account reports no valid endpoint URL",
            ));
            continue;
        };
        let auth = match mode_of(d) {
            AuthMode::Entra => EndpointAuth::Entra,
            AuthMode::ApiKey => {
                let Some(key) = keys.get(&account_id_of(&d.id).to_ascii_lowercase()).cloned()
                else {
                    return Err(ApiError::Internal("import lost an account key".to_owned()));
                };
                EndpointAuth::ApiKey(key)
            }
        };
        items.push(AzureImportItem {
            arm_resource_id: d.id.clone(),
            name: format!("{}-{}", d.account, d.deployment),
            endpoint,
            deployment: d.deployment.clone(),
            model_name: d.model_name.clone(),
            model_version: d.model_version.clone(),
            region: d.location.clone(),
            sku_name: d.sku.clone(),
            sku_capacity: d.capacity,
            auth,
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let outcome = state.store.import_azure_endpoints(items).await?;
    tracing::info!(
        auth = requested.map_or("as before (new: api_key)", AuthMode::as_str),
        created = outcome.created.len(),
        updated = outcome.updated.len(),
        unchanged = outcome.unchanged.len(),
        "azure import"
    );
    if outcome.changed() {
        let summary =
            format!("{} created, {} updated", outcome.created.len(), outcome.updated.len());
        state.committed(
            ConfigChange {
                entity: "inference_endpoint",
                action: "azure_import",
                id: &summary,
                name: "",
            },
            outcome.version,
        );
    }
    Ok(Json(ImportResponse {
        created: outcome.created,
        updated: outcome.updated,
        unchanged: outcome.unchanged,
        config_version: outcome.version.0,
    }))
}

/// The import's `auth` (default `api_key`), or a 422 naming `auth`.
/// The mode the request asks for; `None` when it names none.
fn import_auth_mode(value: Option<&str>) -> Result<Option<AuthMode>, ApiError> {
    value
        .map(|s| {
            AuthMode::parse(s.trim()).ok_or_else(|| {
                ApiError::Validation(vec![FieldError::new("auth", "must be api_key or entra")])
            })
        })
        .transpose()
}

/// The auth mode of every imported endpoint, by lower-cased ARM resource id.
async fn existing_auth_modes(state: &AdminState) -> Result<HashMap<String, AuthMode>, ApiError> {
    let modes: HashMap<_, _> =
        state.store.list_endpoints().await?.into_iter().map(|e| (e.id, e.auth)).collect();
    Ok(state
        .store
        .list_azure_endpoints()
        .await?
        .into_iter()
        .filter_map(|a| modes.get(&a.id).map(|m| (a.arm_resource_id.to_ascii_lowercase(), *m)))
        .collect())
}

/// Each requested id with the most recent finished discovery that found it, or a 422 naming
/// every id that no discovery found.
fn resolve_ids(
    azure: &AzureImport,
    ids: &[String],
) -> Result<Vec<(DiscoveredDeployment, ArmClient)>, ApiError> {
    let mut errors = Vec::new();
    if ids.is_empty() {
        errors.push(FieldError::new("deployment_ids", "must list at least one deployment id"));
    } else if ids.len() > MAX_IMPORT_IDS {
        errors.push(FieldError::new(
            "deployment_ids",
            format!("must list at most {MAX_IMPORT_IDS} ids"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let jobs: Vec<Arc<Job>> = azure.jobs().iter().rev().cloned().collect();
    let mut seen = HashSet::new();
    let mut found = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let field = format!("deployment_ids[{i}]");
        if !seen.insert(id.trim().to_ascii_lowercase()) {
            errors.push(FieldError::new(field, "is listed twice"));
            continue;
        }
        let hit = jobs.iter().find_map(|job| {
            let outcome = job.outcome();
            let Some(JobOutcome { result: Ok((report, arm)), .. }) = outcome.as_ref() else {
                return None;
            };
            report
                .deployments
                .iter()
                .find(|d| d.id.eq_ignore_ascii_case(id.trim()))
                .map(|d| (d.clone(), arm.clone()))
        });
        match hit {
            Some(hit) => found.push(hit),
            None => errors.push(FieldError::new(
                field,
                "no recent discovery found this deployment; run a discovery first",
            )),
        }
    }
    if errors.is_empty() { Ok(found) } else { Err(ApiError::Validation(errors)) }
}

/// `…/accounts/{a}/deployments/{d}` → `…/accounts/{a}`.
fn account_id_of(deployment_id: &str) -> String {
    let lower = deployment_id.to_ascii_lowercase();
    match lower.rfind("/deployments/") {
        Some(at) => deployment_id[..at].to_owned(),
        None => deployment_id.to_owned(),
    }
}

/// A member of a proposed gateway, as `POST /api/v1/gateways` takes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProposedMember {
    #[schema(value_type = String, format = Uuid)]
    pub endpoint_id: EndpointId,
    pub enabled: bool,
    /// 0 for provisioned (PTU) deployments, 1 for standard ones.
    pub priority: u32,
    /// From the deployment's capacity, scaled so the largest in the gateway gets 1000.
    pub weight: u32,
}

/// Routing of a proposed gateway.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProposedRouting {
    pub strategy: String,
    pub wait_for_recovery: bool,
}

/// A gateway proposal: the body of `POST /api/v1/gateways`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayProposal {
    pub name: String,
    pub endpoints: Vec<ProposedMember>,
    pub routing: ProposedRouting,
}

/// Proposals, one per model and version.
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayProposals {
    pub proposals: Vec<GatewayProposal>,
}

/// Propose one gateway per model+version over the imported endpoints.
#[utoipa::path(
    post,
    path = "/api/v1/azure/gateway-proposals",
    operation_id = "propose_azure_gateways",
    tag = "azure",
    responses((status = 200, description = "Proposals (nothing is created)", body = GatewayProposals))
)]
pub async fn propose_gateways(
    State(state): State<AdminState>,
) -> Result<Json<GatewayProposals>, ApiError> {
    let endpoints = state.store.list_azure_endpoints().await?;
    let proposals = proposals(endpoints);
    tracing::info!(proposals = proposals.len(), "gateway proposals");
    Ok(Json(GatewayProposals { proposals }))
}

fn is_provisioned(sku: Option<&str>) -> bool {
    sku.is_some_and(|s| s.to_ascii_lowercase().ends_with(PROVISIONED_SKU_SUFFIX))
}

fn proposals(endpoints: Vec<AzureEndpointRecord>) -> Vec<GatewayProposal> {
    let mut groups: BTreeMap<(String, String), Vec<AzureEndpointRecord>> = BTreeMap::new();
    for e in endpoints {
        groups.entry((e.model_name.clone(), e.model_version.clone())).or_default().push(e);
    }
    groups
        .into_iter()
        .map(|((model, version), mut members)| {
            members.sort_by(|a, b| {
                let pa = !is_provisioned(a.sku_name.as_deref());
                let pb = !is_provisioned(b.sku_name.as_deref());
                pa.cmp(&pb).then_with(|| a.name.cmp(&b.name))
            });
            // A deployment without a reported capacity counts as one unit.
            let capacity = |e: &AzureEndpointRecord| u64::from(e.sku_capacity.unwrap_or(1).max(1));
            let max = members.iter().map(capacity).max().unwrap_or(1);
            let endpoints = members
                .iter()
                .map(|e| {
                    let weight = (capacity(e) * MAX_PROPOSAL_WEIGHT).div_ceil(max);
                    ProposedMember {
                        endpoint_id: e.id,
                        enabled: true,
                        priority: if is_provisioned(e.sku_name.as_deref()) { 0 } else { 1 },
                        weight: u32::try_from(weight.clamp(1, MAX_PROPOSAL_WEIGHT)).unwrap_or(1),
                    }
                })
                .collect();
            GatewayProposal {
                name: gateway_name(&model, &version),
                endpoints,
                routing: ProposedRouting {
                    strategy: "weighted".to_owned(),
                    wait_for_recovery: false,
                },
            }
        })
        .collect()
}

/// `<model>-<version>` in the characters a gateway name allows.
fn gateway_name(model: &str, version: &str) -> String {
    let raw = if version.is_empty() { model.to_owned() } else { format!("{model}-{version}") };
    let mut name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(MAX_GATEWAY_NAME_CHARS)
        .collect();
    if name.is_empty() || name == "." || name == ".." || name.eq_ignore_ascii_case("auto") {
        name = format!("model-{name}").replace('.', "-");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, sku: &str, capacity: Option<u32>) -> AzureEndpointRecord {
        AzureEndpointRecord {
            id: EndpointId::new(),
            name: name.into(),
            arm_resource_id: format!("/x/{name}"),
            model_name: "gpt-4o".into(),
            model_version: "2024-11-20".into(),
            sku_name: Some(sku.into()),
            sku_capacity: capacity,
        }
    }

    #[test]
    fn provisioned_first_and_weights_scale_to_1000() {
        let p = proposals(vec![
            record("a-std", "Standard", Some(10)),
            record("b-ptu", "GlobalProvisionedManaged", Some(100)),
            record("c-none", "GlobalStandard", None),
        ]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "gpt-4o-2024-11-20");
        let m = &p[0].endpoints;
        assert_eq!((m[0].priority, m[0].weight), (0, 1000));
        assert_eq!((m[1].priority, m[1].weight), (1, 100));
        assert_eq!((m[2].priority, m[2].weight), (1, 10));
    }

    #[test]
    fn account_ids_come_from_deployment_ids() {
        assert_eq!(
            account_id_of(
                "/subscriptions/s/resourceGroups/r/providers/Microsoft.CognitiveServices/accounts/a/deployments/d"
            ),
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.CognitiveServices/accounts/a"
        );
    }

    #[test]
    fn gateway_names_are_valid() {
        assert_eq!(gateway_name("gpt 4o", "v/1"), "gpt-4o-v-1");
        assert_eq!(gateway_name("auto", ""), "model-auto");
    }
}
