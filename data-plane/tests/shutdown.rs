//! Graceful shutdown, in process: a data plane asked to stop fails `/readyz` at once, keeps
//! serving through its drain period, then stops accepting while in-flight streams finish;
//! further requests to stop move it on faster.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use modelgw_data_plane::DataPlaneConfig;
use modelgw_model::RoutingPolicy;
use support::{API_VERSION, Region, TestGateway, chat_body, header, region_at, snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a test waits for something that should happen well within it.
const WAIT: Duration = Duration::from_secs(10);

async fn draining_gateway(
    region: &Region,
    drain_period: Duration,
    shutdown_grace: Duration,
) -> Result<(TestGateway, modelgw_data_plane::ShutdownTrigger)> {
    let config = DataPlaneConfig {
        drain_period,
        shutdown_grace,
        upstream_timeout: Duration::from_secs(5),
        // Several threads: the stream and the new requests need not share one.
        workers: 2,
        ..Default::default()
    };
    let (gw, trigger) = support::start_with_trigger(config).await?;
    gw.install(snapshot(1, &[(region, 0, 1)], RoutingPolicy::default())?)?;
    Ok((gw, trigger))
}

/// Reads a streamed chat to its end in the background; returns its text, or the error that cut
/// it, and when it ended.
fn read_stream(response: reqwest::Response) -> tokio::task::JoinHandle<(Result<String>, Instant)> {
    tokio::spawn(async move {
        let mut body = response.bytes_stream();
        let mut all = Vec::new();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => all.extend_from_slice(&chunk),
                Err(err) => return (Err(err.into()), Instant::now()),
            }
        }
        (String::from_utf8(all).context("utf-8"), Instant::now())
    })
}

fn data_frames(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("data: ")).count()
}

/// A new connection's answer to `GET path` over raw HTTP/1.1 with keep-alive asked for, read
/// until the server closes the connection (it must, within [`WAIT`]).
async fn raw_get_until_closed(base: &str, path: &str) -> Result<String> {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: keep-alive\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .context("the connection was kept open")??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Polls until a new TCP connection to the gateway is refused; returns when that was.
async fn wait_until_refused(base: &str) -> Result<Instant> {
    let addr = base.trim_start_matches("http://");
    let deadline = Instant::now() + WAIT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return Ok(Instant::now());
        }
        ensure!(Instant::now() < deadline, "the listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_fails_readyz_serves_through_the_drain_period_then_lets_a_stream_finish()
-> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    let drain_period = Duration::from_millis(1500);
    let grace = Duration::from_secs(20);
    let (mut gw, trigger) = draining_gateway(&eus, drain_period, grace).await?;
    let path = format!("/openai/deployments/auto/chat/completions?{API_VERSION}");

    // How many frames a complete stream has.
    let reference = gw.post(&path, &chat_body(true)).send().await?.text().await?;
    let frames = data_frames(&reference);
    assert!(reference.ends_with("data: [DONE]\n\n") && frames > 3, "{reference}");

    // A stream that lasts well past the drain period.
    let gap = Duration::from_millis(300);
    eus.mock().set_stream_gap(gap);
    let long = gw.post(&path, &chat_body(true)).send().await?;
    assert_eq!(long.status(), 200);
    let long = read_stream(long);

    let asked = Instant::now();
    trigger.request();
    let fresh = || reqwest::Client::builder().no_proxy().build();
    let ready = fresh()?.get(format!("{}/readyz", gw.base)).send().await?;
    assert_eq!(ready.status(), 503, "not ready as soon as asked to stop");
    assert_eq!(ready.text().await?.trim(), "draining");
    let live = fresh()?.get(format!("{}/healthz", gw.base)).send().await?;
    assert_eq!(live.status(), 200, "still alive while draining");

    // New connections and requests are still served during the drain period, and HTTP/1
    // answers tell the client to move on.
    eus.mock().set_stream_gap(Duration::ZERO);
    let during = fresh()?
        .post(format!("{}{path}", gw.base))
        .header("api-key", support::CLIENT_KEY)
        .header("content-type", "application/json")
        .body(chat_body(false).to_string())
        .send()
        .await?;
    assert_eq!(during.status(), 200, "a new request is served while draining");
    assert_eq!(header(&during, "connection"), "close");
    let raw = raw_get_until_closed(&gw.base, "/healthz").await?;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("connection: close"), "{raw}");
    assert!(asked.elapsed() < drain_period, "checked within the drain period");
    eus.mock().set_stream_gap(gap);

    // Then the listener closes, while the stream started before goes on.
    let refused_at = wait_until_refused(&gw.base).await?;
    let drained_for = refused_at - asked;
    assert!(
        drained_for >= drain_period - Duration::from_millis(100),
        "accepting stopped after {drained_for:?}, before the drain period ({drain_period:?})"
    );
    assert!(!long.is_finished(), "the stream was still running when the listener closed");
    assert!(!gw.task.is_finished(), "the data plane waits for the stream");

    // The stream completes, every frame, and the data plane stops right after it.
    let (text, ended) = tokio::time::timeout(grace, long).await??;
    let text = text?;
    assert!(text.ends_with("data: [DONE]\n\n"), "the stream completed: {text}");
    assert_eq!(data_frames(&text), frames, "no frame lost: {text}");
    assert!(ended > refused_at, "the stream outlived the listener");
    let outcome = tokio::time::timeout(WAIT, &mut gw.task).await??;
    assert!(outcome.is_ok(), "{outcome:?}");
    let stopped_after_stream = ended.elapsed();
    eprintln!(
        "listener closed {drained_for:?} after the request to stop; stream ended {:?} after that; data plane stopped {stopped_after_stream:?} after the stream",
        ended - refused_at
    );
    assert!(
        asked.elapsed() < drain_period + grace,
        "stopped once in-flight finished, not at the grace deadline"
    );
    assert!(stopped_after_stream < Duration::from_secs(3), "{stopped_after_stream:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_ends_the_drain_period_and_a_third_cuts_in_flight_streams() -> Result<()> {
    let eus = region_at("eus", "East US", "gpt-4o-eus").await?;
    // Far longer than the test: only the requests can move it on.
    let long_time = Duration::from_secs(600);
    let (mut gw, trigger) = draining_gateway(&eus, long_time, long_time).await?;
    let path = format!("/openai/deployments/auto/chat/completions?{API_VERSION}");
    eus.mock().set_stream_gap(Duration::from_secs(2));
    let long = gw.post(&path, &chat_body(true)).send().await?;
    assert_eq!(long.status(), 200);
    let long = read_stream(long);

    trigger.request();
    let ready = gw.http.get(format!("{}/readyz", gw.base)).send().await?;
    assert_eq!(ready.status(), 503);
    // Still accepting a while into the (ten-minute) drain period.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tokio::net::TcpStream::connect(gw.base.trim_start_matches("http://")).await.is_ok());

    let second = Instant::now();
    trigger.request();
    let refused_at = wait_until_refused(&gw.base).await?;
    assert!(refused_at - second < Duration::from_secs(1), "the second request ended the drain");
    assert!(!long.is_finished(), "the stream is still being served");
    assert!(!gw.task.is_finished());

    let third = Instant::now();
    trigger.request();
    let outcome = tokio::time::timeout(WAIT, &mut gw.task).await??;
    assert!(outcome.is_ok(), "{outcome:?}");
    let (text, _) = tokio::time::timeout(WAIT, long).await??;
    let cut = match text {
        Err(_) => true,
        Ok(text) => !text.ends_with("data: [DONE]\n\n"),
    };
    assert!(cut, "the third request cut the stream");
    assert!(
        third.elapsed() < Duration::from_secs(3),
        "stopped {:?} after the third",
        third.elapsed()
    );
    Ok(())
}
