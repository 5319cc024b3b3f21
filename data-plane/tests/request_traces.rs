#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Request traces (issue #14, item 3) through a real data plane and mock regions: one trace per
//! request with every attempt, the answer's tokens and model; payload capture with redaction
//! and the streamed answer reassembled; nothing for gateways that do not trace; and a full
//! queue that drops and counts while every request is served as before.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use modelgw_data_plane::DataPlaneConfig;
use modelgw_mock_openai::Fault;
use modelgw_model::traces::{REDACTED, RequestTrace, TraceSettings};
use modelgw_model::{RoutingPolicy, Snapshot};
use serde_json::{Value, json};
use support::*;

/// Everything queued so far, waiting up to 5 s for `n` traces.
async fn traces(gw: &TestGateway, n: usize) -> Vec<RequestTrace> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while out.len() < n {
        if let Some(batch) = gw.traces.next_batch() {
            assert_eq!(batch.dropped, 0, "nothing dropped");
            out.extend(batch.traces);
            continue;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of {n} traces: {out:#?}", out.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out
}

/// `snapshot` with its gateway tracing as `settings`.
fn traced(mut snapshot: Snapshot, settings: TraceSettings) -> Snapshot {
    snapshot.gateways[0].traces = settings;
    snapshot
}

fn metadata_only() -> TraceSettings {
    TraceSettings { enabled: true, ..Default::default() }
}

#[tokio::test]
async fn each_request_is_traced_once_with_every_attempt_and_its_tokens() {
    let east = region("east").await.unwrap();
    let west = region("west").await.unwrap();
    let gw = start(fast_config()).await.unwrap();
    let snapshot = snapshot(1, &[(&east, 0, 1), (&west, 1, 1)], RoutingPolicy::default()).unwrap();
    let (gateway_id, key_id) = (snapshot.gateways[0].id, snapshot.gateways[0].keys[0].id);
    gw.install(traced(snapshot, metadata_only())).unwrap();

    // East throttles once: the first request fails over to West.
    east.script(Fault::throttled(1, 1));
    let response =
        gw.request(false).header("x-ms-client-request-id", "my-request-1").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let t = traces(&gw, 1).await.remove(0);
    assert_eq!((t.gateway_id, t.key_id), (gateway_id, key_id));
    assert_eq!((t.operation.as_str(), t.status, t.stream), ("chat_completions", 200, false));
    assert_eq!(t.request_id, "my-request-1", "the gateway adopts a sane client id");
    assert_eq!(t.client_request_id.as_deref(), Some("my-request-1"));
    let attempts: Vec<_> =
        t.attempts.iter().map(|a| (a.endpoint_id, a.status, a.outcome.as_str())).collect();
    assert_eq!(attempts, [(id(&east), Some(429), "throttled"), (id(&west), Some(200), "ok")]);
    assert_eq!(t.prompt_tokens, answer["usage"]["prompt_tokens"].as_u64());
    assert_eq!(t.completion_tokens, answer["usage"]["completion_tokens"].as_u64());
    assert_eq!(t.model.as_deref(), answer["model"].as_str(), "the model the answer named");
    assert!(t.latency_ms >= t.attempts.iter().map(|a| a.latency_ms).sum::<u32>());
    assert_eq!((t.request_body, t.response_body, t.ttft_ms), (None, None, None));

    // A stream (East is back after its window or not: whichever serves is the one traced).
    let response = gw.request(true).send().await.unwrap();
    let served = header(&response, "x-modelgw-endpoint").to_owned();
    let text = response.text().await.unwrap();
    assert!(!text.contains("\"usage\""), "the client did not ask for usage: {text}");
    let t = traces(&gw, 1).await.remove(0);
    assert!(t.stream && t.ttft_ms.is_some(), "{t:?}");
    let last = t.attempts.last().expect("an attempt");
    assert_eq!(last.outcome, "ok");
    assert_eq!(last.endpoint_id, if served == east.name { id(&east) } else { id(&west) });
    assert!(
        t.prompt_tokens.is_some() && t.completion_tokens > Some(0),
        "the stream's usage: {t:?}"
    );

    // The gateway's own answer (a body that is not JSON) is traced too, without attempts.
    let bad = gw
        .http
        .post(format!("{}/openai/deployments/auto/chat/completions?{API_VERSION}", gw.base))
        .header("api-key", CLIENT_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let t = traces(&gw, 1).await.remove(0);
    assert_eq!((t.status, t.attempts.len()), (400, 0));
    // An unknown key names no gateway: nothing to trace.
    let refused = gw
        .http
        .post(format!("{}/openai/deployments/auto/chat/completions?{API_VERSION}", gw.base))
        .header("api-key", "not-a-key")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(gw.traces.next_batch().is_none());
}

#[tokio::test]
async fn captured_payloads_are_redacted_and_streams_reassembled() {
    let east = region("east").await.unwrap();
    let gw = start(fast_config()).await.unwrap();
    let snapshot = snapshot(1, &[(&east, 0, 1)], RoutingPolicy::default()).unwrap();
    let settings = TraceSettings {
        enabled: true,
        capture_payload: true,
        redact_fields: vec!["user".into(), "ssn".into()],
        max_payload_bytes: None,
    };
    gw.install(traced(snapshot, settings)).unwrap();
    let mut body = chat_body(true);
    body["user"] = json!("alice@example.com");
    body["metadata"] = json!({"patient": {"ssn": "123-45-6789"}});
    let path = format!("/openai/deployments/auto/chat/completions?{API_VERSION}");
    let response = gw.post(&path, &body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let streamed = response.text().await.unwrap();
    let t = traces(&gw, 1).await.remove(0);
    let request = t.request_body.as_deref().expect("request captured");
    for secret in ["alice@example.com", "123-45-6789"] {
        assert!(!request.contains(secret), "{secret} in {request}");
    }
    let request: Value = serde_json::from_str(request).unwrap();
    assert_eq!(request["user"], REDACTED);
    assert_eq!(request["metadata"]["patient"]["ssn"], REDACTED);
    assert_eq!(request["messages"][0]["content"], "Say hello");
    // The stream, reassembled into the message the client read piece by piece.
    let answer: Value = serde_json::from_str(t.response_body.as_deref().expect("answer")).unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(answer["choices"][0]["message"]["content"], east.mock().reply_text());
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["completion_tokens"].as_u64(), t.completion_tokens);
    let pieces: String = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(pieces, east.mock().reply_text());
    assert!(!t.payload_truncated);

    // A small cap cuts the captured bodies and says so.
    let snapshot = snapshot_v(2, &east);
    let small = TraceSettings {
        enabled: true,
        capture_payload: true,
        redact_fields: vec![],
        max_payload_bytes: Some(16),
    };
    gw.install(traced(snapshot, small)).unwrap();
    assert_eq!(gw.chat().await.unwrap().status(), 200);
    let t = traces(&gw, 1).await.remove(0);
    assert!(t.payload_truncated);
    assert!(
        t.request_body.as_ref().unwrap().len() <= 16
            && t.response_body.as_ref().unwrap().len() <= 16
    );
}

fn snapshot_v(version: u64, region: &Region) -> Snapshot {
    snapshot(version, &[(region, 0, 1)], RoutingPolicy::default()).unwrap()
}

#[tokio::test]
async fn gateways_without_traces_queue_nothing() {
    let east = region("east").await.unwrap();
    let gw = gateway(&[(&east, 0, 1)], RoutingPolicy::default(), fast_config()).await.unwrap();
    for stream in [false, true] {
        let response = gw.request(stream).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    assert!(gw.traces.is_empty());
    assert!(gw.traces.next_batch().is_none());
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_while_every_request_is_served() {
    let east = region("east").await.unwrap();
    let config = DataPlaneConfig {
        trace_queue: 2,
        metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..fast_config()
    };
    let gw = start(config).await.unwrap();
    gw.install(traced(snapshot_v(1, &east), metadata_only())).unwrap();
    for i in 0..10 {
        let response = gw.request(i % 2 == 1).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        response.bytes().await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gw.traces.dropped_total() < 8 {
        assert!(tokio::time::Instant::now() < deadline, "dropped {}", gw.traces.dropped_total());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.traces.len(), 2, "the queue holds its capacity");
    let scrape = gw.scrape().await;
    assert!(scrape.lines().any(|l| l == "modelgw_traces_dropped_total 8"), "{scrape}");
    assert!(scrape.lines().any(|l| l == "modelgw_traces_queued 2"), "{scrape}");
    let batch = gw.traces.next_batch().unwrap();
    assert_eq!((batch.traces.len(), batch.dropped), (2, 8), "the control plane learns the drops");
}

/// With metrics off (`MODELGW_METRICS_ADDR=off`) a traced stream still gets its tokens: the
/// gateway asks for the usage chunk for the trace, and the client still gets exactly the
/// stream it asked for.
#[tokio::test]
async fn a_stream_is_traced_with_its_tokens_with_metrics_off() {
    let east = region("east").await.unwrap();
    let gw = start(DataPlaneConfig { metrics_enabled: false, ..fast_config() }).await.unwrap();
    gw.install(traced(snapshot_v(1, &east), metadata_only())).unwrap();
    let text = gw.request(true).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("\"usage\""), "the client did not ask for usage: {text}");
    let sent = east.mock().requests().last().and_then(|r| r.json()).expect("upstream request");
    assert_eq!(sent["stream_options"], json!({"include_usage": true}), "asked for the trace");
    let t = traces(&gw, 1).await.remove(0);
    assert!(t.prompt_tokens.is_some() && t.completion_tokens > Some(0), "{t:?}");
}
