//! The three rows every traffic measurement compares, and the processes behind them:
//!
//! - **floor**: the client straight to fake region #1 — what the machine, the load generator
//!   and the upstream cost with no proxy at all;
//! - **nginx**: the client through the nginx reverse proxy over the three regions;
//! - **gateway**: the client through ONE `modelgw data-plane`, configured by a `modelgw
//!   control-plane` through the admin API exactly as an operator would, logging at the
//!   production default level (info) into a file.
//!
//! All rows send the same body and the same `api-key` header (nginx and the fake regions
//! ignore it), and must answer the same 653-byte body before anything is measured.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use modelgw_e2e::{API_VERSION, Admin};
use serde_json::json;

use crate::nginx::{self, Nginx};
use crate::procs::{self, Logs, Modelgw};

/// The ~200-byte chat request every row sends.
pub const REQUEST_BODY: &str = r#"{"messages":[{"role":"user","content":"Summarise in one short sentence why one gateway in front of several Azure OpenAI deployments in different regions helps an app stay up and fast."}],"max_tokens":16}"#;

/// The same request, streamed.
pub const STREAM_REQUEST_BODY: &str = r#"{"messages":[{"role":"user","content":"Summarise in one short sentence why one gateway in front of several Azure OpenAI deployments in different regions helps an app stay up and fast."}],"max_tokens":16,"stream":true}"#;

/// A fixed master key (base64 of 32 bytes) for the benchmark's throwaway databases.
pub const MASTER_KEY_B64: &str = "bW9kZWxndy1iZW5jaC1tYXN0ZXIta2V5LTMyLWJ5dGU=";

/// Regions the three fake upstreams stand for.
pub const REGIONS: [&str; 3] = ["East US", "West Europe", "Japan East"];

/// How long the `slow` stream stays open after its first frame: longer than the memory
/// measurement (open 1,000 streams, sample, close) takes.
pub const SLOW_STREAM_SECS: u32 = 40;

/// One of the compared rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Row {
    Floor,
    Nginx,
    Gateway,
    /// The same gateway configuration through a second data plane with
    /// `MODELGW_METRICS_ADDR=off`: the request path's accounting costs the difference.
    GatewayMetricsOff,
}

impl Row {
    pub const ALL: [Row; 4] = [Row::Floor, Row::Nginx, Row::Gateway, Row::GatewayMetricsOff];

    pub fn name(self) -> &'static str {
        match self {
            Row::Floor => "floor",
            Row::Nginx => "nginx",
            Row::Gateway => "gateway",
            Row::GatewayMetricsOff => "gateway, metrics off",
        }
    }
}

/// What a client needs to call one row: URLs of the three kinds of answer, and the key.
#[derive(Clone, Debug)]
pub struct Target {
    pub row: Row,
    pub chat_url: String,
    pub stream_url: String,
    pub slow_url: String,
    /// `api-key` header value for each kind (the same on every row; nginx ignores it).
    pub chat_key: String,
    pub stream_key: String,
    pub slow_key: String,
}

impl Target {
    /// `host:port` of the row, for raw TCP clients.
    pub fn authority(&self) -> anyhow::Result<String> {
        let url = url::Url::parse(&self.slow_url)?;
        Ok(format!("{}:{}", url.host_str().context("host")?, url.port().context("port")?))
    }

    /// Path and query of the open-stream URL.
    pub fn slow_path(&self) -> anyhow::Result<String> {
        let url = url::Url::parse(&self.slow_url)?;
        Ok(format!("{}?{}", url.path(), url.query().unwrap_or("")))
    }
}

/// Gateway keys (secrets: kept in memory, never printed).
struct Keys {
    chat: String,
    stream: String,
    slow: String,
}

/// Every process behind the three rows.
pub struct Fixture {
    pub upstreams: Vec<Nginx>,
    pub proxy: Nginx,
    pub control_plane: Modelgw,
    pub data_plane: Modelgw,
    /// The data plane's stderr (its logs).
    pub data_plane_log: PathBuf,
    gateway_url: String,
    /// The data plane with metrics off (same snapshot), and its gateway URL.
    pub quiet_data_plane: Modelgw,
    quiet_url: String,
    keys: Keys,
}

/// A random token (hex of 16 bytes from the kernel): the admin token of a throwaway cluster.
pub fn random_token(prefix: &str) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}{hex}"))
}

/// Starts a control plane with its SQLite file in `dir`; `logs` as given.
pub async fn start_control_plane(
    bin: &Path,
    dir: &Path,
    db_name: &str,
    admin_token: &str,
    extra_env: &[(&str, String)],
    logs: Logs<'_>,
) -> anyhow::Result<(Modelgw, Admin)> {
    let mut env = vec![
        ("MODELGW_DATABASE_URL", format!("sqlite://{}", dir.join(db_name).display())),
        ("MODELGW_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("MODELGW_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("MODELGW_METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("MODELGW_ADMIN_TOKEN", admin_token.to_owned()),
        ("MODELGW_MASTER_KEY", MASTER_KEY_B64.to_owned()),
    ];
    env.extend(extra_env.iter().cloned());
    let cp = procs::spawn_modelgw(bin, "control-plane", &["control-plane"], &env, logs).await?;
    let admin = Admin::new(cp.field("admin")?, admin_token);
    Ok((cp, admin))
}

/// Starts one data plane subscribed to `grpc_url`.
pub async fn start_data_plane(
    bin: &Path,
    grpc_url: &str,
    node_id: &str,
    extra_env: &[(&str, String)],
    logs: Logs<'_>,
) -> anyhow::Result<Modelgw> {
    let mut env = vec![
        ("MODELGW_GATEWAY_ADDR", "127.0.0.1:0".to_owned()),
        ("MODELGW_CONTROL_PLANE_URL", grpc_url.to_owned()),
        ("MODELGW_NODE_ID", node_id.to_owned()),
    ];
    env.extend(extra_env.iter().cloned());
    procs::spawn_modelgw(bin, &format!("data-plane {node_id}"), &["data-plane"], &env, logs).await
}

/// Creates an Azure OpenAI inference endpoint; returns its id.
pub async fn create_endpoint(
    admin: &Admin,
    name: &str,
    base_url: &str,
    deployment: &str,
    region: &str,
) -> anyhow::Result<String> {
    let body = json!({
        "name": name,
        "platform": "azure_openai",
        "endpoint": base_url,
        "deployment": deployment,
        "model_name": "gpt-4o-mini",
        "model_version": "2024-07-18",
        "region": region,
        "api_key": random_token("azkey-")?,
    });
    let (status, v) = admin.call("POST", "/api/v1/inference-endpoints", Some(body)).await?;
    ensure!(status == 201, "creating endpoint {name}: {status} {v}");
    Ok(v["id"].as_str().context("endpoint id")?.to_owned())
}

impl Fixture {
    /// Starts the three regions, the nginx proxy, the control plane and the data plane, and
    /// configures gateways `bench`, `bench-stream` and `bench-slow` over the regions.
    /// `log_filter`: the data plane's `RUST_LOG` (default: unset, i.e. `info`).
    pub async fn start(
        bin: &Path,
        dir: &Path,
        log_filter: Option<&str>,
    ) -> anyhow::Result<Fixture> {
        let mut upstreams = Vec::new();
        for i in 1..=3 {
            let name = format!("up{i}");
            let up = Nginx::start_on_free_port(dir, &name, |port| {
                nginx::upstream_conf(dir, &name, port, SLOW_STREAM_SECS)
            })
            .await?;
            upstreams.push(up);
        }
        let ports: Vec<u16> = upstreams.iter().map(|u| u.port).collect();
        let workers =
            u32::try_from(std::thread::available_parallelism().map_or(2, |n| n.get())).unwrap_or(2);
        let proxy = Nginx::start_on_free_port(dir, "proxy", |port| {
            nginx::proxy_conf(dir, "proxy", port, &ports, workers)
        })
        .await?;

        let token = random_token("mgwadm_bench_")?;
        let (control_plane, admin) = start_control_plane(
            bin,
            dir,
            "gateway.db",
            &token,
            &[],
            Logs::File(&dir.join("control-plane.log")),
        )
        .await?;
        let data_plane_log = dir.join("data-plane.log");
        let filter: Vec<(&str, String)> =
            log_filter.map(|f| ("RUST_LOG", f.to_owned())).into_iter().collect();
        let data_plane = start_data_plane(
            bin,
            control_plane.field("grpc")?,
            "bench-dp",
            &filter,
            Logs::File(&data_plane_log),
        )
        .await?;
        let gateway_url = data_plane.field("gateway")?.to_owned();
        let mut quiet_env = filter.clone();
        quiet_env.push(("MODELGW_METRICS_ADDR", "off".to_owned()));
        let quiet_data_plane = start_data_plane(
            bin,
            control_plane.field("grpc")?,
            "bench-dp-quiet",
            &quiet_env,
            Logs::File(&dir.join("data-plane-quiet.log")),
        )
        .await?;
        let quiet_url = quiet_data_plane.field("gateway")?.to_owned();

        let mut key_for = Vec::new();
        for (gateway, deployment) in
            [("bench", "chat"), ("bench-stream", "stream"), ("bench-slow", "slow")]
        {
            let mut ids = Vec::new();
            for (up, region) in upstreams.iter().zip(REGIONS) {
                let name = format!("{deployment}-{}", region.replace(' ', "-").to_lowercase());
                ids.push(create_endpoint(&admin, &name, &up.base_url(), deployment, region).await?);
            }
            let gw = admin.create_gateway(gateway, &ids).await?;
            key_for.push(admin.create_key(&gw).await?);
        }
        let [chat, stream, slow]: [String; 3] =
            key_for.try_into().map_err(|_| anyhow::anyhow!("three keys"))?;
        let version = admin.config_version().await?;
        let nodes = ["bench-dp", "bench-dp-quiet"];
        admin.wait_for_applied(&nodes, version, Duration::from_secs(15)).await?;
        Ok(Fixture {
            upstreams,
            proxy,
            control_plane,
            data_plane,
            data_plane_log,
            gateway_url,
            quiet_data_plane,
            quiet_url,
            keys: Keys { chat, stream, slow },
        })
    }

    pub fn target(&self, row: Row) -> Target {
        let q = format!("?api-version={API_VERSION}");
        let upstream_paths = |base: String| {
            (
                format!("{base}/openai/deployments/chat/chat/completions{q}"),
                format!("{base}/openai/deployments/stream/chat/completions{q}"),
                format!("{base}/openai/deployments/slow/chat/completions{q}"),
            )
        };
        let (chat_url, stream_url, slow_url) = match row {
            Row::Floor => upstream_paths(self.upstreams[0].base_url()),
            Row::Nginx => upstream_paths(self.proxy.base_url()),
            Row::Gateway | Row::GatewayMetricsOff => {
                let base = if row == Row::Gateway { &self.gateway_url } else { &self.quiet_url };
                (
                    format!("{base}/openai/deployments/bench/chat/completions{q}"),
                    format!("{base}/openai/deployments/bench-stream/chat/completions{q}"),
                    format!("{base}/openai/deployments/bench-slow/chat/completions{q}"),
                )
            }
        };
        Target {
            row,
            chat_url,
            stream_url,
            slow_url,
            chat_key: self.keys.chat.clone(),
            stream_key: self.keys.stream.clone(),
            slow_key: self.keys.slow.clone(),
        }
    }

    /// The processes whose CPU time and memory count for a row: region #1 for the floor (for
    /// reference), the nginx master and workers, the data plane (threads included).
    pub fn pids(&self, row: Row) -> Vec<u32> {
        match row {
            Row::Floor => self.upstreams[0].pids(),
            Row::Nginx => self.proxy.pids(),
            Row::Gateway => vec![self.data_plane.proc.pid()],
            Row::GatewayMetricsOff => vec![self.quiet_data_plane.proc.pid()],
        }
    }

    /// Fails when any process of the fixture has died.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        for up in &mut self.upstreams {
            up.proc.ensure_running()?;
        }
        self.proxy.proc.ensure_running()?;
        self.control_plane.proc.ensure_running()?;
        self.quiet_data_plane.proc.ensure_running()?;
        self.data_plane
            .proc
            .ensure_running()
            .map_err(|e| anyhow::anyhow!("{e}{}", procs::log_hint(Some(&self.data_plane_log))))
    }

    /// Every row must answer the chat request with 200 and exactly the upstream's 653 bytes
    /// (the gateway passes the body through unchanged), and stream the SSE answer.
    pub async fn check_rows(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().http1_only().build()?;
        for row in Row::ALL {
            let t = self.target(row);
            let res = client
                .post(&t.chat_url)
                .header("content-type", "application/json")
                .header("api-key", &t.chat_key)
                .body(REQUEST_BODY)
                .send()
                .await
                .with_context(|| format!("{} row: chat request", row.name()))?;
            let status = res.status();
            let body = res.bytes().await?;
            if status != 200 || body.as_ref() != nginx::CHAT_BODY.as_bytes() {
                bail!(
                    "{} row answered {status} with {} bytes (expected 200 with the {}-byte \
                     completion): {}{}",
                    row.name(),
                    body.len(),
                    nginx::CHAT_BODY.len(),
                    String::from_utf8_lossy(&body[..body.len().min(400)]),
                    if row == Row::Gateway {
                        procs::log_hint(Some(&self.data_plane_log))
                    } else {
                        String::new()
                    }
                );
            }
            let res = client
                .post(&t.stream_url)
                .header("content-type", "application/json")
                .header("api-key", &t.stream_key)
                .body(STREAM_REQUEST_BODY)
                .send()
                .await
                .with_context(|| format!("{} row: stream request", row.name()))?;
            let status = res.status();
            let body = res.text().await?;
            ensure!(
                status == 200 && body.matches("data: ").count() == 3 && body.contains("[DONE]"),
                "{} row: the 3-frame stream answered {status}: {body}",
                row.name()
            );
        }
        Ok(())
    }

    /// Keeps the data-plane log from growing without bound over long load runs (it is opened
    /// in append mode, so truncating it is safe while the data plane writes).
    pub fn trim_data_plane_log(&self) {
        const LIMIT: u64 = 256 * 1024 * 1024;
        if std::fs::metadata(&self.data_plane_log).is_ok_and(|m| m.len() > LIMIT)
            && let Ok(f) = std::fs::OpenOptions::new().write(true).open(&self.data_plane_log)
        {
            let _ = f.set_len(0);
        }
    }

    /// Stops everything (data plane first, so nothing reconnects in between).
    pub async fn stop(&mut self) {
        let grace = Duration::from_secs(5);
        self.data_plane.proc.stop(grace).await;
        self.control_plane.proc.stop(grace).await;
        self.proxy.stop().await;
        for up in &mut self.upstreams {
            up.stop().await;
        }
    }
}
