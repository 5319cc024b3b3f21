//! Request traces through the admin API (issue #14, item 3): a gateway's `traces` settings
//! (defaults, validation naming the field, the snapshot data planes get), and
//! `GET /api/v1/traces` / `GET /api/v1/traces/{id}`: filters, cursor paging newest first, and
//! payloads only for the roles that may read request content.

use http::{Method, StatusCode};
use modelgw_model::traces::{RequestTrace, TraceAttempt};
use modelgw_model::{EndpointId, GatewayId, GatewayKeyId, NodeId};
use serde_json::{Value, json};

use crate::harness::{Harness, id_of};

/// A trace of `gateway`, started at `at` (unix ms), answered with `status`.
pub fn trace(gateway: GatewayId, at: i64, status: u16) -> RequestTrace {
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
                endpoint_id: EndpointId::new(),
                status: Some(429),
                outcome: "throttled".into(),
                latency_ms: 4,
            },
            TraceAttempt {
                endpoint_id: EndpointId::new(),
                status: None,
                outcome: "connect_error".into(),
                latency_ms: 2,
            },
        ],
        latency_ms: 30,
        ttft_ms: Some(12),
        prompt_tokens: Some(9),
        completion_tokens: Some(21),
        client_request_id: Some("client-7".into()),
        request_body: None,
        response_body: None,
        payload_truncated: false,
    }
}

#[tokio::test]
async fn gateway_trace_settings_default_validate_and_reach_the_snapshot() {
    let h = Harness::start().await;
    let plain = h.create_gateway(json!({"name": "plain", "endpoints": []})).await;
    assert_eq!(
        plain["traces"],
        json!({
            "enabled": false,
            "capture_payload": false,
            "redact_fields": [],
            "max_payload_bytes": null,
            "retention_days": 7,
            "max_count": 100000
        })
    );
    let settings = json!({
        "enabled": true,
        "capture_payload": true,
        "redact_fields": ["api_key", "ssn"],
        "max_payload_bytes": 4096,
        "retention_days": 30,
        "max_count": 1000
    });
    let traced =
        h.create_gateway(json!({"name": "traced", "endpoints": [], "traces": settings})).await;
    assert_eq!(traced["traces"], settings);
    let id = id_of(&traced);
    assert_eq!(h.get(&format!("/api/v1/gateways/{id}")).await.json()["traces"], settings);

    // The snapshot carries what data planes need (not the retention).
    h.wait_for_published(h.version().await).await;
    let published = h.distribution.subscribe().borrow().snapshot().clone();
    let gw = published.gateways.iter().find(|g| g.name == "traced").expect("in the snapshot");
    assert!(gw.traces.enabled && gw.traces.capture_payload);
    assert_eq!(gw.traces.redact_fields, ["api_key", "ssn"]);
    assert_eq!(gw.traces.max_payload_bytes, Some(4096));

    // A patch replaces the whole settings; omitted fields take their defaults.
    let patched = h
        .call(
            Method::PATCH,
            &format!("/api/v1/gateways/{id}"),
            Some(json!({"traces": {"enabled": true}})),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(patched["traces"]["capture_payload"], false);
    assert_eq!(patched["traces"]["retention_days"], 7);
    let audit = h.audit_log().await;
    let last = audit.last().expect("an entry");
    assert_eq!(last["action"], "update");
    assert_eq!(last["before"]["traces"]["capture_payload"], true, "{last}");
    assert_eq!(last["after"]["traces"]["capture_payload"], false, "{last}");

    // Every invalid value is named, all at once, and nothing is written.
    let version = h.version().await;
    let too_many: Vec<String> = (0..65).map(|i| format!("f{i}")).collect();
    let reply = h
        .call(
            Method::POST,
            "/api/v1/gateways",
            Some(json!({"name": "bad", "endpoints": [], "traces": {
                "redact_fields": ["ok", "", "x".repeat(129)],
                "max_payload_bytes": 262_145,
                "retention_days": 0,
                "max_count": 10_000_001
            }})),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.content_type(), "application/problem+json");
    assert_eq!(
        reply.error_fields(),
        [
            "traces.redact_fields[1]",
            "traces.redact_fields[2]",
            "traces.max_payload_bytes",
            "traces.retention_days",
            "traces.max_count"
        ]
    );
    let reply = h
        .call(
            Method::PATCH,
            &format!("/api/v1/gateways/{id}"),
            Some(json!({"traces": {"redact_fields": too_many}})),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["traces.redact_fields"]);
    let reply = h
        .call(
            Method::PATCH,
            &format!("/api/v1/gateways/{id}"),
            Some(json!({"traces": {"enabled": true, "sample_rate": 1}})),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.error_fields().iter().any(|f| f.contains("sample_rate")), "{}", reply.text);
    // The array form serde would take field by field is not an object.
    let reply = h
        .call(
            Method::PATCH,
            &format!("/api/v1/gateways/{id}"),
            Some(json!({"traces": [true, true]})),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["traces"], "{}", reply.text);
    assert_eq!(h.version().await, version, "nothing written");
}

/// Inserts `traces` as data plane `dp-0` sent them.
async fn stored(h: &Harness, traces: &[RequestTrace]) {
    h.store.insert_traces(&NodeId("dp-0".into()), traces).await.expect("insert");
}

#[tokio::test]
async fn traces_are_listed_newest_first_filtered_and_paged() {
    let h = Harness::start().await;
    let a = id_of(&h.create_gateway(json!({"name": "a", "endpoints": []})).await);
    let key = h
        .call(Method::POST, &format!("/api/v1/gateways/{a}/keys"), Some(json!({"name": "team"})))
        .await
        .expect(StatusCode::CREATED)
        .json();
    let a_id: GatewayId = a.parse().unwrap();
    let key_id: GatewayKeyId = id_of(&key).parse().unwrap();
    let other: GatewayId =
        id_of(&h.create_gateway(json!({"name": "b", "endpoints": []})).await).parse().unwrap();
    let mut batch = Vec::new();
    for i in 0..12i64 {
        let status = if i % 4 == 0 { 503 } else { 200 };
        let mut t =
            trace(if i % 3 == 0 { other } else { a_id }, 1_765_000_000_000 + i * 1000, status);
        if t.gateway_id == a_id {
            t.key_id = key_id;
        }
        batch.push(t);
    }
    stored(&h, &batch).await;

    let page = h.get("/api/v1/traces?limit=5").await.expect(StatusCode::OK).json();
    let items = page["traces"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert_eq!(items[0]["request_id"], "req-1765000011000", "newest first");
    let first = &items[0];
    assert_eq!(first["started_at"], "2025-12-06T05:46:51Z");
    assert_eq!(first["gateway_name"], "a");
    assert_eq!(first["key_name"], "team");
    assert_eq!(first["node_id"], "dp-0");
    assert_eq!(first["attempts"][0]["outcome"], "throttled");
    assert_eq!(first["attempts"][1]["status"], Value::Null);
    assert_eq!((first["prompt_tokens"].as_u64(), first["ttft_ms"].as_u64()), (Some(9), Some(12)));
    assert!(first.get("request_body").is_none(), "a list carries no payload: {first}");
    // Following next_cursor visits every trace once.
    let mut seen: Vec<String> = Vec::new();
    let mut path = "/api/v1/traces?limit=5".to_owned();
    loop {
        let page = h.get(&path).await.expect(StatusCode::OK).json();
        seen.extend(
            page["traces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["request_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/traces?limit=5&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<String> =
        (0..12).rev().map(|i| format!("req-{}", 1_765_000_000_000i64 + i * 1000)).collect();
    assert_eq!(seen, expected);

    let count = |path: String| {
        let h = &h;
        async move {
            h.get(&path).await.expect(StatusCode::OK).json()["traces"].as_array().unwrap().len()
        }
    };
    assert_eq!(count(format!("/api/v1/traces?gateway_id={a}&limit=200")).await, 8);
    assert_eq!(count(format!("/api/v1/traces?key_id={key_id}")).await, 8);
    assert_eq!(count("/api/v1/traces?status=503".into()).await, 3);
    assert_eq!(count("/api/v1/traces?status=5xx".into()).await, 3);
    assert_eq!(count("/api/v1/traces?status=2xx".into()).await, 9);
    let (from, to) = ("2025-12-06T05:46:42Z", "2025-12-06T05:46:45Z");
    assert_eq!(count(format!("/api/v1/traces?from={from}&to={to}")).await, 3);

    // Bad parameters are a 400 naming the parameter.
    for (query, field) in [
        ("status=600", "status"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("gateway_id=nope", "gateway_id"),
        ("key_id=nope", "key_id"),
        ("cursor=abc", "cursor"),
    ] {
        let reply = h.get(&format!("/api/v1/traces?{query}")).await.expect(StatusCode::BAD_REQUEST);
        assert_eq!(reply.content_type(), "application/problem+json");
        assert!(
            reply.json()["detail"].as_str().unwrap().starts_with(field),
            "{query}: {}",
            reply.text
        );
    }
    h.get("/api/v1/traces?colour=red").await.expect(StatusCode::BAD_REQUEST);
    h.get("/api/v1/traces?from=yesterday").await.expect(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn payloads_are_shown_to_operators_and_admins_only() {
    let h = Harness::start().await;
    // A gateway that exists: the retention job deletes the traces of those that do not.
    let gw = id_of(&h.create_gateway(json!({"name": "gw", "endpoints": []})).await);
    let mut captured = trace(gw.parse().unwrap(), 1_765_000_000_000, 200);
    captured.request_body = Some(
        r#"{"messages":[{"content":"<script>alert(1)</script>"}],"user":"[REDACTED]"}"#.into(),
    );
    captured.response_body = Some(r#"{"object":"chat.completion"}"#.into());
    stored(&h, &[captured.clone()]).await;
    let listed = h.get("/api/v1/traces").await.expect(StatusCode::OK).json();
    let item = &listed["traces"][0];
    assert_eq!(item["payload_captured"], true);
    let id = item["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/traces/{id}");

    let as_admin = h.get(&path).await.expect(StatusCode::OK).json();
    assert_eq!(as_admin["payload_visible"], true);
    assert_eq!(as_admin["request_body"].as_str(), captured.request_body.as_deref());
    assert_eq!(as_admin["response_body"].as_str(), captured.response_body.as_deref());
    assert_eq!(as_admin["request_id"], "req-1765000000000");
    assert_eq!(as_admin["gateway_name"], "gw");
    assert_eq!(as_admin["key_name"], Value::Null, "a key that is not (or no longer) there");

    let (_, operator) = h.api_token("ops", "operator").await;
    let as_operator =
        h.call_as(&operator, Method::GET, &path, None).await.expect(StatusCode::OK).json();
    assert_eq!(as_operator["request_body"], as_admin["request_body"]);

    let (_, viewer) = h.api_token("watcher", "viewer").await;
    let as_viewer = h.call_as(&viewer, Method::GET, &path, None).await.expect(StatusCode::OK);
    assert!(!as_viewer.text.contains("alert(1)"), "{}", as_viewer.text);
    let as_viewer = as_viewer.json();
    assert_eq!(as_viewer["payload_visible"], false);
    assert_eq!(
        (as_viewer["request_body"].clone(), as_viewer["response_body"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(as_viewer["payload_captured"], true, "the viewer learns there is one");
    assert_eq!(as_viewer["attempts"], as_admin["attempts"], "the metadata is the same");

    h.get(&format!("/api/v1/traces/{}", uuid::Uuid::new_v4())).await.expect(StatusCode::NOT_FOUND);
    h.get("/api/v1/traces/not-an-id").await.expect(StatusCode::NOT_FOUND);
}
