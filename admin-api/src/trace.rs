//! One span per request (request id, method, route, status, latency) and the request id that
//! ties a response to its log lines.
//!
//! With an OTLP endpoint configured the span is exported too (the binary's
//! `tracing-opentelemetry` layer), named `{method} {route}` (kind server, the OpenTelemetry
//! HTTP conventions), in the client's trace when its `traceparent` is valid, with the change
//! it made (`modelgw.entity`, `modelgw.action`; [`record_change`]). The store's spans of the
//! request are its children.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::Status;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

/// Response header carrying the request id, so operators can find the request in the log.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    /// The id of the request being served on this task (set by [`trace_request`]).
    static REQUEST_ID: Uuid;
}

/// The id of the request being served, when called from inside one.
pub fn current_request_id() -> Option<Uuid> {
    REQUEST_ID.try_with(|id| *id).ok()
}

/// Middleware: opens the request span, logs completion, and sets `x-request-id`.
///
/// The route is the matched template (`/api/v1/gateways/{id}`), not the raw path, so log
/// cardinality stays bounded and nothing a client typed into the path is logged verbatim.
pub async fn trace_request(request: Request, next: Next) -> Response {
    // Generated here rather than taken from the client: the id is used as a log key, and a
    // client-chosen value could collide with or forge another request's.
    let request_id = Uuid::new_v4();
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "admin_request",
        // The exported span's name and kind; the log lines leave `otel.*` fields out.
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        request_id = %request_id,
        method = %method,
        route = %route,
        // Set by the auth middleware once the caller is known (never a token).
        actor = tracing::field::Empty,
        // Set by a request that changed something (`record_change`).
        modelgw.entity = tracing::field::Empty,
        modelgw.action = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    continue_client_trace(&span, request.headers());
    span.set_attribute("http.request.method", method.to_string());
    span.set_attribute("http.route", route);
    let mut response =
        REQUEST_ID.scope(request_id, next.run(request)).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    span.set_attribute("http.response.status_code", i64::from(status));
    if response.status().is_server_error() {
        span.set_attribute("error.type", status.to_string());
        span.set_status(Status::error(format!("answered {status}")));
    }
    span.in_scope(|| tracing::info!(status, latency_ms, "admin request"));
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Names what a request changed (`modelgw.entity`, `modelgw.action`) on its span: in its log
/// lines and its exported span. Called where a change is committed.
pub(crate) fn record_change(entity: &str, action: &str) {
    let span = tracing::Span::current();
    span.record("modelgw.entity", entity);
    span.record("modelgw.action", action);
}

/// Makes the client's span the parent of the request's, when its `traceparent` is valid (the
/// process's propagator: W3C Trace Context). Without the OpenTelemetry layer (no OTLP
/// endpoint) there is nothing to join, and nothing is done.
fn continue_client_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
}

/// Request headers as the propagator reads them.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
