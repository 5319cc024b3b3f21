//! Issue 13's trace acceptance over real processes: a control plane, data planes and mock
//! regions export to an OTLP receiver started by the test. A chat carrying the client's
//! `traceparent` gives a request span and one span per upstream attempt, all in the client's
//! trace, and each upstream received a `traceparent` of that trace naming its attempt's span;
//! an admin change and the snapshot publish it causes are spans of the control plane (at the
//! default log level); a data plane that stops exports the spans it still held.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::time::Duration;

use anyhow::Context as _;
use modelgw_e2e::otlp::{OtlpReceiver, ReceivedSpan, SpanKind, one};
use modelgw_e2e::{API_VERSION, Cluster, Fault, Region};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

/// How long spans may take to arrive: the batch exporter sends every 100 ms here.
const ARRIVAL: Duration = Duration::from_secs(15);

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";
const ADMIN_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const ADMIN_SPAN: &str = "00f067aa0ba902b7";
const EXIT_TRACE: &str = "11111111111111111111111111111111";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// `(trace id, parent id)` of the `traceparent` a region received last.
fn received_parent(region: &Region) -> (String, String) {
    let requests = region.requests();
    let last = requests.last().expect("the region received a request");
    let value = last.header("traceparent").expect("a traceparent upstream");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

async fn chat_traced(gateway: &str, key: &str, trace: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::Client::new()
        .post(format!(
            "{gateway}/openai/deployments/gpt-4o-mini/chat/completions?api-version={API_VERSION}"
        ))
        .header("api-key", key)
        .header("traceparent", traceparent(trace, CLIENT_SPAN))
        .json(&json!({"messages": [{"role": "user", "content": "Hello"}]}))
        .send()
        .await?;
    let status = response.status().as_u16();
    let attempts = response
        .headers()
        .get("x-modelgw-attempts")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    response.bytes().await?;
    Ok((status, attempts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_attempts_admin_changes_and_publishes_are_exported_as_spans() -> anyhow::Result<()>
{
    let receiver = OtlpReceiver::start().await?;
    let mut cluster = Cluster::new(BIN)?;
    cluster.env.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]);
    cluster.start_control_plane().await?;
    let failing = cluster.start_region("East US").await?;
    let serving = cluster.start_region("West Europe").await?;
    cluster.start_data_plane("dp-0").await?;
    // A data plane that would hold its spans for ten minutes: only its exit sends them.
    cluster.env.push(("OTEL_BSP_SCHEDULE_DELAY", "600000".to_owned()));
    cluster.start_data_plane("dp-1").await?;
    cluster.env.pop();

    // The admin change, in the operator tool's trace: East US first, West Europe if it fails.
    let admin = cluster.admin();
    let east =
        admin.create_endpoint(&cluster.regions[failing].name, &cluster.regions[failing]).await?;
    let west =
        admin.create_endpoint(&cluster.regions[serving].name, &cluster.regions[serving]).await?;
    let created = reqwest::Client::new()
        .post(format!("{}/api/v1/gateways", admin.base))
        .bearer_auth(&admin.token)
        .header("traceparent", traceparent(ADMIN_TRACE, ADMIN_SPAN))
        .json(&json!({"name": "gpt-4o-mini", "endpoints": [
            {"endpoint_id": east, "priority": 0, "weight": 1},
            {"endpoint_id": west, "priority": 1, "weight": 1},
        ]}))
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    let gateway_version = admin.config_version().await?;
    let gateway: Value = created.json().await?;
    let key = admin.create_key(gateway["id"].as_str().context("gateway id")?).await?;
    let version = admin.config_version().await?;
    admin.wait_for_applied(&["dp-0", "dp-1"], version, Duration::from_secs(10)).await?;

    // The chat: East US answers 503, West Europe serves.
    cluster.regions[failing].script(Fault::Status {
        status: 503,
        retry_after: None,
        retry_after_ms: None,
        times: 1,
    });
    let (status, attempts) = chat_traced(cluster.gateway_url(0), &key, CLIENT_TRACE).await?;
    assert_eq!(status, 200);
    assert!(attempts.starts_with("gpt-4o-mini-east-us:server_error:"), "{attempts}");
    assert!(attempts.contains(",gpt-4o-mini-west-europe:ok:"), "{attempts}");

    let spans = receiver
        .wait_for("the request's three spans", ARRIVAL, |all| {
            let trace: Vec<ReceivedSpan> =
                all.iter().filter(|s| s.trace_id() == CLIENT_TRACE).cloned().collect();
            (trace.len() >= 3).then_some(trace)
        })
        .await?;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(spans.iter().all(|s| s.service == "modelgw-data-plane"));
    let request = spans.iter().find(|s| s.kind() == SpanKind::Server).context("request span")?;
    assert_eq!(request.name(), "chat gpt-4o-mini");
    assert_eq!(request.parent_span_id(), CLIENT_SPAN, "the client's span is the parent");
    assert_eq!(request.text("gen_ai.operation.name"), "chat");
    assert_eq!(request.text("gen_ai.request.model"), "gpt-4o-mini");
    assert_eq!(request.text("modelgw.endpoint"), "gpt-4o-mini-west-europe");
    assert_eq!(request.int("http.response.status_code"), Some(200));
    assert!(!request.is_error());

    let mut attempt_spans: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| s.kind() == SpanKind::Client).collect();
    attempt_spans.sort_by_key(|s| s.span.start_time_unix_nano);
    let [failed, served] = attempt_spans[..] else { panic!("two attempt spans: {spans:#?}") };
    for attempt in [failed, served] {
        assert_eq!(attempt.parent_span_id(), request.span_id(), "a child of the request span");
        assert_eq!(attempt.text("modelgw.gateway"), "gpt-4o-mini");
        assert_eq!(attempt.text("server.address"), "127.0.0.1");
    }
    assert_eq!(failed.text("modelgw.endpoint"), "gpt-4o-mini-east-us");
    assert_eq!(failed.text("modelgw.region"), "East US");
    assert_eq!(failed.text("modelgw.attempt.outcome"), "server_error");
    assert_eq!(failed.int("http.response.status_code"), Some(503));
    assert_eq!(failed.text("error.type"), "503");
    assert!(failed.is_error());
    assert_eq!(served.text("modelgw.endpoint"), "gpt-4o-mini-west-europe");
    assert_eq!(served.text("modelgw.region"), "West Europe");
    assert_eq!(served.text("modelgw.attempt.outcome"), "ok");
    assert_eq!(served.int("http.response.status_code"), Some(200));
    assert!(!served.is_error());

    // Each region got a traceparent in the client's trace, naming its own attempt.
    assert_eq!(
        received_parent(&cluster.regions[failing]),
        (CLIENT_TRACE.to_owned(), failed.span_id())
    );
    assert_eq!(
        received_parent(&cluster.regions[serving]),
        (CLIENT_TRACE.to_owned(), served.span_id())
    );

    // The admin change: a server span of the control plane in the operator's trace, with what
    // it changed; the store's work is its child.
    let admin_spans = receiver
        .wait_for("the admin change", ARRIVAL, |all| {
            let trace: Vec<ReceivedSpan> =
                all.iter().filter(|s| s.trace_id() == ADMIN_TRACE).cloned().collect();
            trace.iter().any(|s| s.name() == "POST /api/v1/gateways").then_some(trace)
        })
        .await?;
    let change = one(&admin_spans, "POST /api/v1/gateways")?;
    assert_eq!(change.service, "modelgw-control-plane");
    assert_eq!(change.kind(), SpanKind::Server);
    assert_eq!(change.parent_span_id(), ADMIN_SPAN);
    assert_eq!(change.text("modelgw.entity"), "gateway");
    assert_eq!(change.text("modelgw.action"), "create");
    assert_eq!(change.text("http.route"), "/api/v1/gateways");
    assert_eq!(change.int("http.response.status_code"), Some(201));
    let store = receiver
        .wait_for("the store's span", ARRIVAL, |all| {
            all.iter()
                .find(|s| s.trace_id() == ADMIN_TRACE && s.name() == "store.create_gateway")
                .cloned()
        })
        .await?;
    assert_eq!(store.parent_span_id(), change.span_id());

    // The publish of that version (or of the key's, when one load took both changes): load
    // (with validation) and encoding under one root span.
    let publish = receiver
        .wait_for("the publish of the gateway", ARRIVAL, |all| {
            all.iter()
                .find(|s| {
                    s.name() == "snapshot.publish"
                        && s.int("modelgw.config_version") >= Some(gateway_version as i64)
                })
                .cloned()
        })
        .await?;
    assert_eq!(publish.service, "modelgw-control-plane");
    assert_eq!(publish.parent_span_id(), "", "a trace of its own");
    assert_eq!(publish.int("modelgw.gateways"), Some(1));
    assert_eq!(publish.int("modelgw.endpoints"), Some(2));
    let publish_trace = receiver
        .wait_for("the publish's steps", ARRIVAL, |_| {
            let trace = receiver.trace(&publish.trace_id());
            (trace.len() >= 4).then_some(trace)
        })
        .await?;
    let load = one(&publish_trace, "store.load_snapshot")?;
    assert_eq!(load.parent_span_id(), publish.span_id());
    assert_eq!(one(&publish_trace, "snapshot.validate")?.parent_span_id(), load.span_id());
    assert_eq!(one(&publish_trace, "snapshot.encode")?.parent_span_id(), publish.span_id());

    // A data plane that stops exports what it still held (its batch would wait 10 minutes).
    let (status, _) = chat_traced(cluster.gateway_url(1), &key, EXIT_TRACE).await?;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.trace(EXIT_TRACE).is_empty(), "dp-1 exported before it stopped");
    cluster.data_planes[1].stop().await;
    let exited = receiver
        .wait_for("dp-1's spans after its exit", ARRIVAL, |all| {
            let n = all.iter().filter(|s| s.trace_id() == EXIT_TRACE).count();
            (n >= 2).then_some(n)
        })
        .await?;
    assert_eq!(exited, 2, "the request span and its attempt");

    // Nothing secret went out.
    let secrets: Vec<String> = [key.clone(), cluster.admin_token.clone()]
        .into_iter()
        .chain(cluster.regions.iter().map(|r| r.key.clone()))
        .collect();
    for span in receiver.spans() {
        for text in span.texts() {
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{} exported a secret: {text}",
                    span.name()
                );
            }
        }
    }
    Ok(())
}
