//! The access log: one line per request (target `modelgw::access`), and the request id that
//! ties it to the request's other lines and to Azure's logs.

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use tracing::{Span, info};

use super::upstream::CLIENT_REQUEST_ID;
use super::{ATTEMPTS_HEADER, ENDPOINT_HEADER, ProxyBody};

/// Longest client-supplied request id that is adopted (and logged); longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The client's `x-ms-client-request-id` when it is a sane header value, else a new UUID.
pub(super) fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(CLIENT_REQUEST_ID)
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            // A hyphenated UUID is always a valid header value; the fallback is unreachable.
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or(HeaderValue::from_static("-"))
        })
}

/// The access-log line of one request, logged when the response head is ready (a streamed
/// body may still be flowing). A served first attempt logs nothing else at `info`; every
/// failed or skipped member has its own `warn`/`info` line before this. Every field is a
/// `&str` or a number: the cheapest values for a formatter to write (this line was a seventh
/// of the request path's instructions).
#[inline]
pub(super) fn log_request(
    span: &Span,
    parts: &Parts,
    gateway: Option<&str>,
    response: &Response<ProxyBody>,
    ms: u64,
) {
    let status = response.status().as_u16();
    span.record("status", status);
    let header = |name: &HeaderName| {
        response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-")
    };
    span.in_scope(|| {
        info!(
            target: "modelgw::access",
            request_id = header(&CLIENT_REQUEST_ID),
            method = parts.method.as_str(),
            path = parts.uri.path(),
            gateway = gateway.unwrap_or("-"),
            status,
            ms,
            endpoint = header(&ENDPOINT_HEADER),
            attempts = header(&ATTEMPTS_HEADER),
            "request answered"
        )
    });
}
