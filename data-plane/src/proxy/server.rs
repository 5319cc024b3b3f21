//! The listener: hyper 1 with HTTP/1.1 and h2c on one port, served by one thread per core.
//!
//! Connections are accepted on the caller's runtime and handed, round robin, to worker
//! threads. Each worker runs its own single-threaded Tokio runtime with its own upstream
//! connection pool, so a request — client connection, routing, upstream connection, relay —
//! lives on one thread from accept to the last byte: no task migrates, no wake-up crosses
//! threads, no pool lock is contended (nginx's worker model, which the benchmark showed to
//! matter: cross-thread wake-ups were a visible share of a request's CPU on loopback). What
//! workers share is read-mostly: the routing table (`ArcSwap`), endpoint health (one short
//! mutex per endpoint), Entra tokens.
//!
//! Limits (`connection.rs`): at most `max_connections` open per process — beyond it a new
//! connection is accepted and closed at once, counted, and logged once per second at most —;
//! per connection a header deadline from accept, an idle timeout, and PING keepalive on
//! HTTP/2.
//!
//! Shutdown: the accept loop stops, each worker stops taking connections and lets its
//! in-flight requests finish for up to the grace period. If the `serve` future is dropped
//! instead (the embedding runtime went away), workers close their connections at once.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::Proxy;
use super::connection::{
    Activity, ConnectionLimits, ConnectionStats, OpenSlot, Stop, Tracked, drive,
};

/// The listener's limits, from `DataPlaneConfig`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerLimits {
    pub connection: ConnectionLimits,
    /// Most client connections open at once in this process.
    pub max_connections: usize,
    /// HTTP/2 PING interval; `None`: no pings.
    pub http2_keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub http2_keepalive_timeout: Duration,
}

/// Longest silence between two "connections refused" lines while the limit holds.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin
/// while the condition lasts; the same choice axum makes.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// How a worker ended: the connections still open at shutdown, and whether they all finished
/// within the grace period.
struct Drained {
    open: usize,
    complete: bool,
}

/// Accepts connections until `shutdown` resolves and serves them on one worker thread per
/// proxy in `proxies` (each with its own upstream pool), then lets in-flight requests finish
/// for up to `grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    proxies: Vec<Proxy>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: ServerLimits,
    stats: Arc<ConnectionStats>,
) {
    let (stop_tx, stop_rx) = watch::channel(Stop::Running);
    let mut inboxes = Vec::with_capacity(proxies.len());
    let mut finished = Vec::with_capacity(proxies.len());
    for (i, proxy) in proxies.into_iter().enumerate() {
        let (inbox, connections) = mpsc::unbounded_channel::<(std::net::TcpStream, OpenSlot)>();
        let stats = Arc::clone(&stats);
        let (done_tx, done_rx) = oneshot::channel::<Drained>();
        let stop = stop_rx.clone();
        // Worker threads log through the caller's subscriber (a test's thread-local one too).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let spawned =
            std::thread::Builder::new().name(format!("modelgw-worker-{i}")).spawn(move || {
                let runtime =
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            warn!(worker = i, error = %err, "worker runtime failed to start");
                            return;
                        }
                    };
                let drained = tracing::dispatcher::with_default(&dispatch, || {
                    let proxy = Arc::new(proxy);
                    runtime.block_on(worker(i, proxy, connections, stop, grace, limits, stats))
                });
                let _ = done_tx.send(drained);
            });
        match spawned {
            Ok(_) => {
                inboxes.push(inbox);
                finished.push(done_rx);
            }
            Err(err) => warn!(worker = i, error = %err, "could not start a worker thread"),
        }
    }
    if inboxes.is_empty() {
        warn!("no worker thread could start; not serving");
        return;
    }
    debug!(workers = inboxes.len(), "serving on worker threads");

    tokio::pin!(shutdown);
    let mut next = 0usize;
    let mut refused_logged: Option<(Instant, u64)> = None;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(slot) = stats.try_open(limits.max_connections) else {
            // Closed at once (FIN, not RST): the client sees a clean refusal and can retry.
            drop(stream);
            let refused = stats.refused();
            let now = Instant::now();
            if refused_logged.is_none_or(|(at, _)| now >= at + REFUSED_LOG_INTERVAL) {
                let since = refused - refused_logged.map_or(0, |(_, n)| n);
                warn!(
                    %peer,
                    max_connections = limits.max_connections,
                    refused_since_last_line = since,
                    refused_total = refused,
                    "connection limit reached; refusing new connections"
                );
                refused_logged = Some((now, refused));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Deregistered from this runtime's reactor; the worker registers it with its own.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                debug!(%peer, error = %err, "could not hand the connection to a worker");
                continue;
            }
        };
        // Round robin over the workers still alive (a dead one's inbox is closed).
        let mut unsent = Some((stream, slot));
        for _ in 0..inboxes.len() {
            let Some(handed) = unsent.take() else { break };
            let inbox = &inboxes[next % inboxes.len()];
            next = next.wrapping_add(1);
            if let Err(returned) = inbox.send(handed) {
                unsent = Some(returned.0);
            }
        }
        if unsent.is_some() {
            warn!(%peer, "every worker thread is gone; dropping the connection");
        }
    }
    drop(listener);
    info!(grace_ms = grace.as_millis() as u64, "shutting down: draining connections");
    let _ = stop_tx.send(Stop::Drain);
    let (mut open, mut complete) = (0, true);
    for done in finished {
        if let Ok(drained) = done.await {
            open += drained.open;
            complete &= drained.complete;
        }
    }
    if complete {
        info!(open_connections = open, "all connections drained");
    } else {
        warn!(open_connections = open, "grace period over; closing remaining connections");
    }
}

/// One worker: serves the connections it is handed until told to stop.
async fn worker(
    index: usize,
    proxy: Arc<Proxy>,
    mut connections: mpsc::UnboundedReceiver<(std::net::TcpStream, OpenSlot)>,
    mut stop: watch::Receiver<Stop>,
    grace: Duration,
    limits: ServerLimits,
    stats: Arc<ConnectionStats>,
) -> Drained {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own HTTP/1 head timeout re-arms before every request head, keep-alive waits
    // included: only a backstop behind `drive`, which bounds the first head from accept and
    // idle keep-alive after each answer (and counts what it closes).
    let head_timeout = limits.connection.idle_timeout.max(limits.connection.header_read_timeout)
        + Duration::from_secs(5);
    builder.http1().timer(TokioTimer::new()).header_read_timeout(head_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    let mut open = JoinSet::new();
    loop {
        let (stream, slot) = tokio::select! {
            changed = stop.changed() => match changed {
                Ok(()) if *stop.borrow() == Stop::Running => continue,
                Ok(()) => break,
                // `serve` was dropped: nobody waits for a drain; close everything now.
                Err(_) => {
                    let count = open.len();
                    open.abort_all();
                    return Drained { open: count, complete: false };
                }
            },
            // Reap finished connections so the set holds only open ones.
            Some(_) = open.join_next(), if !open.is_empty() => continue,
            received = connections.recv() => match received {
                Some(handed) => handed,
                None => break,
            },
        };
        let accepted = Instant::now();
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                debug!(worker = index, error = %err, "could not register a connection");
                continue;
            }
        };
        let peer = stream.peer_addr().ok();
        let peer_ip = peer.map(|p| p.ip());
        let activity = Arc::new(Activity::new(accepted));
        let proxy = Arc::clone(&proxy);
        let requests = Arc::clone(&activity);
        let service = service_fn(move |request| {
            let proxy = Arc::clone(&proxy);
            let active = requests.start();
            async move {
                let response = proxy.handle(request, peer_ip).await;
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, active)))
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let stop = stop.clone();
        let stats = Arc::clone(&stats);
        open.spawn(async move {
            drive(connection, activity, limits.connection, stop, stats, peer).await;
            drop(slot);
        });
    }
    let count = open.len();
    debug!(worker = index, open_connections = count, "worker draining");
    let drained = async { while open.join_next().await.is_some() {} };
    let complete = tokio::time::timeout(grace, drained).await.is_ok();
    open.abort_all();
    Drained { open: count, complete }
}
