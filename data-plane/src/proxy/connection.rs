//! One client connection's limits, for HTTP/1 and h2c alike:
//! - **header deadline**: from accept, the first request's head must be complete within
//!   `header_read_timeout` (this covers the bytes hyper-util reads to tell HTTP/1 from h2c,
//!   which hyper's own HTTP/1 header timeout does not: a connection that sends nothing was
//!   kept open forever); else the connection is closed;
//! - **idle timeout**: with no request in flight for `idle_timeout` (keep-alive between
//!   requests, or an HTTP/2 connection without streams) the connection is shut down
//!   gracefully (HTTP/1: closed; HTTP/2: GOAWAY); a request in flight — a long SSE stream —
//!   keeps it open, bounded by the request's own deadlines;
//! - **HTTP/2 PING keepalive** (configured on the builder in `server.rs`) to notice dead peers.
//!
//! A request counts as in flight from its head until its response body has been sent or
//! dropped ([`Tracked`]). The watchdog is one timer per connection, re-armed only when it
//! fires: nothing per request but two atomic updates and a clock read.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::watch;
use tracing::debug;

use super::{BoxError, ProxyBody};

/// How long a connection told to shut down gracefully while idle may take to close before it
/// is closed outright (an HTTP/2 client that never answers the GOAWAY).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The limits of one connection; see the module docs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Counters of the listener: open connections, and those refused at the limit or closed by a
/// limit. Shared by the accept loop and every serving thread.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicUsize,
    refused: AtomicU64,
    closed_no_request: AtomicU64,
    closed_idle: AtomicU64,
}

impl ConnectionStats {
    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused because `max_connections` were open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections closed because no request head was complete within the header deadline.
    pub fn closed_without_request(&self) -> u64 {
        self.closed_no_request.load(Ordering::Relaxed)
    }

    /// Connections shut down after the idle timeout.
    pub fn closed_idle(&self) -> u64 {
        self.closed_idle.load(Ordering::Relaxed)
    }

    /// Takes a slot for a new connection unless `max` are open.
    pub(crate) fn try_open(self: &Arc<Self>, max: usize) -> Option<OpenSlot> {
        let taken = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (open < max).then_some(open + 1)
        });
        match taken {
            Ok(_) => Some(OpenSlot(Arc::clone(self))),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// One open connection's place under the limit; freed when dropped.
#[derive(Debug)]
pub(crate) struct OpenSlot(Arc<ConnectionStats>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Requests in flight on one serving thread, for the shutdown log lines. Written by that
/// thread only (no contention), read by the accept loop; on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct InFlight(AtomicUsize);

impl InFlight {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the watchdog of one connection knows about its requests.
#[derive(Debug)]
pub(crate) struct Activity {
    accepted: Instant,
    seen_request: AtomicBool,
    /// The connection speaks HTTP/2 (known from its first request).
    http2: AtomicBool,
    in_flight: AtomicUsize,
    /// The serving thread's count of requests in flight.
    worker_in_flight: Arc<InFlight>,
    /// When the last request ended, in nanoseconds after `accepted`.
    last_end_ns: AtomicU64,
}

impl Activity {
    pub(crate) fn new(accepted: Instant, worker_in_flight: Arc<InFlight>) -> Self {
        Self {
            accepted,
            seen_request: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            worker_in_flight,
            last_end_ns: AtomicU64::new(0),
        }
    }

    /// A request head arrived (over HTTP/2 or not): in flight until the returned guard drops.
    #[inline]
    pub(crate) fn start(self: &Arc<Self>, http2: bool) -> Active {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.worker_in_flight.0.fetch_add(1, Ordering::Relaxed);
        if !self.seen_request.load(Ordering::Relaxed) {
            self.http2.store(http2, Ordering::Relaxed);
            self.seen_request.store(true, Ordering::Release);
        }
        Active(Arc::clone(self))
    }

    fn is_http2(&self) -> bool {
        self.seen_request.load(Ordering::Acquire) && self.http2.load(Ordering::Relaxed)
    }

    /// What the watchdog does at `now`.
    fn verdict(&self, limits: &ConnectionLimits, now: Instant) -> Verdict {
        if !self.seen_request.load(Ordering::Acquire) {
            let deadline = self.accepted + limits.header_read_timeout;
            return if now >= deadline { Verdict::Close } else { Verdict::RecheckAt(deadline) };
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Verdict::RecheckAt(now + limits.idle_timeout);
        }
        let last_end =
            self.accepted + Duration::from_nanos(self.last_end_ns.load(Ordering::Acquire));
        let deadline = last_end + limits.idle_timeout;
        if now >= deadline { Verdict::ShutDown } else { Verdict::RecheckAt(deadline) }
    }
}

enum Verdict {
    /// No request head within the deadline: close now.
    Close,
    /// Idle for the idle timeout: graceful shutdown.
    ShutDown,
    RecheckAt(Instant),
}

/// A request in flight on its connection.
#[derive(Debug)]
pub(crate) struct Active(Arc<Activity>);

impl Drop for Active {
    #[inline]
    fn drop(&mut self) {
        let activity = &self.0;
        let ns = u64::try_from(activity.accepted.elapsed().as_nanos()).unwrap_or(u64::MAX);
        activity.last_end_ns.fetch_max(ns, Ordering::AcqRel);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.worker_in_flight.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The response body, keeping its request counted in flight until it is sent or dropped.
pub(crate) struct Tracked {
    inner: ProxyBody,
    _active: Active,
}

impl Tracked {
    #[inline]
    pub(crate) fn new(inner: ProxyBody, active: Active) -> Self {
        Self { inner, _active: active }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The shutdown phase serving is in (`crate::shutdown`), in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stop {
    Running,
    /// The drain period: everything is served; HTTP/2 connections get GOAWAY so their clients
    /// open new ones (HTTP/1 answers carry `Connection: close`, see `server.rs`).
    Draining,
    /// Stop accepting; close idle connections, let in-flight requests finish for up to the
    /// grace period.
    Drain,
    /// Cut every connection now (the grace period is over, or asked again).
    Close,
}

/// Serves one connection to its end under its limits and the worker's stop signal. Returns
/// when the connection is closed; dropping `connection` closes the socket.
pub(crate) async fn drive<C>(
    connection: C,
    activity: Arc<Activity>,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<Stop>,
    stats: Arc<ConnectionStats>,
    peer: Option<SocketAddr>,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(connection);
    let mut check = activity.accepted + limits.header_read_timeout;
    let mut shut_down_at: Option<Instant> = None;
    // Told to shut down gracefully already (by the stop signal): not again.
    let mut stopping = *stop.borrow_and_update() >= Stop::Drain;
    if stopping {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            // In this order, without the random start of an unbiased select (a thread-local
            // RNG draw on every wake-up): the connection is the branch that is nearly always
            // the one woken, and the other two cannot starve behind it (it ends the loop when
            // ready).
            biased;
            result = connection.as_mut() => {
                if let Err(err) = result {
                    debug!(?peer, error = %err, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(check.into()) => {
                let now = Instant::now();
                if let Some(at) = shut_down_at {
                    if now >= at + IDLE_CLOSE_GRACE && activity.in_flight.load(Ordering::Acquire) == 0 {
                        debug!(?peer, "idle connection did not close after shutdown; closing");
                        return;
                    }
                    check = now + IDLE_CLOSE_GRACE;
                    continue;
                }
                match activity.verdict(&limits, now) {
                    Verdict::Close => {
                        stats.closed_no_request.fetch_add(1, Ordering::Relaxed);
                        debug!(
                            ?peer,
                            timeout_ms = limits.header_read_timeout.as_millis() as u64,
                            "no complete request head within the header deadline; closing"
                        );
                        return;
                    }
                    Verdict::ShutDown => {
                        stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                        debug!(
                            ?peer,
                            idle_ms = limits.idle_timeout.as_millis() as u64,
                            "connection idle; shutting it down"
                        );
                        if !stopping {
                            connection.as_mut().graceful_shutdown();
                        }
                        shut_down_at = Some(now);
                        check = now + IDLE_CLOSE_GRACE;
                    }
                    Verdict::RecheckAt(at) => check = at,
                }
            }
            changed = stop.changed(), if !stopping => match changed {
                Ok(()) => {
                    let phase = *stop.borrow_and_update();
                    // HTTP/2 clients move on GOAWAY as soon as the drain period starts; an
                    // HTTP/1 connection is told by `Connection: close` on its next answer, and
                    // closed (if idle) only when accepting stops.
                    let now = phase >= Stop::Drain
                        || (phase == Stop::Draining && activity.is_http2());
                    if now {
                        stopping = true;
                        if shut_down_at.is_none() {
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
                // Serving was dropped: nobody waits for a drain; close now.
                Err(_) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_refuses_and_counts_then_frees_slots() {
        let stats = Arc::new(ConnectionStats::default());
        let a = stats.try_open(2).expect("first");
        let b = stats.try_open(2).expect("second");
        assert!(stats.try_open(2).is_none());
        assert_eq!((stats.open(), stats.refused()), (2, 1));
        drop(a);
        let c = stats.try_open(2).expect("a slot was freed");
        drop((b, c));
        assert_eq!(stats.open(), 0);
    }

    #[test]
    fn verdicts_follow_the_header_deadline_then_idleness() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        let activity = Arc::new(Activity::new(t0, Arc::default()));
        assert!(
            matches!(activity.verdict(&limits, t0), Verdict::RecheckAt(at) if at == t0 + Duration::from_secs(10))
        );
        assert!(matches!(activity.verdict(&limits, t0 + Duration::from_secs(10)), Verdict::Close));
        let active = activity.start(false);
        assert_eq!(activity.worker_in_flight.get(), 1);
        assert!(matches!(
            activity.verdict(&limits, t0 + Duration::from_secs(500)),
            Verdict::RecheckAt(_)
        ));
        drop(active);
        assert_eq!(activity.worker_in_flight.get(), 0);
        let ended = Instant::now();
        assert!(matches!(activity.verdict(&limits, ended), Verdict::RecheckAt(_)));
        assert!(matches!(
            activity.verdict(&limits, ended + Duration::from_secs(61)),
            Verdict::ShutDown
        ));
    }
}
