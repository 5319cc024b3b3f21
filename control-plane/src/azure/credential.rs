//! Which Entra credential the control plane uses to call Azure Resource Manager.
//!
//! azure_identity 1.0 has no `DefaultAzureCredential` and no environment credential, so the
//! choice is made here, from `MODELGW_AZURE_CREDENTIAL`:
//!
//! | value | credential |
//! |---|---|
//! | `managed_identity` | App Service / Container Apps identity when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set, else the VM / AKS instance metadata service (IMDS) |
//! | `workload_identity` | AKS workload identity: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE` |
//! | `client_secret` | a service principal: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` |
//! | `auto` (default) | the chain below |
//!
//! The `auto` chain, in order, stopping at the first credential that yields a token:
//! 1. workload identity, if `AZURE_FEDERATED_TOKEN_FILE` is set (it is only ever set on purpose,
//!    by the AKS webhook);
//! 2. client secret, if `AZURE_CLIENT_SECRET` is set;
//! 3. managed identity, always, bounded by [`CredentialOptions::managed_identity_probe_timeout`]
//!    because IMDS retries for up to 72 s where there is none.
//!
//! A credential "works" when it returns a token for the scope asked for, so a wrong secret is
//! found at start-up, not at the first discovery. When none works, [`CredentialError`] lists
//! every credential considered and why it was skipped or failed. No secret is ever part of an
//! error or log line: reasons come from Entra's error descriptions, and any occurrence of the
//! configured client secret in them is replaced as a last guard.
//!
//! A user-assigned managed identity is chosen with `MODELGW_AZURE_MANAGED_IDENTITY_CLIENT_ID`
//! (not `AZURE_CLIENT_ID`, which belongs to the service principal or workload identity).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential};
use azure_core::http::ClientOptions;
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use modelgw_model::Secret;

/// Environment variable naming the credential choice.
pub const CREDENTIAL_ENV: &str = "MODELGW_AZURE_CREDENTIAL";
/// Environment variable naming a user-assigned managed identity by client id.
pub const MANAGED_IDENTITY_CLIENT_ID_ENV: &str = "MODELGW_AZURE_MANAGED_IDENTITY_CLIENT_ID";
const TENANT_ID_ENV: &str = "AZURE_TENANT_ID";
const CLIENT_ID_ENV: &str = "AZURE_CLIENT_ID";
const CLIENT_SECRET_ENV: &str = "AZURE_CLIENT_SECRET";
const FEDERATED_TOKEN_FILE_ENV: &str = "AZURE_FEDERATED_TOKEN_FILE";
const IDENTITY_ENDPOINT_ENV: &str = "IDENTITY_ENDPOINT";
const IDENTITY_HEADER_ENV: &str = "IDENTITY_HEADER";

/// How long the `auto` chain waits for managed identity before calling it unavailable. IMDS
/// answers in milliseconds where it exists; where it does not, azure_identity retries for up to
/// 72 s, which would stall start-up for nothing.
pub const DEFAULT_MANAGED_IDENTITY_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The configured credential choice (`MODELGW_AZURE_CREDENTIAL`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CredentialChoice {
    ManagedIdentity,
    WorkloadIdentity,
    ClientSecret,
    /// Workload identity, then client secret, then managed identity (see the module docs).
    #[default]
    Auto,
}

impl CredentialChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialChoice::ManagedIdentity => "managed_identity",
            CredentialChoice::WorkloadIdentity => "workload_identity",
            CredentialChoice::ClientSecret => "client_secret",
            CredentialChoice::Auto => "auto",
        }
    }
}

impl fmt::Display for CredentialChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredentialChoice {
    type Err = CredentialConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "managed_identity" => Ok(CredentialChoice::ManagedIdentity),
            "workload_identity" => Ok(CredentialChoice::WorkloadIdentity),
            "client_secret" => Ok(CredentialChoice::ClientSecret),
            "auto" | "" => Ok(CredentialChoice::Auto),
            _ => Err(CredentialConfigError::UnknownChoice(s.to_owned())),
        }
    }
}

/// The credential actually in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    ManagedIdentity,
    WorkloadIdentity,
    ClientSecret,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ManagedIdentity => "managed_identity",
            CredentialKind::WorkloadIdentity => "workload_identity",
            CredentialKind::ClientSecret => "client_secret",
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bad credential configuration.
#[derive(Debug, thiserror::Error)]
pub enum CredentialConfigError {
    #[error(
        "{CREDENTIAL_ENV}={0:?} is not one of managed_identity, workload_identity, client_secret, auto"
    )]
    UnknownChoice(String),
}

/// Everything a credential needs besides transport options, usually read from the environment.
#[derive(Clone, Debug, Default)]
pub struct CredentialSettings {
    pub choice: CredentialChoice,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub federated_token_file: Option<PathBuf>,
    /// A user-assigned managed identity's client id; `None` means the system-assigned one.
    pub managed_identity_client_id: Option<String>,
}

impl CredentialSettings {
    /// Reads the variables named in the module docs from the process environment.
    pub fn from_env() -> Result<Self, CredentialConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads them through `lookup` (tests pass a map). Empty values count as unset.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CredentialConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        Ok(Self {
            choice: get(CREDENTIAL_ENV).as_deref().unwrap_or("auto").parse()?,
            tenant_id: get(TENANT_ID_ENV),
            client_id: get(CLIENT_ID_ENV),
            client_secret: get(CLIENT_SECRET_ENV).map(Secret::new),
            federated_token_file: get(FEDERATED_TOKEN_FILE_ENV).map(PathBuf::from),
            managed_identity_client_id: get(MANAGED_IDENTITY_CLIENT_ID_ENV),
        })
    }
}

/// How credentials reach Entra; tests inject a transport and turn retries off.
#[derive(Clone, Debug)]
pub struct CredentialOptions {
    /// Passed to every azure_identity credential: `transport` (tests redirect it to a mock),
    /// `retry` (`RetryOptions::none()` keeps error paths fast), `cloud` (sovereign clouds).
    pub client_options: ClientOptions,
    /// Whether managed identity may use the instance metadata service when no App Service
    /// endpoint is configured. Tests turn this off: IMDS lives at a link-local address.
    pub allow_imds: bool,
    /// Bound on the managed-identity attempt inside the `auto` chain (see the constant).
    pub managed_identity_probe_timeout: Duration,
}

impl Default for CredentialOptions {
    fn default() -> Self {
        Self {
            client_options: ClientOptions::default(),
            allow_imds: true,
            managed_identity_probe_timeout: DEFAULT_MANAGED_IDENTITY_PROBE_TIMEOUT,
        }
    }
}

/// One credential considered while resolving, and why it did not work.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CredentialAttempt {
    pub kind: CredentialKind,
    /// `false` when it was skipped for lack of configuration, without contacting Entra.
    pub tried: bool,
    pub reason: String,
}

impl fmt::Display for CredentialAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.tried { "failed" } else { "skipped" };
        write!(f, "{} {verb}: {}", self.kind, self.reason)
    }
}

/// No configured credential yielded a token.
#[derive(Clone, Debug, thiserror::Error)]
#[error("no Azure credential worked ({CREDENTIAL_ENV}={choice}): {}", list(.attempts))]
pub struct CredentialError {
    pub choice: CredentialChoice,
    pub attempts: Vec<CredentialAttempt>,
}

fn list(attempts: &[CredentialAttempt]) -> String {
    attempts.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A credential that has produced a token, and which one it is.
#[derive(Clone)]
pub struct ResolvedCredential {
    pub kind: CredentialKind,
    pub credential: Arc<dyn TokenCredential>,
    /// The credentials tried before this one, in order, and why they failed.
    pub skipped: Vec<CredentialAttempt>,
}

impl fmt::Debug for ResolvedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedCredential")
            .field("kind", &self.kind)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

/// Builds the configured credential(s) and returns the first that gets a token for `scope`
/// (e.g. [`crate::azure::arm::ARM_SCOPE`]). The token is cached inside the credential, so the
/// first real call does not fetch again.
#[tracing::instrument(name = "azure.credential.resolve", skip_all, fields(choice = %settings.choice, scope = %scope))]
pub async fn resolve(
    settings: &CredentialSettings,
    options: &CredentialOptions,
    scope: &str,
) -> Result<ResolvedCredential, CredentialError> {
    let order: &[CredentialKind] = match settings.choice {
        CredentialChoice::ManagedIdentity => &[CredentialKind::ManagedIdentity],
        CredentialChoice::WorkloadIdentity => &[CredentialKind::WorkloadIdentity],
        CredentialChoice::ClientSecret => &[CredentialKind::ClientSecret],
        CredentialChoice::Auto => &[
            CredentialKind::WorkloadIdentity,
            CredentialKind::ClientSecret,
            CredentialKind::ManagedIdentity,
        ],
    };
    let auto = settings.choice == CredentialChoice::Auto;
    let mut attempts = Vec::new();
    for &kind in order {
        match attempt(kind, auto, settings, options, scope).await {
            Ok(credential) => {
                tracing::info!(credential = %kind, skipped = attempts.len(), "azure credential acquired a token");
                return Ok(ResolvedCredential { kind, credential, skipped: attempts });
            }
            Err(failure) => {
                tracing::warn!(credential = %kind, tried = failure.tried, reason = %failure.reason, "azure credential unavailable");
                attempts.push(failure);
            }
        }
    }
    Err(CredentialError { choice: settings.choice, attempts })
}

async fn attempt(
    kind: CredentialKind,
    auto: bool,
    settings: &CredentialSettings,
    options: &CredentialOptions,
    scope: &str,
) -> Result<Arc<dyn TokenCredential>, CredentialAttempt> {
    let skipped = |reason: String| CredentialAttempt { kind, tried: false, reason };
    let credential = build(kind, settings, options).map_err(skipped)?;
    let scopes = [scope];
    let fetch = credential.get_token(&scopes, None);
    let outcome: Result<AccessToken, String> = if kind == CredentialKind::ManagedIdentity && auto {
        match tokio::time::timeout(options.managed_identity_probe_timeout, fetch).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no token within {:?} (no managed identity endpoint answered)",
                options.managed_identity_probe_timeout
            )),
        }
    } else {
        fetch.await.map_err(|e| e.to_string())
    };
    match outcome {
        Ok(_token) => Ok(credential),
        Err(reason) => {
            // One line: azure_identity appends a troubleshooting link on a new line.
            let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
            Err(CredentialAttempt { kind, tried: true, reason: scrub(&reason, settings) })
        }
    }
}

/// Builds the credential of an explicit choice WITHOUT fetching a token, for callers that
/// fetch (and retry) on their own schedule, like the data plane's Entra ID token refresh.
/// `Ok(None)` for `auto`, whose pick needs a fetch (use [`resolve`]). The error says which
/// configuration is missing and never contains the client secret.
pub fn build_chosen(
    settings: &CredentialSettings,
    options: &CredentialOptions,
) -> Result<Option<Arc<dyn TokenCredential>>, String> {
    let kind = match settings.choice {
        CredentialChoice::ManagedIdentity => CredentialKind::ManagedIdentity,
        CredentialChoice::WorkloadIdentity => CredentialKind::WorkloadIdentity,
        CredentialChoice::ClientSecret => CredentialKind::ClientSecret,
        CredentialChoice::Auto => return Ok(None),
    };
    build(kind, settings, options).map(Some).map_err(|reason| format!("{kind}: {reason}"))
}

/// Constructs one credential, or says which configuration it lacks.
fn build(
    kind: CredentialKind,
    settings: &CredentialSettings,
    options: &CredentialOptions,
) -> Result<Arc<dyn TokenCredential>, String> {
    let client_options = options.client_options.clone();
    match kind {
        CredentialKind::WorkloadIdentity => {
            let token_file = settings
                .federated_token_file
                .clone()
                .ok_or_else(|| format!("{FEDERATED_TOKEN_FILE_ENV} is not set"))?;
            let tenant_id = require(&settings.tenant_id, TENANT_ID_ENV)?;
            let client_id = require(&settings.client_id, CLIENT_ID_ENV)?;
            let credential =
                WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                    credential_options: ClientAssertionCredentialOptions { client_options },
                    client_id: Some(client_id),
                    tenant_id: Some(tenant_id),
                    token_file_path: Some(token_file),
                }))
                .map_err(|e| scrub(&e.to_string(), settings))?;
            Ok(credential)
        }
        CredentialKind::ClientSecret => {
            let secret = settings
                .client_secret
                .as_ref()
                .ok_or_else(|| format!("{CLIENT_SECRET_ENV} is not set"))?;
            let tenant_id = require(&settings.tenant_id, TENANT_ID_ENV)?;
            let client_id = require(&settings.client_id, CLIENT_ID_ENV)?;
            let credential = ClientSecretCredential::new(
                &tenant_id,
                client_id,
                secret.expose().to_owned().into(),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(|e| scrub(&e.to_string(), settings))?;
            Ok(credential)
        }
        CredentialKind::ManagedIdentity => {
            // azure_identity picks App Service vs IMDS from the process environment, so the
            // guard against IMDS reads the same place.
            let app_service = std::env::var_os(IDENTITY_ENDPOINT_ENV).is_some()
                && std::env::var_os(IDENTITY_HEADER_ENV).is_some();
            if !app_service && !options.allow_imds {
                return Err(format!(
                    "{IDENTITY_ENDPOINT_ENV}/{IDENTITY_HEADER_ENV} are not set and the instance metadata service is disabled"
                ));
            }
            let credential =
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: settings
                        .managed_identity_client_id
                        .clone()
                        .map(UserAssignedId::ClientId),
                    client_options,
                }))
                .map_err(|e| e.to_string())?;
            Ok(credential)
        }
    }
}

fn require(value: &Option<String>, name: &str) -> Result<String, String> {
    value.clone().ok_or_else(|| format!("{name} is not set"))
}

/// Removes the configured client secret from `text`, should an upstream message ever echo it.
fn scrub(text: &str, settings: &CredentialSettings) -> String {
    match &settings.client_secret {
        Some(secret) if !secret.is_empty() => text.replace(secret.expose(), "<redacted>"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_parses_documented_values_and_rejects_others() {
        assert_eq!(
            "managed_identity".parse::<CredentialChoice>().ok(),
            Some(CredentialChoice::ManagedIdentity)
        );
        assert_eq!(
            "Workload_Identity".parse::<CredentialChoice>().ok(),
            Some(CredentialChoice::WorkloadIdentity)
        );
        assert_eq!(
            "client_secret".parse::<CredentialChoice>().ok(),
            Some(CredentialChoice::ClientSecret)
        );
        assert_eq!("auto".parse::<CredentialChoice>().ok(), Some(CredentialChoice::Auto));
        assert!("default".parse::<CredentialChoice>().is_err());
    }

    #[test]
    fn settings_default_to_auto_and_ignore_empty_values() {
        let settings = CredentialSettings::from_lookup(|name| match name {
            "AZURE_CLIENT_SECRET" => Some(String::new()),
            "AZURE_TENANT_ID" => Some("t".into()),
            _ => None,
        })
        .expect("valid settings");
        assert_eq!(settings.choice, CredentialChoice::Auto);
        assert!(settings.client_secret.is_none());
        assert_eq!(settings.tenant_id.as_deref(), Some("t"));
    }

    #[test]
    fn build_chosen_builds_without_a_fetch_and_leaves_auto_to_resolve() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = CredentialOptions { allow_imds: false, ..Default::default() };
        let auto = CredentialSettings::default();
        assert!(build_chosen(&auto, &options).expect("auto is not an error").is_none());
        let incomplete = CredentialSettings {
            choice: CredentialChoice::ClientSecret,
            tenant_id: Some("t".into()),
            client_id: Some("c".into()),
            ..Default::default()
        };
        let err = build_chosen(&incomplete, &options).expect_err("no secret");
        assert!(err.contains(CLIENT_SECRET_ENV), "{err}");
        let complete =
            CredentialSettings { client_secret: Some(Secret::new("s3cr3t-value")), ..incomplete };
        assert!(build_chosen(&complete, &options).expect("builds").is_some());
    }

    #[test]
    fn scrub_removes_the_secret() {
        let settings = CredentialSettings {
            client_secret: Some(Secret::new("s3cr3t-value")),
            ..Default::default()
        };
        assert_eq!(scrub("bad s3cr3t-value here", &settings), "bad <redacted> here");
    }
}
