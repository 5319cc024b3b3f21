//! Child processes and what `/proc` says about them.
//!
//! Everything the benchmark starts (nginx, `modelgw` control and data planes, `oha`) is a child
//! with `kill_on_drop`, and [`Managed`] also stops it explicitly (SIGTERM, then SIGKILL) so an
//! error or Ctrl-C never leaves a process behind. nginx masters get their workers killed too:
//! a worker outlives a SIGKILLed master.
//!
//! The measurements read `/proc/<pid>/stat` (fields 14 and 15: user and system CPU time in
//! clock ticks; field 4: parent pid) and `/proc/<pid>/status` (`VmRSS`). A process's stat
//! covers all its threads, so a multi-threaded data plane is one read; nginx is a master plus
//! worker processes, found by their parent pid.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

/// How long a `modelgw` process may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// User + system CPU time and the parent of one process, from `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    /// Field 14, clock ticks.
    pub utime: u64,
    /// Field 15, clock ticks.
    pub stime: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
/// may hold spaces or parentheses itself, so fields are counted after the LAST `)`.
pub fn parse_stat(text: &str) -> anyhow::Result<ProcStat> {
    let close = text.rfind(')').context("no ')' in /proc stat")?;
    // After ')': field 3 (state) is index 0, so field N is index N - 3.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("/proc stat has no field {n}"))?
            .parse::<u64>()
            .with_context(|| format!("/proc stat field {n} is not a number"))
    };
    Ok(ProcStat {
        ppid: u32::try_from(field(4)?).context("ppid out of range")?,
        utime: field(14)?,
        stime: field(15)?,
    })
}

/// Parses `VmRSS:  12345 kB` out of the text of `/proc/<pid>/status`; KiB.
pub fn parse_vm_rss_kib(text: &str) -> anyhow::Result<u64> {
    parse_status_kib(text, "VmRSS")
}

/// Parses `<field>:  12345 kB` (`VmRSS`, `VmHWM`, …) out of the text of `/proc/<pid>/status`;
/// KiB.
pub fn parse_status_kib(text: &str, field: &str) -> anyhow::Result<u64> {
    let line = text
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))
        .with_context(|| format!("no {field} line"))?;
    let mut parts = line[field.len() + 1..].split_whitespace();
    let value: u64 = parts
        .next()
        .with_context(|| format!("{field} has no value"))?
        .parse()
        .with_context(|| format!("{field} value"))?;
    match parts.next() {
        Some("kB") | None => Ok(value),
        Some(unit) => bail!("unexpected {field} unit {unit}"),
    }
}

pub fn stat(pid: u32) -> anyhow::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat(&text)
}

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vm_rss_kib(&text)
}

/// Peak resident memory of the process so far (`VmHWM`), KiB.
pub fn hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_status_kib(&text, "VmHWM")
}

/// CPU time of all threads of the process in nanoseconds: the first field of each
/// `/proc/<pid>/task/<tid>/schedstat` (finer than `stat`'s clock ticks; threads that ended
/// no longer count, so read it while the threads of interest live).
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("reading /proc/{pid}/task"))?;
    let mut total = 0;
    for task in dir.filter_map(Result::ok) {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        let ns = text.split_whitespace().next().context("empty schedstat")?;
        total += ns.parse::<u64>().context("schedstat run time")?;
    }
    Ok(total)
}

/// [`cpu_ns`] summed over these processes; vanished ones count as 0.
pub fn cpu_ns_of(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| cpu_ns(*p).ok()).sum()
}

/// Pids whose parent is `ppid` (e.g. an nginx master's workers).
pub fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| stat(*pid).is_ok_and(|s| s.ppid == ppid))
        .collect()
}

/// Total CPU ticks (user + system) of these processes; vanished ones count as 0.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| stat(*p).ok()).map(|s| s.utime + s.stime).sum()
}

/// Total resident memory of these processes, KiB.
pub fn total_rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|p| rss_kib(*p)).sum()
}

/// The processes' total RSS once it has stopped moving: sampled every 250 ms until four
/// samples in a row (a second) lie within 0.5 % (at least 64 KiB) of each other, or 20 s
/// have passed (then the last sample, said on stderr). jemalloc returns the pages a load
/// freed over about ten seconds; a "before" sample taken meanwhile makes a later one look
/// smaller than the memory in use.
pub async fn settled_rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    const EVERY: Duration = Duration::from_millis(250);
    const WITHIN: Duration = Duration::from_secs(20);
    let started = Instant::now();
    let mut last: Vec<u64> = Vec::new();
    loop {
        let rss = total_rss_kib(pids)?;
        last.push(rss);
        if last.len() > 4 {
            last.remove(0);
        }
        let (lo, hi) = (last.iter().min().copied(), last.iter().max().copied());
        if let (4, Some(lo), Some(hi)) = (last.len(), lo, hi)
            && hi - lo <= (hi / 200).max(64)
        {
            return Ok(rss);
        }
        if started.elapsed() > WITHIN {
            eprintln!("  RSS still moving after {WITHIN:?} ({last:?} KiB): taking {rss} KiB");
            return Ok(rss);
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux in practice).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// A free TCP port on 127.0.0.1: bound to port 0 and released (a race with other programs is
/// possible; callers retry on a bind failure).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Sends `signal` (e.g. "TERM") to `pid` with kill(1); the workspace forbids `unsafe`.
pub fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_for_port(addr: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} does not accept connections after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process that is stopped on drop (SIGTERM, a short grace, then SIGKILL; with
/// `kill_children`, the processes it forked are killed too — nginx workers).
pub struct Managed {
    pub name: String,
    child: Child,
    pid: u32,
    kill_children: bool,
}

impl Managed {
    pub fn new(name: &str, child: Child, kill_children: bool) -> anyhow::Result<Managed> {
        let pid = child.id().with_context(|| format!("{name} has no pid (exited already?)"))?;
        Ok(Managed { name: name.to_owned(), child, pid, kill_children })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process and, for nginx, its workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        if self.kill_children {
            pids.extend(children_of(self.pid));
        }
        pids
    }

    /// Fails when the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited: {status}", self.name),
            Err(e) => bail!("{}: {e}", self.name),
        }
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// SIGTERM; SIGKILL (children too) when it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        let children = if self.kill_children { children_of(self.pid) } else { Vec::new() };
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.pid, "TERM");
            if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
                let _ = self.child.kill().await;
            }
        }
        for c in children {
            if std::path::Path::new(&format!("/proc/{c}")).exists() {
                signal(c, "KILL");
            }
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        // Synchronous: an error or Ctrl-C unwinds through here without an async context.
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let children = if self.kill_children { children_of(self.pid) } else { Vec::new() };
        signal(self.pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.start_kill();
        for c in children {
            signal(c, "KILL");
        }
    }
}

/// Where a `modelgw` process's stderr (its logs) goes.
pub enum Logs<'a> {
    /// Appended to this file: nothing in the benchmark spends CPU reading it.
    File(&'a Path),
    /// Piped; take it with [`Managed::take_stderr`] and read it line by line.
    Piped,
}

/// A started `modelgw` process and the `k=v` fields of its ready line.
pub struct Modelgw {
    pub proc: Managed,
    pub ready: HashMap<String, String>,
}

impl Modelgw {
    pub fn field(&self, key: &str) -> anyhow::Result<&str> {
        self.ready
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{} ready line has no {key}", self.proc.name))
    }
}

/// The benchmark's PKI: the distribution port is TLS (mTLS) here as in production, with one
/// throwaway CA per benchmark run. Its directory lives as long as the process (a static is
/// never dropped; the files are a few KiB in the temporary directory).
struct BenchPki {
    pki: modelgw_e2e::TestPki,
    _dir: tempfile::TempDir,
}

fn bench_pki() -> anyhow::Result<&'static BenchPki> {
    static PKI: std::sync::OnceLock<Result<BenchPki, String>> = std::sync::OnceLock::new();
    let made = PKI.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("modelgw-bench-pki-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let pki = modelgw_e2e::TestPki::write(dir.path()).map_err(|e| e.to_string())?;
        Ok(BenchPki { pki, _dir: dir })
    });
    made.as_ref().map_err(|e| anyhow::anyhow!("the benchmark's test PKI: {e}"))
}

/// PEM material for a client of the distribution port: the CA to trust and an identity.
pub struct ClientIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The bench CA's certificate and a new client certificate and key naming `node_id`, in
/// memory: the identity a benchmark data plane gets as files (see [`tls_env`]), for the
/// fan-out section's in-process subscribers.
pub fn client_identity(node_id: &str) -> anyhow::Result<ClientIdentity> {
    let b = &bench_pki()?.pki;
    let issued = b.ca.client_cert(node_id)?;
    Ok(ClientIdentity {
        ca_pem: b.ca.cert_pem().to_owned(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    })
}

/// The TLS environment a `modelgw` process of the benchmark gets unless `env` chose its own:
/// the control plane serves the bench CA's certificate and requires client certificates from
/// it; a data plane trusts that CA and presents a certificate naming its `MODELGW_NODE_ID`.
fn tls_env(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Vec<(&'static str, String)>> {
    let has = |key: &str| env.iter().any(|(k, _)| *k == key);
    let path = |p: &Path| p.display().to_string();
    match args.first() {
        Some(&"control-plane")
            if !has("MODELGW_GRPC_TLS_CERT_FILE") && !has("MODELGW_INSECURE_GRPC") =>
        {
            let b = &bench_pki()?.pki;
            Ok(vec![
                ("MODELGW_GRPC_TLS_CERT_FILE", path(&b.server_cert_file)),
                ("MODELGW_GRPC_TLS_KEY_FILE", path(&b.server_key_file)),
                ("MODELGW_GRPC_CLIENT_CA_FILE", path(&b.ca_file)),
            ])
        }
        Some(&"data-plane")
            if !has("MODELGW_DATA_PLANE_CERT_FILE")
                && !has("MODELGW_DATA_PLANE_TOKEN_FILE")
                && !has("MODELGW_INSECURE_CONTROL_PLANE") =>
        {
            let b = &bench_pki()?.pki;
            let node_id =
                env.iter().find(|(k, _)| *k == "MODELGW_NODE_ID").map(|(_, v)| v.clone()).context(
                    "a benchmark data plane needs MODELGW_NODE_ID (its certificate names it)",
                )?;
            let (cert, key) = b.client_files(&node_id)?;
            Ok(vec![
                ("MODELGW_CONTROL_PLANE_CA_FILE", path(&b.ca_file)),
                ("MODELGW_DATA_PLANE_CERT_FILE", path(&cert)),
                ("MODELGW_DATA_PLANE_KEY_FILE", path(&key)),
            ])
        }
        _ => Ok(Vec::new()),
    }
}

/// Starts `modelgw <args>` with `env` (plus a clean logging setup and, for control and data
/// planes, the benchmark's TLS: see [`tls_env`]) and waits for its
/// `modelgw <component> ready: k=v …` line on stdout; stdout is drained afterwards.
pub async fn spawn_modelgw(
    bin: &Path,
    name: &str,
    args: &[&str],
    env: &[(&str, String)],
    logs: Logs<'_>,
) -> anyhow::Result<Modelgw> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .env_remove("MODELGW_ADMIN_TOKEN")
        .env_remove("MODELGW_MASTER_KEY")
        .env_remove("MODELGW_DATABASE_URL")
        .env_remove("MODELGW_DATA_PLANE_TOKEN")
        .env_remove("MODELGW_LOG")
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        // The benchmark's upstreams (nginx, mocks) listen on 127.0.0.1.
        .env("MODELGW_ALLOW_LOOPBACK_UPSTREAMS", "true")
        // Metrics on (the production default) on a free port; a run may turn them off.
        .env("MODELGW_METRICS_ADDR", "127.0.0.1:0")
        .env("MODELGW_LOG_FORMAT", "text")
        // A stopped data plane exits without its drain period: the benchmark measures serving,
        // not rolling restarts (binaries without the setting ignore it).
        .env("MODELGW_DRAIN_PERIOD", "0s")
        .env("NO_COLOR", "1");
    let log_path = match logs {
        Logs::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            cmd.stderr(Stdio::from(file));
            Some(path.to_path_buf())
        }
        Logs::Piped => {
            cmd.stderr(Stdio::piped());
            None
        }
    };
    for (k, v) in tls_env(args, env)? {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("spawning {}", bin.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut proc = Managed::new(name, child, false)?;
    let mut lines = BufReader::new(stdout).lines();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let ready = loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                if line.starts_with("modelgw ")
                    && let Some((_, fields)) = line.split_once("ready:")
                {
                    break fields
                        .split_whitespace()
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect::<HashMap<_, _>>();
                }
            }
            Ok(Ok(None) | Err(_)) => {
                let _ = proc.ensure_running();
                bail!("{name} exited before it was ready{}", log_hint(log_path.as_deref()));
            }
            Err(_) => {
                bail!("{name} not ready within {READY_TIMEOUT:?}{}", log_hint(log_path.as_deref()))
            }
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Modelgw { proc, ready })
}

/// The last lines of a log file, for an error message.
pub fn log_hint(path: Option<&Path>) -> String {
    let Some(path) = path else { return String::new() };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!(" (last lines of {}):\n{tail}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A real line with a command name holding a space and a parenthesis.
        let text = "4242 (tokio (rt) w) S 4200 4242 4200 0 -1 4194560 1234 0 0 0 \
                    731 119 0 0 20 0 3 0 123456 1000000 2500 18446744073709551615 1 1 0 0 0 \
                    0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(text).expect("parse");
        assert_eq!(s, ProcStat { ppid: 4200, utime: 731, stime: 119 });
    }

    #[test]
    fn stat_of_this_process_parses() {
        let s = stat(std::process::id()).expect("own stat");
        assert!(s.ppid > 0);
    }

    #[test]
    fn a_truncated_stat_is_an_error() {
        assert!(parse_stat("12 (x) S 1 2 3").is_err());
        assert!(parse_stat("no parenthesis").is_err());
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let text = "Name:\tmodelgw\nVmPeak:\t  99999 kB\nVmRSS:\t   18324 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(text).expect("rss"), 18324);
        assert!(parse_vm_rss_kib("Name:\tx\n").is_err());
        let text = "VmHWMx:\t1 kB\nVmHWM:\t  20480 kB\n";
        assert_eq!(parse_status_kib(text, "VmHWM").expect("hwm"), 20480);
        assert!(hwm_kib(std::process::id()).expect("own hwm") > 0);
        assert!(cpu_ns(std::process::id()).expect("own cpu") > 0);
        assert!(rss_kib(std::process::id()).expect("own rss") > 0);
    }
}
