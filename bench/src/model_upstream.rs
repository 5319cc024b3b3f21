//! A fake model upstream for the `llm` section: answers a streamed chat completion the way a
//! model server does — the first chunk after a think time, then one `chat.completion.chunk`
//! SSE event every 20–50 ms (a seeded random gap per event), a final chunk with
//! `finish_reason`, a usage chunk (the request asks `stream_options.include_usage`) and
//! `data: [DONE]`. Each event is its own body frame, so hyper writes (and flushes) it alone,
//! as a model server does one write per token.
//!
//! Every event but `[DONE]` carries `"t"`: nanoseconds since [`ModelUpstream::base`] taken
//! when the event is handed to hyper, and `"n"`: its index in the stream. The client lives in
//! the same process and reads the same clock, so read time − `t` is each event's exact
//! forwarding delay (direct: the floor; through a proxy: the floor plus the hop).
//!
//! It is a hyper HTTP/1.1 server on 127.0.0.1 (port 0), on a tokio runtime of its own
//! (2 worker threads), answering `POST /openai/deployments/<any>/chat/completions` (any
//! query). The shape of the answers ([`Shape`]) is set by the section before it runs; the
//! seed of a stream's gaps comes from the request's `user` field (`llm-<index>`), so every row
//! sees the same gap sequences.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// How the fake model answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Request received → first chunk written (the model's "think time").
    pub first_delay: Duration,
    /// Content chunks per answer (the first carries the role, the last `finish_reason`).
    pub chunks: usize,
    /// Gap between two chunks: uniform in `[gap_min, gap_max]`, per gap.
    pub gap_min: Duration,
    pub gap_max: Duration,
    /// Mixed with the stream's index into the seed of its gaps.
    pub seed: u64,
}

impl Shape {
    /// Timestamped events per answer: the content chunks and the usage chunk.
    pub fn events(&self) -> usize {
        self.chunks + 1
    }
}

/// The content filter annotations Azure puts on every content chunk (so each event has a
/// realistic size, ~500 bytes).
const FILTER: &str = r#"{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}"#;

/// A splitmix64 step: a small, seeded, good-enough generator for the gaps.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The gap after an event: uniform in `[min, max]` (microsecond steps).
pub fn gap(state: &mut u64, min: Duration, max: Duration) -> Duration {
    let span = u64::try_from(max.saturating_sub(min).as_micros()).unwrap_or(u64::MAX);
    min + Duration::from_micros(splitmix64(state) % span.saturating_add(1))
}

/// Event `n` (0-based) of stream `stream` of an answer of `shape.chunks` chunks, stamped `t`
/// (ns since the base); `n == chunks` is the usage chunk.
pub fn event(stream: u64, n: usize, chunks: usize, t: u64) -> String {
    let head = format!(
        r#"data: {{"id":"chatcmpl-llm{stream}","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_b705f0c291","t":{t},"n":{n},"choices":"#
    );
    let tail = if n == chunks {
        format!(
            r#"[],"usage":{{"prompt_tokens":19,"completion_tokens":{chunks},"total_tokens":{}}}}}"#,
            19 + chunks
        )
    } else {
        let (delta, finish) = match n {
            0 => (r#"{"role":"assistant","content":""}"#, "null"),
            n if n + 1 == chunks => (r#"{}"#, r#""stop""#),
            _ => (r#"{"content":" token"}"#, "null"),
        };
        format!(
            r#"[{{"index":0,"delta":{delta},"finish_reason":{finish},"logprobs":null,"content_filter_results":{FILTER}}}]}}"#
        )
    };
    format!("{head}{tail}\n\n")
}

/// The final event.
pub const DONE: &str = "data: [DONE]\n\n";

/// What the server shares with its connections.
struct State {
    base: Instant,
    shape: Mutex<Shape>,
    /// Answers started (streams), for the section's checks.
    answers: AtomicU64,
}

/// The running fake model (stopped on drop).
pub struct ModelUpstream {
    pub port: u16,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ModelUpstream {
    /// Binds 127.0.0.1:0 and serves on a runtime of its own.
    pub fn start(shape: Shape) -> anyhow::Result<ModelUpstream> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("model-upstream")
            .enable_all()
            .build()
            .context("the model upstream's runtime")?;
        let listener = {
            let _guard = runtime.enter();
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).context("binding 127.0.0.1:0")?;
            // A deep backlog: the section opens thousands of connections in about a second.
            socket.listen(4096)?
        };
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            base: Instant::now(),
            shape: Mutex::new(shape),
            answers: AtomicU64::new(0),
        });
        runtime.spawn(accept(listener, state.clone()));
        Ok(ModelUpstream { port, state, runtime: Some(runtime) })
    }

    /// The clock every `"t"` counts from.
    pub fn base(&self) -> Instant {
        self.state.base
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_shape(&self, shape: Shape) {
        if let Ok(mut s) = self.state.shape.lock() {
            *s = shape;
        }
    }

    /// Streamed answers started so far.
    pub fn answers(&self) -> u64 {
        self.state.answers.load(Ordering::Relaxed)
    }
}

impl Drop for ModelUpstream {
    fn drop(&mut self) {
        // Without blocking: the fixture is dropped inside the bench's runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let (conn, _): (tokio::net::TcpStream, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: say so once per failure and keep serving.
                eprintln!("model upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn error(status: u16, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": status.to_string(), "message": message}});
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *res.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    res.headers_mut()
        .insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    res
}

/// Whether `path` is `/openai/deployments/<name>/chat/completions`.
pub fn is_chat_path(path: &str) -> bool {
    path.strip_prefix("/openai/deployments/")
        .and_then(|rest| rest.strip_suffix("/chat/completions"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// The stream index of `llm-<index>` in the request's `user` field.
pub fn stream_index(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v["stream"] != true {
        return None;
    }
    v["user"].as_str()?.strip_prefix("llm-")?.parse().ok()
}

async fn answer(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    if req.method() != hyper::Method::POST || !is_chat_path(req.uri().path()) {
        return Ok(error(404, "Resource not found"));
    }
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return Ok(error(400, "unreadable body"));
    };
    let Some(stream) = stream_index(&body) else {
        return Ok(error(400, "expected a streamed request with user llm-<index>"));
    };
    let shape = match state.shape.lock() {
        Ok(s) => *s,
        Err(_) => return Ok(error(500, "shape lock poisoned")),
    };
    state.answers.fetch_add(1, Ordering::Relaxed);
    let mut stream_seed = stream;
    let rng = shape.seed ^ splitmix64(&mut stream_seed);
    let base = state.base;
    // State: the next event's index, the wait before it, the generator.
    let events =
        futures::stream::unfold((0usize, shape.first_delay, rng), move |(n, wait, mut rng)| {
            async move {
                if n > shape.chunks {
                    return None;
                }
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let t = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let text = event(stream, n, shape.chunks, t);
                // Content chunks are spaced; the usage chunk follows the last one at once.
                let next_wait = if n + 1 < shape.chunks {
                    gap(&mut rng, shape.gap_min, shape.gap_max)
                } else {
                    Duration::ZERO
                };
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(text))), (n + 1, next_wait, rng)))
            }
        });
    let done =
        futures::stream::once(async { Ok(Frame::data(Bytes::from_static(DONE.as_bytes()))) });
    let body = StreamBody::new(futures::StreamExt::chain(events, done));
    let mut res = Response::new(body.boxed());
    let h = res.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", hyper::header::HeaderValue::from_static("no-cache"));
    Ok(res)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn events_are_azure_chunks_with_a_stamp() {
        let first = event(7, 0, 3, 123);
        assert!(first.starts_with("data: {") && first.ends_with("}\n\n"));
        let v: serde_json::Value = serde_json::from_str(first[6..].trim()).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["t"], 123);
        assert_eq!(v["n"], 0);
        assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
        let last: serde_json::Value = serde_json::from_str(event(7, 2, 3, 9)[6..].trim()).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let usage: serde_json::Value = serde_json::from_str(event(7, 3, 3, 9)[6..].trim()).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 3);
    }

    #[test]
    fn gaps_stay_in_range_and_depend_on_the_seed() {
        let (min, max) = (Duration::from_millis(20), Duration::from_millis(50));
        let mut s = 42;
        let gaps: Vec<Duration> = (0..1000).map(|_| gap(&mut s, min, max)).collect();
        assert!(gaps.iter().all(|g| *g >= min && *g <= max));
        let mean = gaps.iter().sum::<Duration>() / 1000;
        assert!(mean > Duration::from_millis(32) && mean < Duration::from_millis(38), "{mean:?}");
        let mut s2 = 43;
        assert_ne!(gap(&mut s2, min, max), gaps[0]);
    }

    #[test]
    fn paths_and_stream_indexes() {
        assert!(is_chat_path("/openai/deployments/llm/chat/completions"));
        assert!(!is_chat_path("/openai/deployments//chat/completions"));
        assert!(!is_chat_path("/openai/deployments/a/b/chat/completions"));
        assert!(!is_chat_path("/openai/deployments/llm/embeddings"));
        assert_eq!(stream_index(br#"{"stream":true,"user":"llm-12"}"#), Some(12));
        assert_eq!(stream_index(br#"{"stream":false,"user":"llm-12"}"#), None);
        assert_eq!(stream_index(br#"{"stream":true}"#), None);
    }
}
