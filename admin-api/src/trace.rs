//! One span per request (request id, method, route, status, latency) and the request id that
//! ties a response to its log lines.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use tracing::Instrument;
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
        request_id = %request_id,
        method = %method,
        route = %route,
        // Set by the auth middleware once the caller is known (never a token).
        actor = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let mut response =
        REQUEST_ID.scope(request_id, next.run(request)).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    span.in_scope(|| tracing::info!(status, latency_ms, "admin request"));
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
