//! Test harness that starts real `modelgw` processes — control plane, data planes, mock Azure
//! regions — on 127.0.0.1 port 0, in the right order, and talks to them over real HTTP and gRPC.
//! A mock region is held as a [`Region`] (from `modelgw-mock-openai`, the type the in-process
//! proxy tests use too) that drives its `modelgw mock-azure` process through the mock's control
//! API, scripted with typed [`Fault`]s.
//!
//! The distribution port is TLS as in production: a [`Cluster`] makes a throwaway CA
//! ([`TestPki`]) and runs its control plane in mTLS mode, each data plane with a client
//! certificate naming its node id.
//!
//! Each process prints one `modelgw <component> ready: k=v …` line on stdout; the harness waits
//! for it and reads the bound addresses from it. Stderr (the logs) is kept so a test can search
//! it (for leaked secrets) and so a failing test can show it.
//!
//! Scenario tests live in `tests/e2e/tests/` and are built as test targets of the `modelgw`
//! package (see `cli/Cargo.toml`), so cargo builds the binary before running them.

// A test harness: a setup that fails should stop the test right there, saying why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Headless Chromium over WebDriver, for the console's browser tests.
pub mod browser;
/// A local nginx acting as Azure Front Door (probing `/readyz`), for rolling restarts.
pub mod front_door;
/// Open- and closed-loop client load, for the quota scenarios.
pub mod load;
/// Scrapes of `/metrics` and the metric selectors of PromQL expressions.
pub mod metrics;
/// An OTLP trace receiver, for the trace tests.
pub mod otlp;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
/// The mock regions: the same harness type and typed faults as the in-process proxy tests.
pub use modelgw_mock_openai::pki::{TestCa, TestPki};
pub use modelgw_mock_openai::{Fault, Quota, QuotaCounts, QuotaHeaders, Region};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a process may take to print its ready line (cold debug binaries on 2 cores).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const API_VERSION: &str = "2024-10-21";

/// Installs the rustls provider reqwest needs (it is built without a default one).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One running `modelgw` process.
pub struct Proc {
    pub name: String,
    child: Child,
    /// Fields of the ready line.
    pub ready: HashMap<String, String>,
    logs: Arc<Mutex<Vec<u8>>>,
    stdout: Arc<Mutex<Vec<u8>>>,
}

impl Proc {
    /// Everything the process wrote to stderr so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().expect("log buffer")).into_owned()
    }

    /// Everything the process wrote to stdout so far (ready line included).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("stdout buffer")).into_owned()
    }

    pub fn field(&self, key: &str) -> &str {
        self.ready
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{} ready line has no {key}", self.name))
    }

    /// The URL of the process's `/metrics`, from the `metrics` field of its ready line.
    pub fn metrics_url(&self) -> String {
        let addr = address_of(self.field("metrics"));
        let addr = addr.split('/').next().unwrap_or_default();
        format!("http://{addr}/metrics")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then the exit status, which must come within `within` (else SIGKILL and an
    /// error): for scenarios that check a graceful exit.
    pub async fn terminate(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("{} did not exit within {within:?} of SIGTERM", self.name)
            }
        }
    }

    /// SIGKILL (no chance to clean up), and wait for the exit.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then wait for the exit (SIGKILL after 10 s).
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("----- {} stderr -----\n{}", self.name, self.logs());
        }
    }
}

/// Spawns `bin args…` with `env`, waits for its ready line.
pub async fn spawn(
    bin: &Path,
    name: &str,
    args: &[&str],
    env: &[(&str, String)],
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env_remove("MODELGW_ADMIN_TOKEN")
        .env_remove("MODELGW_MASTER_KEY")
        .env_remove("MODELGW_DATABASE_URL")
        .env_remove("MODELGW_DATA_PLANE_TOKEN")
        .env_remove("MODELGW_SNAPSHOT_FILE")
        .env_remove("MODELGW_SNAPSHOT_KEY")
        // Every upstream of the scenarios is a mock on 127.0.0.1.
        .env("MODELGW_ALLOW_LOOPBACK_UPSTREAMS", "true")
        // Metrics listeners on free ports: the defaults (4003, 4004) would collide between
        // the processes of one scenario and between scenarios running at once.
        .env("MODELGW_METRICS_ADDR", "127.0.0.1:0")
        .env("MODELGW_CONTROL_PLANE_METRICS_ADDR", "127.0.0.1:0")
        .env("MODELGW_LOG_FORMAT", "text")
        .env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("spawning {}", bin.display()))?;

    let logs = Arc::new(Mutex::new(Vec::new()));
    let mut stderr = child.stderr.take().context("stderr")?;
    let sink = logs.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().expect("log buffer").extend_from_slice(&buf[..n]);
        }
    });

    let out = Arc::new(Mutex::new(Vec::new()));
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let prefix = "ready:";
    let deadline = Instant::now() + READY_TIMEOUT;
    let ready = loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line()).await;
        match line {
            Ok(Ok(Some(line))) => {
                out.lock()
                    .expect("stdout buffer")
                    .extend_from_slice(format!("{line}\n").as_bytes());
                if line.starts_with("modelgw ")
                    && let Some((_, fields)) = line.split_once(prefix)
                {
                    break fields
                        .split_whitespace()
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect::<HashMap<_, _>>();
                }
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                let _ = child.wait().await;
                bail!(
                    "{name} exited before it was ready:\n{}",
                    String::from_utf8_lossy(&logs.lock().expect("log"))
                );
            }
            Err(_) => bail!(
                "{name} not ready within {READY_TIMEOUT:?}:\n{}",
                String::from_utf8_lossy(&logs.lock().expect("log"))
            ),
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    let sink = out.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().expect("stdout buffer").extend_from_slice(format!("{line}\n").as_bytes());
        }
    });
    Ok(Proc { name: name.to_owned(), child, ready, logs, stdout: out })
}

/// The admin API of a control plane, as internal tooling calls it.
#[derive(Clone)]
pub struct Admin {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(base: &str, token: &str) -> Admin {
        Admin { base: base.to_owned(), token: token.to_owned(), http: reqwest::Client::new() }
    }

    /// Sends a request; returns status and body (JSON, or the text as a JSON string).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req =
            self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    async fn expect(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.call(method, path, body).await?;
        anyhow::ensure!(status == want, "{method} {path}: expected {want}, got {status}: {body}");
        Ok(body)
    }

    pub async fn create_endpoint(&self, name: &str, region: &Region) -> anyhow::Result<String> {
        let v = self
            .expect(
                "POST",
                "/api/v1/inference-endpoints",
                Some(json!({
                    "name": name,
                    "platform": "azure_openai",
                    "endpoint": region.url(),
                    "deployment": region.deployment,
                    "model_name": "gpt-4o-mini",
                    "model_version": "2024-07-18",
                    "region": region.display,
                    "api_key": region.key,
                })),
                201,
            )
            .await?;
        Ok(v["id"].as_str().context("endpoint id")?.to_owned())
    }

    pub async fn create_gateway(
        &self,
        name: &str,
        endpoint_ids: &[String],
    ) -> anyhow::Result<String> {
        let members: Vec<Value> = endpoint_ids
            .iter()
            .map(|id| json!({"endpoint_id": id, "enabled": true, "priority": 0, "weight": 1}))
            .collect();
        let v = self
            .expect(
                "POST",
                "/api/v1/gateways",
                Some(json!({"name": name, "endpoints": members})),
                201,
            )
            .await?;
        Ok(v["id"].as_str().context("gateway id")?.to_owned())
    }

    /// Returns the key secret (shown only at creation).
    pub async fn create_key(&self, gateway_id: &str) -> anyhow::Result<String> {
        let v = self
            .expect(
                "POST",
                &format!("/api/v1/gateways/{gateway_id}/keys"),
                Some(json!({"name": "test"})),
                201,
            )
            .await?;
        Ok(v["key"].as_str().context("key")?.to_owned())
    }

    pub async fn status(&self) -> anyhow::Result<Value> {
        self.expect("GET", "/api/v1/status", None, 200).await
    }

    pub async fn config_version(&self) -> anyhow::Result<u64> {
        self.status().await?["config_version"].as_u64().context("config_version")
    }

    /// Waits until every named data plane reports `applied_version >= version`; returns how long it took.
    pub async fn wait_for_applied(
        &self,
        nodes: &[&str],
        version: u64,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let status = self.status().await?;
            let planes = status["data_planes"].as_array().cloned().unwrap_or_default();
            let done = nodes.iter().all(|n| {
                planes.iter().any(|p| {
                    p["node_id"] == *n
                        && p["connected"] == true
                        && p["applied_version"].as_u64() >= Some(version)
                })
            });
            if done {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!(
                    "data planes {nodes:?} did not apply version {version} within {within:?}: {status}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A whole deployment on this machine: one control plane, data planes, mock regions.
pub struct Cluster {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub admin_token: String,
    pub control_plane: Option<Proc>,
    pub grpc_addr: String,
    pub admin_addr: String,
    pub data_planes: Vec<Proc>,
    pub regions: Vec<Region>,
    /// The `modelgw mock-azure` process of each region, in the same order.
    pub region_procs: Vec<Proc>,
    /// Extra environment for every process (e.g. RUST_LOG=debug).
    pub env: Vec<(&'static str, String)>,
    /// The CA and server certificate of the gRPC port; data planes get client certificates.
    pub pki: TestPki,
    /// Extra environment for the control plane only (e.g. `MODELGW_GATEWAY_URL`, the Azure
    /// import settings).
    pub control_plane_env: Vec<(&'static str, String)>,
    /// The control plane's database URL when not the cluster's SQLite file (a PostgreSQL
    /// database shared by replicas; `MODELGW_MASTER_KEY` then goes in `control_plane_env`).
    pub database_url: Option<String>,
}

impl Cluster {
    pub fn new(bin: impl Into<PathBuf>) -> anyhow::Result<Cluster> {
        init();
        let dir = tempfile::Builder::new().prefix("modelgw-e2e-").tempdir()?;
        let pki = TestPki::write(dir.path())?;
        Ok(Cluster {
            bin: bin.into(),
            pki,
            dir,
            // At least 32 characters: the control plane refuses a shorter bootstrap token.
            admin_token: format!("mgwadm_test_{:0>32}", std::process::id()),
            control_plane: None,
            grpc_addr: "127.0.0.1:0".into(),
            admin_addr: "127.0.0.1:0".into(),
            data_planes: Vec::new(),
            regions: Vec::new(),
            region_procs: Vec::new(),
            env: Vec::new(),
            control_plane_env: Vec::new(),
            database_url: None,
        })
    }

    pub fn database_path(&self) -> PathBuf {
        self.dir.path().join("modelgw.db")
    }

    /// The control plane's database: [`Cluster::database_url`] when set (PostgreSQL), else
    /// a SQLite file in the cluster's directory.
    pub fn database(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.database_path().display()))
    }

    /// Starts (or restarts, on the same ports and database) the control plane.
    pub async fn start_control_plane(&mut self) -> anyhow::Result<()> {
        let proc =
            self.spawn_control_plane("control-plane", &self.admin_addr, &self.grpc_addr).await?;
        self.admin_addr = proc.field("admin").trim_start_matches("http://").to_owned();
        self.grpc_addr = address_of(proc.field("grpc"));
        self.control_plane = Some(proc);
        Ok(())
    }

    /// Another control-plane replica on the same database (PostgreSQL), with the same
    /// certificates and bootstrap token, on ports of its own; the caller owns the process.
    /// Its admin API is at `http://{proc.field("admin")}`, its gRPC at `proc.field("grpc")`.
    pub async fn start_replica(&self, name: &str) -> anyhow::Result<Proc> {
        self.spawn_control_plane(name, "127.0.0.1:0", "127.0.0.1:0").await
    }

    async fn spawn_control_plane(
        &self,
        name: &str,
        admin_addr: &str,
        grpc_addr: &str,
    ) -> anyhow::Result<Proc> {
        let mut env = self.env.clone();
        env.extend(self.control_plane_env.iter().cloned());
        env.extend([
            ("MODELGW_DATABASE_URL", self.database()),
            ("MODELGW_ADMIN_ADDR", admin_addr.to_owned()),
            ("MODELGW_GRPC_ADDR", grpc_addr.to_owned()),
            ("MODELGW_ADMIN_TOKEN", self.admin_token.clone()),
        ]);
        env.extend(self.control_plane_tls());
        spawn(&self.bin, name, &["control-plane"], &env).await
    }

    pub async fn stop_control_plane(&mut self) {
        if let Some(mut cp) = self.control_plane.take() {
            cp.stop().await;
        }
    }

    pub fn admin(&self) -> Admin {
        Admin::new(&format!("http://{}", self.admin_addr), &self.admin_token)
    }

    /// The control plane's TLS environment: this cluster's certificate, mTLS with its CA.
    pub fn control_plane_tls(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Path| p.display().to_string();
        vec![
            ("MODELGW_GRPC_TLS_CERT_FILE", path(&self.pki.server_cert_file)),
            ("MODELGW_GRPC_TLS_KEY_FILE", path(&self.pki.server_key_file)),
            ("MODELGW_GRPC_CLIENT_CA_FILE", path(&self.pki.ca_file)),
        ]
    }

    /// A data plane's TLS environment: trust this cluster's CA, and a client certificate
    /// naming `node_id`.
    pub fn data_plane_tls(&self, node_id: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
        let (cert, key) = self.pki.client_files(node_id)?;
        Ok(vec![
            ("MODELGW_CONTROL_PLANE_URL", format!("https://{}", self.grpc_addr)),
            ("MODELGW_CONTROL_PLANE_CA_FILE", self.pki.ca_file.display().to_string()),
            ("MODELGW_DATA_PLANE_CERT_FILE", cert.display().to_string()),
            ("MODELGW_DATA_PLANE_KEY_FILE", key.display().to_string()),
        ])
    }

    pub async fn start_data_plane(&mut self, node_id: &str) -> anyhow::Result<String> {
        self.start_data_plane_at(node_id, "127.0.0.1:0").await
    }

    /// A data plane whose gateway listens on `addr` (a port picked in advance, e.g. for the
    /// control plane's `MODELGW_GATEWAY_URL`).
    pub async fn start_data_plane_at(
        &mut self,
        node_id: &str,
        addr: &str,
    ) -> anyhow::Result<String> {
        // Nothing balances in front of most scenarios' data planes: a stop needs no drain
        // period (a scenario about draining sets its own in `env`, which comes later and wins).
        let mut env = vec![("MODELGW_DRAIN_PERIOD", "0s".to_owned())];
        env.extend(self.env.iter().cloned());
        env.extend([
            ("MODELGW_GATEWAY_ADDR", addr.to_owned()),
            ("MODELGW_NODE_ID", node_id.to_owned()),
        ]);
        env.extend(self.data_plane_tls(node_id)?);
        let proc =
            spawn(&self.bin, &format!("data-plane {node_id}"), &["data-plane"], &env).await?;
        let url = proc.field("gateway").to_owned();
        self.data_planes.push(proc);
        Ok(url)
    }

    pub async fn start_region(&mut self, display: &str) -> anyhow::Result<usize> {
        let api_key = format!("azkey-{}-{}", display.replace(' ', "").to_lowercase(), uuid_like());
        self.start_region_with_key(display, &api_key).await
    }

    /// A region that accepts `api_key` (e.g. the key a mock ARM account lists for it).
    pub async fn start_region_with_key(
        &mut self,
        display: &str,
        api_key: &str,
    ) -> anyhow::Result<usize> {
        let api_key = api_key.to_owned();
        let deployment = "gpt-4o-mini".to_owned();
        let mut env = self.env.clone();
        env.push(("MODELGW_MOCK_API_KEY", api_key.clone()));
        let proc = spawn(
            &self.bin,
            &format!("mock {display}"),
            &["mock-azure", "--region", display, "--deployment", &deployment],
            &env,
        )
        .await?;
        let name = format!("gpt-4o-mini-{}", display.replace(' ', "-").to_lowercase());
        self.regions.push(Region::process(
            &name,
            display,
            &deployment,
            &api_key,
            proc.field("url"),
        ));
        self.region_procs.push(proc);
        Ok(self.regions.len() - 1)
    }

    /// Starts the control plane, `n_data_planes` data planes and three regions, and configures
    /// one gateway `gpt-4o-mini` over all three with one key. Returns the key.
    pub async fn standard(&mut self, n_data_planes: usize) -> anyhow::Result<String> {
        self.with_gateway("gpt-4o-mini", n_data_planes).await
    }

    /// [`Cluster::standard`] with the gateway called `name`: a name the regions do not serve
    /// as a deployment, so a request only succeeds if the gateway rewrote its `model` (or
    /// deployment path) to the endpoint's deployment.
    pub async fn with_gateway(
        &mut self,
        name: &str,
        n_data_planes: usize,
    ) -> anyhow::Result<String> {
        self.start_control_plane().await?;
        for region in ["East US", "West Europe", "Japan East"] {
            self.start_region(region).await?;
        }
        for i in 0..n_data_planes {
            self.start_data_plane(&format!("dp-{i}")).await?;
        }
        let admin = self.admin();
        let mut ids = Vec::new();
        for r in &self.regions {
            ids.push(admin.create_endpoint(&r.name, r).await?);
        }
        let gw = admin.create_gateway(name, &ids).await?;
        let key = admin.create_key(&gw).await?;
        let version = admin.config_version().await?;
        let nodes: Vec<String> = (0..n_data_planes).map(|i| format!("dp-{i}")).collect();
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        admin.wait_for_applied(&nodes, version, Duration::from_secs(10)).await?;
        Ok(key)
    }

    pub fn gateway_url(&self, i: usize) -> &str {
        self.data_planes[i].field("gateway")
    }

    /// All logs of all processes, for secret-leak checks.
    pub fn all_logs(&self) -> String {
        let mut s = String::new();
        if let Some(cp) = &self.control_plane {
            s.push_str(&cp.logs());
            s.push_str(&cp.stdout());
        }
        for p in self.data_planes.iter().chain(&self.region_procs) {
            s.push_str(&p.logs());
            s.push_str(&p.stdout());
        }
        s
    }
}

/// A chat completion through a gateway; returns status, headers and body.
pub async fn chat(
    gateway: &str,
    key: &str,
    deployment: &str,
) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
    let res = reqwest::Client::new()
        .post(format!(
            "{gateway}/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}"
        ))
        .header("api-key", key)
        .json(&json!({"messages": [{"role": "user", "content": "Hello"}], "model": "gpt-4o-mini"}))
        .send()
        .await?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.json().await.unwrap_or(Value::Null);
    Ok((status, headers, body))
}

/// `host:port` of a URL from a ready line (`https://…` or `http://…`).
pub fn address_of(url: &str) -> String {
    url.trim_start_matches("https://").trim_start_matches("http://").to_owned()
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}
