//! A local nginx acting as Azure Front Door in front of data planes, for the rolling-restart
//! scenario.
//!
//! Open-source nginx has no active health checks (that is nginx Plus), so the probe is
//! emulated the way Front Door does it: [`Prober`] polls each origin's `/readyz` every
//! [`PROBE_INTERVAL`]; when one fails it rewrites the upstream with that server marked `down`
//! and reloads nginx (`nginx -p <prefix> -c <conf> -s reload`: old workers finish what they
//! relay, streams included, new ones use the new upstream); when it passes again the server is
//! added back. `proxy_next_upstream error timeout` retries a request whose connection was
//! refused before anything was sent (POST included: nothing reached the origin), as Front Door
//! retries another origin.
//!
//! nginx runs as this test's child, in the foreground, from its own prefix directory and
//! listening on 127.0.0.1 on a free port; run as root, its workers switch to `nobody`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// How often the emulated Front Door probes each origin: faster than Front Door's smallest
/// interval (5 s) so the scenario runs in seconds, with the same logic.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// A probe that takes longer counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The nginx binary: found, or installed from Debian (`nginx-light`, as `bench/run.sh` does)
/// when running as root. `Err` says why there is none.
pub fn ensure_nginx() -> Result<PathBuf, String> {
    if let Some(found) = find_nginx() {
        return Ok(found);
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Err(
            "nginx is not installed and this is not root (apt-get install nginx-light)".to_owned()
        );
    }
    eprintln!("front door: installing nginx-light");
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("apt-get: {e}"))
            .and_then(|s| if s.success() { Ok(()) } else { Err(format!("apt-get {args:?}: {s}")) })
    };
    apt(&["update", "-qq"])?;
    apt(&["install", "-y", "-qq", "--no-install-recommends", "nginx-light"])?;
    find_nginx().ok_or_else(|| "nginx-light installed but no nginx binary found".to_owned())
}

fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A running nginx proxying to a set of origins.
pub struct Nginx {
    bin: PathBuf,
    prefix: tempfile::TempDir,
    child: Child,
    /// The address clients call.
    pub addr: String,
    origins: Vec<String>,
    /// Reloads so far.
    pub reloads: u32,
}

impl Nginx {
    /// Starts nginx on a free 127.0.0.1 port in front of `origins` (`host:port` each), all up.
    pub async fn start(bin: &Path, origins: &[String]) -> anyhow::Result<Nginx> {
        let prefix = tempfile::Builder::new().prefix("modelgw-frontdoor-").tempdir()?;
        // Workers (as `nobody` when run as root) reach their temp directories under it.
        set_mode(prefix.path(), 0o755)?;
        for dir in ["client_body", "proxy", "logs"] {
            let path = prefix.path().join(dir);
            std::fs::create_dir_all(&path)?;
            set_mode(&path, 0o777)?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let conf = prefix.path().join("nginx.conf");
        write_config(prefix.path(), &addr, origins, &vec![true; origins.len()])?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning nginx")?;
        let mut nginx = Nginx {
            bin: bin.to_owned(),
            prefix,
            child,
            addr,
            origins: origins.to_vec(),
            reloads: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&nginx.addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not listen on {} within 10 s:\n{}", nginx.addr, nginx.error_log());
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                bail!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(nginx)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn conf(&self) -> PathBuf {
        self.prefix.path().join("nginx.conf")
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("logs/error.log")).unwrap_or_default()
    }

    /// Rewrites the upstream and reloads nginx (old workers finish what they relay).
    pub fn apply(&mut self, up: &[bool]) -> anyhow::Result<()> {
        write_config(self.prefix.path(), &self.addr, &self.origins, up)?;
        let status = std::process::Command::new(&self.bin)
            .arg("-p")
            .arg(self.prefix.path())
            .arg("-c")
            .arg(self.conf())
            .args(["-s", "reload"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("nginx -s reload: {status}\n{}", self.error_log());
        }
        self.reloads += 1;
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (a SIGKILL would leave them running).
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
    }
}

/// Writes the configuration with origin `i` up when `up[i]`.
fn write_config(prefix: &Path, addr: &str, origins: &[String], up: &[bool]) -> anyhow::Result<()> {
    let dir = prefix.display().to_string();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let user = if root { "user nobody nogroup;" } else { "" };
    let servers: String = origins
        .iter()
        .zip(up)
        .map(|(origin, up)| {
            // No passive marking (max_fails=0): the prober alone decides, as Front Door's
            // probe does; a refused connection is still retried on the next origin.
            let down = if *up { "" } else { " down" };
            format!("        server {origin} max_fails=0{down};\n")
        })
        .collect();
    let conf = format!(
        r#"# Written by the e2e harness: a local stand-in for Azure Front Door.
{user}
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log notice;
events {{ worker_connections 1024; }}
http {{
access_log {dir}/logs/access.log;
client_body_temp_path {dir}/client_body;
proxy_temp_path {dir}/proxy;
upstream data_planes {{
{servers}        keepalive 16;
}}
server {{
    listen {addr};
    location / {{
        proxy_pass http://data_planes;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        # Streams are relayed as they come.
        proxy_buffering off;
        proxy_request_buffering on;
        proxy_read_timeout 60s;
        proxy_connect_timeout 2s;
        # Another origin when the connection failed before the request was sent (POST
        # included), as Front Door retries.
        proxy_next_upstream error timeout;
        proxy_next_upstream_tries 3;
    }}
}}
}}
"#,
    );
    std::fs::write(prefix.join("nginx.conf"), conf)?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// One probe's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// 200.
    Ready,
    /// Answered, but not 200 (a draining data plane's 503).
    NotReady,
    /// No answer: refused, reset or too slow.
    Unreachable,
}

/// A change the prober applied to nginx.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    pub origin: usize,
    pub up: bool,
    /// The probe that caused it.
    pub probe: Probe,
    pub at: Instant,
}

/// What the prober saw and did.
#[derive(Debug, Default)]
pub struct ProbeLog {
    /// Per origin: currently marked up.
    pub up: Vec<bool>,
    /// Every change applied to nginx, in order.
    pub changes: Vec<Change>,
}

/// Polls every origin's `/readyz` and keeps nginx's upstream in step.
pub struct Prober {
    pub log: Arc<Mutex<ProbeLog>>,
    task: tokio::task::JoinHandle<anyhow::Result<Nginx>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Prober {
    /// Probes the origins of `nginx` (their `http://host:port` URLs, same order).
    pub fn start(mut nginx: Nginx, origins: Vec<String>) -> Prober {
        let log =
            Arc::new(Mutex::new(ProbeLog { up: vec![true; origins.len()], changes: Vec::new() }));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let shared = Arc::clone(&log);
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(PROBE_TIMEOUT)
                .pool_max_idle_per_host(0)
                .build()?;
            let mut ticker = tokio::time::interval(PROBE_INTERVAL);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.changed() => return Ok(nginx),
                }
                let probes = origins.iter().map(|o| {
                    let http = http.clone();
                    async move {
                        match http.get(format!("{o}/readyz")).send().await {
                            Ok(r) if r.status() == 200 => Probe::Ready,
                            Ok(_) => Probe::NotReady,
                            Err(_) => Probe::Unreachable,
                        }
                    }
                });
                let seen = futures::future::join_all(probes).await;
                let up: Vec<bool> = seen.iter().map(|p| *p == Probe::Ready).collect();
                let current = shared.lock().expect("probe log").up.clone();
                if up != current {
                    nginx.apply(&up)?;
                    let at = Instant::now();
                    let mut log = shared.lock().expect("probe log");
                    for (origin, (was, is)) in current.iter().zip(&up).enumerate() {
                        if was != is {
                            log.changes.push(Change { origin, up: *is, probe: seen[origin], at });
                        }
                    }
                    log.up = up;
                }
            }
        });
        Prober { log, task, stop }
    }

    /// Is origin `i` marked up?
    pub fn is_up(&self, i: usize) -> bool {
        self.log.lock().expect("probe log").up[i]
    }

    /// Waits until origin `i` is marked `up` (or not) in nginx.
    pub async fn wait_for(&self, i: usize, up: bool, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while self.is_up(i) != up {
            if Instant::now() > deadline || self.task.is_finished() {
                bail!("origin {i} not marked up={up} within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops probing; returns nginx (still running).
    pub async fn stop(self) -> anyhow::Result<Nginx> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}
