//! The gateway edge (issue #11), against recording mock regions on loopback: every attack a
//! hostile client with a valid gateway key tried is answered by the gateway itself and the
//! upstream records nothing; connections are bounded; streams are bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use modelgw_data_plane::DataPlaneConfig;
use modelgw_mock_openai::{Fault, wire};
use modelgw_model::{EndpointState, Platform, RoutingPolicy};
use serde_json::{Value, json};
use support::{
    API_VERSION, CLIENT_KEY, GATEWAY, Region, TestGateway, chat_body, fast_config, header, id,
    region_at, snapshot, start, start_exactly, unmocked,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway(members: &[(&Region, u32, u32)]) -> Result<TestGateway> {
    support::gateway(members, RoutingPolicy::default(), fast_config()).await
}

/// Waits until `condition` holds, polling; fails after `within`.
async fn wait_for(within: Duration, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !condition() {
        if Instant::now() > deadline {
            bail!("condition not met within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Reads until the peer closes the connection (EOF or reset); how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => bail!("still open after {limit:?}"),
            Ok(Ok(0) | Err(_)) => return Ok(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn addr(gw: &TestGateway) -> String {
    gw.base.trim_start_matches("http://").to_owned()
}

/// Every request of the issue's first finding: a key for one gateway reached the Azure
/// resource's management surfaces with the resource's own key. Now each gets the gateway's own
/// 404 in Azure's shape and the recording upstream receives nothing.
#[tokio::test]
async fn management_surfaces_and_unknown_operations_never_reach_an_upstream() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let gw = gateway(&[(&eus, 0, 1)]).await?;
    for (method, path) in [
        ("GET", "/openai/v1/files"),
        ("DELETE", "/openai/v1/files/file-abc123"),
        ("GET", "/openai/v1/fine_tuning/jobs"),
        // Responses by id are served, for ids this gateway minted only: tests/pinning.rs.
        ("GET", "/openai/v1/chat/completions/chatcmpl-someone_elses"),
        ("GET", "/openai/v1/responses/resp_someone_elses/other"),
        ("GET", "/openai/v1/vector_stores"),
        ("POST", "/openai/v1/batches"),
        ("PUT", "/openai/v1/anything/at/all"),
        ("GET", "/openai/files?api-version=2024-10-21"),
        ("POST", "/openai/deployments/chat/files?api-version=2024-10-21"),
        ("GET", "/openai/deployments/chat/chat/completions?api-version=2024-10-21"),
        ("POST", "/openai/v1/assistants"),
    ] {
        let response = gw
            .http
            .request(method.parse()?, format!("{}{path}", gw.base))
            .header("api-key", CLIENT_KEY)
            .header("content-type", "application/json")
            .body(r#"{"model":"chat"}"#)
            .send()
            .await?;
        assert_eq!(response.status(), 404, "{method} {path}");
        assert_eq!(response.text().await?, wire::RESOURCE_NOT_FOUND, "{method} {path}");
    }
    assert!(eus.mock().requests().is_empty(), "the upstream received nothing");
    Ok(())
}

/// The second finding: bodies whose `model` a lenient parser reads differently (two `model`
/// keys, a BOM, trailing bytes, invalid JSON) reached the upstream unchanged. Each is a 400
/// now, on the v1 surface, on deployment paths, and on an `openai_compatible` endpoint.
#[tokio::test]
async fn bodies_that_could_route_by_another_model_get_400_and_reach_no_upstream() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let gw = gateway(&[(&eus, 0, 1)]).await?;
    let bodies: [(&str, Vec<u8>); 8] = [
        ("duplicate", br#"{"model":"chat","model":"o1-expensive","messages":[]}"#.to_vec()),
        ("escaped duplicate", br#"{"model":"chat","mod\u0065l":"o1-expensive"}"#.to_vec()),
        ("bom", b"\xEF\xBB\xBF{\"model\":\"o1-expensive\"}".to_vec()),
        ("trailing", br#"{"model":"chat"}{"model":"o1-expensive"}"#.to_vec()),
        ("trailing bytes", br#"{"model":"chat"} garbage"#.to_vec()),
        ("invalid", br#"{"model":"o1-expensive","#.to_vec()),
        ("array", br#"[{"model":"chat"}]"#.to_vec()),
        ("not a name", br#"{"model":["chat"]}"#.to_vec()),
    ];
    for path in [
        "/openai/v1/chat/completions".to_owned(),
        format!("/openai/deployments/auto/chat/completions?{API_VERSION}"),
        "/openai/responses?api-version=2025-04-01-preview".to_owned(),
    ] {
        for (what, body) in &bodies {
            if *what == "not a name" && path.contains("/deployments/") {
                continue; // Azure ignores `model` on deployment paths: not a routing input.
            }
            let response = gw
                .http
                .post(format!("{}{path}", gw.base))
                .header("api-key", CLIENT_KEY)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await?;
            assert_eq!(response.status(), 400, "{what} on {path}");
            let error: Value = response.json().await?;
            assert_eq!(error["error"]["code"], "400", "{what} on {path}: Azure's shape");
        }
    }
    assert!(eus.mock().requests().is_empty(), "the upstream received nothing");

    // The duplicate-key trick on an OpenAI-compatible endpoint (routed by `model`).
    let vllm = region_at("vllm", "Local", "llama").await?;
    let compatible = start(fast_config()).await?;
    let mut snap = snapshot(1, &[(&vllm, 0, 1)], RoutingPolicy::default())?;
    snap.endpoints[0].platform = Platform::OpenaiCompatible;
    compatible.install(snap)?;
    let response = compatible
        .http
        .post(format!("{}/openai/deployments/auto/chat/completions?{API_VERSION}", compatible.base))
        .header("api-key", CLIENT_KEY)
        .body(r#"{"model":"auto","model":"expensive-70b","messages":[]}"#)
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    assert!(vllm.mock().requests().is_empty(), "the compatible upstream received nothing");
    Ok(())
}

/// The third finding: client headers went upstream verbatim. A recording upstream now sees
/// only allowlisted headers and its own credential, and no gateway key in the query.
#[tokio::test]
async fn only_allowlisted_headers_and_the_endpoints_own_credential_reach_the_upstream() -> Result<()>
{
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let gw = gateway(&[(&eus, 0, 1)]).await?;
    let response = gw
        .http
        .post(format!(
            "{}/openai/deployments/auto/chat/completions?{API_VERSION}&api-key={CLIENT_KEY}&subscription-key=x&mine={CLIENT_KEY}",
            gw.base
        ))
        .header("api-key", CLIENT_KEY)
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("content-type", "application/json")
        .header("cookie", "session=secret")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-host", "evil.example")
        .header("ocp-apim-subscription-key", "apim-key")
        .header("metadata", "true")
        .header("x-ms-client-request-id", "req-1")
        .header("x-stainless-lang", "python")
        .header("user-agent", "AzureOpenAI/Python 1.109.1")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .header("x-custom-header", "1")
        .body(chat_body(false).to_string())
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let seen = &eus.mock().requests()[0];
    let mut names: Vec<&str> = seen.headers.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "accept",
            "accept-encoding",
            "api-key",
            "content-length",
            "content-type",
            "host",
            "traceparent",
            "user-agent",
            "x-ms-client-request-id",
            "x-stainless-lang"
        ],
        "only allowlisted headers (plus what HTTP itself needs)"
    );
    assert_eq!(seen.header("api-key"), Some(eus.key.as_str()), "the endpoint's own credential");
    assert_eq!(seen.query.as_deref(), Some(API_VERSION), "no credential in the query");
    Ok(())
}

/// The fourth finding: one request whose upstream answered 401 put the endpoint into error
/// cooldown for everyone. An answer the request caused (400, 404, content filter, a 401 to a
/// request carrying a query parameter of the client's) now leaves it healthy for the next
/// client; a 401 to the gateway's own credential alone still marks it.
#[tokio::test]
async fn upstream_answers_the_client_caused_leave_the_endpoint_healthy() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let swc = region_at("swc", "Sweden Central", "gpt-4o-swc").await?;
    let gw = gateway(&[(&eus, 0, 1), (&swc, 1, 1)]).await?;
    let status =
        |status| Fault::Status { status, retry_after: None, retry_after_ms: None, times: 1 };
    for (fault, identity, expected) in [
        (status(401), true, 401),
        (status(403), true, 403),
        (status(400), false, 400),
        (status(404), false, 404),
        (status(422), false, 422),
        (Fault::ContentFilter { times: 1 }, false, 400),
    ] {
        eus.script(fault.clone());
        let response = if identity {
            // A query parameter of the client's besides `api-version` may be what the
            // upstream refused (`openai-organization`/`-project` are never forwarded).
            let url = format!(
                "{}/openai/deployments/auto/chat/completions?{API_VERSION}&user=the-clients",
                gw.base
            );
            gw.http.post(url).header("api-key", CLIENT_KEY).json(&chat_body(false)).send().await?
        } else {
            gw.request(false).send().await?
        };
        assert_eq!(response.status().as_u16(), expected, "{fault:?}");
        assert_eq!(gw.health.state(id(&eus), Instant::now()), EndpointState::Healthy, "{fault:?}");
        let next = gw.chat().await?;
        assert_eq!(next.status(), 200);
        assert!(
            header(&next, "x-modelgw-attempts").starts_with("eus:ok:"),
            "{fault:?}: the next client is served by eus"
        );
    }
    assert_eq!(swc.calls(), 0);

    // Only the gateway's credential went upstream: a 401 says that credential is bad. The
    // endpoint fails, the request goes on to the next one, and the upstream's 401 never
    // reaches the client (whose own key is fine).
    eus.script(status(401));
    let failed_over = gw.chat().await?;
    assert_eq!(failed_over.status(), 200);
    assert!(
        header(&failed_over, "x-modelgw-attempts").starts_with("eus:credential_rejected:"),
        "{}",
        header(&failed_over, "x-modelgw-attempts")
    );
    assert_eq!(header(&failed_over, "x-modelgw-endpoint"), "swc");
    assert_eq!(gw.health.state(id(&eus), Instant::now()), EndpointState::Error);
    let next = gw.chat().await?;
    assert!(header(&next, "x-modelgw-attempts").starts_with("eus:skipped_error_cooldown:"));
    Ok(())
}

/// The gateway never dials link-local or metadata addresses, whatever the endpoint's URL says,
/// and fails over at once instead (no connect timeout).
#[tokio::test]
async fn metadata_and_link_local_addresses_are_never_dialled() -> Result<()> {
    for url in
        ["http://169.254.169.254", "http://[::ffff:169.254.169.254]:80", "http://[fe80::1]:80"]
    {
        let imds = unmocked("imds", url.to_owned());
        let gw = gateway(&[(&imds, 0, 1)]).await?;
        let started = Instant::now();
        let response = gw.chat().await?;
        assert_eq!(response.status(), 503, "{url}");
        assert!(
            header(&response, "x-modelgw-attempts").starts_with("imds:connect_error:"),
            "{url}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{url}: refused before dialling");
    }
    Ok(())
}

/// Loopback upstreams need `allow_loopback_upstreams`, by address or by name.
#[tokio::test]
async fn loopback_upstreams_are_refused_unless_allowed() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let by_name = unmocked("local", eus.url().replace("127.0.0.1", "localhost"));
    let gw = start_exactly(fast_config()).await?;
    gw.install(snapshot(1, &[(&eus, 0, 1), (&by_name, 1, 1)], RoutingPolicy::default())?)?;
    let response = gw.chat().await?;
    assert_eq!(response.status(), 503);
    let attempts = header(&response, "x-modelgw-attempts");
    assert!(
        attempts.starts_with("eus:connect_error:") && attempts.contains("local:connect_error:"),
        "{attempts}"
    );
    assert_eq!(eus.calls(), 0, "nothing was sent");
    assert!(eus.mock().requests().is_empty());
    Ok(())
}

fn edge_config(header_read: Duration, idle: Duration) -> DataPlaneConfig {
    DataPlaneConfig { header_read_timeout: header_read, client_idle_timeout: idle, ..fast_config() }
}

/// 2,000 connections that send nothing (and one that trickles a head byte by byte) are all
/// closed at the header deadline, counted.
#[tokio::test]
async fn silent_and_trickling_connections_are_closed_at_the_header_deadline() -> Result<()> {
    let deadline = Duration::from_millis(500);
    let gw = start(edge_config(deadline, Duration::from_secs(30))).await?;
    let target = addr(&gw);
    let mut silent = Vec::with_capacity(2000);
    for _ in 0..2000 {
        silent.push(TcpStream::connect(&target).await?);
    }
    let mut trickler = TcpStream::connect(&target).await?;
    let opened = Instant::now();
    let trickle = async {
        for byte in
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nhost: x\r\n".iter().cycle().take(200)
        {
            if trickler.write_all(&[*byte]).await.is_err() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("a trickling head was not cut off")
    };
    let closes = futures::future::join_all(
        silent.iter_mut().map(|s| closed_within(s, Duration::from_secs(10))),
    );
    let (closes, trickled) = tokio::join!(closes, trickle);
    trickled?;
    for close in closes {
        close?;
    }
    let took = opened.elapsed();
    assert!(took < deadline + Duration::from_secs(3), "all closed {took:?} after opening");
    assert!(gw.connections.closed_without_request() >= 2001);
    wait_for(Duration::from_secs(5), || gw.connections.open() == 0).await?;
    Ok(())
}

/// An idle h2c connection (no stream) and an HTTP/1 keep-alive connection are closed at the
/// idle timeout after their last request; a connection that sent only the h2 preface is
/// closed at the header deadline.
#[tokio::test]
async fn idle_h2c_and_keep_alive_connections_are_closed() -> Result<()> {
    let idle = Duration::from_millis(400);
    let gw = start(edge_config(Duration::from_millis(400), idle)).await?;
    let target = addr(&gw);

    // h2c: one request, then nothing.
    let stream = TcpStream::connect(&target).await?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("{}/healthz", gw.base))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    assert_eq!(response.status(), 200);
    drop(response);
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), connection).await?.context("join")?.ok();
    let took = answered.elapsed();
    assert!(
        took >= idle.mul_f32(0.9) && took < idle + Duration::from_secs(2),
        "h2c closed after {took:?}"
    );

    // h2c preface only: no request head ever.
    let stream = TcpStream::connect(&target).await?;
    let (_sender, connection) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await?;
    tokio::time::timeout(Duration::from_secs(5), connection).await?.ok();
    assert_eq!(gw.connections.closed_without_request(), 1, "the preface-only connection");

    // HTTP/1.1 keep-alive: answered, then idle.
    let mut http1 = TcpStream::connect(&target).await?;
    http1.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let mut buf = [0u8; 1024];
    let n = http1.read(&mut buf).await?;
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    let took = closed_within(&mut http1, Duration::from_secs(5)).await?;
    assert!(took < idle + Duration::from_secs(2), "keep-alive closed after {took:?}");
    assert!(
        gw.connections.closed_idle() >= 2,
        "idle {} no-request {}",
        gw.connections.closed_idle(),
        gw.connections.closed_without_request()
    );
    Ok(())
}

/// A burst beyond `max_connections` is refused (closed at once) and counted; once the burst is
/// gone a well-behaved client is served.
#[tokio::test]
async fn a_burst_beyond_the_connection_limit_is_refused_and_clients_are_served_after_it()
-> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let config = DataPlaneConfig {
        max_connections: 50,
        ..edge_config(Duration::from_secs(30), Duration::from_secs(30))
    };
    let gw = support::gateway(&[(&eus, 0, 1)], RoutingPolicy::default(), config).await?;
    let target = addr(&gw);
    let mut burst = Vec::new();
    for _ in 0..50 {
        burst.push(TcpStream::connect(&target).await?);
    }
    wait_for(Duration::from_secs(5), || gw.connections.open() == 50).await?;
    for _ in 0..20 {
        let mut refused = TcpStream::connect(&target).await?;
        closed_within(&mut refused, Duration::from_secs(2)).await?;
    }
    assert!(gw.connections.refused() >= 20, "refused {}", gw.connections.refused());
    assert!(gw.chat().await.is_err(), "no room while the burst holds every slot");

    drop(burst);
    wait_for(Duration::from_secs(5), || gw.connections.open() == 0).await?;
    let fresh = reqwest::Client::builder().no_proxy().build()?;
    let response = fresh
        .post(format!("{}/openai/deployments/auto/chat/completions?{API_VERSION}", gw.base))
        .header("api-key", CLIENT_KEY)
        .header("content-type", "application/json")
        .body(chat_body(false).to_string())
        .send()
        .await?;
    assert_eq!(response.status(), 200, "served once the burst is closed");
    Ok(())
}

/// An upstream SSE event that never ends (64 MiB, no blank line) is cut at the event cap: the
/// client gets the SSE error event and an aborted stream, the endpoint is marked failed, and
/// another request on the same (single) serving thread meanwhile answers at its usual pace.
#[tokio::test]
async fn an_sse_event_without_a_boundary_is_cut_at_the_cap_and_fails_the_endpoint() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let config = DataPlaneConfig { workers: 1, ..fast_config() };
    let gw = support::gateway(&[(&eus, 0, 1)], RoutingPolicy::default(), config).await?;
    eus.script(Fault::UnboundedEvent { bytes: 64 * 1024 * 1024, times: 1 });
    let started = Instant::now();
    let response = gw.request(true).send().await?;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    let mut aborted = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(_) => {
                aborted = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("data: {\"choices\":[]"), "Azure's first frame first");
    assert!(
        text.contains("stream_interrupted") && text.contains("larger than 1048576 bytes"),
        "{text}"
    );
    assert!(body.len() < 64 * 1024, "the oversized event is never relayed: {} bytes", body.len());
    assert!(aborted, "never a clean end");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(gw.health.state(id(&eus), Instant::now()), EndpointState::Error, "marked failed");
    Ok(())
}

/// Many short chats on one serving thread while another stream floods it: each answers
/// within its normal latency.
#[tokio::test]
async fn a_flooding_stream_does_not_slow_other_requests_on_its_thread() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let swc = region_at("swc", "Sweden Central", "gpt-4o-swc").await?;
    let config =
        DataPlaneConfig { workers: 1, max_sse_event_bytes: 32 * 1024 * 1024, ..fast_config() };
    let gw =
        support::gateway(&[(&eus, 0, 1), (&swc, 1, 1)], RoutingPolicy::default(), config).await?;
    eus.script(Fault::UnboundedEvent { bytes: 64 * 1024 * 1024, times: 1 });
    let flood = gw.request(true).send().await?;
    let reader = tokio::spawn(async move {
        let mut stream = flood.bytes_stream();
        while let Some(Ok(_)) = stream.next().await {}
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let response = gw.chat().await?;
        assert!(response.status().is_success() || response.status() == 503);
        response.bytes().await?;
        slowest = slowest.max(started.elapsed());
    }
    reader.abort();
    assert!(slowest < Duration::from_millis(500), "slowest chat took {slowest:?}");
    Ok(())
}

#[tokio::test]
async fn the_sdk_surface_still_works_on_every_path_the_table_serves() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let gw = gateway(&[(&eus, 0, 1)]).await?;
    for path in [
        format!("/openai/deployments/{GATEWAY}/chat/completions?{API_VERSION}"),
        format!("/openai/deployments/auto/embeddings?{API_VERSION}"),
        "/openai/v1/chat/completions".to_owned(),
        format!("/openai/v1/deployments/{GATEWAY}/chat/completions?api-version=preview"),
    ] {
        let body = if path.contains("embeddings") {
            json!({"model": GATEWAY, "input": "hello"})
        } else {
            json!({"model": GATEWAY, "messages": [{"role": "user", "content": "hi"}]})
        };
        let response = gw.post(&path, &body).send().await?;
        assert_eq!(response.status(), 200, "{path}: {:?}", response.text().await);
    }
    assert_eq!(eus.calls(), 4);
    Ok(())
}

/// Reads one HTTP/1.1 response with a `content-length` from `stream`: its status and body.
async fn read_response(stream: &mut TcpStream) -> Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            bail!("connection closed after {} bytes of a response head", buf.len());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let status = head.get(9..12).context("status line")?.parse::<u16>()?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .context("a content-length")?
        .trim()
        .parse::<usize>()?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    Ok((status, body))
}

/// A request refused before its body is needed (a wrong key) does not cost the client its
/// keep-alive connection: the gateway reads and drops the upload, answers 401, and serves the
/// next request on the same connection. Dropped unread, hyper closed the connection: the
/// official SDKs saw EPIPE in the middle of an upload, or "server disconnected" on their next
/// request over it.
#[tokio::test]
async fn a_refused_upload_leaves_the_keep_alive_connection_usable() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let gw = gateway(&[(&eus, 0, 1)]).await?;
    let mut stream = TcpStream::connect(addr(&gw)).await?;
    let path = format!("/openai/deployments/auto/chat/completions?{API_VERSION}");
    let upload = vec![b' '; 96 * 1024];
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\napi-key: not-a-key\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        upload.len()
    );
    stream.write_all(head.as_bytes()).await?;
    for chunk in upload.chunks(8 * 1024) {
        stream.write_all(chunk).await?;
        tokio::task::yield_now().await;
    }
    let (status, _) = read_response(&mut stream).await?;
    assert_eq!(status, 401);

    let chat = serde_json::to_vec(&chat_body(false))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\napi-key: {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        chat.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&chat).await?;
    let (status, body) = read_response(&mut stream).await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(eus.calls(), 1, "only the second request reached the region");
    Ok(())
}
