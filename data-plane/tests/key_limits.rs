#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Gateway keys' limits on an in-process data plane (issue #14): budget leases applied as the
//! control plane would send them, requests admitted or refused with Azure's 429 and a
//! `Retry-After` at the window's end, a parent's limit over its children's traffic, streams
//! charged their real usage (the gateway's own `include_usage` taken out again, byte for
//! byte) or, cut, their reservation, fail-open and fail-closed without a lease, the key's
//! `x-ratelimit-*` headers, and expired keys refused as unknown.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use modelgw_data_plane::limits::RefusalReason;
use modelgw_data_plane::{DataPlaneConfig, KeyLimiter, apply_leases};
use modelgw_mock_openai::Fault;
use modelgw_model::keys::{KeyLimits, LeaseGrant, Leases, Measure, Usage, Window, WindowLimits};
use modelgw_model::{GatewayKey, GatewayKeyId, RoutingPolicy, Snapshot, gateway_key_hash};
use serde_json::{Value, json};
use support::*;

const CHAT: &str = "/openai/deployments/auto/chat/completions?api-version=2024-10-21";
/// Upper bound for anything that should happen promptly.
const DEADLINE: Duration = Duration::from_secs(10);

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn limits(window: Window, measure: Measure, value: u64) -> KeyLimits {
    let mut l = KeyLimits::default();
    l.window_mut(window).set(measure, Some(value));
    l
}

/// Gateway `chat` over `r` at `version`, whose one key (`CLIENT_KEY`) has `own` limits.
fn snapshot_with(r: &Region, version: u64, own: KeyLimits) -> Snapshot {
    let mut s = snapshot(version, &[(r, 0, 1)], RoutingPolicy::default()).unwrap();
    s.gateways[0].keys[0].limits = own;
    s
}

/// Adds a key with `secret` under `parent` (a root key when `None`) to gateway 0.
fn add_key(
    s: &mut Snapshot,
    secret: &str,
    parent: Option<GatewayKeyId>,
    own: KeyLimits,
) -> GatewayKeyId {
    let mut key = GatewayKey::new(GatewayKeyId::new(), gateway_key_hash(secret), secret);
    key.parent = parent;
    key.limits = own;
    let id = key.id;
    s.gateways[0].keys.push(key);
    id
}

/// The grant of `value` on `measure` for `key`'s current `window`, the fleet having used
/// `fleet` (this instance nothing, as far as the control plane knew).
fn grant(
    key: GatewayKeyId,
    window: Window,
    measure: Measure,
    value: u64,
    fleet: Usage,
) -> LeaseGrant {
    let mut granted = WindowLimits::default();
    granted.set(measure, Some(value));
    LeaseGrant {
        key_id: key,
        window,
        window_start_unix_ms: window.start_of(unix_ms()),
        granted,
        fleet_used: fleet,
        own_used: Usage::default(),
        ceiling: WindowLimits::default(),
    }
}

fn lease(limiter: &KeyLimiter, grants: Vec<LeaseGrant>, valid_for: Duration) {
    let done = apply_leases(limiter, &Leases { grants, valid_for, skipped: Vec::new() });
    assert_eq!(done.ignored, 0, "every grant is for a known key and a current window");
}

/// Waits, when needed, until at least `margin` is left in the current `window`: the test's
/// requests then all fall into one window.
async fn clear_of_window_end(window: Window, margin: Duration) {
    let now = unix_ms();
    let left = window.start_of(now) + window.len_ms() - now;
    if left < margin.as_millis() as i64 {
        tokio::time::sleep(Duration::from_millis(left as u64 + 50)).await;
    }
}

/// A request to `path` with `key` and `body`.
fn post_as(gw: &TestGateway, key: &str, body: &Value) -> reqwest::RequestBuilder {
    gw.http
        .post(format!("{}{CHAT}", gw.base))
        .header("api-key", key)
        .header("content-type", "application/json")
        .body(body.to_string())
}

fn chat(max_tokens: u64) -> Value {
    json!({"model": "auto", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": max_tokens})
}

/// Seconds in a reset header (`17s`, `6m0s`, `1h2m3s`).
fn seconds(text: &str) -> i64 {
    let mut total = 0;
    let mut number = 0;
    for c in text.chars() {
        match c {
            '0'..='9' => number = number * 10 + i64::from(c as u8 - b'0'),
            'h' => (total, number) = (total + number * 3600, 0),
            'm' => (total, number) = (total + number * 60, 0),
            's' => (total, number) = (total + number, 0),
            _ => panic!("not a reset: {text}"),
        }
    }
    total
}

/// The `usage` object of a non-streamed answer body.
fn usage_of(body: &Value) -> Usage {
    let u = &body["usage"];
    Usage::request(u["prompt_tokens"].as_u64().unwrap(), u["completion_tokens"].as_u64().unwrap())
}

/// This instance's usage of `key` in the current `window`: (charged, reserved).
fn used(gw: &TestGateway, key: GatewayKeyId, window: Window) -> (Usage, Usage) {
    let u = gw.store.key_limits().usage(key, window).expect("a known key");
    assert_eq!(u.window_start_unix_ms, window.start_of(unix_ms()), "the current window");
    (u.charged, u.reserved)
}

/// Waits until `key`'s `window` has charged `requests` requests and holds no reservation.
async fn settled(gw: &TestGateway, key: GatewayKeyId, window: Window, requests: u64) -> Usage {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (charged, reserved) = used(gw, key, window);
        if charged.requests == requests && reserved.is_zero() {
            return charged;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "charged {charged:?}, reserved {reserved:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_key_past_its_grant_gets_429_with_retry_after_at_the_window_end() {
    let r = region("eus").await.unwrap();
    let config = DataPlaneConfig {
        metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..fast_config()
    };
    let gw = start(config).await.unwrap();
    let s = snapshot_with(&r, 1, limits(Window::Hour, Measure::Requests, 3));
    let key = s.gateways[0].keys[0].id;
    gw.install(s).unwrap();
    clear_of_window_end(Window::Hour, Duration::from_secs(10)).await;
    let limiter = gw.store.key_limits();
    lease(
        limiter,
        vec![grant(key, Window::Hour, Measure::Requests, 3, Usage::default())],
        DEADLINE * 6,
    );

    let mut served = Usage::default();
    for _ in 0..3 {
        let response = gw.post(CHAT, &chat(20)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        served = served.saturating_add(usage_of(&response.json().await.unwrap()));
    }
    let refused = gw.post(CHAT, &chat(20)).send().await.unwrap();
    let at = unix_ms();
    assert_eq!(refused.status(), 429);
    let hour_left_s = (Window::Hour.start_of(at) + Window::Hour.len_ms() - at + 999) / 1000;
    let retry: i64 = header(&refused, "retry-after").parse().unwrap();
    assert!(
        (hour_left_s - 2..=hour_left_s + 1).contains(&retry),
        "{retry} s, the hour ends in {hour_left_s} s"
    );
    assert_eq!(header(&refused, "x-ratelimit-limit-requests"), "3");
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "0");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "429");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("limit of 3 requests per hour"), "{message}");
    assert!(message.contains(&format!("retry after {retry} seconds")), "{message}");
    assert!(!message.contains(CLIENT_KEY) && !message.contains(&key.to_string()));
    assert_eq!(r.calls(), 3, "the refused request never reached the upstream");

    // Charged what the answers said they used; the refusal nothing.
    assert_eq!(settled(&gw, key, Window::Hour, 3).await, served);
    assert_eq!(limiter.counters().refusals(RefusalReason::WindowSpent), 1);
    let scrape = gw.scrape().await;
    assert!(
        scrape.contains("modelgw_key_limit_refusals_total{reason=\"window_spent\"} 1"),
        "{scrape}"
    );
    assert!(scrape.contains("modelgw_key_limit_lease_valid 1"), "{scrape}");
    assert!(scrape.contains("reason=\"key_limit\""), "the local answer is counted: {scrape}");
}

#[tokio::test]
async fn a_short_lease_with_room_left_in_the_fleet_asks_for_a_retry_in_a_second() {
    let r = region("eus").await.unwrap();
    let gw = start(fast_config()).await.unwrap();
    let s = snapshot_with(&r, 1, limits(Window::Day, Measure::Requests, 10));
    let key = s.gateways[0].keys[0].id;
    gw.install(s).unwrap();
    clear_of_window_end(Window::Day, Duration::from_secs(10)).await;
    // Other instances used 5; this one was lent 2 of the 5 left.
    let fleet = Usage { requests: 5, ..Usage::default() };
    lease(
        gw.store.key_limits(),
        vec![grant(key, Window::Day, Measure::Requests, 2, fleet)],
        DEADLINE * 6,
    );
    for _ in 0..2 {
        assert_eq!(gw.post(CHAT, &chat(5)).send().await.unwrap().status(), 200);
    }
    let refused = gw.post(CHAT, &chat(5)).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "1", "3 are left in the fleet: ask again soon");
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "3");
    assert_eq!(gw.store.key_limits().counters().refusals(RefusalReason::LeaseShort), 1);
}

#[tokio::test]
async fn a_parent_limit_stops_its_childrens_combined_traffic() {
    const PARENT: &str = "mgw-test-parent-key-0001";
    const CHILD_A: &str = "mgw-test-child-key-a-0001";
    const CHILD_B: &str = "mgw-test-child-key-b-0001";
    let r = region("eus").await.unwrap();
    let gw = start(fast_config()).await.unwrap();
    let mut s = snapshot_with(&r, 1, KeyLimits::default());
    let parent = add_key(&mut s, PARENT, None, limits(Window::Hour, Measure::Requests, 4));
    let a = add_key(&mut s, CHILD_A, Some(parent), KeyLimits::default());
    let b = add_key(&mut s, CHILD_B, Some(parent), KeyLimits::default());
    gw.install(s).unwrap();
    clear_of_window_end(Window::Hour, Duration::from_secs(10)).await;
    lease(
        gw.store.key_limits(),
        vec![grant(parent, Window::Hour, Measure::Requests, 4, Usage::default())],
        DEADLINE * 6,
    );

    for key in [CHILD_A, CHILD_B, CHILD_A, CHILD_B] {
        let response = post_as(&gw, key, &chat(5)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), "4", "the parent's limit");
    }
    for key in [CHILD_A, CHILD_B] {
        let refused = post_as(&gw, key, &chat(5)).send().await.unwrap();
        assert_eq!(refused.status(), 429);
        let body: Value = refused.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("(set on a key above it)"), "{message}");
    }
    assert_eq!(settled(&gw, parent, Window::Hour, 4).await.requests, 4, "subtree usage");
    assert_eq!(settled(&gw, a, Window::Hour, 2).await.requests, 2);
    assert_eq!(settled(&gw, b, Window::Day, 2).await.requests, 2);
    // A key outside the subtree is not held back.
    assert_eq!(gw.chat().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_stream_without_include_usage_is_charged_its_usage_and_the_client_gets_exactly_its_stream()
 {
    let r = region("eus").await.unwrap();
    r.mock().set_fixed_ids(true);
    // Metrics off: the limits alone make the gateway ask for the usage.
    let gw = start(DataPlaneConfig { metrics_enabled: false, ..fast_config() }).await.unwrap();
    let s = snapshot_with(&r, 1, limits(Window::Hour, Measure::TotalTokens, 100_000));
    let key = s.gateways[0].keys[0].id;
    gw.install(s).unwrap();
    clear_of_window_end(Window::Hour, Duration::from_secs(10)).await;
    lease(
        gw.store.key_limits(),
        vec![grant(key, Window::Hour, Measure::TotalTokens, 100_000, Usage::default())],
        DEADLINE * 6,
    );

    let body = json!({"model": "auto", "messages": [{"role": "user", "content": "Say hello"}], "stream": true});
    let through = gw.post(CHAT, &body).send().await.unwrap();
    assert_eq!(through.status(), 200);
    let through = through.text().await.unwrap();
    let upstream = r.requests();
    let sent: Value = serde_json::from_slice(&upstream[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true, "the gateway asked for the usage");

    // What the deployment streams to a client that did not ask, and what the usage was.
    let direct = |body: &Value| {
        gw.http
            .post(format!(
                "{}/openai/deployments/{}/chat/completions?api-version=2024-10-21",
                r.url(),
                r.deployment
            ))
            .header("api-key", &r.key)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let plain = direct(&body).send().await.unwrap().text().await.unwrap();
    assert_eq!(through, plain, "byte for byte what the client asked for");
    assert!(!through.contains("\"usage\""));
    let mut asking = body.clone();
    asking["stream_options"] = json!({"include_usage": true});
    let with_usage = direct(&asking).send().await.unwrap().text().await.unwrap();
    let usage = with_usage
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim_start_matches("data: ")).ok())
        .find(|v| v["usage"].is_object())
        .map(|v| usage_of(&v))
        .expect("a usage chunk");
    assert_eq!(settled(&gw, key, Window::Hour, 1).await, usage);
}

#[tokio::test]
async fn a_stream_cut_midway_is_charged_its_reservation() {
    let r = region("eus").await.unwrap();
    let gw = start(fast_config()).await.unwrap();
    let s = snapshot_with(&r, 1, limits(Window::Hour, Measure::TotalTokens, 100_000));
    let key = s.gateways[0].keys[0].id;
    gw.install(s).unwrap();
    clear_of_window_end(Window::Hour, Duration::from_secs(10)).await;
    lease(
        gw.store.key_limits(),
        vec![grant(key, Window::Hour, Measure::TotalTokens, 100_000, Usage::default())],
        DEADLINE * 6,
    );
    r.script(Fault::StreamCut { after_chunks: 4, times: 1 });

    let body = json!({"model": "auto", "messages": [{"role": "user", "content": "Say hello"}], "stream": true, "max_tokens": 20});
    let response = gw.post(CHAT, &body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.bytes().await; // the stream ends with an error event, then an abort
    let prompt_estimate = (body.to_string().len() as u64).div_ceil(4);
    assert_eq!(settled(&gw, key, Window::Hour, 1).await, Usage::request(prompt_estimate, 20));
}

#[tokio::test]
async fn without_a_valid_lease_a_limited_key_fails_open_by_default_and_closed_when_set() {
    let r = region("eus").await.unwrap();
    let gw = start(fast_config()).await.unwrap();
    let s = snapshot_with(&r, 1, limits(Window::Hour, Measure::Requests, 1));
    let key = s.gateways[0].keys[0].id;
    gw.install(s).unwrap();
    clear_of_window_end(Window::Hour, Duration::from_secs(10)).await;
    let limiter = gw.store.key_limits();

    // No lease yet (the control plane never answered): admitted, counted.
    for _ in 0..3 {
        assert_eq!(gw.post(CHAT, &chat(5)).send().await.unwrap().status(), 200);
    }
    assert_eq!(limiter.counters().fail_open(), 3);

    // A lease arrives: 1 granted, 3 already used here — enforced while it is valid.
    lease(
        limiter,
        vec![grant(key, Window::Hour, Measure::Requests, 1, Usage::default())],
        Duration::from_millis(300),
    );
    assert_eq!(gw.post(CHAT, &chat(5)).send().await.unwrap().status(), 429);
    // It expires without renewal (control plane away): open again, the expiry counted once.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while limiter.lease_valid() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.post(CHAT, &chat(5)).send().await.unwrap().status(), 200);
    assert_eq!(limiter.counters().fail_open(), 4);
    assert_eq!(limiter.counters().lease_expiries(), 1);

    // The gateway fails closed: 429, Retry-After 1.
    let mut closed = snapshot_with(&r, 2, limits(Window::Hour, Measure::Requests, 1));
    closed.gateways[0].keys[0].id = key;
    closed.gateways[0].key_limits.fail_closed = true;
    gw.install(closed).unwrap();
    let refused = gw.post(CHAT, &chat(5)).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "1");
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("cannot check this key's limits"));
    assert_eq!(limiter.counters().refusals(RefusalReason::NoLease), 1);
    assert_eq!(settled(&gw, key, Window::Hour, 4).await.requests, 4, "kept across the swap");
}

#[tokio::test]
async fn answers_to_a_limited_key_carry_its_ratelimit_headers_instead_of_the_upstreams() {
    const FREE: &str = "mgw-test-free-key-0001";
    let r = region("eus").await.unwrap();
    let gw = start(fast_config()).await.unwrap();
    let mut own = limits(Window::Minute, Measure::Requests, 60);
    own.per_hour.total_tokens = Some(10_000);
    let mut s = snapshot_with(&r, 1, own);
    let key = s.gateways[0].keys[0].id;
    add_key(&mut s, FREE, None, KeyLimits::default());
    gw.install(s).unwrap();
    clear_of_window_end(Window::Minute, Duration::from_secs(10)).await;
    let fleet =
        Usage { requests: 10, prompt_tokens: 300, completion_tokens: 200, total_tokens: 500 };
    lease(
        gw.store.key_limits(),
        vec![
            grant(key, Window::Minute, Measure::Requests, 20, fleet),
            grant(key, Window::Hour, Measure::TotalTokens, 2_000, fleet),
        ],
        DEADLINE * 6,
    );

    let response = gw.post(CHAT, &chat(5)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let at = unix_ms();
    let headers = response.headers().clone();
    let total = usage_of(&response.json().await.unwrap()).total_tokens;
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!(h("x-ratelimit-limit-requests"), "60");
    assert_eq!(h("x-ratelimit-remaining-requests"), "49", "60 - 10 elsewhere - 1 here");
    assert_eq!(h("x-ratelimit-limit-tokens"), "10000");
    assert_eq!(h("x-ratelimit-remaining-tokens"), (10_000 - 500 - total).to_string());
    let minute_left = (Window::Minute.start_of(at) + 60_000 - at) / 1000;
    let reset = seconds(&h("x-ratelimit-reset-requests"));
    assert!((minute_left - 1..=minute_left + 1).contains(&reset), "{reset} vs {minute_left}");
    let hour_left = (Window::Hour.start_of(at) + Window::Hour.len_ms() - at) / 1000;
    let reset = seconds(&h("x-ratelimit-reset-tokens"));
    assert!((hour_left - 1..=hour_left + 1).contains(&reset), "{reset} vs {hour_left}");

    // A key without limits: the upstream's headers, as before.
    let free = post_as(&gw, FREE, &chat(5)).send().await.unwrap();
    assert_eq!(free.status(), 200);
    let upstream_limit = header(&free, "x-ratelimit-limit-tokens");
    assert!(!upstream_limit.is_empty() && upstream_limit != "10000", "{upstream_limit}");
    assert!(!header(&free, "x-ratelimit-remaining-requests").is_empty());
    assert!(header(&free, "x-ratelimit-reset-requests").is_empty());
}

#[tokio::test]
async fn an_expired_key_is_refused_as_an_unknown_one_from_its_expiry() {
    const EXPIRED: &str = "mgw-test-expired-key-0001";
    let r = region("eus").await.unwrap();
    let gw = start(fast_config()).await.unwrap();
    let mut s = snapshot_with(&r, 1, KeyLimits::default());
    s.gateways[0].keys[0].expires_unix_ms = Some(unix_ms() + 1_500);
    let gone = add_key(&mut s, EXPIRED, None, KeyLimits::default());
    s.gateways[0].keys[1].expires_unix_ms = Some(unix_ms() - 1_000);
    gw.install(s).unwrap();

    let unknown = post_as(&gw, "mgw-no-such-key", &chat(5)).send().await.unwrap();
    assert_eq!(unknown.status(), 401);
    let unknown_body = unknown.text().await.unwrap();
    let expired = post_as(&gw, EXPIRED, &chat(5)).send().await.unwrap();
    assert_eq!(expired.status(), 401);
    assert_eq!(expired.text().await.unwrap(), unknown_body, "nothing tells it apart");
    assert!(gw.store.key_limits().usage(gone, Window::Hour).unwrap().charged.is_zero());

    assert_eq!(gw.chat().await.unwrap().status(), 200, "not expired yet");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status = gw.chat().await.unwrap().status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(tokio::time::Instant::now() < deadline, "still served past its expiry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The overshoot of one shared limit across two data planes, each lent half of it, with 64
/// clients split over both sending until refused. `max_tokens`: the clients' completion cap
/// (`None`: the gateway reserves its default, 1 token here, and every answer's 8 completion
/// tokens exceed it). Returns (completion tokens served, overshoot bound).
async fn overshoot_run(max_tokens: Option<u64>) -> (u64, u64) {
    const LIMIT: u64 = 2_000;
    const CLIENTS: usize = 64;
    let r = region("eus").await.unwrap();
    let mut s = snapshot_with(&r, 1, limits(Window::Hour, Measure::CompletionTokens, LIMIT));
    s.gateways[0].key_limits.default_completion_tokens = Some(1);
    let key = s.gateways[0].keys[0].id;
    let planes = [start(fast_config()).await.unwrap(), start(fast_config()).await.unwrap()];
    for gw in &planes {
        gw.install(s.clone()).unwrap();
    }
    clear_of_window_end(Window::Hour, Duration::from_secs(30)).await;
    for gw in &planes {
        let half = grant(key, Window::Hour, Measure::CompletionTokens, LIMIT / 2, Usage::default());
        lease(gw.store.key_limits(), vec![half], DEADLINE * 6);
    }
    let mut body = json!({"model": "auto", "messages": [{"role": "user", "content": "Say hello"}]});
    if let Some(cap) = max_tokens {
        body["max_tokens"] = json!(cap);
    }
    let reserved = max_tokens.unwrap_or(1);
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let excess = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let gw = &planes[i % 2];
        let request = gw.post(CHAT, &body);
        let (served, excess) = (served.clone(), excess.clone());
        clients.spawn(async move {
            for _ in 0..1_000 {
                let response = request.try_clone().unwrap().send().await.unwrap();
                match response.status().as_u16() {
                    200 => {
                        let completion =
                            usage_of(&response.json().await.unwrap()).completion_tokens;
                        served.fetch_add(completion, std::sync::atomic::Ordering::Relaxed);
                        let over = completion.saturating_sub(reserved);
                        excess.fetch_max(over, std::sync::atomic::Ordering::Relaxed);
                    }
                    429 => {
                        assert!(!header(&response, "retry-after").is_empty());
                        return;
                    }
                    other => panic!("unexpected {other}"),
                }
            }
            panic!("never refused");
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    // The control plane's next push: nothing left to lend, the fleet's use in the grants.
    // Refusals now send clients to the end of the hour.
    let used: Vec<Usage> = planes.iter().map(|gw| settled_any(gw, key)).collect();
    let fleet = used[0].saturating_add(used[1]);
    for (gw, own) in planes.iter().zip(&used) {
        let mut renewal = grant(key, Window::Hour, Measure::CompletionTokens, LIMIT / 2, fleet);
        renewal.own_used = *own;
        lease(gw.store.key_limits(), vec![renewal], DEADLINE * 6);
        let refused = gw.post(CHAT, &body).send().await.unwrap();
        assert_eq!(refused.status(), 429);
        let at = unix_ms();
        let hour_left = (Window::Hour.start_of(at) + Window::Hour.len_ms() - at + 999) / 1000;
        let retry: i64 = header(&refused, "retry-after").parse().unwrap();
        assert!((hour_left - 2..=hour_left + 1).contains(&retry), "{retry} vs {hour_left}");
    }
    let served = served.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(served, fleet.completion_tokens, "charged what was served, nothing twice");
    // At most every client's request in flight at the last admission exceeds its reservation.
    let bound = CLIENTS as u64 * excess.load(std::sync::atomic::Ordering::Relaxed);
    (served, bound)
}

/// What `key` charged on `gw` in the current hour, once nothing is reserved any more.
fn settled_any(gw: &TestGateway, key: GatewayKeyId) -> Usage {
    let (charged, reserved) = used(gw, key, Window::Hour);
    assert!(reserved.is_zero(), "{reserved:?}");
    charged
}

#[tokio::test]
async fn two_data_planes_overshoot_a_shared_limit_by_no_more_than_the_bound() {
    // Clients that cap their completion: reservations cover every answer, no overshoot.
    let (served, bound) = overshoot_run(Some(8)).await;
    println!(
        "max_tokens set: served {served} of 2000 completion tokens, overshoot {}, bound {bound}",
        served.saturating_sub(2_000)
    );
    assert_eq!(bound, 0);
    assert!(served <= 2_000, "{served}");
    assert!(served > 2_000 - 64 * 8, "the limit is used, not just respected: {served}");
    // Clients that do not, against a reservation of 1: each answer exceeds it by 7.
    let (served, bound) = overshoot_run(None).await;
    let overshoot = served.saturating_sub(2_000);
    println!(
        "no max_tokens (1 reserved, 8 used): served {served}, overshoot {overshoot}, bound {bound}"
    );
    assert_eq!(bound, 64 * 7);
    assert!(overshoot <= bound, "overshoot {overshoot} > bound {bound}");
}
