//! The load section, driven by `oha`: for each round, for each scenario, floor → nginx →
//! the gateway rows in turn (so machine noise hits every row alike), then per metric the
//! median over rounds.
//!
//! - **throughput**: 64 connections, closed loop, as fast as the row answers; requests/s, and
//!   the CPU time the proxy spent per request (utime+stime from `/proc` before and after,
//!   divided by the requests completed). Every request must succeed. Every row runs here,
//!   the rows that add one optional feature each too ([`Row::FEATURES`]): each feature's own
//!   cost is its row's CPU per request minus the row it adds to, in the same round.
//! - **latency at 8 connections**, closed loop: p50 and p99 — the cost of the hop when the
//!   machine is not saturated.
//! - **fixed rate**: 1,000 requests/s over 8 connections with latency correction (no
//!   coordinated omission): p50 and p99 at a load well under every row's capacity.
//!
//! A proxy's *added* latency is its percentile minus the floor's in the same round and
//! scenario; the gateway is judged by its ratios to nginx.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use tokio::process::Command;

use crate::fixture::{Fixture, REQUEST_BODY, Row, Target};
use crate::procs;
use crate::stats::median;

/// One oha scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// `-c 64`, closed loop.
    Throughput,
    /// `-c 8`, closed loop.
    Conns8,
    /// `-q 1000 -c 8 --latency-correction`.
    FixedRate,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Throughput, Scenario::Conns8, Scenario::FixedRate];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "64 conns",
            Scenario::Conns8 => "8 conns",
            Scenario::FixedRate => "1000 req/s",
        }
    }

    fn args(self) -> Vec<String> {
        match self {
            Scenario::Throughput => vec!["-c".into(), "64".into()],
            Scenario::Conns8 => vec!["-c".into(), "8".into()],
            Scenario::FixedRate => vec![
                "-c".into(),
                "8".into(),
                "-q".into(),
                "1000".into(),
                "--latency-correction".into(),
            ],
        }
    }
}

/// What the benchmark reads from oha's JSON output.
#[derive(Clone, Debug, PartialEq)]
pub struct OhaResult {
    /// Seconds the run took.
    pub total_secs: f64,
    /// Successful responses (any status) per second.
    pub rps: f64,
    /// Responses received, by status code.
    pub status: BTreeMap<u16, u64>,
    /// Failed requests by reason, without the ones oha aborted at its own deadline (`-z`).
    pub errors: BTreeMap<String, u64>,
    /// Latency percentiles, seconds.
    pub p50: f64,
    pub p99: f64,
}

impl OhaResult {
    /// Responses received.
    pub fn completed(&self) -> u64 {
        self.status.values().sum()
    }

    /// Responses with status 200.
    pub fn ok(&self) -> u64 {
        self.status.get(&200).copied().unwrap_or(0)
    }

    /// Fraction of requests answered 200 (aborts at the deadline excluded).
    pub fn success_rate(&self) -> f64 {
        let all = self.completed() + self.errors.values().sum::<u64>();
        if all == 0 { 0.0 } else { self.ok() as f64 / all as f64 }
    }

    /// What went wrong, for an error message: non-200 statuses and errors.
    pub fn failures(&self) -> String {
        let mut parts: Vec<String> = self
            .status
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(s, n)| format!("{n}× status {s}"))
            .collect();
        parts.extend(self.errors.iter().map(|(e, n)| format!("{n}× {e}")));
        parts.join(", ")
    }
}

/// oha's message for requests cut off by `-z` (not a failure of the server).
const DEADLINE_ERROR: &str = "aborted due to deadline";

/// Parses the output of `oha --output-format json` (oha 1.x: `summary.total` in seconds,
/// `latencyPercentiles` in seconds, `statusCodeDistribution`, `errorDistribution`).
pub fn parse_oha_json(text: &str) -> anyhow::Result<OhaResult> {
    #[derive(Deserialize)]
    struct Summary {
        total: f64,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Out {
        summary: Summary,
        latency_percentiles: BTreeMap<String, Option<f64>>,
        status_code_distribution: BTreeMap<String, u64>,
        error_distribution: BTreeMap<String, u64>,
    }
    let out: Out = serde_json::from_str(text).context("oha JSON output")?;
    let status = out
        .status_code_distribution
        .iter()
        .map(|(k, v)| Ok((k.parse::<u16>().with_context(|| format!("status code {k}"))?, *v)))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let errors: BTreeMap<String, u64> =
        out.error_distribution.into_iter().filter(|(k, _)| k != DEADLINE_ERROR).collect();
    let pct = |k: &str| -> anyhow::Result<f64> {
        out.latency_percentiles
            .get(k)
            .copied()
            .flatten()
            .with_context(|| format!("oha output has no latency {k} (no successful request?)"))
    };
    ensure!(out.summary.total > 0.0, "oha ran for no time");
    let completed: u64 = status.values().sum();
    Ok(OhaResult {
        total_secs: out.summary.total,
        rps: completed as f64 / out.summary.total,
        p50: pct("p50")?,
        p99: pct("p99")?,
        status,
        errors,
    })
}

/// Runs oha against the row's chat URL; bounded by `duration` plus a margin.
pub async fn run_oha(
    oha: &Path,
    target: &Target,
    scenario: Scenario,
    duration: Duration,
) -> anyhow::Result<OhaResult> {
    let mut cmd = Command::new(oha);
    cmd.arg("--no-tui")
        .arg("--output-format")
        .arg("json")
        .arg("-z")
        .arg(format!("{}ms", duration.as_millis()))
        .args(scenario.args())
        .arg("-m")
        .arg("POST")
        .arg("-d")
        .arg(REQUEST_BODY)
        .arg("-H")
        .arg("content-type: application/json")
        .arg("-H")
        .arg(format!("api-key: {}", target.chat_key))
        .arg(&target.chat_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("spawning {}", oha.display()))?;
    let out = tokio::time::timeout(duration + Duration::from_secs(30), child.wait_with_output())
        .await
        .context("oha did not finish in time")??;
    if !out.status.success() {
        bail!("oha failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    parse_oha_json(&String::from_utf8_lossy(&out.stdout))
}

/// One oha run of one row in one round.
#[derive(Clone, Debug)]
pub struct Run {
    pub round: usize,
    pub row: Row,
    pub scenario: Scenario,
    pub result: OhaResult,
    /// CPU time of the row's processes per completed request, seconds: at 64 connections from
    /// `/proc/<pid>/stat` (clock ticks), at 1,000 req/s from the threads' `schedstat`
    /// (nanoseconds: that run's CPU time is a few dozen ticks); `None` at 8 connections.
    pub cpu_per_req: Option<f64>,
    /// The control plane's CPU time per completed request over the same run, seconds (it
    /// stores the traced rows' traces and every row's usage reports); same scenarios.
    pub control_plane_cpu_per_req: Option<f64>,
    /// Traces the data plane's full queue dropped during the run (traced rows only).
    pub traces_dropped: Option<u64>,
}

/// What the key limits and traces of the rows with them did over the whole section (counters of
/// the data plane and the control plane, differences from the section's start).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyedCounts {
    /// Requests the rows with limits or traces sent (warm-ups included).
    pub requests: u64,
    /// Admitted without a grant (fail-open): not checked against a lease.
    pub fail_open: u64,
    /// Refused by a limit (any reason).
    pub refused: u64,
    /// Dropped by the data plane's full trace queue.
    pub traces_dropped: u64,
    /// Received and stored by the control plane, and dropped there (writer behind).
    pub traces_received: u64,
    pub traces_stored: u64,
    pub traces_dropped_by_control_plane: u64,
}

/// Every run of the section.
#[derive(Clone, Debug, Default)]
pub struct LoadResults {
    pub runs: Vec<Run>,
    pub rounds: usize,
    pub duration: Duration,
    /// The limits and traces of the rows with them over the section.
    pub keyed: Option<KeyedCounts>,
}

/// Median-over-rounds figures of one row.
#[derive(Clone, Debug, Default)]
pub struct RowSummary {
    pub rps: Option<f64>,
    pub cpu_per_req: Option<f64>,
    /// CPU per request at 1,000 req/s.
    pub cpu_per_req_fixed: Option<f64>,
    /// The control plane's CPU per request of the row (64 connections; 1,000 req/s).
    pub control_plane_cpu_per_req: Option<f64>,
    pub control_plane_cpu_per_req_fixed: Option<f64>,
    pub p50_8: Option<f64>,
    pub p99_8: Option<f64>,
    pub p50_fixed: Option<f64>,
    pub p99_fixed: Option<f64>,
    /// Percentile minus the floor's in the same round (proxies only).
    pub added_p50_8: Option<f64>,
    pub added_p99_8: Option<f64>,
    pub added_p50_fixed: Option<f64>,
    pub added_p99_fixed: Option<f64>,
}

impl LoadResults {
    fn runs_of(&self, row: Row, scenario: Scenario) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(move |r| r.row == row && r.scenario == scenario)
    }

    /// One value per round of `row` in `scenario`.
    pub fn per_round(&self, row: Row, scenario: Scenario, f: impl Fn(&Run) -> f64) -> Vec<f64> {
        self.runs_of(row, scenario).map(f).collect()
    }

    /// `f(row) − f(floor)` per round.
    fn added(&self, row: Row, scenario: Scenario, f: impl Fn(&OhaResult) -> f64) -> Vec<f64> {
        self.runs_of(row, scenario)
            .filter_map(|r| {
                let floor = self.runs_of(Row::Floor, scenario).find(|f| f.round == r.round)?;
                Some(f(&r.result) - f(&floor.result))
            })
            .collect()
    }

    /// Per round, `row`'s CPU per request at 64 connections minus `base`'s (both measured in
    /// that round, back to back, so machine noise hits both alike), seconds.
    pub fn cost_per_round(&self, row: Row, base: Row) -> Vec<f64> {
        self.runs_of(row, Scenario::Throughput)
            .filter_map(|r| {
                let b = self.runs_of(base, Scenario::Throughput).find(|b| b.round == r.round)?;
                Some(r.cpu_per_req? - b.cpu_per_req?)
            })
            .collect()
    }

    /// Per round, what the feature `row` adds ([`Row::adds`]) costs per request, seconds.
    pub fn feature_cost_per_round(&self, row: Row) -> Vec<f64> {
        row.adds().map(|(base, _)| self.cost_per_round(row, base)).unwrap_or_default()
    }

    /// The median over rounds of [`LoadResults::feature_cost_per_round`].
    pub fn feature_cost(&self, row: Row) -> Option<f64> {
        median(&self.feature_cost_per_round(row))
    }

    pub fn summary(&self, row: Row) -> RowSummary {
        let med = |s: Scenario, f: fn(&OhaResult) -> f64| {
            median(&self.per_round(row, s, |r| f(&r.result)))
        };
        let proxy = row != Row::Floor;
        let added = |s: Scenario, f: fn(&OhaResult) -> f64| {
            if proxy { median(&self.added(row, s, f)) } else { None }
        };
        let cpu = |s: Scenario, f: fn(&Run) -> Option<f64>| {
            median(&self.runs_of(row, s).filter_map(f).collect::<Vec<_>>())
        };
        RowSummary {
            rps: med(Scenario::Throughput, |r| r.rps),
            cpu_per_req: cpu(Scenario::Throughput, |r| r.cpu_per_req),
            cpu_per_req_fixed: cpu(Scenario::FixedRate, |r| r.cpu_per_req),
            control_plane_cpu_per_req: cpu(Scenario::Throughput, |r| r.control_plane_cpu_per_req),
            control_plane_cpu_per_req_fixed: cpu(Scenario::FixedRate, |r| {
                r.control_plane_cpu_per_req
            }),
            p50_8: med(Scenario::Conns8, |r| r.p50),
            p99_8: med(Scenario::Conns8, |r| r.p99),
            p50_fixed: med(Scenario::FixedRate, |r| r.p50),
            p99_fixed: med(Scenario::FixedRate, |r| r.p99),
            added_p50_8: added(Scenario::Conns8, |r| r.p50),
            added_p99_8: added(Scenario::Conns8, |r| r.p99),
            added_p50_fixed: added(Scenario::FixedRate, |r| r.p50),
            added_p99_fixed: added(Scenario::FixedRate, |r| r.p99),
        }
    }
}

/// Runs the section. `warmup`: a short closed-loop run per row at the start of each round.
pub async fn run(
    fixture: &mut Fixture,
    oha: &Path,
    rounds: usize,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<LoadResults> {
    let ticks_per_sec = procs::clock_ticks_per_sec() as f64;
    let mut results = LoadResults { runs: Vec::new(), rounds, duration, keyed: None };
    let start = KeyedCounters::read(fixture).await?;
    let mut keyed_requests = 0;
    let cp_pid = fixture.control_plane.proc.pid();
    for round in 1..=rounds {
        for row in Row::ALL {
            let w = run_oha(oha, &fixture.target(row), Scenario::Throughput, warmup)
                .await
                .with_context(|| format!("warming up {}", row.name()))?;
            if row.limited() || row.traced() {
                keyed_requests += w.completed();
            }
            if row.traced() {
                drain_traces(fixture, row).await?;
            }
        }
        for scenario in Scenario::ALL {
            // The rows that add one feature each only where CPU per request is measured.
            let rows: &[Row] =
                if scenario == Scenario::Throughput { &Row::ALL } else { &Row::MAIN };
            for &row in rows {
                let target = fixture.target(row);
                let pids = fixture.pids(row);
                let before = procs::cpu_ticks(&pids);
                let before_ns = procs::cpu_ns_of(&pids);
                let cp_before_ns = procs::cpu_ns_of(&[cp_pid]);
                let dropped_before = if row.traced() {
                    Some(fixture.data_plane_counter(row, TRACES_DROPPED).await?)
                } else {
                    None
                };
                let result =
                    run_oha(oha, &target, scenario, duration).await.with_context(|| {
                        format!("round {round}, {}, {}", scenario.name(), row.name())
                    })?;
                if row.limited() || row.traced() {
                    keyed_requests += result.completed();
                }
                // A traced row's CPU includes shipping its traces: read after the queue
                // emptied.
                let traces_dropped = match dropped_before {
                    Some(before) => {
                        drain_traces(fixture, row).await?;
                        let after = fixture.data_plane_counter(row, TRACES_DROPPED).await?;
                        Some((after - before).max(0.0) as u64)
                    }
                    None => None,
                };
                let ticks = procs::cpu_ticks(&pids).saturating_sub(before);
                let ns = procs::cpu_ns_of(&pids).saturating_sub(before_ns);
                let cp_ns = procs::cpu_ns_of(&[cp_pid]).saturating_sub(cp_before_ns);
                fixture.ensure_running()?;
                if result.success_rate() < 1.0 {
                    bail!(
                        "round {round}, {}, {}: not every request succeeded ({:.3} %): {}",
                        scenario.name(),
                        row.name(),
                        result.success_rate() * 100.0,
                        result.failures()
                    );
                }
                let n = result.completed() as f64;
                let (cpu_per_req, control_plane_cpu_per_req) = match scenario {
                    _ if n == 0.0 => (None, None),
                    Scenario::Throughput => {
                        (Some(ticks as f64 / ticks_per_sec / n), Some(cp_ns as f64 / 1e9 / n))
                    }
                    Scenario::FixedRate => {
                        (Some(ns as f64 / 1e9 / n), Some(cp_ns as f64 / 1e9 / n))
                    }
                    Scenario::Conns8 => (None, None),
                };
                eprintln!(
                    "  load round {round} {:>10} {:>7}: {:>8.0} req/s  p50 {:>9}  p99 {:>9}{}{}",
                    scenario.name(),
                    row.name(),
                    result.rps,
                    crate::stats::fmt_secs(result.p50),
                    crate::stats::fmt_secs(result.p99),
                    cpu_per_req
                        .map(|c| format!("  cpu {}/req", crate::stats::fmt_secs(c)))
                        .unwrap_or_default(),
                    traces_dropped
                        .map(|d| format!("  traces dropped {d} of {}", result.completed()))
                        .unwrap_or_default()
                );
                results.runs.push(Run {
                    round,
                    row,
                    scenario,
                    result,
                    cpu_per_req,
                    control_plane_cpu_per_req,
                    traces_dropped,
                });
                fixture.trim_data_plane_logs();
            }
        }
    }
    results.keyed = Some(keyed_counts(fixture, &start, keyed_requests).await?);
    Ok(results)
}

/// The data plane's count of traces its full queue dropped.
const TRACES_DROPPED: &str = "modelgw_traces_dropped_total";

/// Waits until the trace queue of `row`'s data plane is empty (its traces shipped), at most
/// 30 s (the shipper sends up to ten batches of 500 a second; the queue holds 10,000).
async fn drain_traces(fixture: &Fixture, row: Row) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fixture.data_plane_counter(row, "modelgw_traces_queued").await? > 0.0 {
        ensure!(
            std::time::Instant::now() < deadline,
            "the data plane's trace queue did not empty within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The counters behind [`KeyedCounts`], at one moment.
struct KeyedCounters {
    fail_open: f64,
    refused: f64,
    dropped: f64,
    received: f64,
    stored: f64,
    cp_dropped: f64,
}

impl KeyedCounters {
    /// Summed over the data planes of the rows with limits or traces (everything on; plain +
    /// metrics + limits or traces).
    async fn read(fx: &Fixture) -> anyhow::Result<KeyedCounters> {
        let sum = async |name: &str| -> anyhow::Result<f64> {
            Ok(fx.data_plane_counter(Row::Gateway, name).await?
                + fx.data_plane_counter(Row::Metrics, name).await?)
        };
        Ok(KeyedCounters {
            fail_open: sum(crate::fixture::FAIL_OPEN).await?,
            refused: sum("modelgw_key_limit_refusals_total").await?,
            dropped: sum(TRACES_DROPPED).await?,
            received: fx.control_plane_counter("modelgw_traces_received_total", &[]).await?,
            stored: fx.control_plane_counter("modelgw_traces_stored_total", &[]).await?,
            cp_dropped: fx
                .control_plane_counter("modelgw_traces_dropped_total", &[("by", "control_plane")])
                .await?,
        })
    }
}

/// What the rows' limits and traces did since `start`; fails when a limit refused or
/// no trace of the section reached the control plane's database (then the row did not
/// measure what it says). Waits up to 10 s for the control plane to store what it received.
async fn keyed_counts(
    fx: &Fixture,
    start: &KeyedCounters,
    requests: u64,
) -> anyhow::Result<KeyedCounts> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let now = loop {
        let now = KeyedCounters::read(fx).await?;
        if now.received <= now.stored + now.cp_dropped || std::time::Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delta = |a: f64, b: f64| (a - b).max(0.0) as u64;
    let counts = KeyedCounts {
        requests,
        fail_open: delta(now.fail_open, start.fail_open),
        refused: delta(now.refused, start.refused),
        traces_dropped: delta(now.dropped, start.dropped),
        traces_received: delta(now.received, start.received),
        traces_stored: delta(now.stored, start.stored),
        traces_dropped_by_control_plane: delta(now.cp_dropped, start.cp_dropped),
    };
    eprintln!("  limits and traces over the section: {counts:?}");
    ensure!(counts.refused == 0, "the key limits refused {} requests", counts.refused);
    ensure!(counts.traces_stored > 0, "no trace reached the control plane's database: {counts:?}");
    // And the API lists them, as recorded: metadata only, the fake region's usage, from the
    // row's data plane.
    for (row, gateway) in
        [(Row::Gateway, &fx.keyed_gateway_id), (Row::Traces, &fx.traced_gateway_id)]
    {
        let node = fx.plane(row).map(|p| p.node_id).context("a gateway row")?;
        let (status, page) = fx
            .admin
            .call("GET", &format!("/api/v1/traces?gateway_id={gateway}&limit=1"), None)
            .await?;
        ensure!(status == 200, "GET /api/v1/traces: {status} {page}");
        let t = &page["traces"][0];
        ensure!(
            t["status"] == 200
                && t["payload_captured"] == false
                && t["prompt_tokens"] == 19
                && t["completion_tokens"] == 16
                && t["node_id"] == node,
            "the {} row's newest trace is not what was sent: {page}",
            row.name()
        );
    }
    Ok(counts)
}

#[cfg(test)]
impl Run {
    /// A run with every request answered 200, for the tests of the load and report modules.
    pub(crate) fn sample(
        round: usize,
        row: Row,
        scenario: Scenario,
        rps: f64,
        p50: f64,
        p99: f64,
        cpu_per_req: Option<f64>,
    ) -> Run {
        Run {
            round,
            row,
            scenario,
            result: OhaResult {
                total_secs: 1.0,
                rps,
                status: BTreeMap::from([(200, rps as u64)]),
                errors: BTreeMap::new(),
                p50,
                p99,
            },
            cpu_per_req,
            control_plane_cpu_per_req: None,
            traces_dropped: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from the installed oha (`--no-tui --output-format json -z 1s -c 8 -m POST`)
    /// against the fake region.
    const OHA_OUTPUT: &str = include_str!("../fixtures/oha.json");

    #[test]
    fn real_oha_output_parses() {
        let r = parse_oha_json(OHA_OUTPUT).expect("parse");
        assert!(r.total_secs > 0.9 && r.total_secs < 1.5, "{}", r.total_secs);
        assert!(r.completed() > 100);
        assert_eq!(r.ok(), r.completed());
        assert!(r.p50 > 0.0 && r.p50 <= r.p99 && r.p99 < 1.0);
        assert!((r.rps - r.completed() as f64 / r.total_secs).abs() < 1e-6);
        // Deadline aborts of -z are not failures.
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.success_rate(), 1.0);
    }

    #[test]
    fn failures_are_counted_and_described() {
        let text = r#"{"summary":{"total":2.0,"successRate":0.5},
            "latencyPercentiles":{"p50":0.001,"p99":0.004},
            "statusCodeDistribution":{"200":6,"503":2},
            "errorDistribution":{"aborted due to deadline":8,"connection refused":2}}"#;
        let r = parse_oha_json(text).expect("parse");
        assert_eq!(r.completed(), 8);
        assert_eq!(r.rps, 4.0);
        assert_eq!(r.success_rate(), 0.6);
        assert_eq!(r.failures(), "2× status 503, 2× connection refused");
    }

    #[test]
    fn output_without_any_success_is_an_error() {
        let text = r#"{"summary":{"total":1.0},"latencyPercentiles":{"p50":null,"p99":null},
            "statusCodeDistribution":{},"errorDistribution":{"connection refused":9}}"#;
        assert!(parse_oha_json(text).is_err());
        assert!(parse_oha_json("not json").is_err());
    }

    fn run(round: usize, row: Row, scenario: Scenario, p50: f64, p99: f64, rps: f64) -> Run {
        let cpu = (scenario == Scenario::Throughput).then_some(1e-5 * round as f64);
        Run::sample(round, row, scenario, rps, p50, p99, cpu)
    }

    #[test]
    fn added_latency_is_taken_per_round_then_the_median() {
        let mut res = LoadResults::default();
        for (round, floor99, gw99) in [(1, 1.0, 3.0), (2, 2.0, 3.0), (3, 1.0, 10.0)] {
            res.runs.push(run(round, Row::Floor, Scenario::Conns8, 0.5, floor99, 100.0));
            res.runs.push(run(round, Row::Gateway, Scenario::Conns8, 0.7, gw99, 90.0));
            res.runs.push(run(round, Row::Gateway, Scenario::Throughput, 0.7, gw99, 90.0));
        }
        let s = res.summary(Row::Gateway);
        // Per round: 2, 1, 9 → median 2.
        assert_eq!(s.added_p99_8, Some(2.0));
        assert!((s.added_p50_8.expect("p50") - 0.2).abs() < 1e-12);
        assert_eq!(s.p99_8, Some(3.0));
        assert_eq!(s.rps, Some(90.0));
        assert_eq!(s.cpu_per_req, Some(2e-5));
        assert_eq!(s.p99_fixed, None);
        assert_eq!(res.summary(Row::Floor).added_p99_8, None);
    }
}
