//! Issue #15 acceptance, a highly available control plane, over real processes: two
//! control-plane replicas on the PostgreSQL server here (a fresh database per run), three data
//! planes connected across them (each given both replicas' URLs, in a different order), one
//! mock region.
//!
//! - A change through either replica is applied by every data plane within 100 ms: 100 changes
//!   (the issue: p99 over at least 30), alternating replicas, each timed from its commit (the
//!   replica's log line) to the last data plane's "snapshot applied" line (one machine, one
//!   clock); p50/p99/max printed with where the slowest change's time went, p99 asserted.
//! - One replica killed (SIGKILL: no goodbye) under steady load from clients on every data
//!   plane: zero failed requests, and its data planes are connected to the other within 5 s
//!   (printed), which then pushes them a new change.
//!
//! PostgreSQL: `MODELGW_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! a user that may create databases; `psql` creates and drops the run's database.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use modelgw_e2e::{Admin, Cluster, Proc, address_of, chat};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

/// Base64 of a fixed 32-byte master key: both replicas must seal and open with the same one.
const MASTER_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

/// The bound on applying a change everywhere (p99).
const APPLY_P99: Duration = Duration::from_millis(100);

/// Changes timed: the issue asks for p99 over at least 30; over 100 the nearest-rank p99 is
/// the 99th, so one scheduling stall of this shared 2-core machine (a single 105 ms change in
/// a CI run) is reported as the max, not taken for the p99.
const CHANGES: u64 = 100;
/// The bound on data planes moving to the surviving replica.
const FAILOVER_WITHIN: Duration = Duration::from_secs(5);

/// A database of its own on the test server, dropped when the run ends.
struct Database {
    server: String,
    name: String,
    url: String,
}

impl Database {
    fn create() -> anyhow::Result<Database> {
        let server = std::env::var("MODELGW_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("modelgw_e2e_ha_{}_{}", std::process::id(), nanos());
        psql(&server, &format!("CREATE DATABASE {name}"))?;
        let url = match server.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => bail!("MODELGW_TEST_POSTGRES_URL has no database path: {server}"),
        };
        Ok(Database { server, name, url })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(&self.server, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn psql(server: &str, sql: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("psql")
        .args([server, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .context("running psql (the PostgreSQL client) for the test database")?;
    if !out.status.success() {
        bail!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// A replica's admin API and its gRPC URL.
fn admin_of(cluster: &Cluster, replica: &Proc) -> Admin {
    Admin::new(replica.field("admin"), &cluster.admin_token)
}

fn grpc_url(replica: &Proc) -> String {
    format!("https://{}", address_of(replica.field("grpc")))
}

/// When the first log line containing `needle` was written, in seconds of its day (text logs
/// start with an RFC 3339 UTC timestamp, e.g. `2026-12-07T19:43:21.720919Z`).
fn logged_at(logs: &str, needle: &str) -> Option<f64> {
    let line = logs.lines().find(|l| l.contains(needle))?;
    let time = line.split_whitespace().next()?.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.splitn(3, ':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Whether `node` is connected to the replica behind `admin`.
async fn connected_to(admin: &Admin, node: &str) -> bool {
    let Ok(status) = admin.status().await else { return false };
    status["data_planes"]
        .as_array()
        .is_some_and(|planes| planes.iter().any(|p| p["node_id"] == node && p["connected"] == true))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::print_stdout,
    reason = "the propagation and failover figures are this test's report"
)]
async fn two_replicas_on_postgres_apply_every_change_everywhere_fast_and_survive_a_kill()
-> anyhow::Result<()> {
    let db = Database::create()?;
    let mut cluster = Cluster::new(BIN)?;
    cluster.database_url = Some(db.url.clone());
    cluster.control_plane_env.push(("MODELGW_MASTER_KEY", MASTER_KEY.to_owned()));
    let mut a = cluster.start_replica("control-plane A").await?;
    let b = cluster.start_replica("control-plane B").await?;
    let (admin_a, admin_b) = (admin_of(&cluster, &a), admin_of(&cluster, &b));
    let (url_a, url_b) = (grpc_url(&a), grpc_url(&b));

    // dp-0 and dp-2 start on A, dp-1 on B; each knows both.
    let nodes = ["dp-0", "dp-1", "dp-2"];
    for (i, node) in nodes.iter().enumerate() {
        let urls = if i == 1 { format!("{url_b},{url_a}") } else { format!("{url_a},{url_b}") };
        let mut env = cluster.env.clone();
        env.extend([
            ("MODELGW_GATEWAY_ADDR", "127.0.0.1:0".to_owned()),
            ("MODELGW_NODE_ID", (*node).to_owned()),
        ]);
        env.extend(cluster.data_plane_tls(node)?);
        env.push(("MODELGW_CONTROL_PLANE_URL", urls));
        let proc =
            modelgw_e2e::spawn(&cluster.bin, &format!("data-plane {node}"), &["data-plane"], &env)
                .await?;
        cluster.data_planes.push(proc);
    }
    let region = cluster.start_region("East US").await?;
    let endpoint = admin_a.create_endpoint("east", &cluster.regions[region]).await?;
    let gateway = admin_a.create_gateway("gpt-4o-mini", &[endpoint]).await?;
    let key = admin_b.create_key(&gateway).await?;
    let version = admin_a.config_version().await?;
    admin_a.wait_for_applied(&["dp-0", "dp-2"], version, Duration::from_secs(10)).await?;
    admin_b.wait_for_applied(&["dp-1"], version, Duration::from_secs(10)).await?;

    // --- CHANGES changes, alternating replicas, each timed from its commit (the replica's
    // "config change committed" line) to the last data plane's "snapshot applied" line: one
    // clock, the log's, so the harness's own calls are not counted.
    let mut took: Vec<(Duration, String)> = Vec::new();
    for i in 0..CHANGES {
        let (admin, replica, other) =
            if i % 2 == 0 { (&admin_a, &a, &b) } else { (&admin_b, &b, &a) };
        let body = json!({"routing": {"request_timeout_ms": 30_000 + i * 1_000}});
        let (status, reply) =
            admin.call("PATCH", &format!("/api/v1/gateways/{gateway}"), Some(body)).await?;
        anyhow::ensure!(status == 200, "PATCH {i}: {status} {reply}");
        let version = admin.config_version().await?;
        let committed = format!("config change committed config_version={version} ");
        let published = format!("snapshot published config_version={version} ");
        let applied = format!("snapshot applied version={version} ");
        let started = Instant::now();
        let (at, story) = loop {
            let commit = logged_at(&replica.logs(), &committed);
            let applies: Vec<Option<f64>> =
                cluster.data_planes.iter().map(|dp| logged_at(&dp.logs(), &applied)).collect();
            if let (Some(commit), true) = (commit, applies.iter().all(Option::is_some)) {
                // Across midnight the seconds of the day wrap.
                let since = |t: f64| {
                    let d = t - commit;
                    if d < -43_200.0 { d + 86_400.0 } else { d }
                };
                let last = applies.iter().flatten().map(|t| since(*t)).fold(f64::MIN, f64::max);
                // Where the time went, for the slowest change's report.
                let ms =
                    |t: Option<f64>| t.map_or("-".to_owned(), |t| format!("{:.1}", since(t) * 1e3));
                let story = format!(
                    "change {i} (version {version}) through {}: published there +{} ms, by the other replica +{} ms, applied by {} ms",
                    if i % 2 == 0 { "A" } else { "B" },
                    ms(logged_at(&replica.logs(), &published)),
                    ms(logged_at(&other.logs(), &published)),
                    nodes
                        .iter()
                        .zip(&applies)
                        .map(|(n, t)| format!("{n} +{}", ms(*t)))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                break (last, story);
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("change {i} (version {version}) not applied everywhere within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        took.push((Duration::from_secs_f64(at.max(0.0)), story));
    }
    took.sort_by_key(|(d, _)| *d);
    let times: Vec<Duration> = took.iter().map(|(d, _)| *d).collect();
    let (p50, p99, max) =
        (percentile(&times, 0.5), percentile(&times, 0.99), times[times.len() - 1]);
    println!(
        "{CHANGES} changes through alternating replicas, commit to applied by all 3 data planes: p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    let slowest = &took[took.len() - 1].1;
    println!("the slowest: {slowest}");
    assert!(p99 <= APPLY_P99, "p99 {p99:?} over {APPLY_P99:?}: {times:?}; the slowest: {slowest}");

    // --- Steady load on every data plane; kill A; its data planes move to B.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for i in 0..cluster.data_planes.len() * 2 {
        let gateway_url = cluster.gateway_url(i % 3).to_owned();
        let (key, stop, ok, failed) = (key.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match chat(&gateway_url, &key, "gpt-4o-mini").await {
                    Ok((200, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok((status, _, body)) => {
                        errors.push(format!("{gateway_url}: {status} {body}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        errors.push(format!("{gateway_url}: {e:#}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        }));
    }
    // Load running before the kill.
    let warm = Instant::now();
    while ok.load(Ordering::Relaxed) < 50 && warm.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.kill().await;
    let killed = Instant::now();
    let mut moved = Vec::new();
    for node in ["dp-0", "dp-2"] {
        loop {
            if connected_to(&admin_b, node).await {
                moved.push((node, killed.elapsed()));
                break;
            }
            if killed.elapsed() > FAILOVER_WITHIN * 2 {
                bail!(
                    "{node} not connected to replica B {:?} after A was killed",
                    killed.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("after replica A was killed, connected to B: {moved:?}");
    // A change through the survivor reaches everyone, then a little more load.
    let body = json!({"routing": {"request_timeout_ms": 20_000}});
    let (status, reply) =
        admin_b.call("PATCH", &format!("/api/v1/gateways/{gateway}"), Some(body)).await?;
    anyhow::ensure!(status == 200, "PATCH through B: {status} {reply}");
    let version = admin_b.config_version().await?;
    admin_b.wait_for_applied(&nodes, version, Duration::from_secs(5)).await?;
    let served_before = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < served_before + 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for client in clients {
        errors.extend(client.await?);
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("load across the kill: {ok} requests served, {failed} failed");
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    for (node, after) in &moved {
        assert!(*after <= FAILOVER_WITHIN, "{node} moved to B after {after:?}");
    }
    drop(b);
    Ok(())
}
