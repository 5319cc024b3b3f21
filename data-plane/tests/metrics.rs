#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The data plane's Prometheus metrics, scraped from its own listener after a scripted run,
//! parsed with a Prometheus text-format parser and compared with what the script produced;
//! and the usage the gateway asks for on a client's behalf, taken out of the client's stream.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use modelgw_data_plane::DataPlaneConfig;
use modelgw_data_plane::health::HealthPolicy;
use modelgw_mock_openai::Fault;
use modelgw_model::RoutingPolicy;
use serde_json::{Value, json};
use support::*;

/// Settings whose health windows outlast the test, so every skip is predictable.
fn config() -> DataPlaneConfig {
    DataPlaneConfig {
        metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        health_policy: HealthPolicy {
            error_backoff_base: Duration::from_secs(300),
            error_backoff_max: Duration::from_secs(600),
            ..HealthPolicy::default()
        },
        ..fast_config()
    }
}

/// One sample of a scrape: its labels and value.
struct Scrape(Vec<prometheus_parse::Sample>);

impl Scrape {
    async fn fetch(gw: &TestGateway) -> (Scrape, String) {
        let addr = gw.metrics_addr.expect("metrics served");
        let response = gw.http.get(format!("http://{addr}/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = support::header(&response, "content-type").to_owned();
        let text = response.text().await.unwrap();
        assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
        if std::env::var_os("SHOW_SCRAPE").is_some() {
            eprintln!("{text}");
        }
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
        (Scrape(parsed.samples), content_type)
    }

    /// The value of `metric` whose labels include every pair of `labels`; 0 when absent.
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.0, metric, labels)
    }
}

#[tokio::test]
async fn a_scrape_shows_exactly_what_the_script_did() {
    let busy = region("busy").await.unwrap();
    let broken = region("broken").await.unwrap();
    let ok = region("ok").await.unwrap();
    // Tried in this order: busy answers 429 once, broken 503 once; both stay unavailable
    // for the rest of the run, so every later request skips them and ok serves.
    busy.script(Fault::throttled(300, 1));
    broken.script(Fault::Status { status: 503, retry_after: None, retry_after_ms: None, times: 1 });
    let members = [(&busy, 0, 1), (&broken, 1, 1), (&ok, 2, 1)];
    let gw = gateway(&members, RoutingPolicy::default(), config()).await.unwrap();

    let mut usage = (0u64, 0u64);
    for _ in 0..3 {
        let response = gw.chat().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        usage.0 += body["usage"]["prompt_tokens"].as_u64().unwrap();
        usage.1 += body["usage"]["completion_tokens"].as_u64().unwrap();
    }
    let per_answer = (usage.0 / 3, usage.1 / 3);
    // Two streams: one asking for usage, one not (the gateway asks for it).
    let path = format!("/openai/deployments/auto/chat/completions?{API_VERSION}");
    let mut asked = chat_body(true);
    asked["stream_options"] = json!({"include_usage": true});
    let text = gw.post(&path, &asked).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains(&format!("\"prompt_tokens\":{}", per_answer.0)),
        "the client asked for usage and got it: {text}"
    );
    let text = gw.request(true).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("usage"), "usage the client did not ask for: {text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    // One wrong key.
    let wrong = gw.http.post(format!("{}{path}", gw.base)).header("api-key", "nope").body("{}");
    assert_eq!(wrong.send().await.unwrap().status(), 401);

    let (scrape, content_type) = Scrape::fetch(&gw).await;
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let pair = |endpoint: &'static str| [("gateway", GATEWAY), ("endpoint", endpoint)];
    let with = |endpoint: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut labels = pair(endpoint).to_vec();
        labels.extend_from_slice(extra);
        labels
    };
    let ok_answers = with("ok", &[("operation", "chat_completions"), ("status_class", "2xx")]);
    assert_eq!(scrape.value("modelgw_requests_total", &ok_answers), 5.0);
    assert_eq!(scrape.value("modelgw_requests_total", &with("busy", &[])), 0.0);
    let attempts = |endpoint, outcome| {
        scrape.value("modelgw_upstream_attempts_total", &with(endpoint, &[("outcome", outcome)]))
    };
    assert_eq!(attempts("busy", "throttled"), 1.0);
    assert_eq!(attempts("busy", "skipped_throttling"), 4.0);
    assert_eq!(attempts("broken", "server_error"), 1.0);
    assert_eq!(attempts("broken", "skipped_error_cooldown"), 4.0);
    assert_eq!(attempts("ok", "ok"), 5.0);
    let failovers = |endpoint, outcome| {
        scrape.value("modelgw_failovers_total", &with(endpoint, &[("outcome", outcome)]))
    };
    assert_eq!(failovers("busy", "throttled"), 1.0);
    assert_eq!(failovers("broken", "server_error"), 1.0);
    assert_eq!(failovers("ok", "ok"), 0.0);

    // Tokens: every answer's usage, the streams' included.
    let tokens = |kind| {
        let labels = with("ok", &[("gen_ai_operation_name", "chat"), ("gen_ai_token_type", kind)]);
        scrape.value("gen_ai_client_token_usage_sum", &labels)
    };
    assert_eq!(tokens("input"), (per_answer.0 * 5) as f64);
    assert_eq!(tokens("output"), (per_answer.1 * 5) as f64);
    let chat = with("ok", &[("gen_ai_operation_name", "chat")]);
    assert_eq!(scrape.value("gen_ai_server_request_duration_seconds_count", &chat), 5.0);
    assert_eq!(scrape.value("gen_ai_server_time_to_first_token_seconds_count", &chat), 2.0);
    assert_eq!(scrape.value("gen_ai_server_time_per_output_token_seconds_count", &chat), 2.0);
    assert_eq!(scrape.value("modelgw_upstream_time_to_first_byte_seconds_count", &pair("ok")), 5.0);

    // The gateway's own answers, health and quota, the process.
    // Before a key named a gateway, the gateway label is empty (that is, absent).
    let unauthorized = [("status", "401"), ("reason", "unauthorized")];
    assert_eq!(scrape.value("modelgw_local_responses_total", &unauthorized), 1.0);
    assert_eq!(scrape.value("modelgw_failed_authentications_total", &[]), 1.0);
    assert_eq!(scrape.value("modelgw_overhead_seconds_count", &[("gateway", GATEWAY)]), 5.0);
    let state = |endpoint, state| {
        scrape.value("modelgw_endpoint_health_state", &[("endpoint", endpoint), ("state", state)])
    };
    assert_eq!(state("busy", "throttling"), 1.0);
    assert_eq!(state("busy", "healthy"), 0.0);
    assert_eq!(state("broken", "error"), 1.0);
    assert_eq!(state("ok", "healthy"), 1.0);
    let remaining = [("endpoint", "ok"), ("kind", "tokens")];
    assert!(scrape.value("modelgw_endpoint_ratelimit_remaining", &remaining) > 0.0);
    assert_eq!(scrape.value("modelgw_snapshot_version", &[]), 1.0);
    assert_eq!(scrape.value("modelgw_open_streams", &[]), 0.0);
    assert!(scrape.value("modelgw_open_connections", &[]) >= 1.0, "the scrape's own");
}

/// What a client gets through the gateway, which asked the upstream for usage on its
/// behalf, is byte for byte what the upstream sends the same request without that addition;
/// and the tokens are counted.
#[tokio::test]
async fn a_stream_without_include_usage_is_counted_and_unchanged() {
    let exact = region("exact").await.unwrap();
    exact.mock().set_fixed_ids(true);
    let gw = gateway(&[(&exact, 0, 1)], RoutingPolicy::default(), config()).await.unwrap();
    // A client that accepts gzip: the stream must stay unencoded to be edited.
    let through = gw.request(true).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(through.status(), 200);
    let through = through.bytes().await.unwrap();

    let received = exact.mock().requests();
    let sent = received.last().and_then(|r| r.json()).expect("the upstream got the request");
    assert_eq!(sent["stream_options"], json!({"include_usage": true}), "the gateway asked");
    let request = received.last().unwrap();
    assert_eq!(request.header("accept-encoding"), None, "asked for an unencoded stream");

    // The same request straight to the upstream, as the client sent it.
    let direct = |body: &Value| {
        gw.http
            .post(format!(
                "{}/openai/deployments/{}/chat/completions?{API_VERSION}",
                exact.url(),
                exact.deployment
            ))
            .header("api-key", &exact.key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let mut body = chat_body(true);
    body["model"] = json!(exact.deployment);
    let plain = direct(&body).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&through),
        String::from_utf8_lossy(&plain),
        "the client's stream is what it would have been without the gateway's addition"
    );

    let mut unstreamed = chat_body(false);
    unstreamed["model"] = json!(exact.deployment);
    let answer: Value = direct(&unstreamed).await.unwrap().json().await.unwrap();
    let (scrape, _) = Scrape::fetch(&gw).await;
    let tokens = |kind| {
        let labels = [("endpoint", "exact"), ("gen_ai_token_type", kind)];
        scrape.value("gen_ai_client_token_usage_sum", &labels)
    };
    assert_eq!(tokens("input"), answer["usage"]["prompt_tokens"].as_f64().unwrap());
    assert_eq!(tokens("output"), answer["usage"]["completion_tokens"].as_f64().unwrap());
}

/// An API version older than `stream_options` gets the client's body unchanged (Azure would
/// refuse the unknown parameter), and so does a gateway with metrics off.
#[tokio::test]
async fn usage_is_not_asked_for_where_it_cannot_be() {
    let old = region("old").await.unwrap();
    let gw = gateway(&[(&old, 0, 1)], RoutingPolicy::default(), config()).await.unwrap();
    let path = "/openai/deployments/auto/chat/completions?api-version=2024-06-01";
    let response = gw.post(path, &chat_body(true)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let sent = old.mock().requests().last().and_then(|r| r.json()).unwrap();
    assert!(sent.get("stream_options").is_none(), "{sent}");

    let off = region("off").await.unwrap();
    let quiet = DataPlaneConfig { metrics_enabled: false, ..config() };
    let gw = gateway(&[(&off, 0, 1)], RoutingPolicy::default(), quiet).await.unwrap();
    assert!(gw.metrics_addr.is_none(), "no listener with metrics off");
    gw.request(true).send().await.unwrap().bytes().await.unwrap();
    let sent = off.mock().requests().last().and_then(|r| r.json()).unwrap();
    assert!(sent.get("stream_options").is_none(), "{sent}");
}

/// The listener serves `/metrics` only; the gateway's own port does not.
#[tokio::test]
async fn metrics_are_served_on_their_own_listener_only() {
    let r = region("solo").await.unwrap();
    let gw = gateway(&[(&r, 0, 1)], RoutingPolicy::default(), config()).await.unwrap();
    let addr = gw.metrics_addr.unwrap();
    let other = gw.http.get(format!("http://{addr}/other")).send().await.unwrap();
    assert_eq!(other.status(), 404);
    let post = gw.http.post(format!("http://{addr}/metrics")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    let on_gateway = gw.http.get(format!("{}/metrics", gw.base)).send().await.unwrap();
    assert_eq!(on_gateway.status(), 404);
}
