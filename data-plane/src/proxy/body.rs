//! Reading the client's request body once, bounded in size and time, so that it can be
//! re-sent on failover.

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Response};
use http_body::Body as _;
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

/// A body the gateway answered without reading (a refusal before the body was needed: a wrong
/// key, an unserved path, no configuration yet): read and dropped in the background, within the
/// same size and time bounds as a body that is read, so that the client's upload completes and
/// its keep-alive connection stays usable — what nginx's lingering close is for. Dropped unread,
/// hyper closes the connection under a client that is still writing (EPIPE instead of the
/// answer) or about to send its next request on it ("server disconnected"). A body declared
/// larger than the limit is not waited for: that connection closes.
pub(super) fn discard(body: Incoming, limits: &Limits) {
    if body.is_end_stream() || body.size_hint().lower() > limits.max_body_bytes as u64 {
        return;
    }
    let (limit, timeout) = (limits.max_body_bytes, limits.client_body_timeout);
    tokio::spawn(async move {
        let drain = async move {
            let mut body = body;
            let mut read = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, bytes::Buf::remaining);
                if read > limit {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, drain).await;
    });
}
