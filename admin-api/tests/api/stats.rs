//! `/api/v1/stats/…` over what data planes reported: two data planes' reports add up, names and
//! regions come from the configuration, quantiles from merged buckets, and a bad `minutes`
//! or `gateway_id` is a 400 naming the field.

use http::StatusCode;
use modelgw_model::stats::{Buckets, GatewayStats, LATENCY_BUCKETS_MS, RouteStats, StatsReport};
use modelgw_model::{EndpointId, GatewayId};
use serde_json::{Value, json};

use crate::harness::{Harness, endpoint_body, id_of};

fn buckets(ms: u64, n: u64) -> Buckets {
    let mut b = Buckets { counts: vec![0; LATENCY_BUCKETS_MS.len() + 1] };
    b.counts[Buckets::index(ms)] = n;
    b
}

fn route(gateway: &str, endpoint: &str, requests: u64, ttft_ms: Option<u64>) -> RouteStats {
    RouteStats {
        gateway_id: gateway.parse::<GatewayId>().expect("gateway id"),
        endpoint_id: endpoint.parse::<EndpointId>().expect("endpoint id"),
        requests,
        errors: 0,
        throttled: 1,
        failed_attempts: 0,
        prompt_tokens: 10 * requests,
        completion_tokens: 5 * requests,
        latency: buckets(200, requests),
        ttft: ttft_ms.map(|ms| buckets(ms, requests)).unwrap_or_default(),
    }
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|v| v[key] == value))
        .unwrap_or_else(|| panic!("no {key}={value} in {list}"))
}

#[tokio::test]
async fn two_data_planes_reports_add_up_per_gateway_endpoint_and_region() {
    let h = Harness::start().await;
    let mut west = endpoint_body("west", "sk-west-0123456789abcdef");
    west["region"] = json!("westeurope");
    let east = id_of(&h.create_endpoint(endpoint_body("east", "sk-east-0123456789abcdef")).await);
    let west = id_of(&h.create_endpoint(west).await);
    let idle = id_of(&h.create_endpoint(endpoint_body("idle", "sk-idle-0123456789abcdef")).await);
    let member = |id: &str| json!({"endpoint_id": id});
    let chat = id_of(
        &h.create_gateway(json!({"name": "chat", "endpoints": [member(&east), member(&west)]}))
            .await,
    );
    let batch =
        id_of(&h.create_gateway(json!({"name": "batch", "endpoints": [member(&east)]})).await);
    h.wait_for_published(h.version().await).await;

    let window = h.distribution.registry().stats().clone();
    // dp-1: streams through chat/east (TTFT ~300 ms), chat/west; chat answered one 429 itself.
    window.record(&StatsReport {
        routes: vec![route(&chat, &east, 3, Some(300)), route(&chat, &west, 2, None)],
        gateways: vec![GatewayStats {
            gateway_id: chat.parse().expect("id"),
            throttled: 1,
            unavailable: 0,
        }],
        skipped: vec![],
    });
    // dp-2: more of chat/east, and batch/east with slow first tokens.
    window.record(&StatsReport {
        routes: vec![route(&chat, &east, 1, Some(300)), route(&batch, &east, 4, Some(3_000))],
        gateways: vec![],
        skipped: vec![],
    });

    let page = h.get("/api/v1/stats/gateways").await.expect(StatusCode::OK).json();
    assert_eq!(page["minutes"], 60, "the default window");
    let g = find(&page["gateways"], "name", "chat");
    assert_eq!(g["id"], chat.as_str());
    let t = &g["totals"];
    assert_eq!(t["requests"], 3 + 2 + 1 + 1, "the endpoints' answers and the gateway's own 429");
    assert_eq!(t["throttled"], 3 + 1, "each route's 429 and the gateway's own");
    assert_eq!(
        (t["prompt_tokens"].as_u64(), t["completion_tokens"].as_u64()),
        (Some(60), Some(30))
    );
    assert_eq!(t["total_tokens"], 90);
    assert_eq!(g["own_throttled"], 1);
    let series = g["series"].as_array().expect("series");
    assert_eq!(series.len(), 1, "one minute with traffic");
    assert_eq!(series[0]["requests"], 7);
    assert!(series[0]["at"].as_str().is_some_and(|at| at.ends_with(":00Z")), "{series:?}");
    assert_eq!(find(&page["gateways"], "name", "batch")["totals"]["requests"], 4);

    let page = h.get("/api/v1/stats/endpoints?minutes=5").await.expect(StatusCode::OK).json();
    assert_eq!(page["minutes"], 5);
    let e = find(&page["endpoints"], "name", "east");
    assert_eq!((e["id"].as_str(), e["region"].as_str()), (Some(east.as_str()), Some("eastus")));
    assert_eq!(e["totals"]["requests"], 3 + 1 + 4, "summed over data planes and gateways");
    assert_eq!(e["ttft_samples"], 8);
    // 4 of 8 first tokens in (250, 500] ms, 4 in (2000, 4000]: the median is the boundary.
    assert_eq!(e["ttft_p50_ms"], 500.0);
    assert!(e["ttft_p95_ms"].as_f64().is_some_and(|p| p > 2_000.0 && p <= 4_000.0), "{e}");
    assert!(e["latency_p50_ms"].as_f64().is_some_and(|p| p > 100.0 && p <= 250.0), "{e}");
    let w = find(&page["endpoints"], "name", "west");
    assert_eq!(w["ttft_p50_ms"], Value::Null, "no streams, no TTFT");
    let i = find(&page["endpoints"], "id", &idle);
    assert_eq!(
        (i["totals"]["requests"].as_u64(), i["series"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );

    let one = h
        .get(&format!("/api/v1/stats/endpoints?gateway_id={batch}"))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(one["gateway_id"], batch.as_str());
    let names: Vec<&str> = one["endpoints"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["east"], "the gateway's members only");
    assert_eq!(one["endpoints"][0]["totals"]["requests"], 4, "through this gateway only");

    let page = h.get("/api/v1/stats/regions?minutes=1440").await.expect(StatusCode::OK).json();
    let eastus = find(&page["regions"], "region", "eastus");
    assert_eq!(eastus["requests"], 8);
    assert_eq!(eastus["endpoint_ids"].as_array().map(Vec::len), Some(2), "east and idle");
    assert_eq!(eastus["ttft_p50_ms"], 500.0, "from the merged buckets");
    let westeurope = find(&page["regions"], "region", "westeurope");
    assert_eq!(
        (westeurope["requests"].as_u64(), westeurope["ttft_samples"].as_u64()),
        (Some(2), Some(0))
    );
}

#[tokio::test]
async fn a_bad_window_or_gateway_is_a_400_naming_the_field() {
    let h = Harness::start().await;
    for path in [
        "/api/v1/stats/gateways?minutes=0",
        "/api/v1/stats/gateways?minutes=1441",
        "/api/v1/stats/regions?minutes=abc",
        "/api/v1/stats/endpoints?minutes=-1",
    ] {
        let reply = h.get(path).await.expect(StatusCode::BAD_REQUEST);
        assert_eq!(reply.content_type(), "application/problem+json");
        assert_eq!(reply.error_fields(), ["minutes"], "{path}");
    }
    let reply =
        h.get("/api/v1/stats/endpoints?gateway_id=nope").await.expect(StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_fields(), ["gateway_id"]);
    let reply = h.get("/api/v1/stats/gateways?minute=5").await.expect(StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_fields(), ["query"], "an unknown parameter");
    let unknown = GatewayId::new();
    h.get(&format!("/api/v1/stats/endpoints?gateway_id={unknown}"))
        .await
        .expect(StatusCode::NOT_FOUND);
}
