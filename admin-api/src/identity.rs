//! Who is calling the admin API: the principal every authenticated request carries (as a
//! request extension, set by the auth middleware) and the role that decides what it may do.
//!
//! Shared by every way of signing in (the bootstrap admin token, named API tokens, OpenID
//! Connect bearer tokens), by the role checks on each route, and by the audit log, which
//! records [`Principal::actor`] for every change.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a principal may do. Ordered: each role can do everything the roles below it can.
///
/// - `viewer` reads configuration, status and the audit log;
/// - `operator` also manages inference endpoints, gateways, gateway keys, imports and
///   endpoint health;
/// - `admin` also manages API tokens, data-plane tokens and security settings.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Exact, lowercase match (the names the API and OIDC role claims use).
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a principal signed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalKind {
    /// The bootstrap admin token (`MODELGW_ADMIN_TOKEN` / `_FILE`, or generated at first start).
    Bootstrap,
    /// A named API token created through `/api/v1/api-tokens`.
    ApiToken { id: uuid::Uuid },
    /// An OpenID Connect bearer token (e.g. Entra ID) whose signature, issuer, audience and
    /// lifetime were verified.
    Oidc { issuer: String },
}

/// An authenticated caller. Never holds a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The token's name, or the OIDC subject (`sub`, or `oid` for Entra ID when present).
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// The holder of the bootstrap admin token.
    pub fn bootstrap() -> Principal {
        Principal {
            kind: PrincipalKind::Bootstrap,
            name: "bootstrap".to_owned(),
            role: Role::Admin,
        }
    }

    /// The actor recorded in the audit log and in `config change` log lines:
    /// `bootstrap`, `token:<name>` or `oidc:<subject>`.
    pub fn actor(&self) -> String {
        match &self.kind {
            PrincipalKind::Bootstrap => "bootstrap".to_owned(),
            PrincipalKind::ApiToken { .. } => format!("token:{}", self.name),
            PrincipalKind::Oidc { .. } => format!("oidc:{}", self.name),
        }
    }

    /// Whether this principal's role includes `required`.
    pub fn can(&self, required: Role) -> bool {
        self.role >= required
    }
}

/// Verifies bearer tokens shaped like a JWT (three base64url segments joined by `.`), which
/// neither the bootstrap token check nor the API token lookup answers: the hook through which
/// OpenID Connect sign-in (`oidc.rs`) plugs into the auth middleware, as
/// `AdminState::bearer_verifier`. Without one, such tokens get 401.
pub trait BearerVerifier: Send + Sync + 'static {
    /// The principal `token` authenticates, or why it does not. The reason is logged (so it
    /// must never contain the token) and the caller gets 401 (503 when `unavailable`).
    fn verify<'a>(&'a self, token: &'a str) -> BearerVerification<'a>;
}

/// What [`BearerVerifier::verify`] returns.
pub type BearerVerification<'a> =
    Pin<Box<dyn Future<Output = Result<Principal, BearerRejected>> + Send + 'a>>;

/// Why a bearer token was refused, for the log (never sent to the caller, never the token).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct BearerRejected {
    pub reason: String,
    /// The token could not be checked now (the identity provider's keys are unavailable):
    /// the caller gets 503, not a 401 that would call a good credential bad.
    pub unavailable: bool,
}

impl BearerRejected {
    /// The token authenticates no one (the caller gets 401).
    pub fn invalid(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), unavailable: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse_exactly() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!(Role::parse("operator"), Some(Role::Operator));
        assert_eq!(Role::parse("Operator"), None);
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn actors_name_how_the_principal_signed_in() {
        let p = |kind, name: &str| Principal { kind, name: name.to_owned(), role: Role::Viewer };
        assert_eq!(p(PrincipalKind::Bootstrap, "bootstrap").actor(), "bootstrap");
        assert_eq!(p(PrincipalKind::ApiToken { id: uuid::Uuid::nil() }, "ci").actor(), "token:ci");
        let oidc = p(PrincipalKind::Oidc { issuer: "https://login".to_owned() }, "u-1");
        assert_eq!(oidc.actor(), "oidc:u-1");
        assert!(!oidc.can(Role::Operator));
    }
}
