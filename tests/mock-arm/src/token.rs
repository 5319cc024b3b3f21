//! The Entra ID token endpoint (client credentials, with a secret or a federated assertion) and
//! the App Service managed-identity endpoint, as the Microsoft identity platform documents them.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::server::{self, Handler, Server};

/// Token lifetime unless changed: what Entra issues by default (`expires_in: 3599`).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3599);

/// The path of the App Service managed-identity endpoint (`IDENTITY_ENDPOINT`).
pub const MSI_PATH: &str = "/msi/token";

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const MSI_API_VERSION: &str = "2019-08-01";

/// How a token was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Client credentials with `client_secret`.
    ClientSecret,
    /// Client credentials with a federated `client_assertion` (workload identity).
    ClientAssertion,
    /// The App Service managed-identity endpoint.
    ManagedIdentity,
}

/// A token the mock issued.
#[derive(Clone)]
pub struct IssuedToken {
    pub token: String,
    pub grant: Grant,
    /// The resource (audience) it is for: the scope without `/.default`, without trailing `/`.
    pub audience: String,
    pub expires_at: SystemTime,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("grant", &self.grant)
            .field("audience", &self.audience)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What [`TokenMock::check`] says of a bearer token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Valid { audience: String },
    Expired,
    Unknown,
}

/// How an application authenticates to the mock's Entra endpoint.
#[derive(Clone)]
enum ClientAuth {
    Secret(String),
    Assertion(String),
}

/// Configuration of a [`TokenMock`].
#[derive(Clone)]
pub struct TokenMockBuilder {
    tenant: String,
    clients: HashMap<String, ClientAuth>,
    identity_header: Option<String>,
    lifetime: Duration,
}

impl TokenMockBuilder {
    /// The client (application) id `client_id` authenticates with `secret`.
    pub fn client_secret(
        mut self,
        client_id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.clients.insert(client_id.into(), ClientAuth::Secret(secret.into()));
        self
    }

    /// The client id `client_id` authenticates with the federated assertion `assertion` (the
    /// content of the workload-identity token file).
    pub fn federated_client(
        mut self,
        client_id: impl Into<String>,
        assertion: impl Into<String>,
    ) -> Self {
        self.clients.insert(client_id.into(), ClientAuth::Assertion(assertion.into()));
        self
    }

    /// Serves the App Service managed-identity endpoint, requiring this `x-identity-header`.
    pub fn managed_identity(mut self, identity_header: impl Into<String>) -> Self {
        self.identity_header = Some(identity_header.into());
        self
    }

    /// Lifetime of issued tokens. azure_identity refreshes tokens within 300 s of expiry, so a
    /// lifetime under that makes every `get_token` fetch anew.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    pub async fn start(self) -> std::io::Result<TokenMock> {
        let state = Arc::new(TokenState {
            tenant: self.tenant,
            clients: self.clients,
            identity_header: self.identity_header,
            lifetime_secs: AtomicU64::new(self.lifetime.as_secs()),
            entra_requests: AtomicU64::new(0),
            msi_requests: AtomicU64::new(0),
            issued: Mutex::new(Vec::new()),
        });
        let server = Server::start(state.clone()).await?;
        Ok(TokenMock { state, server: Arc::new(server) })
    }
}

/// A running token mock. Cheap to clone; clones share the server and its records.
#[derive(Clone)]
pub struct TokenMock {
    state: Arc<TokenState>,
    server: Arc<Server>,
}

impl fmt::Debug for TokenMock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenMock").field("addr", &self.server.addr).finish_non_exhaustive()
    }
}

impl TokenMock {
    /// A mock for tenant `tenant` with no application and no managed identity yet.
    pub fn builder(tenant: impl Into<String>) -> TokenMockBuilder {
        TokenMockBuilder {
            tenant: tenant.into(),
            clients: HashMap::new(),
            identity_header: None,
            lifetime: DEFAULT_TOKEN_LIFETIME,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// The value for `IDENTITY_ENDPOINT`.
    pub fn msi_endpoint(&self) -> String {
        format!("{}{MSI_PATH}", self.server.base_url())
    }

    pub fn tenant(&self) -> &str {
        &self.state.tenant
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.lifetime_secs.store(lifetime.as_secs(), Ordering::Relaxed);
    }

    /// Requests to the Entra endpoint (`POST /{tenant}/oauth2/v2.0/token`), whatever the outcome.
    pub fn entra_requests(&self) -> u64 {
        self.state.entra_requests.load(Ordering::Relaxed)
    }

    /// Requests to the managed-identity endpoint, whatever the outcome.
    pub fn msi_requests(&self) -> u64 {
        self.state.msi_requests.load(Ordering::Relaxed)
    }

    /// All token requests.
    pub fn token_requests(&self) -> u64 {
        self.entra_requests() + self.msi_requests()
    }

    /// Tokens issued so far, oldest first.
    pub fn issued(&self) -> Vec<IssuedToken> {
        self.state.issued().clone()
    }

    /// Whether `token` was issued here and is still valid.
    pub fn check(&self, token: &str) -> TokenCheck {
        let issued = self.state.issued();
        match issued.iter().find(|t| t.token == token) {
            None => TokenCheck::Unknown,
            Some(t) if t.expires_at <= SystemTime::now() => TokenCheck::Expired,
            Some(t) => TokenCheck::Valid { audience: t.audience.clone() },
        }
    }

    pub fn stop(&self) {
        self.server.stop();
    }
}

struct TokenState {
    tenant: String,
    clients: HashMap<String, ClientAuth>,
    identity_header: Option<String>,
    lifetime_secs: AtomicU64,
    entra_requests: AtomicU64,
    msi_requests: AtomicU64,
    issued: Mutex<Vec<IssuedToken>>,
}

impl TokenState {
    fn issued(&self) -> MutexGuard<'_, Vec<IssuedToken>> {
        self.issued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn issue(&self, grant: Grant, audience: &str) -> (String, Duration, SystemTime) {
        let lifetime = Duration::from_secs(self.lifetime_secs.load(Ordering::Relaxed));
        let expires_at = SystemTime::now() + lifetime;
        // Three dot-separated parts, like a JWT, so code that tells JWTs from keys sees one.
        let token = format!("eyJ0eXAiOiJKV1QifQ.{}.mock", uuid::Uuid::new_v4().simple());
        self.issued().push(IssuedToken {
            token: token.clone(),
            grant,
            audience: audience.to_owned(),
            expires_at,
        });
        (token, lifetime, expires_at)
    }

    fn entra(&self, head: &Parts, body: &[u8]) -> Response<Full<Bytes>> {
        self.entra_requests.fetch_add(1, Ordering::Relaxed);
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
        let tenant = head.uri.path().trim_start_matches('/').split('/').next().unwrap_or_default();
        if tenant != self.tenant {
            return aadsts(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                90002,
                &format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                ),
            );
        }
        if field("grant_type") != "client_credentials" {
            return aadsts(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            );
        }
        let scope = field("scope");
        let Some(audience) = scope.strip_suffix("/.default") else {
            return aadsts(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1_002_012,
                &format!(
                    "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                ),
            );
        };
        let client_id = field("client_id");
        let Some(registered) = self.clients.get(client_id) else {
            return aadsts(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700_016,
                &format!(
                    "Application with identifier '{client_id}' was not found in the directory '{}'.",
                    self.tenant
                ),
            );
        };
        // Judged by what the request presents, as Entra does: a secret is checked against the
        // app's secrets, an assertion against its federated credentials.
        let grant = if form.contains_key("client_assertion") {
            let matches =
                matches!(registered, ClientAuth::Assertion(a) if a == field("client_assertion"));
            if field("client_assertion_type") != CLIENT_ASSERTION_TYPE || !matches {
                return aadsts(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    700_213,
                    "No matching federated identity record found for presented assertion subject.",
                );
            }
            Grant::ClientAssertion
        } else {
            let matches =
                matches!(registered, ClientAuth::Secret(s) if s == field("client_secret"));
            if !matches {
                return aadsts(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7_000_215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                );
            }
            Grant::ClientSecret
        };
        let (token, lifetime, _) = self.issue(grant, audience.trim_end_matches('/'));
        server::json(
            StatusCode::OK,
            &json!({
                "token_type": "Bearer",
                "expires_in": lifetime.as_secs(),
                "ext_expires_in": lifetime.as_secs(),
                "access_token": token,
            }),
        )
    }

    fn msi(&self, head: &Parts) -> Response<Full<Bytes>> {
        self.msi_requests.fetch_add(1, Ordering::Relaxed);
        let Some(expected) = &self.identity_header else {
            return server::plain(StatusCode::NOT_FOUND, "managed identity is not configured");
        };
        let presented = head.headers.get("x-identity-header").and_then(|v| v.to_str().ok());
        if presented != Some(expected.as_str()) {
            // The exact App Service text is not documented; the shape follows its other errors.
            return server::json(
                StatusCode::UNAUTHORIZED,
                &json!({"statusCode": 401, "message": "Unauthorized: the X-IDENTITY-HEADER is missing or does not match."}),
            );
        }
        let query = server::query_pairs(head);
        if server::query_param(&query, "api-version").as_deref() != Some(MSI_API_VERSION) {
            return server::json(
                StatusCode::BAD_REQUEST,
                &json!({"statusCode": 400, "message": "An unsupported api-version was requested."}),
            );
        }
        let Some(resource) = server::query_param(&query, "resource").filter(|r| !r.is_empty())
        else {
            return server::json(
                StatusCode::BAD_REQUEST,
                &json!({"statusCode": 400, "message": "The resource parameter is required."}),
            );
        };
        let (token, _, expires_at) =
            self.issue(Grant::ManagedIdentity, resource.trim_end_matches('/'));
        let expires_on = expires_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        server::json(
            StatusCode::OK,
            &json!({
                "access_token": token,
                "expires_on": expires_on.to_string(),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": "5e29463d-0000-4000-8000-000000000001",
            }),
        )
    }
}

impl Handler for TokenState {
    fn handle(&self, head: &Parts, body: &[u8]) -> Response<Full<Bytes>> {
        let path = head.uri.path();
        if head.method == Method::GET && path.eq_ignore_ascii_case(MSI_PATH) {
            return self.msi(head);
        }
        if head.method == Method::POST && path.ends_with("/oauth2/v2.0/token") {
            return self.entra(head, body);
        }
        server::plain(StatusCode::NOT_FOUND, "not found")
    }
}

/// An Entra error reply, shaped as azure-wire.md §4 shows.
fn aadsts(status: StatusCode, error: &str, code: u32, text: &str) -> Response<Full<Bytes>> {
    let trace_id = uuid::Uuid::new_v4();
    let correlation_id = uuid::Uuid::new_v4();
    let timestamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ");
    server::json(
        status,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}"),
            "error_codes": [code],
            "timestamp": timestamp.to_string(),
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}
