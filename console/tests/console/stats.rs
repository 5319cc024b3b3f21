//! The traffic charts of the overview and of a gateway's page render the numbers the stats API
//! answers (fed here the way data planes feed it: reports into the control plane's window), to
//! a viewer, as SVG with a title and a data table.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use modelgw_model::stats::{Buckets, GatewayStats, LATENCY_BUCKETS_MS, RouteStats, StatsReport};
use serde_json::json;

use crate::harness::Console;

async fn endpoint(c: &Console, name: &str, region: &str) -> String {
    let (status, body) = c
        .api(
            Method::POST,
            "/api/v1/inference-endpoints",
            Some(json!({
                "name": name,
                "platform": "azure_openai",
                "endpoint": format!("https://{name}.openai.azure.com/"),
                "deployment": "gpt-4o",
                "model_name": "gpt-4o",
                "model_version": "2024-11-20",
                "region": region,
                "api_key": "0123456789abcdef0123456789abcdef",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

fn ttft_at_300ms(n: u64) -> Buckets {
    let mut b = Buckets { counts: vec![0; LATENCY_BUCKETS_MS.len() + 1] };
    b.counts[Buckets::index(300)] = n;
    b
}

/// The `<figure>` with `id` in `page`.
fn figure<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page.find(&format!("<figure class=\"chart\" id=\"{id}\">")).unwrap_or_else(|| {
        panic!("no chart {id} in the page:\n{page}");
    });
    let end = page[start..].find("</figure>").expect("closed figure");
    &page[start..start + end]
}

#[tokio::test]
async fn the_charts_show_the_numbers_the_stats_api_answers() {
    let c = Console::start().await;
    let east = endpoint(&c, "east", "eastus").await;
    let west = endpoint(&c, "west", "westeurope").await;
    let (status, gw) = c
        .api(
            Method::POST,
            "/api/v1/gateways",
            Some(json!({"name": "chat", "endpoints": [{"endpoint_id": east}, {"endpoint_id": west}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{gw}");
    let gateway = gw["id"].as_str().unwrap().to_owned();
    let version = c.store.config_version().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.distribution().current_version() < version {
        assert!(Instant::now() < deadline, "never published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Two data planes' reports.
    let window = c.distribution().registry().stats().clone();
    let route = |endpoint: &str, requests: u64| RouteStats {
        gateway_id: gateway.parse().unwrap(),
        endpoint_id: endpoint.parse().unwrap(),
        requests,
        prompt_tokens: 10 * requests,
        completion_tokens: 5 * requests,
        ..Default::default()
    };
    window.record(&StatsReport {
        routes: vec![
            RouteStats { errors: 1, throttled: 2, ttft: ttft_at_300ms(4), ..route(&east, 7) },
            route(&west, 1),
        ],
        gateways: vec![GatewayStats {
            gateway_id: gateway.parse().unwrap(),
            throttled: 1,
            unavailable: 0,
        }],
        skipped: vec![],
    });
    window.record(&StatsReport { routes: vec![route(&west, 2)], ..Default::default() });

    // What the API answers, as a viewer sees it.
    let viewer = c.api_token("viewer").await;
    let cookie = c.sign_in(&viewer).await;
    let page = c.send(Method::GET, "/", Some(&cookie), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(!page.body.contains(" style="), "no inline style: the CSP forbids it");

    let requests = figure(&page.body, "stats-requests");
    assert!(requests.contains("role=\"img\""), "{requests}");
    assert!(requests.contains("<title id=\"stats-requests-title\">"), "{requests}");
    // 7 + 3 answers and the gateway's own 429; 1 error; 2 endpoint 429s and the gateway's own.
    assert!(requests.contains("Requests: 11, Errors: 1, Throttled: 3"), "{requests}");
    assert!(
        requests
            .contains("<td class=\"num\">11</td><td class=\"num\">1</td><td class=\"num\">3</td>"),
        "the data table's current minute: {requests}"
    );
    let tokens = figure(&page.body, "stats-tokens");
    assert!(
        tokens.contains("<th scope=\"row\">chat</th><td class=\"num\">100</td><td class=\"num\">50</td><td class=\"num\">150</td>"),
        "{tokens}"
    );
    let ttft = figure(&page.body, "stats-ttft");
    // Four first tokens in (250, 500] ms: the median interpolates to 375 ms.
    assert!(ttft.contains("<th scope=\"row\">eastus</th><td class=\"num\">375 ms</td>"), "{ttft}");
    assert!(ttft.contains("westeurope: no samples"), "{ttft}");

    let page = c.send(Method::GET, &format!("/gateways/{gateway}"), Some(&cookie), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let requests = figure(&page.body, "stats-requests");
    assert!(requests.contains("Requests: 11, Errors: 1, Throttled: 3"), "{requests}");
    // Tokens per minute, stacked: 10 prompt and 5 completion tokens per request, 10 requests.
    let tokens = figure(&page.body, "stats-tokens-minute");
    assert!(tokens.contains("role=\"img\""), "{tokens}");
    assert!(
        tokens.contains("Prompt: 100, Completion: 50; the most in one minute: 150"),
        "{tokens}"
    );
    assert!(
        tokens.contains(
            "<td class=\"num\">100</td><td class=\"num\">50</td><td class=\"num\">150</td>"
        ),
        "the data table's current minute: {tokens}"
    );
    assert_eq!(tokens.matches("data-part=\"Prompt\"").count(), 1, "one busy minute: {tokens}");
    let tokens = figure(&page.body, "stats-tokens");
    for (name, total) in [("east", 105), ("west", 45)] {
        assert!(
            tokens.contains(&format!("<th scope=\"row\">{name}</th>"))
                && tokens.contains(&format!("<td class=\"num\">{total}</td>")),
            "{name}: {tokens}"
        );
    }
    let ttft = figure(&page.body, "stats-ttft");
    assert!(ttft.contains("east (eastus): p50 375 ms"), "{ttft}");
    assert!(ttft.contains("west (westeurope): no samples"), "{ttft}");
}

#[tokio::test]
async fn without_traffic_the_charts_say_so() {
    let c = Console::start().await;
    let cookie = c.sign_in(crate::harness::ADMIN_TOKEN).await;
    let page = c.send(Method::GET, "/", Some(&cookie), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let requests = figure(&page.body, "stats-requests");
    assert!(requests.contains("Requests: 0, Errors: 0, Throttled: 0"), "{requests}");
    assert!(requests.contains("No traffic from"), "{requests}");
    figure(&page.body, "stats-tokens");
    figure(&page.body, "stats-ttft");

    let (status, gw) = c
        .api(Method::POST, "/api/v1/gateways", Some(json!({"name": "quiet", "endpoints": []})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{gw}");
    let page = c
        .send(
            Method::GET,
            &format!("/gateways/{}", gw["id"].as_str().unwrap()),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let tokens = figure(&page.body, "stats-tokens-minute");
    assert!(tokens.contains("Prompt: 0, Completion: 0"), "{tokens}");
    assert!(tokens.contains("Nothing from"), "{tokens}");
    assert!(!tokens.contains("<rect"), "no columns: {tokens}");
}
