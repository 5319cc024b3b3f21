//! Graceful shutdown: the phases a data plane goes through once asked to stop (SIGTERM), and
//! the requests that move it from one to the next.
//!
//! 1. **Draining**, for [`DataPlaneConfig::drain_period`](crate::DataPlaneConfig): `/readyz`
//!    answers 503 `draining` so that load balancers (Kubernetes endpoints, a Front Door health
//!    probe) stop sending new work, while everything is still served as usual — new
//!    connections included, since a balancer keeps sending until it notices. HTTP/1 answers
//!    carry `Connection: close`, so keep-alive clients open their next connection through the
//!    balancer (elsewhere); HTTP/2 connections get GOAWAY (hyper's two-step GOAWAY, which
//!    refuses no stream already sent). `/healthz` (liveness) stays 200 throughout.
//! 2. **Closing**, for up to [`DataPlaneConfig::shutdown_grace`](crate::DataPlaneConfig): the
//!    listener is closed, idle connections are closed, in-flight requests and streams finish.
//! 3. **Exit**: what is still open at the grace deadline is cut; the control-plane stream is
//!    closed cleanly (the last usage report first), so the control plane records a departure,
//!    not a lost data plane.
//!
//! Each further request moves one phase on: a second SIGTERM/SIGINT skips the rest of the drain
//! period, a third cuts in-flight requests at once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// How a running data plane is asked to stop: each [`ShutdownTrigger::request`] (one per
/// SIGTERM/SIGINT) moves it one phase on (see the module docs).
#[derive(Clone, Debug)]
pub struct Shutdown {
    requests: watch::Receiver<u32>,
}

/// The sending side of a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    requests: watch::Sender<u32>,
}

/// A trigger and the [`Shutdown`] it drives.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (requests, receiver) = watch::channel(0);
    (ShutdownTrigger { requests }, Shutdown { requests: receiver })
}

impl ShutdownTrigger {
    /// One more request to stop; returns how many there were so far.
    pub fn request(&self) -> u32 {
        let mut count = 0;
        self.requests.send_modify(|n| {
            *n = n.saturating_add(1);
            count = *n;
        });
        count
    }
}

impl Shutdown {
    /// A shutdown requested once, when `future` resolves (spawned on the current runtime).
    pub(crate) fn when(future: impl Future<Output = ()> + Send + 'static) -> (Shutdown, Abort) {
        let (trigger, shutdown) = shutdown_channel();
        let task = tokio::spawn(async move {
            future.await;
            trigger.request();
            // Keep the sender: a dropped one would read as "no request will ever come".
            std::future::pending::<()>().await;
        });
        (shutdown, Abort(task.abort_handle()))
    }

    /// Requests so far.
    pub(crate) fn count(&self) -> u32 {
        *self.requests.borrow()
    }

    /// Resolves once at least `count` requests were made; never if the trigger is gone first.
    pub(crate) async fn requested(&mut self, count: u32) {
        if self.requests.wait_for(|n| *n >= count).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Stops the task of [`Shutdown::when`] when dropped.
pub(crate) struct Abort(tokio::task::AbortHandle);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether the data plane is draining; read by `/readyz` and by every HTTP/1 answer (one
/// relaxed load).
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    draining: AtomicBool,
}

impl Lifecycle {
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn requests_are_counted_and_awaited_by_count() {
        let (trigger, mut shutdown) = shutdown_channel();
        assert_eq!(shutdown.count(), 0);
        let second = tokio::time::timeout(Duration::from_millis(50), shutdown.requested(1));
        assert!(second.await.is_err(), "nothing requested yet");
        assert_eq!(trigger.request(), 1);
        shutdown.requested(1).await;
        let second = tokio::time::timeout(Duration::from_millis(50), shutdown.requested(2));
        assert!(second.await.is_err(), "only one request so far");
        assert_eq!(trigger.request(), 2);
        shutdown.requested(2).await;
        assert_eq!(shutdown.count(), 2);
    }

    #[tokio::test]
    async fn a_future_becomes_one_request() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (mut shutdown, _abort) = Shutdown::when(async move {
            let _ = rx.await;
        });
        assert_eq!(shutdown.count(), 0);
        tx.send(()).expect("send");
        shutdown.requested(1).await;
        let more = tokio::time::timeout(Duration::from_millis(50), shutdown.requested(2));
        assert!(more.await.is_err(), "one future, one request");
    }
}
