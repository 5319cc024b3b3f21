//! `/api/v1/inference-endpoints`: the upstream deployments gateways route to.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::{StatusCode, header};
use modelgw_control_plane::EndpointHealthView;
use modelgw_control_plane::store::{
    AuthMode, EndpointAuth, EndpointPatch, EndpointRecord, NewEndpoint,
};
use modelgw_model::{EndpointId, EndpointState, Platform};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::audit::Caller;
use crate::body::JsonBody;
use crate::problem::{ApiError, Problem};
use crate::validate::{Validator, path_id};
use crate::{AdminState, ConfigChange};

const ENTITY: &str = "inference_endpoint";

/// A secret in a request body. Deserialized straight into this type so that no `Debug` of a
/// request can print it.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct SecretInput(String);

impl std::fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretInput(<redacted>)")
    }
}

/// A new inference endpoint: one model deployment at one upstream resource.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpointRequest {
    /// Unique display name (1–256 characters, trimmed).
    #[schema(example = "gpt-4o-eastus")]
    pub name: String,
    /// Which API the upstream speaks.
    #[schema(value_type = Platform)]
    pub platform: String,
    /// Base URL of the upstream resource: http(s), a host name (letters, digits, single
    /// hyphens) or IPv4 address, an optional port and path, no credentials, query or fragment.
    /// A trailing slash is removed.
    #[schema(format = "uri", example = "https://contoso-eastus.openai.azure.com")]
    pub endpoint: String,
    /// Deployment name at the upstream (Azure) or model id (OpenAI-compatible).
    #[schema(example = "gpt-4o")]
    pub deployment: String,
    #[schema(example = "gpt-4o")]
    pub model_name: String,
    #[schema(example = "2024-11-20")]
    pub model_version: String,
    #[schema(example = "eastus")]
    pub region: String,
    /// How the data plane authenticates upstream: `api_key` (default; the key below) or
    /// `entra` (the data plane's own Microsoft Entra ID token; no key).
    #[schema(example = "api_key")]
    pub auth: Option<String>,
    /// The upstream API key: required in `api_key` mode, rejected in `entra` mode. Write-only:
    /// sealed at rest, never returned (see `api_key_hint`).
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub api_key: Option<SecretInput>,
}

/// A partial update: absent (or `null`) fields stay as they are. At least one field must be
/// given. Setting `api_key` rotates the key (and selects `api_key` mode); `auth: "entra"`
/// switches to Entra ID and forgets the key; `auth: "api_key"` needs `api_key`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpointRequest {
    pub name: Option<String>,
    #[schema(value_type = Option<Platform>)]
    pub platform: Option<String>,
    #[schema(format = "uri")]
    pub endpoint: Option<String>,
    pub deployment: Option<String>,
    pub model_name: Option<String>,
    pub model_version: Option<String>,
    pub region: Option<String>,
    /// `api_key` or `entra`.
    pub auth: Option<String>,
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub api_key: Option<SecretInput>,
}

/// An inference endpoint as operators see it: never the key, only its hint.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointResponse {
    #[schema(value_type = String, format = Uuid)]
    pub id: EndpointId,
    pub name: String,
    pub platform: Platform,
    #[schema(format = "uri")]
    pub endpoint: String,
    pub deployment: String,
    pub model_name: String,
    pub model_version: String,
    pub region: String,
    /// `api_key` or `entra`.
    #[schema(example = "api_key")]
    pub auth: String,
    /// Last four characters of the API key (`…a1b2`), or `…` for keys too short to hint.
    /// Absent in `entra` mode.
    #[schema(example = "…a1b2")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_key_hint: String,
    /// Fleet health: `throttling` if any data plane is in a 429 window for it, else `error` if
    /// any is in an error window, else `healthy`.
    pub state: EndpointState,
    /// Why the endpoint is not healthy (absent when healthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// Until when the fleet avoids the endpoint: the latest window end among the data planes
    /// reporting the current state (absent when healthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<DateTime<Utc>>,
    /// Alias of `retry_after`, kept for clients of the first API version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_until: Option<DateTime<Utc>>,
    /// Node id of the data plane whose report sets `state` and `retry_after` (absent when
    /// healthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reported_by: Option<String>,
    /// The most recent failure any data plane reported, also after recovery (absent when
    /// none was ever reported, or since the reports aged out after a day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastErrorResponse>,
    /// What each data plane last reported about the endpoint, sorted by node id.
    pub data_planes: Vec<DataPlaneHealthResponse>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The most recent failure reported for an endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastErrorResponse {
    /// e.g. `429 from upstream`; never contains a secret.
    pub reason: String,
    pub at: DateTime<Utc>,
    /// The data plane that reported it.
    pub node_id: String,
}

/// One data plane's view of an endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DataPlaneHealthResponse {
    pub node_id: String,
    /// `healthy` once the window it reported has passed.
    pub state: EndpointState,
    /// Until when this data plane avoids the endpoint (absent when healthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// The reason of its latest report (kept after the window passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the control plane received its latest report.
    pub updated_at: DateTime<Utc>,
}

impl EndpointResponse {
    fn new(record: EndpointRecord, health: EndpointHealthView) -> Self {
        // A reason is only meaningful next to the state it explains.
        let unhealthy = health.state != EndpointState::Healthy;
        let until = health.until.filter(|_| unhealthy);
        EndpointResponse {
            id: record.id,
            name: record.name,
            platform: record.platform,
            endpoint: display_base_url(&record.endpoint),
            deployment: record.deployment,
            model_name: record.model_name,
            model_version: record.model_version,
            region: record.region,
            auth: record.auth.as_str().to_owned(),
            api_key_hint: record.api_key_hint,
            state: health.state,
            state_reason: health.reason.filter(|_| unhealthy),
            retry_after: until,
            state_until: until,
            state_reported_by: health.reported_by.filter(|_| unhealthy).map(|n| n.0),
            last_error: health.last_error.map(|e| LastErrorResponse {
                reason: e.reason,
                at: e.at,
                node_id: e.node_id.0,
            }),
            data_planes: health
                .data_planes
                .into_iter()
                .map(|d| DataPlaneHealthResponse {
                    node_id: d.node_id.0,
                    state: d.state,
                    until: d.until,
                    reason: d.reason,
                    updated_at: d.updated_at,
                })
                .collect(),
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// `https://host` rather than the `https://host/` a URL with an empty path prints as.
fn display_base_url(url: &url::Url) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

fn respond(state: &AdminState, record: EndpointRecord) -> EndpointResponse {
    let health = state.registry.endpoint_health(record.id);
    EndpointResponse::new(record, health)
}

fn location(id: EndpointId) -> String {
    format!("/api/v1/inference-endpoints/{id}")
}

/// Query of `DELETE /inference-endpoints/{id}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteEndpointQuery {
    /// Also remove the endpoint from every gateway that uses it. Default `false`: such a
    /// delete is refused with 409 naming the gateways.
    #[param(default = false)]
    pub force: Option<bool>,
}

fn validate_create(req: CreateEndpointRequest) -> Result<NewEndpoint, ApiError> {
    let mut v = Validator::new();
    let name = v.text("name", &req.name);
    let platform = v.platform("platform", &req.platform);
    let endpoint = v.base_url("endpoint", &req.endpoint);
    let deployment = v.text("deployment", &req.deployment);
    let model_name = v.text("model_name", &req.model_name);
    let model_version = v.text("model_version", &req.model_version);
    let region = v.text("region", &req.region);
    let mode = match req.auth.as_deref() {
        None => Some(AuthMode::ApiKey),
        Some(s) => auth_mode(&mut v, s),
    };
    let auth = match (mode, req.api_key) {
        (Some(AuthMode::ApiKey), Some(key)) => {
            v.api_key("api_key", &key.0).map(EndpointAuth::ApiKey)
        }
        (Some(AuthMode::ApiKey), None) => {
            v.error("api_key", "is required when auth is api_key");
            None
        }
        (Some(AuthMode::Entra), None) => Some(EndpointAuth::Entra),
        (Some(AuthMode::Entra), Some(_)) => {
            v.error("api_key", "must not be set when auth is entra");
            None
        }
        (None, _) => None,
    };
    v.finish(())?;
    let (Some(platform), Some(endpoint), Some(auth)) = (platform, endpoint, auth) else {
        // Unreachable: each `None` above recorded an error, and `finish` returned it.
        return Err(ApiError::Internal("endpoint validation lost an error".to_owned()));
    };
    Ok(NewEndpoint {
        name,
        platform,
        endpoint,
        deployment,
        model_name,
        model_version,
        region,
        auth,
    })
}

/// Parses `auth`, recording a field error for anything but `api_key` / `entra`.
fn auth_mode(v: &mut Validator, value: &str) -> Option<AuthMode> {
    // Exact, like the document's enum.
    let mode = AuthMode::parse(value);
    if mode.is_none() {
        v.error("auth", "must be api_key or entra");
    }
    mode
}

fn validate_update(req: UpdateEndpointRequest) -> Result<EndpointPatch, ApiError> {
    let mut v = Validator::new();
    let patch = EndpointPatch {
        name: req.name.map(|s| v.text("name", &s)),
        platform: req.platform.and_then(|s| v.platform("platform", &s)),
        endpoint: req.endpoint.and_then(|s| v.base_url("endpoint", &s)),
        deployment: req.deployment.map(|s| v.text("deployment", &s)),
        model_name: req.model_name.map(|s| v.text("model_name", &s)),
        model_version: req.model_version.map(|s| v.text("model_version", &s)),
        region: req.region.map(|s| v.text("region", &s)),
        auth: None,
    };
    let mode = req.auth.as_deref().map(|s| auth_mode(&mut v, s));
    let auth = match (mode, req.api_key) {
        (Some(Some(AuthMode::Entra)), Some(_)) => {
            v.error("api_key", "must not be set when auth is entra");
            None
        }
        (Some(Some(AuthMode::Entra)), None) => Some(EndpointAuth::Entra),
        (Some(Some(AuthMode::ApiKey)), None) => {
            v.error("api_key", "is required when auth is api_key");
            None
        }
        (_, Some(key)) => v.api_key("api_key", &key.0).map(EndpointAuth::ApiKey),
        (Some(None), None) | (None, None) => None,
    };
    let patch = EndpointPatch { auth, ..patch };
    let empty = matches!(
        &patch,
        EndpointPatch {
            name: None,
            platform: None,
            endpoint: None,
            deployment: None,
            model_name: None,
            model_version: None,
            region: None,
            auth: None,
        }
    );
    if empty && !v.has_errors() {
        // An empty patch would still bump the configuration version and push a snapshot.
        v.error("body", "must set at least one field");
    }
    v.finish(patch)
}

/// Create an inference endpoint.
#[utoipa::path(
    post,
    path = "/api/v1/inference-endpoints",
    operation_id = "create_inference_endpoint",
    tag = "inference-endpoints",
    request_body = CreateEndpointRequest,
    responses(
        (status = 201, description = "Created", body = EndpointResponse,
            headers(("location" = String, description = "URL of the new endpoint"))),
        (status = 409, description = "An endpoint with this name exists", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateEndpointRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let new = validate_create(req)?;
    let (record, version) = state.store.create_endpoint(new, &caller.audit).await?;
    state.committed(
        &caller,
        ConfigChange { entity: ENTITY, action: "create", id: &record.id, name: &record.name },
        version,
    );
    let location = location(record.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(respond(&state, record))))
}

/// List inference endpoints.
#[utoipa::path(
    get,
    path = "/api/v1/inference-endpoints",
    operation_id = "list_inference_endpoints",
    tag = "inference-endpoints",
    responses((status = 200, description = "All inference endpoints", body = Vec<EndpointResponse>))
)]
pub async fn list(
    State(state): State<AdminState>,
) -> Result<Json<Vec<EndpointResponse>>, ApiError> {
    let records = state.store.list_endpoints().await?;
    Ok(Json(records.into_iter().map(|r| respond(&state, r)).collect()))
}

/// Get one inference endpoint.
#[utoipa::path(
    get,
    path = "/api/v1/inference-endpoints/{id}",
    operation_id = "get_inference_endpoint",
    tag = "inference-endpoints",
    params(("id" = String, Path, format = Uuid, description = "Inference endpoint id")),
    responses(
        (status = 200, description = "The inference endpoint", body = EndpointResponse),
        (status = 404, description = "No such endpoint", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<EndpointResponse>, ApiError> {
    let id: EndpointId = path_id("inference endpoint", &id)?;
    let record = state.store.get_endpoint(id).await?;
    Ok(Json(respond(&state, record)))
}

/// Clear an inference endpoint's health: every report received so far stops counting, the
/// fleet push that follows at once makes every data plane use the endpoint again (each also
/// forgets the window it opened itself), and the reset survives restarts and reaches other
/// control-plane replicas. Reports that arrive after it count as usual. Not configuration:
/// the version does not change.
#[utoipa::path(
    post,
    path = "/api/v1/inference-endpoints/{id}/health:reset",
    operation_id = "reset_inference_endpoint_health",
    tag = "inference-endpoints",
    params(("id" = String, Path, format = Uuid, description = "Inference endpoint id")),
    responses(
        (status = 200, description = "The inference endpoint, with its health after the reset",
            body = EndpointResponse),
        (status = 404, description = "No such endpoint", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn reset_health(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EndpointResponse>, ApiError> {
    let id: EndpointId = path_id("inference endpoint", &id)?;
    let record = state.store.get_endpoint(id).await?;
    let at = chrono::Utc::now();
    // Stored (with its audit row) first: a reset that cannot be kept is not announced.
    state.store.record_health_reset(id, at, &caller.audit).await?;
    let health = state.registry.reset_endpoint_health(id, at);
    crate::trace::record_change(ENTITY, "health_reset");
    tracing::info!(actor = %caller.audit.actor, endpoint_id = %id, name = %record.name, "endpoint health reset");
    Ok(Json(EndpointResponse::new(record, health)))
}

/// Change fields of an inference endpoint; `api_key` rotates the key.
#[utoipa::path(
    patch,
    path = "/api/v1/inference-endpoints/{id}",
    operation_id = "update_inference_endpoint",
    tag = "inference-endpoints",
    params(("id" = String, Path, format = Uuid, description = "Inference endpoint id")),
    request_body = UpdateEndpointRequest,
    responses(
        (status = 200, description = "The updated endpoint", body = EndpointResponse),
        (status = 404, description = "No such endpoint", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "Another endpoint has this name", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateEndpointRequest>,
) -> Result<Json<EndpointResponse>, ApiError> {
    let id: EndpointId = path_id("inference endpoint", &id)?;
    let patch = validate_update(req)?;
    let action = match &patch.auth {
        Some(EndpointAuth::ApiKey(_)) => "update (api key set)",
        Some(EndpointAuth::Entra) => "update (entra auth)",
        None => "update",
    };
    let (record, version) = state.store.update_endpoint(id, patch, &caller.audit).await?;
    state.committed(
        &caller,
        ConfigChange { entity: ENTITY, action, id: &record.id, name: &record.name },
        version,
    );
    Ok(Json(respond(&state, record)))
}

/// Delete an inference endpoint.
#[utoipa::path(
    delete,
    path = "/api/v1/inference-endpoints/{id}",
    operation_id = "delete_inference_endpoint",
    tag = "inference-endpoints",
    params(("id" = String, Path, format = Uuid, description = "Inference endpoint id"), DeleteEndpointQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid query string", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "Used by gateways (named in `gateways`); retry with `force=true` \
            to remove it from them", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<DeleteEndpointQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let id: EndpointId = path_id("inference endpoint", &id)?;
    let Query(query) = query
        .map_err(|rejection| ApiError::BadQuery { reason: query_reason(&rejection.body_text()) })?;
    let force = query.force.unwrap_or(false);
    let record = state.store.get_endpoint(id).await?;
    let version = state.store.delete_endpoint(id, force, &caller.audit).await?;
    let action = if force { "delete (forced)" } else { "delete" };
    state.committed(
        &caller,
        ConfigChange { entity: ENTITY, action, id: &id, name: &record.name },
        version,
    );
    Ok(StatusCode::NO_CONTENT)
}

/// The part of axum's query rejection that says what is wrong (field names and expected
/// values; query strings hold no secrets here).
fn query_reason(text: &str) -> String {
    text.strip_prefix("Failed to deserialize query string: ").unwrap_or(text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::FieldError;

    fn request() -> CreateEndpointRequest {
        CreateEndpointRequest {
            name: " eus ".into(),
            platform: "azure_openai".into(),
            endpoint: "https://eus.openai.azure.com/".into(),
            deployment: "gpt-4o".into(),
            model_name: "gpt-4o".into(),
            model_version: "2024-11-20".into(),
            region: "eastus".into(),
            auth: None,
            api_key: Some(SecretInput("sk-test-0123456789abcdef".into())),
        }
    }

    fn errors(result: Result<impl std::fmt::Debug, ApiError>) -> Vec<FieldError> {
        match result {
            Err(ApiError::Validation(errors)) => errors,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_request_is_normalised() {
        let new = validate_create(request()).expect("valid");
        assert_eq!(new.name, "eus");
        assert_eq!(new.platform, Platform::AzureOpenai);
        assert_eq!(display_base_url(&new.endpoint), "https://eus.openai.azure.com");
        assert_eq!(
            new.auth,
            EndpointAuth::ApiKey(modelgw_model::Secret::new("sk-test-0123456789abcdef"))
        );
    }

    #[test]
    fn entra_mode_takes_no_key_and_api_key_mode_needs_one() {
        let entra =
            CreateEndpointRequest { auth: Some("entra".into()), api_key: None, ..request() };
        assert_eq!(validate_create(entra).expect("valid").auth, EndpointAuth::Entra);
        let with_key = CreateEndpointRequest { auth: Some("entra".into()), ..request() };
        let errs = errors(validate_create(with_key));
        assert_eq!(errs, vec![FieldError::new("api_key", "must not be set when auth is entra")]);
        let without = CreateEndpointRequest { api_key: None, ..request() };
        let errs = errors(validate_create(without));
        assert_eq!(errs, vec![FieldError::new("api_key", "is required when auth is api_key")]);
        let unknown = CreateEndpointRequest { auth: Some("oauth".into()), ..request() };
        let fields: Vec<String> =
            errors(validate_create(unknown)).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["auth"]);
        let patch = UpdateEndpointRequest { auth: Some("entra".into()), ..Default::default() };
        assert_eq!(validate_update(patch).expect("valid").auth, Some(EndpointAuth::Entra));
        let patch = UpdateEndpointRequest { auth: Some("api_key".into()), ..Default::default() };
        let fields: Vec<String> =
            errors(validate_update(patch)).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["api_key"]);
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let req = CreateEndpointRequest {
            name: "".into(),
            platform: "aws".into(),
            endpoint: "not a url".into(),
            api_key: Some(SecretInput("  ".into())),
            ..request()
        };
        let fields: Vec<String> =
            errors(validate_create(req)).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["name", "platform", "endpoint", "api_key"]);
    }

    #[test]
    fn an_empty_patch_is_rejected() {
        let errs = errors(validate_update(UpdateEndpointRequest::default()));
        assert_eq!(errs, vec![FieldError::new("body", "must set at least one field")]);
    }

    #[test]
    fn a_patch_reports_its_invalid_fields() {
        let req = UpdateEndpointRequest {
            endpoint: Some("ftp://x".into()),
            region: Some(" ".into()),
            ..Default::default()
        };
        let fields: Vec<String> =
            errors(validate_update(req)).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["endpoint", "region"]);
    }

    #[test]
    fn request_debug_never_shows_the_key() {
        assert!(!format!("{:?}", request()).contains("0123456789abcdef"));
    }
}
