//! `/api/v1/gateways/{id}/keys`: the keys clients present to a gateway.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::StatusCode;
use modelgw_control_plane::store::GatewayKeyRecord;
use modelgw_model::{GatewayId, GatewayKeyId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api_tokens::no_store;
use crate::audit::Caller;
use crate::body::JsonBody;
use crate::problem::{ApiError, Problem};
use crate::validate::{Validator, path_id};
use crate::{AdminState, ConfigChange};

const ENTITY: &str = "gateway_key";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// What the key is for, e.g. the client team (1–256 characters, trimmed). Not unique.
    #[schema(example = "billing-service")]
    pub name: String,
}

/// A new key. `key` appears in this response only; store it now.
#[derive(Serialize, ToSchema)]
pub struct CreatedKeyResponse {
    #[schema(value_type = String, format = Uuid)]
    pub id: GatewayKeyId,
    pub name: String,
    /// The key to send as `api-key` (or `Authorization: Bearer`). Never retrievable again.
    #[schema(format = Password, example = "mgw_…")]
    pub key: String,
    /// Last four characters of the key.
    #[schema(example = "…9f3c")]
    pub hint: String,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for CreatedKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKeyResponse")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

/// A key as listed: never the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResponse {
    #[schema(value_type = String, format = Uuid)]
    pub id: GatewayKeyId,
    pub name: String,
    pub hint: String,
    pub created_at: DateTime<Utc>,
    /// When the key was revoked; `null` while it is active.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<GatewayKeyRecord> for KeyResponse {
    fn from(r: GatewayKeyRecord) -> Self {
        KeyResponse {
            id: r.id,
            name: r.name,
            hint: r.hint,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// Create a key for a gateway.
#[utoipa::path(
    post,
    path = "/api/v1/gateways/{id}/keys",
    operation_id = "create_gateway_key",
    tag = "gateway-keys",
    params(("id" = String, Path, format = Uuid, description = "Gateway id")),
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "Created; `key` is shown only here (sent with \
            `Cache-Control: no-store`)", body = CreatedKeyResponse,
            headers(("cache-control" = String, description = "`no-store`"))),
        (status = 404, description = "No such gateway", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    Path(gateway_id): Path<String>,
    JsonBody(req): JsonBody<CreateKeyRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let gateway_id: GatewayId = path_id("gateway", &gateway_id)?;
    let mut v = Validator::new();
    let name = v.text("name", &req.name);
    let name = v.finish(name)?;
    let (record, secret, version) =
        state.store.create_gateway_key(gateway_id, name, &caller.audit).await?;
    state.committed(
        &caller,
        ConfigChange { entity: ENTITY, action: "create", id: &record.id, name: &record.name },
        version,
    );
    let response = CreatedKeyResponse {
        id: record.id,
        name: record.name,
        key: secret.expose().to_owned(),
        hint: record.hint,
        created_at: record.created_at,
    };
    Ok((StatusCode::CREATED, no_store(), Json(response)))
}

/// List the keys of a gateway, revoked ones included.
#[utoipa::path(
    get,
    path = "/api/v1/gateways/{id}/keys",
    operation_id = "list_gateway_keys",
    tag = "gateway-keys",
    params(("id" = String, Path, format = Uuid, description = "Gateway id")),
    responses(
        (status = 200, description = "The gateway's keys, without the keys themselves",
            body = Vec<KeyResponse>),
        (status = 404, description = "No such gateway", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AdminState>,
    Path(gateway_id): Path<String>,
) -> Result<Json<Vec<KeyResponse>>, ApiError> {
    let gateway_id: GatewayId = path_id("gateway", &gateway_id)?;
    // An unknown gateway is a 404, not an empty list.
    state.store.get_gateway(gateway_id).await?;
    let keys = state.store.list_gateway_keys(gateway_id).await?;
    Ok(Json(keys.into_iter().map(KeyResponse::from).collect()))
}

/// Revoke a key: data planes stop accepting it with the next snapshot.
#[utoipa::path(
    delete,
    path = "/api/v1/gateways/{id}/keys/{key_id}",
    operation_id = "revoke_gateway_key",
    tag = "gateway-keys",
    params(
        ("id" = String, Path, format = Uuid, description = "Gateway id"),
        ("key_id" = String, Path, format = Uuid, description = "Key id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such gateway or key", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(state): State<AdminState>,
    caller: Caller,
    Path((gateway_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let gateway_id: GatewayId = path_id("gateway", &gateway_id)?;
    let key_id: GatewayKeyId = path_id("gateway key", &key_id)?;
    let (key, version) = state.store.revoke_gateway_key(gateway_id, key_id, &caller.audit).await?;
    // `None`: it was revoked already, and nothing changed.
    if let Some(version) = version {
        state.committed(
            &caller,
            ConfigChange { entity: ENTITY, action: "revoke", id: &key_id, name: &key.name },
            version,
        );
    }
    Ok(StatusCode::NO_CONTENT)
}
