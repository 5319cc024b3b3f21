//! The three rows every traffic measurement compares, and the processes behind them:
//!
//! - **floor**: the client straight to fake region #1 — what the machine, the load generator
//!   and the upstream cost with no proxy at all;
//! - **nginx**: the client through the nginx reverse proxy over the three regions;
//! - **gateway**: the client through ONE `modelgw data-plane`, configured by a `modelgw
//!   control-plane` through the admin API exactly as an operator would, logging at the
//!   production default level (info) into a file.
//!
//! Two more gateway rows isolate what a feature costs, each differing from **gateway** by that
//! feature alone:
//!
//! - **gateway, metrics off**: the same gateways through a second data plane with
//!   `MODELGW_METRICS_ADDR=off` (issue #13);
//! - **gateway, key limits + traces**: the same data plane as **gateway**, through gateways of
//!   their own (`bench-keyed`, `bench-keyed-stream`) over the same endpoints whose keys have
//!   every limit set ([`KEYED_LIMIT`] in every window and measure: enforced — leases, the
//!   admission's compare-and-swap per counter, reconciliation, `x-ratelimit-*` headers —
//!   but never reached) and which record request traces, metadata only (issue #14).
//!
//! All rows send the same body and an `api-key` header (nginx and the fake regions ignore
//! it), and must answer the same 653-byte body before anything is measured.

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

/// Every limit of the keyed row's keys, in every window and measure: the API's largest (10¹²),
/// so no run of the benchmark comes near it (a 10 s run at 100,000 req/s reserves ~10⁸
/// tokens).
pub const KEYED_LIMIT: u64 = 1_000_000_000_000;

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
    /// The gateway's data plane, through gateways whose keys have limits (never reached) and
    /// which trace requests (metadata only): key limits and traces cost the difference. Last
    /// in every round, so the shipping of its traces never overlaps another data-plane row.
    GatewayKeyed,
}

impl Row {
    pub const ALL: [Row; 5] =
        [Row::Floor, Row::Nginx, Row::Gateway, Row::GatewayMetricsOff, Row::GatewayKeyed];

    pub fn name(self) -> &'static str {
        match self {
            Row::Floor => "floor",
            Row::Nginx => "nginx",
            Row::Gateway => "gateway",
            Row::GatewayMetricsOff => "gateway, metrics off",
            Row::GatewayKeyed => "gateway, key limits + traces",
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
    /// The keys with limits, of `bench-keyed` and `bench-keyed-stream`.
    keyed_chat: String,
    keyed_stream: String,
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
    /// The control plane's admin API.
    pub admin: Admin,
    /// `/metrics` of the gateway's data plane and of the control plane.
    pub data_plane_metrics: String,
    pub control_plane_metrics: String,
    /// The id of `bench-keyed` (whose traces the load section counts).
    pub keyed_gateway_id: String,
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

/// The limits of the keyed row's keys: [`KEYED_LIMIT`] on every measure of every window — the
/// most counters one key can make a request reserve on (twelve), none of them ever reached.
pub fn keyed_limits() -> serde_json::Value {
    let window = json!({
        "requests": KEYED_LIMIT,
        "prompt_tokens": KEYED_LIMIT,
        "completion_tokens": KEYED_LIMIT,
        "total_tokens": KEYED_LIMIT,
    });
    json!({ "per_minute": window, "per_hour": window, "per_day": window })
}

/// Creates a gateway over `endpoint_ids` that traces requests (metadata only: no payload
/// capture) and a key of it with [`keyed_limits`]; returns the gateway's id and the key. Fails
/// unless the control plane echoes both settings.
pub async fn create_keyed_gateway(
    admin: &Admin,
    name: &str,
    endpoint_ids: &[String],
) -> anyhow::Result<(String, String)> {
    let members: Vec<serde_json::Value> = endpoint_ids
        .iter()
        .map(|id| json!({"endpoint_id": id, "enabled": true, "priority": 0, "weight": 1}))
        .collect();
    let body = json!({
        "name": name,
        "endpoints": members,
        "traces": {"enabled": true, "capture_payload": false},
    });
    let (status, gw) = admin.call("POST", "/api/v1/gateways", Some(body)).await?;
    ensure!(status == 201, "creating gateway {name}: {status} {gw}");
    ensure!(
        gw["traces"]["enabled"] == true && gw["traces"]["capture_payload"] == false,
        "gateway {name} does not trace metadata only: {}",
        gw["traces"]
    );
    let id = gw["id"].as_str().context("gateway id")?.to_owned();
    let body = json!({"name": format!("{name}-limited"), "limits": keyed_limits()});
    let (status, key) =
        admin.call("POST", &format!("/api/v1/gateways/{id}/keys"), Some(body)).await?;
    ensure!(status == 201, "creating the limited key of {name}: {status}");
    ensure!(
        key["limits"] == keyed_limits(),
        "the key of {name} has other limits than asked: {}",
        key["limits"]
    );
    Ok((id, key["key"].as_str().context("key")?.to_owned()))
}

/// The data plane's count of requests to keys with limits admitted unchecked (no grant).
pub const FAIL_OPEN: &str = "modelgw_key_limit_fail_open_admissions_total";

/// The sum of `name`'s samples with `labels` in one scrape of `url`; 0 when the metric has
/// no such sample yet (a label set is created on first use).
async fn scrape_value(url: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    let scrape = modelgw_e2e::metrics::Scrape::get(url).await?;
    ensure!(scrape.text.contains(name.trim_end_matches("_total")), "{url} does not expose {name}");
    Ok(scrape.value(name, labels).unwrap_or(0.0))
}

/// The keyed row's answers carry its key's limits as `x-ratelimit-*` headers; every other
/// row's answers carry none (the fake regions send none, and a key without limits adds none).
fn check_ratelimit_headers(row: Row, headers: &reqwest::header::HeaderMap) -> anyhow::Result<()> {
    let number = |name: &str| -> anyhow::Result<u64> {
        headers
            .get(name)
            .with_context(|| format!("no {name} header"))?
            .to_str()?
            .parse::<u64>()
            .with_context(|| format!("{name} is not a number"))
    };
    if row == Row::GatewayKeyed {
        for name in ["x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"] {
            let limit = number(name)?;
            ensure!(limit == KEYED_LIMIT, "{name}: {limit}, expected {KEYED_LIMIT}");
        }
        for name in ["x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"] {
            let remaining = number(name)?;
            ensure!(remaining < KEYED_LIMIT, "{name}: {remaining}: nothing was reserved");
        }
    } else {
        let found: Vec<&str> =
            headers.keys().map(|k| k.as_str()).filter(|k| k.starts_with("x-ratelimit-")).collect();
        ensure!(found.is_empty(), "unexpected rate-limit headers {found:?}");
    }
    Ok(())
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
        // Metrics on as by default, on a port of its own (read back from the ready line).
        let mut env = filter.clone();
        env.push(("MODELGW_METRICS_ADDR", "127.0.0.1:0".to_owned()));
        let data_plane = start_data_plane(
            bin,
            control_plane.field("grpc")?,
            "bench-dp",
            &env,
            Logs::File(&data_plane_log),
        )
        .await?;
        let gateway_url = data_plane.field("gateway")?.to_owned();
        let data_plane_metrics = data_plane.field("metrics")?.to_owned();
        let control_plane_metrics = control_plane.field("metrics")?.to_owned();
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
        let mut endpoints_of = Vec::new();
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
            endpoints_of.push(ids);
        }
        let [chat, stream, slow]: [String; 3] =
            key_for.try_into().map_err(|_| anyhow::anyhow!("three keys"))?;
        // The keyed row: the same endpoints, traces on (metadata only), a key with limits.
        let (keyed_gateway_id, keyed_chat) =
            create_keyed_gateway(&admin, "bench-keyed", &endpoints_of[0]).await?;
        let (_, keyed_stream) =
            create_keyed_gateway(&admin, "bench-keyed-stream", &endpoints_of[1]).await?;
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
            keys: Keys { chat, stream, slow, keyed_chat, keyed_stream },
            admin,
            data_plane_metrics,
            control_plane_metrics,
            keyed_gateway_id,
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
            Row::Gateway | Row::GatewayMetricsOff | Row::GatewayKeyed => {
                let base =
                    if row == Row::GatewayMetricsOff { &self.quiet_url } else { &self.gateway_url };
                let prefix = if row == Row::GatewayKeyed { "bench-keyed" } else { "bench" };
                (
                    format!("{base}/openai/deployments/{prefix}/chat/completions{q}"),
                    format!("{base}/openai/deployments/{prefix}-stream/chat/completions{q}"),
                    // The open streams of the memory section: plain gateway only.
                    format!("{base}/openai/deployments/bench-slow/chat/completions{q}"),
                )
            }
        };
        let (chat_key, stream_key) = if row == Row::GatewayKeyed {
            (&self.keys.keyed_chat, &self.keys.keyed_stream)
        } else {
            (&self.keys.chat, &self.keys.stream)
        };
        Target {
            row,
            chat_url,
            stream_url,
            slow_url,
            chat_key: chat_key.clone(),
            stream_key: stream_key.clone(),
            slow_key: self.keys.slow.clone(),
        }
    }

    /// The processes whose CPU time and memory count for a row: region #1 for the floor (for
    /// reference), the nginx master and workers, the data plane (threads included).
    pub fn pids(&self, row: Row) -> Vec<u32> {
        match row {
            Row::Floor => self.upstreams[0].pids(),
            Row::Nginx => self.proxy.pids(),
            Row::Gateway | Row::GatewayKeyed => vec![self.data_plane.proc.pid()],
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
    ///
    /// The keyed row's answers must carry its key's `x-ratelimit-*` headers ([`KEYED_LIMIT`]
    /// as the limit), and no other row's may: so the keyed row measures enforced limits, and
    /// the others none.
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
            let limit_headers = check_ratelimit_headers(row, res.headers());
            let body = res.bytes().await?;
            if status != 200 || body.as_ref() != nginx::CHAT_BODY.as_bytes() {
                bail!(
                    "{} row answered {status} with {} bytes (expected 200 with the {}-byte \
                     completion): {}{}",
                    row.name(),
                    body.len(),
                    nginx::CHAT_BODY.len(),
                    String::from_utf8_lossy(&body[..body.len().min(400)]),
                    if matches!(row, Row::Gateway | Row::GatewayKeyed) {
                        procs::log_hint(Some(&self.data_plane_log))
                    } else {
                        String::new()
                    }
                );
            }
            limit_headers.with_context(|| format!("{} row: chat answer", row.name()))?;
            let res = client
                .post(&t.stream_url)
                .header("content-type", "application/json")
                .header("api-key", &t.stream_key)
                .body(STREAM_REQUEST_BODY)
                .send()
                .await
                .with_context(|| format!("{} row: stream request", row.name()))?;
            let status = res.status();
            let limit_headers = check_ratelimit_headers(row, res.headers());
            let body = res.text().await?;
            ensure!(
                status == 200 && body.matches("data: ").count() == 3 && body.contains("[DONE]"),
                "{} row: the 3-frame stream answered {status}: {body}",
                row.name()
            );
            limit_headers.with_context(|| format!("{} row: stream answer", row.name()))?;
        }
        Ok(())
    }

    /// Waits until the keyed row's requests are checked against budget leases, not admitted
    /// fail-open (grants follow the snapshot by a few milliseconds): sends its chat request
    /// until one leaves the data plane's fail-open counter where it was.
    pub async fn wait_for_grants(&self, within: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().http1_only().build()?;
        let t = self.target(Row::GatewayKeyed);
        let deadline = std::time::Instant::now() + within;
        loop {
            let before = self.data_plane_counter(FAIL_OPEN).await?;
            let res = client
                .post(&t.chat_url)
                .header("content-type", "application/json")
                .header("api-key", &t.chat_key)
                .body(REQUEST_BODY)
                .send()
                .await?;
            ensure!(res.status() == 200, "keyed row answered {}", res.status());
            if self.data_plane_counter(FAIL_OPEN).await? == before {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "the keyed row's requests were still admitted fail-open (no budget grant) after {within:?}{}",
                    procs::log_hint(Some(&self.data_plane_log))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A counter or gauge of the gateway's data plane (`name` as exposed, e.g. `…_total`).
    pub async fn data_plane_counter(&self, name: &str) -> anyhow::Result<f64> {
        scrape_value(&self.data_plane_metrics, name, &[]).await
    }

    /// A counter or gauge of the control plane, its samples with `labels` summed.
    pub async fn control_plane_counter(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<f64> {
        scrape_value(&self.control_plane_metrics, name, labels).await
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
