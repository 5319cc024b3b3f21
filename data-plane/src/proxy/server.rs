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
//! Shutdown: the accept loop stops, each worker stops taking connections and lets its
//! in-flight requests finish for up to the grace period. If the `serve` future is dropped
//! instead (the embedding runtime went away), workers close their connections at once.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::Proxy;

/// Time a client has to send a complete request head on HTTP/1.1 before the connection is
/// closed; bounds slow-loris connections without affecting honest clients.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin
/// while the condition lasts; the same choice axum makes.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What a worker is told when serving ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Running,
    /// Stop accepting; drain in-flight requests for up to the grace period.
    Drain,
}

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
) {
    let (stop_tx, stop_rx) = watch::channel(Stop::Running);
    let mut inboxes = Vec::with_capacity(proxies.len());
    let mut finished = Vec::with_capacity(proxies.len());
    for (i, proxy) in proxies.into_iter().enumerate() {
        let (inbox, connections) = mpsc::unbounded_channel::<std::net::TcpStream>();
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
                    runtime.block_on(worker(i, Arc::new(proxy), connections, stop, grace))
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
        let mut unsent = Some(stream);
        for _ in 0..inboxes.len() {
            let Some(stream) = unsent.take() else { break };
            let inbox = &inboxes[next % inboxes.len()];
            next = next.wrapping_add(1);
            if let Err(returned) = inbox.send(stream) {
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
    mut connections: mpsc::UnboundedReceiver<std::net::TcpStream>,
    mut stop: watch::Receiver<Stop>,
    grace: Duration,
) -> Drained {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            changed = stop.changed() => match changed {
                Ok(()) if *stop.borrow() == Stop::Running => continue,
                Ok(()) => break,
                // `serve` was dropped: nobody waits for a drain; close everything now.
                Err(_) => return Drained { open: graceful.count(), complete: false },
            },
            received = connections.recv() => match received {
                Some(stream) => stream,
                None => break,
            },
        };
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                debug!(worker = index, error = %err, "could not register a connection");
                continue;
            }
        };
        let peer = stream.peer_addr().ok();
        let proxy = Arc::clone(&proxy);
        let service = service_fn(move |request| {
            let proxy = Arc::clone(&proxy);
            async move { Ok::<_, Infallible>(proxy.handle(request).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(?peer, error = %err, "connection ended with an error");
            }
        });
    }
    let open = graceful.count();
    debug!(worker = index, open_connections = open, "worker draining");
    let complete = tokio::time::timeout(grace, graceful.shutdown()).await.is_ok();
    Drained { open, complete }
}
