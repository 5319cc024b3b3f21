//! `/api/v1/api-tokens`: named bearer tokens for the admin API, each with a role.
//!
//! A token is shown once, in the response that creates it (sent with `Cache-Control:
//! no-store`); the store keeps only its SHA-256 and a hint. Revoking keeps the token listed
//! (with `revoked_at`) and its name taken, so the audit log's `token:<name>` stays unambiguous.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Duration, Utc};
use http::{HeaderValue, StatusCode, header};
use modelgw_control_plane::store::{ApiTokenRecord, NewApiToken};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AdminState;
use crate::audit::Caller;
use crate::body::JsonBody;
use crate::identity::Role;
use crate::problem::{ApiError, Problem};
use crate::validate::{Validator, path_id};

const ENTITY: &str = "api_token";

/// Shortest lifetime a token may be given: one that expires before it can be put to use is a
/// mistake, not a policy.
pub const MIN_EXPIRES_IN_SECONDS: i64 = 60;
/// Longest lifetime a token may be given (ten years); omit `expires_in_seconds` for a token
/// that never expires.
pub const MAX_EXPIRES_IN_SECONDS: i64 = 10 * 366 * 24 * 3600;

/// A new API token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenRequest {
    /// Unique among all tokens, revoked ones included (1–256 characters, trimmed). The audit
    /// log names the token's changes `token:<name>`.
    #[schema(example = "ci-pipeline")]
    pub name: String,
    /// What the token may do.
    #[schema(value_type = Role)]
    pub role: String,
    /// Seconds until the token expires, 60 to ten years; omitted: it never expires.
    #[schema(value_type = Option<u32>, example = 7776000)]
    #[serde(default, deserialize_with = "crate::body::optional_whole_number")]
    pub expires_in_seconds: Option<i64>,
}

/// A new token. `token` appears in this response only; store it now.
#[derive(Serialize, ToSchema)]
pub struct CreatedApiTokenResponse {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    /// The token to send as `Authorization: Bearer <token>`. Never retrievable again.
    #[schema(format = Password, example = "mgwtok_…")]
    pub token: String,
    /// Last four characters of the token.
    #[schema(example = "…9f3c")]
    pub hint: String,
    pub created_at: DateTime<Utc>,
    /// `null`: never expires.
    #[schema(required = true)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for CreatedApiTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiTokenResponse")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

/// A token as listed: never the token itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiTokenResponse {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub hint: String,
    /// Who created it (`bootstrap`, `token:<name>`, `oidc:<subject>`).
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// `null`: never expires.
    #[schema(required = true)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When a request last authenticated with it, to the minute; `null`: never used.
    #[schema(required = true)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked; `null` while it is active.
    #[schema(required = true)]
    pub revoked_at: Option<DateTime<Utc>>,
}

fn role_of(record: &ApiTokenRecord) -> Result<Role, ApiError> {
    Role::parse(&record.role).ok_or_else(|| {
        ApiError::Internal(format!("api token {} has an unknown role {:?}", record.id, record.role))
    })
}

impl TryFrom<ApiTokenRecord> for ApiTokenResponse {
    type Error = ApiError;

    fn try_from(r: ApiTokenRecord) -> Result<Self, ApiError> {
        Ok(ApiTokenResponse {
            role: role_of(&r)?,
            id: r.id,
            name: r.name,
            hint: r.hint,
            created_by: r.created_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        })
    }
}

fn validate_create(
    req: CreateApiTokenRequest,
    now: DateTime<Utc>,
) -> Result<NewApiToken, ApiError> {
    let mut v = Validator::new();
    let name = v.text("name", &req.name);
    // Exact, like the document's enum.
    let role = Role::parse(&req.role);
    if role.is_none() {
        v.error("role", "must be viewer, operator or admin");
    }
    let expires_at = req.expires_in_seconds.and_then(|seconds| {
        let seconds = v.in_range(
            "expires_in_seconds",
            seconds,
            MIN_EXPIRES_IN_SECONDS..=MAX_EXPIRES_IN_SECONDS,
        );
        now.checked_add_signed(Duration::seconds(i64::from(seconds)))
    });
    v.finish(())?;
    let Some(role) = role else {
        return Err(ApiError::Internal("api token validation lost an error".to_owned()));
    };
    Ok(NewApiToken { name, role: role.as_str().to_owned(), expires_at })
}

/// Create an API token.
#[utoipa::path(
    post,
    path = "/api/v1/api-tokens",
    operation_id = "create_api_token",
    tag = "api-tokens",
    request_body = CreateApiTokenRequest,
    responses(
        (status = 201, description = "Created; `token` is shown only here (sent with \
            `Cache-Control: no-store`)", body = CreatedApiTokenResponse,
            headers(("cache-control" = String, description = "`no-store`"))),
        (status = 409, description = "A token with this name exists (or existed)", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateApiTokenRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let new = validate_create(req, Utc::now())?;
    let (record, secret) = state.store.create_api_token(new, &caller.audit).await?;
    crate::trace::record_change(ENTITY, "create");
    tracing::info!(
        actor = %caller.audit.actor,
        entity = ENTITY,
        action = "create",
        id = %record.id,
        name = %record.name,
        role = %record.role,
        "security change"
    );
    let response = CreatedApiTokenResponse {
        role: role_of(&record)?,
        id: record.id,
        name: record.name,
        token: secret.expose().to_owned(),
        hint: record.hint,
        created_at: record.created_at,
        expires_at: record.expires_at,
    };
    Ok((StatusCode::CREATED, no_store(), Json(response)))
}

/// `Cache-Control: no-store`, for responses that carry a secret shown once.
pub(crate) fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// List API tokens, revoked ones included.
#[utoipa::path(
    get,
    path = "/api/v1/api-tokens",
    operation_id = "list_api_tokens",
    tag = "api-tokens",
    responses(
        (status = 200, description = "Every API token, oldest first, without the tokens",
            body = Vec<ApiTokenResponse>),
    )
)]
pub async fn list(
    State(state): State<AdminState>,
) -> Result<Json<Vec<ApiTokenResponse>>, ApiError> {
    let records = state.store.list_api_tokens().await?;
    let tokens = records.into_iter().map(ApiTokenResponse::try_from).collect::<Result<_, _>>()?;
    Ok(Json(tokens))
}

/// Revoke an API token: requests with it get 401 from now on.
#[utoipa::path(
    delete,
    path = "/api/v1/api-tokens/{id}",
    operation_id = "revoke_api_token",
    tag = "api-tokens",
    params(("id" = String, Path, format = Uuid, description = "API token id")),
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
    let id: Uuid = path_id("api token", &id)?;
    let (record, revoked) = state.store.revoke_api_token(id, &caller.audit).await?;
    if revoked {
        crate::trace::record_change(ENTITY, "revoke");
        tracing::info!(
            actor = %caller.audit.actor,
            entity = ENTITY,
            action = "revoke",
            id = %record.id,
            name = %record.name,
            "security change"
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::FieldError;

    fn request(role: &str, expires: Option<i64>) -> CreateApiTokenRequest {
        CreateApiTokenRequest {
            name: " ci ".into(),
            role: role.into(),
            expires_in_seconds: expires,
        }
    }

    #[test]
    fn a_valid_request_is_normalised() {
        let now = Utc::now();
        let new = validate_create(request("operator", Some(3600)), now).expect("valid");
        assert_eq!(new.name, "ci");
        assert_eq!(new.role, "operator");
        assert_eq!(new.expires_at, Some(now + Duration::seconds(3600)));
        assert_eq!(validate_create(request("admin", None), now).expect("valid").expires_at, None);
    }

    #[test]
    fn roles_and_lifetimes_are_checked_together() {
        let errors = match validate_create(request("root", Some(59)), Utc::now()) {
            Err(ApiError::Validation(errors)) => errors,
            other => panic!("expected validation errors, got {other:?}"),
        };
        assert_eq!(
            errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["role", "expires_in_seconds"]
        );
        assert_eq!(errors[0], FieldError::new("role", "must be viewer, operator or admin"));
    }

    #[test]
    fn lifetimes_are_integers_also_with_a_zero_fraction() {
        let parse = |body: &str| crate::body::parse_json::<CreateApiTokenRequest>(body.as_bytes());
        let seconds = |body: &str| parse(body).map(|r| r.expires_in_seconds).ok().flatten();
        assert_eq!(seconds(r#"{"name":"a","role":"viewer","expires_in_seconds":90}"#), Some(90));
        assert_eq!(seconds(r#"{"name":"a","role":"viewer","expires_in_seconds":90.0}"#), Some(90));
        assert_eq!(seconds(r#"{"name":"a","role":"viewer","expires_in_seconds":null}"#), None);
        assert_eq!(seconds(r#"{"name":"a","role":"viewer"}"#), None);
        for bad in ["90.5", "\"90\"", "true", "[]"] {
            let body = format!(r#"{{"name":"a","role":"viewer","expires_in_seconds":{bad}}}"#);
            match parse(&body) {
                Err(ApiError::Validation(errors)) => {
                    assert_eq!(
                        errors,
                        [FieldError::new("expires_in_seconds", "must be an integer")]
                    );
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn created_token_debug_never_shows_the_token() {
        let response = CreatedApiTokenResponse {
            id: Uuid::nil(),
            name: "ci".into(),
            role: Role::Viewer,
            token: "mgwtok_SECRETSECRET".into(),
            hint: "…CRET".into(),
            created_at: Utc::now(),
            expires_at: None,
        };
        assert!(!format!("{response:?}").contains("SECRETSECRET"));
    }
}
