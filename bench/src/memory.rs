//! The memory section: resident memory of the proxy idle, and per open stream.
//!
//! LLM answers stream for seconds to minutes, so a gateway holds many streams open at once:
//! what each costs in memory bounds how many one replica can carry. 1,000 clients each open
//! their own HTTP/1.1 connection and start a streamed request to the `slow` deployment (first
//! SSE frame, then silence for a long while); once every client has its first frame, the
//! proxy's RSS is sampled a few times (the max counts) and the streams are dropped.
//! Per stream = (RSS with 1,000 open − RSS just before) / 1,000. nginx (master + workers)
//! is measured the same way for comparison.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::fixture::{Fixture, Row, STREAM_REQUEST_BODY, Target};
use crate::procs;

/// Connections being set up at once (the rest wait), so no listen backlog overflows.
const CONNECT_CONCURRENCY: usize = 64;

/// Idle RSS of the proxies, KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Idle {
    pub gateway_kib: u64,
    pub nginx_kib: u64,
}

/// Idle RSS and what open streams cost, per proxy.
#[derive(Clone, Debug, Default)]
pub struct MemoryResults {
    /// Configured, before any load.
    pub idle_before_load: Option<Idle>,
    /// After the load section, when it ran.
    pub idle_after_load: Option<Idle>,
    pub streams: Vec<StreamCost>,
}

#[derive(Clone, Copy, Debug)]
pub struct StreamCost {
    pub row: Row,
    pub streams: usize,
    pub before_kib: u64,
    pub open_kib: u64,
}

impl StreamCost {
    /// KiB per open stream (negative if the allocator gave memory back meanwhile).
    pub fn per_stream_kib(&self) -> f64 {
        (self.open_kib as f64 - self.before_kib as f64) / self.streams as f64
    }
}

pub fn idle(fixture: &Fixture) -> anyhow::Result<Idle> {
    Ok(Idle {
        gateway_kib: procs::total_rss_kib(&fixture.pids(Row::Gateway))?,
        nginx_kib: procs::total_rss_kib(&fixture.pids(Row::Nginx))?,
    })
}

/// Opens one stream and returns its connection once the first SSE frame arrived.
async fn open_stream(
    authority: String,
    request: Arc<Vec<u8>>,
    gate: Arc<Semaphore>,
) -> anyhow::Result<TcpStream> {
    let mut conn = {
        let _permit = gate.acquire().await?;
        let mut conn = TcpStream::connect(&authority).await?;
        conn.write_all(&request).await?;
        conn
    };
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let n = conn.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed before the first frame: {}", lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head_end) = find(&buf, b"\r\n\r\n") {
            ensure!(buf.starts_with(b"HTTP/1.1 200"), "answered {}", lossy(&buf));
            if find(&buf[head_end..], b"data: ").is_some() {
                return Ok(conn);
            }
        }
        ensure!(buf.len() < 64 * 1024, "no first frame in 64 KiB");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()
}

/// The raw HTTP/1.1 request of one open stream.
fn request(t: &Target) -> anyhow::Result<Vec<u8>> {
    Ok(format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\napi-key: {}\r\n\
         content-length: {}\r\n\r\n{STREAM_REQUEST_BODY}",
        t.slow_path()?,
        t.authority()?,
        t.slow_key,
        STREAM_REQUEST_BODY.len()
    )
    .into_bytes())
}

/// Opens `n` streams through `row`, samples its RSS, drops them.
pub async fn stream_cost(fixture: &Fixture, row: Row, n: usize) -> anyhow::Result<StreamCost> {
    let target = fixture.target(row);
    let pids = fixture.pids(row);
    // Settled: after the load section the allocator is still returning freed pages.
    let before_kib = procs::settled_rss_kib(&pids).await?;
    let request = Arc::new(request(&target)?);
    let authority = target.authority()?;
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(open_stream(authority.clone(), request.clone(), gate.clone())))
        .collect();
    let opened = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .with_context(|| format!("{}: {n} streams did not all start within 60 s", row.name()))?;
    let mut conns = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for r in opened {
        match r.context("stream task") {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) | Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        errors.sort();
        errors.dedup();
        bail!("{}: {} of {n} streams failed: {}", row.name(), n - conns.len(), errors.join("; "));
    }
    // Every stream is open and past its first frame: sample a few times, keep the max.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut open_kib = 0;
    for _ in 0..5 {
        open_kib = open_kib.max(procs::total_rss_kib(&fixture.pids(row))?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(conns);
    Ok(StreamCost { row, streams: n, before_kib, open_kib })
}
