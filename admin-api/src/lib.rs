//! The Model Gateway admin API: JSON over HTTP under `/api/v1`, with its OpenAPI document.
//!
//! Owns: the HTTP surface operators and tooling use to manage inference endpoints, gateways
//! and gateway keys and to see data-plane status; request validation (all errors at once, as
//! `application/problem+json` naming each field); authentication, roles and API tokens; the
//! audit log's API; and telling distribution that configuration was committed
//! (`ConfigChanges::committed`).
//!
//! Never: writes anything when a request is rejected (validation happens before the store is
//! called, and the store commits each change in one transaction); returns, logs or quotes a
//! secret — endpoint API keys are write-only (responses carry `api_key_hint`), gateway keys and
//! API tokens are shown once in the response that creates them (`Cache-Control: no-store`),
//! and the bootstrap token is only compared by its SHA-256; leaks internal error text in a 5xx
//! (it is logged with the request id instead).
//!
//! Authentication and roles: every route requires `Authorization: Bearer <token>` — the
//! bootstrap admin token, an API token (`/api/v1/api-tokens`), or a JWT handed to the optional
//! [`identity::BearerVerifier`] — and the least [`identity::Role`] that the role table
//! (`protected_routes`, below) names for it (403 otherwise). The exception is `GET /api/v1/openapi.json`, which is public:
//! it describes the API's shape only (no configuration, no secrets) and tooling fetches it
//! before it has credentials.
//!
//! Audit: every change is recorded by the store in the change's own transaction, with the
//! caller's actor, request id and address (`audit::Caller`); `GET /api/v1/audit-log` reads it.
//!
//! Statistics: `GET /api/v1/stats/{gateways,endpoints,regions}` read the traffic data planes
//! report, from the control plane's rolling window (`stats.rs`).
//!
//! Request traces: `GET /api/v1/traces` and `GET /api/v1/traces/{id}` read what data planes
//! traced for gateways that enable it (`request_traces.rs`); captured payloads only for
//! `operator` and `admin`.

mod api_tokens;
mod audit;
mod auth;
mod azure;
mod body;
mod contract;
mod data_plane_tokens;
mod endpoints;
mod gateways;
pub mod identity;
mod keys;
mod me;
pub mod oidc;
mod openapi;
mod problem;
mod request_metrics;
mod request_traces;
mod stats;
mod status;
mod trace;
mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::MethodRouter;
use http::Method;
use modelgw_control_plane::{ConfigChanges, DataPlaneRegistry, Store};
use modelgw_model::ConfigVersion;

pub use auth::{BootstrapTokenError, MIN_BOOTSTRAP_TOKEN_CHARS, check_bootstrap_token};
pub use azure::{
    AzureConfigError, AzureImport, AzureImportConfig, JobHeartbeat, MAX_DISCOVERY_JOBS,
    MAX_IMPORT_IDS,
};
pub use body::MAX_BODY_BYTES;
pub use openapi::openapi;
pub use problem::{FieldError, PROBLEM_JSON, Problem};
pub use trace::{REQUEST_ID_HEADER, trace_request};

use crate::audit::Caller;
use crate::auth::{authenticate, require_role};
use crate::identity::{BearerVerifier, Role};
use crate::problem::ApiError;

/// What the admin API works on. Cheap to clone (every field is a handle).
#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    /// Told about every committed change, so distribution pushes it at once.
    pub changes: ConfigChanges,
    /// Data-plane status and the endpoint health they report.
    pub registry: DataPlaneRegistry,
    /// SHA-256 of the bootstrap admin token (role `admin`).
    pub admin_token_sha256: [u8; 32],
    /// Verifies JWT bearer tokens (OpenID Connect); `None`: JWTs get 401.
    pub bearer_verifier: Option<Arc<dyn BearerVerifier>>,
    /// Azure discovery/import: configuration read once at start, this replica's identity and
    /// the heartbeat rule of the discovery jobs (which are in the store).
    pub azure: AzureImport,
}

impl AdminState {
    /// Logs the change and tells distribution about it. Call after every successful mutation.
    fn committed(&self, caller: &Caller, change: ConfigChange<'_>, version: ConfigVersion) {
        trace::record_change(change.entity, change.action);
        tracing::info!(
            actor = %caller.audit.actor,
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

/// A route under `/api/v1` that needs authentication, with the least role that may call it.
struct ProtectedRoute {
    method: Method,
    path: &'static str,
    role: Role,
    handler: MethodRouter<AdminState>,
}

impl ProtectedRoute {
    fn new(
        method: Method,
        path: &'static str,
        role: Role,
        handler: MethodRouter<AdminState>,
    ) -> Self {
        Self { method, path, role, handler }
    }

    // One constructor per method, so the method in the table is the one the handler serves.
    fn get<H: Handler<T, AdminState>, T: 'static>(path: &'static str, role: Role, h: H) -> Self {
        Self::new(Method::GET, path, role, axum::routing::get(h))
    }

    fn post<H: Handler<T, AdminState>, T: 'static>(path: &'static str, role: Role, h: H) -> Self {
        Self::new(Method::POST, path, role, axum::routing::post(h))
    }

    fn patch<H: Handler<T, AdminState>, T: 'static>(path: &'static str, role: Role, h: H) -> Self {
        Self::new(Method::PATCH, path, role, axum::routing::patch(h))
    }

    fn delete<H: Handler<T, AdminState>, T: 'static>(path: &'static str, role: Role, h: H) -> Self {
        Self::new(Method::DELETE, path, role, axum::routing::delete(h))
    }
}

/// THE ROLE TABLE: every authenticated route and the least role that may call it.
///
/// The router is built from this list only, each route behind `require_role` with its role,
/// so a route cannot be served without one. `viewer` reads (every GET); `operator` also
/// changes inference endpoints, gateways, gateway keys and runs the Azure discovery, import
/// and proposals and resets endpoint health and gateway keys' usage; `admin` also manages API tokens and data-plane
/// tokens. The OpenAPI document states each
/// operation's role from here too (`openapi.rs`), and `tests/api/roles.rs` calls every route
/// with every role.
fn protected_routes() -> Vec<ProtectedRoute> {
    use Role::{Admin, Operator, Viewer};
    type R = ProtectedRoute;
    vec![
        R::get("/inference-endpoints", Viewer, endpoints::list),
        R::post("/inference-endpoints", Operator, endpoints::create),
        R::get("/inference-endpoints/{id}", Viewer, endpoints::get),
        R::patch("/inference-endpoints/{id}", Operator, endpoints::update),
        R::delete("/inference-endpoints/{id}", Operator, endpoints::delete),
        R::post("/inference-endpoints/{id}/health:reset", Operator, endpoints::reset_health),
        R::get("/gateways", Viewer, gateways::list),
        R::post("/gateways", Operator, gateways::create),
        R::get("/gateways/{id}", Viewer, gateways::get),
        R::patch("/gateways/{id}", Operator, gateways::update),
        R::delete("/gateways/{id}", Operator, gateways::delete),
        R::get("/gateways/{id}/keys", Viewer, keys::list),
        R::post("/gateways/{id}/keys", Operator, keys::create),
        R::get("/gateways/{id}/keys/{key_id}", Viewer, keys::get),
        R::patch("/gateways/{id}/keys/{key_id}", Operator, keys::update),
        R::delete("/gateways/{id}/keys/{key_id}", Operator, keys::revoke),
        R::get("/gateways/{id}/keys/{key_id}/usage", Viewer, keys::usage),
        R::post("/gateways/{id}/keys/{key_id}/usage/reset", Operator, keys::reset_usage),
        R::get("/status", Viewer, status::get),
        R::get("/data-plane-tokens", Viewer, data_plane_tokens::list),
        R::post("/data-plane-tokens", Admin, data_plane_tokens::create),
        R::delete("/data-plane-tokens/{id}", Admin, data_plane_tokens::revoke),
        R::post("/azure/discoveries", Operator, azure::discovery::start_discovery),
        R::get("/azure/discoveries/{id}", Viewer, azure::discovery::get_discovery),
        R::post("/azure/imports", Operator, azure::import::import),
        R::post("/azure/gateway-proposals", Operator, azure::proposals::propose_gateways),
        R::get("/api-tokens", Viewer, api_tokens::list),
        R::post("/api-tokens", Admin, api_tokens::create),
        R::delete("/api-tokens/{id}", Admin, api_tokens::revoke),
        R::get("/audit-log", Viewer, audit::list),
        R::get("/stats/gateways", Viewer, stats::gateways),
        R::get("/stats/endpoints", Viewer, stats::endpoints),
        R::get("/stats/regions", Viewer, stats::regions),
        // Metadata for every role; the payload of `/traces/{id}` only for operator and admin
        // (`request_traces::PAYLOAD_ROLE`, checked in the handler).
        R::get("/traces", Viewer, request_traces::list),
        R::get("/traces/{id}", Viewer, request_traces::get),
        R::get("/me", Viewer, me::get),
    ]
}

/// One row of the role table, for tests and tooling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRole {
    pub method: Method,
    /// The full path template, e.g. `/api/v1/gateways/{id}`.
    pub path: String,
    pub role: Role,
}

/// The role table ([`protected_routes`]): every authenticated route and its least role.
pub fn route_roles() -> Vec<RouteRole> {
    protected_routes()
        .into_iter()
        .map(|r| RouteRole {
            method: r.method,
            path: format!("{API_PREFIX}{}", r.path),
            role: r.role,
        })
        .collect()
}

/// Where the admin API lives.
const API_PREFIX: &str = "/api/v1";

/// The admin API: every route under `/api/v1`, ready to serve.
pub fn router(state: AdminState) -> Router {
    let metrics = state.store.metrics().clone();
    let store_for_probes = state.store.clone();
    let mut protected = Router::new();
    for route in protected_routes() {
        let handler = route.handler.route_layer(from_fn_with_state(route.role, require_role));
        protected = protected.route(route.path, handler);
    }
    let protected = protected
        // Both fallbacks before the auth layer, so an unauthenticated caller learns nothing
        // about which routes exist.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(route_not_found)
        .layer(from_fn_with_state(state.clone(), authenticate))
        .with_state(state);
    let public = Router::new()
        .route("/openapi.json", axum::routing::get(openapi::serve(openapi::openapi())))
        .method_not_allowed_fallback(method_not_allowed);
    // Probes (Kubernetes, a load balancer): unauthenticated, outside the API, saying nothing
    // but whether this replica is alive and whether its database answers.
    let probes = Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz))
        .with_state(store_for_probes);
    Router::new()
        .merge(probes)
        .nest("/api/v1", public.merge(protected))
        .fallback(route_not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn(trace::trace_request))
        .layer(from_fn_with_state(metrics, request_metrics::count_request))
}

/// How long `/readyz` waits for the database before calling this replica not ready.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /readyz`: 200 while the database answers (the cheapest query, the version), 503
/// otherwise, so a balancer sends admin calls only to replicas that can serve them. The reason
/// is logged, never returned (it could name the database host).
async fn readyz(
    axum::extract::State(store): axum::extract::State<modelgw_control_plane::Store>,
) -> (axum::http::StatusCode, &'static str) {
    match tokio::time::timeout(READY_TIMEOUT, store.config_version()).await {
        Ok(Ok(_)) => (axum::http::StatusCode::OK, "ready\n"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = READY_TIMEOUT.as_millis() as u64,
                "readiness: the database did not answer in time"
            );
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
}

async fn route_not_found() -> ApiError {
    ApiError::RouteNotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
