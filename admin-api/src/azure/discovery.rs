//! `/api/v1/azure/discoveries`: start a discovery of the Azure OpenAI deployments the
//! credential can see (a background job over ARM), and poll it for progress, per-scope errors
//! and the deployments found. Responses never carry an account key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::{StatusCode, header};
use modelgw_control_plane::azure::{
    ARM_SCOPE, ArmClient, DiscoveredDeployment, DiscoveryProgress, DiscoveryReport, discover,
    resolve,
};
use modelgw_control_plane::metrics::DiscoveryOutcome;
use modelgw_model::EndpointId;
use serde::Serialize;
use tokio::sync::watch;
use tracing::Instrument as _;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AzureImportConfig, Job, JobOutcome, MAX_DISCOVERY_JOBS};
use crate::AdminState;
use crate::problem::{ApiError, Problem};
use crate::validate::path_id;

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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
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
    let metrics = state.store.metrics().clone();
    tokio::spawn(
        async move {
            let result = run_discovery(&config, &progress_tx).await;
            let outcome = match &result {
                Ok((report, _)) => {
                    tracing::info!(
                        deployments = report.deployments.len(),
                        errors = report.errors.len(),
                        "discovery job finished"
                    );
                    if report_failed(report) {
                        DiscoveryOutcome::Failed
                    } else {
                        DiscoveryOutcome::Succeeded
                    }
                }
                Err(message) => {
                    tracing::warn!(error = %message, "discovery job failed");
                    DiscoveryOutcome::Failed
                }
            };
            metrics.discovery_finished(outcome);
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
