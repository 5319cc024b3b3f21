//! A control plane's admin API on a real SQLite store in a temp dir, driven with `oneshot`.

use std::time::{Duration, Instant};

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use modelgw_admin_api::identity::BearerVerifier;
use modelgw_admin_api::{AdminState, AzureImport, AzureImportConfig, router};
use modelgw_control_plane::{Distribution, DistributionSettings, MasterKey, Store};
use modelgw_model::ConfigVersion;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

/// The bootstrap admin token every harness accepts.
pub const ADMIN_TOKEN: &str = "mgwadm_test-admin-token-0123456789";

/// The address every request of the harness comes from (as `ConnectInfo`).
pub const CLIENT_ADDR: &str = "192.0.2.7:50123";

/// How long a test waits for something asynchronous (a publish, a health report) before it
/// fails. Generous: CI machines are slow; success normally takes milliseconds.
pub const WAIT: Duration = Duration::from_secs(10);

/// Distribution polls the store this rarely in tests, so a prompt publish proves the admin API
/// called `ConfigChanges::committed` rather than the poll having noticed.
const POLL_INTERVAL: Duration = Duration::from_secs(3600);

pub struct Harness {
    pub router: Router,
    pub store: Store,
    pub distribution: Distribution,
    /// The store's database, for tests that tamper with it behind the store's back.
    pub database_url: String,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text))
    }

    pub fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Asserts the status and returns self, printing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: StatusCode) -> Self {
        assert_eq!(self.status, status, "body: {}", self.text);
        self
    }

    /// The `field`s of `errors[]` of a problem body.
    pub fn error_fields(&self) -> Vec<String> {
        self.json()["errors"]
            .as_array()
            .map(|errors| {
                errors.iter().map(|e| e["field"].as_str().unwrap_or("").to_owned()).collect()
            })
            .unwrap_or_default()
    }
}

impl Harness {
    pub async fn start() -> Harness {
        // Nothing configured and no instance metadata service: a discovery fails fast.
        let mut azure = AzureImportConfig::from_lookup(|_| None).expect("empty Azure config");
        azure.credential_options.allow_imds = false;
        Harness::start_with_azure(azure).await
    }

    /// A harness whose Azure discovery uses `azure` (tests point it at the mocks).
    pub async fn start_with_azure(azure: AzureImportConfig) -> Harness {
        Harness::start_with(azure, None).await
    }

    /// A harness that hands JWTs to `verifier`.
    pub async fn start_with_verifier(verifier: Arc<dyn BearerVerifier>) -> Harness {
        let mut azure = AzureImportConfig::from_lookup(|_| None).expect("empty Azure config");
        azure.credential_options.allow_imds = false;
        Harness::start_with(azure, Some(verifier)).await
    }

    async fn start_with(
        azure: AzureImportConfig,
        bearer_verifier: Option<Arc<dyn BearerVerifier>>,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("modelgw.db").display());
        let store = Store::connect(&url, MasterKey::generate()).await.expect("store opens");
        let distribution = Distribution::start(
            store.clone(),
            DistributionSettings { poll_interval: POLL_INTERVAL, ..Default::default() },
        )
        .await
        .expect("distribution starts");
        let state = AdminState {
            store: store.clone(),
            changes: distribution.changes(),
            registry: distribution.registry(),
            admin_token_sha256: Sha256::digest(ADMIN_TOKEN.as_bytes()).into(),
            bearer_verifier,
            azure: AzureImport::new(azure),
        };
        let client: SocketAddr = CLIENT_ADDR.parse().expect("address");
        let router = router(state).layer(MockConnectInfo(client));
        Harness { router, store, distribution, database_url: url, _dir: dir }
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("UTF-8 body");
        Reply { status, headers, text }
    }

    /// A request with the bootstrap admin token; `body` is sent as `application/json`.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call_as(ADMIN_TOKEN, method, path, body).await
    }

    /// A request with `token`; `body` is sent as `application/json`.
    pub async fn call_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(builder.body(body).expect("request")).await
    }

    /// An authenticated request with a raw body and content type.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Reply {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"));
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        self.send(builder.body(body.into()).expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// Creates an API token with `role` (as the bootstrap admin); returns its id and token.
    pub async fn api_token(&self, name: &str, role: &str) -> (String, String) {
        let created = self
            .call(Method::POST, "/api/v1/api-tokens", Some(json!({"name": name, "role": role})))
            .await
            .expect(StatusCode::CREATED)
            .json();
        (id_of(&created), created["token"].as_str().expect("token").to_owned())
    }

    /// The whole audit log, oldest first.
    pub async fn audit_log(&self) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut path = "/api/v1/audit-log?limit=500".to_owned();
        loop {
            let page = self.get(&path).await.expect(StatusCode::OK).json();
            entries.extend(page["entries"].as_array().expect("entries").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/api/v1/audit-log?limit=500&cursor={cursor}"),
                None => break,
            }
        }
        entries.reverse();
        entries
    }

    pub async fn version(&self) -> ConfigVersion {
        self.store.config_version().await.expect("config version")
    }

    /// Everything a list route shows, for before/after comparisons.
    pub async fn lists(&self) -> Value {
        let endpoints = self.get("/api/v1/inference-endpoints").await.expect(StatusCode::OK).json();
        let gateways = self.get("/api/v1/gateways").await.expect(StatusCode::OK).json();
        let mut keys = serde_json::Map::new();
        for g in gateways.as_array().expect("array") {
            let id = g["id"].as_str().expect("id");
            let k = self.get(&format!("/api/v1/gateways/{id}/keys")).await.expect(StatusCode::OK);
            keys.insert(id.to_owned(), k.json());
        }
        json!({"endpoints": endpoints, "gateways": gateways, "keys": keys})
    }

    pub async fn create_endpoint(&self, body: Value) -> Value {
        self.call(Method::POST, "/api/v1/inference-endpoints", Some(body))
            .await
            .expect(StatusCode::CREATED)
            .json()
    }

    pub async fn create_gateway(&self, body: Value) -> Value {
        self.call(Method::POST, "/api/v1/gateways", Some(body))
            .await
            .expect(StatusCode::CREATED)
            .json()
    }

    /// Waits until distribution publishes at least `version`.
    pub async fn wait_for_published(&self, version: ConfigVersion) {
        let deadline = Instant::now() + WAIT;
        while self.distribution.current_version() < version {
            assert!(
                Instant::now() < deadline,
                "distribution still at {} after {WAIT:?}, expected {version}",
                self.distribution.current_version()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A valid endpoint body; `name` and `api_key` vary per test.
pub fn endpoint_body(name: &str, api_key: &str) -> Value {
    json!({
        "name": name,
        "platform": "azure_openai",
        "endpoint": "https://contoso-eastus.openai.azure.com/",
        "deployment": "gpt-4o",
        "model_name": "gpt-4o",
        "model_version": "2024-11-20",
        "region": "eastus",
        "api_key": api_key,
    })
}

pub fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_owned()
}
