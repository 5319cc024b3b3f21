//! OpenID Connect bearer tokens: verifies a JWT from one trusted issuer (Entra ID first) and
//! turns it into a [`Principal`] with a [`Role`](crate::identity::Role).
//!
//! Owns: the issuer's configuration ([`OidcConfig`], from `MODELGW_OIDC_*`), its signing keys
//! (discovered, fetched, cached and refreshed: `oidc::jwks`), and the checks a token passes: shape,
//! algorithm (public-key only: `none` and HMAC can never be enabled), key, signature, `iss`,
//! `aud`, `exp`/`nbf` (with [`OidcConfig::leeway`]), then a subject and a role.
//!
//! Never: logs or displays a token (rejections log why, the `kid`, the algorithm and the
//! issuer); accepts a key from anywhere but the configured issuer's JWKS over https (plain http
//! only on loopback); asks the identity provider for keys more than once per
//! [`OidcConfig::min_fetch_interval`], however many unknown `kid`s arrive.
//!
//! The auth middleware calls [`looks_like_jwt`] to tell a JWT from an API token, then
//! [`OidcVerifier::verify`]; [`OidcError::status`] says what to answer.
//!
//! # Entra ID setup
//!
//! 1. Register an application for the gateway's admin API (Entra ID → App registrations), and
//!    in its manifest set `"requestedAccessTokenVersion": 2` (`accessTokenAcceptedVersion` in
//!    the older manifest), so its access tokens carry the v2.0 issuer below.
//! 2. Under *App roles*, create roles whose **values** are `viewer`, `operator` and `admin`
//!    (allowed member types: users/groups, and applications for automation), and assign users,
//!    groups or service principals to them (Enterprise applications → the app → Users and
//!    groups). Their values arrive in the access token's `roles` claim.
//! 3. Configure the control plane:
//!    - `MODELGW_OIDC_ISSUER=https://login.microsoftonline.com/<tenant-id>/v2.0` (the tenant
//!      id, not `common`/`organizations`: one tenant is trusted);
//!    - `MODELGW_OIDC_AUDIENCE=<application (client) id>` (comma-separated to also accept the
//!      Application ID URI, e.g. `<client-id>,api://modelgw`);
//!    - optional `MODELGW_OIDC_ROLE_MAP` when the role values differ, e.g.
//!      `ModelGateway.Admin=admin,ModelGateway.Operator=operator,ModelGateway.Reader=viewer`
//!      (it replaces the default `viewer=viewer,operator=operator,admin=admin`);
//!    - to use security groups instead of app roles: `MODELGW_OIDC_ROLES_CLAIM=groups`, the
//!      app's *Token configuration* emitting group ids, and
//!      `MODELGW_OIDC_ROLE_MAP=<group-object-id>=operator,…`. A user in more than 200 groups
//!      gets no `groups` claim (Entra's overage: a pointer to Graph instead), which this
//!      verifier logs and treats as no role; app roles have no such limit.
//!    - `MODELGW_OIDC_JWKS_URI` only to bypass discovery (otherwise read from
//!      `<issuer>/.well-known/openid-configuration`).
//! 4. Clients get a token for the scope `<client-id>/.default` (or `api://modelgw/.default`),
//!    e.g. `az account get-access-token --scope api://modelgw/.default`, and send it as
//!    `Authorization: Bearer <token>`.
//!
//! The principal's name (the audit log's actor `oidc:<name>`) is the token's `oid`, the object
//! id of the user or service principal, stable across applications; `sub` when there is no
//! `oid` (other providers). It gets the highest role any value of the roles claim maps to.

mod config;
mod jwks;
mod ring_backend;

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use config::{
    DEFAULT_FETCH_TIMEOUT, DEFAULT_JWKS_MAX_AGE, DEFAULT_LEEWAY, DEFAULT_MIN_FETCH_INTERVAL,
    ENV_AUDIENCE, ENV_ISSUER, ENV_JWKS_URI, ENV_ROLE_MAP, ENV_ROLES_CLAIM, OidcConfig,
    OidcConfigError, RoleMap, SigningAlgorithm,
};
pub use jwks::JwksError;

use crate::identity::{Principal, PrincipalKind};
use jwks::{KeyCache, KeyLookupError};

/// Longest token accepted. Entra ID access tokens are 1–3 KiB, up to ~10 KiB with 200 group
/// ids; anything far larger is not worth base64-decoding.
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;

/// Longest `kid` and subject accepted: both end up in logs (and the subject in the audit log).
/// Entra ID's are under 50 characters.
const MAX_ID_CHARS: usize = 256;

/// Whether `token` has the shape of a JWS compact serialisation: three dot-separated base64url
/// segments, the first two non-empty. Cheap and allocation-free, for the auth middleware to
/// route a bearer token to [`OidcVerifier::verify`] or to the API-token lookup. The signature
/// segment may be empty, so an unsigned (`alg: none`) token still comes here to be refused as
/// such.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut segments = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return false;
    };
    let base64url =
        |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    !header.is_empty()
        && !claims.is_empty()
        && base64url(header)
        && base64url(claims)
        && base64url(signature)
}

/// Why a token is not valid. Each means the caller is not authenticated: 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    #[error("not a well-formed JWT")]
    Malformed,
    #[error("its signing algorithm is not accepted")]
    AlgorithmNotAllowed,
    #[error("its header names no key (`kid`)")]
    MissingKeyId,
    #[error("it names a key the issuer does not publish")]
    UnknownKey,
    #[error("its key does not fit its algorithm")]
    KeyMismatch,
    #[error("its signature does not verify")]
    BadSignature,
    #[error("it has expired")]
    Expired,
    #[error("it is not valid yet")]
    NotYetValid,
    #[error("it is from another issuer")]
    WrongIssuer,
    #[error("it is for another audience")]
    WrongAudience,
    #[error("it lacks a required claim")]
    MissingClaim,
    #[error("it names no usable subject")]
    NoSubject,
}

impl InvalidToken {
    /// Low-cardinality label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::MissingKeyId => "missing_kid",
            Self::UnknownKey => "unknown_kid",
            Self::KeyMismatch => "key_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim => "missing_claim",
            Self::NoSubject => "no_subject",
        }
    }

    fn from_jwt(kind: &ErrorKind) -> Self {
        match kind {
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) => Self::MissingClaim,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidAlgorithmName => Self::AlgorithmNotAllowed,
            ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey => Self::KeyMismatch,
            // InvalidToken, Base64, Json, Utf8, InvalidClaimFormat, unknown `crit`, …
            _ => Self::Malformed,
        }
    }
}

/// Why [`OidcVerifier::verify`] gave no principal. Its `Display` never includes the token.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The caller's fault: answer 401 (`WWW-Authenticate: Bearer error="invalid_token"`).
    #[error("bearer token rejected: {0}")]
    Invalid(InvalidToken),
    /// Authenticated, but nothing in the roles claim maps to a role: answer 403.
    #[error("bearer token is valid, but its `{claim}` claim grants no role")]
    NoRole { subject: String, claim: String },
    /// The gateway's side: the token cannot be checked because the issuer's keys could not be
    /// fetched. Answer 503: a 401 would tell a legitimate caller its credential is bad.
    #[error("bearer tokens cannot be checked now: {0}")]
    KeysUnavailable(JwksError),
}

impl OidcError {
    /// The status the admin API answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) => StatusCode::UNAUTHORIZED,
            Self::NoRole { .. } => StatusCode::FORBIDDEN,
            Self::KeysUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the same token may succeed later (once the identity provider answers).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::KeysUnavailable(_))
    }

    /// Low-cardinality label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Invalid(reason) => reason.label(),
            Self::NoRole { .. } => "no_role",
            Self::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

/// Verifies bearer tokens of one issuer. Cheap to clone (one `Arc`); share one per process so
/// the key cache is shared.
#[derive(Clone)]
pub struct OidcVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: OidcConfig,
    /// Per accepted algorithm, built once: jsonwebtoken wants the algorithms of one
    /// `Validation` to be of one family, and the header's `alg` picks it.
    validations: HashMap<SigningAlgorithm, Validation>,
    keys: KeyCache,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier").field("issuer", &self.inner.config.issuer).finish()
    }
}

/// The JOSE header fields looked at before any key is: `alg` picks the validation, `kid` the key.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
}

impl OidcVerifier {
    /// Checks `config` (errors name the field) and installs the ring backend of jsonwebtoken.
    /// Fetches nothing yet: call [`Self::fetch_keys`] at start to warm the cache, or let the
    /// first token do it. `http` must have a rustls crypto provider (the process default).
    pub fn new(config: OidcConfig, http: reqwest::Client) -> Result<Self, OidcConfigError> {
        config.check()?;
        let discovery_url = config.discovery_url().map_err(|e| OidcConfigError {
            setting: "issuer",
            problem: format!("no discovery URL can be made from it: {e}"),
        })?;
        ring_backend::install();
        let validations = config
            .algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg.jwt());
                v.leeway = config.leeway.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_issuer(&[&config.issuer]);
                v.set_audience(&config.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                (alg, v)
            })
            .collect();
        let keys = KeyCache::new(&config, discovery_url, http);
        Ok(Self { inner: Arc::new(Inner { config, validations, keys }) })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.inner.config
    }

    /// Fetches the signing keys now (at start), whenever they were last fetched. Returns how
    /// many usable keys the set holds. A failure need not stop the process: tokens get 503
    /// until a later fetch succeeds.
    pub async fn fetch_keys(&self) -> Result<usize, OidcError> {
        self.inner.keys.fetch_now().await.map_err(OidcError::KeysUnavailable)
    }

    /// The principal `token` authenticates, or why not. Logs every rejection (never the token).
    pub async fn verify(&self, token: &str) -> Result<Principal, OidcError> {
        let config = &self.inner.config;
        if token.len() > MAX_TOKEN_BYTES || !looks_like_jwt(token) {
            return Err(self.rejected(InvalidToken::Malformed, None, None, "not a JWS"));
        }
        let Some(header) = decode_header(token) else {
            return Err(self.rejected(InvalidToken::Malformed, None, None, "unreadable header"));
        };
        let alg = match SigningAlgorithm::from_name(&header.alg) {
            Some(alg) if config.algorithms.contains(&alg) => alg,
            _ => {
                let why = if header.alg.eq_ignore_ascii_case("none") {
                    "unsigned token (alg none)"
                } else if header.alg.starts_with("HS") {
                    "HMAC algorithms are never accepted"
                } else {
                    "algorithm not in the accepted list"
                };
                let alg = truncate(&header.alg);
                return Err(self.rejected(InvalidToken::AlgorithmNotAllowed, Some(alg), None, why));
            }
        };
        let kid = match header.kid.as_deref() {
            Some(kid) if !kid.is_empty() && kid.chars().count() <= MAX_ID_CHARS => kid,
            Some("") | None => {
                return Err(self.rejected(InvalidToken::MissingKeyId, Some(alg.name()), None, ""));
            }
            Some(_) => {
                let why = "kid too long";
                return Err(self.rejected(InvalidToken::Malformed, Some(alg.name()), None, why));
            }
        };
        let key = match self.inner.keys.find(kid).await {
            Ok(key) => key,
            Err(KeyLookupError::UnknownKid) => {
                let why = "not in the issuer's JWKS";
                return Err(self.rejected(
                    InvalidToken::UnknownKey,
                    Some(alg.name()),
                    Some(kid),
                    why,
                ));
            }
            Err(KeyLookupError::Unavailable(error)) => {
                tracing::warn!(
                    issuer = %config.issuer,
                    kid,
                    %error,
                    "OIDC bearer token not checked: no signing keys"
                );
                return Err(OidcError::KeysUnavailable(error));
            }
        };
        if !key.fits(alg) {
            let why = "key type, curve or alg differs from the token's alg";
            return Err(self.rejected(InvalidToken::KeyMismatch, Some(alg.name()), Some(kid), why));
        }
        let validation = self.inner.validations.get(&alg).ok_or_else(|| {
            self.rejected(InvalidToken::AlgorithmNotAllowed, Some(alg.name()), Some(kid), "")
        })?;
        let claims = match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
            Ok(data) => data.claims,
            Err(error) => {
                let reason = InvalidToken::from_jwt(error.kind());
                return Err(self.rejected_claims(reason, alg, kid, token, &error));
            }
        };

        let Some(subject) = config
            .subject_claims
            .iter()
            .find_map(|claim| claims.get(claim).and_then(Value::as_str))
            .filter(|s| usable_id(s))
        else {
            let why = "no usable subject claim";
            return Err(self.rejected(InvalidToken::NoSubject, Some(alg.name()), Some(kid), why));
        };

        let values = claim_values(claims.get(&config.roles_claim));
        let Some(role) = config.role_map.highest(values.iter().copied()) else {
            // Entra ID replaces `groups` with `_claim_names.groups` past 200 groups.
            let overage = claims
                .get("_claim_names")
                .and_then(|names| names.get(&config.roles_claim))
                .is_some();
            tracing::warn!(
                issuer = %config.issuer,
                subject,
                claim = %config.roles_claim,
                values = values.len(),
                overage,
                "OIDC bearer token grants no role: no value of its roles claim is in the role map"
            );
            return Err(OidcError::NoRole {
                subject: subject.to_owned(),
                claim: config.roles_claim.clone(),
            });
        };
        Ok(Principal {
            kind: PrincipalKind::Oidc { issuer: config.issuer.clone() },
            name: subject.to_owned(),
            role,
        })
    }

    fn rejected(
        &self,
        reason: InvalidToken,
        alg: Option<&str>,
        kid: Option<&str>,
        why: &str,
    ) -> OidcError {
        tracing::warn!(
            issuer = %self.inner.config.issuer,
            reason = reason.label(),
            alg,
            kid,
            why,
            "OIDC bearer token rejected"
        );
        OidcError::Invalid(reason)
    }

    /// A rejection by jsonwebtoken. The signature was checked before the claims, so for a wrong
    /// issuer or audience the token's own (signed) values are logged: they say what to fix.
    fn rejected_claims(
        &self,
        reason: InvalidToken,
        alg: SigningAlgorithm,
        kid: &str,
        token: &str,
        error: &jsonwebtoken::errors::Error,
    ) -> OidcError {
        let claim = match reason {
            InvalidToken::WrongIssuer => "iss",
            InvalidToken::WrongAudience => "aud",
            _ => "",
        };
        let token_value = (!claim.is_empty())
            .then(|| jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token))
            .and_then(Result::ok)
            .and_then(|claims| claims.get(claim).map(Value::to_string))
            .map(|v| truncate(&v).to_owned());
        tracing::warn!(
            issuer = %self.inner.config.issuer,
            reason = reason.label(),
            alg = alg.name(),
            kid,
            why = %error,
            token_claim = token_value,
            "OIDC bearer token rejected"
        );
        OidcError::Invalid(reason)
    }
}

fn decode_header(token: &str) -> Option<JoseHeader> {
    let encoded = token.split('.').next()?;
    let json = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The values of a roles claim: each string of an array, or the words of a string
/// (space-separated, as OAuth's `scope`).
fn claim_values(claim: Option<&Value>) -> Vec<&str> {
    match claim {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => s.split_whitespace().collect(),
        _ => Vec::new(),
    }
}

/// A subject fit for logs and the audit log: non-empty, bounded, no control characters.
fn usable_id(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= MAX_ID_CHARS && !s.chars().any(char::is_control)
}

/// At most [`MAX_ID_CHARS`] characters of a token-supplied value, for a log line.
fn truncate(s: &str) -> &str {
    s.char_indices().nth(MAX_ID_CHARS).map_or(s, |(i, _)| &s[..i])
}

/// OpenID Connect as the admin API's bearer verifier: a token without a mapped role
/// authenticates no one (401, as the API has no role-less principal), and keys that cannot be
/// fetched answer 503.
impl crate::identity::BearerVerifier for OidcVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> crate::identity::BearerVerification<'a> {
        Box::pin(async move {
            OidcVerifier::verify(self, token).await.map_err(|e| crate::identity::BearerRejected {
                reason: e.to_string(),
                unavailable: e.is_retryable(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jwt_shapes_are_told_from_api_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."));
        for not in [
            "mgwadm_test-admin-token-0123456789",
            "a.b",
            "a.b.c.d",
            ".b.c",
            "a..c",
            "a.b+/.c",
            "a.b=.c",
            "",
        ] {
            assert!(!looks_like_jwt(not), "{not}");
        }
    }

    #[test]
    fn roles_claims_are_arrays_or_space_separated_strings() {
        let array = json!(["admin", 7, "viewer"]);
        assert_eq!(claim_values(Some(&array)), ["admin", "viewer"]);
        assert_eq!(claim_values(Some(&json!("viewer  operator"))), ["viewer", "operator"]);
        assert!(claim_values(Some(&json!({"admin": true}))).is_empty());
        assert!(claim_values(None).is_empty());
    }

    #[test]
    fn errors_map_to_their_status_and_never_quote_anything_but_the_claim_name() {
        let invalid = OidcError::Invalid(InvalidToken::Expired);
        assert_eq!(invalid.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(invalid.label(), "expired");
        assert!(!invalid.is_retryable());
        let no_role = OidcError::NoRole { subject: "u-1".into(), claim: "roles".into() };
        assert_eq!(no_role.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            no_role.to_string(),
            "bearer token is valid, but its `roles` claim grants no role"
        );
        let unavailable =
            OidcError::KeysUnavailable(JwksError::Backoff { retry_in: std::time::Duration::ZERO });
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(unavailable.is_retryable());
    }

    #[test]
    fn ids_are_bounded_and_printable() {
        assert!(usable_id("9f3c0000-0000-4000-8000-000000000001"));
        assert!(!usable_id(""));
        assert!(!usable_id("evil\n2026-01-01T00:00:00Z INFO forged"));
        assert!(!usable_id(&"x".repeat(MAX_ID_CHARS + 1)));
        assert_eq!(truncate(&"é".repeat(MAX_ID_CHARS + 5)).chars().count(), MAX_ID_CHARS);
    }
}
