//! Gateway `routing` settings: defaults, round trip through the store and the snapshot, and
//! rejection of bad values without writing anything.

use http::{Method, StatusCode};
use modelgw_model::{QuotaPolicy, RoutingPolicy, RoutingStrategy};
use serde_json::{Value, json};

use crate::harness::{Harness, endpoint_body, id_of};

/// `routing.quota` as the API shows `QuotaPolicy::default()`.
fn default_quota() -> Value {
    json!({"enabled": true, "request_window_secs": 10, "token_window_secs": 60, "reserve_percent": 0})
}

#[tokio::test]
async fn routing_defaults_round_trip_and_reach_the_snapshot() {
    let h = Harness::start().await;
    let e1 = id_of(&h.create_endpoint(endpoint_body("eus", "azkey-0123456789abcdef-1")).await);

    // Omitted: the defaults, spelled out in the response.
    let plain =
        h.create_gateway(json!({"name": "plain", "endpoints": [{"endpoint_id": e1}]})).await;
    assert_eq!(
        plain["routing"],
        json!({"strategy": "weighted", "wait_for_recovery": false, "request_timeout_ms": null,
            "quota": default_quota()})
    );

    let created = h
        .create_gateway(json!({"name": "fast", "endpoints": [{"endpoint_id": e1}], "routing": {
            "strategy": "fastest", "wait_for_recovery": true, "request_timeout_ms": 45000}}))
        .await;
    let path = format!("/api/v1/gateways/{}", id_of(&created));
    let expected = json!({"strategy": "fastest", "wait_for_recovery": true,
        "request_timeout_ms": 45000, "quota": default_quota()});
    assert_eq!(created["routing"], expected);
    assert_eq!(h.get(&path).await.expect(StatusCode::OK).json()["routing"], expected);

    // Distributed: the published snapshot carries it.
    let v = h.version().await;
    h.wait_for_published(v).await;
    let snapshot = h.distribution.subscribe().borrow().snapshot().clone();
    let fast = snapshot.gateways.iter().find(|g| g.name == "fast").expect("fast gateway");
    assert_eq!(
        fast.routing,
        RoutingPolicy {
            strategy: RoutingStrategy::Fastest,
            wait_for_recovery: true,
            request_timeout_ms: Some(45_000),
            ..RoutingPolicy::default()
        }
    );

    // A PATCH without routing keeps it; with routing replaces it whole (omitted = default).
    let renamed = h
        .call(Method::PATCH, &path, Some(json!({"name": "faster"})))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(renamed["routing"], expected);
    let patched = h
        .call(Method::PATCH, &path, Some(json!({"routing": {"request_timeout_ms": 1000}})))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(
        patched["routing"],
        json!({"strategy": "weighted", "wait_for_recovery": false, "request_timeout_ms": 1000,
            "quota": default_quota()})
    );
    assert_eq!(patched["endpoints"], created["endpoints"], "members untouched");
    assert_eq!(h.get(&path).await.json(), patched);
}

#[tokio::test]
async fn bad_routing_values_are_422_and_change_nothing() {
    let h = Harness::start().await;
    let gw = h.create_gateway(json!({"name": "gw", "endpoints": []})).await;
    let path = format!("/api/v1/gateways/{}", id_of(&gw));
    let before = h.lists().await;
    let version = h.version().await;

    for (body, fields) in [
        (json!({"routing": {"strategy": "round_robin"}}), vec!["routing.strategy"]),
        (json!({"routing": {"request_timeout_ms": 999}}), vec!["routing.request_timeout_ms"]),
        (json!({"routing": {"request_timeout_ms": 600001}}), vec!["routing.request_timeout_ms"]),
        (
            json!({"routing": {"strategy": "", "request_timeout_ms": 0}}),
            vec!["routing.strategy", "routing.request_timeout_ms"],
        ),
        (json!({"routing": {"wait_for_recovery": "yes"}}), vec!["routing.wait_for_recovery"]),
        (json!({"routing": {"retries": 3}}), vec!["routing.retries"]),
        // An object, not its fields by position (serde would take the array form).
        (json!({"routing": ["fastest", 2000]}), vec!["routing"]),
    ] {
        refused_on_patch_and_create(&h, &path, &body, &fields).await;
    }
    assert_eq!(h.version().await, version, "nothing was committed");
    assert_eq!(h.lists().await, before);
}

#[tokio::test]
async fn routing_quota_defaults_round_trip_and_reach_the_snapshot() {
    let h = Harness::start().await;
    let e1 = id_of(&h.create_endpoint(endpoint_body("eus", "azkey-0123456789abcdef-1")).await);

    // A new gateway shows the defaults, in full; so does one whose `quota` is `{}` or `null`.
    for (name, routing) in [
        ("plain", None),
        ("empty", Some(json!({"quota": {}}))),
        ("null", Some(json!({"quota": null}))),
    ] {
        let mut body = json!({"name": name, "endpoints": [{"endpoint_id": e1}]});
        if let Some(routing) = routing {
            body["routing"] = routing;
        }
        let created = h.create_gateway(body).await;
        assert_eq!(created["routing"]["quota"], default_quota(), "{name}");
    }

    // Every field off its default; a whole number written with a fraction is a whole number.
    let custom = json!({"enabled": false, "request_window_secs": 5, "token_window_secs": 120.0,
        "reserve_percent": 20});
    let shown = json!({"enabled": false, "request_window_secs": 5, "token_window_secs": 120,
        "reserve_percent": 20});
    let created = h
        .create_gateway(json!({"name": "quota", "endpoints": [{"endpoint_id": e1}],
            "routing": {"strategy": "fastest", "quota": custom}}))
        .await;
    let path = format!("/api/v1/gateways/{}", id_of(&created));
    assert_eq!(created["routing"]["quota"], shown);
    assert_eq!(h.get(&path).await.expect(StatusCode::OK).json()["routing"]["quota"], shown);

    let v = h.version().await;
    h.wait_for_published(v).await;
    let snapshot = h.distribution.subscribe().borrow().snapshot().clone();
    let gateway = snapshot.gateways.iter().find(|g| g.name == "quota").expect("quota gateway");
    let quota = QuotaPolicy {
        enabled: false,
        request_window_secs: 5,
        token_window_secs: 120,
        reserve_percent: 20,
    };
    assert_eq!(
        gateway.routing,
        RoutingPolicy { strategy: RoutingStrategy::Fastest, quota, ..RoutingPolicy::default() }
    );

    // A PATCH without routing keeps the quota; `routing` replaces it whole (omitted fields,
    // and an omitted `quota`, take their defaults).
    let renamed = h
        .call(Method::PATCH, &path, Some(json!({"name": "quota2"})))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(renamed["routing"]["quota"], shown);
    let patched = h
        .call(Method::PATCH, &path, Some(json!({"routing": {"quota": {"reserve_percent": 50}}})))
        .await
        .expect(StatusCode::OK)
        .json();
    let mut half = default_quota();
    half["reserve_percent"] = json!(50);
    assert_eq!(patched["routing"]["quota"], half);
    assert_eq!(patched["routing"]["strategy"], "weighted", "routing replaced whole");
    let v = h.version().await;
    h.wait_for_published(v).await;
    let snapshot = h.distribution.subscribe().borrow().snapshot().clone();
    let gateway = snapshot.gateways.iter().find(|g| g.name == "quota2").expect("renamed");
    assert_eq!(
        gateway.routing.quota,
        QuotaPolicy { reserve_percent: 50, ..QuotaPolicy::default() }
    );
    let reset = h
        .call(Method::PATCH, &path, Some(json!({"routing": {"strategy": "fastest"}})))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(reset["routing"]["quota"], default_quota());
    assert_eq!(h.get(&path).await.json(), reset);
}

#[tokio::test]
async fn bad_quota_values_are_refused_naming_the_field_and_change_nothing() {
    let h = Harness::start().await;
    let gw = h
        .create_gateway(json!({"name": "gw", "endpoints": [],
            "routing": {"quota": {"reserve_percent": 10}}}))
        .await;
    let path = format!("/api/v1/gateways/{}", id_of(&gw));
    let before = h.lists().await;
    let version = h.version().await;

    let window = QuotaPolicy::WINDOW_SECS_RANGE;
    let reserve = QuotaPolicy::RESERVE_PERCENT_RANGE;
    let request = "routing.quota.request_window_secs";
    let token = "routing.quota.token_window_secs";
    let percent = "routing.quota.reserve_percent";
    for (quota, fields) in [
        (json!({"request_window_secs": window.start() - 1}), vec![request]),
        (json!({"request_window_secs": window.end() + 1}), vec![request]),
        (json!({"token_window_secs": 0}), vec![token]),
        (json!({"token_window_secs": -60}), vec![token]),
        (json!({"token_window_secs": window.end() + 1}), vec![token]),
        (json!({"reserve_percent": reserve.end() + 1}), vec![percent]),
        (json!({"reserve_percent": -1}), vec![percent]),
        (json!({"reserve_percent": 300}), vec![percent]),
        // Every bad field at once: each is named.
        (
            json!({"request_window_secs": 0, "token_window_secs": 86_401, "reserve_percent": 51}),
            vec![request, token, percent],
        ),
        // Mistyped: serde names them one at a time.
        (json!({"reserve_percent": "10"}), vec![percent]),
        (json!({"request_window_secs": 1.5}), vec![request]),
        (json!({"enabled": "yes"}), vec!["routing.quota.enabled"]),
        (json!({"enabled": 1}), vec!["routing.quota.enabled"]),
        (json!({"threshold": 3}), vec!["routing.quota.threshold"]),
        (json!([true, 10, 60, 0]), vec!["routing.quota"]),
        (json!("on"), vec!["routing.quota"]),
    ] {
        let body = json!({"routing": {"quota": quota}});
        refused_on_patch_and_create(&h, &path, &body, &fields).await;
    }
    assert_eq!(h.version().await, version, "nothing was committed");
    assert_eq!(h.lists().await, before);
}

/// `body` is refused as a PATCH of `path` and as a new gateway's fields: 422, problem+json,
/// naming exactly `fields`.
async fn refused_on_patch_and_create(h: &Harness, path: &str, body: &Value, fields: &[&str]) {
    let mut create = body.clone();
    create["name"] = json!("other");
    create["endpoints"] = json!([]);
    for (method, path, body) in
        [(Method::PATCH, path, body.clone()), (Method::POST, "/api/v1/gateways", create)]
    {
        let reply = h.call(method.clone(), path, Some(body.clone())).await;
        let reply = reply.expect(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.json()["status"], 422);
        assert!(
            reply.headers[http::header::CONTENT_TYPE]
                .to_str()
                .is_ok_and(|t| t.starts_with("application/problem+json")),
            "{:?}",
            reply.headers
        );
        assert_eq!(reply.error_fields(), fields, "{method} {body}");
    }
}
