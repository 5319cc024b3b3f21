//! Reading the client's request body once, bounded in size and time, so that it can be
//! re-sent on failover.

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tracing::info;

use super::{Limits, ProxyBody, reply};

/// The whole body, or the answer for a body too large (413), broken (400) or too slow (408).
pub(super) async fn read_body(
    limits: &Limits,
    headers: &HeaderMap,
    body: Incoming,
    rid: &str,
) -> Result<Bytes, Response<ProxyBody>> {
    let limit = limits.max_body_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        info!(request_id = rid, content_length = declared, limit, "request body too large");
        return Err(reply::payload_too_large(limit));
    }
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(limits.client_body_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
            info!(request_id = rid, limit, "request body too large");
            Err(reply::payload_too_large(limit))
        }
        Ok(Err(err)) => {
            info!(request_id = rid, error = %err, "could not read the request body");
            Err(reply::bad_body())
        }
        Err(_) => {
            info!(
                request_id = rid,
                timeout_ms = limits.client_body_timeout.as_millis() as u64,
                "request body too slow"
            );
            Err(reply::body_timeout(limits.client_body_timeout))
        }
    }
}
