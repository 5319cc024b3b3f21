//! Issue 14's acceptance for gateway keys' limits, across real processes: a control plane on
//! SQLite (its lease allocator), two data planes, one mock Azure region.
//! - 64 clients split over both data planes spend one key's 10,000 total tokens an hour until
//!   refused: the tokens served exceed the limit by no more than the bound ARCHITECTURE.md
//!   states (0 when clients set `max_tokens`; in-flight requests × their excess when the
//!   gateway reserves less than they use), printed with it; every refusal is Azure's 429 with
//!   a `Retry-After`: the end of the hour once the limit is spent.
//! - A parent key's limit stops its children's combined traffic on both data planes;
//!   revoking the parent revokes the children everywhere.
//! - With the control plane stopped, the data planes keep enforcing with the budget they hold;
//!   when it returns, the fleet's usage is reconciled within seconds, nothing counted twice,
//!   and nothing more than the limit is ever lent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use modelgw_e2e::metrics::Scrape;
use modelgw_e2e::{API_VERSION, Admin, Cluster};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");
const HOUR_MS: i64 = 3_600_000;
const CLIENTS: usize = 64;
/// The gateway's completion reservation for requests without `max_tokens`: below the mock's
/// 8-word answers, so those requests use more than they reserve.
const DEFAULT_COMPLETION: u64 = 1;
/// The cap clients that set `max_tokens` send: below the mock's answer, so it is cut there.
const MAX_TOKENS: u64 = 8;

/// The completion tokens of the mock's answer to a request without `max_tokens` (one per
/// word of its reply).
fn answer_tokens() -> u64 {
    modelgw_mock_openai::wire::reply_chunks(REGION).len() as u64
}

const REGION: &str = "East US";

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Seconds from now to the end of the current UTC hour, rounded up.
fn hour_left_secs() -> i64 {
    let now = unix_ms();
    (now - now.rem_euclid(HOUR_MS) + HOUR_MS - now + 999) / 1000
}

/// A run must not straddle an hour boundary (its window would start over): if less than
/// `margin` is left of this hour, wait for the next one.
async fn clear_of_hour_end(margin: Duration) {
    let left = Duration::from_secs(hour_left_secs() as u64);
    if left < margin {
        eprintln!("waiting {left:?} for the next hour");
        tokio::time::sleep(left + Duration::from_secs(1)).await;
    }
}

/// A control plane, `planes` data planes and one region, with one gateway whose key-limit
/// policy reserves [`DEFAULT_COMPLETION`] tokens for requests without `max_tokens`.
async fn cluster(planes: usize) -> (Cluster, Admin, String) {
    let mut cluster = Cluster::new(BIN).unwrap();
    cluster.start_control_plane().await.unwrap();
    cluster.start_region(REGION).await.unwrap();
    for i in 0..planes {
        cluster.start_data_plane(&format!("dp-{i}")).await.unwrap();
    }
    let admin = cluster.admin();
    let endpoint = admin.create_endpoint("eus", &cluster.regions[0]).await.unwrap();
    let (status, gateway) = admin
        .call(
            "POST",
            "/api/v1/gateways",
            Some(json!({
                "name": "gpt-4o-mini",
                "endpoints": [{"endpoint_id": endpoint, "enabled": true, "priority": 0, "weight": 1}],
                "key_limits": {"default_completion_tokens": DEFAULT_COMPLETION},
            })),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{gateway}");
    let gateway = gateway["id"].as_str().unwrap().to_owned();
    (cluster, admin, gateway)
}

/// A key of `gateway`: (id, secret).
async fn key(admin: &Admin, gateway: &str, name: &str, extra: Value) -> (String, String) {
    let mut body = json!({"name": name});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, created) =
        admin.call("POST", &format!("/api/v1/gateways/{gateway}/keys"), Some(body)).await.unwrap();
    assert_eq!(status, 201, "{created}");
    (created["id"].as_str().unwrap().to_owned(), created["key"].as_str().unwrap().to_owned())
}

fn hourly_total(limit: u64) -> Value {
    json!({"limits": {"per_hour": {"total_tokens": limit}}})
}

/// Waits until every data plane applied the current configuration.
async fn applied(admin: &Admin, planes: usize) {
    let version = admin.config_version().await.unwrap();
    let nodes: Vec<String> = (0..planes).map(|i| format!("dp-{i}")).collect();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    admin.wait_for_applied(&nodes, version, Duration::from_secs(15)).await.unwrap();
}

/// A chat request of known size: the gateway reserves `ceil(bytes / 4)` prompt tokens for
/// it, plus `max_tokens` or the gateway's default for the completion; the mock bills a token
/// per word plus 6 for the message, and a token per word of its answer (cut at `max_tokens`).
#[derive(Clone)]
struct Chat {
    body: Arc<String>,
    /// What the gateway reserves for it, in total tokens.
    reserved: u64,
    /// What the mock bills for it, in total tokens.
    billed: u64,
}

impl Chat {
    fn new(content: &str, max_tokens: Option<u64>) -> Chat {
        let mut body = json!({"messages": [{"role": "user", "content": content}]});
        if let Some(cap) = max_tokens {
            body["max_tokens"] = json!(cap);
        }
        let body = body.to_string();
        let reserved = (body.len() as u64).div_ceil(4) + max_tokens.unwrap_or(DEFAULT_COMPLETION);
        let words = content.split_whitespace().count() as u64;
        let billed = words + 6 + max_tokens.unwrap_or(u64::MAX).min(answer_tokens());
        Chat { body: Arc::new(body), reserved, billed }
    }

    /// By how much one answer exceeds its reservation.
    fn excess(&self) -> u64 {
        self.billed.saturating_sub(self.reserved)
    }
}

/// What the clients of a run saw.
#[derive(Debug, Default)]
struct Run {
    requests: AtomicU64,
    /// Total tokens of the answers (their `usage`).
    served: AtomicU64,
    /// The largest (actual − reserved) of one answer.
    max_excess: AtomicU64,
    /// Refusals sending the client to the end of the hour.
    window_spent: AtomicU64,
    /// Refusals asking for a retry in a second (this data plane's lease is short while the
    /// fleet has budget).
    retry_soon: AtomicU64,
}

impl Run {
    fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// How a client treats a refusal with `Retry-After: 1`.
#[derive(Clone, Copy, PartialEq)]
enum OnRetrySoon {
    /// As the SDKs do: wait the second and send again.
    Retry,
    /// Stop there (the control plane is away: no top-up can come).
    Stop,
}

/// One chat through `gateway` with `key`; returns its status, `Retry-After` and body.
async fn send(
    http: &reqwest::Client,
    gateway: &str,
    key: &str,
    chat: &Chat,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = http
        .post(format!(
            "{gateway}/openai/deployments/gpt-4o-mini/chat/completions?api-version={API_VERSION}"
        ))
        .header("api-key", key)
        .header("content-type", "application/json")
        .body(chat.body.as_bytes().to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// `clients` clients, spread round-robin over `targets` ((gateway URL, key) pairs), each
/// sending `chat` until a refusal that sends it to the end of the hour (or, with
/// [`OnRetrySoon::Stop`], any refusal). Every answer is checked on the way: 200 with usage
/// and the key's `x-ratelimit-*` headers, or Azure's 429 with a `Retry-After` that is
/// either 1 s or the end of the hour.
async fn drive(targets: &[(String, String)], clients: usize, chat: &Chat, on: OnRetrySoon) -> Run {
    let run = Arc::new(Run::default());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let (gateway, key) = targets[i % targets.len()].clone();
        let (chat, run) = (chat.clone(), run.clone());
        tasks.spawn(async move {
            let http = reqwest::Client::new();
            let mut soon_in_a_row = 0;
            loop {
                let (status, headers, body) = send(&http, &gateway, &key, &chat).await;
                run.requests.fetch_add(1, Ordering::Relaxed);
                if status == 200 {
                    soon_in_a_row = 0;
                    let total = body["usage"]["total_tokens"].as_u64().expect("usage");
                    run.served.fetch_add(total, Ordering::Relaxed);
                    run.max_excess
                        .fetch_max(total.saturating_sub(chat.reserved), Ordering::Relaxed);
                    for name in ["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens"] {
                        assert!(headers.contains_key(name), "no {name}: {headers:?}");
                    }
                    continue;
                }
                assert_eq!(status, 429, "{body}");
                assert_eq!(body["error"]["code"], "429", "Azure's shape: {body}");
                let retry: i64 = headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no Retry-After: {headers:?}"));
                if retry == 1 {
                    run.retry_soon.fetch_add(1, Ordering::Relaxed);
                    soon_in_a_row += 1;
                    assert!(soon_in_a_row <= 20, "20 refusals in a row asked for a retry in 1 s");
                    if on == OnRetrySoon::Stop {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let left = hour_left_secs();
                assert!(
                    (left - 2..=left + 1).contains(&retry),
                    "Retry-After {retry} s, the hour ends in {left} s"
                );
                run.window_spent.fetch_add(1, Ordering::Relaxed);
                return;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    Arc::into_inner(run).unwrap()
}

/// The key's usage in the current hour as the admin API shows it (every data plane's
/// reports): `(requests, total tokens)`.
async fn api_usage(admin: &Admin, gateway: &str, key_id: &str) -> (u64, u64) {
    let (status, usage) = admin
        .call("GET", &format!("/api/v1/gateways/{gateway}/keys/{key_id}/usage?window=hour"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{usage}");
    let used = &usage["current"]["used"];
    (used["requests"].as_u64().unwrap(), used["total_tokens"].as_u64().unwrap())
}

/// Waits until the admin API shows `want` (requests, total tokens) for the key; returns how
/// long it took. Fails after `within`, showing what it saw.
async fn usage_reaches(
    admin: &Admin,
    gateway: &str,
    key_id: &str,
    want: (u64, u64),
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let seen = api_usage(admin, gateway, key_id).await;
        if seen == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "usage {seen:?}, the clients saw {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn counter(url: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    Scrape::get(url).await.unwrap().value(name, labels).unwrap_or(0.0) as u64
}

/// Sends one request per (data plane, key) until each was admitted against a budget lease
/// rather than unchecked (the grants follow a new key's snapshot by a few milliseconds):
/// runs start with every data plane holding grants. Returns what the probes were served.
async fn leased(cluster: &Cluster, targets: &[(usize, &str)], chat: &Chat) -> (u64, u64) {
    let http = reqwest::Client::new();
    let (mut requests, mut tokens) = (0, 0);
    for &(plane, key) in targets {
        let url = cluster.data_planes[plane].metrics_url();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = counter(&url, "modelgw_key_limit_fail_open_admissions_total", &[]).await;
            let (status, _, body) = send(&http, cluster.gateway_url(plane), key, chat).await;
            assert_eq!(status, 200, "{body}");
            requests += 1;
            tokens += body["usage"]["total_tokens"].as_u64().unwrap();
            let after = counter(&url, "modelgw_key_limit_fail_open_admissions_total", &[]).await;
            if after == before {
                break;
            }
            assert!(Instant::now() < deadline, "data plane {plane} holds no grant for the key");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (requests, tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_on_two_data_planes_overshoot_an_hourly_limit_by_no_more_than_the_bound()
{
    const LIMIT: u64 = 10_000;
    let (cluster, admin, gateway) = cluster(2).await;
    let (capped_id, capped) = key(&admin, &gateway, "capped", hourly_total(LIMIT)).await;
    let (uncapped_id, uncapped) = key(&admin, &gateway, "uncapped", hourly_total(LIMIT)).await;
    applied(&admin, 2).await;
    clear_of_hour_end(Duration::from_secs(120)).await;

    // Prose (more bytes than tokens) with `max_tokens`: every reservation covers its answer,
    // so the bound is 0 for any number of data planes.
    let capped_chat = Chat::new("Count the words of this short request, please.", Some(MAX_TOKENS));
    assert_eq!(capped_chat.excess(), 0);
    // Dense text (one-letter words: fewer bytes than tokens) without `max_tokens`, against a
    // 1-token default: each answer exceeds its reservation, and each client has at most one
    // request in flight, so the bound is 64 × that excess.
    let uncapped_chat = Chat::new(&["a"; 40].join(" "), None);
    assert!(uncapped_chat.excess() > answer_tokens() - DEFAULT_COMPLETION);
    for (key_id, secret, chat) in
        [(&capped_id, &capped, capped_chat), (&uncapped_id, &uncapped, uncapped_chat)]
    {
        let bound = CLIENTS as u64 * chat.excess();
        let (probe_requests, probe_tokens) =
            leased(&cluster, &[(0, secret), (1, secret)], &chat).await;
        let targets: Vec<(String, String)> =
            (0..2).map(|i| (cluster.gateway_url(i).to_owned(), secret.clone())).collect();
        let run = drive(&targets, CLIENTS, &chat, OnRetrySoon::Retry).await;
        let served = probe_tokens + run.get(&run.served);
        let requests = probe_requests + run.get(&run.requests)
            - run.get(&run.window_spent)
            - run.get(&run.retry_soon);
        let overshoot = served.saturating_sub(LIMIT);
        let measured_bound = CLIENTS as u64 * run.get(&run.max_excess);
        println!(
            "reserving {} for {} billed: {requests} requests served {served} of {LIMIT} tokens \
             over 2 data planes, overshoot {overshoot}, bound {bound}; refusals: {} to the \
             hour's end, {} asking for a retry in 1 s",
            chat.reserved,
            chat.billed,
            run.get(&run.window_spent),
            run.get(&run.retry_soon),
        );
        assert_eq!(measured_bound, bound, "each answer exceeds its reservation as designed");
        assert!(overshoot <= bound, "overshoot {overshoot} > bound {bound}");
        assert_eq!(run.get(&run.window_spent), CLIENTS as u64, "every client was refused");
        assert!(
            served + CLIENTS as u64 * chat.reserved >= LIMIT,
            "the limit is used, not only respected: {served}"
        );
        // Every data plane's reports add up to what the clients were served, once.
        let took =
            usage_reaches(&admin, &gateway, key_id, (requests, served), Duration::from_secs(10))
                .await;
        println!("the admin API showed the same usage {took:?} after the run");
    }
    for plane in &cluster.data_planes {
        let url = plane.metrics_url();
        let open = counter(&url, "modelgw_key_limit_fail_open_admissions_total", &[]).await;
        let spent =
            counter(&url, "modelgw_key_limit_refusals_total", &[("reason", "window_spent")]).await;
        assert!(spent >= 1, "{} refused for the window: {spent}", plane.name);
        // The probes aside, nothing was admitted unchecked (at most one per key: the probe
        // that found no grant yet).
        assert!(open <= 2, "{} admitted {open} requests without a lease", plane.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_limit_stops_its_childrens_traffic_on_every_data_plane_and_revoking_it_revokes_them()
 {
    const LIMIT: u64 = 3_000;
    let (cluster, admin, gateway) = cluster(2).await;
    let (parent_id, _parent) = key(&admin, &gateway, "department", hourly_total(LIMIT)).await;
    let (a_id, a) = key(&admin, &gateway, "team-a", json!({"parent_id": parent_id})).await;
    let (b_id, b) = key(&admin, &gateway, "team-b", json!({"parent_id": parent_id})).await;
    applied(&admin, 2).await;
    clear_of_hour_end(Duration::from_secs(90)).await;

    // Team A on data plane 0, team B on data plane 1: only their sum is limited.
    let chat = Chat::new("Count the words of this short request, please.", Some(MAX_TOKENS));
    let (probe_requests, probe_tokens) = leased(&cluster, &[(0, &a), (1, &b)], &chat).await;
    let targets = vec![
        (cluster.gateway_url(0).to_owned(), a.clone()),
        (cluster.gateway_url(1).to_owned(), b.clone()),
    ];
    let run = drive(&targets, 32, &chat, OnRetrySoon::Retry).await;
    let served = probe_tokens + run.get(&run.served);
    println!("two children served {served} tokens under their parent's {LIMIT}");
    assert!(served <= LIMIT, "{served} > {LIMIT}");
    assert!(served + 32 * chat.reserved >= LIMIT, "the limit is used: {served}");
    assert_eq!(run.get(&run.window_spent), 32, "both children's clients were stopped");
    let requests = probe_requests + run.get(&run.requests) - 32 - run.get(&run.retry_soon);
    usage_reaches(&admin, &gateway, &parent_id, (requests, served), Duration::from_secs(10)).await;
    let (a_requests, _) = api_usage(&admin, &gateway, &a_id).await;
    let (b_requests, _) = api_usage(&admin, &gateway, &b_id).await;
    assert!(a_requests > 0 && b_requests > 0, "both children were served");
    assert_eq!(a_requests + b_requests, requests, "the parent's usage is its children's");

    // Revoking the parent revokes the children, on every data plane.
    let (status, body) = admin
        .call("DELETE", &format!("/api/v1/gateways/{gateway}/keys/{parent_id}"), None)
        .await
        .unwrap();
    assert!(status == 204 || status == 200, "{status} {body}");
    applied(&admin, 2).await;
    let http = reqwest::Client::new();
    for plane in 0..2 {
        for secret in [&a, &b] {
            let (status, _, body) = send(&http, cluster.gateway_url(plane), secret, &chat).await;
            assert_eq!(status, 401, "a child of a revoked key on dp-{plane}: {body}");
        }
    }
    for child in [&a_id, &b_id] {
        let (status, key) = admin
            .call("GET", &format!("/api/v1/gateways/{gateway}/keys/{child}"), None)
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(key["revoked_at"].is_string(), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_control_plane_data_planes_keep_enforcing_and_reconcile_when_it_returns() {
    const LIMIT: u64 = 6_000;
    let (mut cluster, admin, gateway) = cluster(2).await;
    let (key_id, secret) = key(&admin, &gateway, "team", hourly_total(LIMIT)).await;
    applied(&admin, 2).await;
    clear_of_hour_end(Duration::from_secs(120)).await;
    let chat = Chat::new("Count the words of this short request, please.", Some(MAX_TOKENS));
    let targets: Vec<(String, String)> =
        (0..2).map(|i| (cluster.gateway_url(i).to_owned(), secret.clone())).collect();

    // Some traffic with the control plane up; the fleet's usage reaches the API.
    let (mut requests, mut served) = leased(&cluster, &[(0, &secret), (1, &secret)], &chat).await;
    let http = reqwest::Client::new();
    for i in 0..20 {
        let (status, _, body) = send(&http, &targets[i % 2].0, &secret, &chat).await;
        assert_eq!(status, 200, "{body}");
        requests += 1;
        served += body["usage"]["total_tokens"].as_u64().unwrap();
    }
    usage_reaches(&admin, &gateway, &key_id, (requests, served), Duration::from_secs(10)).await;

    // The control plane goes away. Within their leases' 30 s, the data planes admit what they
    // were lent and refuse the rest: enforcing, not failing open.
    cluster.stop_control_plane().await;
    let outage = drive(&targets, 16, &chat, OnRetrySoon::Stop).await;
    let during = outage.get(&outage.served);
    let refused = outage.get(&outage.window_spent) + outage.get(&outage.retry_soon);
    println!("control plane away: served {during} more tokens, then {refused} refusals");
    assert_eq!(refused, 16, "every client was refused once the budget held was spent");
    assert!(during > 0, "the data planes kept serving with what they held");
    assert!(served + during <= LIMIT, "{} > {LIMIT}", served + during);
    assert!(
        served + during + 16 * chat.reserved < LIMIT,
        "the data planes stopped at their grants, well before the limit"
    );
    requests += outage.get(&outage.requests) - refused;
    served += during;
    for plane in &cluster.data_planes {
        let open =
            counter(&plane.metrics_url(), "modelgw_key_limit_fail_open_admissions_total", &[])
                .await;
        assert!(open <= 1, "{} admitted {open} requests without a lease", plane.name);
    }

    // It returns (same database, same ports): the cumulative reports bring the usage of the
    // outage in within seconds, counted once.
    cluster.start_control_plane().await.unwrap();
    let took =
        usage_reaches(&admin, &gateway, &key_id, (requests, served), Duration::from_secs(15)).await;
    println!("reconciled {took:?} after the control plane was ready");
    // Every data plane reports every second and sent everything again on its new stream:
    // after a few more reports the usage is still counted once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(api_usage(&admin, &gateway, &key_id).await, (requests, served));

    // The allocator lends the rest of the hour, not the outage's usage again.
    let rest = drive(&targets, CLIENTS, &chat, OnRetrySoon::Retry).await;
    let total = served + rest.get(&rest.served);
    println!("after the return: {total} of {LIMIT} tokens served in the hour");
    assert!(total <= LIMIT, "{total} > {LIMIT}");
    assert!(total + CLIENTS as u64 * chat.reserved >= LIMIT, "the rest was lent: {total}");
    assert_eq!(rest.get(&rest.window_spent), CLIENTS as u64);
}
