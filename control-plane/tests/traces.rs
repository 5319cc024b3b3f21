//! Request traces in the store (issue #14, item 3), each scenario on SQLite and PostgreSQL:
//! gateway trace settings as configuration, batch inserts, filtered cursor paging newest
//! first, and retention by age, by count and of deleted gateways.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

#[macro_use]
mod common;

use chrono::{Duration as Days, Utc};
use common::TestDb;
use modelgw_control_plane::Store;
use modelgw_control_plane::store::{
    AuditAction, AuditContext, AuditEntity, AuditQuery, GatewayPatch, GatewayRecord, GatewayTraces,
    NewGateway, StatusFilter, StoredTrace, TraceQuery, TraceRetention,
};
use modelgw_model::traces::{RequestTrace, TraceAttempt, TraceSettings};
use modelgw_model::{EndpointId, GatewayId, GatewayKeyId, NodeId};
use sqlx::Row as _;

on_both_backends!(
    gateway_trace_settings_are_configuration_and_reach_the_snapshot,
    batches_are_stored_in_one_call_and_read_back,
    traces_filter_and_page_newest_first,
    retention_deletes_by_age_by_count_and_of_deleted_gateways,
);

fn audit() -> AuditContext {
    AuditContext::system("test")
}

async fn gateway(store: &Store, name: &str, traces: GatewayTraces) -> GatewayRecord {
    let new = NewGateway { name: name.into(), traces, ..Default::default() };
    store.create_gateway(new, &audit()).await.expect("gateway").0
}

fn traced() -> GatewayTraces {
    GatewayTraces { enabled: true, ..Default::default() }
}

/// A trace of `gateway` through `key`, started at `at` (unix ms), answered with `status`.
fn trace(gateway: GatewayId, key: GatewayKeyId, at: i64, status: u16) -> RequestTrace {
    RequestTrace {
        request_id: format!("req-{at}"),
        started_unix_ms: at,
        gateway_id: gateway,
        key_id: key,
        operation: "chat_completions".into(),
        model: Some("gpt-4o-mini".into()),
        stream: at % 2 == 0,
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
                latency_ms: 1,
            },
        ],
        latency_ms: 12,
        ttft_ms: Some(7),
        prompt_tokens: Some(11),
        completion_tokens: Some(u64::from(status)),
        client_request_id: Some("client-1".into()),
        request_body: None,
        response_body: None,
        payload_truncated: false,
    }
}

fn node() -> NodeId {
    NodeId("dp-0".into())
}

async fn gateway_trace_settings_are_configuration_and_reach_the_snapshot(db: &TestDb) {
    let store = db.open().await;
    let plain = gateway(&store, "plain", GatewayTraces::default()).await;
    assert_eq!(plain.traces, GatewayTraces::default());
    assert_eq!((plain.traces.retention_days, plain.traces.max_count), (7, 100_000));
    let settings = GatewayTraces {
        enabled: true,
        capture_payload: true,
        redact_fields: vec!["api_key".into(), "ssn".into()],
        max_payload_bytes: Some(4096),
        retention_days: 3,
        max_count: 500,
    };
    let gw = gateway(&store, "traced", settings.clone()).await;
    assert_eq!(gw.traces, settings);
    assert_eq!(store.get_gateway(gw.id).await.expect("get").traces, settings);
    let snapshot = store.load_snapshot().await.expect("snapshot");
    let in_snapshot = |name: &str| {
        snapshot.gateways.iter().find(|g| g.name == name).expect("gateway").traces.clone()
    };
    assert_eq!(in_snapshot("plain"), TraceSettings::default());
    assert_eq!(
        in_snapshot("traced"),
        TraceSettings {
            enabled: true,
            capture_payload: true,
            redact_fields: vec!["api_key".into(), "ssn".into()],
            max_payload_bytes: Some(4096),
        }
    );

    // A patch replaces the settings, bumps the version and is audited.
    let before = store.config_version().await.expect("version");
    let (patched, version) = store
        .update_gateway(
            gw.id,
            GatewayPatch { traces: Some(traced()), ..Default::default() },
            &audit(),
        )
        .await
        .expect("patch");
    assert!(version > before);
    assert_eq!(patched.traces, traced());
    assert_eq!(patched.name, "traced", "the rest stays");
    let entries = store
        .audit_log(&AuditQuery {
            entity: Some(AuditEntity::Gateway),
            entity_id: Some(gw.id.to_string()),
            action: Some(AuditAction::Update),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("audit");
    let after = entries[0].after.as_ref().expect("after");
    assert_eq!(after["traces"]["capture_payload"], false, "{after:?}");
    assert_eq!(entries[0].before.as_ref().expect("before")["traces"]["retention_days"], 3);
    // Other patches leave the trace settings alone.
    let (renamed, _) = store
        .update_gateway(
            gw.id,
            GatewayPatch { name: Some("renamed".into()), ..Default::default() },
            &audit(),
        )
        .await
        .expect("rename");
    assert_eq!(renamed.traces, traced());
}

async fn batches_are_stored_in_one_call_and_read_back(db: &TestDb) {
    let store = db.open().await;
    let gw = gateway(&store, "gw", traced()).await;
    let (key, _, _) =
        store.create_gateway_key(gw.id, "team-a".into(), &audit()).await.expect("key");
    let version = store.config_version().await.expect("version");
    // More rows than one INSERT statement takes.
    let batch: Vec<RequestTrace> = (0..450).map(|i| trace(gw.id, key.id, 1_000 + i, 200)).collect();
    assert_eq!(store.insert_traces(&node(), &batch).await.expect("insert"), 450);
    assert_eq!(store.config_version().await.expect("version"), version, "not configuration");
    let mut raw = db.raw().await;
    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM request_traces")
        .fetch_one(&mut raw)
        .await
        .expect("count")
        .try_get("n")
        .expect("n");
    assert_eq!(count, 450);

    // One with bodies: a list leaves them out and says they exist; a get has them.
    let mut captured = trace(gw.id, key.id, 5_000, 200);
    captured.request_body = Some(r#"{"messages":[{"content":"[REDACTED]"}]}"#.into());
    captured.response_body = Some("héllo".into());
    captured.payload_truncated = true;
    store.insert_traces(&node(), std::slice::from_ref(&captured)).await.expect("insert");
    let page =
        store.list_traces(&TraceQuery { limit: 1, ..Default::default() }).await.expect("list");
    let listed: &StoredTrace = &page.traces[0];
    assert_eq!(listed.trace.request_id, "req-5000");
    assert!(listed.payload_captured);
    assert_eq!(
        (listed.trace.request_body.as_ref(), listed.trace.response_body.as_ref()),
        (None, None)
    );
    assert_eq!(listed.gateway_name.as_deref(), Some("gw"));
    assert_eq!(listed.key_name.as_deref(), Some("team-a"));
    assert_eq!(listed.node_id, "dp-0");
    let got = store.get_trace(listed.id).await.expect("get");
    assert_eq!(got.trace, captured, "every field round-trips");
    assert!(got.payload_captured);
    let plain =
        store.list_traces(&TraceQuery { limit: 2, ..Default::default() }).await.expect("list");
    assert!(!plain.traces[1].payload_captured);
    let missing = store.get_trace(modelgw_control_plane::store::TraceId::new()).await;
    assert!(matches!(missing, Err(modelgw_control_plane::StoreError::NotFound { .. })));
}

async fn traces_filter_and_page_newest_first(db: &TestDb) {
    let store = db.open().await;
    let a = gateway(&store, "a", traced()).await;
    let b = gateway(&store, "b", traced()).await;
    let (ka, _, _) = store.create_gateway_key(a.id, "ka".into(), &audit()).await.expect("key");
    let (kb, _, _) = store.create_gateway_key(b.id, "kb".into(), &audit()).await.expect("key");
    let mut batch = Vec::new();
    for i in 0..30i64 {
        let (gw, key) = if i % 3 == 0 { (b.id, kb.id) } else { (a.id, ka.id) };
        let status = [200, 429, 503, 400, 200][i as usize % 5];
        // Pairs share a start time: the id breaks the tie, consistently.
        batch.push(trace(gw, key, 10_000 + (i / 2) * 1_000, status));
    }
    store.insert_traces(&node(), &batch).await.expect("insert");
    let all = |q: TraceQuery| {
        let store = store.clone();
        async move {
            let mut out: Vec<StoredTrace> = Vec::new();
            let mut cursor = None;
            loop {
                let page = store
                    .list_traces(&TraceQuery { cursor, limit: 7, ..q.clone() })
                    .await
                    .expect("page");
                assert!(page.traces.len() <= 7);
                out.extend(page.traces);
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return out,
                }
            }
        }
    };
    let everything = all(TraceQuery::default()).await;
    assert_eq!(everything.len(), 30, "every trace once across the pages");
    let order: Vec<(i64, String)> =
        everything.iter().map(|t| (t.trace.started_unix_ms, t.id.to_string())).collect();
    let mut sorted = order.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(order, sorted, "newest first, ties by id");
    let unpaged =
        store.list_traces(&TraceQuery { limit: 100, ..Default::default() }).await.expect("list");
    assert_eq!(
        unpaged.traces.iter().map(|t| t.id).collect::<Vec<_>>(),
        everything.iter().map(|t| t.id).collect::<Vec<_>>()
    );
    assert!(unpaged.next.is_none());

    let by_gateway = all(TraceQuery { gateway_id: Some(b.id), ..Default::default() }).await;
    assert_eq!(by_gateway.len(), 10);
    assert!(by_gateway.iter().all(|t| t.trace.gateway_id == b.id));
    let by_key = all(TraceQuery { key_id: Some(ka.id), ..Default::default() }).await;
    assert_eq!(by_key.len(), 20);
    assert!(by_key.iter().all(|t| t.trace.key_id == ka.id && t.key_name.as_deref() == Some("ka")));
    let throttled =
        all(TraceQuery { status: Some(StatusFilter::Exact(429)), ..Default::default() }).await;
    assert_eq!(throttled.len(), 6);
    let errors =
        all(TraceQuery { status: Some(StatusFilter::Class(5)), ..Default::default() }).await;
    assert!(errors.len() == 6 && errors.iter().all(|t| t.trace.status == 503));
    let client =
        all(TraceQuery { status: Some("4xx".parse().unwrap()), ..Default::default() }).await;
    assert_eq!(client.len(), 12, "429s and 400s");
    // From inclusive, to exclusive.
    let ms = |v: i64| chrono::DateTime::from_timestamp_millis(v).unwrap();
    let window =
        all(TraceQuery { from: Some(ms(12_000)), to: Some(ms(14_000)), ..Default::default() })
            .await;
    assert_eq!(window.len(), 4);
    assert!(window.iter().all(|t| (12_000..14_000).contains(&t.trace.started_unix_ms)));
    let combined = all(TraceQuery {
        gateway_id: Some(a.id),
        status: Some(StatusFilter::Exact(200)),
        from: Some(ms(10_000)),
        ..Default::default()
    })
    .await;
    assert!(!combined.is_empty());
    assert!(combined.iter().all(|t| t.trace.gateway_id == a.id && t.trace.status == 200));
    assert_eq!(
        combined.len(),
        batch.iter().filter(|t| t.gateway_id == a.id && t.status == 200).count()
    );
}

async fn retention_deletes_by_age_by_count_and_of_deleted_gateways(db: &TestDb) {
    let store = db.open().await;
    let by_age = gateway(&store, "by-age", GatewayTraces { retention_days: 2, ..traced() }).await;
    let by_count = gateway(&store, "by-count", GatewayTraces { max_count: 3, ..traced() }).await;
    let gone = gateway(&store, "gone", traced()).await;
    let key = GatewayKeyId::new();
    let now = Utc::now();
    let days_ago = |d: i64| (now - Days::days(d)).timestamp_millis();
    let mut batch = vec![
        trace(by_age.id, key, days_ago(5), 200),
        trace(by_age.id, key, days_ago(3), 200),
        trace(by_age.id, key, days_ago(1), 200),
        trace(by_age.id, key, days_ago(0), 200),
    ];
    for i in 0..6 {
        batch.push(trace(by_count.id, key, days_ago(1) + i, 200));
    }
    batch.push(trace(gone.id, key, days_ago(0), 200));
    store.insert_traces(&node(), &batch).await.expect("insert");
    store.delete_gateway(gone.id, &audit()).await.expect("delete");

    let deleted = store.prune_traces(now).await.expect("prune");
    assert_eq!(deleted, TraceRetention { by_age: 2, by_count: 3, orphaned: 1 });
    let left = |gw: GatewayId| {
        let store = store.clone();
        async move {
            let page = store
                .list_traces(&TraceQuery { gateway_id: Some(gw), limit: 100, ..Default::default() })
                .await
                .expect("list");
            page.traces.iter().map(|t| t.trace.started_unix_ms).collect::<Vec<_>>()
        }
    };
    assert_eq!(left(by_age.id).await, [days_ago(0), days_ago(1)], "younger than two days");
    let base = days_ago(1);
    assert_eq!(left(by_count.id).await, [base + 5, base + 4, base + 3], "the newest three");
    assert!(left(gone.id).await.is_empty());
    // Nothing more to do: a second run deletes nothing.
    assert_eq!(store.prune_traces(now).await.expect("prune"), TraceRetention::default());
}
