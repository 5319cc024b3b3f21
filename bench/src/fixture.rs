//! The three rows every traffic measurement compares, and the processes behind them:
//!
//! - **floor**: the client straight to fake region #1 — what the machine, the load generator
//!   and the upstream cost with no proxy at all;
//! - **nginx**: the client through the nginx reverse proxy over the three regions;
//! - **gateway**: the client through ONE `modelgw data-plane`, configured by a `modelgw
//!   control-plane` through the admin API exactly as an operator would, logging at the
//!   production default level (info) into a file.
//!
//! Two gateway rows are the comparison with nginx, and four more isolate what each optional
//! feature costs (issue #17):
//!
//! - **gateway, plain**: every optional feature off — a data plane with `MODELGW_METRICS_ADDR=off`
//!   and the access log off (`info,modelgw::access=off`), through gateways without traces whose
//!   keys have no limits. What the request path costs with nothing optional on.
//! - **gateway, everything on**: what a production deployment runs by default after the issues
//!   of this wave — TLS to the control plane (every row has it), metrics on, the access log on
//!   (`info`, into a file), through gateways (`bench-keyed`, `bench-keyed-stream`) that record
//!   request traces (metadata only) and whose keys have every limit set ([`KEYED_LIMIT`] in
//!   every window and measure: enforced — leases, the admission's compare-and-swap per counter,
//!   reconciliation, `x-ratelimit-*` headers — but never reached).
//! - **plain + access log**, **plain + metrics** (each its own data plane), and **plain +
//!   metrics + key limits**, **plain + metrics + traces** (the metrics data plane through
//!   gateways with only that feature on: traces are read from its metrics): each differs from
//!   the row it builds on by one feature alone ([`Row::adds`]); they run in the 64-connection
//!   scenario, where CPU per request is measured.
//!
//! All rows send the same body and an `api-key` header (nginx and the fake regions ignore
//! it), and must answer the same 653-byte body before anything is measured.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use modelgw_e2e::{API_VERSION, Admin};
use serde_json::json;

use crate::model_upstream::{self, ModelUpstream};
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

/// Every limit of the limited rows' keys, in every window and measure: the API's largest (10¹²),
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
    /// Every optional feature off.
    Plain,
    /// [`Row::Plain`] + the access log.
    AccessLog,
    /// [`Row::Plain`] + metrics.
    Metrics,
    /// [`Row::Metrics`] + key limits.
    Limits,
    /// [`Row::Metrics`] + request traces (metadata only).
    Traces,
    /// Everything on, as a production deployment runs by default.
    Gateway,
}

impl Row {
    pub const ALL: [Row; 8] = [
        Row::Floor,
        Row::Nginx,
        Row::Plain,
        Row::AccessLog,
        Row::Metrics,
        Row::Limits,
        Row::Traces,
        Row::Gateway,
    ];

    /// The rows every scenario and the streaming section measure.
    pub const MAIN: [Row; 4] = [Row::Floor, Row::Nginx, Row::Plain, Row::Gateway];

    /// The rows that add one feature each ([`Row::adds`]): the 64-connection scenario only.
    pub const FEATURES: [Row; 4] = [Row::AccessLog, Row::Metrics, Row::Limits, Row::Traces];

    pub fn name(self) -> &'static str {
        match self {
            Row::Floor => "floor",
            Row::Nginx => "nginx",
            Row::Plain => "gateway, plain",
            Row::AccessLog => "plain + access log",
            Row::Metrics => "plain + metrics",
            Row::Limits => "plain + metrics + key limits",
            Row::Traces => "plain + metrics + traces",
            Row::Gateway => "gateway, everything on",
        }
    }

    /// The row this one adds exactly one feature to, and the feature.
    pub fn adds(self) -> Option<(Row, &'static str)> {
        match self {
            Row::AccessLog => Some((Row::Plain, "access log (info, into a file)")),
            Row::Metrics => Some((Row::Plain, "metrics (Prometheus, token usage, statistics)")),
            Row::Limits => Some((Row::Metrics, "key limits (12 counters, never reached)")),
            Row::Traces => Some((Row::Metrics, "request traces (metadata only)")),
            _ => None,
        }
    }

    /// Whether the row's key has limits (its answers carry `x-ratelimit-*` headers).
    pub fn limited(self) -> bool {
        matches!(self, Row::Limits | Row::Gateway)
    }

    /// Whether the row's gateway records request traces.
    pub fn traced(self) -> bool {
        matches!(self, Row::Traces | Row::Gateway)
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

    /// The row's chat request (the fixed body, its key), ready to send.
    pub fn chat(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        client
            .post(&self.chat_url)
            .header("content-type", "application/json")
            .header("api-key", &self.chat_key)
            .body(REQUEST_BODY)
    }

    /// The row's streamed chat request (the 3-frame answer), ready to send.
    pub fn stream(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        client
            .post(&self.stream_url)
            .header("content-type", "application/json")
            .header("api-key", &self.stream_key)
            .body(STREAM_REQUEST_BODY)
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
    /// The keys with limits, of `bench-keyed` and `bench-keyed-stream` (traced gateways).
    keyed_chat: String,
    keyed_stream: String,
    /// The key with limits of `bench-limited` (no traces).
    limited_chat: String,
    /// The key (no limits) of `bench-traced`.
    traced_chat: String,
    /// The key of `bench-llm` (the fake model, for the llm section).
    llm: String,
}

/// One data plane of the fixture.
pub struct ServingPlane {
    pub modelgw: Modelgw,
    /// Its logs (stderr, into a file).
    pub log: PathBuf,
    /// Its gateway's base URL.
    pub url: String,
    /// Its `/metrics` URL; `None` with metrics off.
    pub metrics: Option<String>,
    pub node_id: &'static str,
}

/// The fixture's data planes, each with a different set of optional features.
pub struct Planes {
    /// Metrics on, access log on: the everything-on row.
    pub full: ServingPlane,
    /// Metrics off, access log off: the plain row.
    pub plain: ServingPlane,
    /// Metrics off, access log on.
    pub logged: ServingPlane,
    /// Metrics on, access log off: plain + metrics, + key limits, + traces.
    pub metered: ServingPlane,
}

impl Planes {
    pub fn all(&self) -> [&ServingPlane; 4] {
        [&self.full, &self.plain, &self.logged, &self.metered]
    }

    fn all_mut(&mut self) -> [&mut ServingPlane; 4] {
        [&mut self.full, &mut self.plain, &mut self.logged, &mut self.metered]
    }
}

/// Every process behind the rows.
pub struct Fixture {
    pub upstreams: Vec<Nginx>,
    pub proxy: Nginx,
    pub control_plane: Modelgw,
    pub planes: Planes,
    keys: Keys,
    /// The control plane's admin API.
    pub admin: Admin,
    /// `/metrics` of the control plane.
    pub control_plane_metrics: String,
    /// The ids of the traced gateways `bench-keyed` and `bench-traced` (whose traces the load
    /// section counts).
    pub keyed_gateway_id: String,
    pub traced_gateway_id: String,
    /// The llm section's fake model (in-process), behind deployment `llm` of nginx and
    /// gateway `bench-llm`.
    pub model: ModelUpstream,
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

/// The limits of the limited rows' keys: [`KEYED_LIMIT`] on every measure of every window — the
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
/// capture) when `traced`, and a key of it, with [`keyed_limits`] when `limited`; returns the
/// gateway's id and the key. Fails unless the control plane echoes both settings.
pub async fn create_keyed_gateway(
    admin: &Admin,
    name: &str,
    endpoint_ids: &[String],
    limited: bool,
    traced: bool,
) -> anyhow::Result<(String, String)> {
    let members: Vec<serde_json::Value> = endpoint_ids
        .iter()
        .map(|id| json!({"endpoint_id": id, "enabled": true, "priority": 0, "weight": 1}))
        .collect();
    let body = json!({
        "name": name,
        "endpoints": members,
        "traces": {"enabled": traced, "capture_payload": false},
    });
    let (status, gw) = admin.call("POST", "/api/v1/gateways", Some(body)).await?;
    ensure!(status == 201, "creating gateway {name}: {status} {gw}");
    ensure!(
        gw["traces"]["enabled"] == traced && gw["traces"]["capture_payload"] == false,
        "gateway {name}'s traces are not as asked (enabled: {traced}, metadata only): {}",
        gw["traces"]
    );
    let id = gw["id"].as_str().context("gateway id")?.to_owned();
    let mut body = json!({"name": format!("{name}-key")});
    if limited {
        body["limits"] = keyed_limits();
    }
    let (status, key) =
        admin.call("POST", &format!("/api/v1/gateways/{id}/keys"), Some(body)).await?;
    ensure!(status == 201, "creating the key of {name}: {status}");
    ensure!(
        !limited || key["limits"] == keyed_limits(),
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

/// A limited row's answers carry its key's limits as `x-ratelimit-*` headers; every other
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
    if row.limited() {
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

/// The access log off, everything else at `base` (the production default `info` unless the
/// benchmark was told otherwise).
fn without_access_log(base: Option<&str>) -> String {
    format!("{},modelgw::access=off", base.unwrap_or("info"))
}

impl Fixture {
    /// Starts the three regions, the nginx proxy, the control plane and the four data planes
    /// ([`Planes`]), and configures the gateways over the regions: `bench`, `bench-stream` and
    /// `bench-slow` (plain), `bench-keyed` and `bench-keyed-stream` (limits and traces),
    /// `bench-limited` (limits), `bench-traced` (traces).
    /// `log_filter`: the data planes' `RUST_LOG` (default: unset, i.e. `info`).
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
        let model = ModelUpstream::start(model_upstream::Shape {
            first_delay: Duration::from_millis(200),
            chunks: 200,
            gap_min: Duration::from_millis(20),
            gap_max: Duration::from_millis(50),
            seed: 17,
        })?;
        let workers =
            u32::try_from(std::thread::available_parallelism().map_or(2, |n| n.get())).unwrap_or(2);
        let proxy = Nginx::start_on_free_port(dir, "proxy", |port| {
            nginx::proxy_conf(dir, "proxy", port, &ports, model.port, workers)
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
        let control_plane_metrics = control_plane.field("metrics")?.to_owned();
        let grpc = control_plane.field("grpc")?.to_owned();
        // Metrics on as by default, on a port of its own (read back from the ready line).
        let serving = |node_id: &'static str, metrics: bool, access_log: bool| {
            let (grpc, dir) = (grpc.clone(), dir.to_path_buf());
            async move {
                let mut env = vec![(
                    "MODELGW_METRICS_ADDR",
                    if metrics { "127.0.0.1:0" } else { "off" }.to_owned(),
                )];
                match (access_log, log_filter) {
                    (true, Some(f)) => env.push(("RUST_LOG", f.to_owned())),
                    (true, None) => {}
                    (false, f) => env.push(("RUST_LOG", without_access_log(f))),
                }
                let log = dir.join(format!("{node_id}.log"));
                let modelgw = start_data_plane(bin, &grpc, node_id, &env, Logs::File(&log)).await?;
                let url = modelgw.field("gateway")?.to_owned();
                let metrics =
                    if metrics { Some(modelgw.field("metrics")?.to_owned()) } else { None };
                anyhow::Ok(ServingPlane { modelgw, log, url, metrics, node_id })
            }
        };
        let planes = Planes {
            full: serving("bench-dp", true, true).await?,
            plain: serving("bench-dp-plain", false, false).await?,
            logged: serving("bench-dp-logged", false, true).await?,
            metered: serving("bench-dp-metered", true, false).await?,
        };

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
        // The same endpoints: traces on (metadata only) and a key with limits, or one of them.
        let (keyed_gateway_id, keyed_chat) =
            create_keyed_gateway(&admin, "bench-keyed", &endpoints_of[0], true, true).await?;
        let (_, keyed_stream) =
            create_keyed_gateway(&admin, "bench-keyed-stream", &endpoints_of[1], true, true)
                .await?;
        let (_, limited_chat) =
            create_keyed_gateway(&admin, "bench-limited", &endpoints_of[0], true, false).await?;
        let (traced_gateway_id, traced_chat) =
            create_keyed_gateway(&admin, "bench-traced", &endpoints_of[0], false, true).await?;
        let llm_endpoint =
            create_endpoint(&admin, "llm-model", &model.base_url(), "llm", REGIONS[0]).await?;
        let llm_gateway = admin.create_gateway("bench-llm", &[llm_endpoint]).await?;
        let llm = admin.create_key(&llm_gateway).await?;
        let version = admin.config_version().await?;
        let nodes: Vec<&str> = planes.all().iter().map(|p| p.node_id).collect();
        admin.wait_for_applied(&nodes, version, Duration::from_secs(15)).await?;
        Ok(Fixture {
            upstreams,
            proxy,
            control_plane,
            planes,
            keys: Keys {
                chat,
                stream,
                slow,
                keyed_chat,
                keyed_stream,
                limited_chat,
                traced_chat,
                llm,
            },
            admin,
            control_plane_metrics,
            keyed_gateway_id,
            traced_gateway_id,
            model,
        })
    }

    /// The data plane a gateway row goes through.
    pub fn plane(&self, row: Row) -> Option<&ServingPlane> {
        match row {
            Row::Floor | Row::Nginx => None,
            Row::Plain => Some(&self.planes.plain),
            Row::AccessLog => Some(&self.planes.logged),
            Row::Metrics | Row::Limits | Row::Traces => Some(&self.planes.metered),
            Row::Gateway => Some(&self.planes.full),
        }
    }

    /// The llm section's streamed-chat URL through `row` (floor: the fake model itself), and
    /// its `api-key`. The gateway row is the everything-on data plane (metrics, access log)
    /// through a gateway of its own, without key limits or traces.
    pub fn llm_target(&self, row: Row) -> anyhow::Result<(String, String)> {
        let q = format!("?api-version={API_VERSION}");
        let url = match row {
            Row::Floor => {
                format!("{}/openai/deployments/llm/chat/completions{q}", self.model.base_url())
            }
            Row::Nginx => {
                format!("{}/openai/deployments/llm/chat/completions{q}", self.proxy.base_url())
            }
            Row::Gateway => {
                format!("{}/openai/deployments/bench-llm/chat/completions{q}", self.planes.full.url)
            }
            other => bail!("the llm section has no {} row", other.name()),
        };
        Ok((url, self.keys.llm.clone()))
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
        let k = &self.keys;
        let (chat_url, stream_url, slow_url) = match self.plane(row) {
            None if row == Row::Floor => upstream_paths(self.upstreams[0].base_url()),
            None => upstream_paths(self.proxy.base_url()),
            Some(plane) => {
                let base = &plane.url;
                let (chat, stream) = match row {
                    Row::Gateway => ("bench-keyed", "bench-keyed-stream"),
                    Row::Limits => ("bench-limited", "bench-stream"),
                    Row::Traces => ("bench-traced", "bench-stream"),
                    _ => ("bench", "bench-stream"),
                };
                (
                    format!("{base}/openai/deployments/{chat}/chat/completions{q}"),
                    format!("{base}/openai/deployments/{stream}/chat/completions{q}"),
                    // The open streams of the memory section: a plain gateway.
                    format!("{base}/openai/deployments/bench-slow/chat/completions{q}"),
                )
            }
        };
        let (chat_key, stream_key) = match row {
            Row::Gateway => (&k.keyed_chat, &k.keyed_stream),
            Row::Limits => (&k.limited_chat, &k.stream),
            Row::Traces => (&k.traced_chat, &k.stream),
            _ => (&k.chat, &k.stream),
        };
        Target {
            row,
            chat_url,
            stream_url,
            slow_url,
            chat_key: chat_key.clone(),
            stream_key: stream_key.clone(),
            slow_key: k.slow.clone(),
        }
    }

    /// The processes whose CPU time and memory count for a row: region #1 for the floor (for
    /// reference), the nginx master and workers, the data plane (threads included).
    pub fn pids(&self, row: Row) -> Vec<u32> {
        match (row, self.plane(row)) {
            (_, Some(plane)) => vec![plane.modelgw.proc.pid()],
            (Row::Floor, None) => self.upstreams[0].pids(),
            (_, None) => self.proxy.pids(),
        }
    }

    /// Fails when any process of the fixture has died.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        for up in &mut self.upstreams {
            up.proc.ensure_running()?;
        }
        self.proxy.proc.ensure_running()?;
        self.control_plane.proc.ensure_running()?;
        for plane in self.planes.all_mut() {
            plane
                .modelgw
                .proc
                .ensure_running()
                .map_err(|e| anyhow::anyhow!("{e}{}", procs::log_hint(Some(&plane.log))))?;
        }
        Ok(())
    }

    /// Every row must answer the chat request with 200 and exactly the upstream's 653 bytes
    /// (the gateway passes the body through unchanged), and stream the SSE answer.
    ///
    /// The answers of a row whose key has limits must carry its `x-ratelimit-*` headers
    /// ([`KEYED_LIMIT`] as the limit), and no other row's may: so those rows measure enforced
    /// limits, and the others none.
    pub async fn check_rows(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().http1_only().build()?;
        for row in Row::ALL {
            let t = self.target(row);
            let hint =
                || self.plane(row).map(|p| procs::log_hint(Some(&p.log))).unwrap_or_default();
            let res = t
                .chat(&client)
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
                    hint()
                );
            }
            limit_headers.with_context(|| format!("{} row: chat answer", row.name()))?;
            if !Row::MAIN.contains(&row) {
                continue; // the streaming section measures the main rows only
            }
            let res = t
                .stream(&client)
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

    /// Waits until the requests of the rows whose keys have limits are checked against budget
    /// leases, not admitted fail-open (grants follow the snapshot by a few milliseconds):
    /// sends each such row's chat request until one leaves its data plane's fail-open counter
    /// where it was.
    pub async fn wait_for_grants(&self, within: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().http1_only().build()?;
        let deadline = std::time::Instant::now() + within;
        for row in Row::ALL.into_iter().filter(|r| r.limited()) {
            let t = self.target(row);
            loop {
                let before = self.data_plane_counter(row, FAIL_OPEN).await?;
                let res = t.chat(&client).send().await?;
                ensure!(res.status() == 200, "{} row answered {}", row.name(), res.status());
                if self.data_plane_counter(row, FAIL_OPEN).await? == before {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "the {} row's requests were still admitted fail-open (no budget grant) after {within:?}{}",
                        row.name(),
                        self.plane(row).map(|p| procs::log_hint(Some(&p.log))).unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// A counter or gauge of the data plane of `row` (`name` as exposed, e.g. `…_total`);
    /// an error for a row without metrics.
    pub async fn data_plane_counter(&self, row: Row, name: &str) -> anyhow::Result<f64> {
        let url = self
            .plane(row)
            .and_then(|p| p.metrics.as_deref())
            .with_context(|| format!("the {} row's data plane has no metrics", row.name()))?;
        scrape_value(url, name, &[]).await
    }

    /// A counter or gauge of the control plane, its samples with `labels` summed.
    pub async fn control_plane_counter(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<f64> {
        scrape_value(&self.control_plane_metrics, name, labels).await
    }

    /// Keeps the data planes' logs from growing without bound over long load runs (they are
    /// opened in append mode, so truncating them is safe while the data planes write).
    pub fn trim_data_plane_logs(&self) {
        const LIMIT: u64 = 256 * 1024 * 1024;
        for plane in self.planes.all() {
            if std::fs::metadata(&plane.log).is_ok_and(|m| m.len() > LIMIT)
                && let Ok(f) = std::fs::OpenOptions::new().write(true).open(&plane.log)
            {
                let _ = f.set_len(0);
            }
        }
    }

    /// Stops everything (data planes first, so nothing reconnects in between).
    pub async fn stop(&mut self) {
        let grace = Duration::from_secs(5);
        for plane in self.planes.all_mut() {
            plane.modelgw.proc.stop(grace).await;
        }
        self.control_plane.proc.stop(grace).await;
        self.proxy.stop().await;
        for up in &mut self.upstreams {
            up.stop().await;
        }
    }
}
