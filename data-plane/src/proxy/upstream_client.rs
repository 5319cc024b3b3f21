//! The upstream HTTP client: hyper's pooled client over rustls, HTTP/1.1 with keep-alive, and
//! HTTP/2 wherever the upstream offers it in ALPN (Azure OpenAI does).
//!
//! hyper directly rather than reqwest: reqwest parsed each request's URL three times (once
//! from our string, twice more inside its redirect and retry layers) — more instructions than
//! the whole rest of the request path on loopback (see BENCHMARKS.md). The gateway needs none
//! of what those layers add: it never follows redirects, retries itself across endpoints, and
//! applies its own timeouts around each attempt.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::ConfigVerifierExt as _;

use super::egress::{EgressPolicy, GuardedConnector, GuardedResolver};

/// The request body type: the client's body, read once and re-sent on failover.
pub(crate) type UpstreamBody = Full<Bytes>;

/// The TCP connector: the system resolver and every dialled address checked by the egress
/// policy (`egress.rs`).
pub(crate) type TcpConnector = GuardedConnector<HttpConnector<GuardedResolver>>;

/// The pooled upstream client shared by the request path.
pub(crate) type UpstreamClient = Client<HttpsConnector<TcpConnector>, UpstreamBody>;

/// Connection settings of the upstream client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub tcp_keepalive: Duration,
    /// Which addresses may be dialled.
    pub egress: EgressPolicy,
}

/// The TLS settings of every upstream connection: certificates verified against the
/// platform's roots (as the OS trusts them). Built once at start, so a broken trust store
/// fails the data plane before it serves.
pub(crate) fn tls_config() -> std::io::Result<rustls::ClientConfig> {
    rustls::ClientConfig::with_platform_verifier().map_err(std::io::Error::other)
}

/// Builds one client (one connection pool): `TCP_NODELAY`, TCP keep-alive, idle pooled
/// connections closed after `pool_idle_timeout`, only the addresses `egress` allows dialled. Each serving thread gets its own, so its
/// connections live on its runtime.
pub(crate) fn build(settings: ClientSettings, tls: rustls::ClientConfig) -> UpstreamClient {
    let mut tcp = HttpConnector::new_with_resolver(GuardedResolver::new(settings.egress));
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(settings.connect_timeout));
    tcp.set_keepalive(Some(settings.tcp_keepalive));
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(GuardedConnector::new(tcp, settings.egress));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .build(https)
}
