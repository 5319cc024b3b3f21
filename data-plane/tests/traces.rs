//! OpenTelemetry spans of the request path, in process: a request span in the client's trace,
//! one child span per upstream attempt, the attempt's span as the upstream's parent, the
//! request span ending with the response body, and nothing at all without a tracer. Spans are
//! collected by an exporter of the test's own (the process-level test against a real OTLP
//! receiver is `tests/e2e/tests/traces.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt as _;
use modelgw_data_plane::{DataPlaneConfig, RequestTracer};
use modelgw_mock_openai::{Fault, RecordedRequest};
use modelgw_model::RoutingPolicy;
use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use support::{API_VERSION, Region, TestGateway, chat_body, fast_config, region_at};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Every span ended, in the order they ended.
#[derive(Clone, Debug, Default)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collected {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Collected {
    fn spans(&self) -> Vec<SpanData> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the spans ended so far.
    async fn wait_for(&self, what: &str, done: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "no {what} within 10 s; spans: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A tracer exporting every ended span to the returned collector (parent-based sampling, the
/// SDK's default).
fn tracer() -> (RequestTracer, Collected, SdkTracerProvider) {
    let collected = Collected::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(collected.clone()).build();
    (RequestTracer::new(provider.tracer("modelgw-data-plane-test")), collected, provider)
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv: &KeyValue| &kv.value)
}

fn text(span: &SpanData, key: &str) -> String {
    attribute(span, key).map(|v| v.as_str().into_owned()).unwrap_or_default()
}

fn number(span: &SpanData, key: &str) -> Option<i64> {
    match attribute(span, key) {
        Some(Value::I64(n)) => Some(*n),
        _ => None,
    }
}

/// `(trace id, parent id, flags)` of a `traceparent` an upstream received.
fn upstream_parent(request: &RecordedRequest) -> (String, String, String) {
    let value = request.header("traceparent").expect("a traceparent upstream");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
}

async fn gateway(members: &[(&Region, u32, u32)], tracer: Option<RequestTracer>) -> TestGateway {
    let config = DataPlaneConfig { tracer, ..fast_config() };
    support::gateway(members, RoutingPolicy::default(), config).await.unwrap()
}

fn chat(gw: &TestGateway, stream: bool) -> reqwest::RequestBuilder {
    gw.request(stream)
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=opaque")
}

#[tokio::test]
async fn a_request_and_each_attempt_are_spans_in_the_clients_trace() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let weu = region_at("weu", "West Europe", "gpt-4o-weu").await?;
    eus.script(Fault::Status { status: 503, retry_after: None, retry_after_ms: None, times: 1 });
    let (tracer, collected, _provider) = tracer();
    let gw = gateway(&[(&eus, 0, 1), (&weu, 1, 1)], Some(tracer)).await;

    let response = chat(&gw, false).send().await?;
    assert_eq!(response.status(), 200);
    response.bytes().await?;
    let spans = collected.wait_for("request span", |s| s.len() >= 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");

    let request = spans.iter().find(|s| s.span_kind == SpanKind::Server).expect("request span");
    assert_eq!(request.span_context.trace_id().to_string(), CLIENT_TRACE);
    assert_eq!(request.parent_span_id.to_string(), CLIENT_SPAN);
    assert!(request.parent_span_is_remote);
    assert_eq!(request.name, "chat chat", "`{{operation}} {{gateway}}`");
    assert_eq!(text(request, "gen_ai.operation.name"), "chat");
    assert_eq!(text(request, "gen_ai.request.model"), support::GATEWAY);
    assert_eq!(text(request, "modelgw.gateway"), support::GATEWAY);
    assert_eq!(text(request, "modelgw.endpoint"), "weu");
    assert_eq!(text(request, "modelgw.region"), "West Europe");
    assert_eq!(number(request, "http.response.status_code"), Some(200));
    assert!(text(request, "modelgw.attempts").starts_with("eus:server_error:"));
    assert_eq!(request.status, Status::Unset);
    assert_eq!(request.span_context.trace_state().get("vendor"), Some("opaque"));

    let attempts: Vec<&SpanData> =
        spans.iter().filter(|s| s.span_kind == SpanKind::Client).collect();
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        assert_eq!(attempt.span_context.trace_id().to_string(), CLIENT_TRACE);
        assert_eq!(attempt.parent_span_id, request.span_context.span_id());
        assert!(!attempt.parent_span_is_remote);
        assert_eq!(text(attempt, "gen_ai.request.model"), support::GATEWAY);
        assert_eq!(text(attempt, "server.address"), "127.0.0.1");
    }
    let (failed, served) = (attempts[0], attempts[1]);
    assert_eq!(failed.name, "chat eus");
    assert_eq!(text(failed, "modelgw.endpoint"), "eus");
    assert_eq!(text(failed, "modelgw.region"), "East US");
    assert_eq!(text(failed, "modelgw.attempt.outcome"), "server_error");
    assert_eq!(number(failed, "http.response.status_code"), Some(503));
    assert_eq!(text(failed, "error.type"), "503");
    assert!(matches!(failed.status, Status::Error { .. }), "{:?}", failed.status);
    assert_eq!(number(failed, "http.request.resend_count"), None);
    assert_eq!(served.name, "chat weu");
    assert_eq!(text(served, "modelgw.attempt.outcome"), "ok");
    assert_eq!(number(served, "http.response.status_code"), Some(200));
    assert_eq!(number(served, "http.request.resend_count"), Some(1));
    assert_eq!(attribute(served, "error.type"), None);

    // Each upstream got a traceparent in the client's trace naming its attempt's span, and
    // the client's tracestate.
    for (region, attempt) in [(&eus, failed), (&weu, served)] {
        let received = region.mock().requests();
        assert_eq!(received.len(), 1);
        let (trace_id, parent, flags) = upstream_parent(&received[0]);
        assert_eq!(trace_id, CLIENT_TRACE);
        assert_eq!(parent, attempt.span_context.span_id().to_string());
        assert_eq!(flags, "01");
        assert_eq!(received[0].header("tracestate"), Some("vendor=opaque"));
    }
    // Nothing of the request's content on a span.
    for span in &spans {
        for kv in &span.attributes {
            let value = kv.value.as_str();
            assert!(!value.contains("Say hello") && !value.contains(support::CLIENT_KEY), "{kv:?}");
            assert!(!value.contains(&eus.key) && !value.contains(&weu.key), "{kv:?}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_streamed_answers_spans_end_with_the_stream() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    eus.mock().set_stream_gap(Duration::from_millis(100));
    let (tracer, collected, _provider) = tracer();
    let gw = gateway(&[(&eus, 0, 1)], Some(tracer)).await;

    let response = chat(&gw, true).send().await?;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first chunk")?;
    assert!(!first.is_empty());
    // The head and a first event went out; the stream goes on, and so do its spans.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        collected.spans().is_empty(),
        "spans ended before the stream: {:#?}",
        collected.spans()
    );
    while let Some(chunk) = body.next().await {
        chunk?;
    }
    let ended = std::time::SystemTime::now();
    let spans = collected.wait_for("both spans", |s| s.len() == 2).await;
    let request = spans.iter().find(|s| s.span_kind == SpanKind::Server).expect("request span");
    let served = spans.iter().find(|s| s.span_kind == SpanKind::Client).expect("attempt span");
    let slack = Duration::from_millis(100);
    for span in [request, served] {
        // It ended at the stream's end (give or take the last frame's way to the client),
        // not at the head.
        assert!(span.end_time + slack >= ended, "{} ended early", span.name);
        assert_eq!(span.status, Status::Unset);
    }
    Ok(())
}

#[tokio::test]
async fn an_answer_that_breaks_mid_stream_marks_both_spans() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    eus.script(Fault::StreamCut { after_chunks: 2, times: 1 });
    let (tracer, collected, _provider) = tracer();
    let gw = gateway(&[(&eus, 0, 1)], Some(tracer)).await;

    let response = chat(&gw, true).send().await?;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    while let Some(Ok(_)) = body.next().await {}
    let spans = collected.wait_for("both spans", |s| s.len() == 2).await;
    for span in &spans {
        assert_eq!(text(span, "error.type"), "stream_interrupted", "{}", span.name);
        assert!(matches!(span.status, Status::Error { .. }), "{span:#?}");
    }
    Ok(())
}

#[tokio::test]
async fn an_unsampled_request_records_nothing_and_stays_in_the_clients_trace() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let (tracer, collected, _provider) = tracer();
    let gw = gateway(&[(&eus, 0, 1)], Some(tracer)).await;

    let response = gw
        .request(false)
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    response.bytes().await?;
    let (trace_id, parent, flags) = upstream_parent(&eus.mock().requests()[0]);
    assert_eq!((trace_id.as_str(), flags.as_str()), (CLIENT_TRACE, "00"));
    assert_ne!(parent, CLIENT_SPAN, "the gateway is a hop of the trace, recorded or not");
    // A sampled request after it is exported: the exporter works, this one was dropped.
    chat(&gw, false).send().await?.bytes().await?;
    let spans = collected.wait_for("the sampled request", |s| s.len() >= 2).await;
    assert_eq!(spans.len(), 2, "only the sampled request's spans: {spans:#?}");
    Ok(())
}

#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace_without_the_clients_tracestate() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let (tracer, collected, _provider) = tracer();
    let gw = gateway(&[(&eus, 0, 1)], Some(tracer)).await;

    let all_zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let response = gw
        .request(false)
        .header("traceparent", all_zero)
        .header("tracestate", "vendor=opaque")
        .send()
        .await?;
    response.bytes().await?;
    let spans = collected.wait_for("the request", |s| s.len() == 2).await;
    let request = spans.iter().find(|s| s.span_kind == SpanKind::Server).expect("request span");
    assert_eq!(request.parent_span_id, opentelemetry::trace::SpanId::INVALID, "a root span");
    let received = &eus.mock().requests()[0];
    let (trace_id, _, flags) = upstream_parent(received);
    assert_eq!(trace_id, request.span_context.trace_id().to_string());
    assert_eq!(flags, "01");
    assert_eq!(received.header("tracestate"), None, "a tracestate of no known trace");
    Ok(())
}

#[tokio::test]
async fn answers_of_the_gateway_itself_are_spans_without_attempts() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    eus.script(Fault::Status { status: 503, retry_after: None, retry_after_ms: None, times: 1 });
    let (tracer, collected, _provider) = tracer();
    let gw = gateway(&[(&eus, 0, 1)], Some(tracer)).await;

    // A wrong key: 401 before any upstream, no gateway known.
    let path = format!("/openai/deployments/auto/chat/completions?{API_VERSION}");
    let refused = gw
        .http
        .post(format!("{}{path}", gw.base))
        .header("api-key", "not-a-key")
        .json(&chat_body(false))
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    refused.bytes().await?;
    let spans = collected.wait_for("the 401", |s| s.len() == 1).await;
    assert_eq!(spans[0].name, "chat");
    assert_eq!(number(&spans[0], "http.response.status_code"), Some(401));
    assert_eq!(spans[0].status, Status::Unset, "a 4xx is the client's");
    assert_eq!(attribute(&spans[0], "modelgw.gateway"), None);

    // The only endpoint fails: one attempt, then the gateway's 503.
    let unavailable = chat(&gw, false).send().await?;
    assert_eq!(unavailable.status(), 503);
    unavailable.bytes().await?;
    let spans = collected.wait_for("the 503", |s| s.len() == 3).await;
    let request = &spans[2];
    assert_eq!(request.span_kind, SpanKind::Server);
    assert_eq!(text(request, "error.type"), "503");
    assert!(matches!(request.status, Status::Error { .. }));
    assert_eq!(spans[1].parent_span_id, request.span_context.span_id());

    // Not an operation: no span.
    let unknown = gw
        .http
        .get(format!("{}/openai/files?{API_VERSION}", gw.base))
        .header("api-key", support::CLIENT_KEY)
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    unknown.bytes().await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(collected.spans().len(), 3);
    Ok(())
}

#[tokio::test]
async fn without_a_tracer_the_clients_trace_context_goes_upstream_unchanged() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let gw = gateway(&[(&eus, 0, 1)], None).await;
    let response = chat(&gw, false).send().await?;
    assert_eq!(response.status(), 200);
    let received = &eus.mock().requests()[0];
    let expected = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(received.header("traceparent"), Some(expected.as_str()));
    assert_eq!(received.header("tracestate"), Some("vendor=opaque"));
    Ok(())
}
