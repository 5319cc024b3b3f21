//! The `Region` harness: the same script/calls API whether the mock runs in this process or is
//! driven through its control API as another process would be.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod common;

use common::*;
use modelgw_mock_openai::{Fault, Region};

/// A chat to `region`'s deployment with its key; the status and `retry-after`.
async fn chat_status(region: &Region) -> (u16, String) {
    let response = client()
        .post(format!(
            "{}/openai/deployments/{}/chat/completions?api-version={API_VERSION}",
            region.url(),
            region.deployment
        ))
        .header("api-key", &region.key)
        .json(&chat_body())
        .send()
        .await
        .expect("response");
    let retry = response.headers().get("retry-after").map(|v| v.to_str().expect("ascii"));
    (response.status().as_u16(), retry.unwrap_or("").to_owned())
}

#[tokio::test]
async fn an_in_process_region_is_scripted_and_counted() {
    let region =
        Region::start("eus", "East US", "gpt-4o-eus", "key-eus-0123456789").await.expect("starts");
    assert_eq!((region.name.as_str(), region.display.as_str()), ("eus", "East US"));
    assert_eq!(region.url(), region.mock().base_url());
    assert_eq!(region.calls(), 0);
    region.script(Fault::throttled(3, 1));
    assert_eq!(chat_status(&region).await, (429, "3".to_owned()));
    assert_eq!(chat_status(&region).await.0, 200);
    assert_eq!(region.calls(), 2);
}

// Multi-threaded: the control API is called with blocking I/O, and here the mock it drives runs
// on this test's own runtime (as a process it would not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_in_another_process_is_scripted_and_counted_through_the_control_api() {
    let mock = start().await;
    let region = Region::process("eus", REGION, DEP, KEY, &mock.base_url());
    assert_eq!(region.calls(), 0);
    region.script(Fault::StreamCut { after_chunks: 2, times: 1 });
    region.script(Fault::throttled(4, 1));
    // The faults arrived typed, in order: the cut first (a non-streamed answer is cut midway).
    let cut = client()
        .post(dated_url(&mock, DEP, "chat/completions"))
        .header("api-key", KEY)
        .json(&chat_body())
        .send()
        .await
        .expect("headers before the cut");
    assert!(cut.bytes().await.is_err(), "the body is cut");
    assert_eq!(chat_status(&region).await, (429, "4".to_owned()));
    assert_eq!(region.calls(), 2);
    assert_eq!(region.calls(), mock.calls(DEP), "the same count as the mock's own");
}

#[tokio::test]
async fn a_region_served_elsewhere_has_no_calls() {
    let region = Region::elsewhere("gone", "gone", "gpt-4o-gone", "k", "http://127.0.0.1:9");
    assert_eq!(region.calls(), 0);
    assert_eq!(region.url(), "http://127.0.0.1:9");
}

/// Creates a response in `region`; its id.
async fn create_response(region: &Region) -> String {
    let body: serde_json::Value = client()
        .post(format!("{}/openai/v1/responses", region.url()))
        .header("api-key", &region.key)
        .json(&serde_json::json!({"model": region.deployment, "input": "hello"}))
        .send()
        .await
        .expect("response")
        .json()
        .await
        .expect("json");
    body["id"].as_str().expect("id").to_owned()
}

// Multi-threaded for the blocking control calls, as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_says_which_responses_it_holds_in_process_or_not() {
    let eus =
        Region::start("eus", "East US", "gpt-4o-eus", "key-eus-0123456789").await.expect("eus");
    let wus = start().await;
    let wus = Region::process("wus", REGION, DEP, KEY, &wus.base_url());
    let in_east = create_response(&eus).await;
    let in_west = create_response(&wus).await;
    assert!(eus.holds_response(&in_east) && !eus.holds_response(&in_west));
    assert!(wus.holds_response(&in_west) && !wus.holds_response(&in_east));
    wus.reset();
    assert!(wus.holds_response(&in_west), "a reset keeps stored responses");
    let elsewhere = Region::elsewhere("gone", "gone", "d", "k", "http://127.0.0.1:9");
    assert!(!elsewhere.holds_response(&in_east));
}
