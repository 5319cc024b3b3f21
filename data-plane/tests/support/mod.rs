//! The shared harness for the in-process proxy tests: mock Azure OpenAI regions on loopback
//! ([`Region`], the same harness type the process-level scenarios use), snapshots built from
//! them, and a running data plane with no control plane.

// Each test binary uses its own subset of the harness.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use modelgw_data_plane::health::HealthRegistry;
use modelgw_data_plane::routing_table::{RoutingTable, SnapshotStore};
use modelgw_data_plane::{ConnectionStats, DataPlane, DataPlaneConfig, DataPlaneError};
pub use modelgw_mock_openai::Region;
use modelgw_model::{
    ConfigVersion, Credential, Endpoint, EndpointId, Gateway, GatewayId, GatewayKey, GatewayKeyId,
    GatewayMember, PinKey, Platform, RoutingPolicy, Secret, Snapshot, gateway_key_hash,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The client's gateway key.
pub const CLIENT_KEY: &str = "mgw-test-client-key-0001";
pub const GATEWAY: &str = "chat";
pub const API_VERSION: &str = "api-version=2024-10-21";
/// The gateway's pin key in the harness's snapshots.
pub const PIN_KEY: PinKey = PinKey::new([0x5a; 32]);

/// A region named `name` in Azure region `name`, serving deployment `gpt-4o-{name}`.
pub async fn region(name: &str) -> Result<Region> {
    region_at(name, name, &format!("gpt-4o-{name}")).await
}

/// A region named `name` in Azure region `display`, serving `deployment`.
pub async fn region_at(name: &str, display: &str, deployment: &str) -> Result<Region> {
    Ok(Region::start(name, display, deployment, &upstream_key(name)).await?)
}

fn upstream_key(name: &str) -> String {
    format!("upstream-key-{name}-0123456789")
}

/// A region whose port refuses connections (bound once, then closed).
pub async fn refusing(name: &str) -> Result<Region> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    drop(listener);
    Ok(unmocked(name, base_url))
}

/// A region at `base_url` served by something other than the mock (or by nothing).
pub fn unmocked(name: &str, base_url: String) -> Region {
    Region::elsewhere(name, name, &format!("gpt-4o-{name}"), &upstream_key(name), &base_url)
}

/// The id of `r`'s endpoint in the snapshots.
pub fn id(r: &Region) -> EndpointId {
    EndpointId(r.id)
}

pub fn endpoint(r: &Region) -> Result<Endpoint> {
    Ok(Endpoint {
        id: id(r),
        name: r.name.clone(),
        platform: Platform::AzureOpenai,
        base_url: url::Url::parse(r.url())?,
        deployment: r.deployment.clone(),
        model_name: "gpt-4o-mini".to_owned(),
        model_version: "2024-07-18".to_owned(),
        region: r.display.clone(),
        credential: Credential::ApiKey(Secret::new(r.key.clone())),
    })
}

/// Gateway `chat` at `version` with `members` as (region, priority, weight) and `routing`.
pub fn snapshot(
    version: u64,
    members: &[(&Region, u32, u32)],
    routing: RoutingPolicy,
) -> Result<Snapshot> {
    Ok(Snapshot {
        version: ConfigVersion(version),
        endpoints: members.iter().map(|(r, _, _)| endpoint(r)).collect::<Result<_>>()?,
        gateways: vec![Gateway {
            id: GatewayId::new(),
            name: GATEWAY.to_owned(),
            members: members
                .iter()
                .map(|(r, priority, weight)| GatewayMember {
                    endpoint_id: id(r),
                    enabled: true,
                    priority: *priority,
                    weight: *weight,
                })
                .collect(),
            keys: vec![GatewayKey::new(GatewayKeyId::new(), gateway_key_hash(CLIENT_KEY), "test")],
            routing,
            key_limits: Default::default(),
            traces: Default::default(),
            pin_key: PIN_KEY,
        }],
    })
}

/// A running data plane and a client for it.
pub struct TestGateway {
    pub base: String,
    pub store: Arc<SnapshotStore>,
    pub health: Arc<HealthRegistry>,
    pub connections: Arc<ConnectionStats>,
    /// Where `/metrics` is served, when the config asked for it.
    pub metrics_addr: Option<SocketAddr>,
    /// Finished request traces (no control plane ships them: tests take them).
    pub traces: Arc<modelgw_data_plane::traces::TraceQueue>,
    pub http: reqwest::Client,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), DataPlaneError>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl TestGateway {
    /// The text of this gateway's `/metrics` (the config must serve it).
    pub async fn scrape(&self) -> String {
        let addr = self.metrics_addr.expect("metrics served");
        let response = self.http.get(format!("http://{addr}/metrics")).send().await;
        response.expect("scrape").text().await.expect("scrape body")
    }

    /// The value of the sample of `metric` whose labels include every pair of `labels`, from
    /// a scrape of this gateway; 0 when there is none ([`metric_value`]).
    pub async fn metric(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.scrape().await;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("the exposition parses");
        metric_value(&scrape.samples, metric, labels)
    }

    /// Swaps `snapshot` in; an error if it is not newer than the one serving.
    pub fn install(&self, snapshot: Snapshot) -> Result<()> {
        let table = RoutingTable::compile(&snapshot)?;
        if !self.store.swap_if_newer(table) {
            bail!("snapshot not newer");
        }
        Ok(())
    }

    /// A POST to `path` with the client's key and `body` as JSON.
    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .header("api-key", CLIENT_KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// A chat to deployment `auto`, streaming or not, ready to send.
    pub fn request(&self, stream: bool) -> reqwest::RequestBuilder {
        let path = format!("/openai/deployments/auto/chat/completions?{API_VERSION}");
        self.post(&path, &chat_body(stream))
    }

    /// Sends one non-streaming chat to deployment `auto`.
    pub async fn chat(&self) -> Result<reqwest::Response> {
        Ok(self.request(false).send().await?)
    }
}

/// A one-message chat for model `auto`.
pub fn chat_body(stream: bool) -> Value {
    json!({"model": "auto", "messages": [{"role": "user", "content": "Say hello"}], "stream": stream})
}

/// A data plane on 127.0.0.1:0 with `config` and no control plane, serving nothing yet;
/// upstreams on loopback allowed (the mock regions listen there).
pub async fn start(config: DataPlaneConfig) -> Result<TestGateway> {
    start_exactly(DataPlaneConfig { allow_loopback_upstreams: true, ..config }).await
}

/// [`start`], stopped by shutdown requests through the returned trigger (each one moves the
/// shutdown a phase on) instead of `TestGateway::stop`.
pub async fn start_with_trigger(
    config: DataPlaneConfig,
) -> Result<(TestGateway, modelgw_data_plane::ShutdownTrigger)> {
    let (trigger, shutdown) = modelgw_data_plane::shutdown_channel();
    let gw = start_running(DataPlaneConfig { allow_loopback_upstreams: true, ..config }, |dp| {
        tokio::spawn(dp.run_until_shutdown(shutdown))
    })
    .await?;
    Ok((gw, trigger))
}

/// [`start`] with `config` as it is (e.g. loopback upstreams refused).
pub async fn start_exactly(config: DataPlaneConfig) -> Result<TestGateway> {
    let (stop, stopped) = oneshot::channel::<()>();
    let mut gw = start_running(config, |dp| {
        tokio::spawn(dp.run(async move {
            let _ = stopped.await;
        }))
    })
    .await?;
    gw.stop = Some(stop);
    Ok(gw)
}

/// Binds a data plane with `config` (on 127.0.0.1:0, no control plane) and runs it with `run`.
async fn start_running(
    config: DataPlaneConfig,
    run: impl FnOnce(DataPlane) -> tokio::task::JoinHandle<Result<(), DataPlaneError>>,
) -> Result<TestGateway> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dp = DataPlane::bind(DataPlaneConfig {
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        control_plane_url: String::new(),
        node_id: "test-node".to_owned(),
        ..config
    })
    .await?;
    let connections = dp.connection_stats();
    let base = format!("http://{}", dp.local_addr());
    let store = dp.snapshot_store();
    let health = dp.health();
    let metrics_addr = dp.metrics_addr();
    let traces = dp.trace_queue();
    let task = run(dp);
    let http = reqwest::Client::builder().no_proxy().build()?;
    Ok(TestGateway {
        base,
        store,
        health,
        connections,
        metrics_addr,
        traces,
        http,
        stop: None,
        task,
    })
}

/// Default settings but a 5 s first-byte timeout.
pub fn fast_config() -> DataPlaneConfig {
    DataPlaneConfig { upstream_timeout: Duration::from_secs(5), ..Default::default() }
}

/// A gateway over `members` with `routing` and `config`, serving snapshot version 1.
pub async fn gateway(
    members: &[(&Region, u32, u32)],
    routing: RoutingPolicy,
    config: DataPlaneConfig,
) -> Result<TestGateway> {
    let gw = start(config).await?;
    gw.install(snapshot(1, members, routing)?)?;
    Ok(gw)
}

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The value of the sample of `metric` whose labels include every pair of `labels`; 0 when
/// there is none, and a failed test when more than one match or the sample is not a plain one.
pub fn metric_value(
    samples: &[prometheus_parse::Sample],
    metric: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{metric} is not a plain sample"),
        })
        .collect();
    assert!(found.len() <= 1, "{metric}{labels:?} matches {} samples: {found:?}", found.len());
    found.first().copied().unwrap_or(0.0)
}
