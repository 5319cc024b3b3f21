//! Streaming a committed answer to the client: the frames read ahead first, then the upstream
//! body frame by frame within the idle gap and the deadline. Nothing here can fail over any
//! more: a failure ends an SSE stream with an error event, then an aborted body (never a clean
//! end), and cools the endpoint down when it was the endpoint's fault. When the answer ends
//! its key's limits charge it (`limits::Ticket`): its `usage`, else its reservation; an error
//! status: one request, no tokens. The response ids of a Responses API answer are replaced by
//! ids pinned to the endpoint that gave it (`crate::pin`) before anything else — traces, usage,
//! the client — sees the bytes: in the whole body, in each framed SSE event, or across the
//! chunks of a body too large to read ahead.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::{Span, warn};

use super::attempt::{Answer, error_chain};
use super::deadline::bounded;
use super::exchange::{is_encoded, is_event_stream, next_data};
use super::operations::Operation;
use super::sse::SseFramer;
use super::upstream::RequestPlan;
use super::upstream::downstream_headers;
use super::{ATTEMPTS_HEADER, BoxError, ENDPOINT_HEADER, Proxy, ProxyBody};
use crate::health::{Admission, HealthEvent, HealthRegistry};
use crate::limits::Ticket;
use crate::metrics::{Finished, Metrics, RouteMetrics, usage};
use crate::pin::{PinSigner, ResponseIds, joined};
use crate::routing_table::CompiledEndpoint;

/// Pause between sending the SSE error event and aborting the body. hyper discards buffered
/// bytes when a body fails, so the event needs a moment on the wire first; 100 ms is plenty
/// on any live connection and invisible next to the failure itself.
const STREAM_ERROR_FLUSH_GRACE: Duration = Duration::from_millis(100);

/// What a committed answer carries besides itself: the admission it holds until its body
/// ends, the pair's counters, the request's deadline, its `x-modelgw-attempts` list and its
/// key limits' ticket.
pub(super) struct Committed<'a> {
    pub(super) admission: Admission,
    pub(super) accounting: Option<&'a Arc<RouteMetrics>>,
    pub(super) deadline: Instant,
    pub(super) attempts: &'a str,
    /// The request's trace, ended with the answer (`None`: its gateway records none).
    pub(super) trace: Option<Box<crate::traces::TraceRecorder>>,
    pub(super) charge: Option<Ticket>,
    /// For a Responses API answer: mints the pinned ids of the member that gave it.
    pub(super) pin: Option<PinSigner>,
}

impl Proxy {
    /// Streams the upstream answer to the client frame by frame. A failure after this point
    /// cannot fail over: an SSE stream gets a final `data: {"error":…}` frame (the SDKs raise
    /// it) and then an aborted body; any other body is aborted. Never a clean end.
    pub(super) fn pass_through(
        &self,
        plan: &RequestPlan<'_>,
        answer: Answer,
        endpoint: &Arc<CompiledEndpoint>,
        committed: Committed<'_>,
    ) -> Response<ProxyBody> {
        let Committed { admission, accounting, deadline, attempts, charge, trace, pin } = committed;
        let Answer { status, mut headers, mut ahead, body, .. } = answer;
        // An error answer is charged at once: one request, no tokens.
        let charge = match charge {
            Some(ticket) if !status.is_success() => {
                ticket.settle_error();
                None
            }
            charge => charge,
        };
        let operation = plan.call.operation.index();
        let shard = self.shard;
        if let Some(counters) = accounting {
            counters.answered(shard, operation, status.as_u16());
        }
        // An encoded (e.g. gzip) stream cannot be framed, nor an error event appended to it:
        // relayed as it comes, aborted on failure.
        let sse = is_event_stream(&headers) && !is_encoded(&headers);
        // Ids are pinned in successful answers the gateway can read (it asked for them
        // unencoded; an upstream that compresses anyway keeps its ids, and the log says so).
        let ids = match pin {
            Some(pin) if status.is_success() && !is_encoded(&headers) => {
                Some(ResponseIds::new(pin))
            }
            Some(_) if status.is_success() => {
                warn!(
                    request_id = plan.request_id,
                    endpoint = %endpoint.name,
                    "a Responses answer came compressed; its ids are passed on unpinned"
                );
                None
            }
            _ => None,
        };
        if let Some(ids) = &ids {
            if ahead.complete && !sse {
                let whole = ids.whole(joined(ahead.frames.iter()));
                if headers.contains_key(CONTENT_LENGTH) {
                    headers.insert(CONTENT_LENGTH, HeaderValue::from(whole.len()));
                }
                ahead.frames = VecDeque::from([whole]);
            } else {
                // Streamed on: its length changes as it goes.
                headers.remove(CONTENT_LENGTH);
            }
        }
        let body = if ahead.complete && !sse {
            // Read whole before the commit (a chat or embeddings answer): nothing left that
            // could fail, nothing to frame; its frames go out as they are.
            drop(body);
            let encoded = is_encoded(&headers);
            // Read once for the trace, the metrics and the key's limits alike.
            let usage = if (trace.is_some() || accounting.is_some() || charge.is_some())
                && status.is_success()
                && !encoded
            {
                usage::usage_of_frames(ahead.frames.iter())
            } else {
                None
            };
            if let Some(trace) = trace {
                trace.finish_whole(status.as_u16(), &ahead.frames, encoded, usage);
            }
            if accounting.is_some() || charge.is_some() {
                if let Some(counters) = accounting {
                    let elapsed = plan.started.elapsed();
                    let end = Finished { elapsed, usage, ..Finished::default() };
                    counters.finished(shard, operation, &end);
                }
                if let Some(ticket) = charge {
                    ticket.settle(usage.map(usage::Usage::charge));
                }
            }
            BodyExt::boxed(ReadWhole { frames: ahead.frames, _admission: admission })
        } else {
            // Whenever the gateway asked for usage itself, a tally takes it out again.
            let tally = (accounting.is_some() || charge.is_some() || plan.strip_usage).then(|| {
                StreamTally {
                    route: accounting.cloned(),
                    shard,
                    operation,
                    started: plan.started,
                    usage: usage::StreamUsage::new(plan.strip_usage),
                    first_token: None,
                    open: (sse && accounting.is_some()).then(|| OpenStream::new(&self.metrics)),
                    done: false,
                    charge,
                }
            });
            let relay = Relay {
                body,
                ahead: ahead.frames,
                ended: ahead.complete,
                framer: sse.then(|| SseFramer::new(self.limits.max_sse_event_bytes)),
                idle: self.limits.idle_timeout,
                deadline,
                health: Arc::clone(&self.health),
                endpoint: Arc::clone(endpoint),
                span: Span::current(),
                request_id: Box::from(plan.request_id),
                _admission: admission,
                phase: Phase::Streaming,
                tally,
                trace: trace.map(|trace| {
                    let chat = plan.call.operation == Operation::ChatCompletions;
                    trace.relayed(status.as_u16(), sse, is_encoded(&headers), chat)
                }),
                ids: ids.map(Box::new),
            };
            BodyExt::boxed(http_body_util::StreamBody::new(futures::stream::unfold(
                relay,
                Relay::step,
            )))
        };
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = downstream_headers(headers);
        out.headers_mut().insert(ENDPOINT_HEADER, endpoint.name_header.clone());
        if let Ok(value) = HeaderValue::from_str(attempts) {
            out.headers_mut().insert(ATTEMPTS_HEADER, value);
        }
        out
    }
}

/// Counts one stream open while it is (the `modelgw_open_streams` gauge).
struct OpenStream(Arc<Metrics>);

impl OpenStream {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.open_streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(Arc::clone(metrics))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A relayed answer's accounting: its first token, its usage (and, when the gateway asked
/// for usage itself, what to take out again), recorded once when it ends — cleanly, cut, or
/// dropped by a client that went away — in the pair's counters (metrics on) and its key's
/// budgets (charged its usage, else its reservation).
struct StreamTally {
    route: Option<Arc<RouteMetrics>>,
    /// The serving thread's shard of the counters.
    shard: usize,
    operation: usize,
    started: Instant,
    usage: usage::StreamUsage,
    first_token: Option<Duration>,
    open: Option<OpenStream>,
    done: bool,
    charge: Option<Ticket>,
}

impl StreamTally {
    /// Events on their way to the client: what the client gets.
    #[inline]
    fn on_events(&mut self, events: Bytes) -> Bytes {
        let (out, first) = self.usage.on_events(events);
        if first {
            self.first_token = Some(self.started.elapsed());
        }
        out
    }

    fn finish(&mut self, cut: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.open = None;
        if let Some(route) = &self.route {
            let end = Finished {
                elapsed: self.started.elapsed(),
                first_token: self.first_token,
                usage: self.usage.usage,
                cut,
            };
            route.finished(self.shard, self.operation, &end);
        }
        if let Some(ticket) = self.charge.take() {
            ticket.settle(self.usage.usage.map(usage::Usage::charge));
        }
    }
}

impl Drop for StreamTally {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The body of an answer read whole before it was committed: the frames read, then the end.
/// Holds the admission like [`Relay`] does, until the body is sent or dropped.
struct ReadWhole {
    frames: VecDeque<Bytes>,
    _admission: Admission,
}

impl http_body::Body for ReadWhole {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frames = &mut self.get_mut().frames;
        // Empty frames are skipped, as the relay skips them.
        while let Some(frame) = frames.pop_front() {
            if !frame.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.iter().all(Bytes::is_empty)
    }
}

enum Phase {
    Streaming,
    /// The error event was sent; the next poll aborts the body.
    Failing(String),
    Done,
}

/// Relays one upstream body to the client, with the idle-gap and deadline limits. For SSE it
/// forwards whole events only (up to the last blank line), so that an error event after a
/// cut never lands inside a half-sent one.
struct Relay {
    body: Incoming,
    /// Frames read before the answer was committed; sent first.
    ahead: VecDeque<Bytes>,
    /// The upstream body already ended: nothing more to read from it.
    ended: bool,
    /// SSE only: whole events out, one event at most `max_sse_event_bytes`.
    framer: Option<SseFramer>,
    idle: Duration,
    deadline: Instant,
    health: Arc<HealthRegistry>,
    endpoint: Arc<CompiledEndpoint>,
    span: Span,
    /// Named in the line logged when the stream breaks (the span is debug-level).
    request_id: Box<str>,
    /// Keeps the request counted in flight (and a half-open trial slot) until the body ends.
    _admission: Admission,
    phase: Phase,
    /// The answer's accounting (`None` with metrics off and no key budget to charge).
    tally: Option<StreamTally>,
    /// The request's trace (`None` when its gateway records none); sees the events before the
    /// tally takes out a usage chunk the gateway asked for, and ends when the relay does.
    /// Boxed: the relay is moved into every step's future, so it stays small without traces.
    trace: Option<Box<crate::traces::ResponseTrace>>,
    /// A Responses API answer's ids being pinned (`None` for every other answer); sees the
    /// bytes first. Boxed like the trace.
    ids: Option<Box<ResponseIds>>,
}

type RelayItem = Result<Frame<Bytes>, BoxError>;

impl Relay {
    async fn step(mut self) -> Option<(RelayItem, Relay)> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Failing(reason) => {
                    // hyper drops what it has buffered when a body fails; let it flush the
                    // error event to the client first.
                    tokio::time::sleep(STREAM_ERROR_FLUSH_GRACE).await;
                    return Some((Err(reason.into()), self));
                }
                Phase::Streaming => self.phase = Phase::Streaming,
            }
            let next = match self.ahead.pop_front() {
                Some(frame) => Ok(Ok(Some(frame))),
                None if self.ended => Ok(Ok(None)),
                None => {
                    let (limit, by_deadline) = bounded(self.idle, self.deadline);
                    tokio::time::timeout(limit, next_data(&mut self.body))
                        .await
                        .map_err(|_| by_deadline)
                }
            };
            let failure = match next {
                Ok(Ok(Some(bytes))) => {
                    let out = match &mut self.framer {
                        None => {
                            let bytes = match &mut self.ids {
                                Some(ids) => ids.push(bytes),
                                None => bytes,
                            };
                            if let Some(trace) = &mut self.trace {
                                trace.on_body(&bytes);
                            }
                            Ok(bytes)
                        }
                        Some(framer) => framer.push(bytes).map(|events| {
                            let events = match &self.ids {
                                Some(ids) if !events.is_empty() => ids.whole(events),
                                _ => events,
                            };
                            if let Some(trace) = &mut self.trace {
                                trace.on_events(&events);
                            }
                            match &mut self.tally {
                                Some(tally) if !events.is_empty() => tally.on_events(events),
                                _ => events,
                            }
                        }),
                    };
                    match out {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Some((Ok(Frame::data(out)), self)),
                        Err(too_large) => (
                            format!(
                                "the upstream sent an SSE event larger than {} bytes",
                                too_large.max_event
                            ),
                            true,
                        ),
                    }
                }
                Ok(Ok(None)) => {
                    let rest = match self.framer.take() {
                        Some(mut framer) => {
                            let rest = framer.finish().map(|rest| match &self.ids {
                                Some(ids) => ids.whole(rest),
                                None => rest,
                            });
                            if let (Some(rest), Some(trace)) = (&rest, &mut self.trace) {
                                trace.on_events(rest);
                            }
                            match (rest, &mut self.tally) {
                                (Some(rest), Some(tally)) => Some(tally.on_events(rest)),
                                (rest, _) => rest,
                            }
                        }
                        // A body relayed in chunks: what the id rewrite still held back.
                        None => {
                            let held = self.ids.as_mut().map(|ids| ids.finish());
                            let rest = held.filter(|held| !held.is_empty());
                            if let (Some(rest), Some(trace)) = (&rest, &mut self.trace) {
                                trace.on_body(rest);
                            }
                            rest
                        }
                    };
                    if let Some(tally) = &mut self.tally {
                        tally.finish(false);
                    }
                    if let Some(trace) = &mut self.trace {
                        trace.finish();
                    }
                    return rest.map(|rest| (Ok(Frame::data(rest)), self));
                }
                Ok(Err(err)) => (format!("upstream stream failed: {}", error_chain(&err)), true),
                Err(false) => (format!("no upstream data for {} ms", self.idle.as_millis()), true),
                Err(true) => ("the request deadline was reached".to_owned(), false),
            };
            let (reason, endpoint_fault) = failure;
            self.span.in_scope(|| {
                warn!(
                    request_id = &*self.request_id,
                    endpoint = %self.endpoint.name,
                    region = %self.endpoint.region,
                    reason = %reason,
                    "stream ended early after the response started; telling the client"
                );
            });
            if endpoint_fault {
                let event = HealthEvent::Failed { reason: format!("stream cut: {reason}") };
                self.health.record(self.endpoint.id, &event, Instant::now());
            }
            if let Some(tally) = &mut self.tally {
                tally.finish(endpoint_fault);
            }
            if let Some(trace) = &mut self.trace {
                trace.finish();
            }
            if self.framer.take().is_some() {
                self.phase = Phase::Failing(reason.clone());
                return Some((Ok(Frame::data(stream_error_event(&reason))), self));
            }
            return Some((Err(reason.into()), self));
        }
    }
}

/// The SSE frame that tells the client a stream broke: the openai SDK raises `APIError` on a
/// data frame with an `error` key.
fn stream_error_event(message: &str) -> Bytes {
    let value = serde_json::json!({
        "error": { "code": "stream_interrupted", "message": message }
    });
    Bytes::from(format!("data: {value}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_event_is_a_data_frame() {
        let event = stream_error_event("upstream \"cut\"");
        let text = std::str::from_utf8(&event).expect("utf-8");
        assert!(text.starts_with("data: ") && text.ends_with("\n\n"));
        let value: serde_json::Value =
            serde_json::from_str(text.trim_start_matches("data: ").trim_end()).expect("json");
        assert_eq!(value["error"]["code"], "stream_interrupted");
        assert_eq!(value["error"]["message"], "upstream \"cut\"");
    }
}
