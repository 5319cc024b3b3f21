//! The flood section: an upstream that streams one SSE event of 64 MiB with no blank line
//! (`modelgw mock-azure`'s `unbounded_event` fault), through a data plane with ONE serving
//! thread, while ordinary chats share that thread (issue #11: such an event once cost ~11 s of
//! CPU and held every request on its thread for ~2 s).
//!
//! One mock region serves two deployments, `chat` (normal answers) and `flood` (the fault);
//! gateway `chat` has one endpoint on the first, and each case's gateway `flood-<case>` one
//! endpoint per flood on the second (a flood marks its endpoint failed, fleet-wide, so each
//! flood gets a fresh one). For each SSE
//! event cap (the default, and a raised one so that each flood lasts longer), a fresh data
//! plane (`MODELGW_WORKERS=1`) is measured in three phases:
//!
//! 1. **baseline**: sequential chats on one keep-alive connection, p50/p99;
//! 2. **floods alone**: a few floods one after another; the data plane's CPU time (utime+stime
//!    from `/proc/<pid>/stat`, and the threads' `schedstat` for sub-tick resolution) per flood,
//!    its peak RSS (`VmHWM`) and the time until the client sees the SSE error event;
//! 3. **floods with chats**: floods back to back while the same sequential chats run on their
//!    own connection, p50/p99 of those chats.
//!
//! Everything listens on 127.0.0.1; every phase is bounded in count and time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt as _;
use modelgw_e2e::{API_VERSION, Admin};
use serde_json::json;

use crate::fixture::{REQUEST_BODY, STREAM_REQUEST_BODY, random_token, start_control_plane};
use crate::procs::{self, Logs, Modelgw};
use crate::stats::percentile;

/// The event's size: the 64 MiB.
pub const FLOOD_BYTES: u64 = 64 * 1024 * 1024;

/// The raised cap of the second case: a flood then reads 32 MiB before it is cut, so it
/// lasts long enough for many chats to share the thread with it.
pub const RAISED_CAP: u64 = 32 * 1024 * 1024;

/// Floods measured alone (CPU, peak RSS, time to the error event).
const FLOODS_ALONE: usize = 3;

/// Most floods sent back to back while the chats run.
const FLOODS_WITH_CHATS: usize = 96;

/// No flood of phase 3 starts after this long.
const FLOOD_PHASE: Duration = Duration::from_secs(5);

/// Longest one flood request may take (the data plane before issue #11 needed ~11 s).
const FLOOD_TIMEOUT: Duration = Duration::from_secs(60);

/// Chats before anything is measured (connections, allocator, pools).
const WARMUP_CHATS: usize = 200;

/// Chats of the baseline phase.
const BASELINE_CHATS: usize = 500;

/// The mock's two deployments.
const CHAT: &str = "chat";
const FLOOD: &str = "flood";

/// One cap's measurements.
#[derive(Clone, Debug)]
pub struct FloodCase {
    /// `MODELGW_MAX_SSE_EVENT_BYTES`; `None`: the data plane's default.
    pub cap: Option<u64>,
    /// Chat latencies without a flood, seconds.
    pub baseline: Vec<f64>,
    /// Data-plane CPU per flood (phase 2), seconds: from schedstat (ns) and from
    /// utime+stime (clock ticks).
    pub cpu_per_flood: f64,
    pub cpu_ticks_per_flood: f64,
    /// `VmHWM` before the floods and after phase 2, KiB.
    pub hwm_before_kib: u64,
    pub hwm_after_kib: u64,
    /// Time from sending each flood request to the client seeing the SSE error event (phase
    /// 2 and 3), seconds.
    pub to_error: Vec<f64>,
    /// Bytes the client received per flood (at most).
    pub max_flood_bytes: usize,
    /// Floods that ended without the error event.
    pub without_error_event: usize,
    /// Chat latencies while floods ran (phase 3), seconds.
    pub during: Vec<f64>,
    /// Floods of phase 3.
    pub floods_during: usize,
    /// Chats of phases 1 and 3 not answered 200.
    pub chat_failures: usize,
}

impl FloodCase {
    pub fn cap_label(&self) -> String {
        match self.cap {
            None => "default (1 MiB)".to_owned(),
            Some(b) => format!("{} MiB", b / (1024 * 1024)),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FloodResults {
    pub cases: Vec<FloodCase>,
}

/// The keys and URLs of one case.
struct Setup {
    chat_key: String,
    /// The case's own flood gateway: a flood fails its endpoint fleet-wide (the control plane
    /// shares health), so each case gets fresh ones.
    flood_gateway: String,
    flood_key: String,
    mock_url: String,
}

pub async fn run(bin: &Path, dir: &Path) -> anyhow::Result<FloodResults> {
    let mock_key = random_token("azkey-flood-")?;
    let mock = procs::spawn_modelgw(
        bin,
        "mock-azure",
        &["mock-azure", "--region", "East US", "--deployment", CHAT, "--deployment", FLOOD],
        &[("MODELGW_MOCK_API_KEY", mock_key.clone())],
        Logs::File(&dir.join("flood-mock.log")),
    )
    .await?;
    let mock_url = mock.field("url")?.to_owned();
    let token = random_token("mgwadm_flood_")?;
    let (control_plane, admin) = start_control_plane(
        bin,
        dir,
        "flood.db",
        &token,
        &[],
        Logs::File(&dir.join("flood-control-plane.log")),
    )
    .await?;
    let endpoint = |name: String, deployment: &str| {
        json!({
            "name": name,
            "platform": "azure_openai",
            "endpoint": mock_url,
            "deployment": deployment,
            "model_name": "gpt-4o-mini",
            "model_version": "2024-07-18",
            "region": "East US",
            "api_key": mock_key,
        })
    };
    let chat_endpoint = create_endpoint(&admin, endpoint("chat".to_owned(), CHAT)).await?;
    let chat_gateway = admin.create_gateway(CHAT, &[chat_endpoint]).await?;
    let chat_key = admin.create_key(&chat_gateway).await?;
    let grpc = control_plane.field("grpc")?.to_owned();
    let mut results = FloodResults::default();
    for (i, cap) in [None, Some(RAISED_CAP)].into_iter().enumerate() {
        let mut flood_endpoints = Vec::new();
        for j in 0..FLOODS_ALONE + FLOODS_WITH_CHATS {
            let name = format!("flood-{i}-{j}");
            flood_endpoints.push(create_endpoint(&admin, endpoint(name, FLOOD)).await?);
        }
        let flood_gateway = format!("{FLOOD}-{i}");
        let gateway_id = admin.create_gateway(&flood_gateway, &flood_endpoints).await?;
        let setup = Setup {
            chat_key: chat_key.clone(),
            flood_key: admin.create_key(&gateway_id).await?,
            flood_gateway,
            mock_url: mock_url.clone(),
        };
        let node_id = format!("flood-dp-{i}");
        let mut env = vec![("MODELGW_WORKERS", "1".to_owned())];
        if let Some(cap) = cap {
            env.push(("MODELGW_MAX_SSE_EVENT_BYTES", cap.to_string()));
        }
        let mut data_plane = crate::fixture::start_data_plane(
            bin,
            &grpc,
            &node_id,
            &env,
            Logs::File(&dir.join(format!("{node_id}.log"))),
        )
        .await?;
        let version = admin.config_version().await?;
        admin.wait_for_applied(&[node_id.as_str()], version, Duration::from_secs(15)).await?;
        eprintln!("flood: SSE event cap {}", cap.map_or("default".to_owned(), |c| c.to_string()));
        let case = measure(&setup, &data_plane, cap).await;
        data_plane.proc.stop(Duration::from_secs(5)).await;
        results.cases.push(case.with_context(|| format!("cap {cap:?}"))?);
    }
    drop((mock, control_plane));
    Ok(results)
}

async fn create_endpoint(admin: &Admin, body: serde_json::Value) -> anyhow::Result<String> {
    let (status, v) = admin.call("POST", "/api/v1/inference-endpoints", Some(body)).await?;
    ensure!(status == 201, "creating an endpoint: {status} {v}");
    Ok(v["id"].as_str().context("endpoint id")?.to_owned())
}

async fn measure(setup: &Setup, dp: &Modelgw, cap: Option<u64>) -> anyhow::Result<FloodCase> {
    let base = dp.field("gateway")?.to_owned();
    let pid = dp.proc.pid();
    let chat_url =
        format!("{base}/openai/deployments/{CHAT}/chat/completions?api-version={API_VERSION}");
    let flood_url = format!(
        "{base}/openai/deployments/{}/chat/completions?api-version={API_VERSION}",
        setup.flood_gateway
    );
    // One connection for the chats, others for the floods: the same serving thread serves all.
    let chats = reqwest::Client::builder().http1_only().pool_max_idle_per_host(1).build()?;
    let floods = reqwest::Client::builder().http1_only().build()?;
    script_floods(&floods, &setup.mock_url, FLOODS_ALONE + FLOODS_WITH_CHATS).await?;

    let mut failures = 0;
    chat_loop(&chats, &chat_url, &setup.chat_key, WARMUP_CHATS, None, &mut failures).await?;
    failures = 0;
    let baseline =
        chat_loop(&chats, &chat_url, &setup.chat_key, BASELINE_CHATS, None, &mut failures).await?;

    // Phase 2: floods alone.
    let hwm_before_kib = procs::hwm_kib(pid)?;
    let (ticks0, ns0) = (procs::cpu_ticks(&[pid]), procs::cpu_ns(pid)?);
    let mut to_error = Vec::new();
    let mut max_flood_bytes = 0;
    let mut without_error_event = 0;
    for _ in 0..FLOODS_ALONE {
        let flood = one_flood(&floods, &flood_url, &setup.flood_key).await?;
        account(&flood, &mut to_error, &mut max_flood_bytes, &mut without_error_event);
    }
    let (ticks1, ns1) = (procs::cpu_ticks(&[pid]), procs::cpu_ns(pid)?);
    let hwm_after_kib = procs::hwm_kib(pid)?;
    let ticks_per_sec = procs::clock_ticks_per_sec() as f64;

    // Phase 3: floods back to back while chats run.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let flood_task = {
        let (floods, url, key) = (floods.clone(), flood_url.clone(), setup.flood_key.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut out = Vec::new();
            for _ in 0..FLOODS_WITH_CHATS {
                if started.elapsed() > FLOOD_PHASE {
                    break;
                }
                out.push(one_flood(&floods, &url, &key).await);
            }
            let _ = done_tx.send(true);
            out
        })
    };
    let during =
        chat_loop(&chats, &chat_url, &setup.chat_key, usize::MAX, Some(done_rx), &mut failures)
            .await?;
    let phase3 = flood_task.await.context("flood task")?;
    let floods_during = phase3.len();
    for flood in phase3 {
        account(&flood?, &mut to_error, &mut max_flood_bytes, &mut without_error_event);
    }
    Ok(FloodCase {
        cap,
        baseline,
        cpu_per_flood: (ns1 - ns0) as f64 / 1e9 / FLOODS_ALONE as f64,
        cpu_ticks_per_flood: (ticks1 - ticks0) as f64 / ticks_per_sec / FLOODS_ALONE as f64,
        hwm_before_kib,
        hwm_after_kib,
        to_error,
        max_flood_bytes,
        without_error_event,
        during,
        floods_during,
        chat_failures: failures,
    })
}

fn account(flood: &Flood, to_error: &mut Vec<f64>, max_bytes: &mut usize, without: &mut usize) {
    *max_bytes = (*max_bytes).max(flood.bytes);
    match flood.to_error {
        Some(t) => to_error.push(t.as_secs_f64()),
        None => *without += 1,
    }
}

/// Scripts `times` floods on the mock's `flood` deployment (and nothing else).
async fn script_floods(
    client: &reqwest::Client,
    mock_url: &str,
    times: usize,
) -> anyhow::Result<()> {
    let res = client.post(format!("{mock_url}/_mock/reset")).send().await?;
    ensure!(res.status().is_success(), "resetting the mock: {}", res.status());
    let res = client
        .post(format!("{mock_url}/_mock/faults/{FLOOD}"))
        .json(&json!({"kind": "unbounded_event", "bytes": FLOOD_BYTES, "times": times}))
        .send()
        .await?;
    ensure!(res.status().is_success(), "scripting the flood: {}", res.status());
    Ok(())
}

/// Sequential chats: `n`, or until `until` turns true; their latencies in seconds.
async fn chat_loop(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    n: usize,
    mut until: Option<tokio::sync::watch::Receiver<bool>>,
    failures: &mut usize,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..n {
        if until.as_mut().is_some_and(|rx| *rx.borrow_and_update()) {
            break;
        }
        let started = Instant::now();
        let res = client
            .post(url)
            .header("content-type", "application/json")
            .header("api-key", key)
            .body(REQUEST_BODY)
            .send()
            .await?;
        let ok = res.status() == 200;
        res.bytes().await?;
        out.push(started.elapsed().as_secs_f64());
        if !ok {
            *failures += 1;
        }
        ensure!(out.len() < 1_000_000, "chat loop without end");
    }
    Ok(out)
}

/// One flood as the client saw it.
struct Flood {
    /// From sending the request to the SSE error event; `None` when none came.
    to_error: Option<Duration>,
    bytes: usize,
}

/// Sends one streamed request to the flooding deployment and reads until the SSE error event
/// (or the end of the stream).
async fn one_flood(client: &reqwest::Client, url: &str, key: &str) -> anyhow::Result<Flood> {
    let started = Instant::now();
    let read = async {
        let res = client
            .post(url)
            .header("content-type", "application/json")
            .header("api-key", key)
            .body(STREAM_REQUEST_BODY)
            .send()
            .await?;
        if res.status() != 200 {
            bail!("the flood request answered {}", res.status());
        }
        let mut stream = res.bytes_stream();
        // Only the tail is kept: the error event is the last thing sent.
        let mut tail: Vec<u8> = Vec::new();
        let mut bytes = 0;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            bytes += chunk.len();
            tail.extend_from_slice(&chunk);
            if tail.len() > 8192 {
                tail.drain(..tail.len() - 4096);
            }
            if find(&tail, b"\"error\"").is_some() {
                return Ok(Flood { to_error: Some(started.elapsed()), bytes });
            }
        }
        Ok(Flood { to_error: None, bytes })
    };
    tokio::time::timeout(FLOOD_TIMEOUT, read)
        .await
        .with_context(|| format!("a flood took longer than {FLOOD_TIMEOUT:?}"))?
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// p50 and p99 of latencies, seconds.
pub fn p50_p99(values: &[f64]) -> (Option<f64>, Option<f64>) {
    (percentile(values, 0.5), percentile(values, 0.99))
}
