//! `POST /api/v1/azure/imports`: import deployments a recent discovery found as Inference
//! Endpoints (created, or updated by ARM resource id), in `api_key` mode (each account's key
//! read again with `listKeys`) or `entra` mode (no key read or stored).
//!
//! The deployments come from the stored reports of recent discoveries, whichever replica ran
//! them; `listKeys` goes through an ARM client this replica builds from its configuration.

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::extract::State;
use modelgw_control_plane::Store;
use modelgw_control_plane::azure::DiscoveredDeployment;
use modelgw_control_plane::metrics::ImportOutcome;
use modelgw_control_plane::store::{AuthMode, AzureImportItem, EndpointAuth};
use modelgw_model::EndpointId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::arm_client;
use crate::audit::Caller;
use crate::body::JsonBody;
use crate::problem::{ApiError, FieldError, Problem};
use crate::{AdminState, ConfigChange};

pub use modelgw_model::limits::MAX_IMPORT_IDS;

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
    caller: Caller,
    JsonBody(req): JsonBody<ImportRequest>,
) -> Result<Json<ImportResponse>, ApiError> {
    let imported = import_deployments(&state, &caller, req).await;
    let outcome = match &imported {
        Ok(Json(r)) if r.created.is_empty() && r.updated.is_empty() => ImportOutcome::Unchanged,
        Ok(_) => ImportOutcome::Changed,
        Err(e) if e.status().is_client_error() => ImportOutcome::Refused,
        Err(_) => ImportOutcome::Failed,
    };
    state.store.metrics().import_finished(outcome);
    imported
}

async fn import_deployments(
    state: &AdminState,
    caller: &Caller,
    req: ImportRequest,
) -> Result<Json<ImportResponse>, ApiError> {
    let requested = import_auth_mode(req.auth.as_deref())?;
    let found = resolve_ids(&state.store, &req.deployment_ids).await?;
    // Without `auth`, an endpoint imported before keeps its mode: a routine re-import (to pick
    // up a changed capacity or version) must not put keys back on an endpoint an operator moved
    // to Entra ID — its account may have local auth disabled. New endpoints use `api_key`.
    let existing = match requested {
        Some(_) => HashMap::new(),
        None => existing_auth_modes(state).await?,
    };
    let mode_of = |d: &DiscoveredDeployment| {
        requested
            .or_else(|| existing.get(&d.id.to_ascii_lowercase()).copied())
            .unwrap_or(AuthMode::ApiKey)
    };
    // Keys read now, one listKeys per account: the discovery's may have been rotated since
    // (and it never kept them). Entra mode reads none: the caller may not even hold
    // `listKeys` permission, so no ARM client is built for it either.
    let mut keys = HashMap::new();
    let keyed: Vec<&DiscoveredDeployment> =
        found.iter().filter(|d| mode_of(d) == AuthMode::ApiKey).collect();
    if !keyed.is_empty() {
        let arm = arm_client(&state.azure.config).await.map_err(|e| {
            tracing::warn!(error = %e, "no Azure credential for listKeys at import");
            ApiError::AzureUnavailable { detail: format!("no Azure credential for listKeys: {e}") }
        })?;
        for deployment in keyed {
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
    }
    let mut items = Vec::with_capacity(found.len());
    let mut errors = Vec::new();
    for (i, d) in found.iter().enumerate() {
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
    let outcome = state.store.import_azure_endpoints(items, &caller.audit).await?;
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
            caller,
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
            AuthMode::parse(s).ok_or_else(|| {
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

/// Each requested id as the most recent finished discovery that found it reported it (from the
/// store: any replica's discoveries), or a 422 naming every id that none found.
async fn resolve_ids(store: &Store, ids: &[String]) -> Result<Vec<DiscoveredDeployment>, ApiError> {
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
    // Position of each id still looked for, by lower-cased id (ARM ids are case-insensitive).
    let mut wanted: HashMap<String, usize> = HashMap::new();
    // Errors by position, so they come out in the order of the request.
    let mut refused: Vec<(usize, &str)> = Vec::new();
    let mut seen = HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        let lower = id.trim().to_ascii_lowercase();
        if seen.insert(lower.clone()) {
            wanted.insert(lower, i);
        } else {
            refused.push((i, "is listed twice"));
        }
    }
    let mut found: Vec<Option<DiscoveredDeployment>> = vec![None; ids.len()];
    // Newest first, and usually the newest report holds them all: reports are read one at a
    // time until every id is found.
    for job_id in store.reported_discovery_jobs().await? {
        if wanted.is_empty() {
            break;
        }
        let Some(report) = store.discovery_job(job_id).await?.and_then(|job| job.report) else {
            continue; // pruned meanwhile
        };
        for d in report.deployments {
            if let Some(i) = wanted.remove(&d.id.to_ascii_lowercase()) {
                found[i] = Some(d);
            }
        }
    }
    refused.extend(
        wanted
            .into_values()
            .map(|i| (i, "no recent discovery found this deployment; run a discovery first")),
    );
    if !refused.is_empty() {
        refused.sort_by_key(|(i, _)| *i);
        return Err(ApiError::Validation(
            refused
                .into_iter()
                .map(|(i, reason)| FieldError::new(format!("deployment_ids[{i}]"), reason))
                .collect(),
        ));
    }
    Ok(found.into_iter().flatten().collect())
}

/// `…/accounts/{a}/deployments/{d}` → `…/accounts/{a}`.
fn account_id_of(deployment_id: &str) -> String {
    let lower = deployment_id.to_ascii_lowercase();
    match lower.rfind("/deployments/") {
        Some(at) => deployment_id[..at].to_owned(),
        None => deployment_id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_come_from_deployment_ids() {
        assert_eq!(
            account_id_of(
                "/subscriptions/s/resourceGroups/r/providers/Microsoft.CognitiveServices/accounts/a/deployments/d"
            ),
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.CognitiveServices/accounts/a"
        );
    }
}
