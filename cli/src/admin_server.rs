//! The admin API's HTTP server: axum's router on hyper, with the deadlines `axum::serve` does
//! not have. A client must complete its first request head within [`HEADER_READ_TIMEOUT`] of
//! the TCP accept (HTTP/1 and h2c alike: this covers the bytes hyper-util reads to tell the
//! protocols apart), and each later HTTP/1 head within the same time, so slow-loris
//! connections cannot pile up; idle HTTP/2 connections are pinged and dropped when the peer
//! is gone. Graceful shutdown as before: stop accepting, let requests in flight finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// Time from accept to a complete request head, and for every later head: 30 s, the data
/// plane's default and between Envoy's and nginx's. Operators' tools send their heads at once.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/2 PING interval and acknowledgement timeout on admin connections.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause after a failed `accept` (e.g. out of file descriptors), as axum does.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` resolves, then waits for the requests in
/// flight.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, HEADER_READ_TIMEOUT).await
}

/// [`serve`] with another header deadline (tests).
pub(crate) async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "admin API: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let seen_request = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&seen_request);
        let router = router.clone();
        let service = service_fn(move |mut request: http::Request<Incoming>| {
            seen.store(true, Ordering::Relaxed);
            // What `into_make_service_with_connect_info` would add: the audit log's client IP.
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(axum::body::Body::new)).await;
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                result = &mut connection => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "admin API connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep(header_read_timeout) => {}
            }
            if !seen_request.load(Ordering::Relaxed) {
                tracing::debug!(%peer, "admin API: no request head within the deadline; closing");
                return;
            }
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "admin API connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Slow-loris connections (silent, or trickling a head) are closed at the deadline while
    /// a normal request is served.
    #[tokio::test]
    async fn slowloris_connections_are_closed_and_requests_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            router,
            async move {
                let _ = stopped.await;
            },
            Duration::from_millis(300),
        ));
        let mut silent = Vec::new();
        for _ in 0..50 {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut trickler = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let trickle = async {
            for byte in b"GET /ok HTTP/1.1\r\nx-slow: ".iter().cycle().take(400) {
                if trickler.write_all(&[*byte]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        };
        let closes = futures::future::join_all(silent.iter_mut().map(|s| async move {
            let mut buf = [0u8; 64];
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
        }));
        let (closes, cut) = tokio::join!(closes, trickle);
        for close in closes {
            assert!(matches!(close, Ok(Ok(0) | Err(_))), "closed, not timed out");
        }
        assert!(cut, "the trickling head was cut off");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
