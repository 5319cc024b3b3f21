//! Gateway key trees, expiry and limits, usage reports and budget leases in the store (issue
//! #14), each scenario on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

#[macro_use]
mod common;

use std::num::NonZeroU64;

use chrono::{DateTime, Duration, Utc};
use common::TestDb;
use modelgw_control_plane::store::{
    AuditAction, AuditContext, AuditEntity, AuditEntry, AuditQuery, GatewayKeyPatch, GatewayPatch,
    LeaseRequest, NewGateway, NewGatewayKey,
};
use modelgw_control_plane::{Store, StoreError};
use modelgw_model::keys::{
    KeyLimitPolicy, KeyLimits, KeyUsage, MAX_KEY_DEPTH, Usage, UsageReport, Window, WindowLimits,
};
use modelgw_model::{GatewayId, GatewayKeyId, NodeId};

on_both_backends!(
    a_key_tree_is_checked_and_revoking_a_key_revokes_its_subtree,
    expiry_and_limits_reach_the_snapshot_and_can_be_patched,
    usage_reports_keep_the_largest_cumulative_per_instance_and_add_up_over_instances,
    a_reset_counts_usage_from_zero_again_in_the_current_windows_only,
    last_use_is_recorded_to_the_minute_without_a_new_version,
    replicas_allocating_at_once_never_lend_more_than_the_limit,
    an_expired_lease_is_released_and_history_is_pruned_by_age,
);

fn audit() -> AuditContext {
    AuditContext::system("test")
}

async fn gateway(store: &Store, name: &str) -> GatewayId {
    store
        .create_gateway(NewGateway { name: name.into(), ..Default::default() }, &audit())
        .await
        .expect("gateway")
        .0
        .id
}

async fn key(store: &Store, gw: GatewayId, new: NewGatewayKey) -> GatewayKeyId {
    store.create_gateway_key_with(gw, new, &audit()).await.expect("key").0.id
}

fn child(name: &str, parent: GatewayKeyId) -> NewGatewayKey {
    NewGatewayKey { parent_id: Some(parent), ..NewGatewayKey::named(name) }
}

fn invalid_field(result: Result<impl std::fmt::Debug, StoreError>) -> (String, String) {
    match result {
        Err(StoreError::Invalid { field, reason }) => (field, reason),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn per_hour_total(limit: u64) -> KeyLimits {
    let mut l = KeyLimits::default();
    l.per_hour.total_tokens = Some(limit);
    l
}

async fn a_key_tree_is_checked_and_revoking_a_key_revokes_its_subtree(db: &TestDb) {
    let store = db.open().await;
    let gw = gateway(&store, "gw").await;
    let other_gw = gateway(&store, "other").await;
    let root = key(&store, gw, NewGatewayKey::named("department")).await;
    let team = key(&store, gw, child("team", root)).await;
    let service = key(&store, gw, child("service", team)).await;
    let sibling = key(&store, gw, child("sibling", root)).await;
    let foreign = key(&store, other_gw, NewGatewayKey::named("foreign")).await;
    let listed = store.list_gateway_keys(gw).await.expect("list");
    assert_eq!(listed[2].parent_id, Some(team));

    // A parent of another gateway, unknown, or expired is refused, naming `parent_id`.
    for parent in [foreign, GatewayKeyId::new()] {
        let (field, reason) =
            invalid_field(store.create_gateway_key_with(gw, child("x", parent), &audit()).await);
        assert_eq!(field, "parent_id");
        assert!(reason.contains("is not a key of this gateway"), "{reason}");
    }
    let expired = NewGatewayKey {
        expires_at: Some(Utc::now() - Duration::seconds(1)),
        ..NewGatewayKey::named("expired")
    };
    let expired = key(&store, gw, expired).await;
    let version = store.config_version().await.expect("version");
    let (_, reason) =
        invalid_field(store.create_gateway_key_with(gw, child("x", expired), &audit()).await);
    assert!(reason.contains("expired"), "{reason}");
    assert_eq!(
        store.config_version().await.expect("version"),
        version,
        "a refusal commits nothing"
    );
    // MAX_KEY_DEPTH levels below a root, not one more.
    let mut parent = service; // depth 2
    for level in 3..=MAX_KEY_DEPTH {
        parent = key(&store, gw, child(&format!("l{level}"), parent)).await;
    }
    let (_, reason) =
        invalid_field(store.create_gateway_key_with(gw, child("too-deep", parent), &audit()).await);
    assert!(reason.contains("deeper than"), "{reason}");
    let snapshot = store.load_snapshot().await.expect("a deepest tree is a valid snapshot");
    assert_eq!(snapshot.gateways[0].keys.len(), 4 + MAX_KEY_DEPTH - 2);

    // Revoking `team` revokes `service` and everything below it, not the root or sibling.
    let (revoked, v) = store.revoke_gateway_key(gw, team, &audit()).await.expect("revoke");
    assert!(revoked.revoked_at.is_some() && v.is_some());
    let keys = store.list_gateway_keys(gw).await.expect("list");
    let active: Vec<&str> =
        keys.iter().filter(|k| k.revoked_at.is_none()).map(|k| k.name.as_str()).collect();
    assert_eq!(active, ["department", "sibling", "expired"]);
    let log = store
        .audit_log(&AuditQuery {
            entity: Some(AuditEntity::GatewayKey),
            action: Some(AuditAction::Revoke),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit");
    // `team`, `service` and the levels below it.
    assert_eq!(log.len(), MAX_KEY_DEPTH, "one row per revoked key");
    assert!(log.iter().all(|e| e.config_version == v));
    let cascaded: Vec<&AuditEntry> =
        log.iter().filter(|e| e.entity_id != team.to_string()).collect();
    assert!(cascaded.iter().all(|e| e.after.as_ref().unwrap()["revoked_with"] == team.to_string()));
    // A revoked parent takes no new children; the snapshot holds the rest, parents first.
    let (_, reason) =
        invalid_field(store.create_gateway_key_with(gw, child("x", team), &audit()).await);
    assert!(reason.contains("revoked"), "{reason}");
    let snapshot = store.load_snapshot().await.expect("snapshot");
    let ids: Vec<GatewayKeyId> = snapshot.gateways[0].keys.iter().map(|k| k.id).collect();
    assert_eq!(ids, [root, sibling], "the expired key is left out");
    assert_eq!(snapshot.gateways[0].keys[1].parent, Some(root));
}

async fn expiry_and_limits_reach_the_snapshot_and_can_be_patched(db: &TestDb) {
    let store = db.open().await;
    let gw = gateway(&store, "gw").await;
    let expires =
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis() + 3_600_000).expect("time");
    let mut limits = per_hour_total(10_000);
    limits.per_minute.requests = Some(60);
    let root = key(
        &store,
        gw,
        NewGatewayKey { expires_at: Some(expires), limits, ..NewGatewayKey::named("root") },
    )
    .await;
    let leaf = key(&store, gw, child("leaf", root)).await;
    let policy = KeyLimitPolicy { default_completion_tokens: Some(256), fail_closed: true };
    let (record, _) = store
        .update_gateway(
            gw,
            GatewayPatch { key_limits: Some(policy), ..Default::default() },
            &audit(),
        )
        .await
        .expect("gateway patch");
    assert_eq!(record.key_limits, policy);

    let snapshot = store.load_snapshot().await.expect("snapshot");
    let g = &snapshot.gateways[0];
    assert_eq!(g.key_limits, policy);
    assert_eq!((g.keys[0].id, g.keys[0].limits), (root, limits));
    assert_eq!(g.keys[0].expires_unix_ms, Some(expires.timestamp_millis()));
    assert_eq!(g.keys[1].parent, Some(root));
    assert_eq!(g.keys[1].expires_unix_ms, Some(expires.timestamp_millis()), "inherited");
    assert_eq!(g.keys[1].name, "leaf");
    // The snapshot goes over the wire as it is.
    let wire = modelgw_model::wire::encode_snapshot(&snapshot);
    assert_eq!(modelgw_model::wire::decode_snapshot(&wire).expect("decodes"), snapshot);

    // Patch: rename, remove the expiry, replace the limits; `None` fields stay.
    let (patched, v) = store
        .update_gateway_key(
            gw,
            root,
            GatewayKeyPatch {
                name: Some("renamed".into()),
                expires_at: Some(None),
                limits: Some(per_hour_total(5)),
            },
            &audit(),
        )
        .await
        .expect("patch");
    assert!(v.is_some());
    assert_eq!((patched.name.as_str(), patched.expires_at), ("renamed", None));
    assert_eq!(patched.limits, per_hour_total(5));
    let (same, none) = store
        .update_gateway_key(gw, root, GatewayKeyPatch::default(), &audit())
        .await
        .expect("empty patch");
    assert_eq!((same, none), (patched.clone(), None), "an empty patch commits nothing");
    let (cleared, _) = store
        .update_gateway_key(
            gw,
            root,
            GatewayKeyPatch { limits: Some(KeyLimits::default()), ..Default::default() },
            &audit(),
        )
        .await
        .expect("clear limits");
    assert!(cleared.limits.is_unlimited());
    let entry = &store
        .audit_log(&AuditQuery {
            action: Some(AuditAction::Update),
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("audit")[0];
    assert_eq!(entry.after.as_ref().unwrap()["limits"], serde_json::json!({}));
    assert_eq!(
        entry.before.as_ref().unwrap()["limits"],
        serde_json::json!({"per_hour": {"total_tokens": 5}})
    );
    // A revoked key cannot change.
    store.revoke_gateway_key(gw, leaf, &audit()).await.expect("revoke");
    match store
        .update_gateway_key(
            gw,
            leaf,
            GatewayKeyPatch { name: Some("x".into()), ..Default::default() },
            &audit(),
        )
        .await
    {
        Err(StoreError::Conflict { field, .. }) => assert_eq!(field, "revoked_at"),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn instance(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).expect("non-zero")
}

fn entry(
    key_id: GatewayKeyId,
    window: Window,
    start: i64,
    charged: Usage,
    reserved: Usage,
) -> KeyUsage {
    KeyUsage {
        key_id,
        window,
        window_start_unix_ms: start,
        charged,
        reserved,
        wanted: Usage::default(),
    }
}

fn report(entries: Vec<KeyUsage>) -> UsageReport {
    UsageReport { keys: entries, skipped: vec![] }
}

async fn usage_reports_keep_the_largest_cumulative_per_instance_and_add_up_over_instances(
    db: &TestDb,
) {
    let store = db.open().await;
    let gw = gateway(&store, "gw").await;
    let k = key(&store, gw, NewGatewayKey::named("k")).await;
    let version = store.config_version().await.expect("version");
    let now = Utc::now();
    let hour = Window::Hour.start_of(now.timestamp_millis());
    let previous_hour = hour - Window::Hour.len_ms();
    let node = NodeId("dp-1".into());
    let a = report(vec![
        entry(k, Window::Hour, previous_hour, Usage::request(100, 50), Usage::default()),
        entry(k, Window::Hour, hour, Usage::request(10, 5), Usage::request(20, 1_024)),
    ]);
    store.record_key_usage(instance(1), &node, &a, now).await.expect("record");
    // Resent (a reconnect), then an older report arriving late: nothing counts twice or drops.
    store.record_key_usage(instance(1), &node, &a, now).await.expect("resend");
    let stale = report(vec![entry(k, Window::Hour, hour, Usage::request(1, 1), Usage::default())]);
    store.record_key_usage(instance(1), &node, &stale, now).await.expect("stale");
    // A second instance (another data plane, or this one restarted) adds up.
    // (An entry repeated within a report counts once, with its largest charges.)
    let b = report(vec![
        entry(k, Window::Hour, hour, Usage::request(7, 3), Usage::default()),
        entry(k, Window::Hour, hour, Usage::request(5, 1), Usage::default()),
    ]);
    store.record_key_usage(instance(2), &NodeId("dp-2".into()), &b, now).await.expect("b");

    let from = DateTime::from_timestamp_millis(previous_hour).expect("time");
    let to = now + Duration::hours(1);
    let history = store.key_usage_history(gw, k, Window::Hour, from, to).await.expect("history");
    let rows: Vec<(i64, Usage)> =
        history.iter().map(|r| (r.window_start.timestamp_millis(), r.usage)).collect();
    // The stale report lowered the reservation of instance 1 to zero, never its charges.
    let both = Usage::request(10, 5).saturating_add(Usage::request(7, 3));
    assert_eq!(rows, [(previous_hour, Usage::request(100, 50)), (hour, both)]);
    let current = store.current_key_usage(gw, now).await.expect("current");
    assert_eq!(current[&k][Window::Hour.index()], both);
    assert_eq!(current[&k][Window::Day.index()], Usage::default(), "no day rows were reported");
    assert_eq!(
        store.config_version().await.expect("version"),
        version,
        "usage is not configuration"
    );
    // A key of another gateway is not found through this one.
    let other = gateway(&store, "other").await;
    assert!(matches!(
        store.key_usage_history(other, k, Window::Hour, from, to).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn a_reset_counts_usage_from_zero_again_in_the_current_windows_only(db: &TestDb) {
    let store = db.open().await;
    let gw = gateway(&store, "gw").await;
    let k = key(
        &store,
        gw,
        NewGatewayKey { limits: per_hour_total(1_000), ..NewGatewayKey::named("k") },
    )
    .await;
    let now = Utc::now();
    let ms = now.timestamp_millis();
    let (hour, day) = (Window::Hour.start_of(ms), Window::Day.start_of(ms));
    let node = NodeId("dp-1".into());
    let used = Usage::request(600, 300);
    store
        .record_key_usage(
            instance(1),
            &node,
            &report(vec![
                entry(k, Window::Hour, hour, used, Usage::default()),
                entry(k, Window::Hour, hour - Window::Hour.len_ms(), used, Usage::default()),
                entry(k, Window::Day, day, used, Usage::default()),
            ]),
            now,
        )
        .await
        .expect("record");
    let version = store.config_version().await.expect("version");
    let discarded = store.reset_key_usage(gw, k, now, &audit()).await.expect("reset");
    assert_eq!(discarded[Window::Hour.index()], used);
    assert_eq!(store.config_version().await.expect("version"), version, "not configuration");
    let current = store.current_key_usage(gw, now).await.expect("current");
    assert_eq!(current.get(&k).copied().unwrap_or_default(), [Usage::default(); 3]);
    // More usage after the reset counts from there; the previous hour keeps its history.
    let more = used.saturating_add(Usage::request(10, 0));
    store
        .record_key_usage(
            instance(1),
            &node,
            &report(vec![entry(k, Window::Hour, hour, more, Usage::default())]),
            now,
        )
        .await
        .expect("record");
    let history = store
        .key_usage_history(gw, k, Window::Hour, now - Duration::hours(2), now + Duration::hours(1))
        .await
        .expect("history");
    let rows: Vec<Usage> = history.iter().map(|r| r.usage).collect();
    assert_eq!(rows, [used, Usage::request(10, 0)]);
    // The budget lent counts from the reset too: the whole limit again.
    let request = LeaseRequest {
        key_id: k,
        window: Window::Hour,
        window_start: hour,
        limits: *per_hour_total(1_000).window(Window::Hour),
        default_typical: Usage::request(10, 10),
        wanted: Usage::default(),
    };
    let g = store.allocate_leases(instance(1), &node, &[request], ms).await.expect("allocate");
    assert_eq!(g[0].fleet_used.total_tokens, 10);
    // Used + one typical request (910 tokens over 2 requests), more than a quarter of 1,000.
    assert_eq!(g[0].granted.total_tokens, Some(910 + 455));
    let entry = &store
        .audit_log(&AuditQuery {
            action: Some(AuditAction::ResetUsage),
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("audit")[0];
    assert_eq!(entry.entity_id, k.to_string());
    assert_eq!(entry.config_version, None);
    assert_eq!(entry.before.as_ref().unwrap()["usage"]["hour"]["total_tokens"], 900);
}

async fn last_use_is_recorded_to_the_minute_without_a_new_version(db: &TestDb) {
    let store = db.open().await;
    let gw = gateway(&store, "gw").await;
    let k = key(&store, gw, NewGatewayKey::named("k")).await;
    let version = store.config_version().await.expect("version");
    let t0 = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("time");
    store.touch_gateway_keys(&[k], t0).await.expect("touch");
    store.touch_gateway_keys(&[k], t0 + Duration::seconds(30)).await.expect("touch");
    let last = store.get_gateway_key(gw, k).await.expect("get").last_used_at;
    assert_eq!(last, Some(t0), "within the minute: not written again");
    store.touch_gateway_keys(&[k], t0 + Duration::seconds(61)).await.expect("touch");
    let last = store.get_gateway_key(gw, k).await.expect("get").last_used_at;
    assert_eq!(last, Some(t0 + Duration::seconds(61)));
    assert_eq!(store.config_version().await.expect("version"), version);
}

async fn replicas_allocating_at_once_never_lend_more_than_the_limit(db: &TestDb) {
    let replicas = [db.open().await, db.open().await];
    let gw = gateway(&replicas[0], "gw").await;
    let keys: Vec<GatewayKeyId> = {
        let mut keys = Vec::new();
        for i in 0..3 {
            keys.push(
                key(
                    &replicas[0],
                    gw,
                    NewGatewayKey {
                        limits: per_hour_total(10_000),
                        ..NewGatewayKey::named(format!("k{i}"))
                    },
                )
                .await,
            );
        }
        keys
    };
    let now = Utc::now().timestamp_millis();
    let hour = Window::Hour.start_of(now);
    let requests: Vec<LeaseRequest> = keys
        .iter()
        .map(|k| LeaseRequest {
            key_id: *k,
            window: Window::Hour,
            window_start: hour,
            limits: WindowLimits { total_tokens: Some(10_000), ..WindowLimits::default() },
            default_typical: Usage::request(100, 100),
            wanted: Usage::default(),
        })
        .collect();
    // 8 instances, half on each replica, each asking 6 times at once: a top-up every time,
    // since each spends everything it was lent before asking again.
    let mut tasks = Vec::new();
    for i in 1..=8u64 {
        let store = replicas[(i % 2) as usize].clone();
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let node = NodeId(format!("dp-{i}"));
            for _ in 0..6 {
                let grants = store
                    .allocate_leases(instance(i), &node, &requests, now)
                    .await
                    .expect("allocate");
                let spent: Vec<KeyUsage> = requests
                    .iter()
                    .zip(&grants)
                    .map(|(r, g)| {
                        let t = g.granted.total_tokens.unwrap_or(0);
                        entry(
                            r.key_id,
                            Window::Hour,
                            hour,
                            Usage { requests: t / 200, total_tokens: t, ..Usage::default() },
                            Usage::default(),
                        )
                    })
                    .collect();
                store
                    .record_key_usage(instance(i), &node, &report(spent), Utc::now())
                    .await
                    .expect("record");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let mut raw = db.raw().await;
    for k in &keys {
        use sqlx::Row as _;
        let row = sqlx::query(
            "SELECT CAST(SUM(granted_total_tokens) AS BIGINT) AS granted, COUNT(*) AS n FROM key_leases WHERE key_id = $1",
        )
        .bind(k.to_string())
        .fetch_one(&mut raw)
        .await
        .expect("sum");
        let granted: i64 = row.get("granted");
        let n: i64 = row.get("n");
        assert_eq!(n, 8, "one lease per instance");
        assert!(granted <= 10_000, "{granted} lent for a limit of 10,000");
        assert!(granted >= 9_000, "the limit is lent out as it is spent: {granted}");
    }
}

async fn an_expired_lease_is_released_and_history_is_pruned_by_age(db: &TestDb) {
    let store = db.open().await;
    let gw = gateway(&store, "gw").await;
    let k = key(
        &store,
        gw,
        NewGatewayKey { limits: per_hour_total(10_000), ..NewGatewayKey::named("k") },
    )
    .await;
    let now = Utc::now().timestamp_millis();
    let hour = Window::Hour.start_of(now);
    let request = LeaseRequest {
        key_id: k,
        window: Window::Hour,
        window_start: hour,
        limits: WindowLimits { total_tokens: Some(10_000), ..WindowLimits::default() },
        default_typical: Usage::request(100, 100),
        wanted: Usage::default(),
    };
    let node = NodeId("dp".into());
    let first = store.allocate_leases(instance(1), &node, &[request], now).await.expect("1");
    assert_eq!(first[0].granted.total_tokens, Some(2_500));
    // A second instance sees 2 connected: an eighth of the limit.
    let second = store.allocate_leases(instance(2), &node, &[request], now).await.expect("2");
    assert_eq!(second[0].granted.total_tokens, Some(1_250));
    // 40 s later instance 1 was not renewed (valid for 30 s + 5 s grace): its budget is free.
    let later = now + 40_000;
    let third = store.allocate_leases(instance(3), &node, &[request], later).await.expect("3");
    // Both earlier leases lapsed: released, and no longer counted as connected.
    assert_eq!(third[0].granted.total_tokens, Some(2_500));

    // Pruning: a minute row two days old goes, an hour row of yesterday stays.
    let ms = Utc::now().timestamp_millis();
    let old_minute = Window::Minute.start_of(ms - 2 * 86_400_000);
    let yesterday = Window::Hour.start_of(ms - 86_400_000);
    store
        .record_key_usage(
            instance(1),
            &node,
            &report(vec![
                entry(k, Window::Minute, old_minute, Usage::request(1, 1), Usage::default()),
                entry(k, Window::Hour, yesterday, Usage::request(1, 1), Usage::default()),
            ]),
            Utc::now(),
        )
        .await
        .expect("record");
    let deleted = store.prune_key_usage(Utc::now() + Duration::hours(2)).await.expect("prune");
    assert!(deleted >= 4, "the old minute row and the ended window's 3 leases: {deleted}");
    let history =
        |w: Window| store.key_usage_history(gw, k, w, Utc::now() - Duration::days(3), Utc::now());
    assert!(history(Window::Minute).await.expect("minutes").is_empty());
    assert_eq!(history(Window::Hour).await.expect("hours").len(), 1);
}
