//! Gateway `routing` settings: defaults, round trip through the store and the snapshot, and
//! rejection of bad values without writing anything.

use http::{Method, StatusCode};
use modelgw_model::{RoutingPolicy, RoutingStrategy};
use serde_json::json;

use crate::harness::{Harness, endpoint_body, id_of};

#[tokio::test]
async fn routing_defaults_round_trip_and_reach_the_snapshot() {
    let h = Harness::start().await;
    let e1 = id_of(&h.create_endpoint(endpoint_body("eus", "azkey-0123456789abcdef-1")).await);

    // Omitted: the defaults, spelled out in the response.
    let plain =
        h.create_gateway(json!({"name": "plain", "endpoints": [{"endpoint_id": e1}]})).await;
    assert_eq!(
        plain["routing"],
        json!({"strategy": "weighted", "wait_for_recovery": false, "request_timeout_ms": null})
    );

    let created = h
        .create_gateway(json!({"name": "fast", "endpoints": [{"endpoint_id": e1}], "routing": {
            "strategy": "fastest", "wait_for_recovery": true, "request_timeout_ms": 45000}}))
        .await;
    let path = format!("/api/v1/gateways/{}", id_of(&created));
    let expected =
        json!({"strategy": "fastest", "wait_for_recovery": true, "request_timeout_ms": 45000});
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
        json!({"strategy": "weighted", "wait_for_recovery": false, "request_timeout_ms": 1000})
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
        let reply = h.call(Method::PATCH, &path, Some(body.clone())).await;
        let reply = reply.expect(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.error_fields(), fields, "PATCH {body}");
        let mut create = body.clone();
        create["name"] = json!("other");
        create["endpoints"] = json!([]);
        let reply = h.call(Method::POST, "/api/v1/gateways", Some(create)).await;
        assert_eq!(reply.expect(StatusCode::UNPROCESSABLE_ENTITY).error_fields(), fields);
    }
    assert_eq!(h.version().await, version, "nothing was committed");
    assert_eq!(h.lists().await, before);
}
