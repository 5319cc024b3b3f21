//! `/api/v1/azure/discoveries`: start a discovery of the Azure OpenAI deployments the
//! credential can see (a background job over ARM), and poll it for progress, per-scope errors
//! and the deployments found. Responses never carry an account key.
//!
//! A job runs on the replica that started it ([`run_job`]) and is read from the store by any
//! replica (see the module docs of `azure` for the heartbeat rule).

use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::{StatusCode, header};
use modelgw_control_plane::Store;
use modelgw_control_plane::azure::{
    DiscoveredDeployment, DiscoveryError, DiscoveryProgress, DiscoveryReport, discover,
};
use modelgw_control_plane::metrics::DiscoveryOutcome;
use modelgw_control_plane::store::{
    DiscoveryJobOutcome, DiscoveryJobRecord, DiscoveryJobState, DiscoveryReplica,
};
use modelgw_model::EndpointId;
use serde::Serialize;
use tokio::sync::watch;
use tracing::Instrument as _;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    AzureImport, AzureImportConfig, JobHeartbeat, MAX_DISCOVERY_JOBS, PROGRESS_WRITE_INTERVAL,
    arm_client,
};
use crate::AdminState;
use crate::problem::{ApiError, Problem};
use crate::validate::path_id;

/// Scope of the error of a job that failed because no credential worked.
const CREDENTIAL_SCOPE: &str = "credential";
/// Scope of the error of a job whose replica stopped before it finished.
const CONTROL_PLANE_SCOPE: &str = "control_plane";
/// Times the replica running a job tries to write its outcome before leaving it to the
/// heartbeat rule (which then fails it as if the replica had stopped).
const FINISH_ATTEMPTS: u32 = 3;

/// Where a discovery job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryStatus {
    Running,
    /// Finished; some scopes may still have failed (see `errors`).
    Succeeded,
    /// No credential worked, no subscription could be read at all, or the control-plane
    /// replica running it stopped before it finished (see `errors`).
    Failed,
}

/// A started discovery.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveryStarted {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub status: DiscoveryStatus,
}

/// The control-plane replica that runs (or ran) a discovery.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveryReplicaResponse {
    /// The replica's host name (the pod name on Kubernetes).
    pub host: String,
    /// Random per control-plane process: a restarted replica has a new one.
    pub instance_id: String,
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
    /// `credential` (no credential worked), `control_plane` (the replica running the
    /// discovery stopped), `/` (tenant), `/subscriptions/{id}` or an account's ARM id.
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
    /// The inference endpoint an import already made from this deployment (the same ARM
    /// resource id an import matches on), so a client can mark it as imported. Absent when
    /// none was imported.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub endpoint_id: Option<EndpointId>,
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
            endpoint_id: None,
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
    /// The replica running it; any replica answers for it.
    pub started_by: DiscoveryReplicaResponse,
    /// The last sign of life of the replica running it (its last progress or heartbeat
    /// write). A running discovery without one for 30 s is failed.
    pub heartbeat_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// While running: as of the replica's last write (at most about a second old).
    pub progress: DiscoveryProgressResponse,
    pub errors: Vec<DiscoveryErrorResponse>,
    /// Sorted by id; empty while running.
    pub deployments: Vec<DiscoveredDeploymentResponse>,
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
pub async fn start_discovery(
    State(state): State<AdminState>,
) -> Result<impl IntoResponse, ApiError> {
    let azure = state.azure.clone();
    let id = Uuid::now_v7();
    let (job, pruned) =
        state.store.insert_discovery_job(id, azure.replica(), MAX_DISCOVERY_JOBS).await?;
    if pruned > 0 {
        tracing::info!(pruned, kept = MAX_DISCOVERY_JOBS, "dropped the oldest discovery jobs");
    }
    let span = tracing::info_span!("azure.discovery.job", discovery.id = %id);
    tokio::spawn(run_job(state.store.clone(), azure, id).instrument(span));
    tracing::info!(
        discovery.id = %id,
        replica.host = %job.started_by.host,
        replica.instance_id = %job.started_by.instance_id,
        "discovery started"
    );
    let location = format!("/api/v1/azure/discoveries/{id}");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(DiscoveryStarted { id, status: DiscoveryStatus::Running }),
    ))
}

/// Runs job `id` on this replica: the discovery in a task of its own, and beside it the
/// writes of its progress and heartbeat, then of its outcome. Stops the discovery when the
/// store says the job is no longer this replica's to run (another replica failed it as
/// stale, or it was pruned).
async fn run_job(store: Store, azure: AzureImport, id: Uuid) {
    let instance_id = azure.replica.instance_id.clone();
    let heartbeat = azure.heartbeat;
    let (progress_tx, mut progress_rx) = watch::channel(DiscoveryProgress::default());
    let config = azure.config.clone();
    let mut discovery =
        tokio::spawn(async move { run_discovery(&config, &progress_tx).await }.in_current_span());
    let mut tick = tokio::time::interval(heartbeat.every.min(PROGRESS_WRITE_INTERVAL));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_write = Instant::now();
    let joined = loop {
        tokio::select! {
            joined = &mut discovery => break joined,
            _ = tick.tick() => {
                let changed = progress_rx.has_changed().unwrap_or(false);
                if !changed && last_write.elapsed() < heartbeat.every {
                    continue;
                }
                let progress = progress_rx.borrow_and_update().clone();
                match store.heartbeat_discovery_job(id, &instance_id, &progress).await {
                    Ok(true) => last_write = Instant::now(),
                    Ok(false) => {
                        tracing::warn!(
                            "discovery job is no longer running on this replica (failed by \
                             another replica after missed heartbeats, or dropped); stopping it"
                        );
                        discovery.abort();
                        return;
                    }
                    // The next tick tries again; past the heartbeat bound another replica
                    // fails the job and the next write that succeeds stops it.
                    Err(e) => tracing::warn!(error = %e, "discovery heartbeat not written"),
                }
            }
        }
    };
    let last_progress = progress_rx.borrow().clone();
    let outcome = match joined {
        Ok(Ok(report)) => {
            tracing::info!(
                deployments = report.deployments.len(),
                errors = report.errors.len(),
                "discovery job finished"
            );
            let state = if report_failed(&report) {
                DiscoveryJobState::Failed
            } else {
                DiscoveryJobState::Succeeded
            };
            DiscoveryJobOutcome {
                state,
                progress: report.progress.clone(),
                error: None,
                report: Some(report),
            }
        }
        Ok(Err(message)) => {
            tracing::warn!(error = %message, "discovery job failed");
            failed_outcome(last_progress, CREDENTIAL_SCOPE, message)
        }
        Err(e) => {
            tracing::error!(error = %e, "discovery task ended abnormally");
            failed_outcome(
                last_progress,
                CONTROL_PLANE_SCOPE,
                "the discovery stopped unexpectedly (see the control plane's log); start it again"
                    .to_owned(),
            )
        }
    };
    let metric = match outcome.state {
        DiscoveryJobState::Succeeded => DiscoveryOutcome::Succeeded,
        _ => DiscoveryOutcome::Failed,
    };
    for attempt in 1..=FINISH_ATTEMPTS {
        match store.finish_discovery_job(id, &instance_id, &outcome).await {
            Ok(true) => {
                store.metrics().discovery_finished(metric);
                return;
            }
            Ok(false) => {
                tracing::warn!(
                    state = outcome.state.as_str(),
                    "discovery finished, but it was failed meanwhile (missed heartbeats) or \
                     dropped; its outcome is not kept"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "discovery outcome not written");
                tokio::time::sleep(heartbeat.every).await;
            }
        }
    }
    tracing::error!(
        "discovery outcome could not be written; the job will show as failed once its \
         heartbeat is stale"
    );
}

fn failed_outcome(
    progress: DiscoveryProgress,
    scope: &str,
    message: String,
) -> DiscoveryJobOutcome {
    DiscoveryJobOutcome {
        state: DiscoveryJobState::Failed,
        progress,
        error: Some(DiscoveryError { scope: scope.to_owned(), permission: None, message }),
        report: None,
    }
}

/// Discovery over a new ARM client. The report comes back without any account key: nothing
/// after discovery needs them (an import reads them again), and the report is stored.
async fn run_discovery(
    config: &AzureImportConfig,
    progress: &watch::Sender<DiscoveryProgress>,
) -> Result<DiscoveryReport, String> {
    let arm = arm_client(config).await?;
    let mut report = discover(&arm, &config.discovery, progress).await;
    for d in &mut report.deployments {
        d.api_key = None;
    }
    Ok(report)
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
    let job = current_job(&state.store, state.azure.heartbeat, id).await?.ok_or_else(|| {
        ApiError::NotFound {
            detail: format!(
                "discovery {id} not found (only the last {MAX_DISCOVERY_JOBS} are kept)"
            ),
        }
    })?;
    let mut response = job_response(&job);
    if !response.deployments.is_empty() {
        // Imported endpoints by lower-cased ARM id: the identity an import updates by.
        let imported: HashMap<String, EndpointId> = state
            .store
            .list_azure_endpoints()
            .await?
            .into_iter()
            .map(|e| (e.arm_resource_id.to_ascii_lowercase(), e.id))
            .collect();
        for d in &mut response.deployments {
            d.endpoint_id = imported.get(&d.id.to_ascii_lowercase()).copied();
        }
    }
    Ok(Json(response))
}

/// The stored job, failed first (in the store, compare-and-set) when it is running but its
/// replica's heartbeat is older than the bound: that replica stopped, and nothing else will
/// ever finish the job.
async fn current_job(
    store: &Store,
    heartbeat: JobHeartbeat,
    id: Uuid,
) -> Result<Option<DiscoveryJobRecord>, ApiError> {
    let Some(job) = store.discovery_job(id).await? else {
        return Ok(None);
    };
    let stale_after =
        chrono::Duration::from_std(heartbeat.stale_after).unwrap_or(chrono::Duration::MAX);
    let heartbeat_before = Utc::now() - stale_after;
    if job.state != DiscoveryJobState::Running || job.heartbeat_at >= heartbeat_before {
        return Ok(Some(job));
    }
    let error = replica_stopped(&job.started_by);
    if store.fail_stale_discovery_job(id, heartbeat_before, &error).await? {
        tracing::warn!(
            discovery.id = %id,
            replica.host = %job.started_by.host,
            replica.instance_id = %job.started_by.instance_id,
            heartbeat_at = %job.heartbeat_at,
            stale_after_s = heartbeat.stale_after.as_secs_f64(),
            "discovery job failed: the replica running it stopped heart-beating"
        );
        store.metrics().discovery_finished(DiscoveryOutcome::Failed);
    }
    // Whatever won (this failure, another replica's, or a heartbeat that came in meanwhile).
    Ok(store.discovery_job(id).await?)
}

fn replica_stopped(replica: &DiscoveryReplica) -> DiscoveryError {
    DiscoveryError {
        scope: CONTROL_PLANE_SCOPE.to_owned(),
        permission: None,
        message: format!(
            "the control-plane replica running this discovery stopped ({}); start it again",
            replica.host
        ),
    }
}

fn job_response(job: &DiscoveryJobRecord) -> DiscoveryResponse {
    let status = match job.state {
        DiscoveryJobState::Running => DiscoveryStatus::Running,
        DiscoveryJobState::Succeeded => DiscoveryStatus::Succeeded,
        DiscoveryJobState::Failed => DiscoveryStatus::Failed,
    };
    let error = |e: &DiscoveryError| DiscoveryErrorResponse {
        scope: e.scope.clone(),
        message: e.message.clone(),
        permission: e.permission.clone(),
    };
    let mut errors: Vec<DiscoveryErrorResponse> = job.error.iter().map(error).collect();
    let mut deployments = Vec::new();
    if let Some(report) = &job.report {
        errors.extend(report.errors.iter().map(error));
        deployments = report.deployments.iter().map(DiscoveredDeploymentResponse::from).collect();
    }
    let progress = &job.progress;
    DiscoveryResponse {
        id: job.id,
        status,
        started_at: job.started_at,
        started_by: DiscoveryReplicaResponse {
            host: job.started_by.host.clone(),
            instance_id: job.started_by.instance_id.clone(),
        },
        heartbeat_at: job.heartbeat_at,
        finished_at: job.finished_at,
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
