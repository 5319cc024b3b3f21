//! The Model Gateway Admin Console: the operator's browser UI, served by the control plane on
//! the admin API's port under `/` (the JSON API stays under `/api/v1`).
//!
//! Owns: server-rendered HTML pages (maud), the sign-in session (an encrypted cookie), CSRF
//! protection, the live health stream (server-sent events that htmx swaps into the page), and
//! the static assets it embeds (htmx and its SSE extension, pinned and vendored under
//! `assets/vendor`, plus the console's own CSS and JavaScript). Nothing is fetched from the
//! internet by the browser; no Node is needed to build or run it.
//!
//! Never: holds a business rule. Every read and every change goes through the admin API's own
//! router, in process ([`api::Api`]), with the signed-in operator's credential: validation,
//! roles, secret handling, the version bump and the audit record are the API's, exactly as for
//! `curl`. A rejected form shows the API's problem+json field errors next to the fields that
//! caused them. The console never sends a secret to the browser after the one response that
//! shows a new key or token once.
//!
//! Sessions: signing in takes an admin credential (an API token, the bootstrap token, or an
//! OpenID Connect access token when the API accepts them), checks it with `GET /api/v1/me`, and
//! keeps it only inside an XChaCha20-Poly1305-sealed cookie (`HttpOnly`, `SameSite=Strict`,
//! `Secure` unless the console is reached on a loopback address, path `/`). The key is derived
//! from the control plane's master key, so every replica opens every session. Each request
//! re-authenticates the credential through the API, so a revoked token ends its sessions at
//! once; sessions also end after `idle_timeout` without a request and `max_age` after sign-in.

mod api;
mod assets;
mod charts;
mod error;
mod layout;
mod live;
mod oidc;
mod operator;
mod pages;
mod session;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};

pub use oidc::OidcSignIn;
pub use session::SESSION_KEY_PURPOSE;

/// How the console is configured (the control plane reads it from its environment).
#[derive(Clone, Debug)]
pub struct ConsoleSettings {
    /// A 256-bit key that seals session cookies. Derive it from the master key
    /// (`MasterKey::derive(SESSION_KEY_PURPOSE)`) so all replicas share it.
    pub session_key: [u8; 32],
    /// A session ends after this long without a request.
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, however active.
    pub max_age: Duration,
    /// The public Gateway URL clients call (the data planes, e.g. behind Azure Front Door):
    /// shown in snippets and used by the playground. Unset: snippets show a placeholder. Set
    /// once, possibly after the console started (the demo learns it when its data plane binds).
    pub gateway_url: Arc<OnceLock<String>>,
    /// Send session cookies without `Secure` to non-loopback hosts too (plain HTTP behind no
    /// TLS terminator). Off by default; the control plane warns when it is on.
    pub insecure_cookies: bool,
    /// PEM bundle of the CA that issued the Gateway URL's certificate, trusted by the
    /// playground beside the platform's roots (`MODELGW_GATEWAY_CA_FILE`: data planes behind
    /// a private CA).
    pub gateway_ca_pem: Option<Vec<u8>>,
    /// Single sign-on with OpenID Connect (e.g. Entra ID), beside token sign-in.
    pub oidc: Option<OidcSignIn>,
}

impl ConsoleSettings {
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(12 * 60 * 60);

    pub fn new(session_key: [u8; 32]) -> Self {
        Self {
            session_key,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_age: Self::DEFAULT_MAX_AGE,
            gateway_url: Arc::new(OnceLock::new()),
            insecure_cookies: false,
            gateway_ca_pem: None,
            oidc: None,
        }
    }
}

/// What every console handler works with. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    api: api::Api,
    sessions: session::Sessions,
    oidc: Option<oidc::OidcClient>,
    settings: ConsoleSettings,
    playground: pages::playground::Playground,
}

/// The console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("building the HTTP client for single sign-on: {0}")]
    HttpClient(#[from] reqwest::Error),
}

impl Console {
    pub(crate) fn api(&self) -> &api::Api {
        &self.inner.api
    }

    pub(crate) fn sessions(&self) -> &session::Sessions {
        &self.inner.sessions
    }

    pub(crate) fn settings(&self) -> &ConsoleSettings {
        &self.inner.settings
    }

    pub(crate) fn playground(&self) -> &pages::playground::Playground {
        &self.inner.playground
    }

    pub(crate) fn oidc(&self) -> Option<&oidc::OidcClient> {
        self.inner.oidc.as_ref()
    }
}

/// The console's routes, with `api` (the admin API's router) behind them: a request the console
/// does not serve (everything under `/api/v1`, and unknown paths) goes to `api`, which the
/// console also calls in process for every read and change.
pub fn router(settings: ConsoleSettings, api: Router) -> Result<Router, StartError> {
    let oidc = settings.oidc.clone().map(oidc::OidcClient::new).transpose()?;
    let console = Console {
        inner: Arc::new(Inner {
            api: api::Api::new(api.clone()),
            sessions: session::Sessions::new(&settings),
            oidc,
            settings,
            playground: pages::playground::Playground::default(),
        }),
    };
    // Behind the session guard: a session, and for unsafe methods the CSRF token.
    let signed_in = Router::new()
        .route("/", get(pages::overview::page))
        .route("/sign-out", post(pages::sign_in::sign_out))
        .route("/endpoints", get(pages::endpoints::list))
        .route("/events/health", get(live::health))
        // One module per section, each owning its routes.
        .merge(pages::endpoint_forms::routes())
        .merge(pages::import::routes())
        .merge(pages::gateways::routes())
        .merge(pages::data_planes::routes())
        .merge(pages::audit::routes())
        .merge(pages::traces::routes())
        .merge(pages::playground::routes())
        .route_layer(from_fn_with_state(console.clone(), operator::guard));
    let open = Router::new()
        .route("/sign-in", get(pages::sign_in::page).post(pages::sign_in::submit))
        .route("/sign-in/oidc", get(oidc::start))
        .route(oidc::CALLBACK_PATH, get(oidc::callback))
        .route("/assets/{name}", get(assets::serve));
    Ok(signed_in
        .merge(open)
        .layer(from_fn(layout::security_headers))
        .layer(from_fn(modelgw_admin_api::trace_request))
        .with_state(console)
        .fallback_service(api))
}
