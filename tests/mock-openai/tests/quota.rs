//! A region's token-bucket quota over HTTP: charged at arrival, Azure's 429 with the time the
//! request would fit, the chosen quota headers on every answer, counts, and the same through
//! the control API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod common;

use std::time::{Duration, Instant};

use common::*;
use modelgw_mock_openai::{Fault, Quota, QuotaCounts, QuotaHeaders};
use serde_json::{Value, json};

/// 2 requests/s and 300 tokens/s over a 1 s window: room for two 150-token requests.
fn small_quota(headers: QuotaHeaders) -> Quota {
    Quota { requests_per_sec: 2.0, tokens_per_sec: 300.0, window: Duration::from_secs(1), headers }
}

/// A chat request costing exactly 150 tokens: 200 characters (50 tokens) + `max_tokens` 100.
fn chat_150() -> Value {
    json!({"messages": [{"role": "user", "content": "x".repeat(200)}], "max_tokens": 100})
}

fn opt_header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get(name).map(|v| v.to_str().expect("ascii header").to_owned())
}

#[tokio::test]
async fn requests_beyond_the_buckets_get_azures_429_with_when_they_would_fit() {
    let mock = start().await;
    let client = client();
    mock.set_quota(Some(small_quota(QuotaHeaders::Full))).expect("valid quota");

    let first = chat(&client, &mock, &chat_150()).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), "1");
    assert_eq!(header(&first, "x-ratelimit-remaining-tokens"), "150");
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), "2");
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), "300");
    assert!(header(&first, "x-ratelimit-reset-requests").ends_with("ms"), "≤ 500 ms to full");
    assert_eq!(chat(&client, &mock, &chat_150()).await.status(), 200);

    let throttled = chat(&client, &mock, &chat_150()).await;
    assert_eq!(throttled.status(), 429);
    assert_eq!(header(&throttled, "retry-after"), "1", "≤ 500 ms, rounded up to whole seconds");
    let ms: u64 = header(&throttled, "retry-after-ms").parse().expect("a number");
    assert!((1..=500).contains(&ms), "one request refills in 500 ms: {ms}");
    assert_eq!(header(&throttled, "x-ratelimit-remaining-requests"), "0");
    let body: Value = throttled.json().await.expect("json");
    let message = body["error"]["message"].as_str().expect("a message");
    assert_eq!(body["error"]["code"], "429");
    assert!(message.contains("Please retry after 1 seconds."), "{message}");
    assert!(message.contains("ChatCompletions_Create"), "{message}");
    assert_eq!(mock.quota_counts(), QuotaCounts { admitted: 2, served: 2, throttled: 1 });

    // Nothing was charged for the 429: one request fits once its 500 ms have passed.
    tokio::time::sleep(Duration::from_millis(ms)).await;
    assert_eq!(chat(&client, &mock, &chat_150()).await.status(), 200);

    // Reset refills the buckets and zeroes the counts; the quota stays.
    mock.reset();
    assert_eq!(mock.quota_counts(), QuotaCounts::default());
    assert_eq!(chat(&client, &mock, &chat_150()).await.status(), 200);
    assert_eq!(chat(&client, &mock, &chat_150()).await.status(), 200);
    assert_eq!(chat(&client, &mock, &chat_150()).await.status(), 429);

    // Without a quota the region never throttles on its own.
    mock.set_quota(None).expect("removing is valid");
    for _ in 0..5 {
        assert_eq!(chat(&client, &mock, &chat_150()).await.status(), 200);
    }
}

#[tokio::test]
async fn the_charge_is_at_arrival_and_for_the_maximum_tokens() {
    let mock = start().await;
    let client = client();
    mock.set_quota(Some(small_quota(QuotaHeaders::Full))).expect("valid quota");
    // Every admitted request then takes 400 ms.
    mock.script(DEP, Fault::Latency { ms: 400, times: u32::MAX });
    let body = chat_150();
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        chat(&client, &mock, &body),
        chat(&client, &mock, &body),
        chat(&client, &mock, &body),
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16(), c.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429], "two were charged while in flight");
    assert!(started.elapsed() >= Duration::from_millis(400));

    // The token bucket alone: a request whose maximum does not fit waits for it.
    mock.reset();
    let big =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 250});
    assert_eq!(chat(&client, &mock, &big).await.status(), 200, "1 + 250 tokens of 300");
    let throttled = chat(&client, &mock, &big).await;
    assert_eq!(throttled.status(), 429);
    assert_eq!(header(&throttled, "x-ratelimit-remaining-requests"), "1", "a request is left");
    let ms: u64 = header(&throttled, "retry-after-ms").parse().expect("a number");
    assert!((600..=700).contains(&ms), "≈ 202 missing tokens at 300/s: {ms}");
}

#[tokio::test]
async fn quota_headers_follow_the_chosen_dump_on_every_answer() {
    let mock = start().await;
    let client = client();
    mock.set_quota(Some(small_quota(QuotaHeaders::RemainingOnly))).expect("valid quota");
    let ok = chat(&client, &mock, &chat_150()).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(opt_header(&ok, "x-ratelimit-remaining-requests").as_deref(), Some("1"));
    assert_eq!(opt_header(&ok, "x-ratelimit-remaining-tokens").as_deref(), Some("150"));
    assert_eq!(opt_header(&ok, "x-ratelimit-limit-requests"), None);
    assert_eq!(opt_header(&ok, "x-ratelimit-reset-tokens"), None);

    mock.set_quota(Some(small_quota(QuotaHeaders::None))).expect("valid quota");
    for expected in [200, 200, 429] {
        let resp = chat(&client, &mock, &chat_150()).await;
        assert_eq!(resp.status(), expected);
        let quota_headers: Vec<_> = resp
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("x-ratelimit-"))
            .map(|k| k.as_str().to_owned())
            .collect();
        assert!(quota_headers.is_empty(), "the reactive region reports nothing: {quota_headers:?}");
        if expected == 429 {
            assert!(opt_header(&resp, "retry-after").is_some(), "a 429 still says when");
        }
    }
    // Embeddings are charged too, and a rejected key is not.
    mock.set_quota(Some(small_quota(QuotaHeaders::Full))).expect("valid quota");
    let wrong = client
        .post(dated_url(&mock, DEP, "chat/completions"))
        .header("api-key", "wrong")
        .json(&chat_150())
        .send()
        .await
        .expect("response");
    assert_eq!(wrong.status(), 401);
    let emb = client
        .post(dated_url(&mock, DEP, "embeddings"))
        .header("api-key", KEY)
        .json(&json!({"input": "abcd"}))
        .send()
        .await
        .expect("response");
    assert_eq!(emb.status(), 200);
    assert_eq!(header(&emb, "x-ratelimit-remaining-tokens"), (300 - 1 - 16).to_string());
    assert_eq!(mock.quota_counts(), QuotaCounts { admitted: 1, served: 1, throttled: 0 });
}

#[tokio::test]
async fn the_control_api_sets_the_quota_and_reads_the_counts() {
    let mock = start().await;
    let client = client();
    let base = mock.base_url();
    let set = client
        .post(format!("{base}/_mock/quota"))
        .json(&json!({"requests_per_sec": 2, "tokens_per_sec": 300, "window_ms": 1000}))
        .send()
        .await
        .expect("response");
    assert_eq!(set.status(), 204);
    for expected in [200, 200, 429] {
        assert_eq!(chat(&client, &mock, &chat_150()).await.status(), expected);
    }
    let status: Value = client
        .get(format!("{base}/_mock/quota"))
        .send()
        .await
        .expect("response")
        .json()
        .await
        .expect("json");
    assert_eq!(
        status,
        json!({"quota": {"requests_per_sec": 2.0, "tokens_per_sec": 300.0, "window_ms": 1000,
            "headers": "full"}, "admitted": 2, "served": 2, "throttled": 1})
    );

    let invalid = client
        .post(format!("{base}/_mock/quota"))
        .json(&json!({"requests_per_sec": 0, "tokens_per_sec": 300, "window_ms": 1000}))
        .send()
        .await
        .expect("response");
    assert_eq!(invalid.status(), 400);
    assert!(invalid.text().await.expect("text").contains("quota.requests_per_sec"));

    let removed =
        client.post(format!("{base}/_mock/quota")).body("null").send().await.expect("response");
    assert_eq!(removed.status(), 204);
    assert_eq!(chat(&client, &mock, &chat_150()).await.status(), 200);
}
