//! Listener and connections, on hyper directly: a service error must close the connection
//! without a response (scripted reset) and a body error must abort a response mid-stream
//! (scripted cut), which higher-level frameworks turn into 500s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{MAX_REQUEST_BODY_BYTES, Shared};

/// Prefix of the control API, served on the same listener.
pub(crate) const CONTROL_PREFIX: &str = "/_mock/";

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) type Body = UnsyncBoxBody<Bytes, MockError>;

/// Why the mock ends a connection or a body abnormally. Scripted ones are the point of the mock.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MockError {
    #[error("scripted reset: connection dropped before the response")]
    ScriptedReset,
    #[error("scripted stream cut")]
    ScriptedCut,
    #[error("reading the request body: {0}")]
    RequestBody(String),
}

pub(crate) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

/// Why a request body could not be read.
pub(crate) enum BodyError {
    TooLarge,
    Broken(MockError),
}

pub(crate) async fn read_body(body: Incoming) -> Result<Bytes, BodyError> {
    match Limited::new(body, MAX_REQUEST_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Broken(MockError::RequestBody(e.to_string()))),
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(stream, shared.clone()));
                }
                Err(error) => {
                    tracing::warn!(region = %shared.config.region, %error, "mock accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    tracing::debug!(region = %shared.config.region, addr = %shared.addr, "mock listener closed");
}

/// Resolves once the mock is shut down (or its handle state is gone, which means the same).
/// Returns `()` so no watch guard is held across an await in `select!`.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // SSE frames must leave as soon as they are written.
    let _ = stream.set_nodelay(true);
    let mut stop = shared.shutdown.subscribe();
    let service_shared = shared.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = service_shared.clone();
        async move { dispatch(shared, req).await }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = conn => {
            if let Err(error) = result {
                // Scripted resets and cuts end here too; that is expected.
                tracing::debug!(region = %shared.config.region, %error, "mock connection ended with an error");
            }
        }
        // Dropping the connection future closes the socket, cutting any in-flight answer.
        () = stopped(&mut stop) => {}
    }
}

async fn dispatch(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, MockError> {
    if req.uri().path().starts_with(CONTROL_PREFIX) {
        let (parts, body) = req.into_parts();
        let body = match read_body(body).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => return Ok(crate::control::too_large()),
            Err(BodyError::Broken(e)) => return Err(e),
        };
        return Ok(crate::control::handle(&shared, &parts.method, parts.uri.path(), &body));
    }
    crate::azure::handle(shared, req).await
}
