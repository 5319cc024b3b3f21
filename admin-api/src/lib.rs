//! The Model Gateway admin API: JSON over HTTP under `/api/v1`, with its OpenAPI document.
//!
//! Owns: the HTTP surface operators and tooling use to manage inference endpoints, gateways
//! and gateway keys and to see data-plane status; request validation (all errors at once, as
//! `application/problem+json` naming each field); admin-token authentication; and telling
//! distribution that configuration was committed (`ConfigChanges::committed`).
//!
//! Never: writes anything when a request is rejected (validation happens before the store is
//! called, and the store commits each change in one transaction); returns, logs or quotes a
//! secret — endpoint API keys are write-only (responses carry `api_key_hint`), a gateway key
//! is shown once in the response that creates it, and the admin token is only compared by its
//! SHA-256; leaks internal error text in a 5xx (it is logged with the request id instead).
//!
//! Authentication: every route requires `Authorization: Bearer <admin token>`, except
//! `GET /api/v1/openapi.json`, which is public: it describes the API's shape only (no
//! configuration, no secrets) and tooling fetches it before it has credentials.

mod auth;
mod azure;
mod body;
mod contract;
mod data_plane_tokens;
mod endpoints;
mod gateways;
pub mod identity;
mod keys;
mod openapi;
mod problem;
mod status;
mod trace;
mod validate;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, post};
use modelgw_control_plane::{ConfigChanges, DataPlaneRegistry, Store};
use modelgw_model::ConfigVersion;

pub use azure::{
    AzureConfigError, AzureImport, AzureImportConfig, MAX_DISCOVERY_JOBS, MAX_IMPORT_IDS,
};
pub use body::MAX_BODY_BYTES;
pub use openapi::openapi;
pub use problem::{FieldError, PROBLEM_JSON, Problem};
pub use trace::REQUEST_ID_HEADER;

use crate::auth::{AdminTokenHash, require_admin_token};
use crate::problem::ApiError;

/// What the admin API works on. Cheap to clone (every field is a handle).
#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    /// Told about every committed change, so distribution pushes it at once.
    pub changes: ConfigChanges,
    /// Data-plane status and the endpoint health they report.
    pub registry: DataPlaneRegistry,
    /// SHA-256 of the admin bearer token.
    pub admin_token_sha256: [u8; 32],
    /// Azure discovery/import: configuration read once at start, and the in-memory jobs.
    pub azure: AzureImport,
}

impl AdminState {
    /// Logs the change and tells distribution about it. Call after every successful mutation.
    fn committed(&self, change: ConfigChange<'_>, version: ConfigVersion) {
        tracing::info!(
            entity = change.entity,
            action = change.action,
            id = %change.id,
            name = change.name,
            version = %version,
            "config change"
        );
        self.changes.committed(version);
    }
}

/// What a committed change was, for the `config change` log line. Never holds a secret.
struct ConfigChange<'a> {
    entity: &'static str,
    action: &'static str,
    id: &'a dyn std::fmt::Display,
    name: &'a str,
}

/// The admin API: every route under `/api/v1`, ready to serve.
pub fn router(state: AdminState) -> Router {
    let token = AdminTokenHash(state.admin_token_sha256);
    let protected = Router::new()
        .route("/inference-endpoints", get(endpoints::list).post(endpoints::create))
        .route(
            "/inference-endpoints/{id}",
            get(endpoints::get).patch(endpoints::update).delete(endpoints::delete),
        )
        .route("/gateways", get(gateways::list).post(gateways::create))
        .route(
            "/gateways/{id}",
            get(gateways::get).patch(gateways::update).delete(gateways::delete),
        )
        .route("/gateways/{id}/keys", get(keys::list).post(keys::create))
        .route("/gateways/{id}/keys/{key_id}", delete(keys::revoke))
        .route("/status", get(status::get))
        .route("/data-plane-tokens", get(data_plane_tokens::list).post(data_plane_tokens::create))
        .route("/data-plane-tokens/{id}", delete(data_plane_tokens::revoke))
        .route("/azure/discoveries", post(azure::discovery::start_discovery))
        .route("/azure/discoveries/{id}", get(azure::discovery::get_discovery))
        .route("/azure/imports", post(azure::import::import))
        .route("/azure/gateway-proposals", post(azure::proposals::propose_gateways))
        // Both fallbacks before the auth layer, so an unauthenticated caller learns nothing
        // about which routes exist.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(route_not_found)
        .layer(from_fn_with_state(token, require_admin_token))
        .with_state(state);
    let public = Router::new()
        .route("/openapi.json", get(openapi::serve(openapi::openapi())))
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/v1", public.merge(protected))
        .fallback(route_not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn(trace::trace_request))
}

async fn route_not_found() -> ApiError {
    ApiError::RouteNotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
