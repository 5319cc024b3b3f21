//! The llm section: LLM-shaped streaming load (issue #17, item 2).
//!
//! What an LLM gateway carries is thousands of long streams open at once, each sending a
//! token every few tens of milliseconds. The fixture's fake model ([`crate::model_upstream`],
//! in this process) answers each streamed chat with a first chunk after a think time, then
//! one `chat.completion.chunk` every 20–50 ms, a usage chunk and `[DONE]`; every event carries
//! its send time on a clock this client shares. Per row — **direct** (client → fake model),
//! **nginx** (the baseline proxy, `proxy_buffering off`) and **gateway** (the measured data
//! plane) — N streams are opened, each on its own HTTP/1.1 connection, spread evenly over a
//! ramp of about a second, and read to the end; rows run one after another.
//!
//! Per row:
//! - **CPU per relayed chunk**: the proxy's CPU time (threads' `schedstat`; nginx master +
//!   workers) from before the first stream to after the last ÷ timestamped events delivered;
//! - **memory per open stream**: (proxy RSS sampled 5 × 100 ms apart once every stream has its
//!   first chunk and none has ended, the max) − (RSS just before) ÷ N;
//! - **time to first token** (connect → first event read), p50/p99/max; *added* = a row's
//!   percentile − the direct row's same percentile (percentiles of the two distributions,
//!   not per-stream differences: the streams of two rows are different connections);
//! - **chunk forwarding delay**: read time − the event's send stamp, per event, p50/p99/max;
//!   added the same way as TTFT;
//! - **inter-arrival jitter**: per pair of consecutive events of a stream,
//!   |read gap − send gap|, p99;
//! - streams completed / failed and events delivered: any failed or truncated stream fails the
//!   section (after the table is filled in);
//! - the CPU use of the run: the bench process (client and fake model) + the proxy, ÷ wall
//!   time, in cores; and the whole machine's busy share from `/proc/stat` (other work on the
//!   machine shows there).
//!
//! N is bounded by the open-file limit: the bench process holds two sockets per stream (the
//! client's and the fake model's), the proxy two; the section runs the most the limit allows
//! and says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::fixture::{Fixture, Row};
use crate::model_upstream::Shape;
use crate::procs;

/// The rows, in the order they run.
pub const ROWS: [Row; 3] = [Row::Floor, Row::Nginx, Row::Gateway];

/// File descriptors kept free in the bench process beyond two per stream: the fixture's own
/// sockets and files, and the idle keep-alive connections nginx (256 per worker) and the
/// gateway keep to the fake model after their row.
const FD_RESERVE: u64 = 1024;

/// Streams per nginx worker at most (`worker_connections 16384`, two connections a stream).
const NGINX_STREAMS: usize = 8192;

/// RSS samples once every stream is open, this far apart (the max counts).
const RSS_SAMPLES: usize = 5;
const RSS_EVERY: Duration = Duration::from_millis(100);

/// Errors quoted in the failure message at most.
const QUOTED_ERRORS: usize = 5;

/// What the section runs.
#[derive(Clone, Copy, Debug)]
pub struct LlmSettings {
    /// Streams asked for per row (`--llm-streams`).
    pub streams: usize,
    pub shape: Shape,
    /// Stream `i` of N starts at `i × ramp / N`.
    pub ramp: Duration,
}

impl LlmSettings {
    pub fn new(quick: bool, streams: Option<usize>) -> LlmSettings {
        let (default_streams, chunks, ramp) = if quick {
            (200, 40, Duration::from_millis(300))
        } else {
            (2000, 200, Duration::from_millis(1500))
        };
        LlmSettings {
            streams: streams.unwrap_or(default_streams),
            shape: Shape {
                first_delay: Duration::from_millis(200),
                chunks,
                gap_min: Duration::from_millis(20),
                gap_max: Duration::from_millis(50),
                seed: 17,
            },
            ramp,
        }
    }
}

/// p50, p99 and max of a sample, seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Dist {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    /// Nearest-rank percentiles (as [`crate::stats::percentile`]), sorting once.
    pub fn of(mut values: Vec<f64>) -> Option<Dist> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        Some(Dist { p50: at(0.5), p99: at(0.99), max: values[values.len() - 1] })
    }
}

/// One row's measurements.
#[derive(Clone, Debug)]
pub struct LlmRow {
    pub row: Row,
    pub completed: usize,
    pub failed: usize,
    /// Distinct errors of the failed streams (a few).
    pub errors: Vec<String>,
    /// Timestamped events read by the clients.
    pub events: u64,
    pub wall: f64,
    /// The proxy's CPU time over the row, seconds (`None`: direct, there is no proxy).
    pub proxy_cpu: Option<f64>,
    /// The bench process's CPU time (client + fake model), seconds.
    pub bench_cpu: f64,
    /// Share of the whole machine busy over the row (0–1).
    pub machine_busy: Option<f64>,
    /// Proxy RSS before the streams and with all of them open, KiB.
    pub rss_before_kib: Option<u64>,
    pub rss_open_kib: Option<u64>,
    pub ttft: Option<Dist>,
    pub delay: Option<Dist>,
    pub jitter: Option<Dist>,
}

impl LlmRow {
    pub fn cpu_per_chunk(&self) -> Option<f64> {
        let cpu = self.proxy_cpu?;
        (self.events > 0).then(|| cpu / self.events as f64)
    }

    pub fn kib_per_stream(&self, streams: usize) -> Option<f64> {
        let (before, open) = (self.rss_before_kib?, self.rss_open_kib?);
        (streams > 0).then(|| (open as f64 - before as f64) / streams as f64)
    }

    /// Cores busy with the bench process and the proxy over the row.
    pub fn cores_used(&self) -> Option<f64> {
        (self.wall > 0.0).then(|| (self.bench_cpu + self.proxy_cpu.unwrap_or(0.0)) / self.wall)
    }
}

/// The section's results.
#[derive(Clone, Debug)]
pub struct LlmResults {
    /// Streams asked for, and run (fewer when the open-file limit cannot hold them).
    pub requested: usize,
    pub streams: usize,
    /// The soft open-file limit of the bench process (its children inherit it).
    pub fd_limit: u64,
    pub shape: Shape,
    pub ramp: Duration,
    pub rows: Vec<LlmRow>,
}

impl LlmResults {
    pub fn row(&self, row: Row) -> Option<&LlmRow> {
        self.rows.iter().find(|r| r.row == row)
    }

    /// `f` of `row` − `f` of the direct row.
    pub fn added(&self, row: Row, f: fn(&LlmRow) -> Option<f64>) -> Option<f64> {
        Some(f(self.row(row)?)? - f(self.row(Row::Floor)?)?)
    }
}

/// The soft limit in the text of `/proc/self/limits` (`unlimited`: `u64::MAX`).
pub fn parse_open_files_limit(limits: &str) -> anyhow::Result<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no 'Max open files' line")?;
    let soft = line["Max open files".len()..].split_whitespace().next().context("no soft limit")?;
    if soft == "unlimited" {
        return Ok(u64::MAX);
    }
    soft.parse().context("soft open-file limit")
}

/// The most streams the open-file limit holds, and the limit.
fn stream_capacity() -> anyhow::Result<(usize, u64)> {
    let limit = parse_open_files_limit(&std::fs::read_to_string("/proc/self/limits")?)?;
    let open = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    let free = limit.saturating_sub(open).saturating_sub(FD_RESERVE);
    Ok((usize::try_from(free / 2).unwrap_or(usize::MAX).min(NGINX_STREAMS), limit))
}

/// The timestamp (`"t"`, ns) and index (`"n"`) of one SSE event's text (without the blank
/// line); `None` when it has none (e.g. `[DONE]`).
pub fn parse_stamp(event: &[u8]) -> Option<(u64, u64)> {
    let number = |key: &[u8]| -> Option<u64> {
        let at = event.windows(key.len()).position(|w| w == key)? + key.len();
        let digits = event[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&event[at..at + digits]).ok()?.parse().ok()
    };
    Some((number(b"\"n\":")?, number(b"\"t\":")?))
}

/// Splits complete SSE events (ending in a blank line) off the front of `buf`.
pub fn take_events(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let rest = buf.split_off(end + 2);
        let mut event = std::mem::replace(buf, rest);
        event.truncate(end);
        events.push(event);
    }
    events
}

/// |read gap − send gap| of consecutive events, seconds; `stamps`: (send, read) ns.
pub fn jitters(stamps: &[(u64, u64)]) -> Vec<f64> {
    stamps
        .windows(2)
        .map(|w| {
            let sent = w[1].0 as f64 - w[0].0 as f64;
            let read = w[1].1 as f64 - w[0].1 as f64;
            (read - sent).abs() / 1e9
        })
        .collect()
}

/// What one stream saw.
struct Record {
    ttft: f64,
    /// (send stamp, read time) ns since the fake model's base, per event.
    stamps: Vec<(u64, u64)>,
}

/// Progress of a row's streams, for the memory sample.
#[derive(Clone, Copy, Default)]
struct Progress {
    /// Streams that read their first event.
    opened: usize,
    /// Streams that ended (either way).
    ended: usize,
}

/// Where one row's streams go.
struct Call {
    authority: String,
    path: String,
    key: String,
    base: Instant,
    shape: Shape,
}

fn elapsed_ns(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Connects on a connection of its own and sends `body` to the row; the connection lives as
/// long as the guard.
async fn open(
    call: &Call,
    body: Bytes,
) -> anyhow::Result<(hyper::Response<hyper::body::Incoming>, AbortOnDrop)> {
    let tcp = tokio::net::TcpStream::connect(&call.authority).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let stop = AbortOnDrop(tokio::spawn(conn));
    let req = hyper::Request::post(&call.path)
        .header("host", &call.authority)
        .header("content-type", "application/json")
        .header("api-key", &call.key)
        .body(Full::new(body))?;
    let res = sender.send_request(req).await.context("request")?;
    Ok((res, stop))
}

/// One stream, from connect to `[DONE]` and the end of the body.
async fn one_stream(
    i: usize,
    call: &Call,
    progress: &watch::Sender<Progress>,
) -> anyhow::Result<(Record, usize)> {
    let mut events_read = 0;
    let t0 = Instant::now();
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"Write a long answer, one token at a time."}}],"max_tokens":{},"stream":true,"stream_options":{{"include_usage":true}},"user":"llm-{i}"}}"#,
        call.shape.chunks
    );
    let (res, _stop) = open(call, Bytes::from(body)).await?;
    if res.status() != 200 {
        let status = res.status();
        let text = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!("answered {status}: {}", String::from_utf8_lossy(&text[..text.len().min(300)]));
    }
    let mut body = res.into_body();
    let expected = call.shape.events();
    let mut stamps = Vec::with_capacity(expected);
    let mut ttft = None;
    let mut done = false;
    let mut buf = Vec::with_capacity(4096);
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("body after {} events", stamps.len()))?;
        let read = elapsed_ns(call.base);
        let Ok(data) = frame.into_data() else { continue };
        buf.extend_from_slice(&data);
        for event in take_events(&mut buf) {
            ensure!(!done, "an event after [DONE]");
            if event == b"data: [DONE]" {
                done = true;
                continue;
            }
            let (n, sent) = parse_stamp(&event).with_context(|| {
                format!("an event without a stamp: {}", String::from_utf8_lossy(&event))
            })?;
            ensure!(n as usize == stamps.len(), "event {n} where {} was due", stamps.len());
            if ttft.is_none() {
                ttft = Some(t0.elapsed().as_secs_f64());
                progress.send_modify(|p| p.opened += 1);
            }
            stamps.push((sent, read));
            events_read += 1;
        }
    }
    ensure!(done, "truncated: no [DONE] after {} of {expected} events", stamps.len());
    ensure!(stamps.len() == expected, "{} of {expected} events", stamps.len());
    ensure!(buf.is_empty(), "{} bytes after the last event", buf.len());
    let ttft = ttft.context("no event")?;
    Ok((Record { ttft, stamps }, events_read))
}

/// Aborts the connection task when the stream ends.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// (busy, total) jiffies of the whole machine, from the first line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn machine_jiffies() -> Option<(u64, u64)> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Samples the proxy's RSS once every stream is open and none has ended.
async fn sample_open_rss(
    pids: &[u32],
    n: usize,
    mut progress: watch::Receiver<Progress>,
) -> anyhow::Result<u64> {
    let p = *progress.wait_for(|p| p.opened >= n || p.ended > 0).await?;
    ensure!(
        p.opened >= n && p.ended == 0,
        "a stream ended before all {n} were open ({} open, {} ended): no moment with all open",
        p.opened,
        p.ended
    );
    let mut max = 0;
    for _ in 0..RSS_SAMPLES {
        if progress.borrow().ended > 0 {
            break;
        }
        max = max.max(procs::total_rss_kib(pids)?);
        tokio::time::sleep(RSS_EVERY).await;
    }
    ensure!(max > 0, "no RSS sample while all {n} streams were open");
    Ok(max)
}

/// One stream through the row up to its first event, then dropped: what a data plane in
/// steady state has already had. A data plane holds requests to an endpoint whose quota it
/// has not yet read to a few at a time until the endpoint's first answer (quota-aware routing,
/// ARCHITECTURE.md): without this, the first streams of a cold data plane wait for the fake
/// model's first token to be admitted, and the row would measure that cold start.
async fn warm_up(call: &Call) -> anyhow::Result<()> {
    let body = r#"{"messages":[{"role":"user","content":"Warm up."}],"max_tokens":1,"stream":true,"user":"llm-999999"}"#;
    let (res, _stop) = open(call, Bytes::from_static(body.as_bytes())).await?;
    ensure!(res.status() == 200, "the warm-up stream answered {}", res.status());
    let mut body = res.into_body();
    while let Some(frame) = body.frame().await {
        if frame.context("warm-up stream")?.data_ref().is_some_and(|d| !d.is_empty()) {
            return Ok(());
        }
    }
    bail!("the warm-up stream ended without an event")
}

/// N streams through one row.
async fn run_row(
    fx: &Fixture,
    row: Row,
    n: usize,
    settings: &LlmSettings,
) -> anyhow::Result<LlmRow> {
    let (url, key) = fx.llm_target(row)?;
    let url = url::Url::parse(&url)?;
    let call = Arc::new(Call {
        authority: format!("{}:{}", url.host_str().context("host")?, url.port().context("port")?),
        path: format!("{}?{}", url.path(), url.query().unwrap_or("")),
        key,
        base: fx.model.base(),
        shape: settings.shape,
    });
    let pids = if row == Row::Floor { Vec::new() } else { fx.pids(row) };
    warm_up(&call).await.with_context(|| format!("{}: warm-up", row.name()))?;
    let (progress, watcher) = watch::channel(Progress::default());
    let progress = Arc::new(progress);
    // After the load section the allocator still returns freed pages for a few seconds: a
    // sample taken while it does would count that as memory the streams did not use.
    let rss_before =
        if pids.is_empty() { None } else { Some(procs::settled_rss_kib(&pids).await?) };
    let answers_before = fx.model.answers();
    let proxy_cpu0 = procs::cpu_ns_of(&pids);
    let bench_cpu0 = procs::cpu_ns(std::process::id())?;
    let machine0 = machine_jiffies();
    let started = Instant::now();
    let events = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (call, progress, events) = (call.clone(), progress.clone(), events.clone());
            let at = started + settings.ramp.mul_f64(i as f64 / n as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let r = one_stream(i, &call, &progress).await;
                if let Ok((_, read)) = &r {
                    events.fetch_add(*read, Ordering::Relaxed);
                }
                progress.send_modify(|p| p.ended += 1);
                r.map(|(record, _)| record)
            })
        })
        .collect();
    let rss_open = if pids.is_empty() {
        None
    } else {
        Some(
            sample_open_rss(&pids, n, watcher)
                .await
                .with_context(|| format!("{}: memory", row.name())),
        )
    };
    let bound = settings.ramp
        + settings.shape.first_delay
        + settings.shape.gap_max * u32::try_from(settings.shape.chunks).unwrap_or(u32::MAX)
        + Duration::from_secs(60);
    let joined = tokio::time::timeout(bound, futures::future::join_all(tasks))
        .await
        .with_context(|| format!("{}: the streams did not end within {bound:?}", row.name()))?;
    let wall = started.elapsed().as_secs_f64();
    let proxy_cpu = (!pids.is_empty()).then(|| (procs::cpu_ns_of(&pids) - proxy_cpu0) as f64 / 1e9);
    let bench_cpu = (procs::cpu_ns(std::process::id())? - bench_cpu0) as f64 / 1e9;
    let machine_busy = match (machine0, machine_jiffies()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0) as f64 / (t1 - t0) as f64),
        _ => None,
    };
    let mut errors = Vec::new();
    let mut records = Vec::new();
    for r in joined {
        match r.context("stream task") {
            Ok(Ok(rec)) => records.push(rec),
            Ok(Err(e)) | Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let failed = errors.len();
    let mut rss_open_kib = None;
    match rss_open {
        Some(Ok(kib)) => rss_open_kib = Some(kib),
        Some(Err(e)) => errors.push(format!("{e:#}")),
        None => {}
    }
    let answers = fx.model.answers() - answers_before;
    if answers != n as u64 {
        errors.push(format!("the fake model started {answers} answers for {n} streams"));
    }
    errors.sort();
    errors.dedup();
    errors.truncate(QUOTED_ERRORS);
    let ttft = Dist::of(records.iter().map(|r| r.ttft).collect());
    let delay = Dist::of(
        records
            .iter()
            .flat_map(|r| r.stamps.iter().map(|(s, rd)| (*rd as f64 - *s as f64) / 1e9))
            .collect(),
    );
    let jitter = Dist::of(records.iter().flat_map(|r| jitters(&r.stamps)).collect());
    Ok(LlmRow {
        row,
        completed: records.len(),
        failed,
        errors,
        events: events.load(Ordering::Relaxed) as u64,
        wall,
        proxy_cpu,
        bench_cpu,
        machine_busy,
        rss_before_kib: rss_before,
        rss_open_kib,
        ttft,
        delay,
        jitter,
    })
}

/// Every row in turn; fails (with the results filled in) when any stream failed or a
/// measurement could not be made.
pub async fn run(fx: &Fixture, settings: &LlmSettings) -> (LlmResults, anyhow::Result<()>) {
    let mut results = LlmResults {
        requested: settings.streams,
        streams: settings.streams,
        fd_limit: 0,
        shape: settings.shape,
        ramp: settings.ramp,
        rows: Vec::new(),
    };
    let outcome = async {
        ensure!(settings.streams > 0, "--llm-streams must be at least 1");
        let (capacity, limit) = stream_capacity()?;
        results.fd_limit = limit;
        results.streams = settings.streams.min(capacity);
        if results.streams < settings.streams {
            eprintln!(
                "  llm: the open-file limit ({limit}) holds {} streams, not {}: running {}",
                capacity, settings.streams, results.streams
            );
        }
        fx.model.set_shape(settings.shape);
        for row in ROWS {
            let r = run_row(fx, row, results.streams, settings).await?;
            eprintln!(
                "  llm {:>7}: {} ok, {} failed, {} events in {:.1} s; TTFT p99 {}; delay p99 {}; CPU/chunk {}; {} per stream",
                row.name(),
                r.completed,
                r.failed,
                r.events,
                r.wall,
                crate::stats::fmt_opt_secs(r.ttft.map(|d| d.p99)),
                crate::stats::fmt_opt_secs(r.delay.map(|d| d.p99)),
                crate::stats::fmt_opt_secs(r.cpu_per_chunk()),
                r.kib_per_stream(results.streams).map_or("—".into(), |k| format!("{k:.1} KiB")),
            );
            results.rows.push(r);
            // Let the ended streams' connections close before the next row.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let bad: Vec<String> = results
            .rows
            .iter()
            .filter(|r| !r.errors.is_empty())
            .map(|r| format!("{}: {} of {} streams failed: {}", r.row.name(), r.failed, results.streams, r.errors.join("; ")))
            .collect();
        ensure!(bad.is_empty(), "{}", bad.join(" | "));
        Ok(())
    }
    .await;
    (results, outcome)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model_upstream::event;

    #[test]
    fn stamps_come_out_of_the_fake_models_events() {
        let text = event(3, 5, 10, 1_234_567_890);
        let mut buf = text.into_bytes();
        buf.extend_from_slice(b"data: [DONE]\n\ndata: {\"n\":");
        let events = take_events(&mut buf);
        assert_eq!(events.len(), 2);
        assert_eq!(parse_stamp(&events[0]), Some((5, 1_234_567_890)));
        assert_eq!(events[1], b"data: [DONE]");
        assert_eq!(parse_stamp(&events[1]), None);
        // The incomplete event stays for the next read.
        assert_eq!(buf, b"data: {\"n\":");
        // The usage chunk is stamped too; its token counts do not look like a stamp.
        assert_eq!(parse_stamp(event(3, 10, 10, 7).trim_end().as_bytes()), Some((10, 7)));
    }

    #[test]
    fn distributions_use_nearest_rank() {
        let d = Dist::of((1..=200).map(f64::from).collect()).unwrap();
        assert_eq!(d, Dist { p50: 100.0, p99: 198.0, max: 200.0 });
        assert_eq!(Dist::of(vec![]), None);
        assert_eq!(Dist::of(vec![3.0]).unwrap(), Dist { p50: 3.0, p99: 3.0, max: 3.0 });
    }

    #[test]
    fn jitter_is_the_change_of_a_gap() {
        // Sent 30 ms apart; read 31 ms, then 29 ms apart.
        let j = jitters(&[(0, 1_000_000), (30_000_000, 32_000_000), (60_000_000, 61_000_000)]);
        assert_eq!(j.len(), 2);
        assert!((j[0] - 0.001).abs() < 1e-12 && (j[1] - 0.001).abs() < 1e-12, "{j:?}");
        assert!(jitters(&[(1, 2)]).is_empty());
    }

    #[test]
    fn per_row_figures() {
        let mut r = LlmRow {
            row: Row::Gateway,
            completed: 10,
            failed: 0,
            errors: vec![],
            events: 1000,
            wall: 2.0,
            proxy_cpu: Some(0.5),
            bench_cpu: 1.5,
            machine_busy: None,
            rss_before_kib: Some(10_000),
            rss_open_kib: Some(10_240),
            ttft: None,
            delay: None,
            jitter: None,
        };
        assert_eq!(r.cpu_per_chunk(), Some(0.0005));
        assert_eq!(r.kib_per_stream(10), Some(24.0));
        assert_eq!(r.cores_used(), Some(1.0));
        r.proxy_cpu = None;
        assert_eq!(r.cpu_per_chunk(), None);
        let floor = LlmRow {
            row: Row::Floor,
            ttft: Some(Dist { p50: 0.2, p99: 0.25, max: 0.3 }),
            ..r.clone()
        };
        let gw = LlmRow { ttft: Some(Dist { p50: 0.2005, p99: 0.2512, max: 0.3 }), ..r };
        let res = LlmResults {
            requested: 10,
            streams: 10,
            fd_limit: 1024,
            shape: LlmSettings::new(true, None).shape,
            ramp: Duration::ZERO,
            rows: vec![floor, gw],
        };
        let added = res.added(Row::Gateway, |r| r.ttft.map(|d| d.p99)).unwrap();
        assert!((added - 0.0012).abs() < 1e-9, "{added}");
        assert_eq!(res.added(Row::Nginx, |r| r.ttft.map(|d| d.p99)), None);
    }

    #[test]
    fn the_open_file_limit_is_read_from_proc() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63432                63432                processes \n\
                    Max open files            20000                20000                files     \n";
        assert_eq!(parse_open_files_limit(text).unwrap(), 20000);
        let unl = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unl).unwrap(), u64::MAX);
        assert!(parse_open_files_limit("nothing").is_err());
    }

    #[test]
    fn machine_busy_from_proc_stat() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_proc_stat(text), Some((150, 1000)));
    }
}
