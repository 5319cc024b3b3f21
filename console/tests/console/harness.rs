//! The console over a real admin API on a SQLite store in a temp dir, driven with `oneshot`.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use http::{Method, Request, StatusCode, header};
use modelgw_admin_api::{AdminState, AzureImport, AzureImportConfig};
use modelgw_console::ConsoleSettings;
use modelgw_control_plane::{Distribution, DistributionSettings, MasterKey, Store};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

pub const ADMIN_TOKEN: &str = "mgwadm_console-test-admin-token-0123456789";
pub const HOST: &str = "127.0.0.1:4000";

pub struct Console {
    pub router: Router,
    /// The store under the API, for what no API call makes (e.g. imported Azure endpoints).
    pub store: Store,
    /// The console's Gateway URL (unset until a test sets it).
    pub gateway_url: std::sync::Arc<std::sync::OnceLock<String>>,
    _dir: tempfile::TempDir,
    _distribution: Distribution,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The session cookie this answer sets (`name=value`).
    pub fn session_cookie(&self) -> String {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.contains("modelgw_session=") && !c.contains("Max-Age=0"))
            .map(|c| c.split(';').next().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no session cookie in {:?}", self.headers))
    }

    /// The CSRF token the page embeds for its forms.
    pub fn csrf(&self) -> String {
        let re = regex::Regex::new(r#"name="csrf-token" content="([^"]+)""#).unwrap();
        re.captures(&self.body).expect("the page has a CSRF token")[1].to_owned()
    }
}

impl Console {
    pub async fn start() -> Console {
        Console::start_with(|_| {}, None, Console::no_azure()).await
    }

    /// Nothing configured and no instance metadata service: a discovery fails fast.
    pub fn no_azure() -> AzureImportConfig {
        let mut azure = AzureImportConfig::from_lookup(|_| None).unwrap();
        azure.credential_options.allow_imds = false;
        azure
    }

    /// A console whose Azure discovery uses `azure` (tests point it at the ARM and token mocks).
    pub async fn start_with_azure(azure: AzureImportConfig) -> Console {
        Console::start_with(|_| {}, None, azure).await
    }

    /// A console whose settings `tweak` changes, whose API hands JWTs to `verifier`, and whose
    /// Azure discovery uses `azure`.
    pub async fn start_with(
        tweak: impl FnOnce(&mut ConsoleSettings),
        verifier: Option<std::sync::Arc<dyn modelgw_admin_api::identity::BearerVerifier>>,
        azure: AzureImportConfig,
    ) -> Console {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("modelgw.db").display());
        let key = MasterKey::generate();
        let session_key = key.derive(modelgw_console::SESSION_KEY_PURPOSE);
        let store = Store::connect(&url, key).await.unwrap();
        let distribution =
            Distribution::start(store.clone(), DistributionSettings::default()).await.unwrap();
        let state_store = store.clone();
        let state = AdminState {
            store,
            changes: distribution.changes(),
            registry: distribution.registry(),
            admin_token_sha256: Sha256::digest(ADMIN_TOKEN.as_bytes()).into(),
            bearer_verifier: verifier,
            azure: AzureImport::new(azure),
        };
        let api = modelgw_admin_api::router(state);
        let client: SocketAddr = "192.0.2.9:50000".parse().unwrap();
        let mut settings = ConsoleSettings::new(session_key);
        tweak(&mut settings);
        let gateway_url = settings.gateway_url.clone();
        let router = modelgw_console::router(settings, api)
            .expect("console router")
            .layer(MockConnectInfo(client));
        Console { router, store: state_store, gateway_url, _dir: dir, _distribution: distribution }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        form: Option<&str>,
    ) -> Page {
        let mut req = Request::builder().method(method).uri(path).header(header::HOST, HOST);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        if form.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let req = req.body(Body::from(form.unwrap_or("").to_owned())).unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        Page { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    pub async fn sign_in(&self, token: &str) -> String {
        let page = self.send(Method::POST, "/sign-in", None, Some(&format!("token={token}"))).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        page.session_cookie()
    }

    /// An API token with `role`, made by the bootstrap admin through the JSON API.
    pub async fn api_token(&self, role: &str) -> String {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/api-tokens")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(format!(r#"{{"name":"{role}-token","role":"{role}"}}"#)))
            .unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }
}

impl Console {
    /// The distribution under the API (to serve its gRPC port in a test).
    pub fn distribution(&self) -> &Distribution {
        &self._distribution
    }

    /// `method path` on the JSON API as the bootstrap admin; the status and the JSON answer.
    #[allow(dead_code, reason = "used by the section tests")]
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let res = self.router.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }
}
