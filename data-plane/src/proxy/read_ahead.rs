//! Reading an upstream body before its answer is committed to the client: the frames held
//! back so that a cut can still fail over, and the start of a 429 body for its delay.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use super::Proxy;
use super::attempt::{AttemptError, body_broke, body_stalled};
use super::deadline::bounded;
use crate::snapshot::CompiledEndpoint;

/// How long reading the start of a 429 body may take before the default window is used
/// instead.
const THROTTLE_BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// Body frames read before an answer is committed to the client.
#[derive(Default)]
pub(super) struct ReadAhead {
    pub(super) frames: VecDeque<Bytes>,
    /// The upstream body ended: `frames` is all of it.
    pub(super) complete: bool,
}

impl Proxy {
    /// Reads a non-streamed 2xx body before it is committed, so that a cut inside it fails
    /// over: all of it, or the first `max_buffered_response_bytes` (nothing when
    /// `Content-Length` already says more) after which the rest is streamed. Each chunk must
    /// come within the idle gap, and all of it before `deadline`.
    pub(super) async fn read_ahead(
        &self,
        endpoint: &CompiledEndpoint,
        headers: &HeaderMap,
        body: &mut Incoming,
        status: StatusCode,
        deadline: Instant,
    ) -> Result<ReadAhead, AttemptError> {
        let cap = self.limits.max_buffered_response_bytes;
        let idle = self.limits.idle_timeout;
        let mut ahead = ReadAhead::default();
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > cap as u64) {
            debug!(
                endpoint = %endpoint.name,
                content_length = declared,
                cap,
                "answer larger than the read-ahead cap; streaming it"
            );
            return Ok(ahead);
        }
        let mut read = 0usize;
        while read < cap {
            let (limit, by_deadline) = bounded(idle, deadline);
            match tokio::time::timeout(limit, next_data(body)).await {
                Err(_) => return Err(body_stalled(by_deadline, status, idle, read)),
                Ok(Err(err)) => return Err(body_broke(status, read, &err)),
                Ok(Ok(None)) => {
                    ahead.complete = true;
                    return Ok(ahead);
                }
                Ok(Ok(Some(chunk))) => {
                    read += chunk.len();
                    ahead.frames.push_back(chunk);
                }
            }
        }
        debug!(
            endpoint = %endpoint.name,
            read,
            cap,
            "answer reached the read-ahead cap; streaming the rest"
        );
        Ok(ahead)
    }
}

/// Up to `limit` bytes of a response body, within [`THROTTLE_BODY_TIMEOUT`]; whatever arrived
/// when the limit, the deadline or an error is hit.
pub(super) async fn read_prefix(mut body: Incoming, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        while out.len() < limit {
            match next_data(&mut body).await {
                Ok(Some(chunk)) => {
                    out.extend_from_slice(&chunk[..chunk.len().min(limit - out.len())])
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(THROTTLE_BODY_TIMEOUT, read).await;
    out
}

/// The next data frame of `body` (trailers are skipped); `None` at the end.
pub(super) async fn next_data(body: &mut Incoming) -> Result<Option<Bytes>, hyper::Error> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(err)) => return Err(err),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

#[inline]
pub(super) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}
