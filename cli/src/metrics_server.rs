//! The `/metrics` listener: Prometheus scrapes a process's OpenMetrics text from a listener of
//! its own (`MODELGW_METRICS_ADDR`), never from the admin API's port or the Gateway URL, so
//! the metrics are not exposed wherever those are (behind Front Door, to operators'
//! browsers). Loopback by default; `off` disables it.
//!
//! Served by the admin API's server (`admin_server.rs`): the same header deadline from accept
//! and HTTP/2 keepalive, so a silent client cannot hold connections. The registry is encoded
//! per scrape; it holds no secret (labels are fixed identifiers, see
//! `modelgw_control_plane::metrics`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use modelgw_control_plane::metrics::{OPENMETRICS_CONTENT_TYPE, encode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::admin_server::HEADER_READ_TIMEOUT;

/// Where a `/metrics` listener listens, or that there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetricsAddr {
    Off,
    At(SocketAddr),
}

/// `off` or a socket address (the value of `MODELGW_METRICS_ADDR`).
pub(crate) fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddr::Off);
    }
    s.parse()
        .map(MetricsAddr::At)
        .map_err(|_| format!("{s:?} is neither `off` nor an address such as 127.0.0.1:4004"))
}

/// Binds the listener `addr` asks for (`None` when it is `off`).
pub(crate) async fn bind(addr: MetricsAddr) -> anyhow::Result<Option<TcpListener>> {
    use anyhow::Context as _;
    match addr {
        MetricsAddr::Off => Ok(None),
        MetricsAddr::At(addr) => Ok(Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener on {addr}"))?,
        )),
    }
}

/// The URL of a bound metrics listener, for ready lines (`off` when there is none).
pub(crate) fn url(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics"))
}

/// `GET /metrics`: the registry as OpenMetrics text; every other path is a 404.
pub(crate) fn router(registry: Arc<Registry>) -> Router {
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move { scrape(&registry) }
        }),
    )
}

fn scrape(registry: &Registry) -> Response {
    match encode(registry) {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "encoding the metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves `registry` on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening (GET /metrics)");
    }
    crate::admin_server::serve_with(
        listener,
        router(registry),
        shutdown,
        HEADER_READ_TIMEOUT,
        "metrics",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_off_disables() {
        assert_eq!(parse_metrics_addr("off"), Ok(MetricsAddr::Off));
        assert_eq!(parse_metrics_addr(" OFF "), Ok(MetricsAddr::Off));
        assert_eq!(
            parse_metrics_addr("127.0.0.1:4004"),
            Ok(MetricsAddr::At("127.0.0.1:4004".parse().expect("address")))
        );
        assert!(parse_metrics_addr("localhost").is_err());
        assert_eq!(url(None), "off");
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text_and_nothing_else() {
        use tower::ServiceExt as _;
        let mut registry = Registry::default();
        let counter: prometheus_client::metrics::counter::Counter = Default::default();
        counter.inc();
        registry.register("modelgw_test_events", "test", counter);
        let router = router(Arc::new(registry));
        let get =
            |path: &str| http::Request::get(path).body(axum::body::Body::empty()).expect("request");
        let response = router.clone().oneshot(get("/metrics")).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(text.contains("\nmodelgw_test_events_total 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let other = router.oneshot(get("/api/v1/status")).await.expect("infallible");
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
    }
}
