//! Single sign-on to the console with OpenID Connect (e.g. Microsoft Entra ID): the
//! authorization code flow with PKCE (S256), `state` and `nonce`.
//!
//! `GET /sign-in/oidc` sends the browser to the identity provider with a sealed, short-lived
//! transaction cookie (state, nonce, PKCE verifier). `GET /sign-in/oidc/callback` checks the
//! state, redeems the code at the token endpoint (server to server), and takes the ID token:
//! the admin API verifies it like any bearer token (signature from the issuer's keys, issuer,
//! audience = this client, lifetime, role claim) through `GET /api/v1/me`, and the console then
//! checks the nonce. The ID token becomes the session's credential, so the session ends when
//! the token expires (typically an hour; signing in again is one click while the provider's
//! own session lasts). No token is ever logged.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use maud::html;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::OnceCell;

use crate::Console;
use crate::error::ConsoleError;
use crate::layout;
use crate::session::{Session, cookie_value, is_loopback_host, random_token};

/// The callback path, under the console's base URL.
pub(crate) const CALLBACK_PATH: &str = "/sign-in/oidc/callback";
/// The sign-in transaction's cookie: `SameSite=Lax`, because the provider's redirect back is a
/// cross-site navigation that a `Strict` cookie would not accompany.
const TX_COOKIE: &str = "modelgw_oidc";
const TX_AAD: &[u8] = b"modelgw-console-oidc-tx-v1";
/// How long the operator may take at the provider.
const TX_MAX_AGE_SECS: i64 = 600;
/// Bounds every call to the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Single sign-on settings (`MODELGW_OIDC_CLIENT_ID` and friends).
#[derive(Clone)]
pub struct OidcSignIn {
    /// The issuer, exactly as the admin API verifies it (`MODELGW_OIDC_ISSUER`).
    pub issuer: String,
    /// The console's application (client) id; it must be one of the API's accepted
    /// audiences, since the ID token's audience is the client.
    pub client_id: String,
    /// For a confidential client (Entra ID web apps); `None` for a public client with PKCE.
    pub client_secret: Option<String>,
    /// Space-separated scopes; must include `openid`.
    pub scopes: String,
    /// The console's public base URL (`MODELGW_CONSOLE_URL`), for the redirect URI registered
    /// at the provider. `None`: taken from the request's host (http on loopback, else https).
    pub public_url: Option<String>,
    /// What the sign-in button says, e.g. "Microsoft Entra ID".
    pub provider_name: String,
}

impl std::fmt::Debug for OidcSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSignIn")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "<redacted>"))
            .field("scopes", &self.scopes)
            .field("public_url", &self.public_url)
            .finish()
    }
}

/// The provider's endpoints, from its discovery document (fetched once, on first use).
#[derive(Clone, Debug, Deserialize)]
struct ProviderEndpoints {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
}

/// The OpenID Connect client of the console.
pub(crate) struct OidcClient {
    settings: OidcSignIn,
    http: reqwest::Client,
    endpoints: OnceCell<ProviderEndpoints>,
}

/// What the transaction cookie holds.
#[derive(Serialize, Deserialize)]
struct Transaction {
    state: String,
    nonce: String,
    verifier: String,
    at: i64,
}

impl OidcClient {
    pub fn new(settings: OidcSignIn) -> Result<OidcClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(PROVIDER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(OidcClient { settings, http, endpoints: OnceCell::new() })
    }

    pub fn provider_name(&self) -> &str {
        &self.settings.provider_name
    }

    async fn endpoints(&self) -> Result<&ProviderEndpoints, String> {
        self.endpoints
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.settings.issuer.trim_end_matches('/')
                );
                let doc: ProviderEndpoints = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| format!("fetching the discovery document: {e}"))?
                    .json()
                    .await
                    .map_err(|e| format!("reading the discovery document: {e}"))?;
                if doc.issuer != self.settings.issuer {
                    return Err(format!(
                        "the discovery document names issuer {:?}, not the configured one",
                        doc.issuer
                    ));
                }
                Ok(doc)
            })
            .await
    }

    fn redirect_uri(&self, headers: &HeaderMap) -> String {
        let base = match &self.settings.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
                let scheme = if is_loopback_host(headers) { "http" } else { "https" };
                format!("{scheme}://{host}")
            }
        };
        format!("{base}{CALLBACK_PATH}")
    }
}

/// `GET /sign-in/oidc`: to the provider.
pub(crate) async fn start(State(console): State<Console>, headers: HeaderMap) -> Response {
    let Some(oidc) = console.oidc() else {
        return Redirect::to("/sign-in").into_response();
    };
    let endpoints = match oidc.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "console single sign-on unavailable");
            return unavailable();
        }
    };
    let tx = Transaction {
        state: random_token(),
        nonce: random_token(),
        verifier: random_token(),
        at: Utc::now().timestamp(),
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(tx.verifier.as_bytes()));
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", oidc.settings.client_id.as_str()),
        ("redirect_uri", oidc.redirect_uri(&headers).as_str()),
        ("scope", oidc.settings.scopes.as_str()),
        ("state", tx.state.as_str()),
        ("nonce", tx.nonce.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("response_mode", "query"),
    ])
    .unwrap_or_default();
    let separator = if endpoints.authorization_endpoint.contains('?') { '&' } else { '?' };
    let location = format!("{}{separator}{query}", endpoints.authorization_endpoint);
    let sealed = console.sessions().seal_value(TX_AAD, &tx);
    let secure = console.sessions().secure_attribute(&headers);
    let cookie = format!(
        "{TX_COOKIE}={sealed}; Path=/sign-in/oidc; HttpOnly; SameSite=Lax; Max-Age={TX_MAX_AGE_SECS}{secure}"
    );
    tracing::info!("console single sign-on started");
    let mut response = Redirect::to(&location).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    /// The provider refused (e.g. `access_denied`); its description is not shown (it is the
    /// provider's text, echoed through the URL).
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

/// `GET /sign-in/oidc/callback`: back from the provider.
pub(crate) async fn callback(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, ConsoleError> {
    let Some(oidc) = console.oidc() else {
        return Ok(Redirect::to("/sign-in").into_response());
    };
    let clear_tx = format!(
        "{TX_COOKIE}=; Path=/sign-in/oidc; HttpOnly; SameSite=Lax; Max-Age=0{}",
        console.sessions().secure_attribute(&headers)
    );
    let refuse = |why: &'static str, message: &'static str| {
        tracing::warn!(reason = why, "console single sign-on refused");
        failed(message, &clear_tx)
    };
    if let Some(error) = &q.error {
        // The provider's error code is from a fixed vocabulary, but it came through the URL:
        // log only whether it is one we know.
        let known = matches!(
            error.as_str(),
            "access_denied" | "login_required" | "consent_required" | "interaction_required"
        );
        tracing::info!(known_error = known, "console single sign-on: the provider refused");
        return Ok(refuse("the provider refused", "The identity provider did not sign you in."));
    }
    let tx: Option<Transaction> =
        cookie_value(&headers, TX_COOKIE).and_then(|v| console.sessions().open_value(TX_AAD, v));
    let Some(tx) = tx else {
        return Ok(refuse(
            "no sign-in transaction",
            "This sign-in was not started from this browser, or took too long. Try again.",
        ));
    };
    if Utc::now().timestamp() - tx.at > TX_MAX_AGE_SECS {
        return Ok(refuse("transaction expired", "The sign-in took too long. Try again."));
    }
    let state_ok =
        q.state.as_deref().is_some_and(|s| bool::from(s.as_bytes().ct_eq(tx.state.as_bytes())));
    let (true, Some(code)) = (state_ok, q.code.as_deref()) else {
        return Ok(refuse(
            "state mismatch or no code",
            "The sign-in could not be verified. Try again.",
        ));
    };
    let endpoints = match oidc.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "console single sign-on unavailable");
            return Ok(unavailable());
        }
    };
    let redirect_uri = oidc.redirect_uri(&headers);
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", oidc.settings.client_id.as_str()),
        ("code_verifier", tx.verifier.as_str()),
    ];
    if let Some(secret) = &oidc.settings.client_secret {
        form.push(("client_secret", secret.as_str()));
    }
    let body = serde_urlencoded::to_string(&form).unwrap_or_default();
    let answer = oidc
        .http
        .post(&endpoints.token_endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await;
    let tokens: Option<TokenResponse> = match answer {
        Ok(r) if r.status().is_success() => r.json().await.ok(),
        Ok(r) => {
            tracing::warn!(
                status = r.status().as_u16(),
                "console single sign-on: the token endpoint refused the code"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "console single sign-on: the token endpoint could not be reached");
            None
        }
    };
    let Some(id_token) = tokens.and_then(|t| t.id_token) else {
        return Ok(refuse(
            "no ID token",
            "The identity provider did not return an ID token. Try again.",
        ));
    };
    // The API verifies the token (signature, issuer, audience, lifetime, role).
    let api = console.api().as_caller(&id_token, None);
    let me = match api.me().await {
        Ok(me) => me,
        Err(ConsoleError::SignedOut { .. }) => {
            return Ok(refuse(
                "the API did not accept the ID token",
                "You signed in, but your account has no role in Model Gateway (or the token was \
                 not accepted). Ask an administrator to assign you the viewer, operator or admin role.",
            ));
        }
        Err(e) => return Err(e),
    };
    if claim_nonce(&id_token).is_none_or(|n| !bool::from(n.as_bytes().ct_eq(tx.nonce.as_bytes()))) {
        return Ok(refuse("nonce mismatch", "The sign-in could not be verified. Try again."));
    }
    tracing::info!(actor = %me.actor, role = %me.role, "console sign-in (single sign-on)");
    let session = console.sessions().set_cookie(&headers, &Session::new(id_token));
    // A page that moves on to `/` itself: the provider's redirect here was a cross-site
    // navigation, and a `SameSite=Strict` cookie is only sent once the browser navigates from
    // one of our own pages.
    let page = layout::bare(
        "Signed in",
        html! {
            meta http-equiv="refresh" content="0; url=/";
            main.narrow #main {
                h1 { "Signed in" }
                p { a href="/" { "Continue to the console" } }
            }
        },
    );
    let mut response = page.into_response();
    for cookie in [session, clear_tx] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(response)
}

/// The `nonce` claim of a JWT's payload (the signature was verified by the API already).
fn claim_nonce(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("nonce")?.as_str().map(str::to_owned)
}

fn failed(message: &'static str, clear_tx: &str) -> Response {
    let page = layout::bare(
        "Sign-in failed",
        html! {
            main.narrow #main {
                h1 { "Sign-in failed" }
                p.error-text role="alert" { (message) }
                p { a href="/sign-in" { "Back to sign-in" } }
            }
        },
    );
    let mut response = (StatusCode::UNAUTHORIZED, page).into_response();
    if let Ok(v) = HeaderValue::from_str(clear_tx) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

fn unavailable() -> Response {
    let page = layout::bare(
        "Sign-in unavailable",
        html! {
            main.narrow #main {
                h1 { "Single sign-on is unavailable" }
                p.error-text role="alert" { "The identity provider cannot be reached. Try again shortly, or sign in with a token." }
                p { a href="/sign-in" { "Back to sign-in" } }
            }
        },
    );
    (StatusCode::SERVICE_UNAVAILABLE, page).into_response()
}
