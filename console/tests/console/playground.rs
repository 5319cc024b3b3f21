//! The playground: operators only, the Gateway URL it needs, and a stream that is opened once.
//! The chat through a real data plane is a browser test (`tests/e2e/tests/console.rs`).

use http::{Method, StatusCode};
use serde_json::json;

use crate::harness::{ADMIN_TOKEN, Console};

#[tokio::test]
async fn viewers_get_no_playground_and_it_asks_for_the_gateway_url() {
    let c = Console::start().await;
    let (status, gw) = c
        .api(Method::POST, "/api/v1/gateways", Some(json!({"name": "chat", "endpoints": []})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{gw}");
    let gateway = gw["id"].as_str().unwrap();

    let viewer = c.sign_in(&c.api_token("viewer").await).await;
    let page = c.send(Method::GET, "/playground", Some(&viewer), None).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let overview = c.send(Method::GET, "/", Some(&viewer), None).await;
    assert!(!overview.body.contains(r#"href="/playground""#), "not offered to viewers");
    let csrf = overview.csrf();
    let forged = c
        .send(
            Method::POST,
            "/playground/chats",
            Some(&viewer),
            Some(&format!("_csrf={csrf}&gateway={gateway}&prompt=hi")),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let admin = c.sign_in(ADMIN_TOKEN).await;
    let page = c.send(Method::GET, "/playground", Some(&admin), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("MODELGW_GATEWAY_URL"), "{}", page.body);
    assert!(page.body.contains(r#"id="gateway""#) && page.body.contains(r#"id="prompt""#));
    let csrf = page.csrf();
    let refused = c
        .send(
            Method::POST,
            "/playground/chats",
            Some(&admin),
            Some(&format!("_csrf={csrf}&gateway={gateway}&prompt=hi")),
        )
        .await;
    assert!(refused.body.contains("MODELGW_GATEWAY_URL"), "{}", refused.body);
    assert!(!refused.body.contains("sse-connect"), "no chat starts without a Gateway URL");
}

#[tokio::test]
async fn a_stream_that_is_not_pending_ends_at_once() {
    let c = Console::start().await;
    let admin = c.sign_in(ADMIN_TOKEN).await;
    let page = c.send(Method::GET, "/playground/chats/0123abcd/stream", Some(&admin), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("event: chat-error") && page.body.contains("event: done"));
    // No key was made for it.
    let (_, keys) = c.api(Method::GET, "/api/v1/audit-log", None).await;
    assert!(!keys.to_string().contains("console-playground"), "{keys}");
}
