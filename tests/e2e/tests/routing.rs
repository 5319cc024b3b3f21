//! Issue 3 acceptance that needs separate processes: fleet-wide health between data planes,
//! and what the official SDK sees when a stream is cut.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::time::{Duration, Instant};

use modelgw_e2e::{API_VERSION, Cluster, Fault, chat};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

/// How long a throttle window seen by one data plane may take to steer every other one.
const FLEET_BUDGET: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_data_plane_steers_the_other_within_one_second() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    let key = cluster.standard(2).await?;
    // East US throttles its next request for 10 s.
    cluster.regions[0].script(Fault::throttled(10, 1));

    // Traffic through dp-0 until it meets the 429 (it fails over: the client sees 200).
    let mut seen_at = None;
    for _ in 0..60 {
        let (status, headers, body) = chat(cluster.gateway_url(0), &key, "gpt-4o-mini").await?;
        assert_eq!(status, 200, "the client never sees the 429: {body}");
        let attempts =
            headers.get("x-modelgw-attempts").and_then(|v| v.to_str().ok()).unwrap_or("");
        if attempts.contains("east-us:throttled") {
            seen_at = Some(Instant::now());
            break;
        }
    }
    let seen_at = seen_at.expect("dp-0 met the scripted 429");
    let east_calls = cluster.regions[0].calls();

    // Within the budget, dp-1 — which never saw the 429 itself — stops sending to East US.
    tokio::time::sleep(FLEET_BUDGET.saturating_sub(seen_at.elapsed())).await;
    for _ in 0..30 {
        let (status, headers, body) = chat(cluster.gateway_url(1), &key, "gpt-4o-mini").await?;
        assert_eq!(status, 200, "{body}");
        let served_by =
            headers.get("x-modelgw-endpoint").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_ne!(served_by, "gpt-4o-mini-east-us", "dp-1 still routes to the throttled endpoint");
    }
    assert_eq!(cluster.regions[0].calls(), east_calls, "East US received requests in its window");

    // Operators see it too.
    let (_, endpoints) = cluster.admin().call("GET", "/api/v1/inference-endpoints", None).await?;
    let east = endpoints
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == "gpt-4o-mini-east-us"))
        .expect("east endpoint")
        .clone();
    assert_eq!(east["state"], "throttling", "{east}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_midway_reaches_the_openai_sdk_as_an_error() -> anyhow::Result<()> {
    let python = std::env::var("MODELGW_PYTHON").map_err(|_| {
        anyhow::anyhow!("MODELGW_PYTHON is not set: run the tests with `bash tests/run.sh`")
    })?;
    let mut cluster = Cluster::new(BIN)?;
    let key = cluster.standard(1).await?;
    for r in &cluster.regions {
        r.script(Fault::StreamCut { after_chunks: 4, times: 1 });
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/python/stream_cut.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .env("GATEWAY_URL", cluster.gateway_url(0))
        .env("GATEWAY_KEY", &key)
        .env("API_VERSION", API_VERSION)
        .env("DEPLOYMENT", "gpt-4o-mini")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SDK check failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("stream raised: APIError"),
        "the SDK must raise on the gateway's error event:\n{stdout}"
    );
    Ok(())
}
