//! `modelgw demo`: a complete local gateway in one command.
//!
//! Starts a mock Azure estate — three Azure OpenAI regions, Azure Resource Manager listing them
//! as accounts of one subscription, and an Entra ID token endpoint — a control plane on a fresh
//! SQLite file, and one data plane subscribed to it over gRPC: the same components and wire
//! protocols as production, in one process. The gRPC port is TLS with the control plane's
//! development certificate (made next to the SQLite file), and the data plane joins with a
//! data-plane token the demo creates through the admin API, as an operator would. Then it configures them through the admin API the
//! way an operator would: an Azure discovery, the import of what it found, the gateway it
//! proposes, and a gateway key. It waits until a chat completion succeeds through the gateway and
//! prints what a newcomer needs to try it.

use crate::stdout::out;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use azure_core::http::{ClientOptions, RetryOptions};
use modelgw_admin_api::AzureImportConfig;
use modelgw_control_plane::azure::{
    ArmClientOptions, CredentialChoice, CredentialOptions, CredentialSettings, DiscoveryOptions,
};
use modelgw_data_plane::DataPlane;
use modelgw_mock_arm::{
    Account, ArmAuth, ArmMock, Deployment, Inventory, RedirectTransport, Subscription, TokenMock,
};
use modelgw_mock_openai::{MockAzure, MockConfig};
use modelgw_model::Secret;
use serde_json::{Value, json};

use crate::control_plane::{self, ControlPlane};

/// The regions the demo simulates: display name, Azure location, deployment capacity (K TPM).
const REGIONS: [(&str, &str, u32); 3] = [
    ("East US", "eastus", 100),
    ("West Europe", "westeurope", 50),
    ("Japan East", "japaneast", 50),
];
const DEMO_SUBSCRIPTION: &str = "6d1f3c2a-0000-4000-8000-00000000de70";
const DEMO_TENANT: &str = "7a4e9b10-0000-4000-8000-00000000de70";
const DEMO_CLIENT_ID: &str = "modelgw-demo";
const DEMO_RESOURCE_GROUP: &str = "rg-modelgw-demo";
const DEMO_DEPLOYMENT: &str = "gpt-4o-mini";
const DEMO_MODEL: &str = "gpt-4o-mini";
const DEMO_MODEL_VERSION: &str = "2024-07-18";
/// How long the demo waits for the first chat completion to succeed end to end.
const READY_DEADLINE: Duration = Duration::from_secs(20);
const API_VERSION: &str = "2024-10-21";
/// The demo data plane's join token; its node id is `demo-data-plane`.
const DEMO_TOKEN_NAME: &str = "demo";

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[arg(long, env = "MODELGW_ADMIN_ADDR", default_value = "127.0.0.1:4000")]
    pub admin_addr: SocketAddr,
    #[arg(long, env = "MODELGW_GATEWAY_ADDR", default_value = "127.0.0.1:4001")]
    pub gateway_addr: SocketAddr,
    #[arg(long, env = "MODELGW_GRPC_ADDR", default_value = "127.0.0.1:4002")]
    pub grpc_addr: SocketAddr,
    /// The control plane's Prometheus metrics (`GET /metrics`), or `off`.
    #[arg(long, env = "MODELGW_CONTROL_PLANE_METRICS_ADDR", default_value = control_plane::DEFAULT_METRICS_ADDR, value_parser = crate::metrics_server::parse_listen_addr)]
    pub control_plane_metrics_addr: crate::metrics_server::ListenAddr,
    /// Directory for the demo's SQLite file and development master key (default: a new
    /// temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub async fn run(
    args: Args,
    tracer: Option<modelgw_data_plane::RequestTracer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tmp;
    let dir = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("modelgw-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };

    // 1. A mock Azure estate: three regions, ARM listing them, and Entra ID issuing tokens.
    let mut subscription = Subscription::new(DEMO_SUBSCRIPTION, "Model Gateway demo");
    let mut mocks = Vec::new();
    for (display, location, capacity) in REGIONS {
        let account =
            Account::new(DEMO_RESOURCE_GROUP, format!("aoai-{location}"), "AIServices", location);
        let mock = MockAzure::start(
            "127.0.0.1:0".parse()?,
            MockConfig {
                region: display.to_owned(),
                api_key: account.key1.clone(),
                deployments: vec![DEMO_DEPLOYMENT.to_owned()],
                model: format!("{DEMO_MODEL}-{DEMO_MODEL_VERSION}"),
            },
        )
        .await?;
        subscription = subscription.account(
            account.with_endpoint(mock.base_url()).deployment(
                Deployment::new(DEMO_DEPLOYMENT, DEMO_MODEL, DEMO_MODEL_VERSION)
                    .sku("GlobalStandard", capacity),
            ),
        );
        mocks.push(mock);
    }
    let client_secret = random_token("demo-secret-");
    let tokens = TokenMock::builder(DEMO_TENANT)
        .client_secret(DEMO_CLIENT_ID, &client_secret)
        .start()
        .await?;
    let arm = ArmMock::builder(
        Inventory::new().subscription(subscription),
        ArmAuth::TokensFrom(tokens.clone()),
    )
    .start()
    .await?;
    let azure = AzureImportConfig {
        credential: CredentialSettings {
            choice: CredentialChoice::ClientSecret,
            tenant_id: Some(DEMO_TENANT.to_owned()),
            client_id: Some(DEMO_CLIENT_ID.to_owned()),
            client_secret: Some(Secret::new(client_secret)),
            ..Default::default()
        },
        credential_options: CredentialOptions {
            // Entra ID insists on https; the demo's token endpoint is a local mock.
            client_options: ClientOptions {
                transport: Some(RedirectTransport::transport(&tokens.base_url())?),
                retry: RetryOptions::none(),
                ..Default::default()
            },
            allow_imds: false,
            ..Default::default()
        },
        arm_endpoint: arm.base_url().parse()?,
        arm_options: ArmClientOptions::default(),
        discovery: DiscoveryOptions::default(),
    };

    // 2. The control plane on a SQLite file.
    let admin_token = random_token("mgwadm_");
    let cp_args = control_plane::Args {
        database_url: format!("sqlite://{}", dir.join("modelgw.db").display()),
        admin_addr: args.admin_addr,
        grpc_addr: args.grpc_addr,
        metrics_addr: args.control_plane_metrics_addr,
        admin_token: Some(admin_token.clone()),
        admin_token_file: None,
        master_key: None,
        master_key_file: None,
        config_poll_interval: Duration::from_secs(1),
        max_health_window: modelgw_control_plane::DEFAULT_MAX_HEALTH_WINDOW,
        grpc: control_plane::GrpcArgs::default(),
        console: control_plane::ConsoleArgs::default(),
    };
    let cp = ControlPlane::start(&cp_args, azure, None).await?;
    let console_gateway_url = cp.console_gateway_url();
    let admin_url = format!("http://{}", cp.admin_addr);
    let grpc_url = cp.grpc_url();
    let control_plane_metrics = crate::metrics_server::url(cp.metrics_addr);
    let grpc_ca = cp.grpc_dev_ca.clone().context("the control plane's development CA")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let cp_task = tokio::spawn(cp.serve(stopped(stop_rx.clone())));

    // 3. One data plane subscribed over gRPC (TLS), with a join token made for it.
    let http = reqwest::Client::new();
    let admin = Admin { http: &http, base: &admin_url, token: &admin_token };
    let join = admin
        .post("/api/v1/data-plane-tokens", json!({"name": DEMO_TOKEN_NAME}))
        .await
        .context("creating the data-plane token")?;
    let join_token = join["token"].as_str().context("data-plane token")?;
    let dp_args = crate::data_plane::Args {
        gateway_addr: args.gateway_addr,
        control_plane_url: grpc_url,
        control_plane_ca_file: Some(grpc_ca),
        control_plane_server_name: None,
        cert_file: None,
        key_file: None,
        token_file: None,
        token: Some(Secret::new(join_token)),
        insecure_control_plane: false,
        node_id: Some(format!("{DEMO_TOKEN_NAME}-data-plane")),
        max_body_bytes: None,
        upstream_timeout: None,
        request_timeout: None,
        stream_idle_timeout: None,
        workers: None,
        stats_interval: None,
        usage_interval: None,
        // Prometheus metrics on a free port (printed below).
        metrics_addr: crate::metrics_server::ListenAddr(Some(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            0,
        )))),
        // The demo's regions are mocks on 127.0.0.1.
        // Nothing balances in front of the demo's one data plane: Ctrl-C stops it at once
        // (in-flight requests still finish).
        drain_period: Some(Duration::ZERO),
        shutdown_grace: None,
        edge: crate::data_plane::EdgeArgs { allow_loopback_upstreams: true, ..Default::default() },
        snapshot: crate::data_plane::SnapshotArgs::default(),
    };
    let dp_config = modelgw_data_plane::DataPlaneConfig { tracer, ..dp_args.config() };
    let dp = DataPlane::bind(dp_config).await.context("binding the gateway")?;
    let gateway_url = format!("http://{}", dp.local_addr());
    let dp_metrics = dp.metrics_addr().map(|addr| format!("http://{addr}/metrics"));
    let _ = console_gateway_url.set(gateway_url.clone());
    let dp_task = tokio::spawn(dp.run(stopped(stop_rx)));

    // 4. Configure through the admin API, as an operator would: discover, import, propose.
    let discovery = admin.post("/api/v1/azure/discoveries", json!({})).await?;
    let discovery_id = discovery["id"].as_str().context("discovery id")?.to_owned();
    let started = Instant::now();
    let found = loop {
        let job = admin.get(&format!("/api/v1/azure/discoveries/{discovery_id}")).await?;
        match job["status"].as_str() {
            Some("running") if started.elapsed() < READY_DEADLINE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some("succeeded") => break job,
            _ => bail!("the demo's Azure discovery did not succeed: {job}"),
        }
    };
    let deployment_ids: Vec<Value> = found["deployments"]
        .as_array()
        .context("discovered deployments")?
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    out!(
        "Azure discovery {discovery_id}: {} deployments of {DEMO_MODEL} {DEMO_MODEL_VERSION} in subscription {DEMO_SUBSCRIPTION}",
        deployment_ids.len()
    );
    let imported =
        admin.post("/api/v1/azure/imports", json!({"deployment_ids": deployment_ids})).await?;
    out!(
        "Imported as Inference Endpoints: {} created",
        imported["created"].as_array().map_or(0, Vec::len)
    );
    let proposals = admin.post("/api/v1/azure/gateway-proposals", json!({})).await?;
    let mut proposal = proposals["proposals"]
        .as_array()
        .and_then(|p| p.first())
        .cloned()
        .context("a gateway proposal")?;
    // Apps address the gateway by name; call it after the deployment they already use.
    proposal["name"] = json!(DEMO_DEPLOYMENT);
    let gw = admin.post("/api/v1/gateways", proposal).await.context("creating the gateway")?;
    out!("Gateway \"{DEMO_DEPLOYMENT}\" created from the proposal (weights from capacity)");
    let gw_id = gw["id"].as_str().context("gateway id")?;
    let key = admin
        .post(&format!("/api/v1/gateways/{gw_id}/keys"), json!({"name": "demo"}))
        .await
        .context("creating the gateway key")?;
    let gateway_key = key["key"].as_str().context("gateway key")?.to_owned();

    // 5. Wait until a chat completion succeeds end to end.
    let chat_url = format!(
        "{gateway_url}/openai/deployments/{DEMO_DEPLOYMENT}/chat/completions?api-version={API_VERSION}"
    );
    let started = Instant::now();
    loop {
        let res = http
            .post(&chat_url)
            .header("api-key", &gateway_key)
            .json(&json!({"messages": [{"role": "user", "content": "ping"}]}))
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => break,
            Ok(r) if started.elapsed() > READY_DEADLINE => {
                bail!("the gateway did not become ready: last status {}", r.status())
            }
            Err(e) if started.elapsed() > READY_DEADLINE => {
                bail!("the gateway did not become ready: {e}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    out!(
        r#"
Model Gateway demo is ready.

  Admin Console  {admin_url}/   (sign in with the admin token)
  Admin API      {admin_url}/api/v1   (OpenAPI: {admin_url}/api/v1/openapi.json)
  Admin token    {admin_token}
  Gateway URL    {gateway_url}
  Gateway key    {gateway_key}
  Gateway        "{DEMO_DEPLOYMENT}" over 3 mock regions: {regions}
  Metrics        {metrics}   (Prometheus, the data plane's)
  CP metrics     {control_plane_metrics}   (Prometheus, the control plane's; Grafana dashboard: deploy/grafana/)
  Data           {dir}

Try it:

  curl -sS '{chat_url}' \
    -H 'api-key: {gateway_key}' -H 'content-type: application/json' \
    -d '{{"messages":[{{"role":"user","content":"Hello!"}}]}}'

Or with the official SDK:  AzureOpenAI(azure_endpoint="{gateway_url}", api_key="{gateway_key}", api_version="{API_VERSION}")
Status of the data planes:  curl -sS {admin_url}/api/v1/status -H 'authorization: Bearer {admin_token}'

Press Ctrl-C to stop."#,
        regions = REGIONS.iter().map(|(d, _, _)| *d).collect::<Vec<_>>().join(", "),
        metrics = dp_metrics.as_deref().unwrap_or("off"),
        dir = dir.display(),
    );
    crate::stdout::print_ready(
        "demo",
        &[
            ("gateway", gateway_url.clone()),
            ("admin", admin_url.clone()),
            ("console", format!("{admin_url}/")),
            ("gateway_key", gateway_key.clone()),
            ("admin_token", admin_token.clone()),
            ("control_plane_metrics", control_plane_metrics.clone()),
        ],
    );

    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = cp_task.await;
    let _ = dp_task.await;
    for mock in &mocks {
        mock.shutdown();
    }
    arm.stop();
    tokens.stop();
    Ok(())
}

struct Admin<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    token: &'a str,
}

impl Admin<'_> {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let req = self.http.post(format!("{}{path}", self.base)).json(&body);
        self.send("POST", path, req).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send("GET", path, self.http.get(format!("{}{path}", self.base))).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<Value> {
        let res = req.bearer_auth(self.token).send().await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path} → {status}: {body}");
        }
        Ok(body)
    }
}

/// A random URL-safe token with a recognisable prefix.
fn random_token(prefix: &str) -> String {
    use std::fmt::Write;
    let mut s = prefix.to_owned();
    for b in uuid::Uuid::new_v4().as_bytes().iter().chain(uuid::Uuid::new_v4().as_bytes()) {
        let _ = write!(s, "{b:02x}");
    }
    s
}
