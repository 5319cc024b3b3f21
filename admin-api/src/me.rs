//! `/api/v1/me`: who the caller is and what they may do — what the Admin Console asks at sign-in
//! (and any tool that wants to check a token before using it).

use axum::Json;
use axum::extract::Extension;
use serde::Serialize;
use utoipa::ToSchema;

use crate::identity::{Principal, PrincipalKind, Role};

#[derive(Debug, Serialize, ToSchema)]
pub struct MeResponse {
    /// How the audit log names the caller, e.g. `token:ci` or `oidc:<subject>`.
    #[schema(example = "token:ci")]
    pub actor: String,
    /// The token's name or the OpenID Connect subject.
    pub name: String,
    pub role: Role,
    /// How the caller signed in: `bootstrap`, `api_token` or `oidc`.
    #[schema(example = "api_token")]
    pub sign_in: &'static str,
}

/// The caller's identity and role.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    operation_id = "get_me",
    tag = "meta",
    responses((status = 200, description = "The authenticated caller", body = MeResponse))
)]
pub async fn get(Extension(principal): Extension<Principal>) -> Json<MeResponse> {
    let sign_in = match principal.kind {
        PrincipalKind::Bootstrap => "bootstrap",
        PrincipalKind::ApiToken { .. } => "api_token",
        PrincipalKind::Oidc { .. } => "oidc",
    };
    Json(MeResponse {
        actor: principal.actor(),
        name: principal.name,
        role: principal.role,
        sign_in,
    })
}
