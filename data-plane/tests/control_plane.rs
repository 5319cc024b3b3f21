//! The data plane's control-plane client against a scripted in-test `ConfigDiscovery` server
//! over TLS: Hello, ACK/NACK, heartbeats, health reports, statistics reports (kept across a
//! reconnect), reconnect after the stream ends, the join token sent, and a control plane it
//! does not trust refused while it keeps serving; budget leases enforced and usage reports
//! (cumulative per key and window) resent whole after a reconnect; quota reports and the
//! fleet's quota share.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cfg::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use cfg::data_plane_message::Kind;
use modelgw_data_plane::{ControlPlaneTrust, DataPlane, DataPlaneConfig, TokenSource};
use modelgw_mock_openai::pki::{LOOPBACK_NAMES, TestCa, TestPki};
use modelgw_mock_openai::{Fault, MockAzure, MockConfig};
use modelgw_model::wire::cfg;
use modelgw_model::{EndpointId, GatewayId, GatewayKeyId, gateway_key_hash};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const CLIENT_KEY: &str = "mgw-test-client-key-0002";
/// Upper bound for anything the data plane should do promptly.
const DEADLINE: Duration = Duration::from_secs(10);

/// The join token the data planes of these tests present.
const JOIN_TOKEN: &str = "mgwdp_test-token-0123456789";

/// One `Stream` call as the fake control plane sees it.
struct Session {
    /// The `authorization` metadata it came with.
    authorization: Option<String>,
    inbound: Streaming<cfg::DataPlaneMessage>,
    outbound: mpsc::Sender<Result<cfg::ControlPlaneMessage, Status>>,
}

impl Session {
    /// The next message for which `pick` returns something, skipping others (heartbeats…).
    async fn expect<T>(&mut self, mut pick: impl FnMut(Kind) -> Option<T>) -> Result<T> {
        let wait = async {
            loop {
                let message = self.inbound.message().await?.context("stream ended")?;
                if let Some(found) = message.kind.and_then(&mut pick) {
                    return Ok(found);
                }
            }
        };
        tokio::time::timeout(DEADLINE, wait).await.context("deadline")?
    }

    async fn send(&self, snapshot: cfg::Snapshot) -> Result<()> {
        let message = cfg::ControlPlaneMessage {
            kind: Some(cfg::control_plane_message::Kind::Snapshot(snapshot)),
        };
        self.outbound.send(Ok(message)).await.map_err(|_| anyhow::anyhow!("session closed"))
    }
}

struct FakeControlPlane {
    sessions: mpsc::UnboundedSender<Session>,
}

#[tonic::async_trait]
impl ConfigDiscovery for FakeControlPlane {
    type StreamStream = ReceiverStream<Result<cfg::ControlPlaneMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<cfg::DataPlaneMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let (outbound, rx) = mpsc::channel(16);
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let _ =
            self.sessions.send(Session { authorization, inbound: request.into_inner(), outbound });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A fake control plane over TLS with a certificate from `ca`, on `listener`.
fn serve_fake(
    ca: &TestCa,
    listener: tokio::net::TcpListener,
) -> Result<(mpsc::UnboundedReceiver<Session>, tokio::task::JoinHandle<()>)> {
    let cert = ca.server_cert(&LOOPBACK_NAMES)?;
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    let (sessions, rx) = mpsc::unbounded_channel();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)?
        .add_service(ConfigDiscoveryServer::new(FakeControlPlane { sessions }))
        .serve_with_incoming(TcpListenerStream::new(listener));
    let task = tokio::spawn(async move {
        let _ = server.await;
    });
    Ok((rx, task))
}

/// A fake control plane the data plane trusts: its URL, its sessions, and the data plane's
/// trust settings (the test CA, a join token).
async fn fake_control_plane(
    dir: &std::path::Path,
) -> Result<(String, mpsc::UnboundedReceiver<Session>, ControlPlaneTrust)> {
    let pki = TestPki::write(dir)?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let url = format!("https://{}", listener.local_addr()?);
    let (rx, _task) = serve_fake(&pki.ca, listener)?;
    Ok((url, rx, trust(&pki)))
}

/// The mock region every test here routes to: East US, deployment `gpt-4o-eus`.
async fn east_us(upstream_key: &str) -> Result<MockAzure> {
    let config = MockConfig {
        region: "East US".into(),
        api_key: upstream_key.into(),
        deployments: vec!["gpt-4o-eus".into()],
        model: "gpt-4o-mini-2024-07-18".into(),
    };
    Ok(MockAzure::start(SocketAddr::from(([127, 0, 0, 1], 0)), config).await?)
}

fn trust(pki: &TestPki) -> ControlPlaneTrust {
    ControlPlaneTrust {
        ca_file: Some(pki.ca_file.clone()),
        token: Some(TokenSource::Value(modelgw_model::Secret::new(JOIN_TOKEN))),
        ..Default::default()
    }
}

async fn next_session(sessions: &mut mpsc::UnboundedReceiver<Session>) -> Result<Session> {
    tokio::time::timeout(DEADLINE, sessions.recv())
        .await
        .context("deadline")?
        .context("server gone")
}

fn wire_snapshot(
    version: u64,
    endpoint_id: EndpointId,
    base_url: &str,
    key: &str,
) -> cfg::Snapshot {
    cfg::Snapshot {
        version,
        endpoints: vec![cfg::Endpoint {
            id: endpoint_id.to_string(),
            name: "eus".into(),
            platform: cfg::Platform::AzureOpenai as i32,
            base_url: base_url.to_owned(),
            deployment: "gpt-4o-eus".into(),
            model_name: "gpt-4o-mini".into(),
            model_version: "2024-07-18".into(),
            region: "East US".into(),
            credential: Some(cfg::Credential {
                kind: Some(cfg::credential::Kind::ApiKey(key.to_owned())),
            }),
        }],
        gateways: vec![cfg::Gateway {
            id: GatewayId::new().to_string(),
            name: "chat".into(),
            members: vec![cfg::GatewayMember {
                endpoint_id: endpoint_id.to_string(),
                enabled: true,
                priority: 0,
                weight: 1,
            }],
            keys: vec![cfg::GatewayKey {
                id: GatewayKeyId::new().to_string(),
                sha256: gateway_key_hash(CLIENT_KEY).to_vec(),
                ..Default::default()
            }],
            pin_key: vec![5; 32],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn snapshots_are_acked_or_nacked_health_is_reported_and_the_client_reconnects() -> Result<()>
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream_key = "upstream-key-eus-0123456789";
    let mock = east_us(upstream_key).await?;
    let dir = tempfile::tempdir()?;
    let (url, mut sessions, trust) = fake_control_plane(dir.path()).await?;
    let dp = DataPlane::bind(DataPlaneConfig {
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        control_plane_url: url,
        control_plane_trust: trust,
        node_id: "dp-test-1".into(),
        heartbeat_interval: Duration::from_millis(100),
        allow_loopback_upstreams: true,
        ..Default::default()
    })
    .await?;
    let base = format!("http://{}", dp.local_addr());
    let store = dp.snapshot_store();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(dp.run(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().no_proxy().build()?;

    // Hello first, with nothing applied yet, and the join token as a bearer credential.
    let mut session = next_session(&mut sessions).await?;
    assert_eq!(session.authorization.as_deref(), Some(&*format!("Bearer {JOIN_TOKEN}")));
    let hello = session.expect(|k| if let Kind::Hello(h) = k { Some(h) } else { None }).await?;
    assert_eq!(hello.node_id, "dp-test-1");
    assert_eq!(hello.applied_version, 0);
    assert!(!hello.build_version.is_empty());
    assert_eq!(http.get(format!("{base}/readyz")).send().await?.status(), 503);

    // A valid snapshot is applied and acknowledged.
    let endpoint_id = EndpointId::new();
    session.send(wire_snapshot(1, endpoint_id, &mock.base_url(), upstream_key)).await?;
    let ack = session.expect(|k| if let Kind::Ack(a) = k { Some(a) } else { None }).await?;
    assert_eq!(ack.version, 1);
    assert_eq!(store.version().0, 1);
    assert_eq!(http.get(format!("{base}/readyz")).send().await?.status(), 200);

    // Heartbeats carry the applied version.
    let beat = session.expect(|k| if let Kind::Heartbeat(h) = k { Some(h) } else { None }).await?;
    assert_eq!(beat.applied_version, 1);

    // An invalid snapshot is rejected with a reason naming the field; version 1 keeps serving.
    let mut bad = wire_snapshot(2, endpoint_id, &mock.base_url(), upstream_key);
    bad.endpoints[0].base_url = "ftp://nowhere".into();
    session.send(bad).await?;
    let nack = session.expect(|k| if let Kind::Nack(n) = k { Some(n) } else { None }).await?;
    assert_eq!(nack.version, 2);
    assert!(nack.reason.starts_with("endpoints[0].base_url"), "{}", nack.reason);
    assert!(!nack.reason.contains(upstream_key));
    assert_eq!(store.version().0, 1);

    // A throttled endpoint is reported.
    mock.script("gpt-4o-eus", Fault::throttled(7, 1));
    let throttled = http
        .post(format!("{base}/openai/deployments/auto/chat/completions?api-version=2024-10-21"))
        .header("api-key", CLIENT_KEY)
        .header("content-type", "application/json")
        .body(r#"{"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await?;
    assert_eq!(throttled.status(), 429);
    let report = session.expect(|k| if let Kind::Health(r) = k { Some(r) } else { None }).await?;
    let state = report
        .endpoints
        .iter()
        .find(|e| e.endpoint_id == endpoint_id.to_string())
        .context("endpoint reported")?;
    assert_eq!(state.state, cfg::EndpointState::Throttling as i32);
    assert!(state.until_unix_ms > 0);

    // The control plane ends the stream: the data plane reconnects and says what it serves.
    drop(session);
    let mut session = next_session(&mut sessions).await?;
    let hello = session.expect(|k| if let Kind::Hello(h) = k { Some(h) } else { None }).await?;
    assert_eq!(hello.applied_version, 1);
    if store.version().0 != 1 {
        bail!("the snapshot must survive the reconnect");
    }
    Ok(())
}

/// One chat through the data plane at `base`: the answer's status and `usage` tokens.
async fn chat(http: &reqwest::Client, base: &str, stream: bool) -> Result<(u16, u64, u64)> {
    let body = if stream {
        r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#
    } else {
        r#"{"messages":[{"role":"user","content":"hi"}]}"#
    };
    let response = http
        .post(format!("{base}/openai/deployments/auto/chat/completions?api-version=2024-10-21"))
        .header("api-key", CLIENT_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    // The usage object: the body's, or the final SSE chunk's.
    let usage = text
        .lines()
        .map(|l| l.trim_start_matches("data: "))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("usage").filter(|u| u.is_object()).cloned())
        .context("an answer with usage")?;
    let tokens = |k: &str| usage[k].as_u64().unwrap_or(0);
    Ok((status, tokens("prompt_tokens"), tokens("completion_tokens")))
}

/// Sums statistics reports of `session` until `requests` answers were reported; returns
/// (requests, prompt tokens, completion tokens, time-to-first-token samples).
async fn reported_until(session: &mut Session, requests: u64) -> Result<(u64, u64, u64, u64)> {
    let mut sum = (0, 0, 0, 0);
    while sum.0 < requests {
        let report =
            session.expect(|k| if let Kind::Stats(r) = k { Some(r) } else { None }).await?;
        for r in report.routes {
            sum.0 += r.requests;
            sum.1 += r.prompt_tokens;
            sum.2 += r.completion_tokens;
            sum.3 += r.ttft_buckets.iter().sum::<u64>();
        }
    }
    Ok(sum)
}

#[tokio::test]
async fn statistics_are_reported_every_interval_and_survive_a_reconnect() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream_key = "upstream-key-eus-0123456789";
    let mock = east_us(upstream_key).await?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::write(dir.path())?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let (mut sessions, server) = serve_fake(&pki.ca, listener)?;
    let dp = DataPlane::bind(DataPlaneConfig {
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        control_plane_url: format!("https://{addr}"),
        control_plane_trust: trust(&pki),
        node_id: "dp-stats".into(),
        stats_interval: Duration::from_millis(100),
        allow_loopback_upstreams: true,
        ..Default::default()
    })
    .await?;
    let base = format!("http://{}", dp.local_addr());
    let metrics = dp.metrics();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(dp.run(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut session = next_session(&mut sessions).await?;
    session.send(wire_snapshot(1, EndpointId::new(), &mock.base_url(), upstream_key)).await?;
    session.expect(|k| if let Kind::Ack(a) = k { Some(a) } else { None }).await?;

    // Three answers, one streamed, reported within a few intervals.
    let mut sent = (0, 0, 0);
    for stream in [false, true, false] {
        let (status, prompt, completion) = chat(&http, &base, stream).await?;
        assert_eq!(status, 200);
        sent = (sent.0 + 1, sent.1 + prompt, sent.2 + completion);
    }
    let reported = reported_until(&mut session, 3).await?;
    assert_eq!(reported, (sent.0, sent.1, sent.2, 1), "one stream, one time to first token");

    // The control plane goes away; two answers are served while the data plane is cut off.
    drop(session);
    server.abort();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while metrics.control_plane_connected() {
        assert!(tokio::time::Instant::now() < deadline, "the data plane never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut meanwhile = (0, 0, 0);
    for stream in [true, false] {
        let (status, prompt, completion) = chat(&http, &base, stream).await?;
        assert_eq!(status, 200);
        meanwhile = (meanwhile.0 + 1, meanwhile.1 + prompt, meanwhile.2 + completion);
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // several intervals pass, unsent

    // It comes back on the same address: the next session carries exactly what was missed.
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let (mut sessions, _server) = serve_fake(&pki.ca, listener)?;
    let mut session = next_session(&mut sessions).await?;
    let reported = reported_until(&mut session, 2).await?;
    assert_eq!(reported, (meanwhile.0, meanwhile.1, meanwhile.2, 1));
    // Nothing is reported twice: no traffic, no report.
    let more = tokio::time::timeout(
        Duration::from_millis(500),
        session.expect(|k| if let Kind::Stats(r) = k { Some(r) } else { None }),
    )
    .await;
    assert!(more.is_err(), "an empty interval sends nothing: {more:?}");
    Ok(())
}

#[tokio::test]
async fn a_429_is_pushed_at_once_and_a_fleet_window_from_the_stream_is_honoured_until_it_expires()
-> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream_key = "upstream-key-eus-0123456789";
    let mock = east_us(upstream_key).await?;
    let dir = tempfile::tempdir()?;
    let (url, mut sessions, trust) = fake_control_plane(dir.path()).await?;
    let dp = DataPlane::bind(DataPlaneConfig {
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        control_plane_url: url,
        control_plane_trust: trust,
        node_id: "dp-test-2".into(),
        // No heartbeat during the test: a health report can only come from the push.
        heartbeat_interval: Duration::from_secs(3600),
        allow_loopback_upstreams: true,
        ..Default::default()
    })
    .await?;
    let base = format!("http://{}", dp.local_addr());
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(dp.run(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().no_proxy().build()?;
    let chat = || {
        http.post(format!("{base}/openai/deployments/auto/chat/completions?api-version=2024-10-21"))
            .header("api-key", CLIENT_KEY)
            .header("content-type", "application/json")
            .body(r#"{"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
    };
    let attempts = |response: &reqwest::Response| {
        let value = response.headers().get("x-modelgw-attempts");
        value.and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    };
    let mut session = next_session(&mut sessions).await?;
    let endpoint_id = EndpointId::new();
    session.send(wire_snapshot(1, endpoint_id, &mock.base_url(), upstream_key)).await?;
    session.expect(|k| if let Kind::Ack(a) = k { Some(a) } else { None }).await?;

    // A 429 is pushed to the control plane at once: with no heartbeat (an hour away), nothing
    // else would carry it. README's fleet-wide budget is 1 s, which a loopback message keeps by
    // far on a quiet machine; 3 s is a margin a loaded 2-core machine keeps (one run in a few
    // hundred took over 1 s while another engineer's test suite ran), still well before the
    // 5 s default heartbeat that a batching implementation would wait for.
    mock.script(
        "gpt-4o-eus",
        Fault::Status { status: 429, retry_after: None, retry_after_ms: Some(300), times: 1 },
    );
    assert_eq!(chat().await?.status(), 429);
    let answered = std::time::Instant::now();
    let report = session.expect(|k| if let Kind::Health(r) = k { Some(r) } else { None }).await?;
    let latency = answered.elapsed();
    assert!(latency < Duration::from_secs(3), "reported after {latency:?}");
    assert_eq!(report.endpoints[0].state, cfg::EndpointState::Throttling as i32);

    // A throttle seen elsewhere in the fleet is honoured here while it lasts…
    let window = Duration::from_secs(3);
    // Read before the wall clock, less a margin for the two clocks' readings: no later than
    // the window's end as the data plane converts it.
    let window_end = std::time::Instant::now() + window - Duration::from_millis(50);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let until_unix_ms = i64::try_from(now_ms + window.as_millis())?;
    let fleet = cfg::FleetHealth {
        endpoints: vec![cfg::EndpointHealth {
            endpoint_id: endpoint_id.to_string(),
            state: cfg::EndpointState::Throttling as i32,
            until_unix_ms,
            reason: "429 on dp-other".into(),
        }],
        resets: vec![],
    };
    let message = cfg::ControlPlaneMessage {
        kind: Some(cfg::control_plane_message::Kind::FleetHealth(fleet)),
    };
    session.outbound.send(Ok(message)).await.map_err(|_| anyhow::anyhow!("session closed"))?;
    let refused = tokio::time::timeout(DEADLINE, async {
        loop {
            let response = chat().await?;
            if response.status() == 429 && attempts(&response) == "eus:skipped_fleet_throttling:0" {
                return anyhow::Ok(response);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the fleet window was never applied")??;
    let retry: u64 = refused.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=3).contains(&retry), "{retry}");
    // Every request answered inside the window is refused without a call, however few a
    // loaded machine manages.
    let calls = mock.calls("gpt-4o-eus");
    loop {
        let response = chat().await?;
        if std::time::Instant::now() >= window_end {
            break;
        }
        assert_eq!(response.status(), 429);
        assert_eq!(attempts(&response), "eus:skipped_fleet_throttling:0");
        assert_eq!(mock.calls("gpt-4o-eus"), calls, "nothing sent into the fleet's window");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // …and expires: once the wall clock is past it, the endpoint serves again.
    let past = u128::try_from(until_unix_ms)? + 100;
    loop {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
        if now >= past {
            break;
        }
        tokio::time::sleep(Duration::from_millis(u64::try_from(past - now)?)).await;
    }
    let response = chat().await?;
    assert_eq!(response.status(), 200, "{}", attempts(&response));
    assert!(attempts(&response).starts_with("eus:ok:"), "{}", attempts(&response));
    Ok(())
}

#[tokio::test]
async fn a_control_plane_the_data_plane_does_not_trust_is_refused_and_the_last_snapshot_serves()
-> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream_key = "upstream-key-eus-0123456789";
    let mock = east_us(upstream_key).await?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::write(dir.path())?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let (mut sessions, trusted) = serve_fake(&pki.ca, listener)?;
    let dp = DataPlane::bind(DataPlaneConfig {
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        control_plane_url: format!("https://{addr}"),
        control_plane_trust: trust(&pki),
        node_id: "dp-test-3".into(),
        heartbeat_interval: Duration::from_secs(3600),
        allow_loopback_upstreams: true,
        ..Default::default()
    })
    .await?;
    let base = format!("http://{}", dp.local_addr());
    let store = dp.snapshot_store();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(dp.run(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().no_proxy().build()?;
    let chat = || {
        http.post(format!("{base}/openai/deployments/auto/chat/completions?api-version=2024-10-21"))
            .header("api-key", CLIENT_KEY)
            .header("content-type", "application/json")
            .body(r#"{"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
    };

    // The trusted control plane's snapshot is applied and serves.
    let session = next_session(&mut sessions).await?;
    let mut session = session;
    session.send(wire_snapshot(1, EndpointId::new(), &mock.base_url(), upstream_key)).await?;
    session.expect(|k| if let Kind::Ack(a) = k { Some(a) } else { None }).await?;
    assert_eq!(chat().await?.status(), 200);

    // The control plane goes away and something else answers on its address with a
    // certificate from another CA, ready to push a snapshot of its own.
    trusted.abort();
    drop(session);
    drop(sessions);
    let rogue_ca = TestCa::new("rogue CA")?;
    let listener = loop {
        // The trusted server's socket may take a moment to close.
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let (mut rogue_sessions, _rogue) = serve_fake(&rogue_ca, listener)?;
    // Several reconnect attempts (backoff starts at 100 ms, capped at 5 s) all refuse it.
    let reached = tokio::time::timeout(Duration::from_secs(3), rogue_sessions.recv()).await;
    assert!(
        reached.is_err(),
        "the data plane opened a stream to a control plane it does not trust"
    );
    assert_eq!(store.version().0, 1, "nothing applied from it");
    let response = chat().await?;
    assert_eq!(response.status(), 200, "the last snapshot keeps serving");
    assert_eq!(mock.calls("gpt-4o-eus"), 2);
    Ok(())
}

/// The latest usage entry for (`key_id`, hour) in the usage reports of `session` that
/// `accept` takes (entries are cumulative: the latest is what counts).
async fn hour_usage_until(
    session: &mut Session,
    key_id: &str,
    accept: impl Fn(&cfg::KeyUsage) -> bool,
) -> Result<cfg::KeyUsage> {
    loop {
        let report =
            session.expect(|k| if let Kind::Usage(r) = k { Some(r) } else { None }).await?;
        let found = report
            .keys
            .into_iter()
            .find(|e| e.key_id == key_id && e.window == cfg::UsageWindow::Hour as i32 && accept(e));
        if let Some(entry) = found {
            return Ok(entry);
        }
    }
}

fn requests(entry: &cfg::KeyUsage) -> (u64, u64) {
    let charged = entry.charged.as_ref().and_then(|u| u.requests).unwrap_or(0);
    let reserved = entry.reserved.as_ref().and_then(|u| u.requests).unwrap_or(0);
    (charged, reserved)
}

#[tokio::test]
async fn leases_from_the_stream_are_enforced_and_usage_reports_are_cumulative_across_a_reconnect()
-> Result<()> {
    use modelgw_model::keys::{LeaseGrant, Leases, Usage, Window, WindowLimits};
    const FREE_KEY: &str = "mgw-test-free-key-0002";
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream_key = "upstream-key-eus-0123456789";
    let mock = east_us(upstream_key).await?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::write(dir.path())?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let (mut sessions, server) = serve_fake(&pki.ca, listener)?;
    let dp = DataPlane::bind(DataPlaneConfig {
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        control_plane_url: format!("https://{addr}"),
        control_plane_trust: trust(&pki),
        node_id: "dp-usage".into(),
        // Only the reports a new stream starts with and those a low lease asks for.
        usage_interval: Duration::from_secs(3600),
        allow_loopback_upstreams: true,
        ..Default::default()
    })
    .await?;
    let base = format!("http://{}", dp.local_addr());
    let metrics = dp.metrics();
    let limits = dp.key_limits();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(dp.run(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().no_proxy().build()?;
    let chat = |key: &'static str| {
        http.post(format!("{base}/openai/deployments/auto/chat/completions?api-version=2024-10-21"))
            .header("api-key", key)
            .header("content-type", "application/json")
            .body(r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#)
            .send()
    };
    // All of it within one hour.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    let left = Window::Hour.start_of(now_ms()) + Window::Hour.len_ms() - now_ms();
    if left < 20_000 {
        tokio::time::sleep(Duration::from_millis(left as u64 + 50)).await;
    }

    let mut session = next_session(&mut sessions).await?;
    let hello = session.expect(|k| if let Kind::Hello(h) = k { Some(h) } else { None }).await?;
    assert_ne!(hello.instance, 0, "an instance id for leases and usage");
    let mut snapshot = wire_snapshot(1, EndpointId::new(), &mock.base_url(), upstream_key);
    let keys = &mut snapshot.gateways[0].keys;
    keys[0].limits = Some(cfg::KeyLimits {
        per_hour: Some(cfg::Usage { requests: Some(10), ..Default::default() }),
        ..Default::default()
    });
    keys.push(cfg::GatewayKey {
        id: GatewayKeyId::new().to_string(),
        sha256: gateway_key_hash(FREE_KEY).to_vec(),
        ..Default::default()
    });
    let (key_id, free_id) = (keys[0].id.clone(), keys[1].id.clone());
    session.send(snapshot).await?;
    session.expect(|k| if let Kind::Ack(a) = k { Some(a) } else { None }).await?;

    // 4 of the key's 10 requests this hour are lent to this instance.
    let granted = WindowLimits { requests: Some(4), ..WindowLimits::default() };
    let leases = Leases {
        grants: vec![LeaseGrant {
            key_id: key_id.parse()?,
            window: Window::Hour,
            window_start_unix_ms: Window::Hour.start_of(now_ms()),
            granted,
            fleet_used: Usage::default(),
            own_used: Usage::default(),
            ceiling: WindowLimits::default(),
        }],
        valid_for: Duration::from_secs(60),
        skipped: Vec::new(),
    };
    let message = cfg::ControlPlaneMessage {
        kind: Some(cfg::control_plane_message::Kind::Leases(cfg::Leases::from(&leases))),
    };
    session.outbound.send(Ok(message)).await.map_err(|_| anyhow::anyhow!("session closed"))?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !limits.lease_valid() {
        assert!(tokio::time::Instant::now() < deadline, "the lease was never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Past half of the grant, a report goes out early (the interval is an hour).
    for _ in 0..3 {
        assert_eq!(chat(CLIENT_KEY).await?.status(), 200);
    }
    assert_eq!(chat(FREE_KEY).await?.status(), 200);
    let entry = hour_usage_until(&mut session, &key_id, |e| requests(e) == (3, 0)).await?;
    assert_eq!(entry.window_start_unix_ms, Window::Hour.start_of(now_ms()));

    // The control plane goes away; the lease still holds for one more request, then this
    // instance's share is spent while the fleet has room: 429, retry in a second.
    drop(session);
    server.abort();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while metrics.control_plane_connected() {
        assert!(tokio::time::Instant::now() < deadline, "the data plane never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(chat(CLIENT_KEY).await?.status(), 200);
    let refused = chat(CLIENT_KEY).await?;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");

    // It comes back: the first reports carry the totals (4, not the 1 since the last report),
    // and the unlimited key's usage too; the instance is the same.
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let (mut sessions, _server) = serve_fake(&pki.ca, listener)?;
    let mut session = next_session(&mut sessions).await?;
    let again = session.expect(|k| if let Kind::Hello(h) = k { Some(h) } else { None }).await?;
    assert_eq!(again.instance, hello.instance);
    let report = session.expect(|k| if let Kind::Usage(r) = k { Some(r) } else { None }).await?;
    let hour = |id: &str| {
        report
            .keys
            .iter()
            .find(|e| e.key_id == id && e.window == cfg::UsageWindow::Hour as i32)
            .map(requests)
    };
    assert_eq!(hour(&key_id), Some((4, 0)), "cumulative: resent whole, never as a delta");
    assert_eq!(hour(&free_id), Some((1, 0)), "every key's usage is reported");
    Ok(())
}

/// The gauge `modelgw_endpoint_quota_share` of endpoint `eus` in a scrape of `metrics`.
async fn quota_share(http: &reqwest::Client, metrics: SocketAddr) -> Result<f64> {
    let text = http.get(format!("http://{metrics}/metrics")).send().await?.text().await?;
    let line = text
        .lines()
        .find(|l| l.starts_with("modelgw_endpoint_quota_share{") && l.contains("endpoint=\"eus\""))
        .context("no share gauge for eus")?;
    Ok(line.rsplit(' ').next().context("a value")?.parse()?)
}

#[tokio::test]
async fn what_was_sent_is_reported_each_second_and_the_fleet_quota_sets_the_share() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream_key = "upstream-key-eus-0123456789";
    let mock = east_us(upstream_key).await?;
    let dir = tempfile::tempdir()?;
    let (url, mut sessions, trust) = fake_control_plane(dir.path()).await?;
    let dp = DataPlane::bind(DataPlaneConfig {
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        control_plane_url: url,
        control_plane_trust: trust,
        node_id: "dp-test-quota".into(),
        allow_loopback_upstreams: true,
        ..Default::default()
    })
    .await?;
    let base = format!("http://{}", dp.local_addr());
    let metrics = dp.metrics_addr().context("metrics on")?;
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(dp.run(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut session = next_session(&mut sessions).await?;
    let endpoint_id = EndpointId::new();
    session.send(wire_snapshot(1, endpoint_id, &mock.base_url(), upstream_key)).await?;
    session.expect(|k| if let Kind::Ack(a) = k { Some(a) } else { None }).await?;

    // Steady traffic while the test runs, so the data plane's own rate is never zero.
    let sender = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            loop {
                let _ = http
                    .post(format!(
                        "{base}/openai/deployments/auto/chat/completions?api-version=2024-10-21"
                    ))
                    .header("api-key", CLIENT_KEY)
                    .header("content-type", "application/json")
                    .body(r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":100}"#)
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    // Reports come about once a second, each with what was sent over the last (up to five)
    // intervals: a request's tokens are its body / 4 plus its max_tokens.
    let first = session.expect(|k| if let Kind::Quota(r) = k { Some(r) } else { None }).await?;
    let second = session.expect(|k| if let Kind::Quota(r) = k { Some(r) } else { None }).await?;
    assert!((700..=1500).contains(&first.interval_ms), "{}", first.interval_ms);
    assert!((1400..=3000).contains(&second.interval_ms), "{}", second.interval_ms);
    assert!(second.endpoints[0].requests > first.endpoints[0].requests, "the second spans both");
    for report in [&first, &second] {
        assert_eq!(report.endpoints.len(), 1);
        let spend = &report.endpoints[0];
        assert_eq!(spend.endpoint_id, endpoint_id.to_string());
        assert!(spend.requests > 0);
        assert_eq!(spend.tokens, spend.requests * (100 + 16), "{spend:?}");
    }
    let reported = second.endpoints[0].requests;
    assert!(mock.calls("gpt-4o-eus") as u64 >= reported, "reports count what was sent");
    assert_eq!(quota_share(&http, metrics).await?, 1.0, "alone until the fleet says otherwise");

    // The fleet sends the endpoint far more than this data plane: it plans with the floor.
    let fleet = |requests_per_min: u64| cfg::ControlPlaneMessage {
        kind: Some(cfg::control_plane_message::Kind::FleetQuota(cfg::FleetQuota {
            endpoints: vec![cfg::FleetSpend {
                endpoint_id: endpoint_id.to_string(),
                requests_per_min,
                tokens_per_min: requests_per_min * 116,
                data_planes: 8,
            }],
        })),
    };
    let send = |message| session.outbound.send(Ok(message));
    send(fleet(100_000_000)).await.map_err(|_| anyhow::anyhow!("session closed"))?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while quota_share(&http, metrics).await? != 0.05 {
        assert!(tokio::time::Instant::now() < deadline, "the fleet quota was never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing spent elsewhere any more: the whole quota is this data plane's again.
    send(cfg::ControlPlaneMessage {
        kind: Some(cfg::control_plane_message::Kind::FleetQuota(cfg::FleetQuota::default())),
    })
    .await
    .map_err(|_| anyhow::anyhow!("session closed"))?;
    while quota_share(&http, metrics).await? != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the empty fleet quota was never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sender.abort();
    Ok(())
}

/// A gauge without labels from `/metrics` at `metrics`.
async fn gauge(http: &reqwest::Client, metrics: SocketAddr, name: &str) -> Result<f64> {
    let text = http.get(format!("http://{metrics}/metrics")).send().await?.text().await?;
    let line = text
        .lines()
        .find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')))
        .with_context(|| format!("no {name} in\n{text}"))?;
    Ok(line.rsplit(' ').next().context("a value")?.parse()?)
}

/// `/readyz` of the data plane at `base`: status and body.
async fn readyz(http: &reqwest::Client, base: &str) -> Result<(u16, String)> {
    let response = http.get(format!("{base}/readyz")).send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// A data plane bound with `config` and running; its gateway URL, metrics address, store and
/// the sender that stops it, and its task.
async fn run_data_plane(
    config: DataPlaneConfig,
) -> Result<(
    String,
    SocketAddr,
    std::sync::Arc<modelgw_data_plane::routing_table::SnapshotStore>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), modelgw_data_plane::DataPlaneError>>,
)> {
    let dp = DataPlane::bind(config).await?;
    let base = format!("http://{}", dp.local_addr());
    let metrics = dp.metrics_addr().context("metrics served")?;
    let store = dp.snapshot_store();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(dp.run(async move {
        let _ = stopped.await;
    }));
    Ok((base, metrics, store, stop, task))
}

/// Polls until the snapshot file at `path` holds `version` (the writer is asynchronous).
async fn wait_for_saved(path: &std::path::Path, version: u64) -> Result<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(bytes) = std::fs::read(path)
            && modelgw_data_plane::snapshot_file::peek_version(&bytes).ok().map(|v| v.0)
                == Some(version)
        {
            return Ok(bytes);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{} never held version {version}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Issue #15 item 4: the snapshot a data plane applies is saved sealed (mode 0600, no key in
/// clear); a new data plane started with the control plane down serves it (stale in
/// `/readyz` and the metrics) with the endpoint's key reaching the region, until a control
/// plane comes back, whose first snapshot replaces it even at an older version.
#[tokio::test]
async fn the_applied_snapshot_is_saved_sealed_and_served_at_start_without_a_control_plane()
-> Result<()> {
    use modelgw_data_plane::{SnapshotFileConfig, SnapshotKey};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream_key = "upstream-key-sealed-5f1d0c2e9b7a";
    let mock = east_us(upstream_key).await?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::write(dir.path())?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let cp_addr = listener.local_addr()?;
    let (mut sessions, server) = serve_fake(&pki.ca, listener)?;
    std::fs::create_dir(dir.path().join("state"))?;
    let path = dir.path().join("state").join("snapshot.sealed");
    let key = SnapshotKey::from_bytes(rand::random());
    let config = |node_id: &str| DataPlaneConfig {
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        control_plane_url: format!("https://{cp_addr}"),
        control_plane_trust: trust(&pki),
        node_id: node_id.into(),
        allow_loopback_upstreams: true,
        metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        snapshot_file: Some(SnapshotFileConfig::new(&path, key.clone())),
        // Stopped and restarted here: no drain period to sit through.
        drain_period: Duration::ZERO,
        ..Default::default()
    };
    let http = reqwest::Client::builder().no_proxy().build()?;

    // A data plane applies version 3 from its control plane: the file appears.
    let (base, metrics, _store, stop, task) = run_data_plane(config("dp-sealed")).await?;
    let mut session = next_session(&mut sessions).await?;
    let endpoint_id = EndpointId::new();
    session.send(wire_snapshot(3, endpoint_id, &mock.base_url(), upstream_key)).await?;
    let ack = session.expect(|k| if let Kind::Ack(a) = k { Some(a) } else { None }).await?;
    assert_eq!(ack.version, 3);
    let file = wait_for_saved(&path, 3).await?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the file is private: {mode:o}");
    }
    let contains = |needle: &[u8]| file.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(upstream_key.as_bytes()), "the endpoint key is sealed");
    assert!(!contains(b"upstream-key"), "no part of it either");
    assert!(!contains(&gateway_key_hash(CLIENT_KEY)), "the gateway key's hash is sealed");
    assert!(!contains(CLIENT_KEY.as_bytes()));
    assert!(!contains(&[5u8; 32]), "the pin key is sealed");
    assert!(!contains(b"East US") && !contains(b"gpt-4o-eus"), "names are sealed too");
    let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(names, ["snapshot.sealed"], "no temp file left");
    assert_eq!(readyz(&http, &base).await?, (200, "ready\n".to_owned()));
    assert_eq!(gauge(&http, metrics, "modelgw_snapshot_stale").await?, 0.0);

    // Both go away.
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, task).await???;
    server.abort();
    drop(session);

    // A new data plane, no control plane answering: it serves the saved snapshot at once.
    let (base, metrics, store, _stop, _task) = run_data_plane(config("dp-sealed")).await?;
    assert_eq!(store.version().0, 3);
    let (status, body) = readyz(&http, &base).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready (stale snapshot from disk, version 3, age "), "{body}");
    assert_eq!(gauge(&http, metrics, "modelgw_snapshot_stale").await?, 1.0);
    let age = gauge(&http, metrics, "modelgw_snapshot_age_seconds").await?;
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(gauge(&http, metrics, "modelgw_control_plane_connected").await?, 0.0);
    let before = mock.calls("gpt-4o-eus");
    let (status, prompt, _) = chat(&http, &base, false).await?;
    assert_eq!(status, 200, "served from disk with the sealed endpoint key");
    assert!(prompt > 0);
    assert_eq!(mock.calls("gpt-4o-eus"), before + 1, "the region answered it");

    // A control plane comes back (its database restored to version 2): its first snapshot
    // replaces the one from disk although older, and is saved in its place.
    let listener = tokio::net::TcpListener::bind(cp_addr).await?;
    let (mut sessions, _server) = serve_fake(&pki.ca, listener)?;
    let mut session = next_session(&mut sessions).await?;
    let hello = session.expect(|k| if let Kind::Hello(h) = k { Some(h) } else { None }).await?;
    assert_eq!(hello.applied_version, 3, "it says what it serves");
    session.send(wire_snapshot(2, endpoint_id, &mock.base_url(), upstream_key)).await?;
    let ack = session.expect(|k| if let Kind::Ack(a) = k { Some(a) } else { None }).await?;
    assert_eq!(ack.version, 2);
    assert_eq!(store.version().0, 2);
    assert_eq!(readyz(&http, &base).await?, (200, "ready\n".to_owned()));
    assert_eq!(gauge(&http, metrics, "modelgw_snapshot_stale").await?, 0.0);
    wait_for_saved(&path, 2).await?;
    assert_eq!(chat(&http, &base, false).await?.0, 200);
    Ok(())
}

/// A saved snapshot that does not open (wrong key, altered) or is older than the maximum age
/// is not served: the data plane starts as without one (`/readyz` 503).
#[tokio::test]
async fn a_saved_snapshot_that_does_not_open_or_is_too_old_is_not_served() -> Result<()> {
    use modelgw_data_plane::snapshot_file::{now_unix_ms, seal_snapshot};
    use modelgw_data_plane::{SnapshotFileConfig, SnapshotKey};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let pki = TestPki::write(dir.path())?;
    // A control-plane address nothing listens on.
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let cp_addr = listener.local_addr()?;
    drop(listener);
    let path = dir.path().join("snapshot.sealed");
    let key = SnapshotKey::from_bytes([1; 32]);
    let snapshot = modelgw_model::wire::decode_snapshot(&prost::Message::encode_to_vec(
        &wire_snapshot(4, EndpointId::new(), "http://127.0.0.1:9", "upstream-key-0123456789"),
    ))?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let start = |file: SnapshotFileConfig| {
        run_data_plane(DataPlaneConfig {
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            control_plane_url: format!("https://{cp_addr}"),
            control_plane_trust: trust(&pki),
            node_id: "dp-refuses".into(),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            snapshot_file: Some(file),
            ..Default::default()
        })
    };

    // Fresh and with the right key: served (the control of this test).
    std::fs::write(&path, seal_snapshot(&key, &snapshot, now_unix_ms())?)?;
    let (base, _, _, _stop, _task) = start(SnapshotFileConfig::new(&path, key.clone())).await?;
    assert_eq!(readyz(&http, &base).await?.0, 200);

    // The wrong key.
    let wrong = SnapshotKey::from_bytes([2; 32]);
    let (base, metrics, store, _stop, _task) = start(SnapshotFileConfig::new(&path, wrong)).await?;
    assert_eq!(readyz(&http, &base).await?, (503, "no configuration yet\n".to_owned()));
    assert_eq!(store.version().0, 0);
    assert_eq!(gauge(&http, metrics, "modelgw_snapshot_stale").await?, 0.0);

    // One byte altered.
    let mut altered = std::fs::read(&path)?;
    let middle = altered.len() / 2;
    altered[middle] ^= 1;
    std::fs::write(&path, &altered)?;
    let (base, _, _, _stop, _task) = start(SnapshotFileConfig::new(&path, key.clone())).await?;
    assert_eq!(readyz(&http, &base).await?.0, 503);

    // Older than the maximum age.
    std::fs::write(&path, seal_snapshot(&key, &snapshot, now_unix_ms() - 3_600_000)?)?;
    let mut file = SnapshotFileConfig::new(&path, key.clone());
    file.max_age = Duration::from_secs(1800);
    let (base, _, _, _stop, _task) = start(file).await?;
    assert_eq!(readyz(&http, &base).await?.0, 503);

    // A directory that does not exist stops the start.
    let absent = SnapshotFileConfig::new(dir.path().join("absent").join("snapshot.sealed"), key);
    let err = start(absent).await.err().context("refused")?;
    assert!(err.to_string().contains("does not exist"), "{err}");
    Ok(())
}
