//! The load section, driven by `oha`: for each round, for each scenario, floor → nginx →
//! gateway in turn (so machine noise hits every row alike), then per metric the median over
//! rounds.
//!
//! - **throughput**: 64 connections, closed loop, as fast as the row answers; requests/s, and
//!   the CPU time the proxy spent per request (utime+stime from `/proc` before and after,
//!   divided by the requests completed). Every request must succeed.
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
    /// CPU time of the row's processes per completed request, seconds (throughput only).
    pub cpu_per_req: Option<f64>,
}

/// Every run of the section.
#[derive(Clone, Debug, Default)]
pub struct LoadResults {
    pub runs: Vec<Run>,
    pub rounds: usize,
    pub duration: Duration,
}

/// Median-over-rounds figures of one row.
#[derive(Clone, Debug, Default)]
pub struct RowSummary {
    pub rps: Option<f64>,
    pub cpu_per_req: Option<f64>,
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

    pub fn summary(&self, row: Row) -> RowSummary {
        let med = |s: Scenario, f: fn(&OhaResult) -> f64| {
            median(&self.per_round(row, s, |r| f(&r.result)))
        };
        let proxy = row != Row::Floor;
        let added = |s: Scenario, f: fn(&OhaResult) -> f64| {
            if proxy { median(&self.added(row, s, f)) } else { None }
        };
        RowSummary {
            rps: med(Scenario::Throughput, |r| r.rps),
            cpu_per_req: median(
                &self
                    .runs_of(row, Scenario::Throughput)
                    .filter_map(|r| r.cpu_per_req)
                    .collect::<Vec<_>>(),
            ),
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
    let mut results = LoadResults { runs: Vec::new(), rounds, duration };
    for round in 1..=rounds {
        for row in Row::ALL {
            run_oha(oha, &fixture.target(row), Scenario::Throughput, warmup)
                .await
                .with_context(|| format!("warming up {}", row.name()))?;
        }
        for scenario in Scenario::ALL {
            for row in Row::ALL {
                let target = fixture.target(row);
                let pids = fixture.pids(row);
                let before = procs::cpu_ticks(&pids);
                let result =
                    run_oha(oha, &target, scenario, duration).await.with_context(|| {
                        format!("round {round}, {}, {}", scenario.name(), row.name())
                    })?;
                let ticks = procs::cpu_ticks(&pids).saturating_sub(before);
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
                let cpu_per_req = (scenario == Scenario::Throughput && result.completed() > 0)
                    .then(|| ticks as f64 / ticks_per_sec / result.completed() as f64);
                eprintln!(
                    "  load round {round} {:>10} {:>7}: {:>8.0} req/s  p50 {:>9}  p99 {:>9}{}",
                    scenario.name(),
                    row.name(),
                    result.rps,
                    crate::stats::fmt_secs(result.p50),
                    crate::stats::fmt_secs(result.p99),
                    cpu_per_req
                        .map(|c| format!("  cpu {}/req", crate::stats::fmt_secs(c)))
                        .unwrap_or_default()
                );
                results.runs.push(Run { round, row, scenario, result, cpu_per_req });
                fixture.trim_data_plane_log();
            }
        }
    }
    Ok(results)
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
