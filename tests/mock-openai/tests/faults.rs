//! Scripted faults, their consumption, counts, records, reset and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod common;

use std::time::{Duration, Instant};

use common::*;
use modelgw_mock_openai::{Fault, wire};
use serde_json::{Value, json};

fn status(status: u16, times: u32) -> Fault {
    Fault::Status { status, retry_after: None, retry_after_ms: None, times }
}

fn streaming() -> Value {
    let mut body = chat_body();
    body["stream"] = json!(true);
    body
}

#[tokio::test]
async fn status_429_carries_retry_headers_and_azure_body() {
    let mock = start().await;
    let client = client();
    mock.script(
        DEP,
        Fault::Status { status: 429, retry_after: Some(6), retry_after_ms: Some(6000), times: 1 },
    );
    let resp = chat(&client, &mock, &chat_body()).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), "6");
    assert_eq!(header(&resp, "retry-after-ms"), "6000");
    assert_eq!(header(&resp, "x-ms-region"), REGION);
    assert_eq!(header(&resp, "content-type"), "application/json");
    assert!(resp.headers().contains_key("x-ratelimit-remaining-requests"));
    assert!(resp.headers().contains_key("apim-request-id"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "429");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("Please retry after 6 seconds."), "{message}");
    assert!(message.contains("ChatCompletions_Create"), "{message}");
    assert!(message.contains(API_VERSION), "{message}");

    // Consumed: the next request is served.
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 200);

    // Only retry-after-ms: the message rounds it up to seconds.
    mock.script(
        DEP,
        Fault::Status { status: 429, retry_after: None, retry_after_ms: Some(250), times: 1 },
    );
    let resp = chat(&client, &mock, &chat_body()).await;
    assert!(resp.headers().get("retry-after").is_none());
    assert_eq!(header(&resp, "retry-after-ms"), "250");
    assert!(resp.text().await.expect("body").contains("Please retry after 1 seconds."));
}

#[tokio::test]
async fn a_throttle_by_message_has_the_retry_sentence_and_no_retry_header() {
    let mock = start().await;
    let client = client();
    mock.script(DEP, Fault::ThrottledByMessage { retry_after_secs: 7, times: 1 });
    let resp = chat(&client, &mock, &chat_body()).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_none());
    assert!(resp.headers().get("retry-after-ms").is_none());
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "429");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("Please retry after 7 seconds."), "{message}");
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 200, "consumed");
}

#[tokio::test]
async fn status_500_and_503_use_azure_bodies_naming_the_request_id() {
    let mock = start().await;
    let client = client();
    mock.script(DEP, status(500, 1));
    mock.script(DEP, status(503, 1));
    mock.script(DEP, status(502, 1));
    let resp = chat(&client, &mock, &chat_body()).await;
    assert_eq!(resp.status(), 500);
    let id = header(&resp, "apim-request-id").to_owned();
    assert_eq!(resp.text().await.expect("body"), wire::server_error(&id));

    let resp = chat(&client, &mock, &chat_body()).await;
    assert_eq!(resp.status(), 503);
    let id = header(&resp, "apim-request-id").to_owned();
    let body = resp.text().await.expect("body");
    assert_eq!(body, wire::overloaded(&id));
    assert!(body.contains("currently overloaded"));

    let resp = chat(&client, &mock, &chat_body()).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.text().await.expect("body"),
        r#"{"error":{"code":"502","message":"Bad Gateway"}}"#
    );
}

#[tokio::test]
async fn latency_delays_the_response_headers() {
    let mock = start().await;
    let client = client();
    mock.script(DEP, Fault::Latency { ms: 400, times: 1 });
    let started = Instant::now();
    let resp = chat(&client, &mock, &chat_body()).await;
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["choices"][0]["message"]["content"],
        mock.reply_text()
    );

    // A region's baseline latency applies to every answer.
    mock.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn reset_drops_the_connection_without_a_response() {
    let mock = start().await;
    let client = client();
    mock.script(DEP, Fault::Reset { times: 1 });
    let err = client
        .post(dated_url(&mock, DEP, "chat/completions"))
        .header("api-key", KEY)
        .json(&chat_body())
        .send()
        .await
        .expect_err("no response");
    assert!(err.status().is_none());
    assert!(!err.is_timeout(), "the connection was closed, not left hanging: {err:?}");
    assert_eq!(mock.calls(DEP), 1, "the reset request was received and counted");
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 200);
}

/// Reads an SSE body, noting when each complete frame arrived.
async fn frame_times(
    resp: &mut reqwest::Response,
) -> Result<Vec<(Instant, String)>, reqwest::Error> {
    let mut frames = Vec::new();
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.push_str(std::str::from_utf8(&chunk).expect("utf8"));
        while let Some(end) = buf.find("\n\n") {
            frames.push((Instant::now(), buf[..end].to_owned()));
            buf.drain(..end + 2);
        }
    }
    Ok(frames)
}

#[tokio::test]
async fn stream_stall_pauses_after_n_frames() {
    let mock = start().await;
    mock.script(DEP, Fault::StreamStall { after_chunks: 3, ms: 500, times: 1 });
    let mut resp = chat(&client(), &mock, &streaming()).await;
    assert_eq!(resp.status(), 200);
    let frames = frame_times(&mut resp).await.expect("complete stream");
    assert_eq!(frames.last().map(|f| f.1.as_str()), Some("data: [DONE]"));
    let pause = frames[3].0 - frames[2].0;
    assert!(pause >= Duration::from_millis(500), "pause after frame 3: {pause:?}");
    let before = frames[2].0 - frames[0].0;
    assert!(before < Duration::from_millis(500), "no pause before: {before:?}");
}

#[tokio::test]
async fn stream_stall_on_json_holds_the_body_after_the_headers() {
    let mock = start().await;
    mock.script(DEP, Fault::StreamStall { after_chunks: 0, ms: 1500, times: 1 });
    let started = Instant::now();
    let resp = chat(&client(), &mock, &chat_body()).await;
    let headers_at = started.elapsed();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    let body_at = started.elapsed();
    assert!(headers_at < Duration::from_millis(1500), "headers at {headers_at:?}");
    assert!(body_at >= Duration::from_millis(1500), "body at {body_at:?}");
    assert_eq!(body["choices"][0]["message"]["content"], mock.reply_text());
}

#[tokio::test]
async fn stream_cut_aborts_after_n_frames() {
    let mock = start().await;
    mock.script(DEP, Fault::StreamCut { after_chunks: 3, times: 1 });
    let mut resp = chat(&client(), &mock, &streaming()).await;
    assert_eq!(resp.status(), 200, "headers were sent before the cut");
    let mut received = String::new();
    let err = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => received.push_str(std::str::from_utf8(&chunk).expect("utf8")),
            Ok(None) => panic!("stream ended cleanly; received {received:?}"),
            Err(e) => break e,
        }
    };
    assert!(err.is_body() || err.is_decode() || err.is_request(), "{err:?}");
    assert_eq!(sse_payloads(&received).len(), 3, "{received:?}");
    assert!(!received.contains("[DONE]"));
}

#[tokio::test]
async fn stream_cut_on_json_sends_half_the_body_then_aborts() {
    let mock = start().await;
    mock.script(DEP, Fault::StreamCut { after_chunks: 0, times: 1 });
    let resp = chat(&client(), &mock, &chat_body()).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("content-length"));
    assert!(resp.bytes().await.is_err(), "a cut body is an error, not a short success");
}

#[tokio::test]
async fn content_filter_is_azures_exact_400() {
    let mock = start().await;
    mock.script(DEP, Fault::ContentFilter { times: 1 });
    let resp = chat(&client(), &mock, &chat_body()).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(header(&resp, "x-ms-region"), REGION);
    let body = resp.text().await.expect("body");
    assert_eq!(body, wire::CONTENT_FILTER);
    assert!(
        body.starts_with(r#"{"error":{"message":"The response was filtered due to the prompt"#)
    );
    assert!(body.contains(r#""code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation""#));
}

#[tokio::test]
async fn faults_are_consumed_in_order_and_times_counts_requests() {
    let mock = start().await;
    let client = client();
    mock.script(DEP, status(503, 2));
    mock.script(DEP, Fault::ContentFilter { times: 1 });
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(chat(&client, &mock, &chat_body()).await.status().as_u16());
    }
    assert_eq!(seen, [503, 503, 400, 200]);

    // u32::MAX lasts until reset; faults are per deployment.
    mock.script(DEP, status(500, u32::MAX));
    for _ in 0..5 {
        assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 500);
    }
    let other = client
        .post(dated_url(&mock, OTHER_DEP, "embeddings"))
        .header("api-key", KEY)
        .json(&json!({"input": "x"}))
        .send()
        .await
        .expect("resp");
    assert_eq!(other.status(), 200);
    mock.reset();
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 200);
}

#[tokio::test]
async fn faults_are_not_consumed_by_unauthenticated_requests() {
    let mock = start().await;
    let client = client();
    mock.script(DEP, status(429, 1));
    let resp = client
        .post(dated_url(&mock, DEP, "chat/completions"))
        .header("api-key", "wrong")
        .json(&chat_body())
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 401);
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 429);
}

#[tokio::test]
async fn counts_and_records_every_request_until_reset() {
    let mock = start().await;
    let client = client();
    mock.script(DEP, status(429, 1));
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 429);
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 200);
    let resp = client
        .post(dated_url(&mock, DEP, "chat/completions"))
        .header("api-key", "wrong")
        .header("X-Custom-Header", "Value")
        .json(&chat_body())
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 401);
    assert_eq!(mock.calls(DEP), 3);
    assert_eq!(mock.calls(OTHER_DEP), 0);

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 3);
    let last = &recorded[2];
    assert_eq!(last.method, "POST");
    assert_eq!(last.path, format!("/openai/deployments/{DEP}/chat/completions"));
    assert_eq!(last.query.as_deref(), Some(format!("api-version={API_VERSION}").as_str()));
    assert_eq!(last.header("x-custom-header"), Some("Value"), "names are lower-case");
    assert_eq!(last.header("api-key"), Some("wrong"));
    assert_eq!(last.json(), Some(chat_body()));
    assert_eq!(recorded[0].header("api-key"), Some(KEY));

    mock.reset();
    assert_eq!(mock.calls(DEP), 0);
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn shutdown_stops_accepting_and_cuts_open_streams() {
    let mock = start().await;
    let client = client();
    mock.script(DEP, Fault::StreamStall { after_chunks: 1, ms: 60_000, times: 1 });
    let mut resp = chat(&client, &mock, &streaming()).await;
    assert!(resp.chunk().await.expect("first frame").is_some());
    mock.shutdown();
    tokio::time::timeout(DEADLINE, mock.stopped()).await.expect("stopped resolves");
    // The stalled stream is cut rather than left hanging for a minute.
    let rest = tokio::time::timeout(DEADLINE, async {
        loop {
            match resp.chunk().await {
                Ok(Some(_)) => continue,
                other => break other.map(|_| ()),
            }
        }
    })
    .await
    .expect("stream ends promptly");
    assert!(rest.is_err(), "an in-flight stream is aborted");

    // New connections are refused once the listener task has exited.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match tokio::net::TcpStream::connect(mock.addr()).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
            other => panic!("listener still open: {other:?}"),
        }
    }
}
