//! OpenTelemetry spans of the request path, and W3C Trace Context across it.
//!
//! With a [`RequestTracer`] (the binary builds one when an OTLP endpoint is configured), a
//! request the operations table serves gets a server span from its head to the end of its
//! response body — for a stream, the end of the stream — and each upstream attempt a client
//! span, its child. The client's `traceparent` (when valid) is the request span's parent, so
//! the gateway's spans join the client's trace; each upstream request carries a `traceparent`
//! naming its attempt span as parent (the client's `tracestate` goes along, through the header
//! allowlist, unchanged). An invalid `traceparent` starts a new trace, and then the client's
//! `tracestate`, which belongs to no trace we know, is not forwarded (W3C Trace Context §3.3).
//!
//! What it costs:
//! - No tracer (no OTLP endpoint): nothing here runs. `Proxy::tracer` is `None`, every hook
//!   below is a branch on an `Option` that is `None`: no span object, no allocation, and the
//!   client's `traceparent`/`tracestate` go upstream as they came (`upstream.rs`).
//! - A request the sampler drops: one non-recording span (the SDK's id generation and
//!   sampler; the span and the request's trace state boxed), no attempt spans, no attributes,
//!   no body wrapper; upstreams still get a `traceparent` in the client's trace (naming the
//!   unrecorded request span, `sampled` unset), formatted once per request.
//! - A recorded request: the spans, their attributes (a few small strings: names come from
//!   the configuration), one boxed body wrapper that ends the spans, and the SDK's export on
//!   its batch thread.
//!
//! Names and attributes follow the OpenTelemetry GenAI and HTTP semantic conventions where
//! they have one: the request span is `{gen_ai.operation.name} {gateway}` (kind server), an
//! attempt span `{gen_ai.operation.name} {endpoint}` (kind client); `gen_ai.request.model` is
//! the gateway's name (what the client asked for), `http.request.resend_count` numbers the
//! attempts after the first, `error.type` is the status code of a failed answer or the
//! attempt's outcome when there was none. The gateway's own are `modelgw.*`: gateway,
//! endpoint, region, the attempt's outcome (the `x-modelgw-attempts` label) and the whole
//! `x-modelgw-attempts` list. Never a key, a request body or a client-written path.
//!
//! Requests the operations table does not know (Azure's 404 from the gateway itself, before
//! any key check) and the probes get no span: they are no inference call, and scanners would
//! flood the trace store.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::str::FromStr as _;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::header::HeaderName;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use modelgw_model::Platform;
use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};

use super::attempt::{Answer, AttemptError, Outcome};
use super::operations::Operation;
use super::route::Route;
use super::upstream::RequestPlan;
use super::{ATTEMPTS_HEADER, BoxError, ProxyBody};
use crate::routing_table::CompiledEndpoint;

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `00-` + 32 + `-` + 16 + `-` + 2: a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// `error.type` of a response body that failed after its head was sent (the SSE error
/// event's code).
const STREAM_INTERRUPTED: &str = "stream_interrupted";
/// `error.type` of a response body the client stopped reading before its end.
const CLIENT_CLOSED: &str = "client_closed";

/// The request path's tracer: spans for requests and their upstream attempts. Cheap to clone
/// (one per serving thread).
#[derive(Clone)]
pub struct RequestTracer(Arc<BoxedTracer>);

impl RequestTracer {
    /// Wraps an OpenTelemetry tracer (e.g. the SDK's, from the process's tracer provider).
    pub fn new<T, S>(tracer: T) -> RequestTracer
    where
        T: Tracer<Span = S> + Send + Sync + 'static,
        S: opentelemetry::trace::Span + Send + Sync + 'static,
    {
        RequestTracer(Arc::new(BoxedTracer::new(Box::new(tracer))))
    }
}

impl fmt::Debug for RequestTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestTracer")
    }
}

/// Starts the request span of a request the operations table serves, when tracing is on.
/// Boxed: the request's future holds it across every await, and without tracing it is then
/// one word there.
#[inline]
pub(super) fn start(
    tracer: Option<&RequestTracer>,
    parts: &Parts,
    route: &Route<'_>,
) -> Option<Box<RequestTrace>> {
    match (tracer, route) {
        (Some(tracer), Route::Call(call)) => Some(Box::new(RequestTrace::start(
            tracer,
            &parts.headers,
            &parts.method,
            call.operation,
        ))),
        _ => None,
    }
}

/// One request's spans, from its head to the end of its response body.
pub(crate) struct RequestTrace {
    tracer: Arc<BoxedTracer>,
    span: BoxedSpan,
    recording: bool,
    operation: &'static str,
    /// The client's `traceparent` was valid: its `tracestate` belongs to this trace.
    continues_client_trace: bool,
    attempts: u32,
    /// The parent of attempt spans: the request span, as a local parent.
    parent: Option<Context>,
    /// What the next upstream request carries as `traceparent`.
    traceparent: Option<HeaderValue>,
    /// The attempt whose answer is passed on: its span ends with the response body.
    served: Option<BoxedSpan>,
}

impl RequestTrace {
    fn start(
        tracer: &RequestTracer,
        headers: &HeaderMap,
        method: &Method,
        operation: Operation,
    ) -> RequestTrace {
        let client = client_span_context(headers);
        let continues_client_trace = client.is_some();
        let parent = match client {
            Some(client) => Context::new().with_remote_span_context(client),
            None => Context::new(),
        };
        let name = gen_ai_operation(operation);
        let mut span = tracer
            .0
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .start_with_context(&*tracer.0, &parent);
        let recording = span.is_recording();
        if recording {
            span.set_attributes([
                KeyValue::new("gen_ai.operation.name", name),
                KeyValue::new("modelgw.operation", operation.label()),
                KeyValue::new("http.request.method", method_name(method)),
            ]);
        }
        RequestTrace {
            tracer: Arc::clone(&tracer.0),
            span,
            recording,
            operation: name,
            continues_client_trace,
            attempts: 0,
            parent: None,
            traceparent: None,
            served: None,
        }
    }

    /// Sets the `traceparent` (and drops a foreign `tracestate`) of an upstream request.
    #[inline]
    pub(super) fn inject(&self, headers: &mut HeaderMap) {
        if let Some(traceparent) = &self.traceparent {
            headers.insert(TRACEPARENT, traceparent.clone());
            if !self.continues_client_trace {
                headers.remove(TRACESTATE);
            }
        }
    }

    /// The span of the next attempt (`None` when the request is not recorded); the next
    /// upstream request names it (or, unrecorded, the request span) as its parent.
    fn start_attempt(&mut self, endpoint: &CompiledEndpoint, gateway: &str) -> Option<BoxedSpan> {
        self.attempts += 1;
        if !self.recording {
            if self.traceparent.is_none() {
                self.traceparent = traceparent(self.span.span_context());
            }
            return None;
        }
        let request = self.span.span_context();
        let parent = self.parent.get_or_insert_with(|| {
            let local = SpanContext::new(
                request.trace_id(),
                request.span_id(),
                request.trace_flags(),
                false,
                request.trace_state().clone(),
            );
            Context::new().with_remote_span_context(local)
        });
        let mut attributes = Vec::with_capacity(13);
        attributes.extend([
            KeyValue::new("gen_ai.operation.name", self.operation),
            KeyValue::new("gen_ai.request.model", gateway.to_owned()),
            KeyValue::new("modelgw.gateway", gateway.to_owned()),
            KeyValue::new("modelgw.endpoint", endpoint.name.clone()),
            KeyValue::new("modelgw.region", endpoint.region.clone()),
            KeyValue::new("server.address", endpoint.authority.host().to_owned()),
        ]);
        let port = endpoint
            .authority
            .port_u16()
            .unwrap_or(if endpoint.scheme == http::uri::Scheme::HTTP { 80 } else { 443 });
        attributes.push(KeyValue::new("server.port", i64::from(port)));
        if endpoint.platform == Platform::AzureOpenai {
            attributes.push(KeyValue::new("gen_ai.provider.name", "azure.ai.openai"));
        }
        if self.attempts > 1 {
            attributes
                .push(KeyValue::new("http.request.resend_count", i64::from(self.attempts - 1)));
        }
        let span = self
            .tracer
            .span_builder(format!("{} {}", self.operation, endpoint.name))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&*self.tracer, parent);
        self.traceparent = traceparent(span.span_context());
        Some(span)
    }

    /// Records how an attempt ended; a failed one's span ends now, the one whose answer is
    /// passed on ends with the response body.
    fn finish_attempt(
        &mut self,
        mut span: BoxedSpan,
        endpoint: &CompiledEndpoint,
        result: &Result<Box<Answer>, AttemptError>,
    ) {
        let (outcome, status, reason) = match result {
            Ok(answer) => (answer.outcome, Some(answer.status), None),
            Err(error) => (error.outcome, error.status, Some(&error.reason)),
        };
        span.set_attribute(KeyValue::new("modelgw.attempt.outcome", outcome.label()));
        if let Some(status) = status {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
        }
        if outcome != Outcome::Ok {
            let error_type = match status {
                Some(status) if status.as_u16() >= 400 => Cow::Owned(status.as_u16().to_string()),
                _ => Cow::Borrowed(outcome.label()),
            };
            span.set_attribute(KeyValue::new("error.type", error_type));
            let description = match (reason, status) {
                (Some(reason), _) => reason.to_string(),
                (None, Some(status)) => format!("upstream answered {status}"),
                (None, None) => outcome.label().to_owned(),
            };
            span.set_status(Status::error(description));
        }
        if result.is_ok() {
            self.span.set_attributes([
                KeyValue::new("modelgw.endpoint", endpoint.name.clone()),
                KeyValue::new("modelgw.region", endpoint.region.clone()),
            ]);
            self.served = Some(span);
        } else {
            span.end();
        }
    }
}

/// Hook before an attempt: its span, and the `traceparent` its request carries.
#[inline]
pub(super) fn attempt_started(
    plan: &mut RequestPlan<'_>,
    endpoint: &CompiledEndpoint,
    gateway: &str,
) -> Option<BoxedSpan> {
    plan.trace.as_deref_mut()?.start_attempt(endpoint, gateway)
}

/// Hook after an attempt: what it came to, on its span.
#[inline]
pub(super) fn attempt_finished(
    plan: &mut RequestPlan<'_>,
    span: Option<BoxedSpan>,
    endpoint: &CompiledEndpoint,
    result: &Result<Box<Answer>, AttemptError>,
) {
    if let (Some(span), Some(trace)) = (span, plan.trace.as_deref_mut()) {
        trace.finish_attempt(span, endpoint, result);
    }
}

/// Hook at the response head: the request's outcome on its span, and a body that ends the
/// spans when it ends. Unchanged when the request is not traced or not recorded.
#[inline]
pub(super) fn finish(
    trace: Option<Box<RequestTrace>>,
    gateway: Option<&str>,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    match trace {
        Some(trace) if trace.recording => traced_response(*trace, gateway, response),
        _ => response,
    }
}

fn traced_response(
    trace: RequestTrace,
    gateway: Option<&str>,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let RequestTrace { mut span, operation, served, .. } = trace;
    let status = response.status();
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
    if let Some(gateway) = gateway {
        span.update_name(format!("{operation} {gateway}"));
        span.set_attributes([
            KeyValue::new("gen_ai.request.model", gateway.to_owned()),
            KeyValue::new("modelgw.gateway", gateway.to_owned()),
        ]);
    }
    if let Some(attempts) = response.headers().get(ATTEMPTS_HEADER).and_then(|v| v.to_str().ok()) {
        span.set_attribute(KeyValue::new("modelgw.attempts", attempts.to_owned()));
    }
    // Server spans: a 4xx is the client's, not an error of the gateway's.
    if status.is_server_error() {
        span.set_attribute(KeyValue::new("error.type", status.as_u16().to_string()));
        span.set_status(Status::error(format!("answered {status}")));
    }
    response.map(|inner| {
        TracedBody { inner, spans: Some(EndingSpans { request: span, served }) }.boxed()
    })
}

/// The spans a response body ends.
struct EndingSpans {
    request: BoxedSpan,
    served: Option<BoxedSpan>,
}

impl EndingSpans {
    fn end(self, error: Option<(&'static str, String)>) {
        let EndingSpans { mut request, served } = self;
        if let Some(mut served) = served {
            if let Some((error_type, description)) = &error {
                served.set_attribute(KeyValue::new("error.type", *error_type));
                served.set_status(Status::error(description.clone()));
            }
            served.end();
        }
        if let Some((error_type, description)) = error {
            request.set_attribute(KeyValue::new("error.type", error_type));
            request.set_status(Status::error(description));
        }
        request.end();
    }
}

/// A response body that ends the request's spans when it ends: at its last frame, at its
/// error (a stream that broke after it started), or when it is dropped unfinished (the client
/// went away).
struct TracedBody {
    inner: ProxyBody,
    spans: Option<EndingSpans>,
}

impl Body for TracedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(spans) = this.spans.take() {
                    spans.end(None);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(spans) = this.spans.take() {
                    spans.end(Some((STREAM_INTERRUPTED, error.to_string())));
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        if let Some(spans) = self.spans.take() {
            // hyper drops a body it knows is complete without polling it to its end.
            if self.inner.is_end_stream() {
                spans.end(None);
            } else {
                let reason = "the client stopped reading before the response ended".to_owned();
                spans.end(Some((CLIENT_CLOSED, reason)));
            }
        }
    }
}

/// The client's span context, from a valid `traceparent` (and its `tracestate`).
fn client_span_context(headers: &HeaderMap) -> Option<SpanContext> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let first = values.next()?;
    if values.next().is_some() {
        // Two `traceparent` fields: which one is the parent is anyone's guess (W3C §3.2).
        return None;
    }
    let (trace_id, span_id, flags) = parse_traceparent(first.as_bytes())?;
    let state = trace_state(headers);
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// The `tracestate` fields combined (W3C §3.3.1); empty when absent or malformed.
fn trace_state(headers: &HeaderMap) -> TraceState {
    let mut values = headers.get_all(TRACESTATE).iter().filter_map(|v| v.to_str().ok());
    let Some(first) = values.next() else {
        return TraceState::NONE;
    };
    let combined = match values.next() {
        None => Cow::Borrowed(first),
        Some(second) => {
            let mut all = format!("{first},{second}");
            for more in values {
                all.push(',');
                all.push_str(more);
            }
            Cow::Owned(all)
        }
    };
    TraceState::from_str(&combined).unwrap_or(TraceState::NONE)
}

/// A `traceparent` value (W3C Trace Context): trace id, parent span id and flags (only
/// `sampled` kept). `None` when it is not one: wrong length or separators, anything but
/// lowercase hex, version `ff`, an all-zero trace or span id. A later version is read as
/// version 00 (its first 55 characters, then `-` and whatever follows).
pub(crate) fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    let value = value.trim_ascii();
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(value[0], value[1])?;
    match version {
        0 if value.len() != TRACEPARENT_LEN => return None,
        0xff => return None,
        _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, byte) in trace_id.iter_mut().enumerate() {
        *byte = hex_byte(value[3 + 2 * i], value[4 + 2 * i])?;
    }
    let mut span_id = [0u8; 8];
    for (i, byte) in span_id.iter_mut().enumerate() {
        *byte = hex_byte(value[36 + 2 * i], value[37 + 2 * i])?;
    }
    let flags = hex_byte(value[53], value[54])?;
    let (trace_id, span_id) = (TraceId::from_bytes(trace_id), SpanId::from_bytes(span_id));
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some((trace_id, span_id, TraceFlags::new(flags) & TraceFlags::SAMPLED))
}

/// Two lowercase hex digits (W3C: uppercase is invalid).
#[inline]
fn hex_byte(high: u8, low: u8) -> Option<u8> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    Some((digit(high)? << 4) | digit(low)?)
}

/// `00-{trace id}-{span id}-{flags}` naming `context` as the parent; `None` for an invalid
/// context (e.g. a tracer provider already shut down).
pub(crate) fn traceparent(context: &SpanContext) -> Option<HeaderValue> {
    if !context.is_valid() {
        return None;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; TRACEPARENT_LEN];
    out[..3].copy_from_slice(b"00-");
    let mut at = 3;
    let flags = (context.trace_flags() & TraceFlags::SAMPLED).to_u8();
    let trace_id = context.trace_id().to_bytes();
    let span_id = context.span_id().to_bytes();
    for (i, bytes) in [&trace_id[..], &span_id[..], &[flags][..]].into_iter().enumerate() {
        if i > 0 {
            out[at] = b'-';
            at += 1;
        }
        for byte in bytes {
            out[at] = HEX[usize::from(byte >> 4)];
            out[at + 1] = HEX[usize::from(byte & 0xf)];
            at += 2;
        }
    }
    HeaderValue::from_bytes(&out).ok()
}

/// `gen_ai.operation.name`: the GenAI conventions' well-known values where one fits (`chat`,
/// `text_completion`, `embeddings`; the Responses API is a chat), else the gateway's operation
/// label.
pub(crate) const fn gen_ai_operation(operation: Operation) -> &'static str {
    match operation {
        Operation::ChatCompletions | Operation::Responses => "chat",
        Operation::Completions => "text_completion",
        Operation::Embeddings => "embeddings",
        other => other.label(),
    }
}

/// `http.request.method`: the method, or `_OTHER` for one the conventions do not know.
fn method_name(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
        parse_traceparent(value.as_bytes())
    }

    #[test]
    fn a_valid_traceparent_is_read() {
        let (trace_id, span_id, flags) = parse(VALID).expect("valid");
        assert_eq!(trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span_id.to_string(), "00f067aa0ba902b7");
        assert!(flags.is_sampled());
        // Surrounding whitespace is no part of the value.
        assert!(parse(&format!(" {VALID}\t")).is_some());
    }

    #[test]
    fn the_unsampled_flag_and_unknown_flags() {
        let unsampled = VALID.replace("-01", "-00");
        assert!(!parse(&unsampled).expect("valid").2.is_sampled());
        // Flags other than `sampled` are not carried on (W3C: "other flags").
        let other = VALID.replace("-01", "-03");
        assert_eq!(parse(&other).expect("valid").2, TraceFlags::SAMPLED);
        let random_only = VALID.replace("-01", "-02");
        assert_eq!(parse(&random_only).expect("valid").2, TraceFlags::NOT_SAMPLED);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let cases = [
            ("", "empty"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "no flags"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-", "empty flags"),
            ("00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", "separator misplaced"),
            ("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "wrong separator"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", "version 00 too long"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-010", "version 00 too long"),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "uppercase trace id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", "uppercase span id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", "uppercase flags"),
            ("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "uppercase version"),
            ("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", "not hex"),
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"),
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "all-zero trace id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "all-zero span id"),
            ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", "no dash after 55"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\u{e9}", "non-ASCII"),
        ];
        for (value, why) in cases {
            assert_eq!(parse(value), None, "{why}: {value:?} was accepted");
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future-fields";
        assert_eq!(parse(later), parse(VALID));
        assert_eq!(parse(&VALID.replacen("00", "cc", 1)), parse(VALID));
    }

    #[test]
    fn a_traceparent_is_written_as_it_is_read() {
        for value in [VALID, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"] {
            let (trace_id, span_id, flags) = parse(value).expect("valid");
            let context = SpanContext::new(trace_id, span_id, flags, false, TraceState::NONE);
            let written = traceparent(&context).expect("a valid context");
            assert_eq!(written.to_str().expect("ASCII"), value);
        }
        assert_eq!(traceparent(&SpanContext::empty_context()), None);
    }

    #[test]
    fn the_client_context_needs_exactly_one_valid_traceparent() {
        let mut headers = HeaderMap::new();
        assert!(client_span_context(&headers).is_none());
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        headers.append(TRACESTATE, HeaderValue::from_static("vendor=a"));
        headers.append(TRACESTATE, HeaderValue::from_static("other=b"));
        let context = client_span_context(&headers).expect("one valid traceparent");
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(context.trace_state().get("vendor"), Some("a"));
        assert_eq!(context.trace_state().get("other"), Some("b"));
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(client_span_context(&headers).is_none(), "two traceparent fields");
    }

    #[test]
    fn a_malformed_tracestate_is_left_empty() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACESTATE, HeaderValue::from_static("not a list entry"));
        assert_eq!(trace_state(&headers).header(), "");
    }
}
