//! What the admin API logs: a span per request, a line per config change, never a secret.
//!
//! A binary of its own: a thread-local subscriber in a binary whose other tests log
//! concurrently can miss events (callsite interest is cached process-wide).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

#[path = "api/harness.rs"]
#[allow(dead_code)] // Not every helper is used here.
mod harness;

use std::io::Write;
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use serde_json::json;

use harness::{ADMIN_TOKEN, Harness, endpoint_body, id_of};

/// Collects everything logged on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const ENDPOINT_KEY: &str = "azkey-LOGCHECK-0123456789abcdef";
const ROTATED_KEY: &str = "azkey-ROTATED-fedcba9876543210";

// Current-thread runtime (the default): the thread-local subscriber sees every task.
#[tokio::test]
async fn requests_and_config_changes_are_logged_without_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Harness::start().await;
    let e = id_of(&h.create_endpoint(endpoint_body("eus", ENDPOINT_KEY)).await);
    let e_path = format!("/api/v1/inference-endpoints/{e}");
    h.call(Method::PATCH, &e_path, Some(json!({"api_key": ROTATED_KEY})))
        .await
        .expect(StatusCode::OK);
    // Rejected requests carrying keys.
    h.call(Method::POST, "/api/v1/inference-endpoints", Some(endpoint_body("eus", ENDPOINT_KEY)))
        .await
        .expect(StatusCode::CONFLICT);
    h.call(Method::PATCH, &e_path, Some(json!({"api_key": format!("{ROTATED_KEY} x")})))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    h.call(Method::PATCH, &e_path, Some(json!({"api_key": {"k": ROTATED_KEY}})))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    let gw = id_of(
        &h.create_gateway(json!({"name": "gpt-4o", "endpoints": [{"endpoint_id": e}]})).await,
    );
    let created = h
        .call(
            Method::POST,
            &format!("/api/v1/gateways/{gw}/keys"),
            Some(json!({"name": "billing"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .json();
    let gateway_key = created["key"].as_str().expect("key").to_owned();
    h.get(&format!("/api/v1/gateways/{gw}/keys")).await.expect(StatusCode::OK);
    h.call(Method::DELETE, &e_path, None).await.expect(StatusCode::CONFLICT);
    // Auth decisions: a viewer's change is forbidden, a revoked token refused.
    let (token_id, viewer) = h.api_token("dashboards", "viewer").await;
    h.call_as(&viewer, Method::DELETE, &e_path, None).await.expect(StatusCode::FORBIDDEN);
    h.call(Method::DELETE, &format!("/api/v1/api-tokens/{token_id}"), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    h.call_as(&viewer, Method::GET, "/api/v1/status", None).await.expect(StatusCode::UNAUTHORIZED);
    let version = h.version().await;
    h.wait_for_published(version).await;

    let logs = captured.text();
    for secret in [ENDPOINT_KEY, ROTATED_KEY, &gateway_key, ADMIN_TOKEN, &viewer] {
        assert!(!logs.contains(secret), "a secret was logged:\n{logs}");
    }
    // Also no recognisable fragment of them (e.g. a truncated key).
    for fragment in ["LOGCHECK", "ROTATED", &gateway_key[4..20]] {
        assert!(!logs.contains(fragment), "part of a secret was logged ({fragment}):\n{logs}");
    }

    let changes: Vec<&str> =
        logs.lines().filter(|l| l.contains("modelgw_admin_api: config change")).collect();
    assert_eq!(changes.len(), 4, "one line per committed change:\n{}", changes.join("\n"));
    assert!(changes[0].contains(r#"entity="inference_endpoint""#), "{}", changes[0]);
    assert!(changes[0].contains(&format!("id={e}")), "{}", changes[0]);
    assert!(changes[0].contains(r#"name="eus""#), "{}", changes[0]);
    assert!(changes[0].contains("route=/api/v1/inference-endpoints"), "inside the request span");
    for change in &changes {
        assert!(change.contains("actor=bootstrap"), "the line names its actor: {change}");
    }
    assert!(changes[3].contains(&format!("version={}", version.0)), "{}", changes[3]);
    assert!(changes[3].contains("gateway_key"), "{}", changes[3]);

    let forbidden = logs
        .lines()
        .find(|l| l.contains("admin request forbidden"))
        .unwrap_or_else(|| panic!("no forbidden line:\n{logs}"));
    for field in ["actor=token:dashboards", "role=viewer", "required=operator"] {
        assert!(forbidden.contains(field), "{field} missing: {forbidden}");
    }
    assert!(
        logs.lines().any(|l| l.contains("admin request refused")
            && l.contains("actor=token:dashboards")
            && l.contains("revoked")),
        "the refusal of a revoked token names it and why:\n{logs}"
    );

    let requests: Vec<&str> = logs.lines().filter(|l| l.contains("admin request")).collect();
    assert!(
        requests.iter().any(|l| l.contains("route=/api/v1/inference-endpoints/{id}")
            && l.contains("method=PATCH")
            && l.contains("status=422")
            && l.contains("latency_ms=")),
        "request lines carry method, route, status and latency:\n{}",
        requests.join("\n")
    );
}
