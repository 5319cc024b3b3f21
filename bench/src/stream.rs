//! The streaming section: time to first chunk of a streamed chat completion.
//!
//! What a chat user waits for is the first token, so what a proxy adds before the first body
//! bytes matters more than throughput. One client per row keeps ONE keep-alive HTTP/1.1
//! connection and sends requests one after another (`"stream":true`, the 3-frame SSE
//! answer); per request it measures send → first body chunk (TTFB) and send → end of body
//! (total). Rows take turns in blocks so machine noise hits them alike.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::fixture::{Fixture, Row, Target};
use crate::stats::{median, percentile, secs};

/// Requests per block; rows alternate block by block.
const BLOCK: usize = 50;

/// Per-request timings of one row in one round.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    pub ttfb: Vec<Duration>,
    pub total: Vec<Duration>,
}

/// p50/p99 of one row in one round, seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RoundStats {
    pub ttfb_p50: f64,
    pub ttfb_p99: f64,
    pub total_p50: f64,
    pub total_p99: f64,
}

impl Samples {
    pub fn stats(&self) -> Option<RoundStats> {
        let (t, all) = (secs(&self.ttfb), secs(&self.total));
        Some(RoundStats {
            ttfb_p50: percentile(&t, 0.5)?,
            ttfb_p99: percentile(&t, 0.99)?,
            total_p50: percentile(&all, 0.5)?,
            total_p99: percentile(&all, 0.99)?,
        })
    }
}

/// Every round of every row.
#[derive(Clone, Debug, Default)]
pub struct StreamResults {
    pub requests_per_round: usize,
    /// (round, row, stats).
    pub rounds: Vec<(usize, Row, RoundStats)>,
}

impl StreamResults {
    /// Median over rounds of `f` for `row`.
    pub fn median(&self, row: Row, f: fn(&RoundStats) -> f64) -> Option<f64> {
        median(&self.per_round(row, f))
    }

    pub fn per_round(&self, row: Row, f: fn(&RoundStats) -> f64) -> Vec<f64> {
        self.rounds.iter().filter(|(_, r, _)| *r == row).map(|(_, _, s)| f(s)).collect()
    }

    /// Median over rounds of (row − direct) for `f`, paired by round.
    pub fn added(&self, row: Row, f: fn(&RoundStats) -> f64) -> Option<f64> {
        let diffs: Vec<f64> = self
            .rounds
            .iter()
            .filter(|(_, r, _)| *r == row)
            .filter_map(|(round, _, s)| {
                let floor = self.rounds.iter().find(|(n, r, _)| n == round && *r == Row::Floor)?;
                Some(f(s) - f(&floor.2))
            })
            .collect();
        median(&diffs)
    }
}

/// One streamed request; returns (TTFB, total).
async fn one(client: &reqwest::Client, t: &Target) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    let mut res = t.stream(client).send().await?;
    ensure!(res.status() == 200, "{} stream answered {}", t.row.name(), res.status());
    let first = res.chunk().await?.context("empty stream")?;
    let ttfb = start.elapsed();
    let mut bytes = first.len();
    while let Some(c) = res.chunk().await? {
        bytes += c.len();
    }
    let total = start.elapsed();
    ensure!(bytes > 0, "empty stream");
    Ok((ttfb, total))
}

/// `requests` sequential streams per row per round.
pub async fn run(
    fixture: &Fixture,
    rounds: usize,
    requests: usize,
) -> anyhow::Result<StreamResults> {
    let mut results = StreamResults { requests_per_round: requests, rounds: Vec::new() };
    let targets: Vec<Target> = Row::MAIN.iter().map(|r| fixture.target(*r)).collect();
    // One keep-alive connection per row, reused by every request of the section.
    let clients = Row::MAIN
        .iter()
        .map(|_| {
            reqwest::Client::builder()
                .http1_only()
                .pool_max_idle_per_host(1)
                .pool_idle_timeout(Duration::from_secs(300))
                .tcp_nodelay(true)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Open the connections and warm each row up.
    for (client, t) in clients.iter().zip(&targets) {
        for _ in 0..BLOCK {
            one(client, t).await?;
        }
    }
    for round in 1..=rounds {
        let mut samples: Vec<Samples> = vec![Samples::default(); targets.len()];
        let mut done = 0;
        while done < requests {
            let n = BLOCK.min(requests - done);
            for ((client, t), s) in clients.iter().zip(&targets).zip(samples.iter_mut()) {
                for _ in 0..n {
                    let (ttfb, total) =
                        tokio::time::timeout(Duration::from_secs(10), one(client, t))
                            .await
                            .with_context(|| format!("{} stream timed out", t.row.name()))??;
                    s.ttfb.push(ttfb);
                    s.total.push(total);
                }
            }
            done += n;
        }
        for (t, s) in targets.iter().zip(&samples) {
            let stats = s.stats().context("no stream samples")?;
            eprintln!(
                "  stream round {round} {:>7}: TTFB p50 {:>9} p99 {:>9}  total p50 {:>9}",
                t.row.name(),
                crate::stats::fmt_secs(stats.ttfb_p50),
                crate::stats::fmt_secs(stats.ttfb_p99),
                crate::stats::fmt_secs(stats.total_p50),
            );
            results.rounds.push((round, t.row, stats));
        }
    }
    Ok(results)
}
