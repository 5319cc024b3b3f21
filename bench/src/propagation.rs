//! The propagation section: how fast a configuration change reaches a fleet.
//!
//! A separate control plane and 50 `modelgw data-plane` processes (`sub-00` … `sub-49`, JSON
//! logs piped to the benchmark) with one endpoint and one gateway. Then K changes, one at a
//! time: t0 is taken just before the admin API call (a PATCH of the gateway's member weight,
//! alternating), the new version is the status's `config_version` after it, and a
//! subscriber's latency is when the benchmark reads its `snapshot applied` line for that
//! version (or a newer one) minus t0 — admin API, store commit, snapshot build, gRPC push,
//! decode, validate, compile, swap and the log line included. Per change, the slowest of the
//! 50 is "all applied". At the end `/api/v1/status` must list 50 connected data planes on the
//! last version.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use modelgw_e2e::Admin;
use serde_json::json;

use crate::events::{EventLog, first_at_least};
use crate::fixture::{self, random_token};
use crate::procs::{Logs, Modelgw};
use crate::stats::{every_latency, percentile, slowest_per_push};

const APPLIED: &str = "snapshot applied";

/// Data planes started at once (each waits for its ready line).
const START_BATCH: usize = 10;

#[derive(Clone, Debug, Default)]
pub struct PropagationResults {
    pub subscribers: usize,
    /// Per change: (version, latency of each subscriber).
    pub changes: Vec<(u64, Vec<Duration>)>,
    /// How long starting the subscribers and applying the first configuration took.
    pub startup: Duration,
}

impl PropagationResults {
    /// Every subscriber's latency of every change, seconds.
    pub fn per_subscriber(&self) -> Vec<f64> {
        every_latency(self.changes.iter().map(|(_, l)| l.as_slice()))
    }

    /// Per change, the slowest subscriber, seconds.
    pub fn all_applied(&self) -> Vec<f64> {
        slowest_per_push(self.changes.iter().map(|(_, l)| l.as_slice()))
    }

    pub fn all_applied_p99(&self) -> Option<f64> {
        percentile(&self.all_applied(), 0.99)
    }
}

pub async fn run(
    bin: &Path,
    dir: &Path,
    subscribers: usize,
    changes: usize,
) -> anyhow::Result<PropagationResults> {
    let started = Instant::now();
    let token = random_token("mgwadm_bench_")?;
    let (mut cp, admin) = fixture::start_control_plane(
        bin,
        dir,
        "propagation.db",
        &token,
        &[],
        Logs::File(&dir.join("propagation-control-plane.log")),
    )
    .await?;
    let grpc = cp.field("grpc")?.to_owned();
    let log = EventLog::default();
    let mut subs: Vec<Modelgw> = Vec::with_capacity(subscribers);
    let names: Vec<String> = (0..subscribers).map(|i| format!("sub-{i:02}")).collect();
    let result = async {
        for batch in names.chunks(START_BATCH) {
            let json = [("MODELGW_LOG_FORMAT", "json".to_owned())];
            let batch_started = futures::future::join_all(
                batch.iter().map(|n| fixture::start_data_plane(bin, &grpc, n, &json, Logs::Piped)),
            )
            .await;
            for dp in batch_started {
                let mut dp = dp?;
                let stderr = dp.proc.take_stderr().context("data-plane stderr")?;
                log.watch(subs.len(), stderr, &[APPLIED]);
                subs.push(dp);
            }
        }
        let node_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let endpoint = fixture::create_endpoint(
            &admin,
            "propagation-eastus",
            "http://127.0.0.1:9",
            "chat",
            "East US",
        )
        .await?;
        let gateway = admin.create_gateway("propagation", std::slice::from_ref(&endpoint)).await?;
        let version = admin.config_version().await?;
        admin.wait_for_applied(&node_refs, version, Duration::from_secs(30)).await?;
        let startup = started.elapsed();

        let mut results =
            PropagationResults { subscribers, changes: Vec::with_capacity(changes), startup };
        for k in 0..changes {
            let weight = if k % 2 == 0 { 2 } else { 1 };
            let t0 = Instant::now();
            let (status, body) = admin
                .call(
                    "PATCH",
                    &format!("/api/v1/gateways/{gateway}"),
                    Some(json!({"endpoints": [{"endpoint_id": endpoint, "weight": weight}]})),
                )
                .await?;
            ensure!(status == 200, "PATCH gateway: {status} {body}");
            let version = admin.config_version().await?;
            let latencies = log
                .wait_for(
                    Duration::from_secs(10),
                    &format!("all {subscribers} data planes to apply version {version}"),
                    |events| {
                        (0..subscribers)
                            .map(|s| {
                                first_at_least(events, s, APPLIED, "version", version)
                                    .map(|e| e.at.saturating_duration_since(t0))
                            })
                            .collect::<Option<Vec<_>>>()
                    },
                )
                .await?;
            results.changes.push((version, latencies));
            // Let the fleet settle (ACKs, logs) so changes do not overlap.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        check_status(&admin, &names, results.changes.last().map(|c| c.0)).await?;
        anyhow::Ok(results)
    }
    .await;
    futures::future::join_all(subs.iter_mut().map(|s| s.proc.stop(Duration::from_secs(5)))).await;
    cp.proc.stop(Duration::from_secs(5)).await;
    result
}

/// `/api/v1/status` lists every subscriber, connected, on the last version.
async fn check_status(admin: &Admin, names: &[String], last: Option<u64>) -> anyhow::Result<()> {
    let Some(last) = last else { return Ok(()) };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    admin.wait_for_applied(&refs, last, Duration::from_secs(10)).await?;
    let status = admin.status().await?;
    let planes = status["data_planes"].as_array().cloned().unwrap_or_default();
    let on_last = planes
        .iter()
        .filter(|p| {
            p["connected"] == true
                && p["applied_version"].as_u64() == Some(last)
                && p["node_id"].as_str().is_some_and(|n| names.iter().any(|m| m == n))
        })
        .count();
    ensure!(
        on_last == names.len(),
        "status lists {on_last} of {} data planes connected on version {last}",
        names.len()
    );
    Ok(())
}
