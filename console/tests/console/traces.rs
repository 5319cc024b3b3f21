//! The request traces page: empty, a list with the endpoints tried and links to filter by
//! gateway and key, filters and paging with the API's cursor, and a trace's page with its
//! payload escaped — shown to operators and admins, withheld from viewers.

use http::{Method, StatusCode};
use modelgw_model::traces::{RequestTrace, TraceAttempt};
use modelgw_model::{EndpointId, GatewayId, GatewayKeyId, NodeId};
use serde_json::json;

use crate::harness::{ADMIN_TOKEN, Console};

fn trace(gateway: GatewayId, endpoint: EndpointId, at: i64, status: u16) -> RequestTrace {
    RequestTrace {
        request_id: format!("req-{at}"),
        started_unix_ms: at,
        gateway_id: gateway,
        key_id: GatewayKeyId::new(),
        operation: "chat_completions".into(),
        model: Some("gpt-4o-mini".into()),
        stream: true,
        status,
        attempts: vec![
            TraceAttempt {
                endpoint_id: endpoint,
                status: Some(429),
                outcome: "throttled".into(),
                latency_ms: 3,
            },
            TraceAttempt {
                endpoint_id: EndpointId::new(),
                status: Some(200),
                outcome: "ok".into(),
                latency_ms: 40,
            },
        ],
        latency_ms: 55,
        ttft_ms: Some(21),
        prompt_tokens: Some(12),
        completion_tokens: Some(34),
        client_request_id: Some("client-9".into()),
        request_body: None,
        response_body: None,
        payload_truncated: false,
    }
}

#[tokio::test]
async fn traces_are_listed_filtered_paged_and_shown_with_their_payload() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let empty = c.send(Method::GET, "/traces", Some(&cookie), None).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert!(empty.body.contains("<title>Request Traces"));
    assert!(empty.body.contains(r#"href="/traces" aria-current="page""#), "in the navigation");
    assert!(empty.body.contains("No traces yet"));

    let (status, endpoint) = c
        .api(
            Method::POST,
            "/api/v1/inference-endpoints",
            Some(json!({
                "name": "eus", "platform": "azure_openai",
                "endpoint": "https://contoso.openai.azure.com/", "deployment": "gpt-4o",
                "model_name": "gpt-4o", "model_version": "2024-11-20", "region": "eastus",
                "auth": "entra",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{endpoint}");
    let endpoint: EndpointId = endpoint["id"].as_str().unwrap().parse().unwrap();
    let (status, gw) = c
        .api(Method::POST, "/api/v1/gateways", Some(json!({"name": "chat", "endpoints": []})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{gw}");
    let gateway: GatewayId = gw["id"].as_str().unwrap().parse().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let mut batch: Vec<RequestTrace> = (0..60)
        .map(|i| trace(gateway, endpoint, now - 60_000 + i * 1000, if i == 59 { 503 } else { 200 }))
        .collect();
    batch[59].request_body = Some(
        r#"{"messages":[{"content":"<script>alert('x')</script>"}],"user":"[REDACTED]"}"#.into(),
    );
    batch[59].response_body = Some("data: {\"a\":1}\n\n".into());
    c.store.insert_traces(&NodeId("dp-0".into()), &batch).await.unwrap();

    let page = c.send(Method::GET, "/traces", Some(&cookie), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(r#"id="traces-table""#), "{}", page.body);
    assert_eq!(page.body.matches("data-trace=").count(), 50, "one page");
    assert!(page.body.contains("eus: throttled"), "endpoint names resolved: {}", page.body);
    assert!(page.body.contains(r#"data-status="503""#));
    assert!(page.body.contains(&format!(r#"href="/traces?gateway_id={gateway}""#)));
    let older = regex::Regex::new(r#"id="older" rel="next" href="([^"]+)""#).unwrap();
    let next = older.captures(&page.body).expect("an older page")[1].replace("&amp;", "&");
    let second = c.send(Method::GET, &next, Some(&cookie), None).await;
    assert_eq!(second.body.matches("data-trace=").count(), 10, "{}", second.body);
    assert!(!older.is_match(&second.body), "the last page");

    let errors = c.send(Method::GET, "/traces?status=5xx", Some(&cookie), None).await;
    assert_eq!(errors.body.matches("data-trace=").count(), 1);
    let bad = c.send(Method::GET, "/traces?from=whenever", Some(&cookie), None).await;
    assert_eq!(bad.status, StatusCode::OK);
    assert!(bad.body.contains("from: not a date and time"), "{}", bad.body);
    let refused = c.send(Method::GET, "/traces?status=999", Some(&cookie), None).await;
    assert!(refused.body.contains(r#"role="alert""#), "the API's 400 is shown: {}", refused.body);

    // One trace: facts, attempts, and the payload as text.
    let link =
        regex::Regex::new(r#"<tr data-trace="([^"]+)"><td><a href="(/traces/[^"]+)""#).unwrap();
    let captured = link.captures(&errors.body).expect("a row")[2].to_owned();
    let detail = c.send(Method::GET, &captured, Some(&cookie), None).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    assert!(detail.body.contains(r#"id="attempts-table""#));
    assert!(detail.body.contains("client-9"));
    assert!(detail.body.contains(r#"id="request-body""#), "{}", detail.body);
    assert!(!detail.body.contains("<script>alert"), "escaped: {}", detail.body);
    assert!(detail.body.contains("&lt;script&gt;alert"), "{}", detail.body);
    assert!(detail.body.contains("[REDACTED]"));

    let viewer = c.sign_in(&c.api_token("viewer").await).await;
    let as_viewer = c.send(Method::GET, &captured, Some(&viewer), None).await;
    assert_eq!(as_viewer.status, StatusCode::OK);
    assert!(as_viewer.body.contains("shown to operators and admins only"), "{}", as_viewer.body);
    assert!(!as_viewer.body.contains("alert"), "{}", as_viewer.body);
    let missing = c.send(Method::GET, "/traces/not-an-id", Some(&cookie), None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}
