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
//! Shutdown (`crate::shutdown`): during the drain period the accept loop keeps going while
//! `/readyz` fails, HTTP/1 answers carry `Connection: close` and HTTP/2 connections get GOAWAY;
//! then the accept loop stops, each worker stops taking connections, closes idle ones and lets
//! its in-flight requests finish for up to the grace period. If the `serve` future is dropped
//! instead (the embedding runtime went away), workers close their connections at once.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    Activity, ConnectionLimits, ConnectionStats, InFlight, OpenSlot, Stop, Tracked, drive,
};
use crate::shutdown::{Lifecycle, Shutdown};

/// `Connection: close`, on HTTP/1 answers during the drain period.
const CLOSE: http::HeaderValue = http::HeaderValue::from_static("close");

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

/// How a worker ended: the connections still open when accepting stopped, and whether they
/// all finished within the grace period.
struct Drained {
    open: usize,
    complete: bool,
}

/// What drives the shutdown phases (`crate::shutdown`).
pub(crate) struct Phases {
    /// Requests to stop (SIGTERM/SIGINT): the first starts the drain period, each further one
    /// moves a phase on.
    pub shutdown: Shutdown,
    /// How long to keep serving with `/readyz` failing; zero skips the phase.
    pub drain_period: Duration,
    /// How long in-flight requests may take to finish once accepting stopped.
    pub grace: Duration,
    /// The draining flag `/readyz` and every answer read.
    pub lifecycle: Arc<Lifecycle>,
}

/// Accepts connections until the first shutdown request (or `also_stop`) and serves them on
/// one worker thread per proxy in `proxies` (each with its own upstream pool); then drains:
/// see `crate::shutdown` for the phases.
pub(crate) async fn serve(
    listener: TcpListener,
    proxies: Vec<Proxy>,
    phases: Phases,
    also_stop: impl Future<Output = ()>,
    limits: ServerLimits,
    stats: Arc<ConnectionStats>,
) {
    let Phases { mut shutdown, drain_period, grace, lifecycle } = phases;
    let (stop_tx, stop_rx) = watch::channel(Stop::Running);
    let mut inboxes = Vec::with_capacity(proxies.len());
    let mut finished = Vec::with_capacity(proxies.len());
    let mut in_flight = Vec::with_capacity(proxies.len());
    for (i, proxy) in proxies.into_iter().enumerate() {
        let (inbox, connections) = mpsc::unbounded_channel::<(std::net::TcpStream, OpenSlot)>();
        let stats = Arc::clone(&stats);
        let (done_tx, done_rx) = oneshot::channel::<Drained>();
        let stop = stop_rx.clone();
        let requests = Arc::new(InFlight::default());
        let worker_requests = Arc::clone(&requests);
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
                    let worker = Worker {
                        index: i,
                        proxy,
                        grace,
                        limits,
                        stats,
                        in_flight: worker_requests,
                    };
                    runtime.block_on(worker.run(connections, stop))
                });
                let _ = done_tx.send(drained);
            });
        match spawned {
            Ok(_) => {
                inboxes.push(inbox);
                finished.push(done_rx);
                in_flight.push(requests);
            }
            Err(err) => warn!(worker = i, error = %err, "could not start a worker thread"),
        }
    }
    if inboxes.is_empty() {
        warn!("no worker thread could start; not serving");
        return;
    }
    debug!(workers = inboxes.len(), "serving on worker threads");
    let requests_in_flight = || in_flight.iter().map(|n| n.get()).sum::<usize>();

    let mut acceptor =
        Acceptor { listener, inboxes, next: 0, refused_logged: None, limits, stats: &stats };
    let asked = async {
        tokio::select! {
            () = shutdown.requested(1) => {}
            () = also_stop => {}
        }
    };
    acceptor.accept_until(asked).await;

    // Phase 1: not ready, still serving.
    if !drain_period.is_zero() {
        lifecycle.start_draining();
        let _ = stop_tx.send(Stop::Draining);
        info!(
            drain_period_ms = drain_period.as_millis() as u64,
            open_connections = stats.open(),
            in_flight = requests_in_flight(),
            "draining: /readyz fails, new requests are still served until the drain period ends"
        );
        let hurried = AtomicBool::new(false);
        acceptor
            .accept_until(async {
                tokio::select! {
                    () = tokio::time::sleep(drain_period) => {}
                    () = shutdown.requested(2) => hurried.store(true, Ordering::Relaxed),
                }
            })
            .await;
        if hurried.load(Ordering::Relaxed) {
            info!("asked again to stop: ending the drain period now");
        }
    }
    lifecycle.start_draining();

    // Phase 2: no new connections; in-flight requests finish.
    drop(acceptor);
    let cut_at = shutdown.count().saturating_add(1);
    info!(
        grace_ms = grace.as_millis() as u64,
        open_connections = stats.open(),
        in_flight = requests_in_flight(),
        "stopped accepting: closing idle connections, letting in-flight requests finish"
    );
    let _ = stop_tx.send(Stop::Drain);
    let started = Instant::now();
    let workers = futures::future::join_all(finished);
    tokio::pin!(workers);
    let results = tokio::select! {
        results = &mut workers => results,
        () = shutdown.requested(cut_at) => {
            warn!(
                open_connections = stats.open(),
                in_flight = requests_in_flight(),
                "asked again to stop: cutting in-flight requests now"
            );
            let _ = stop_tx.send(Stop::Close);
            workers.await
        }
    };
    let (mut open, mut complete) = (0, true);
    for drained in results.into_iter().flatten() {
        open += drained.open;
        complete &= drained.complete;
    }
    let waited_ms = started.elapsed().as_millis() as u64;
    if complete {
        info!(open_connections = open, waited_ms, "all connections drained");
    } else {
        warn!(
            open_connections = open,
            still_open = stats.open(),
            waited_ms,
            "grace period over; closed the remaining connections"
        );
    }
}

/// The accept loop's state, kept across the serving and draining phases.
struct Acceptor<'s> {
    listener: TcpListener,
    inboxes: Vec<mpsc::UnboundedSender<(std::net::TcpStream, OpenSlot)>>,
    /// Round-robin position among the workers.
    next: usize,
    /// When the last "connections refused" line went out, and the count then.
    refused_logged: Option<(Instant, u64)>,
    limits: ServerLimits,
    stats: &'s Arc<ConnectionStats>,
}

impl Acceptor<'_> {
    /// Accepts connections and hands them to the workers until `until` resolves.
    async fn accept_until(&mut self, until: impl Future<Output = ()>) {
        tokio::pin!(until);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut until => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        warn!(error = %err, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
            };
            self.hand_over(stream, peer);
        }
    }

    fn hand_over(&mut self, stream: tokio::net::TcpStream, peer: std::net::SocketAddr) {
        let limits = &self.limits;
        let Some(slot) = self.stats.try_open(limits.max_connections) else {
            // Closed at once (FIN, not RST): the client sees a clean refusal and can retry.
            drop(stream);
            let refused = self.stats.refused();
            let now = Instant::now();
            if self.refused_logged.is_none_or(|(at, _)| now >= at + REFUSED_LOG_INTERVAL) {
                let since = refused - self.refused_logged.map_or(0, |(_, n)| n);
                warn!(
                    %peer,
                    max_connections = limits.max_connections,
                    refused_since_last_line = since,
                    refused_total = refused,
                    "connection limit reached; refusing new connections"
                );
                self.refused_logged = Some((now, refused));
            }
            return;
        };
        let _ = stream.set_nodelay(true);
        // Deregistered from this runtime's reactor; the worker registers it with its own.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                debug!(%peer, error = %err, "could not hand the connection to a worker");
                return;
            }
        };
        // Round robin over the workers still alive (a dead one's inbox is closed).
        let mut unsent = Some((stream, slot));
        for _ in 0..self.inboxes.len() {
            let Some(handed) = unsent.take() else { break };
            let inbox = &self.inboxes[self.next % self.inboxes.len()];
            self.next = self.next.wrapping_add(1);
            if let Err(returned) = inbox.send(handed) {
                unsent = Some(returned.0);
            }
        }
        if unsent.is_some() {
            warn!(%peer, "every worker thread is gone; dropping the connection");
        }
    }
}

/// One serving thread.
struct Worker {
    index: usize,
    proxy: Arc<Proxy>,
    grace: Duration,
    limits: ServerLimits,
    stats: Arc<ConnectionStats>,
    /// This thread's requests in flight.
    in_flight: Arc<InFlight>,
}

impl Worker {
    /// Serves the connections it is handed until told to stop accepting, then lets them finish
    /// for up to the grace period (or until told to cut them).
    async fn run(
        self,
        mut connections: mpsc::UnboundedReceiver<(std::net::TcpStream, OpenSlot)>,
        mut stop: watch::Receiver<Stop>,
    ) -> Drained {
        let Worker { index, proxy, grace, limits, stats, in_flight } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper's own HTTP/1 head timeout re-arms before every request head, keep-alive waits
        // included: only a backstop behind `drive`, which bounds the first head from accept and
        // idle keep-alive after each answer (and counts what it closes).
        let head_timeout =
            limits.connection.idle_timeout.max(limits.connection.header_read_timeout)
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
                    Ok(()) if *stop.borrow() <= Stop::Draining => continue,
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
            let activity = Arc::new(Activity::new(accepted, Arc::clone(&in_flight)));
            let proxy = Arc::clone(&proxy);
            let requests = Arc::clone(&activity);
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let proxy = Arc::clone(&proxy);
                let http1 = request.version() < http::Version::HTTP_2;
                let active = requests.start(!http1);
                async move {
                    let mut response = Arc::clone(&proxy).handle(request, peer_ip).await;
                    if http1 && proxy.lifecycle.is_draining() {
                        // Draining: this connection's client should make its next request on a
                        // new connection, which the balancer sends elsewhere.
                        response.headers_mut().insert(http::header::CONNECTION, CLOSE);
                    }
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
        let complete = tokio::select! {
            finished = tokio::time::timeout(grace, drained) => finished.is_ok(),
            _ = stop.wait_for(|s| *s == Stop::Close) => false,
        };
        open.abort_all();
        Drained { open: count, complete }
    }
}
