//! One request's trace, filled in by the request path as it goes and queued when the answer
//! ends: at once for the gateway's own answers and for answers read whole, when the body ends
//! (or the client goes away) for relayed ones.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use memchr::memmem;
use modelgw_model::traces::{MAX_CLIENT_REQUEST_ID_CHARS, RequestTrace, TraceAttempt};
use modelgw_model::{EndpointId, GatewayId, GatewayKeyId};

use super::redact::{Captured, MAX_CAPTURE_PARSE_BYTES, capture_body};
use super::stream::{ChatReassembly, RawEvents};
use super::{CompiledTraces, TraceQueue};
use crate::metrics::usage::{Usage, find_usage, has_token};

/// Bytes of a relayed non-streamed body's end kept to find its `usage` and `model` when the
/// body is not captured (the members are at the end of the answer).
const TAIL_BYTES: usize = 16 * 1024;

/// A request being traced.
pub(crate) struct TraceRecorder {
    queue: Arc<TraceQueue>,
    config: Arc<CompiledTraces>,
    trace: RequestTrace,
    /// When the request arrived (latency and time to first token count from here).
    started: Instant,
}

/// Who the request is and what it asked for, known once its key was checked.
pub(crate) struct TraceStart<'a> {
    pub gateway_id: GatewayId,
    pub key_id: GatewayKeyId,
    pub operation: &'static str,
    pub request_id: &'a str,
    pub client_request_id: Option<&'a HeaderValue>,
    pub started: Instant,
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The client's request id as a trace keeps it: control characters dropped, bounded.
fn client_request_id(value: &HeaderValue) -> Option<String> {
    let id: String = String::from_utf8_lossy(value.as_bytes())
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_CLIENT_REQUEST_ID_CHARS)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// The last `max` bytes of `frames` (copied only when they span several frames).
fn tail_of(frames: &VecDeque<Bytes>, max: usize) -> std::borrow::Cow<'_, [u8]> {
    let mut tail: Vec<&Bytes> = Vec::new();
    let mut len = 0;
    for frame in frames.iter().rev() {
        tail.push(frame);
        len += frame.len();
        if len >= max {
            break;
        }
    }
    match tail.as_slice() {
        [] => std::borrow::Cow::Borrowed(&[]),
        [one] => std::borrow::Cow::Borrowed(&one[..]),
        many => {
            let mut joined = Vec::with_capacity(len);
            for frame in many.iter().rev() {
                joined.extend_from_slice(frame);
            }
            std::borrow::Cow::Owned(joined)
        }
    }
}

/// The key of the answer's `model` member.
const MODEL_KEY: &[u8] = b"\"model\"";

/// [`MODEL_KEY`]'s searcher, built once (building one costs more than most searches).
static MODEL_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(MODEL_KEY));

/// The first `"model": "<string>"` member of `bytes` (the answer names the model it ran).
pub(crate) fn answer_model(bytes: &[u8]) -> Option<String> {
    MODEL_FINDER.find_iter(bytes).find_map(|at| {
        let rest = &bytes[at + MODEL_KEY.len()..];
        let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        if rest[colon] != b':' {
            return None;
        }
        let mut values =
            serde_json::Deserializer::from_slice(&rest[colon + 1..]).into_iter::<String>();
        values.next()?.ok().filter(|m| !m.is_empty())
    })
}

impl TraceRecorder {
    pub(crate) fn start(
        queue: &Arc<TraceQueue>,
        config: &Arc<CompiledTraces>,
        start: TraceStart<'_>,
    ) -> Box<TraceRecorder> {
        let started_at = SystemTime::now() - start.started.elapsed();
        Box::new(TraceRecorder {
            queue: Arc::clone(queue),
            config: Arc::clone(config),
            started: start.started,
            trace: RequestTrace {
                request_id: start.request_id.to_owned(),
                started_unix_ms: unix_ms(started_at),
                gateway_id: start.gateway_id,
                key_id: start.key_id,
                operation: start.operation.to_owned(),
                model: None,
                stream: false,
                status: 0,
                attempts: Vec::new(),
                latency_ms: 0,
                ttft_ms: None,
                prompt_tokens: None,
                completion_tokens: None,
                client_request_id: start.client_request_id.and_then(client_request_id),
                request_body: None,
                response_body: None,
                payload_truncated: false,
            },
        })
    }

    /// The request body as the client sent it, the model it asked for and whether it streams.
    pub(crate) fn request(&mut self, body: &[u8], model: Option<&str>, stream: bool) {
        self.trace.model = model.map(str::to_owned);
        self.trace.stream = stream;
        if self.config.capture_payload
            && let Some(captured) = capture_body(body, &self.config)
        {
            self.set_body(captured, true);
        }
    }

    fn set_body(&mut self, captured: Captured, request: bool) {
        self.trace.payload_truncated |= captured.truncated;
        let body = Some(captured.text);
        if request {
            self.trace.request_body = body;
        } else {
            self.trace.response_body = body;
        }
    }

    /// One upstream attempt: the endpoint, its status (`None`: no answer), how it ended.
    pub(crate) fn attempt(
        &mut self,
        endpoint_id: EndpointId,
        status: Option<u16>,
        outcome: &'static str,
        latency_ms: u64,
    ) {
        self.trace.attempts.push(TraceAttempt {
            endpoint_id,
            status,
            outcome: outcome.to_owned(),
            latency_ms: u32::try_from(latency_ms).unwrap_or(u32::MAX),
        });
    }

    fn set_usage(&mut self, usage: Option<Usage>) {
        if let Some(usage) = usage {
            self.trace.prompt_tokens = Some(usage.input);
            self.trace.completion_tokens = Some(usage.output);
        }
    }

    fn queue(mut self: Box<Self>) {
        self.trace.latency_ms = ms(self.started.elapsed());
        let queue = Arc::clone(&self.queue);
        queue.push(self.trace);
    }

    /// The gateway answered itself (`status`): the trace ends here.
    pub(crate) fn finish_local(mut self: Box<Self>, status: u16) {
        self.trace.status = status;
        self.queue();
    }

    /// An answer read whole before it was committed: the trace ends here. `usage`: what the
    /// request path read from the answer (a success, not content-encoded) for its metrics and
    /// limits — read once per request, not again here.
    pub(crate) fn finish_whole(
        mut self: Box<Self>,
        status: u16,
        frames: &VecDeque<Bytes>,
        encoded: bool,
        usage: Option<Usage>,
    ) {
        self.trace.status = status;
        if !encoded {
            self.set_usage(usage);
            // In the first frame (OpenAI puts it first) or near the end (Azure sorts the
            // members: `model` comes just before `usage`); the body is never joined whole.
            let model = frames.front().and_then(|first| answer_model(first)).or_else(|| {
                let tail = tail_of(frames, TAIL_BYTES);
                answer_model(&tail)
            });
            if model.is_some() {
                self.trace.model = model;
            }
        }
        if self.config.capture_payload {
            let captured = if encoded {
                Some(Captured {
                    text: "[not captured: content-encoded body]".into(),
                    truncated: true,
                })
            } else {
                let total: usize = frames.iter().map(Bytes::len).sum();
                match frames.len() {
                    0 => None,
                    1 => capture_body(&frames[0], &self.config),
                    _ if total > MAX_CAPTURE_PARSE_BYTES => Some(Captured {
                        text: format!("[not captured: {total} bytes]"),
                        truncated: true,
                    }),
                    _ => {
                        let joined: Vec<u8> =
                            frames.iter().flat_map(|f| f.iter().copied()).collect();
                        capture_body(&joined, &self.config)
                    }
                }
            };
            if let Some(captured) = captured {
                self.set_body(captured, false);
            }
        }
        self.queue();
    }

    /// An answer relayed as it comes: observed by the relay, ended with the body.
    pub(crate) fn relayed(
        mut self: Box<Self>,
        status: u16,
        sse: bool,
        encoded: bool,
        chat: bool,
    ) -> Box<ResponseTrace> {
        self.trace.status = status;
        let capture = match (self.config.capture_payload, encoded, sse) {
            (false, _, _) => Capture::Nothing,
            (true, true, _) => Capture::Encoded,
            (true, false, true) if chat => {
                Capture::Chat(ChatReassembly::new(self.config.payload_cap))
            }
            (true, false, true) => Capture::Events(RawEvents::default()),
            (true, false, false) => Capture::Body { bytes: Vec::new(), over: false },
        };
        Box::new(ResponseTrace {
            recorder: Some(self),
            capture,
            sse,
            encoded,
            first_token: None,
            usage: None,
            model: None,
            tail: Vec::new(),
        })
    }
}

/// What a relayed answer's trace keeps of its body.
enum Capture {
    /// Metadata only.
    Nothing,
    /// Content-encoded (e.g. gzip): not readable here.
    Encoded,
    /// A chat completion stream, merged into one message.
    Chat(ChatReassembly),
    /// Another stream's events.
    Events(RawEvents),
    /// A non-streamed body, up to [`MAX_CAPTURE_PARSE_BYTES`] (`over`: it was larger).
    Body { bytes: Vec<u8>, over: bool },
}

/// The trace of an answer being relayed. Ends (and is queued) when the body ends, breaks, or
/// is dropped because the client went away.
pub(crate) struct ResponseTrace {
    recorder: Option<Box<TraceRecorder>>,
    capture: Capture,
    sse: bool,
    encoded: bool,
    /// Since the request arrived.
    first_token: Option<std::time::Duration>,
    usage: Option<Usage>,
    model: Option<String>,
    /// The last [`TAIL_BYTES`] of a non-streamed body (metadata only).
    tail: Vec<u8>,
}

impl ResponseTrace {
    /// Whole SSE events, as the upstream sent them (before any usage chunk the gateway asked
    /// for is taken out again: its tokens count).
    pub(crate) fn on_events(&mut self, events: &[u8]) {
        let Some(recorder) = &self.recorder else { return };
        if events.is_empty() || self.encoded {
            return;
        }
        if self.first_token.is_none() && has_token(events) {
            self.first_token = Some(recorder.started.elapsed());
        }
        if let Some(usage) = find_usage(events) {
            self.usage = Some(usage);
        }
        if self.model.is_none() {
            self.model = answer_model(events);
        }
        match &mut self.capture {
            Capture::Chat(chat) => chat.on_events(events),
            Capture::Events(raw) => raw.on_events(events, &recorder.config),
            Capture::Nothing | Capture::Encoded | Capture::Body { .. } => {}
        }
    }

    /// A frame of a body that is not an event stream.
    pub(crate) fn on_body(&mut self, bytes: &[u8]) {
        if self.recorder.is_none() || self.encoded || self.sse {
            return;
        }
        match &mut self.capture {
            Capture::Body { bytes: kept, over } => {
                if !*over && kept.len() + bytes.len() <= MAX_CAPTURE_PARSE_BYTES {
                    kept.extend_from_slice(bytes);
                } else {
                    *over = true;
                    kept.clear();
                }
            }
            _ => {
                self.tail.extend_from_slice(bytes);
                if self.tail.len() > TAIL_BYTES {
                    self.tail.drain(..self.tail.len() - TAIL_BYTES);
                }
            }
        }
    }

    /// Ends the trace (once): what was seen, then into the queue.
    pub(crate) fn finish(&mut self) {
        let Some(mut recorder) = self.recorder.take() else { return };
        let capture = std::mem::replace(&mut self.capture, Capture::Nothing);
        let captured = match capture {
            Capture::Nothing => None,
            Capture::Encoded => Some(Captured {
                text: "[not captured: content-encoded body]".into(),
                truncated: true,
            }),
            Capture::Chat(chat) => Some(chat.finish(&recorder.config)),
            Capture::Events(raw) => Some(raw.finish()),
            Capture::Body { over: true, .. } => Some(Captured {
                text: format!("[not captured: larger than {MAX_CAPTURE_PARSE_BYTES} bytes]"),
                truncated: true,
            }),
            Capture::Body { bytes, over: false } => {
                if recorder.trace.status < 300 {
                    self.usage = self.usage.or_else(|| find_usage(&bytes));
                }
                if self.model.is_none() {
                    self.model = answer_model(&bytes);
                }
                capture_body(&bytes, &recorder.config)
            }
        };
        if !self.sse && !self.tail.is_empty() {
            if recorder.trace.status < 300 {
                self.usage = self.usage.or_else(|| find_usage(&self.tail));
            }
            if self.model.is_none() {
                self.model = answer_model(&self.tail);
            }
        }
        if let Some(captured) = captured {
            recorder.set_body(captured, false);
        }
        recorder.set_usage(self.usage);
        if self.sse {
            recorder.trace.ttft_ms = self.first_token.map(ms);
        }
        if let Some(model) = self.model.take() {
            recorder.trace.model = Some(model);
        }
        recorder.queue();
    }
}

impl Drop for ResponseTrace {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelgw_model::traces::TraceSettings;

    use crate::metrics::usage::usage_of_frames;

    fn recorder(queue: &Arc<TraceQueue>, settings: TraceSettings) -> Box<TraceRecorder> {
        let config = CompiledTraces::compile(&settings).expect("enabled");
        TraceRecorder::start(
            queue,
            &config,
            TraceStart {
                gateway_id: GatewayId::new(),
                key_id: GatewayKeyId::new(),
                operation: "chat_completions",
                request_id: "req-1",
                client_request_id: Some(&HeaderValue::from_static("client\t-1")),
                started: Instant::now(),
            },
        )
    }

    fn capture(fields: &[&str]) -> TraceSettings {
        TraceSettings {
            enabled: true,
            capture_payload: true,
            redact_fields: fields.iter().map(|f| f.to_string()).collect(),
            max_payload_bytes: None,
        }
    }

    #[test]
    fn the_answer_names_the_model() {
        assert_eq!(
            answer_model(br#"{"id":"x","model":"gpt-4o-2024-11-20"}"#).as_deref(),
            Some("gpt-4o-2024-11-20")
        );
        assert_eq!(
            answer_model(br#"{"content":"\"model\": \"fake\"","model" : "real"}"#).as_deref(),
            Some("real")
        );
        assert_eq!(answer_model(br#"{"model":null}"#), None);
    }

    #[test]
    fn a_streamed_chat_is_traced_with_its_first_token_usage_and_reassembled_answer() {
        let queue = Arc::new(TraceQueue::new(10));
        let mut r = recorder(&queue, capture(&["content"]));
        r.request(
            br#"{"messages":[{"role":"user","content":"my secret"}],"stream":true}"#,
            Some("gw"),
            true,
        );
        r.attempt(EndpointId::new(), Some(429), "throttled", 3);
        r.attempt(EndpointId::new(), Some(200), "ok", 5);
        let mut response = r.relayed(200, true, false, true);
        response.on_events(b"data: {\"choices\":[],\"prompt_filter_results\":[]}\n\n");
        response.on_events(b"data: {\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n");
        response.on_events(b"data: {\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n");
        response.on_events(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n");
        drop(response);
        let batch = queue.next_batch().expect("queued");
        let t = &batch.traces[0];
        assert_eq!((t.status, t.stream, t.model.as_deref()), (200, true, Some("gpt-4o-mini")));
        assert_eq!((t.prompt_tokens, t.completion_tokens), (Some(4), Some(1)));
        assert!(t.ttft_ms.is_some());
        assert_eq!(
            t.attempts.iter().map(|a| a.outcome.as_str()).collect::<Vec<_>>(),
            ["throttled", "ok"]
        );
        assert_eq!(t.client_request_id.as_deref(), Some("client-1"), "control characters dropped");
        let request = t.request_body.as_deref().expect("request captured");
        assert!(!request.contains("my secret") && request.contains("[REDACTED]"), "{request}");
        let answer: serde_json::Value =
            serde_json::from_str(t.response_body.as_deref().expect("answer")).expect("json");
        assert_eq!(answer["choices"][0]["message"]["content"], "[REDACTED]");
        assert_eq!(answer["usage"]["prompt_tokens"], 4);
    }

    #[test]
    fn metadata_only_copies_no_body() {
        let queue = Arc::new(TraceQueue::new(10));
        let mut r = recorder(&queue, TraceSettings { enabled: true, ..Default::default() });
        r.request(br#"{"messages":[{"content":"hello"}]}"#, None, false);
        let frames: VecDeque<Bytes> = [
            Bytes::from_static(br#"{"model":"gpt-4o","choices":[{"message":{"content":"hi"}}],"#),
            Bytes::from_static(br#""usage":{"prompt_tokens":3,"completion_tokens":2}}"#),
        ]
        .into_iter()
        .collect();
        r.finish_whole(200, &frames, false, usage_of_frames(frames.iter()));
        let t = queue.next_batch().expect("queued").traces.remove(0);
        assert_eq!((t.request_body, t.response_body, t.payload_truncated), (None, None, false));
        assert_eq!(
            (t.prompt_tokens, t.completion_tokens, t.model.as_deref()),
            (Some(3), Some(2), Some("gpt-4o"))
        );
        assert_eq!(t.ttft_ms, None, "not a stream");
    }

    #[test]
    fn local_answers_and_abandoned_streams_are_traced_once() {
        let queue = Arc::new(TraceQueue::new(10));
        recorder(&queue, capture(&[])).finish_local(503);
        let mut cut = recorder(&queue, capture(&[])).relayed(200, true, false, false);
        cut.on_events(b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n");
        cut.finish();
        drop(cut);
        let batch = queue.next_batch().expect("queued");
        assert_eq!(batch.traces.len(), 2);
        assert_eq!(batch.traces[0].status, 503);
        assert_eq!(
            batch.traces[1].response_body.as_deref(),
            Some("event: response.created\ndata: {\"type\":\"response.created\"}\n\n")
        );
    }
}
