//! The `/_mock/` control API drives the same state as the Rust API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use modelgw_mock_openai::{Fault, RecordedRequest};
use serde_json::{Value, json};

#[tokio::test]
async fn control_api_equals_the_rust_api() {
    let mock = start().await;
    let client = client();
    let base = mock.base_url();

    // Script over HTTP; the fault behaves as if scripted in Rust.
    let fault = Fault::throttled(3, 1);
    let resp =
        client.post(format!("{base}/_mock/faults/{DEP}")).json(&fault).send().await.expect("resp");
    assert_eq!(resp.status(), 204);
    let resp = client
        .post(format!("{base}/_mock/faults/{DEP}"))
        .body(r#"{"kind":"content_filter"}"#)
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 204, "times defaults to 1");
    let throttled = chat(&client, &mock, &chat_body()).await;
    assert_eq!(throttled.status(), 429);
    assert_eq!(header(&throttled, "retry-after"), "3");
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 400);
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 200);

    // Calls: every configured deployment is listed, and the numbers match.
    let calls: BTreeMap<String, u64> = client
        .get(format!("{base}/_mock/calls"))
        .send()
        .await
        .expect("resp")
        .json()
        .await
        .expect("json");
    assert_eq!(calls.get(DEP), Some(&mock.calls(DEP)));
    assert_eq!(calls.get(DEP), Some(&3));
    assert_eq!(calls.get(OTHER_DEP), Some(&0));

    // Requests: the same records, with credentials reduced to a hint.
    let over_http: Vec<RecordedRequest> = client
        .get(format!("{base}/_mock/requests"))
        .send()
        .await
        .expect("resp")
        .json()
        .await
        .expect("json");
    let in_rust: Vec<RecordedRequest> =
        mock.requests().iter().map(RecordedRequest::redacted).collect();
    assert_eq!(over_http, in_rust);
    assert_eq!(over_http.len(), 3);
    assert_eq!(over_http[0].header("api-key"), Some("…WXYZ"));
    let raw: Value = client
        .get(format!("{base}/_mock/requests"))
        .send()
        .await
        .expect("resp")
        .json()
        .await
        .expect("json");
    assert!(!raw.to_string().contains(KEY), "the key never leaves the mock");
    assert_eq!(raw[0]["body"], chat_body().to_string(), "body as a string");

    // Control requests themselves are neither counted nor recorded.
    assert_eq!(mock.requests().len(), 3);

    // Reset over HTTP clears what the Rust API sees.
    mock.script(DEP, Fault::Reset { times: u32::MAX });
    let resp = client.post(format!("{base}/_mock/reset")).send().await.expect("resp");
    assert_eq!(resp.status(), 204);
    assert_eq!(mock.calls(DEP), 0);
    assert!(mock.requests().is_empty());
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 200, "faults cleared");
}

#[tokio::test]
async fn control_api_rejects_bad_input() {
    let mock = start().await;
    let client = client();
    let base = mock.base_url();
    let bad = client
        .post(format!("{base}/_mock/faults/{DEP}"))
        .body(r#"{"kind":"explode"}"#)
        .send()
        .await
        .expect("resp");
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.expect("body").contains("invalid JSON"));
    let no_dep =
        client.post(format!("{base}/_mock/faults/")).json(&json!({"kind":"reset"})).send().await;
    assert_eq!(no_dep.expect("resp").status(), 404);
    let unknown = client.get(format!("{base}/_mock/nothing")).send().await.expect("resp");
    assert_eq!(unknown.status(), 404);
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 200, "nothing was scripted");
}

#[tokio::test]
async fn settings_over_http_change_latency_and_stream_gap() {
    let mock = start().await;
    let client = client();
    let base = mock.base_url();
    let settings: Value = client
        .get(format!("{base}/_mock/settings"))
        .send()
        .await
        .expect("resp")
        .json()
        .await
        .expect("json");
    assert_eq!(settings, json!({"latency_ms": 0, "stream_gap_ms": 10}));

    let resp = client
        .post(format!("{base}/_mock/settings"))
        .json(&json!({"latency_ms": 300}))
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 204);
    let started = Instant::now();
    assert_eq!(chat(&client, &mock, &chat_body()).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let settings: Value = client
        .get(format!("{base}/_mock/settings"))
        .send()
        .await
        .expect("resp")
        .json()
        .await
        .expect("json");
    assert_eq!(settings, json!({"latency_ms": 300, "stream_gap_ms": 10}), "unset fields are kept");
}
