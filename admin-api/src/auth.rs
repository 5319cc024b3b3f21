//! Admin authentication: `Authorization: Bearer <admin token>`.
//!
//! Only the token's SHA-256 is known to the control plane; the presented token is hashed and
//! compared in constant time, so neither the comparison's timing nor any log line reveals it.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::ApiError;

/// SHA-256 of the admin token, the only form in which the API holds it.
#[derive(Clone, Copy)]
pub struct AdminTokenHash(pub [u8; 32]);

impl std::fmt::Debug for AdminTokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminTokenHash(<redacted>)")
    }
}

/// Middleware: rejects the request with 401 unless it carries the admin token.
pub async fn require_admin_token(
    State(expected): State<AdminTokenHash>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer_token(request.headers()).ok_or(ApiError::MissingToken)?;
    if !token_matches(token, &expected) {
        tracing::warn!("admin request with an invalid bearer token");
        return Err(ApiError::InvalidToken);
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

fn token_matches(token: &str, expected: &AdminTokenHash) -> bool {
    let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    presented.ct_eq(&expected.0).into()
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
    fn only_the_token_with_the_expected_hash_matches() {
        let expected = AdminTokenHash(Sha256::digest(b"mgwadm_right").into());
        assert!(token_matches("mgwadm_right", &expected));
        assert!(!token_matches("mgwadm_wrong", &expected));
        assert!(!token_matches("", &expected));
    }
}
