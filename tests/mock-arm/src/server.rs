//! The listener both mocks share: hyper 1 on 127.0.0.1, one task per connection, a handler that
//! sees the whole request (head and body) and answers synchronously. Neither mock needs to delay
//! or stream an answer, so the handler is a plain function of the request.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest request body read: token forms and ARM bodies are a few hundred bytes.
const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// What a mock answers a request with.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(&self, head: &Parts, body: &[u8]) -> Response<Full<Bytes>>;
}

/// A running listener; dropping the last clone of the sender does not stop it, `stop` does.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl Server {
    pub(crate) async fn start(handler: Arc<dyn Handler>) -> std::io::Result<Server> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        tokio::spawn(accept_loop(listener, handler, shutdown.subscribe()));
        Ok(Server { addr, shutdown })
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn stop(&self) {
        self.shutdown.send_replace(true);
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, handler.clone(), stop.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "azure mock accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    handler: Arc<dyn Handler>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let (head, body) = req.into_parts();
            let response = match Limited::new(body, MAX_REQUEST_BODY_BYTES).collect().await {
                Ok(body) => handler.handle(&head, &body.to_bytes()),
                Err(_) => plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = conn => {
            if let Err(error) = result {
                tracing::debug!(%error, "azure mock connection ended with an error");
            }
        }
        () = stopped(&mut stop) => {}
    }
}

/// A JSON answer with the given status.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    response
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

/// Query parameters of a request, decoded.
pub(crate) fn query_pairs(head: &Parts) -> Vec<(String, String)> {
    head.uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub(crate) fn query_param(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
}
