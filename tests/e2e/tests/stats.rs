//! Issue 13's acceptance for the console's statistics: traffic through two real data planes
//! (some streamed, one region scripted to throttle once) shows up in `GET /api/v1/stats/…`
//! with exactly the counts the clients saw — requests per endpoint, the throttle, tokens equal
//! to the mock's `usage` — within 10 s, summed over both data planes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use modelgw_e2e::{API_VERSION, Admin, Cluster, Fault};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

/// The acceptance bound: the API shows the counts within this time of the last request.
const WITHIN: Duration = Duration::from_secs(10);

/// What the clients saw of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Seen {
    requests: u64,
    throttled: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Streamed answers (each has a time to first token).
    streams: u64,
}

/// One chat through `gateway`: records who served it, with what `usage`, and every attempt an
/// endpoint answered 429, into `seen`. Returns whether an attempt was throttled.
async fn chat(
    gateway: &str,
    key: &str,
    stream: bool,
    seen: &mut BTreeMap<String, Seen>,
) -> anyhow::Result<bool> {
    let mut body = json!({"messages": [{"role": "user", "content": "Hello there"}]});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let res = reqwest::Client::new()
        .post(format!(
            "{gateway}/openai/deployments/gpt-4o-mini/chat/completions?api-version={API_VERSION}"
        ))
        .header("api-key", key)
        .json(&body)
        .send()
        .await?;
    assert_eq!(res.status(), 200, "every request is served (a 429 fails over)");
    let header = |name: &str| {
        res.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    };
    let served_by = header("x-modelgw-endpoint");
    let attempts = header("x-modelgw-attempts");
    let text = res.text().await?;
    let usage = text
        .lines()
        .map(|l| l.trim_start_matches("data: "))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v.get("usage").filter(|u| u.is_object()).cloned())
        .unwrap_or_else(|| panic!("an answer with usage: {text}"));
    let entry = seen.entry(served_by).or_default();
    entry.requests += 1;
    entry.streams += u64::from(stream);
    entry.prompt_tokens += usage["prompt_tokens"].as_u64().unwrap();
    entry.completion_tokens += usage["completion_tokens"].as_u64().unwrap();
    let mut throttled = false;
    for attempt in attempts.split(',').filter(|a| !a.is_empty()) {
        let mut parts = attempt.split(':');
        let (endpoint, outcome) = (parts.next().unwrap(), parts.next().unwrap_or_default());
        if outcome == "throttled" {
            seen.entry(endpoint.to_owned()).or_default().throttled += 1;
            throttled = true;
        }
    }
    Ok(throttled)
}

/// What the stats API shows of each endpoint and of the gateway, in the clients' terms.
async fn shown(admin: &Admin) -> anyhow::Result<(BTreeMap<String, Seen>, Value, Value)> {
    let (status, endpoints) = admin.call("GET", "/api/v1/stats/endpoints?minutes=10", None).await?;
    anyhow::ensure!(status == 200, "{endpoints}");
    let mut out = BTreeMap::new();
    for e in endpoints["endpoints"].as_array().unwrap() {
        let t = &e["totals"];
        let n = |v: &Value| v.as_u64().unwrap();
        out.insert(
            e["name"].as_str().unwrap().to_owned(),
            Seen {
                requests: n(&t["requests"]),
                throttled: n(&t["throttled"]),
                prompt_tokens: n(&t["prompt_tokens"]),
                completion_tokens: n(&t["completion_tokens"]),
                streams: n(&e["ttft_samples"]),
            },
        );
    }
    let (status, gateways) = admin.call("GET", "/api/v1/stats/gateways?minutes=10", None).await?;
    anyhow::ensure!(status == 200, "{gateways}");
    Ok((out, gateways, endpoints))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_api_shows_what_two_data_planes_served_within_10_seconds() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    cluster.env.push(("MODELGW_STATS_INTERVAL", "1s".to_owned()));
    cluster.start_control_plane().await?;
    for region in ["East US", "West Europe"] {
        cluster.start_region(region).await?;
    }
    cluster.start_data_plane("dp-0").await?;
    cluster.start_data_plane("dp-1").await?;
    let admin = cluster.admin();
    let mut ids = Vec::new();
    for r in &cluster.regions {
        ids.push(admin.create_endpoint(&r.name, r).await?);
    }
    let gateway = admin.create_gateway("gpt-4o-mini", &ids).await?;
    let key = admin.create_key(&gateway).await?;
    let version = admin.config_version().await?;
    admin.wait_for_applied(&["dp-0", "dp-1"], version, Duration::from_secs(10)).await?;
    let east = cluster.regions[0].name.clone();
    let west = cluster.regions[1].name.clone();

    // East US answers its next request with a 429 (1 s window): through dp-0 until a request
    // meets it (the client still gets 200: the gateway fails over to West Europe).
    cluster.regions[0].script(Fault::throttled(1, 1));
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut met = false;
    for i in 0..40 {
        met = chat(cluster.gateway_url(0), &key, i % 2 == 1, &mut seen).await?;
        if met {
            break;
        }
    }
    assert!(met, "dp-0 met the scripted 429: {seen:?}");
    // More traffic through both data planes, a third of it streamed; East US is back after
    // its window, so both endpoints serve.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..12 {
        chat(cluster.gateway_url(i % 2), &key, i % 3 == 0, &mut seen).await?;
    }
    let done = Instant::now();
    let sent: u64 = seen.values().map(|s| s.requests).sum();
    assert_eq!(seen.get(&east).map(|s| s.throttled), Some(1), "{seen:?}");
    assert!(seen.values().map(|s| s.streams).sum::<u64>() >= 4, "{seen:?}");

    // The API shows exactly that, summed over both data planes, within 10 s.
    let (shown_endpoints, gateways, endpoints) = loop {
        let (endpoints, gateways, raw) = shown(&admin).await?;
        let matches = [&east, &west].iter().all(|name| {
            endpoints.get(*name).cloned().unwrap_or_default()
                == seen.get(*name).cloned().unwrap_or_default()
        });
        if matches {
            break (endpoints, gateways, raw);
        }
        assert!(
            done.elapsed() < WITHIN,
            "after {WITHIN:?} the stats API shows {endpoints:?}, the clients saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("shown within {:?}: {shown_endpoints:?}", done.elapsed());

    let g = gateways["gateways"]
        .as_array()
        .and_then(|a| a.iter().find(|g| g["id"] == gateway.as_str()))
        .expect("the gateway's stats")
        .clone();
    let totals = &g["totals"];
    assert_eq!(totals["requests"], sent, "{g}");
    assert_eq!(totals["throttled"], 1, "the one 429, and no answer of the gateway's own: {g}");
    assert_eq!(totals["errors"], 0, "{g}");
    let tokens: u64 = seen.values().map(|s| s.prompt_tokens + s.completion_tokens).sum();
    assert_eq!(totals["total_tokens"], tokens, "{g}");
    let per_minute: u64 =
        g["series"].as_array().unwrap().iter().map(|m| m["requests"].as_u64().unwrap()).sum();
    assert_eq!(per_minute, sent, "the series adds up to the totals: {g}");
    for e in endpoints["endpoints"].as_array().unwrap() {
        if e["ttft_samples"].as_u64() > Some(0) {
            assert!(
                e["ttft_p50_ms"].as_f64().is_some() && e["ttft_p95_ms"].as_f64().is_some(),
                "{e}"
            );
        }
    }

    // The control plane counted the reports it received (`modelgw_stats_reports_total`).
    let metrics = cluster.control_plane.as_ref().expect("control plane").field("metrics");
    let scrape = reqwest::get(metrics).await?.text().await?;
    let received = scrape
        .lines()
        .find_map(|l| l.strip_prefix("modelgw_stats_reports_total "))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no modelgw_stats_reports_total in {scrape}"));
    assert!(received >= 2.0, "at least one report from each data plane: {received}");

    // Per region, from the merged buckets.
    let (status, regions) = admin.call("GET", "/api/v1/stats/regions?minutes=10", None).await?;
    assert_eq!(status, 200, "{regions}");
    for (region, name) in [("East US", &east), ("West Europe", &west)] {
        let r = regions["regions"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["region"] == region))
            .unwrap_or_else(|| panic!("{region} in {regions}"));
        let s = seen.get(name).cloned().unwrap_or_default();
        assert_eq!(r["requests"], s.requests, "{r}");
        assert_eq!(r["ttft_samples"], s.streams, "{r}");
    }
    Ok(())
}
