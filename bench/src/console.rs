//! The console section: how long the Admin Console's pages take to answer on a large estate.
//!
//! 1,000 endpoints and 100 gateways of 10 members (one key each) are written through the store
//! library (as in [`crate::snapshot`]), one control plane starts on that database, the bench
//! signs in to the console with the admin token (a real session cookie), and fetches each page
//! `N` times in a row over one keep-alive connection: the time from request to the last byte of
//! the page, as a browser would wait for it. Each page answer includes the in-process admin API
//! calls it makes (the console reads everything through the API) and, for the overview and the
//! endpoint list, the fleet health of every endpoint.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::fixture::{self, random_token};
use crate::procs::Logs;
use crate::stats;

/// The pages measured, with what they show.
const PAGES: [(&str, &str); 6] = [
    (
        "/api/v1/inference-endpoints",
        "JSON API: every endpoint with its fleet health (what the endpoint pages read)",
    ),
    ("/api/v1/gateways", "JSON API: every gateway"),
    ("/", "overview (gateways, data planes, counts, recent changes)"),
    ("/endpoints", "inference endpoints, first page of 100 (sorted by name)"),
    ("/endpoints?sort=state&page=5", "inference endpoints sorted by state, page 5"),
    ("/endpoints?q=japaneast", "inference endpoints, searched"),
];

/// One page's timings.
#[derive(Clone, Debug)]
pub struct PageTiming {
    pub path: &'static str,
    pub what: &'static str,
    pub bytes: usize,
    /// Seconds per fetch, in order.
    pub secs: Vec<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct ConsoleResults {
    pub endpoints: usize,
    pub gateways: usize,
    pub fetches: usize,
    pub pages: Vec<PageTiming>,
}

pub async fn run(
    bin: &Path,
    dir: &Path,
    endpoints: usize,
    gateways: usize,
    fetches: usize,
) -> anyhow::Result<ConsoleResults> {
    let db = "console.db";
    let url = format!("sqlite://{}", dir.join(db).display());
    eprintln!("  console: populating {endpoints} endpoints and {gateways} gateways …");
    crate::snapshot::populate(&url, endpoints, gateways, 10).await?;
    let token = random_token("mgwadm_bench_")?;
    let log = dir.join("console-control-plane.log");
    let (mut cp, _admin) =
        fixture::start_control_plane(bin, dir, db, &token, &[], Logs::File(&log)).await?;
    let result = async {
        let base = cp.field("admin")?.to_owned();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("http client")?;
        let signed_in = http
            .post(format!("{base}/sign-in"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .context("signing in")?;
        ensure!(signed_in.status() == 303, "sign-in answered {}", signed_in.status());
        let cookie = signed_in
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.contains("modelgw_session="))
            .and_then(|c| c.split(';').next())
            .context("no session cookie")?
            .to_owned();
        let mut results = ConsoleResults { endpoints, gateways, fetches, pages: Vec::new() };
        for (path, what) in PAGES {
            let mut secs = Vec::with_capacity(fetches);
            let mut bytes = 0;
            // One warm-up fetch (first use of the page's code and the store's statements).
            for i in 0..=fetches {
                let t0 = Instant::now();
                // The console pages need the session cookie, the JSON API the bearer token.
                let res = http
                    .get(format!("{base}{path}"))
                    .header("cookie", &cookie)
                    .header("authorization", format!("Bearer {token}"))
                    .send()
                    .await?;
                ensure!(res.status() == 200, "{path} answered {}", res.status());
                let body = res.bytes().await?;
                if i > 0 {
                    secs.push(t0.elapsed().as_secs_f64());
                }
                bytes = body.len();
            }
            eprintln!(
                "  console {path}: p50 {}  p95 {}  {} KiB",
                stats::fmt_secs(stats::percentile(&secs, 0.5).unwrap_or(0.0)),
                stats::fmt_secs(stats::percentile(&secs, 0.95).unwrap_or(0.0)),
                bytes / 1024
            );
            results.pages.push(PageTiming { path, what, bytes, secs });
        }
        anyhow::Ok(results)
    }
    .await;
    cp.proc.stop(Duration::from_secs(5)).await;
    result
}
