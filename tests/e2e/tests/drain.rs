//! Issue 15 acceptance, graceful shutdown across real processes:
//! - a rolling restart of two data planes behind a local nginx acting as Front Door (a probe
//!   on `/readyz`): clients chatting and streaming throughout see no error and no cut stream;
//! - the control plane stopped (SIGTERM) or killed (SIGKILL) and restarted under load: no
//!   failed request, and the data planes reconnect to it on their own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use modelgw_e2e::front_door::{Nginx, Probe, Prober, ensure_nginx};
use modelgw_e2e::{API_VERSION, Cluster};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

/// The drain period of the restarted data planes: several probe intervals (200 ms) plus an
/// nginx reload, with room to spare on a loaded machine.
const DRAIN_PERIOD: &str = "2s";

/// Pause between two SSE frames of the mock regions: a stream (13 frames) lasts about 3 s,
/// longer than the drain period, so streams are still in flight when a listener closes.
const STREAM_GAP: Duration = Duration::from_millis(250);

/// Pause of a chat client between two requests: a steady client, not a flood — the mock
/// regions advertise 1,000 requests a minute each, and the gateway's quota-aware routing
/// answers 429 itself once they are spent.
const CHAT_PAUSE: Duration = Duration::from_millis(50);

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    chats_ok: u64,
    streams_complete: u64,
    /// One line per failed request or incomplete stream.
    failures: Vec<String>,
}

/// Chat and streaming clients sending to `url` in a loop until stopped.
struct Traffic {
    tally: Arc<Mutex<Tally>>,
    stop: watch::Sender<bool>,
    clients: JoinSet<()>,
}

impl Traffic {
    /// `chatters` clients sending chats, `streamers` streaming, each request on a new
    /// connection to one of `urls` in turn (so that a reload of nginx or a restart never
    /// meets a pooled connection the client reuses at the moment it is closed: the scenario
    /// is about the gateway, not the client's pool). Every stream must have `frames` frames.
    fn start(
        urls: Vec<String>,
        key: &str,
        chatters: usize,
        streamers: usize,
        frames: usize,
    ) -> Traffic {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop, stopped) = watch::channel(false);
        let mut clients = JoinSet::new();
        for i in 0..chatters + streamers {
            let stream = i >= chatters;
            let (urls, key, tally, stopped) =
                (urls.clone(), key.to_owned(), Arc::clone(&tally), stopped.clone());
            clients.spawn(async move {
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let mut n = i;
                while !*stopped.borrow() {
                    let url = &urls[n % urls.len()];
                    n += 1;
                    let outcome = one_request(&http, url, &key, stream, frames).await;
                    {
                        let mut tally = tally.lock().unwrap();
                        match outcome {
                            Ok(()) if stream => tally.streams_complete += 1,
                            Ok(()) => tally.chats_ok += 1,
                            Err(why) => {
                                tally.failures.push(format!("{url} stream={stream}: {why}"));
                            }
                        }
                    }
                    if !stream {
                        tokio::time::sleep(CHAT_PAUSE).await;
                    }
                }
            });
        }
        Traffic { tally, stop, clients }
    }

    fn snapshot(&self) -> (u64, u64, usize) {
        let t = self.tally.lock().unwrap();
        (t.chats_ok, t.streams_complete, t.failures.len())
    }

    /// Waits until `more` further requests of each kind completed (traffic is flowing).
    async fn wait_for_progress(&self, more: u64) {
        let (chats, streams, _) = self.snapshot();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (c, s, _) = self.snapshot();
            if c >= chats + more && s >= streams + more {
                return;
            }
            assert!(Instant::now() < deadline, "traffic stalled: {c} chats, {s} streams");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(mut self) -> Tally {
        let _ = self.stop.send(true);
        while self.clients.join_next().await.is_some() {}
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

async fn one_request(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    stream: bool,
    frames: usize,
) -> Result<(), String> {
    let response = http
        .post(format!(
            "{url}/openai/deployments/gpt-4o-mini/chat/completions?api-version={API_VERSION}"
        ))
        .header("api-key", key)
        .json(&json!({"messages": [{"role": "user", "content": "Hello"}], "stream": stream}))
        .send()
        .await
        .map_err(|e| format!("send: {e:?}"))?;
    let status = response.status();
    if !stream {
        let body = response.text().await.map_err(|e| format!("body: {e}"))?;
        return if status == 200 && body.contains("chat.completion") {
            Ok(())
        } else {
            Err(format!("{status}: {body}"))
        };
    }
    if status != 200 {
        return Err(format!("{status}: {}", response.text().await.unwrap_or_default()));
    }
    let mut body = response.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await {
        text.extend_from_slice(
            &chunk.map_err(|e| format!("stream cut after {} bytes: {e}", text.len()))?,
        );
    }
    let text = String::from_utf8_lossy(&text);
    let got = data_frames(&text);
    if text.ends_with("data: [DONE]\n\n") && got == frames {
        Ok(())
    } else {
        Err(format!("incomplete stream: {got} of {frames} frames: {text:?}"))
    }
}

fn data_frames(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("data: ")).count()
}

/// The frames of one complete stream through `url` (the reference every stream must match).
async fn reference_frames(url: &str, key: &str) -> usize {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let text = http
        .post(format!(
            "{url}/openai/deployments/gpt-4o-mini/chat/completions?api-version={API_VERSION}"
        ))
        .header("api-key", key)
        .json(&json!({"messages": [{"role": "user", "content": "Hello"}], "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    data_frames(&text)
}

async fn wait_ready(url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/readyz")).await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} not ready within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_front_door_loses_no_request_and_cuts_no_stream()
-> anyhow::Result<()> {
    let nginx_bin = match ensure_nginx() {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("SKIPPED a_rolling_restart_behind_front_door: no nginx: {why}");
            return Ok(());
        }
    };
    let mut cluster = Cluster::new(BIN)?;
    cluster.env.push(("MODELGW_DRAIN_PERIOD", DRAIN_PERIOD.to_owned()));
    let key = cluster.standard(2).await?;
    for region in &cluster.regions {
        region.set_stream_gap(STREAM_GAP);
    }
    let origins: Vec<String> = (0..2).map(|i| cluster.gateway_url(i).to_owned()).collect();
    let frames = reference_frames(&origins[0], &key).await;
    let upstreams: Vec<String> =
        origins.iter().map(|o| o.trim_start_matches("http://").to_owned()).collect();
    let nginx = Nginx::start(&nginx_bin, &upstreams).await?;
    let front_door = nginx.url();
    let prober = Prober::start(nginx, origins.clone());

    let traffic = Traffic::start(vec![front_door.clone()], &key, 3, 3, frames);
    traffic.wait_for_progress(3).await;

    for (i, node) in ["dp-0", "dp-1"].into_iter().enumerate() {
        // The data plane at index 0 of the cluster is always the older one of the two.
        let position = cluster
            .data_planes
            .iter()
            .position(|p| p.field("node_id") == node)
            .expect("data plane");
        let mut old = cluster.data_planes.remove(position);
        // One stream straight to this data plane, started just before it is asked to stop: it
        // lasts past the drain period, so it is in flight when the listener closes.
        let direct = {
            let (url, key) = (origins[i].clone(), key.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().no_proxy().build().unwrap();
                one_request(&http, &url, &key, true, frames).await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = Instant::now();
        let status = old.terminate(Duration::from_secs(30)).await?;
        let exited = asked.elapsed();
        assert!(status.success(), "{node} exited with {status}:\n{}", old.logs());
        direct.await?.map_err(|e| anyhow::anyhow!("the stream on {node} when it stopped: {e}"))?;
        let logs = old.logs();
        for phase in [
            "draining: /readyz fails",
            "stopped accepting",
            "all connections drained",
            "left the control plane",
        ] {
            assert!(logs.contains(phase), "{node} logged no {phase:?}:\n{logs}");
        }
        // Front Door moved away because /readyz failed while the data plane still listened, not
        // because its connections were refused.
        let down = prober
            .log
            .lock()
            .unwrap()
            .changes
            .iter()
            .find(|c| c.origin == i && !c.up && c.at > asked)
            .copied()
            .expect("the probe marked the data plane down");
        assert_eq!(down.probe, Probe::NotReady, "{node} was taken out by {down:?}");
        cluster.start_data_plane_at(node, origins[i].trim_start_matches("http://")).await?;
        let restarted = asked.elapsed();
        wait_ready(&origins[i], Duration::from_secs(30)).await;
        prober.wait_for(i, true, Duration::from_secs(10)).await?;
        eprintln!(
            "{node}: exited {exited:?} after SIGTERM, restarted at {restarted:?}, back behind the front door at {:?}",
            asked.elapsed()
        );
        traffic.wait_for_progress(3).await;
    }

    let tally = traffic.finish().await;
    let nginx = prober.stop().await?;
    let cp_logs = cluster.control_plane.as_ref().map(|cp| cp.logs()).unwrap_or_default();
    let clean_departures = cp_logs.matches("data plane closed the stream").count();
    eprintln!(
        "rolling restart: {} chats ok, {} streams complete ({frames} frames each), {} failures; {} nginx reloads",
        tally.chats_ok,
        tally.streams_complete,
        tally.failures.len(),
        nginx.reloads
    );
    assert!(
        tally.failures.is_empty(),
        "{} failed requests, e.g.:\n{}\nnginx:\n{}",
        tally.failures.len(),
        tally.failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n"),
        nginx.error_log()
    );
    assert!(tally.chats_ok >= 20 && tally.streams_complete >= 10, "{tally:?}");
    assert_eq!(nginx.reloads, 4, "each data plane marked down once and up once");
    assert!(
        clean_departures >= 2,
        "each data plane closed its control-plane stream as it left ({clean_departures})"
    );
    Ok(())
}

/// Stops the control plane under load with `stop` (graceful or not), restarts it, and checks
/// that no request failed and that both data planes reconnect and apply a new change.
async fn control_plane_restart_under_load(graceful: bool) -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    let key = cluster.standard(2).await?;
    for region in &cluster.regions {
        region.set_stream_gap(Duration::from_millis(50));
    }
    let urls: Vec<String> = (0..2).map(|i| cluster.gateway_url(i).to_owned()).collect();
    let frames = reference_frames(&urls[0], &key).await;
    let traffic = Traffic::start(urls, &key, 3, 2, frames);
    traffic.wait_for_progress(3).await;

    let mut cp = cluster.control_plane.take().expect("control plane");
    let asked = Instant::now();
    if graceful {
        let status = cp.terminate(Duration::from_secs(15)).await?;
        assert!(status.success(), "control plane exited with {status}:\n{}", cp.logs());
        let logs = cp.logs();
        assert!(logs.contains("closing data-plane streams"), "{logs}");
        assert!(logs.contains("control plane stopped"), "{logs}");
    } else {
        cp.kill().await;
    }
    let stopped = asked.elapsed();
    traffic.wait_for_progress(3).await;
    drop(cp);

    cluster.start_control_plane().await?;
    let admin = cluster.admin();
    let version = admin.config_version().await?;
    let reconnected =
        admin.wait_for_applied(&["dp-0", "dp-1"], version, Duration::from_secs(15)).await?;
    let idx = cluster.start_region("Sweden Central").await?;
    admin.create_endpoint("gpt-4o-mini-swedencentral", &cluster.regions[idx]).await?;
    let changed = admin.config_version().await?;
    admin.wait_for_applied(&["dp-0", "dp-1"], changed, Duration::from_secs(2)).await?;
    traffic.wait_for_progress(3).await;
    let tally = traffic.finish().await;
    eprintln!(
        "control plane {} in {stopped:?}; both data planes reconnected within {reconnected:?} of its ready line; {} chats ok, {} streams complete, {} failures",
        if graceful { "stopped by SIGTERM" } else { "killed" },
        tally.chats_ok,
        tally.streams_complete,
        tally.failures.len()
    );
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:?}",
        &tally.failures[..tally.failures.len().min(5)]
    );
    if graceful {
        assert!(stopped < Duration::from_secs(5), "a graceful stop took {stopped:?}");
        for dp in &cluster.data_planes {
            let logs = dp.logs();
            assert!(
                logs.contains("control plane is shutting down"),
                "the stream was closed by the control plane:\n{logs}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_stopped_gracefully_under_load_loses_no_request() -> anyhow::Result<()> {
    control_plane_restart_under_load(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_killed_under_load_loses_no_request() -> anyhow::Result<()> {
    control_plane_restart_under_load(false).await
}
