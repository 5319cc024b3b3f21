//! The routing engine end to end (issue #3): the real proxy in process, mock Azure regions on
//! loopback, snapshots swapped in directly. Each test reads like the behaviour it proves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use modelgw_data_plane::health::HealthPolicy;
use modelgw_data_plane::{DataPlaneConfig, apply_fleet_health};
use modelgw_mock_openai::{Fault, Quota, QuotaHeaders, wire};
use modelgw_model::protocol::{EndpointHealth, FleetHealth};
use modelgw_model::{EndpointState, RoutingPolicy, RoutingStrategy};
use serde_json::Value;
use support::{TestGateway, fast_config, gateway, header, id, refusing, region};

impl TestGateway {
    /// Sends one chat and returns (status, serving endpoint); the body is read to the end.
    async fn chat_served_by(&self) -> Result<(u16, String)> {
        let served = self.chat_traced().await?;
        Ok((served.status, served.by))
    }

    /// Sends one chat and says how it went and when; the body is read to the end (a body
    /// that fails is an error).
    async fn chat_traced(&self) -> Result<Served> {
        let sent = Instant::now();
        let response = self.chat().await?;
        let status = response.status().as_u16();
        let by = header(&response, "x-modelgw-endpoint").to_owned();
        let attempts = header(&response, "x-modelgw-attempts").to_owned();
        response.bytes().await?;
        Ok(Served { status, by, attempts, sent, answered: Instant::now() })
    }
}

/// One chat as the client saw it.
#[derive(Debug)]
struct Served {
    status: u16,
    /// `x-modelgw-endpoint`.
    by: String,
    /// `x-modelgw-attempts`.
    attempts: String,
    sent: Instant,
    /// When the body had been read to its end.
    answered: Instant,
}

impl Served {
    /// Whether `endpoint` was sent this request and ended with `outcome` (e.g. `throttled`).
    fn tried(&self, endpoint: &str, outcome: &str) -> bool {
        let prefix = format!("{endpoint}:{outcome}:");
        self.attempts.split(',').any(|a| a.starts_with(&prefix))
    }
}

/// Most requests an endpoint that fails every time may get over `elapsed` when each failure
/// closes it for at least `window`: the first, then at most one half-open trial per window.
/// Derived from the elapsed time rather than bounding it, so machine load cannot break it.
fn most_calls_within(elapsed: Duration, window: Duration) -> u64 {
    1 + elapsed.as_nanos().div_ceil(window.as_nanos()) as u64
}

fn routing(strategy: RoutingStrategy) -> RoutingPolicy {
    RoutingPolicy { strategy, ..Default::default() }
}

/// Sends chats until `served` serves one or `within` passes.
async fn until_served_by(gw: &TestGateway, served: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let (status, by) = gw.chat_served_by().await?;
        if status == 200 && by == served {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{served} never served within {within:?}")
}

#[tokio::test]
async fn a_throttled_endpoint_gets_nothing_during_its_window_but_one_half_open_trial() -> Result<()>
{
    const TOTAL: usize = 500;
    const WORKERS: usize = 8;
    /// The endpoint's `Retry-After`.
    const WINDOW: Duration = Duration::from_secs(2);
    /// Pause after each request of a worker: with ~62 requests each, the run lasts at least
    /// 3 s however fast the machine is — past the first window, so a trial must happen.
    const PACE: Duration = Duration::from_millis(50);
    let (a, b, c) = (region("a").await?, region("b").await?, region("c").await?);
    let gw = gateway(
        &[(&a, 0, 1), (&b, 0, 1), (&c, 0, 1)],
        routing(RoutingStrategy::Weighted),
        fast_config(),
    )
    .await?;
    // `a` answers every request 429 with a 2 s window, its half-open trials included.
    a.script(Fault::Status {
        status: 429,
        retry_after: Some(WINDOW.as_secs()),
        retry_after_ms: None,
        times: u32::MAX,
    });
    // Until `a` has seen one request (its 429 fails over invisibly), one client at a time, so
    // no second request is admitted to `a` before its window opens.
    let mut log = Vec::new();
    while a.calls() == 0 {
        log.push(gw.chat_traced().await?);
        assert!(log.len() < 50, "a was never chosen");
    }

    // Then 8 concurrent clients send the rest, paced.
    let gw = Arc::new(gw);
    let started = Instant::now();
    let rest = TOTAL - log.len();
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let gw = Arc::clone(&gw);
        let count = rest / WORKERS + usize::from(worker < rest % WORKERS);
        workers.push(tokio::spawn(async move {
            let mut served = Vec::with_capacity(count);
            for _ in 0..count {
                served.push(gw.chat_traced().await.map_err(|e| format!("{e:#}")));
                tokio::time::sleep(PACE).await;
            }
            served
        }));
    }
    let mut failures = Vec::new();
    for worker in workers {
        for result in worker.await? {
            match result {
                Ok(served) if served.status == 200 && served.by != "a" => log.push(served),
                Ok(served) => failures.push(format!("{served:?}")),
                Err(err) => failures.push(err),
            }
        }
    }
    let run = started.elapsed();
    assert!(failures.is_empty(), "client-visible errors: {failures:?}");
    assert_eq!(log.len(), TOTAL);
    assert!(run > Duration::from_millis(2500), "the run must outlive the first window");

    // Every request `a` got is one whose attempts list its 429: none went unnoticed.
    let mut tries: Vec<&Served> = log.iter().filter(|s| s.tried("a", "throttled")).collect();
    tries.sort_by_key(|s| s.sent);
    assert_eq!(tries.len() as u64, a.calls(), "every call to a is in an attempts header");
    // Each call after a 429 came a full window later: the window opened after the earlier
    // request was sent, the trial reached `a` before its request was answered.
    for pair in tries.windows(2) {
        let gap = pair[1].answered.duration_since(pair[0].sent);
        assert!(gap >= WINDOW, "a called again {gap:?} after a 429: {pair:?}");
    }
    let since_first = tries[0].sent.elapsed();
    assert!(
        a.calls() <= most_calls_within(since_first, WINDOW),
        "{} calls to a in {since_first:?}",
        a.calls()
    );
    assert!(a.calls() >= 2, "a half-open trial happened once the first window was over");
    assert_eq!(b.calls() + c.calls(), TOTAL as u64, "every request served once, elsewhere");
    Ok(())
}

#[tokio::test]
async fn refused_cut_mid_response_and_503_endpoints_are_invisible_to_clients() -> Result<()> {
    const REQUESTS: usize = 120;
    let refused = refusing("refused").await?;
    let (cut, unavailable, good) =
        (region("cut").await?, region("unavailable").await?, region("good").await?);
    // A non-streamed answer: head and half the JSON body, then the connection is aborted.
    cut.script(Fault::StreamCut { after_chunks: 0, times: u32::MAX });
    unavailable.script(Fault::Status {
        status: 503,
        retry_after: None,
        retry_after_ms: None,
        times: u32::MAX,
    });
    let gw = gateway(
        &[(&refused, 0, 1), (&cut, 0, 1), (&unavailable, 0, 1), (&good, 0, 1)],
        routing(RoutingStrategy::Weighted),
        fast_config(),
    )
    .await?;
    let started = Instant::now();
    let mut log = Vec::new();
    for _ in 0..REQUESTS {
        let served = gw.chat_traced().await?;
        assert_eq!((served.status, served.by.as_str()), (200, "good"), "{served:?}");
        log.push(served);
    }
    let elapsed = started.elapsed();
    assert_eq!(good.calls(), REQUESTS as u64);
    // Each failing member was really tried, and failed the way it was scripted to.
    for (member, outcome) in
        [("refused", "connect_error"), ("cut", "transport_error"), ("unavailable", "server_error")]
    {
        assert!(log.iter().any(|s| s.tried(member, outcome)), "{member} never {outcome}");
    }
    // And cooled down: at most one trial per error window (2 s, then longer) after the first.
    let most = most_calls_within(elapsed, HealthPolicy::default().error_backoff_base);
    for member in [&cut, &unavailable] {
        assert!(member.calls() <= most, "{}: {} calls in {elapsed:?}", member.name, member.calls());
    }
    let refused_tries = log.iter().filter(|s| s.tried("refused", "connect_error")).count();
    assert!(refused_tries as u64 <= most, "refused: {refused_tries} tries in {elapsed:?}");

    // All three of another gateway throttled: 429 with the earliest recovery.
    let (x, y, z) = (region("x").await?, region("y").await?, region("z").await?);
    for (r, secs) in [(&x, 7), (&y, 3), (&z, 5)] {
        r.script(Fault::throttled(secs, 1));
    }
    let gw = gateway(
        &[(&x, 0, 1), (&y, 0, 1), (&z, 1, 1)],
        routing(RoutingStrategy::Weighted),
        fast_config(),
    )
    .await?;
    let response = gw.chat().await?;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "3");
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["code"], "429");
    assert!(body["error"]["message"].as_str().context("message")?.contains("throttling"));
    Ok(())
}

#[tokio::test]
async fn an_endpoint_resetting_before_its_answer_is_invisible_to_clients() -> Result<()> {
    const REQUESTS: usize = 100;
    let (reset, good) = (region("reset").await?, region("good").await?);
    reset.script(Fault::Reset { times: u32::MAX });
    let gw = gateway(
        &[(&reset, 0, 1), (&good, 0, 1)],
        routing(RoutingStrategy::Weighted),
        fast_config(),
    )
    .await?;
    let started = Instant::now();
    let mut log = Vec::new();
    for _ in 0..REQUESTS {
        let served = gw.chat_traced().await?;
        assert_eq!((served.status, served.by.as_str()), (200, "good"), "{served:?}");
        log.push(served);
    }
    let elapsed = started.elapsed();
    assert_eq!(good.calls(), REQUESTS as u64);
    assert!(log.iter().any(|s| s.tried("reset", "transport_error")), "reset was tried");
    let most = most_calls_within(elapsed, HealthPolicy::default().error_backoff_base);
    assert!(reset.calls() <= most, "{} calls in {elapsed:?}: it cools down", reset.calls());
    Ok(())
}

#[tokio::test]
async fn a_json_answer_cut_mid_body_fails_over_before_the_client_sees_a_byte() -> Result<()> {
    let (eus, swc) = (region("eus").await?, region("swc").await?);
    let gw =
        gateway(&[(&eus, 0, 1), (&swc, 1, 1)], routing(RoutingStrategy::Weighted), fast_config())
            .await?;
    eus.script(Fault::StreamCut { after_chunks: 0, times: 1 });
    let response = gw.chat().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-modelgw-endpoint"), "swc");
    let attempts = header(&response, "x-modelgw-attempts").to_owned();
    assert!(attempts.starts_with("eus:transport_error:"), "{attempts}");
    let body: Value = response.json().await?;
    assert_eq!(body["object"], "chat.completion", "one whole answer: {body}");
    assert_eq!(eus.calls(), 1);
    assert!(
        matches!(
            gw.health.view(id(&eus), Instant::now()).unavailable,
            Some(modelgw_data_plane::health::Unavailable::Error { .. })
        ),
        "the cut counts against the endpoint"
    );
    Ok(())
}

#[tokio::test]
async fn a_json_body_that_stalls_before_it_is_complete_fails_over_after_the_idle_gap() -> Result<()>
{
    let idle = Duration::from_millis(300);
    let (eus, swc) = (region("eus").await?, region("swc").await?);
    let gw = gateway(
        &[(&eus, 0, 1), (&swc, 1, 1)],
        routing(RoutingStrategy::Weighted),
        DataPlaneConfig { stream_idle_timeout: idle, ..fast_config() },
    )
    .await?;
    // Head now, body in 30 s: only the idle gap can end this attempt before then.
    eus.script(Fault::StreamStall { after_chunks: 0, ms: 30_000, times: 1 });
    let started = Instant::now();
    let served = gw.chat_traced().await?;
    assert_eq!((served.status, served.by.as_str()), (200, "swc"), "{served:?}");
    assert!(served.attempts.starts_with("eus:timeout:"), "{}", served.attempts);
    assert!(started.elapsed() >= idle, "the idle gap was waited for");
    Ok(())
}

#[tokio::test]
async fn a_json_answer_over_the_read_ahead_cap_is_committed_at_its_head() -> Result<()> {
    let (eus, swc) = (region("eus").await?, region("swc").await?);
    // Far below the mock's ~500-byte chat answer: its Content-Length alone commits it.
    let config = DataPlaneConfig { max_buffered_response_bytes: 64, ..fast_config() };
    let gw =
        gateway(&[(&eus, 0, 1), (&swc, 1, 1)], routing(RoutingStrategy::Weighted), config).await?;
    let served = gw.chat_traced().await?;
    assert_eq!((served.status, served.by.as_str()), (200, "eus"), "a whole answer passes");

    // Cut in the middle: the client already has the head, so it sees the failure (as before
    // read-ahead) and nothing is sent to another endpoint.
    eus.script(Fault::StreamCut { after_chunks: 0, times: 1 });
    let response = gw.chat().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-modelgw-endpoint"), "eus");
    assert!(response.bytes().await.is_err(), "the cut reaches the client");
    assert_eq!(swc.calls(), 0);
    Ok(())
}

#[tokio::test]
async fn priority_zero_takes_all_traffic_then_spills_over_and_returns() -> Result<()> {
    let (primary, secondary) = (region("primary").await?, region("secondary").await?);
    let backoff = Duration::from_millis(300);
    let policy = HealthPolicy { error_backoff_base: backoff, ..Default::default() };
    let gw = gateway(
        &[(&primary, 0, 1), (&secondary, 1, 1)],
        routing(RoutingStrategy::Weighted),
        DataPlaneConfig { health_policy: policy, ..fast_config() },
    )
    .await?;
    for _ in 0..20 {
        assert_eq!(gw.chat_served_by().await?, (200, "primary".to_owned()));
    }
    primary.script(Fault::Status {
        status: 503,
        retry_after: None,
        retry_after_ms: None,
        times: u32::MAX,
    });
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(gw.chat_served_by().await?, (200, "secondary".to_owned()));
    }
    let elapsed = started.elapsed();
    let failing_calls = primary.calls() - 20;
    assert!(failing_calls >= 1, "the primary was tried after it started failing");
    assert!(
        failing_calls <= most_calls_within(elapsed, backoff),
        "the failing primary is tried once per cooldown only: {failing_calls} in {elapsed:?}"
    );
    assert_eq!(secondary.calls(), 20);

    primary.mock().reset();
    until_served_by(&gw, "primary", Duration::from_secs(5)).await?;
    for _ in 0..20 {
        assert_eq!(gw.chat_served_by().await?, (200, "primary".to_owned()));
    }
    Ok(())
}

#[tokio::test]
async fn fastest_sends_most_traffic_to_the_fastest_region_and_follows_a_slowdown() -> Result<()> {
    // Deterministic up to the machine's timing, with wide margins:
    // - No random exploration (`balance::fastest_order`'s unit test covers it with a seeded
    //   RNG): with the default 5 %, a random member went first in 1 of 30 choices here, and 6 or
    //   more of 60 (P ≈ 1.5 %) broke the bound below. What is left is the choice of the lowest
    //   latency estimate, which is what this test is about.
    // - Latencies far apart. An estimate not sampled decays toward zero (5 s half-life, the
    //   default policy): `mid` (150 ms) falls below `fast`'s ~12 ms only ~18 s after its last
    //   sample, far beyond the ~3 s the first two phases take, and `slow` (1 s) never within
    //   the test. One stalled answer of `fast` moves its estimate by 0.3 × the stall; it takes
    //   a stall of over 300 ms to rank it behind `mid` (and the decay then brings it back
    //   within a second).
    let (fast, mid, slow) = (region("fast").await?, region("mid").await?, region("slow").await?);
    fast.mock().set_latency(Duration::from_millis(10));
    mid.mock().set_latency(Duration::from_millis(150));
    slow.mock().set_latency(Duration::from_millis(1000));
    let policy = HealthPolicy { exploration: 0.0, ..Default::default() };
    let gw = gateway(
        &[(&fast, 0, 1), (&mid, 0, 1), (&slow, 0, 1)],
        routing(RoutingStrategy::Fastest),
        DataPlaneConfig { health_policy: policy, ..fast_config() },
    )
    .await?;
    // Never sampled counts as fastest: the first three requests sample one region each.
    for _ in 0..50 {
        assert_eq!(gw.chat_served_by().await?.0, 200);
    }
    assert!(mid.calls() >= 1 && slow.calls() >= 1, "each slower region was sampled");
    let mut to_fast = 0;
    for _ in 0..60 {
        let (status, by) = gw.chat_served_by().await?;
        assert_eq!(status, 200);
        to_fast += u32::from(by == "fast");
    }
    assert!(to_fast * 100 > 60 * 90, "{to_fast} of 60 to the fastest region");

    // `fast` slows to 450 ms: its first slow answer lifts its estimate past `mid`'s. From then
    // on it is retried only when its estimate has decayed below `mid`'s, once every ~3 s.
    fast.mock().set_latency(Duration::from_millis(450));
    let mut served = Vec::new();
    for _ in 0..30 {
        served.push(gw.chat_served_by().await?.1);
    }
    let moved = served[10..].iter().filter(|by| *by == "mid").count();
    assert!(moved >= 15, "traffic moved to the now fastest region: {served:?}");
    Ok(())
}

#[tokio::test]
async fn a_member_out_of_quota_is_skipped_until_its_refill_and_never_meets_a_429() -> Result<()> {
    let (hot, cool) = (region("hot").await?, region("cool").await?);
    // `hot`: 3 requests of quota, one more per second; `cool`: 50 a second. Headers as
    // Azure's newer answers carry them (remaining, limit, reset).
    let quota = |per_sec: f64, window_secs: u64| Quota {
        requests_per_sec: per_sec,
        tokens_per_sec: 1e6,
        window: Duration::from_secs(window_secs),
        headers: QuotaHeaders::Full,
    };
    hot.set_quota(Some(quota(1.0, 3)));
    cool.set_quota(Some(quota(50.0, 1)));
    // `hot` has 100 times the weight: without its quota in view it would get nearly all.
    let gw = gateway(
        &[(&hot, 0, 100), (&cool, 0, 1)],
        routing(RoutingStrategy::Weighted),
        fast_config(),
    )
    .await?;
    let started = Instant::now();
    for _ in 0..12 {
        let (status, _) = gw.chat_served_by().await?;
        assert_eq!(status, 200);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (hot_counts, cool_counts) = (hot.quota_counts(), cool.quota_counts());
    assert_eq!(hot_counts.throttled, 0, "the gateway never sent what would not fit");
    // At most its 3 plus what refilled meanwhile; the rest went to `cool`.
    assert!(hot_counts.served as f64 <= 3.0 + elapsed + 1.0, "{hot_counts:?} in {elapsed:.1} s");
    assert!(cool_counts.served >= 12 - hot_counts.served, "{cool_counts:?}");
    // No hold-off: once its refill says a request fits, `hot` serves again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut back = false;
    for _ in 0..10 {
        if gw.chat_served_by().await?.1 == "hot" {
            back = true;
            break;
        }
    }
    assert!(back, "hot never came back after its refill");
    assert_eq!(hot.quota_counts().throttled, 0);
    Ok(())
}

#[tokio::test]
async fn a_refill_within_a_second_is_waited_for_and_a_later_one_answers_429_at_once() -> Result<()>
{
    let (soon, late) = (region("soon").await?, region("late").await?);
    let quota = |per_sec: f64, window: Duration| Quota {
        requests_per_sec: per_sec,
        tokens_per_sec: 1e6,
        window,
        headers: QuotaHeaders::Full,
    };
    // `soon`: 2 requests of quota, 1.5 more a second (the third fits ~670 ms after the
    // second). `late`: 1 request, one more every 4 s. Neither gateway waits for recovery.
    soon.set_quota(Some(quota(1.5, Duration::from_millis(1334))));
    late.set_quota(Some(quota(0.25, Duration::from_secs(4))));
    let not_waiting = || RoutingPolicy { wait_for_recovery: false, ..Default::default() };
    let held = gateway(&[(&soon, 0, 1)], not_waiting(), fast_config()).await?;
    let refused = gateway(&[(&late, 0, 1)], not_waiting(), fast_config()).await?;

    // The third request is out of quota by the estimate alone (no upstream said 429): held
    // for the refill the estimate foresees, then served — never a 429 for the client.
    for _ in 0..2 {
        assert_eq!(held.chat().await?.status(), 200);
    }
    let response = held.chat().await?;
    let attempts = header(&response, "x-modelgw-attempts").to_owned();
    assert_eq!(response.status(), 200, "{attempts}: {}", response.text().await?);
    assert!(
        attempts.starts_with("soon:skipped_quota_exhausted:") && attempts.contains(",soon:ok:"),
        "held, then served: {attempts}"
    );
    assert_eq!(soon.quota_counts().throttled, 0, "nothing sent that would not fit");

    // A refill 4 s away is beyond the hold: 429 at once, with the estimate's Retry-After.
    assert_eq!(refused.chat().await?.status(), 200);
    let started = Instant::now();
    let response = refused.chat().await?;
    assert_eq!(response.status(), 429);
    // Not held for the refill (that would have served it): answered well before it.
    assert!(started.elapsed() < Duration::from_secs(3), "held: {:?}", started.elapsed());
    let retry_after: u64 = header(&response, "retry-after").parse()?;
    assert!((2..=4).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(late.quota_counts().throttled, 0);
    Ok(())
}

/// The body of a streamed response as text, and whether it ended with an error.
async fn read_stream(response: reqwest::Response) -> (String, bool) {
    let mut stream = response.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => text.extend_from_slice(&bytes),
            Err(_) => return (String::from_utf8_lossy(&text).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&text).into_owned(), false)
}

#[tokio::test]
async fn a_stream_cut_after_the_first_byte_ends_with_an_sse_error_event() -> Result<()> {
    let (eus, swc) = (region("eus").await?, region("swc").await?);
    let gw =
        gateway(&[(&eus, 0, 1), (&swc, 1, 1)], routing(RoutingStrategy::Weighted), fast_config())
            .await?;
    eus.script(Fault::StreamCut { after_chunks: 3, times: 1 });
    let response = gw.request(true).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-modelgw-endpoint"), "eus");
    let (text, failed) = read_stream(response).await;
    assert!(failed, "never a clean end: {text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.len() >= 2, "frames before the cut: {text}");
    let last = events.last().context("an event")?;
    let error: Value = serde_json::from_str(last.strip_prefix("data: ").context("data frame")?)?;
    assert_eq!(error["error"]["code"], "stream_interrupted");
    for frame in &events[..events.len() - 1] {
        let data = frame.strip_prefix("data: ").context("data frame")?;
        serde_json::from_str::<Value>(data).context("only whole frames before the error")?;
    }
    assert_eq!(swc.calls(), 0, "no failover once bytes were sent");
    Ok(())
}

#[tokio::test]
async fn a_stream_cut_before_the_first_byte_fails_over() -> Result<()> {
    let (eus, swc) = (region("eus").await?, region("swc").await?);
    let gw =
        gateway(&[(&eus, 0, 1), (&swc, 1, 1)], routing(RoutingStrategy::Weighted), fast_config())
            .await?;
    eus.script(Fault::StreamCut { after_chunks: 0, times: 1 });
    let response = gw.request(true).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-modelgw-endpoint"), "swc");
    assert!(header(&response, "x-modelgw-attempts").starts_with("eus:transport_error:"));
    let (text, failed) = read_stream(response).await;
    assert!(!failed && text.trim_end().ends_with("data: [DONE]"), "{text}");
    Ok(())
}

#[tokio::test]
async fn content_filter_passes_through_and_is_sent_once() -> Result<()> {
    let (a, b) = (region("a").await?, region("b").await?);
    a.script(Fault::ContentFilter { times: u32::MAX });
    b.script(Fault::ContentFilter { times: u32::MAX });
    let gw = gateway(&[(&a, 0, 1), (&b, 0, 1)], routing(RoutingStrategy::Fastest), fast_config())
        .await?;
    let response = gw.chat().await?;
    assert_eq!(response.status(), 400);
    assert_eq!(response.bytes().await?, wire::CONTENT_FILTER.as_bytes());
    assert_eq!(a.calls() + b.calls(), 1, "a client error is never retried");
    Ok(())
}

#[tokio::test]
async fn a_deadline_bounds_the_whole_request() -> Result<()> {
    let (eus, swc) = (region("eus").await?, region("swc").await?);
    // Both answer only after 10 s, past even the 5 s first-byte timeout (which would end in a
    // 503 after trying both): a 504 can only come from the request's deadline.
    eus.script(Fault::Latency { ms: 10_000, times: u32::MAX });
    swc.script(Fault::Latency { ms: 10_000, times: u32::MAX });
    let deadline = Duration::from_millis(1000);
    let policy = RoutingPolicy {
        request_timeout_ms: Some(deadline.as_millis() as u32),
        ..Default::default()
    };
    let gw = gateway(&[(&eus, 0, 1), (&swc, 1, 1)], policy, fast_config()).await?;
    // Lower bounds prove the deadline was waited for; upper bounds only have to tell it
    // from the 5 s first-byte timeout and the 10 s answers, with room for a loaded machine.
    let waited = deadline - Duration::from_millis(50);

    let started = Instant::now();
    let response = gw.chat().await?;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(elapsed >= waited && elapsed < deadline * 3, "{elapsed:?}");
    assert!(header(&response, "x-modelgw-attempts").starts_with("eus:deadline:"));

    // The client may shorten the deadline (150 ms: well before the gateway's 1 s)…
    let started = Instant::now();
    let response = gw.request(false).header("x-modelgw-timeout-ms", "150").send().await?;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(elapsed >= Duration::from_millis(100) && elapsed < waited, "{elapsed:?}");
    // …never extend it (60 s would let the 10 s answer through).
    let started = Instant::now();
    let response = gw.request(false).header("x-modelgw-timeout-ms", "60000").send().await?;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(elapsed >= waited && elapsed < deadline * 3, "{elapsed:?}");
    assert!(!eus.mock().requests().iter().any(|r| r.headers.contains_key("x-modelgw-timeout-ms")));

    // Running out of the client's time is not the endpoint's fault: it stays healthy.
    eus.mock().reset();
    let response = gw.chat().await?;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "x-modelgw-attempts").starts_with("eus:ok:"));
    Ok(())
}

#[tokio::test]
async fn wait_for_recovery_waits_when_recovery_is_within_the_deadline() -> Result<()> {
    let eus = region("eus").await?;
    // A deadline far beyond the 800 ms recovery, so a loaded machine cannot run into it.
    let waiting = RoutingPolicy {
        wait_for_recovery: true,
        request_timeout_ms: Some(5000),
        ..Default::default()
    };
    let gw = gateway(&[(&eus, 0, 1)], waiting, fast_config()).await?;
    eus.script(Fault::Status {
        status: 429,
        retry_after: None,
        retry_after_ms: Some(800),
        times: 1,
    });
    let started = Instant::now();
    let response = gw.chat().await?;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(elapsed >= Duration::from_millis(750) && elapsed < Duration::from_millis(2400));
    let attempts = header(&response, "x-modelgw-attempts");
    assert!(attempts.starts_with("eus:throttled:") && attempts.contains(",eus:ok:"), "{attempts}");

    // A recovery beyond the deadline is not waited for (waiting would take the whole 5 s).
    eus.script(Fault::throttled(10, 1));
    let started = Instant::now();
    let response = gw.chat().await?;
    assert_eq!(response.status(), 429);
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
    Ok(())
}

#[tokio::test]
async fn a_fleet_throttle_window_is_honoured_locally() -> Result<()> {
    let (eus, swc) = (region("eus").await?, region("swc").await?);
    let gw =
        gateway(&[(&eus, 0, 1), (&swc, 1, 1)], routing(RoutingStrategy::Weighted), fast_config())
            .await?;
    assert_eq!(gw.chat_served_by().await?, (200, "eus".to_owned()));

    let window = Duration::from_millis(1500);
    // Read before the wall clock, less a margin for the two clocks' readings: no later than
    // the window's end as the data plane converts it.
    let window_end = Instant::now() + window - Duration::from_millis(50);
    let fleet = FleetHealth {
        endpoints: vec![EndpointHealth {
            endpoint_id: id(&eus),
            state: EndpointState::Throttling,
            until: Some(std::time::SystemTime::now() + window),
            reason: Some("429 seen by another data plane".to_owned()),
        }],
        resets: vec![],
        skipped: vec![],
    };
    assert_eq!(apply_fleet_health(&gw.health, &fleet), 1);
    // Every request answered inside the window went elsewhere, however few a loaded machine
    // manages; the first one always is (it is sent right away).
    // Paced: the mock region's headers advertise 1,000 requests a minute, and a tight loop
    // on a fast machine would spend them (quota-aware routing then rightly refuses).
    let mut inside = 0;
    loop {
        let served = gw.chat_traced().await?;
        if served.answered >= window_end {
            break;
        }
        inside += 1;
        assert_eq!((served.status, served.by.as_str()), (200, "swc"), "{served:?}");
        assert!(served.attempts.starts_with("eus:skipped_fleet_throttling:0,"), "{served:?}");
        assert_eq!(eus.calls(), 1, "nothing sent into the fleet's throttle window");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(inside >= 1, "no request was answered inside the window");
    until_served_by(&gw, "eus", Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_sse_error_event_after_the_idle_gap_or_the_deadline()
-> Result<()> {
    let (eus, swc) = (region("eus").await?, region("swc").await?);
    let gw = gateway(
        &[(&eus, 0, 1), (&swc, 1, 1)],
        routing(RoutingStrategy::Weighted),
        DataPlaneConfig { stream_idle_timeout: Duration::from_millis(300), ..fast_config() },
    )
    .await?;
    // The stall outlasts any load-induced slowness by far: only the idle gap ends it early.
    eus.script(Fault::StreamStall { after_chunks: 2, ms: 30_000, times: 1 });
    let started = Instant::now();
    let response = gw.request(true).send().await?;
    assert_eq!(header(&response, "x-modelgw-endpoint"), "eus");
    let (text, failed) = read_stream(response).await;
    let elapsed = started.elapsed();
    assert!(failed && !text.contains("[DONE]"), "{text}");
    assert!(text.contains(r#""code":"stream_interrupted""#), "{text}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(10),
        "ended by the idle gap: {elapsed:?}"
    );
    assert!(
        matches!(
            gw.health.view(id(&eus), Instant::now()).unavailable,
            Some(modelgw_data_plane::health::Unavailable::Error { .. })
        ),
        "a stalled stream counts against the endpoint"
    );

    // The request deadline also bounds the body (and is not held against the endpoint).
    let (a, b) = (region("a").await?, region("b").await?);
    let policy = RoutingPolicy { request_timeout_ms: Some(700), ..Default::default() };
    let gw = gateway(&[(&a, 0, 1), (&b, 1, 1)], policy, fast_config()).await?;
    a.script(Fault::StreamStall { after_chunks: 2, ms: 30_000, times: 1 });
    let started = Instant::now();
    let response = gw.request(true).send().await?;
    let (text, failed) = read_stream(response).await;
    let elapsed = started.elapsed();
    assert!(failed && text.contains("stream_interrupted"), "{text}");
    assert!(
        elapsed >= Duration::from_millis(650) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    assert_eq!(gw.health.view(id(&a), Instant::now()).unavailable, None);
    Ok(())
}
