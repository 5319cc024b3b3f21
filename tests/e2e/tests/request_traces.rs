//! Issue 14's acceptance for request traces, across real processes (a control plane on
//! SQLite, data planes, two mock Azure regions):
//! - a scripted run (a failover and streams among it) appears in `GET /api/v1/traces` with each
//!   request once, with the endpoints it tried, their outcomes and the tokens the client saw;
//! - payload capture off: the request's content is nowhere in the database file;
//! - capture on: a streamed answer is stored reassembled, the redacted fields replaced (and
//!   not in the database file either);
//! - a data plane whose trace queue is forced full (`MODELGW_TRACE_QUEUE=1`) serves every
//!   request, and the traces it dropped are counted on both sides: stored + dropped = sent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use modelgw_e2e::{API_VERSION, Admin, Cluster, Fault};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

/// Traces reach the API within this time of the request (a data plane ships every second).
const WITHIN: Duration = Duration::from_secs(15);

/// What a client saw of one request.
#[derive(Debug)]
struct Sent {
    request_id: String,
    stream: bool,
    /// `x-modelgw-attempts`: `(endpoint name, outcome)` in order.
    attempts: Vec<(String, String)>,
    /// The `usage` the client got, when it got one.
    usage: Option<(u64, u64)>,
    /// The streamed content, joined.
    content: String,
}

/// One chat through `gateway` with `body` (its `stream` decides the kind of answer).
async fn send(gateway: &str, key: &str, body: Value) -> anyhow::Result<Sent> {
    let stream = body["stream"] == true;
    let res = reqwest::Client::new()
        .post(format!(
            "{gateway}/openai/deployments/gpt-4o-mini/chat/completions?api-version={API_VERSION}"
        ))
        .header("api-key", key)
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "status {}", res.status());
    let header = |name: &str| {
        res.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    };
    let request_id = header("x-ms-client-request-id");
    // Members skipped for their health are listed too; a trace records the endpoints tried.
    let attempts = header("x-modelgw-attempts")
        .split(',')
        .filter(|a| !a.is_empty() && !a.contains(":skipped_"))
        .map(|a| {
            let mut parts = a.split(':');
            (parts.next().unwrap().to_owned(), parts.next().unwrap_or_default().to_owned())
        })
        .collect();
    let text = res.text().await?;
    let values: Vec<Value> = if stream {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    } else {
        vec![serde_json::from_str(&text)?]
    };
    let usage = values.iter().find_map(|v| {
        let u = v.get("usage").filter(|u| u.is_object())?;
        Some((u["prompt_tokens"].as_u64()?, u["completion_tokens"].as_u64()?))
    });
    let content = values
        .iter()
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str())
        .collect::<String>();
    Ok(Sent { request_id, stream, attempts, usage, content })
}

fn chat_body(content: &str, stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": content}], "stream": stream})
}

/// Every trace of `gateway` the API lists, following `next_cursor`.
async fn all_traces(admin: &Admin, gateway: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = admin
            .call("GET", &format!("/api/v1/traces?gateway_id={gateway}&limit=7{cursor}"), None)
            .await?;
        anyhow::ensure!(status == 200, "{page}");
        out.extend(page["traces"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return Ok(out),
        }
    }
}

/// Waits until the API lists at least `n` traces of `gateway`.
async fn wait_for_traces(admin: &Admin, gateway: &str, n: usize) -> anyhow::Result<Vec<Value>> {
    let started = Instant::now();
    loop {
        let traces = all_traces(admin, gateway).await?;
        if traces.len() >= n {
            return Ok(traces);
        }
        anyhow::ensure!(
            started.elapsed() < WITHIN,
            "{} of {n} traces after {WITHIN:?}: {traces:#?}",
            traces.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `needle` is anywhere in the SQLite database's files (the WAL included).
fn in_database(cluster: &Cluster, needle: &str) -> bool {
    let db = cluster.database_path();
    [db.clone(), db.with_extension("db-wal")].iter().any(|path| {
        std::fs::read(path)
            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
    })
}

/// The value of the sample `line` (`name{labels}`) in a Prometheus scrape of `url`.
async fn sample(url: &str, line: &str) -> anyhow::Result<f64> {
    let scrape = reqwest::get(url).await?.text().await?;
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {line} in {scrape}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_traced_once_payloads_only_when_captured_and_a_full_queue_drops_and_counts()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    cluster.start_control_plane().await?;
    for region in ["East US", "West Europe"] {
        cluster.start_region(region).await?;
    }
    cluster.start_data_plane("dp-0").await?;
    let admin = cluster.admin();
    let mut ids = BTreeMap::new();
    for r in &cluster.regions {
        ids.insert(r.name.clone(), admin.create_endpoint(&r.name, r).await?);
    }
    let (east, west) = (cluster.regions[0].name.clone(), cluster.regions[1].name.clone());
    // East first, West when East cannot serve: the failover is deterministic.
    let (status, gateway) = admin
        .call(
            "POST",
            "/api/v1/gateways",
            Some(json!({
                "name": "gpt-4o-mini",
                "endpoints": [
                    {"endpoint_id": ids[&east], "priority": 0},
                    {"endpoint_id": ids[&west], "priority": 1},
                ],
                "traces": {"enabled": true},
            })),
        )
        .await?;
    assert_eq!(status, 201, "{gateway}");
    let gateway = gateway["id"].as_str().unwrap().to_owned();
    let key = admin.create_key(&gateway).await?;
    let version = admin.config_version().await?;
    admin.wait_for_applied(&["dp-0"], version, Duration::from_secs(10)).await?;
    let gw0 = cluster.gateway_url(0).to_owned();

    // The scripted run. Capture is off: the content carries a marker to look for on disk.
    let marker = format!("uncaptured-marker-{}", std::process::id());
    let mut sent = Vec::new();
    cluster.regions[0].script(Fault::throttled(1, 1));
    sent.push(send(&gw0, &key, chat_body(&marker, false)).await?);
    assert_eq!(
        sent[0].attempts,
        [(east.clone(), "throttled".to_owned()), (west.clone(), "ok".to_owned())],
        "the first request failed over"
    );
    // East is back after its 1 s window.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut asked = chat_body(&marker, true);
    asked["stream_options"] = json!({"include_usage": true});
    sent.push(send(&gw0, &key, asked).await?);
    sent.push(send(&gw0, &key, chat_body(&marker, true)).await?);
    assert_eq!(sent[2].usage, None, "the client did not ask for usage and got none");
    sent.push(send(&gw0, &key, chat_body(&marker, false)).await?);
    let traces = wait_for_traces(&admin, &gateway, sent.len()).await?;
    assert_eq!(traces.len(), sent.len(), "one trace per request: {traces:#?}");
    for s in &sent {
        let matching: Vec<&Value> =
            traces.iter().filter(|t| t["request_id"] == s.request_id.as_str()).collect();
        assert_eq!(matching.len(), 1, "{s:?} appears once in {traces:#?}");
        let t = matching[0];
        assert_eq!((t["status"].as_u64(), t["stream"].as_bool()), (Some(200), Some(s.stream)));
        assert_eq!(t["operation"], "chat_completions");
        assert_eq!(t["node_id"], "dp-0");
        assert_eq!(t["key_name"], "test");
        let attempts: Vec<(String, String)> = t["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let name = ids
                    .iter()
                    .find(|(_, id)| a["endpoint_id"] == id.as_str())
                    .map(|(name, _)| name.clone())
                    .unwrap_or_default();
                (name, a["outcome"].as_str().unwrap().to_owned())
            })
            .collect();
        assert_eq!(attempts, s.attempts, "the endpoints tried and their outcomes: {t}");
        let tokens = (t["prompt_tokens"].as_u64(), t["completion_tokens"].as_u64());
        match s.usage {
            Some((prompt, completion)) => {
                assert_eq!(tokens, (Some(prompt), Some(completion)), "{t}")
            }
            // The gateway asked for the stream's usage itself and counted it: the same as
            // the stream that asked, when the same endpoint answered both.
            None => {
                assert!(tokens.0.is_some() && tokens.1 > Some(0), "{t}");
                if s.attempts.last() == sent[1].attempts.last() {
                    let asked = sent[1].usage.unwrap();
                    assert_eq!(tokens, (Some(asked.0), Some(asked.1)), "{t}");
                }
            }
        }
        if s.stream {
            assert!(t["ttft_ms"].as_u64().is_some(), "{t}");
        }
        assert_eq!(t["payload_captured"], false);
    }
    let (_, first) = admin
        .call("GET", &format!("/api/v1/traces/{}", traces[0]["id"].as_str().unwrap()), None)
        .await?;
    assert_eq!(
        (first["request_body"].clone(), first["response_body"].clone()),
        (Value::Null, Value::Null)
    );
    assert!(!in_database(&cluster, &marker), "capture off: no request content in the database");

    // Capture on, with two fields redacted (one nested), through a reassembled stream.
    let (status, patched) = admin
        .call(
            "PATCH",
            &format!("/api/v1/gateways/{gateway}"),
            Some(json!({"traces": {
                "enabled": true,
                "capture_payload": true,
                "redact_fields": ["user", "name"],
            }})),
        )
        .await?;
    assert_eq!(status, 200, "{patched}");
    let version = admin.config_version().await?;
    admin.wait_for_applied(&["dp-0"], version, Duration::from_secs(10)).await?;
    let secret = format!("redacted-marker-{}", std::process::id());
    let body = json!({
        "messages": [{"role": "user", "name": format!("n-{secret}"), "content": "Tell me"}],
        "user": format!("u-{secret}"),
        "stream": true,
    });
    let streamed = send(&gw0, &key, body).await?;
    let traces = wait_for_traces(&admin, &gateway, sent.len() + 1).await?;
    let t =
        traces.iter().find(|t| t["request_id"] == streamed.request_id.as_str()).expect("traced");
    assert_eq!(t["payload_captured"], true, "{t}");
    let (_, detail) =
        admin.call("GET", &format!("/api/v1/traces/{}", t["id"].as_str().unwrap()), None).await?;
    assert_eq!(detail["payload_visible"], true);
    let request: Value = serde_json::from_str(detail["request_body"].as_str().unwrap())?;
    assert_eq!(request["user"], "[REDACTED]");
    assert_eq!(request["messages"][0]["name"], "[REDACTED]");
    assert_eq!(request["messages"][0]["content"], "Tell me");
    let answer: Value = serde_json::from_str(detail["response_body"].as_str().unwrap())?;
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], streamed.content.as_str());
    assert!(!streamed.content.is_empty());
    assert!(!in_database(&cluster, &secret), "redacted values are not stored");
    assert!(in_database(&cluster, "Tell me"), "the captured request is stored");

    // A data plane whose queue holds one trace: every request is served, the rest dropped
    // and counted, there and at the control plane.
    cluster.env.push(("MODELGW_TRACE_QUEUE", "1".to_owned()));
    cluster.start_data_plane("dp-full").await?;
    cluster.env.pop();
    admin.wait_for_applied(&["dp-full"], version, Duration::from_secs(10)).await?;
    let full = cluster.gateway_url(1).to_owned();
    let burst = 20;
    let results =
        futures::future::join_all((0..burst).map(|_| send(&full, &key, chat_body("Hello", false))))
            .await;
    for r in results {
        r?;
    }
    let dp_metrics = cluster.data_planes[1].metrics_url();
    let cp_metrics = cluster.control_plane.as_ref().unwrap().field("metrics").to_owned();
    let started = Instant::now();
    let (stored, dropped) = loop {
        let stored = all_traces(&admin, &gateway)
            .await?
            .iter()
            .filter(|t| t["node_id"] == "dp-full")
            .count() as u64;
        let dropped = sample(&dp_metrics, "modelgw_traces_dropped_total").await? as u64;
        let reported =
            sample(&cp_metrics, "modelgw_traces_dropped_total{by=\"data_plane\"}").await? as u64;
        if stored + dropped == burst && reported == dropped {
            break (stored, dropped);
        }
        assert!(
            started.elapsed() < WITHIN,
            "stored {stored} + dropped {dropped} (control plane: {reported}) != {burst}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(dropped > 0, "the queue of one was full");
    eprintln!("queue of 1: {stored} stored, {dropped} dropped and counted of {burst} requests");
    Ok(())
}
