//! One exchange with an endpoint, up to the moment its answer may be committed to the
//! client: the request with the endpoint's credential, the wait for the head (first-byte
//! timeout), then what must be read before committing (an SSE answer's first frame, a
//! non-streamed 2xx body up to the read-ahead cap, the start of a 429 body for its delay).
//! What each result means is decided in `attempt.rs`.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use super::Proxy;
use super::attempt::{Answer, AttemptError, Outcome, Retry, body_broke, body_stalled, error_chain};
use super::deadline::bounded;
use super::upstream::RequestPlan;
use super::upstream_client::UpstreamBody;
use crate::health::{RateLimits, retry_after_from_headers};
use crate::routing_table::{CompiledEndpoint, UpstreamAuth};

/// How much of a 429 body is read to find "retry after N seconds" when the headers give no
/// delay. Azure's 429 bodies are a few hundred bytes.
const THROTTLE_BODY_LIMIT: usize = 16 * 1024;

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
    /// One upstream request; classifies the answer without passing on a byte of a body the
    /// client gets. Waits at most the first-byte timeout for the head (and an SSE answer's
    /// first frame), reads a non-streamed 2xx body ahead (see the module docs of `proxy`), and
    /// never waits past `deadline`.
    pub(super) async fn attempt(
        &self,
        plan: &mut RequestPlan<'_>,
        endpoint: &CompiledEndpoint,
        deadline: Instant,
    ) -> Result<Box<Answer>, AttemptError> {
        let mut headers = plan.headers();
        if plan.strip_usage
            || plan.charge.as_ref().is_some_and(crate::limits::Ticket::limited)
            || plan.call.operation.mints_response_ids()
        {
            // The usage chunk the gateway asked for is taken out of the stream again, a key
            // with limits is charged the answer's usage, and the response ids of a Responses
            // answer are replaced by pinned ones: all need the answer unencoded, so the
            // upstream may not compress it.
            headers.remove(http::header::ACCEPT_ENCODING);
        }
        match &endpoint.auth {
            UpstreamAuth::Static { name, value } => {
                headers.insert(name.clone(), value.clone());
            }
            UpstreamAuth::Entra { scope } => match self.entra.header(scope) {
                Some(value) => {
                    headers.insert(http::header::AUTHORIZATION, value);
                }
                None => {
                    return Err(AttemptError::new(Outcome::NoCredential, None, "no Entra token"));
                }
            },
        }
        let uri = plan.url(endpoint).map_err(|err| {
            let reason = format!("could not build the upstream URI: {err}");
            AttemptError::new(Outcome::Transport, None, reason)
        })?;
        let mut request = Request::new(UpstreamBody::new(plan.body(endpoint)));
        *request.method_mut() = plan.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let first_byte = self.limits.upstream_timeout;
        let attempt_started = Instant::now();
        let (limit, by_deadline) = bounded(first_byte, deadline);
        let response = match tokio::time::timeout(limit, self.http.request(request)).await {
            Err(_) => {
                return Err(AttemptError::timed_out(by_deadline, None, || {
                    format!("no response head within {} ms", first_byte.as_millis())
                }));
            }
            Ok(Err(err)) => {
                let outcome = Outcome::of_request_error(&err);
                return Err(AttemptError::new(outcome, None, error_chain(&err)));
            }
            Ok(Ok(response)) => response,
        };
        let ttfb = attempt_started.elapsed();
        let status = response.status();
        let outcome = Outcome::of_status(status, plan.client_scoped_auth);
        if outcome == Outcome::Throttled {
            let now = SystemTime::now();
            let (parts, body) = response.into_parts();
            // The body is read only when no header says when to come back.
            let text = match retry_after_from_headers(&parts.headers, now) {
                Some(_) => None,
                None => Some(read_prefix(body, THROTTLE_BODY_LIMIT).await),
            };
            let window = self.health.policy().throttle_window(&parts.headers, text.as_deref(), now);
            let limits = RateLimits::from_headers(&parts.headers);
            return Err(AttemptError::throttled(status, window, limits));
        }
        if outcome.retry() == Retry::NextEndpoint {
            let reason = format!("upstream answered {status}");
            return Err(AttemptError::new(outcome, Some(status), reason));
        }
        let (parts, mut body) = response.into_parts();
        let sse = is_event_stream(&parts.headers);
        // A stream that breaks before its first byte reached the client can still fail over:
        // read the first frame before committing to this endpoint.
        let ahead = if sse && outcome == Outcome::Ok {
            // The first data frame is the first byte: it shares the first-byte budget.
            let left = first_byte.saturating_sub(attempt_started.elapsed());
            let (limit, by_deadline) = bounded(left, deadline);
            match tokio::time::timeout(limit, next_data(&mut body)).await {
                Err(_) => {
                    return Err(AttemptError::timed_out(by_deadline, Some(status), || {
                        format!("no stream data within {} ms", first_byte.as_millis())
                    }));
                }
                Ok(Err(err)) => {
                    let reason =
                        format!("stream broke before its first byte: {}", error_chain(&err));
                    return Err(AttemptError::new(Outcome::Transport, Some(status), reason));
                }
                Ok(Ok(first)) => {
                    ReadAhead { complete: first.is_none(), frames: first.into_iter().collect() }
                }
            }
        } else if status.is_success() {
            self.read_ahead(endpoint, &parts.headers, &mut body, status, deadline).await?
        } else {
            ReadAhead::default()
        };
        Ok(Box::new(Answer { status, headers: parts.headers, ahead, body, outcome, ttfb }))
    }

    /// Reads a non-streamed 2xx body before it is committed, so that a cut inside it fails
    /// over: all of it, or the first `max_buffered_response_bytes` (nothing when
    /// `Content-Length` already says more) after which the rest is streamed. Each chunk must
    /// come within the idle gap, and all of it before `deadline`.
    async fn read_ahead(
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
async fn read_prefix(mut body: Incoming, limit: usize) -> Vec<u8> {
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
#[inline]
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

/// Whether the body has a content coding other than `identity` (e.g. gzip).
#[inline]
pub(super) fn is_encoded(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}
