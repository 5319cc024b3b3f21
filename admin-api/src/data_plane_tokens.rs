//! `/api/v1/data-plane-tokens`: join tokens that data planes present on the distribution
//! port when the operator has no PKI for client certificates.
//!
//! A token is shown once, in the response that creates it (sent with `Cache-Control:
//! no-store`); only its SHA-256 is stored. Its name binds the node ids of the data planes that
//! use it (`<name>` or `<name>-<suffix>`) and `max_data_planes` bounds how many are registered
//! at once. Revoking ends the token's open streams at once and refuses new ones. Tokens are
//! not configuration: creating or revoking one does not change the config version.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::{HeaderValue, StatusCode, header};
use modelgw_control_plane::distribution::join_tokens::{
    DEFAULT_MAX_DATA_PLANES_PER_TOKEN, MAX_DATA_PLANES_PER_TOKEN_RANGE, valid_token_name,
};
use modelgw_control_plane::store::{DataPlaneTokenId, DataPlaneTokenRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AdminState;
use crate::audit::Caller;
use crate::body::JsonBody;
use crate::problem::{ApiError, Problem};
use crate::validate::{Validator, path_id};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDataPlaneTokenRequest {
    /// Unique among active tokens; 1–63 of `a-z`, `0-9`, `_` (no `-`). Data planes using the
    /// token must set their node id to this name or to `<name>-<suffix>`.
    #[schema(example = "eastus")]
    pub name: String,
    /// How many distinct data planes may be registered with the token at once (default 100).
    #[schema(example = 100, default = 100)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub max_data_planes: Option<i64>,
}

/// A new token. `token` appears in this response only; store it now.
#[derive(Serialize, ToSchema)]
pub struct CreatedDataPlaneTokenResponse {
    #[schema(value_type = String, format = Uuid)]
    pub id: DataPlaneTokenId,
    pub name: String,
    /// What the data plane sends as `authorization: Bearer <token>` (put it in the file named
    /// by `MODELGW_DATA_PLANE_TOKEN_FILE`). Never retrievable again.
    #[schema(format = Password, example = "mgwdp_…")]
    pub token: String,
    /// Last four characters of the token.
    #[schema(example = "…9f3c")]
    pub hint: String,
    pub max_data_planes: u32,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for CreatedDataPlaneTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedDataPlaneTokenResponse")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A token as listed: never the token itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct DataPlaneTokenResponse {
    #[schema(value_type = String, format = Uuid)]
    pub id: DataPlaneTokenId,
    pub name: String,
    pub hint: String,
    pub max_data_planes: u32,
    pub created_at: DateTime<Utc>,
    /// When the token was revoked; `null` while it is active.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<DataPlaneTokenRecord> for DataPlaneTokenResponse {
    fn from(r: DataPlaneTokenRecord) -> Self {
        DataPlaneTokenResponse {
            id: r.id,
            name: r.name,
            hint: r.hint,
            max_data_planes: r.max_data_planes,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// Create a data-plane token.
#[utoipa::path(
    post,
    path = "/api/v1/data-plane-tokens",
    operation_id = "create_data_plane_token",
    tag = "data-plane-tokens",
    request_body = CreateDataPlaneTokenRequest,
    responses(
        (status = 201, description = "Created; `token` is shown only here (sent with \
            `Cache-Control: no-store`)", body = CreatedDataPlaneTokenResponse),
        (status = 409, description = "An active token has this name", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateDataPlaneTokenRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let mut v = Validator::new();
    if !valid_token_name(&req.name) {
        v.error("name", "must be 1–63 of a-z, 0-9 and _ (no -), not starting with _");
    }
    let max = v.in_range(
        "max_data_planes",
        req.max_data_planes.unwrap_or(i64::from(DEFAULT_MAX_DATA_PLANES_PER_TOKEN)),
        MAX_DATA_PLANES_PER_TOKEN_RANGE,
    );
    let max = v.finish(max)?;
    let (record, token) = state.store.create_data_plane_token(req.name, max, &caller.audit).await?;
    state.registry.data_plane_tokens_changed();
    crate::trace::record_change("data_plane_token", "create");
    tracing::info!(actor = %caller.audit.actor, entity = "data_plane_token", action = "create", id = %record.id, name = %record.name, max_data_planes = record.max_data_planes, "security change");
    let response = CreatedDataPlaneTokenResponse {
        id: record.id,
        name: record.name,
        token: token.expose().to_owned(),
        hint: record.hint,
        max_data_planes: record.max_data_planes,
        created_at: record.created_at,
    };
    // Shown once: no cache (browser, proxy) may keep it.
    let no_store = [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    Ok((StatusCode::CREATED, no_store, Json(response)))
}

/// List data-plane tokens, revoked ones included.
#[utoipa::path(
    get,
    path = "/api/v1/data-plane-tokens",
    operation_id = "list_data_plane_tokens",
    tag = "data-plane-tokens",
    responses(
        (status = 200, description = "Every token, without the tokens themselves",
            body = Vec<DataPlaneTokenResponse>),
    )
)]
pub async fn list(
    State(state): State<AdminState>,
) -> Result<Json<Vec<DataPlaneTokenResponse>>, ApiError> {
    let tokens = state.store.list_data_plane_tokens().await?;
    Ok(Json(tokens.into_iter().map(DataPlaneTokenResponse::from).collect()))
}

/// Revoke a data-plane token: its open streams end at once and new ones are refused.
#[utoipa::path(
    delete,
    path = "/api/v1/data-plane-tokens/{id}",
    operation_id = "revoke_data_plane_token",
    tag = "data-plane-tokens",
    params(("id" = String, Path, format = Uuid, description = "Token id")),
    responses(
        (status = 204, description = "Revoked (also when it already was)"),
        (status = 404, description = "No such token", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: DataPlaneTokenId = path_id("data-plane token", &id)?;
    let record = state.store.revoke_data_plane_token(id, &caller.audit).await?;
    state.registry.data_plane_tokens_changed();
    crate::trace::record_change("data_plane_token", "revoke");
    tracing::info!(actor = %caller.audit.actor, entity = "data_plane_token", action = "revoke", id = %record.id, name = %record.name, "security change");
    Ok(StatusCode::NO_CONTENT)
}
