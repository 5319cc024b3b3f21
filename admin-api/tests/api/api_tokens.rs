//! `/api/v1/api-tokens`: created and shown once (not cached), listed without the token,
//! revoked, unique by name; and `Cache-Control: no-store` on every shown-once secret.

use chrono::{DateTime, Utc};
use http::{Method, StatusCode, header};
use serde_json::json;

use crate::harness::{Harness, Reply, endpoint_body, id_of};

#[track_caller]
fn assert_not_cached(reply: &Reply) {
    let cache = reply.headers.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok());
    assert_eq!(cache, Some("no-store"), "a shown-once secret may be cached: {:?}", reply.headers);
}

#[tokio::test]
async fn a_token_is_shown_once_and_never_cached() {
    let h = Harness::start().await;
    let reply = h
        .call(
            Method::POST,
            "/api/v1/api-tokens",
            Some(json!({"name": " ci ", "role": "operator", "expires_in_seconds": 3600})),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_not_cached(&reply);
    let created = reply.json();
    let token = created["token"].as_str().expect("token").to_owned();
    assert!(token.starts_with("mgwtok_") && token.len() == 7 + 43, "{token}");
    assert_eq!(created["name"], "ci");
    assert_eq!(created["role"], "operator");
    assert_eq!(created["hint"], format!("…{}", &token[token.len() - 4..]));
    let expires: DateTime<Utc> =
        created["expires_at"].as_str().expect("expiry").parse().expect("time");
    let in_an_hour = Utc::now() + chrono::Duration::seconds(3600);
    assert!((in_an_hour - expires).num_seconds().abs() < 60, "{expires}");

    let list = h.get("/api/v1/api-tokens").await.expect(StatusCode::OK);
    assert!(!list.text.contains(&token), "the list shows the token: {}", list.text);
    let listed = &list.json()[0];
    assert_eq!(listed["id"], created["id"]);
    assert_eq!(listed["created_by"], "bootstrap");
    assert_eq!(listed["last_used_at"], json!(null));
    assert_eq!(listed["revoked_at"], json!(null));

    // Using it records when (to the minute).
    h.call_as(&token, Method::GET, "/api/v1/status", None).await.expect(StatusCode::OK);
    let listed = &h.get("/api/v1/api-tokens").await.expect(StatusCode::OK).json()[0];
    assert!(listed["last_used_at"].is_string(), "{listed}");
}

#[tokio::test]
async fn names_are_unique_and_stay_taken_after_revocation() {
    let h = Harness::start().await;
    let (id, _) = h.api_token("ci", "viewer").await;
    let body = json!({"name": "ci", "role": "admin"});
    let reply = h.call(Method::POST, "/api/v1/api-tokens", Some(body.clone())).await;
    assert_eq!(reply.expect(StatusCode::CONFLICT).error_fields(), ["name"]);
    for _ in 0..2 {
        // Idempotent: the second revoke succeeds too.
        h.call(Method::DELETE, &format!("/api/v1/api-tokens/{id}"), None)
            .await
            .expect(StatusCode::NO_CONTENT);
    }
    let listed = &h.get("/api/v1/api-tokens").await.expect(StatusCode::OK).json()[0];
    assert!(listed["revoked_at"].is_string(), "{listed}");
    h.call(Method::POST, "/api/v1/api-tokens", Some(body)).await.expect(StatusCode::CONFLICT);
    let unknown = uuid::Uuid::new_v4();
    h.call(Method::DELETE, &format!("/api/v1/api-tokens/{unknown}"), None)
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_admin_token_manages_tokens_under_its_own_name() {
    let h = Harness::start().await;
    let (_, admin) = h.api_token("security-team", "admin").await;
    let created = h
        .call_as(
            &admin,
            Method::POST,
            "/api/v1/api-tokens",
            Some(json!({"name": "ro", "role": "viewer"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .json();
    let listed = h.get("/api/v1/api-tokens").await.expect(StatusCode::OK).json();
    let ro = listed.as_array().expect("list").iter().find(|t| t["name"] == "ro").expect("ro");
    assert_eq!(ro["created_by"], "token:security-team");
    h.call_as(&admin, Method::DELETE, &format!("/api/v1/api-tokens/{}", id_of(&created)), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    let actors: Vec<String> = h
        .audit_log()
        .await
        .iter()
        .filter(|e| e["entity_name"] == "ro")
        .map(|e| {
            format!("{} {}", e["actor"].as_str().unwrap_or(""), e["action"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(actors, ["token:security-team create", "token:security-team revoke"]);
}

#[tokio::test]
async fn a_gateway_key_is_never_cached_and_other_answers_carry_no_such_header() {
    let h = Harness::start().await;
    let gw = id_of(&h.create_gateway(json!({"name": "gw", "endpoints": []})).await);
    let reply = h
        .call(Method::POST, &format!("/api/v1/gateways/{gw}/keys"), Some(json!({"name": "k"})))
        .await
        .expect(StatusCode::CREATED);
    assert_not_cached(&reply);
    // Only shown-once secrets are marked: an endpoint's answer holds no secret.
    let reply = h
        .call(
            Method::POST,
            "/api/v1/inference-endpoints",
            Some(endpoint_body("eus", "azkey-0123456789abcdef")),
        )
        .await
        .expect(StatusCode::CREATED);
    assert!(reply.headers.get(header::CACHE_CONTROL).is_none());
}
