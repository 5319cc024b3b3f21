//! Admin authentication and authorization.
//!
//! [`authenticate`] turns `Authorization: Bearer <token>` into a [`Principal`] in the request's
//! extensions, or answers 401. A token is, in this order:
//! 1. the bootstrap admin token (role `admin`): only its SHA-256 is held, and the presented
//!    token's hash is compared in constant time;
//! 2. a JWT (three base64url segments joined by `.`): handed to the optional
//!    [`BearerVerifier`] (`AdminState::bearer_verifier`, where OpenID Connect plugs in); 401
//!    when there is none. API tokens never contain a `.`, so the two never overlap;
//! 3. an API token: looked up by its SHA-256; revoked or expired ones get 401.
//!
//! [`require_role`] runs on each route (the router puts it there from the route table in
//! `lib.rs`) and answers 403 when the principal's role is below the route's.
//!
//! Every decision is logged with the actor and, when refused, the reason or the missing role;
//! never with the token.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;
use http::header;
use modelgw_control_plane::store::ApiTokenRecord;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AdminState;
use crate::identity::{Principal, PrincipalKind, Role};
use crate::problem::ApiError;

/// The shortest bootstrap admin token accepted at start. 32 characters of a random token are
/// far beyond guessing; shorter ones are typically hand-typed passwords. The generated token
/// (`mgwadm_` and 43 characters of base64url) is 50 characters.
pub const MIN_BOOTSTRAP_TOKEN_CHARS: usize = 32;

/// A bootstrap admin token that is refused at start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootstrapTokenError {
    #[error(
        "the admin token is {chars} characters long; it must be at least \
         {MIN_BOOTSTRAP_TOKEN_CHARS} (generate one with `openssl rand -base64 32`)"
    )]
    TooShort { chars: usize },
}

/// Checks a configured bootstrap admin token (its length; the value is never shown).
pub fn check_bootstrap_token(token: &str) -> Result<(), BootstrapTokenError> {
    let chars = token.chars().count();
    if chars < MIN_BOOTSTRAP_TOKEN_CHARS {
        return Err(BootstrapTokenError::TooShort { chars });
    }
    Ok(())
}

/// Middleware: authenticates the request to a [`Principal`] (put in its extensions), or
/// rejects it with 401.
pub async fn authenticate(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(token) = bearer_token(request.headers()) else {
        tracing::info!(reason = "no bearer token", "admin request refused");
        return Err(ApiError::MissingToken);
    };
    let principal = principal_of(&state, token).await?;
    tracing::Span::current().record("actor", tracing::field::display(principal.actor()));
    tracing::debug!(actor = %principal.actor(), role = %principal.role, "admin request authenticated");
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

async fn principal_of(state: &AdminState, token: &str) -> Result<Principal, ApiError> {
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if bool::from(hash.ct_eq(&state.admin_token_sha256)) {
        return Ok(Principal::bootstrap());
    }
    if is_jwt_shaped(token) {
        // The one place a JWT is handed on: OpenID Connect, when configured.
        let Some(verifier) = &state.bearer_verifier else {
            tracing::warn!(
                reason = "a JWT, and no OpenID Connect verifier is configured",
                "admin request refused"
            );
            return Err(ApiError::InvalidToken);
        };
        return verifier.verify(token).await.map_err(|rejected| {
            tracing::warn!(reason = %rejected, unavailable = rejected.unavailable, "admin request refused: bearer token not verified");
            if rejected.unavailable { ApiError::AuthUnavailable } else { ApiError::InvalidToken }
        });
    }
    let Some(record) = state.store.find_api_token(&hash).await? else {
        tracing::warn!(reason = "unknown token", "admin request refused");
        return Err(ApiError::InvalidToken);
    };
    let principal = api_token_principal(&record)?;
    if record.revoked_at.is_some() {
        tracing::warn!(actor = %principal.actor(), reason = "revoked", "admin request refused");
        return Err(ApiError::InvalidToken);
    }
    if record.expires_at.is_some_and(|at| at <= Utc::now()) {
        tracing::warn!(actor = %principal.actor(), reason = "expired", "admin request refused");
        return Err(ApiError::InvalidToken);
    }
    if let Err(e) = state.store.touch_api_token(&record).await {
        // Bookkeeping only: the request goes on.
        tracing::warn!(actor = %principal.actor(), error = %e, "could not record the token's last use");
    }
    Ok(principal)
}

fn api_token_principal(record: &ApiTokenRecord) -> Result<Principal, ApiError> {
    let role = Role::parse(&record.role).ok_or_else(|| {
        ApiError::Internal(format!("api token {} has an unknown role {:?}", record.id, record.role))
    })?;
    Ok(Principal {
        kind: PrincipalKind::ApiToken { id: record.id },
        name: record.name.clone(),
        role,
    })
}

/// Middleware on each route: 403 unless the principal's role includes `required`.
pub async fn require_role(
    State(required): State<Role>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(principal) = request.extensions().get::<Principal>() else {
        // `authenticate` runs before every route; a route outside it is a wiring bug.
        return Err(ApiError::Internal("route reached without an authenticated principal".into()));
    };
    if !principal.can(required) {
        tracing::warn!(
            actor = %principal.actor(),
            role = %principal.role,
            required = %required,
            "admin request forbidden: role too low"
        );
        return Err(ApiError::Forbidden { required, actual: principal.role });
    }
    Ok(next.run(request).await)
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, RFC 9110).
fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Three non-empty base64url segments joined by `.`: a JWS in compact form (RFC 7515).
fn is_jwt_shaped(token: &str) -> bool {
    let segments: Vec<&str> = token.split('.').collect();
    segments.len() == 3
        && segments.iter().all(|s| {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).expect("valid header"));
        h
    }

    #[test]
    fn bearer_tokens_are_extracted_case_insensitively() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn jwts_are_told_from_other_tokens() {
        assert!(is_jwt_shaped("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln-_"));
        assert!(!is_jwt_shaped("mgwtok_abcDEF-_0123456789"));
        assert!(!is_jwt_shaped("a.b"));
        assert!(!is_jwt_shaped("a..c"));
        assert!(!is_jwt_shaped("a.b.c.d"));
        assert!(!is_jwt_shaped("a.b+.c"));
    }

    #[test]
    fn bootstrap_tokens_must_be_long() {
        assert_eq!(
            check_bootstrap_token("short-token"),
            Err(BootstrapTokenError::TooShort { chars: 11 })
        );
        assert!(check_bootstrap_token(&"x".repeat(MIN_BOOTSTRAP_TOKEN_CHARS)).is_ok());
        let message = check_bootstrap_token("hunter2").expect_err("short").to_string();
        assert!(!message.contains("hunter2") && message.contains("at least 32"), "{message}");
    }
}
