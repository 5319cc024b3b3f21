//! Gateway key trees, expiry, limits and usage through the admin API (issue #14).

use std::num::NonZeroU64;

use chrono::Utc;
use http::{Method, StatusCode};
use modelgw_model::keys::{KeyUsage, Usage, UsageReport, Window};
use modelgw_model::{GatewayKeyId, NodeId};
use serde_json::{Value, json};

use crate::harness::{Harness, id_of};

async fn gateway(h: &Harness, name: &str) -> String {
    id_of(&h.create_gateway(json!({"name": name, "endpoints": []})).await)
}

async fn create_key(h: &Harness, gw: &str, body: Value) -> Value {
    h.call(Method::POST, &format!("/api/v1/gateways/{gw}/keys"), Some(body))
        .await
        .expect(StatusCode::CREATED)
        .json()
}

fn in_an_hour() -> String {
    (Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn keys_form_a_tree_with_expiry_and_limits_and_revoking_a_parent_revokes_its_subtree() {
    let h = Harness::start().await;
    let gw = gateway(&h, "gw").await;
    let expires = in_an_hour();
    let limits = json!({"per_hour": {"total_tokens": 10000}, "per_minute": {"requests": 60}});
    let parent =
        create_key(&h, &gw, json!({"name": "department", "expires_at": expires, "limits": limits}))
            .await;
    assert_eq!(parent["limits"], limits);
    assert_eq!(parent["expires_at"], expires);
    assert_eq!(parent["parent_id"], Value::Null);
    let parent_id = id_of(&parent);
    let child = create_key(&h, &gw, json!({"name": "team", "parent_id": parent_id})).await;
    assert_eq!(child["parent_id"], parent_id);
    assert_eq!(child["limits"], json!({}), "no limits of its own");
    let grandchild = create_key(&h, &gw, json!({"name": "svc", "parent_id": id_of(&child)})).await;
    let plain = create_key(&h, &gw, json!({"name": "plain"})).await;

    let listed = h.get(&format!("/api/v1/gateways/{gw}/keys")).await.expect(StatusCode::OK).json();
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[0]["limits"], limits);
    assert_eq!(listed[0]["last_used_at"], Value::Null);
    assert_eq!(listed[0]["usage"]["hour"]["total_tokens"], 0);
    assert_eq!(listed[2]["parent_id"], id_of(&child));
    let one = h.get(&format!("/api/v1/gateways/{gw}/keys/{}", id_of(&child))).await;
    assert_eq!(one.expect(StatusCode::OK).json()["name"], "team");

    // The snapshot carries the tree, parents first, with the inherited expiry.
    h.wait_for_published(h.version().await).await;
    let published = h.distribution.subscribe().borrow().clone();
    let keys = &published.snapshot().gateways[0].keys;
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[0].limits.per_hour.total_tokens, Some(10_000));
    assert_eq!(keys[2].expires_unix_ms, keys[0].expires_unix_ms);

    // Bad parents are named: not a UUID, not a key of this gateway, a key of another one.
    let other = gateway(&h, "other").await;
    let foreign = create_key(&h, &other, json!({"name": "foreign"})).await;
    for bad in ["nope", &GatewayKeyId::new().to_string(), &id_of(&foreign)] {
        let reply = h
            .call(
                Method::POST,
                &format!("/api/v1/gateways/{gw}/keys"),
                Some(json!({"name": "x", "parent_id": bad})),
            )
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.error_fields(), ["parent_id"], "{bad}: {}", reply.text);
    }
    // So are a past expiry and limits out of range, all at once.
    let reply = h
        .call(
            Method::POST,
            &format!("/api/v1/gateways/{gw}/keys"),
            Some(json!({
                "name": "x",
                "expires_at": "2001-01-01T00:00:00Z",
                "limits": {"per_day": {"prompt_tokens": 0}, "per_week": {}},
            })),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["limits.per_week"], "unknown windows first: {}", reply.text);
    let reply = h
        .call(
            Method::POST,
            &format!("/api/v1/gateways/{gw}/keys"),
            Some(json!({"name": "x", "expires_at": "tomorrow", "limits": {"per_day": {"prompt_tokens": 0}}})),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["expires_at", "limits.per_day.prompt_tokens"]);

    // Revoking the parent revokes its subtree, in one change.
    let before = h.version().await;
    h.call(Method::DELETE, &format!("/api/v1/gateways/{gw}/keys/{parent_id}"), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(h.version().await.0, before.0 + 1);
    let listed = h.get(&format!("/api/v1/gateways/{gw}/keys")).await.expect(StatusCode::OK).json();
    let revoked: Vec<bool> =
        listed.as_array().expect("array").iter().map(|k| !k["revoked_at"].is_null()).collect();
    assert_eq!(revoked, [true, true, true, false]);
    h.wait_for_published(h.version().await).await;
    let published = h.distribution.subscribe().borrow().clone();
    let ids: Vec<String> =
        published.snapshot().gateways[0].keys.iter().map(|k| k.id.to_string()).collect();
    assert_eq!(ids, [id_of(&plain)]);
    let log = h.audit_log().await;
    let revokes: Vec<&Value> = log.iter().filter(|e| e["action"] == "revoke").collect();
    assert_eq!(revokes.len(), 3);
    assert_eq!(revokes[2]["after"]["revoked_with"], parent_id);
    assert!(revokes.iter().any(|e| e["entity_id"] == id_of(&grandchild)));
}

#[tokio::test]
async fn a_patch_sets_and_clears_expiry_and_limits_and_a_revoked_key_cannot_change() {
    let h = Harness::start().await;
    let gw = gateway(&h, "gw").await;
    let key = id_of(&create_key(&h, &gw, json!({"name": "k"})).await);
    let path = format!("/api/v1/gateways/{gw}/keys/{key}");
    let expires = in_an_hour();
    let limits = json!({"per_day": {"prompt_tokens": 500000, "completion_tokens": 100000}});
    let patched = h
        .call(
            Method::PATCH,
            &path,
            Some(json!({"expires_at": expires, "limits": limits, "name": "renamed"})),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(
        (&patched["name"], &patched["expires_at"], &patched["limits"]),
        (&json!("renamed"), &json!(expires), &limits)
    );
    let entry = h.audit_log().await.pop().expect("an entry");
    assert_eq!(entry["action"], "update");
    assert_eq!(entry["after"]["limits"], limits);

    // `null` clears; an absent field stays.
    let cleared = h
        .call(Method::PATCH, &path, Some(json!({"expires_at": null})))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!((&cleared["expires_at"], &cleared["limits"]), (&Value::Null, &limits));
    let cleared = h
        .call(Method::PATCH, &path, Some(json!({"limits": null})))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(cleared["limits"], json!({}));
    let reply = h.call(Method::PATCH, &path, Some(json!({}))).await;
    assert_eq!(reply.expect(StatusCode::UNPROCESSABLE_ENTITY).error_fields(), ["body"]);

    h.call(Method::DELETE, &path, None).await.expect(StatusCode::NO_CONTENT);
    let reply = h.call(Method::PATCH, &path, Some(json!({"name": "x"}))).await;
    assert_eq!(reply.expect(StatusCode::CONFLICT).error_fields(), ["revoked_at"]);
    let missing = format!("/api/v1/gateways/{gw}/keys/{}", GatewayKeyId::new());
    h.call(Method::PATCH, &missing, Some(json!({"name": "x"}))).await.expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn usage_is_listed_per_window_against_the_limit_and_an_operator_can_reset_it() {
    let h = Harness::start().await;
    let gw = gateway(&h, "gw").await;
    let key =
        create_key(&h, &gw, json!({"name": "k", "limits": {"per_hour": {"total_tokens": 10000}}}))
            .await;
    let key_id: GatewayKeyId = id_of(&key).parse().expect("uuid");
    let now = Utc::now();
    let hour = Window::Hour.start_of(now.timestamp_millis());
    let entry = |window: Window, start: i64, charged: Usage| KeyUsage {
        key_id,
        window,
        window_start_unix_ms: start,
        charged,
        reserved: Usage::default(),
        wanted: Usage::default(),
    };
    let report = UsageReport {
        keys: vec![
            entry(Window::Hour, hour, Usage::request(3_000, 1_000)),
            entry(Window::Hour, hour - 3_600_000, Usage::request(100, 20)),
            entry(
                Window::Day,
                Window::Day.start_of(now.timestamp_millis()),
                Usage::request(3_000, 1_000),
            ),
        ],
        skipped: vec![],
    };
    let instance = NonZeroU64::new(7).expect("non-zero");
    h.store.record_key_usage(instance, &NodeId("dp-1".into()), &report, now).await.expect("usage");

    let usage_path = format!("/api/v1/gateways/{gw}/keys/{key_id}/usage");
    let usage = h.get(&usage_path).await.expect(StatusCode::OK).json();
    assert_eq!(usage["window"], "hour");
    let rows = usage["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{usage}");
    assert_eq!(rows[0]["total_tokens"], 120);
    assert_eq!(
        (rows[1]["requests"].as_u64(), rows[1]["total_tokens"].as_u64()),
        (Some(1), Some(4_000))
    );
    assert_eq!(usage["current"]["used"]["total_tokens"], 4_000);
    assert_eq!(usage["current"]["limit"], json!({"total_tokens": 10000}));
    assert_eq!(usage["current"]["remaining"], json!({"total_tokens": 6000}));
    let day = h.get(&format!("{usage_path}?window=day")).await.expect(StatusCode::OK).json();
    assert_eq!(day["current"]["limit"], json!({}), "no day limit");
    assert_eq!(day["current"]["used"]["prompt_tokens"], 3_000);
    let listed = h.get(&format!("/api/v1/gateways/{gw}/keys")).await.expect(StatusCode::OK).json();
    assert_eq!(listed[0]["usage"]["hour"]["total_tokens"], 4_000);

    // Query parameters are named when wrong.
    for (query, field) in [
        ("window=week", "window"),
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("from=2026-12-07T10:00:00Z&to=2026-12-07T09:00:00Z", "from"),
        ("window=minute&from=2026-12-01T00:00:00Z&to=2026-12-07T00:00:00Z", "from"),
    ] {
        let reply = h.get(&format!("{usage_path}?{query}")).await.expect(StatusCode::BAD_REQUEST);
        assert_eq!(reply.error_fields(), [field], "{query}: {}", reply.text);
    }

    // A reset: the current windows count from zero; history before them stays; audited.
    let version = h.version().await;
    let reset = h
        .call(Method::POST, &format!("{usage_path}/reset"), None)
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(reset["usage"]["hour"]["total_tokens"], 0);
    assert_eq!(h.version().await, version, "not a configuration change");
    let usage = h.get(&usage_path).await.expect(StatusCode::OK).json();
    assert_eq!(usage["current"]["remaining"], json!({"total_tokens": 10000}));
    assert_eq!(usage["rows"].as_array().expect("rows").len(), 1, "{usage}");
    let entry = h.audit_log().await.pop().expect("an entry");
    assert_eq!(
        (entry["action"].as_str(), entry["entity"].as_str()),
        (Some("reset_usage"), Some("gateway_key"))
    );
    assert_eq!(entry["actor"], "bootstrap");
    assert_eq!(entry["before"]["usage"]["hour"]["total_tokens"], 4_000);
    assert!(entry.get("config_version").is_none());
    let filtered =
        h.get("/api/v1/audit-log?action=reset_usage").await.expect(StatusCode::OK).json();
    assert_eq!(filtered["entries"].as_array().expect("entries").len(), 1);

    let missing = format!("/api/v1/gateways/{gw}/keys/{}/usage", GatewayKeyId::new());
    h.get(&missing).await.expect(StatusCode::NOT_FOUND);
    h.call(Method::POST, &format!("{missing}/reset"), None).await.expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_gateway_carries_its_key_limit_policy_to_the_snapshot() {
    let h = Harness::start().await;
    let created = h
        .create_gateway(json!({"name": "gw", "endpoints": [], "key_limits": {"fail_closed": true}}))
        .await;
    assert_eq!(
        created["key_limits"],
        json!({"default_completion_tokens": null, "fail_closed": true})
    );
    let default = h.create_gateway(json!({"name": "plain", "endpoints": []})).await;
    assert_eq!(
        default["key_limits"],
        json!({"default_completion_tokens": null, "fail_closed": false})
    );
    let path = format!("/api/v1/gateways/{}", id_of(&created));
    let patched = h
        .call(Method::PATCH, &path, Some(json!({"key_limits": {"default_completion_tokens": 256}})))
        .await
        .expect(StatusCode::OK)
        .json();
    // The whole policy is replaced: the omitted `fail_closed` takes its default.
    assert_eq!(
        patched["key_limits"],
        json!({"default_completion_tokens": 256, "fail_closed": false})
    );
    let reply = h
        .call(Method::PATCH, &path, Some(json!({"key_limits": {"default_completion_tokens": 0}})))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["key_limits.default_completion_tokens"]);
    // An object, not its fields by position.
    let reply = h
        .call(Method::PATCH, &path, Some(json!({"key_limits": [null, null]})))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["key_limits"]);
    h.wait_for_published(h.version().await).await;
    let published = h.distribution.subscribe().borrow().clone();
    let g = published.snapshot().gateways.iter().find(|g| g.name == "gw").expect("gw").clone();
    assert_eq!(g.key_limits.default_completion_tokens, Some(256));
    assert!(!g.key_limits.fail_closed);
    let entry = h.audit_log().await.pop().expect("an entry");
    assert_eq!(entry["after"]["key_limits"]["default_completion_tokens"], 256);
}
