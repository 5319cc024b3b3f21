//! Mocks of the OpenAI-compatible servers an `openai_compatible` Inference Endpoint points at:
//! OpenAI itself, vLLM's OpenAI-compatible server and Ollama's `/v1` surface — each in its own
//! dialect (paths, auth, model names, error bodies, headers, SSE), so the gateway can be shown
//! to speak each one. One type, [`CompatibleMock`], started with a [`Dialect`].
//!
//! What each dialect does, and where it comes from:
//!
//! | | OpenAI | vLLM | Ollama |
//! |---|---|---|---|
//! | base URL | `https://api.openai.com/v1` | `http://host:8000/v1` | `http://host:11434/v1` |
//! | paths | `chat/completions`, `completions`, `embeddings`, `responses`, `models` under `/v1` | the same | the same |
//! | auth | `Authorization: Bearer` always; `api-key` ignored | `Bearer`, only when started with a key, only on `/v1…` | none (any or no `Authorization`) |
//! | 401 | `invalid_api_key` (wrong) or `code: null` (missing) | `{"error":"Unauthorized"}` | — |
//! | model | must be one the key may use; absent: 400 | must equal a served name; absent: the first | `name[:tag]`, no tag means `:latest`; absent: 400 |
//! | unknown model | 404 `model_not_found` | 404 `NotFoundError`, `code: 404` | 404 `not_found_error` |
//! | unknown path | 404 `Invalid URL (…)` | 404 `{"detail":"Not Found"}` | 404 `404 page not found` (text) |
//! | headers | `x-request-id`, `openai-processing-ms`, `openai-version`, `x-ratelimit-*` (`reset` as `6ms`, `1s`) | `server: uvicorn` | — |
//! | SSE | `data: {…}` … `data: [DONE]`; with `include_usage` every chunk has `"usage":null` and a last `"choices":[]` chunk | the same | finish chunk, then the usage chunk, then `[DONE]` |
//!
//! Verified against the servers' sources: vLLM's `AuthenticationMiddleware` (`/v1` prefix only,
//! `{"error":"Unauthorized"}`), `ErrorResponse { error: ErrorInfo { message, type, param, code:
//! int } }` and `_check_model`'s "The model `x` does not exist." (vllm
//! `entrypoints/openai/server_utils.py`, `engine/protocol.py`, 2025–26); Ollama's
//! `openai/openai.go` (`NewError`: 400 → `invalid_request_error`, 404 → `not_found_error`,
//! else `api_error`; `fp_ollama`; chunk and finish/usage order) and `middleware/openai.go`
//! (`writeError` uses the real status since v0.18.0; before it every error said `api_error`),
//! the chat handler's "model 'x' not found". OpenAI's shapes are from its API reference and
//! observed answers (error object with `type`/`param`/`code`, the `x-ratelimit-*` names and
//! duration format); its key hint in the 401 message is approximated (`sk-ab***cd`).
//!
//! Like [`crate::MockAzure`] it records every request it receives (credential headers in full,
//! for in-process assertions) and can be told to fail the next requests ([`CompatibleFault`]).
//! It has no control API: only in-process tests use it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{MAX_RECORDED_REQUESTS, MAX_REQUEST_BODY_BYTES, RecordedRequest, wire};

/// Pause between two SSE frames: a client sees separate chunks, a stream takes a few ms.
const STREAM_GAP: Duration = Duration::from_millis(2);

/// The OpenAI `system_fingerprint` the mock reports.
const OPENAI_FINGERPRINT: &str = "fp_0ba0d124f1";

/// Requests per minute the OpenAI dialect reports in `x-ratelimit-limit-requests`.
const OPENAI_REQUEST_LIMIT: u64 = 10_000;

/// Tokens per minute the OpenAI dialect reports in `x-ratelimit-limit-tokens`.
const OPENAI_TOKEN_LIMIT: u64 = 30_000_000;

/// Which server the mock speaks as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// `api.openai.com`.
    OpenAi,
    /// vLLM's `vllm serve` (its OpenAI-compatible API server).
    Vllm,
    /// Ollama's OpenAI compatibility layer (`/v1`).
    Ollama,
}

impl Dialect {
    pub const ALL: [Dialect; 3] = [Dialect::OpenAi, Dialect::Vllm, Dialect::Ollama];

    /// Short lower-case name, e.g. for endpoint names in tests.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Vllm => "vllm",
            Dialect::Ollama => "ollama",
        }
    }
}

/// What one mock serves.
#[derive(Clone)]
pub struct CompatibleConfig {
    /// Named in the reply text ([`wire::reply_text`]), so a test can tell who answered.
    pub label: String,
    /// OpenAI: the models the key may use. vLLM: the served model names
    /// (`--served-model-name`; the first is the default). Ollama: the pulled models, tagged or
    /// not (`llama3.2` means `llama3.2:latest`).
    pub models: Vec<String>,
    /// The bearer key required. OpenAI: always required (with `None` any `sk-…` is taken);
    /// vLLM: only when set (`--api-key`); Ollama: ignored.
    pub api_key: Option<String>,
}

impl fmt::Debug for CompatibleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompatibleConfig")
            .field("label", &self.label)
            .field("models", &self.models)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A misbehaviour applied to the next request(s) that pass auth and routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompatibleFault {
    /// Answer `status` with the dialect's body for it; `retry_after` becomes `retry-after`
    /// (and, on OpenAI's 429, the "Please try again in Ns." of its message).
    Status { status: u16, retry_after: Option<u64>, times: u32 },
    /// Drop the connection after reading the request, before any response byte.
    Reset { times: u32 },
}

impl CompatibleFault {
    fn times_mut(&mut self) -> &mut u32 {
        match self {
            CompatibleFault::Status { times, .. } | CompatibleFault::Reset { times } => times,
        }
    }
}

/// A running mock. Cheap to clone; every clone controls the same server, which runs until
/// [`CompatibleMock::shutdown`].
#[derive(Clone)]
pub struct CompatibleMock {
    inner: Arc<Inner>,
}

struct Inner {
    dialect: Dialect,
    config: CompatibleConfig,
    addr: SocketAddr,
    state: Mutex<MockState>,
    /// Ids and `created` values: unique per answer.
    counter: AtomicU64,
    shutdown: watch::Sender<bool>,
}

#[derive(Default)]
struct MockState {
    faults: VecDeque<CompatibleFault>,
    requests: VecDeque<RecordedRequest>,
    served: u64,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, MockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl CompatibleMock {
    /// Serves `dialect` on 127.0.0.1 (a free port) in background tasks.
    pub async fn start(dialect: Dialect, config: CompatibleConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            dialect,
            config,
            addr,
            state: Mutex::new(MockState::default()),
            counter: AtomicU64::new(1),
            shutdown,
        });
        tokio::spawn(accept_loop(listener, inner.clone()));
        Ok(CompatibleMock { inner })
    }

    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// The base URL an operator configures for this server: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.inner.addr)
    }

    /// The exact assistant content of a chat answer.
    pub fn reply_text(&self) -> String {
        wire::reply_text(&self.inner.config.label)
    }

    /// Appends `fault` to the queue (applied in order, each `times` times).
    pub fn script(&self, fault: CompatibleFault) {
        let mut fault = fault;
        if *fault.times_mut() > 0 {
            self.inner.state().faults.push_back(fault);
        }
    }

    /// Every request received, oldest first (at most [`MAX_RECORDED_REQUESTS`]), credentials
    /// in full.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.state().requests.iter().cloned().collect()
    }

    /// Clears faults and records.
    pub fn reset(&self) {
        let mut state = self.inner.state();
        state.faults.clear();
        state.requests.clear();
    }

    /// Stops accepting and closes every open connection.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }
}

type Body = UnsyncBoxBody<Bytes, MockFailure>;

/// Why the mock ends a connection without an answer.
#[derive(Debug, thiserror::Error)]
enum MockFailure {
    #[error("scripted reset: connection dropped before the response")]
    ScriptedReset,
    #[error("reading the request body: {0}")]
    RequestBody(String),
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(serve_connection(stream, inner.clone())); }
                Err(error) => {
                    tracing::warn!(dialect = inner.dialect.name(), %error, "compatible mock accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn serve_connection(stream: TcpStream, inner: Arc<Inner>) {
    let _ = stream.set_nodelay(true);
    let mut stop = inner.shutdown.subscribe();
    let service_inner = inner.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let inner = service_inner.clone();
        async move { handle(&inner, req).await }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = conn => {
            if let Err(error) = result {
                tracing::debug!(dialect = inner.dialect.name(), %error, "compatible mock connection ended with an error");
            }
        }
        () = stopped(&mut stop) => {}
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Chat,
    Completions,
    Embeddings,
    Responses,
    ListModels,
    GetModel,
}

fn route(method: &Method, path: &str) -> Option<Op> {
    let rest = path.strip_prefix("/v1/")?;
    match (method.as_str(), rest) {
        ("POST", "chat/completions") => Some(Op::Chat),
        ("POST", "completions") => Some(Op::Completions),
        ("POST", "embeddings") => Some(Op::Embeddings),
        ("POST", "responses") => Some(Op::Responses),
        ("GET", "models") => Some(Op::ListModels),
        ("GET", m) if m.strip_prefix("models/").is_some_and(|name| !name.is_empty()) => {
            Some(Op::GetModel)
        }
        _ => None,
    }
}

async fn handle(inner: &Inner, req: Request<Incoming>) -> Result<Response<Body>, MockFailure> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"));
        }
        Err(e) => return Err(MockFailure::RequestBody(e.to_string())),
    };
    let request: Option<Value> = serde_json::from_slice(&body).ok();
    let model: Option<String> =
        request.as_ref().and_then(|r| r.get("model")).and_then(Value::as_str).map(str::to_owned);
    let model = model.as_deref();
    record(inner, &parts, &body, model.map(str::to_owned));
    let d = D { dialect: inner.dialect, inner };
    let path = parts.uri.path();

    if let Some(refused) = d.check_auth(&parts) {
        return Ok(refused);
    }
    let Some(op) = route(&parts.method, path) else {
        return Ok(d.unknown_path(&parts.method, path));
    };
    let fault = {
        let mut state = inner.state();
        let fault = state.faults.front_mut().map(|head| {
            let applied = head.clone();
            *head.times_mut() = head.times_mut().saturating_sub(1);
            applied
        });
        if state.faults.front_mut().is_some_and(|head| *head.times_mut() == 0) {
            state.faults.pop_front();
        }
        fault
    };
    match fault {
        Some(CompatibleFault::Reset { .. }) => return Err(MockFailure::ScriptedReset),
        Some(CompatibleFault::Status { status, retry_after, .. }) => {
            return Ok(d.status(status, retry_after, model.unwrap_or("")));
        }
        None => {}
    }
    match op {
        Op::ListModels => return Ok(d.json(StatusCode::OK, d.model_list())),
        Op::GetModel => {
            let name = path.trim_start_matches("/v1/models/");
            return Ok(match d.resolve(Some(name)) {
                Ok(name) => d.json(StatusCode::OK, d.model_card(&name)),
                Err(refused) => *refused,
            });
        }
        _ => {}
    }
    let Some(request) = request.as_ref().filter(|r| r.is_object()) else {
        return Ok(d.invalid_json());
    };
    let model = match d.resolve(model) {
        Ok(model) => model,
        Err(refused) => return Ok(*refused),
    };
    inner.state().served += 1;
    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = stream
        && request.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
    let answer = d.answer(&model, request);
    Ok(match (op, stream) {
        (Op::Chat, false) => d.json(StatusCode::OK, answer.chat_json()),
        (Op::Chat, true) => d.sse(answer.chat_stream(include_usage)),
        (Op::Completions, false) => d.json(StatusCode::OK, answer.text_json()),
        (Op::Completions, true) => d.sse(answer.text_stream(include_usage)),
        (Op::Embeddings, _) => match d.embeddings(&model, request) {
            Some(body) => d.json(StatusCode::OK, body),
            None => d.bad_request("input is required"),
        },
        (Op::Responses, _) => d.json(StatusCode::OK, answer.response_json()),
        (Op::ListModels | Op::GetModel, _) => d.unknown_path(&parts.method, path),
    })
}

fn record(inner: &Inner, parts: &Parts, body: &Bytes, model: Option<String>) {
    let recorded = RecordedRequest::new(parts, body, model);
    let mut state = inner.state();
    if state.requests.len() >= MAX_RECORDED_REQUESTS {
        state.requests.pop_front();
    }
    state.requests.push_back(recorded);
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// One request's view of the mock: the dialect with its configuration.
#[derive(Clone, Copy)]
struct D<'a> {
    dialect: Dialect,
    inner: &'a Inner,
}

impl D<'_> {
    fn config(&self) -> &CompatibleConfig {
        &self.inner.config
    }

    fn next_id(&self) -> u64 {
        self.inner.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks the credential as the dialect does; `Some` is the refusal to send.
    fn check_auth(&self, parts: &Parts) -> Option<Response<Body>> {
        let bearer = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match self.dialect {
            Dialect::OpenAi => {
                let Some(token) = bearer.filter(|t| !t.is_empty()) else {
                    let body = openai_error(
                        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
                        "invalid_request_error",
                        None,
                    );
                    return Some(self.json(StatusCode::UNAUTHORIZED, body));
                };
                let accepted = match &self.config().api_key {
                    Some(key) => token == key,
                    None => token.starts_with("sk-"),
                };
                (!accepted).then(|| {
                    let message = format!(
                        "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                        key_hint(token)
                    );
                    let body =
                        openai_error(&message, "invalid_request_error", Some("invalid_api_key"));
                    self.json(StatusCode::UNAUTHORIZED, body)
                })
            }
            Dialect::Vllm => {
                let key = self.config().api_key.as_ref()?;
                let guarded = parts.uri.path().starts_with("/v1");
                (guarded && bearer != Some(key.as_str())).then(|| {
                    self.json(StatusCode::UNAUTHORIZED, r#"{"error":"Unauthorized"}"#.to_owned())
                })
            }
            Dialect::Ollama => None,
        }
    }

    fn unknown_path(&self, method: &Method, path: &str) -> Response<Body> {
        match self.dialect {
            Dialect::OpenAi => {
                let message = format!("Invalid URL ({method} {path})");
                self.json(
                    StatusCode::NOT_FOUND,
                    openai_error(&message, "invalid_request_error", None),
                )
            }
            Dialect::Vllm => {
                self.json(StatusCode::NOT_FOUND, r#"{"detail":"Not Found"}"#.to_owned())
            }
            Dialect::Ollama => plain(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }

    /// The dialect's error object for `status` (FastAPI's phrase as vLLM's `type`, Ollama's
    /// `NewError` mapping).
    fn error(&self, status: StatusCode, message: &str) -> String {
        match self.dialect {
            Dialect::OpenAi => {
                let kind =
                    if status.is_server_error() { "server_error" } else { "invalid_request_error" };
                openai_error(message, kind, None)
            }
            Dialect::Vllm => {
                let kind = match status.as_u16() {
                    404 => "NotFoundError",
                    400 => "BadRequestError",
                    _ => status.canonical_reason().unwrap_or("Error"),
                };
                error_object(message, kind, &json!(status.as_u16()))
            }
            Dialect::Ollama => {
                let kind = match status.as_u16() {
                    400 => "invalid_request_error",
                    404 => "not_found_error",
                    _ => "api_error",
                };
                // Go's json.Encoder ends with a newline.
                format!("{}\n", error_object(message, kind, &Value::Null))
            }
        }
    }

    fn bad_request(&self, message: &str) -> Response<Body> {
        self.json(StatusCode::BAD_REQUEST, self.error(StatusCode::BAD_REQUEST, message))
    }

    fn invalid_json(&self) -> Response<Body> {
        match self.dialect {
            Dialect::OpenAi => self.json(StatusCode::BAD_REQUEST, wire::INVALID_JSON.to_owned()),
            Dialect::Vllm => self.bad_request("JSON decode error"),
            Dialect::Ollama => self.bad_request("invalid character looking for beginning of value"),
        }
    }

    /// The served model a request's `model` names, or the dialect's refusal.
    fn resolve(&self, model: Option<&str>) -> Result<String, Box<Response<Body>>> {
        let served = &self.config().models;
        match (self.dialect, model) {
            (Dialect::OpenAi, None) => {
                Err(Box::new(self.json(StatusCode::BAD_REQUEST, wire::MISSING_MODEL.to_owned())))
            }
            (Dialect::OpenAi, Some(m)) if served.iter().any(|s| s == m) => Ok(m.to_owned()),
            (Dialect::OpenAi, Some(m)) => {
                let message =
                    format!("The model `{m}` does not exist or you do not have access to it.");
                let body = openai_error(&message, "invalid_request_error", Some("model_not_found"));
                Err(Box::new(self.json(StatusCode::NOT_FOUND, body)))
            }
            // vLLM serves its first name when the request names none.
            (Dialect::Vllm, None) => {
                served.first().cloned().ok_or_else(|| Box::new(self.bad_request("no model served")))
            }
            (Dialect::Vllm, Some(m)) if served.iter().any(|s| s == m) => Ok(m.to_owned()),
            (Dialect::Vllm, Some(m)) => Err(Box::new(self.json(
                StatusCode::NOT_FOUND,
                self.error(StatusCode::NOT_FOUND, &format!("The model `{m}` does not exist.")),
            ))),
            (Dialect::Ollama, None | Some("")) => {
                Err(Box::new(self.bad_request("model is required")))
            }
            (Dialect::Ollama, Some(m)) => {
                let wanted = ollama_tagged(m);
                if served.iter().any(|s| ollama_tagged(s) == wanted) {
                    // Ollama answers with the name as the request spelled it.
                    Ok(m.to_owned())
                } else {
                    Err(Box::new(self.json(
                        StatusCode::NOT_FOUND,
                        self.error(StatusCode::NOT_FOUND, &format!("model '{m}' not found")),
                    )))
                }
            }
        }
    }

    /// A scripted status with the dialect's body and retry hints.
    fn status(&self, status: u16, retry_after: Option<u64>, model: &str) -> Response<Body> {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match (self.dialect, status) {
            (Dialect::OpenAi, 429) => {
                let wait = retry_after.map(|s| format!("{s}s")).unwrap_or_else(|| "20ms".into());
                let message = format!(
                    "Rate limit reached for {model} in organization org-modelgwmock on requests per min (RPM): Limit {OPENAI_REQUEST_LIMIT}, Used {OPENAI_REQUEST_LIMIT}, Requested 1. Please try again in {wait}. Visit https://platform.openai.com/account/rate-limits to learn more."
                );
                openai_error(&message, "requests", Some("rate_limit_exceeded"))
            }
            (Dialect::OpenAi, 500) => self.error(
                code,
                "The server had an error while processing your request. Sorry about that!",
            ),
            (Dialect::OpenAi, 503) => {
                self.error(code, "The server is overloaded or not ready yet.")
            }
            (Dialect::Ollama, 503) => self
                .error(code, "server busy, please try again.  maximum pending requests exceeded"),
            _ => self.error(code, code.canonical_reason().unwrap_or("Error")),
        };
        let mut response = self.json(code, body);
        let headers = response.headers_mut();
        if let Some(secs) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.dialect == Dialect::OpenAi && status == 429 {
            headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(0u64));
            let reset = format!("{}s", retry_after.unwrap_or(1));
            if let Ok(value) = HeaderValue::from_str(&reset) {
                headers.insert("x-ratelimit-reset-requests", value);
            }
        }
        response
    }

    fn with_headers(&self, mut response: Response<Body>) -> Response<Body> {
        let headers = response.headers_mut();
        match self.dialect {
            Dialect::OpenAi => {
                let n = self.next_id();
                let served = self.inner.state().served;
                let id = format!("req_{:032x}", u128::from(n) * 0x9e37_79b9_7f4a_7c15);
                for (name, value) in [
                    ("x-request-id", id),
                    ("openai-processing-ms", (100 + n % 400).to_string()),
                    ("openai-version", "2020-10-01".to_owned()),
                    ("openai-organization", "modelgw-mock".to_owned()),
                    ("x-ratelimit-limit-requests", OPENAI_REQUEST_LIMIT.to_string()),
                    ("x-ratelimit-limit-tokens", OPENAI_TOKEN_LIMIT.to_string()),
                    (
                        "x-ratelimit-remaining-requests",
                        OPENAI_REQUEST_LIMIT.saturating_sub(served).to_string(),
                    ),
                    (
                        "x-ratelimit-remaining-tokens",
                        OPENAI_TOKEN_LIMIT.saturating_sub(served * 40).to_string(),
                    ),
                    ("x-ratelimit-reset-requests", "6ms".to_owned()),
                    ("x-ratelimit-reset-tokens", "0s".to_owned()),
                ] {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        // A scripted answer's own values (429) win.
                        headers.entry(name).or_insert(value);
                    }
                }
            }
            Dialect::Vllm => {
                headers.insert("server", HeaderValue::from_static("uvicorn"));
            }
            Dialect::Ollama => {}
        }
        response
    }

    fn json(&self, status: StatusCode, body: String) -> Response<Body> {
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.with_headers(response)
    }

    fn sse(&self, payloads: Vec<String>) -> Response<Body> {
        let frames: VecDeque<Bytes> =
            payloads.into_iter().map(|p| Bytes::from(format!("data: {p}\n\n"))).collect();
        let body = stream::unfold((frames, true), |(mut frames, first)| async move {
            let frame = frames.pop_front()?;
            if !first {
                tokio::time::sleep(STREAM_GAP).await;
            }
            Some((Ok::<_, MockFailure>(Frame::data(frame)), (frames, false)))
        });
        let mut response = Response::new(StreamBody::new(body).boxed_unsync());
        let content_type = match self.dialect {
            Dialect::Vllm => "text/event-stream; charset=utf-8",
            Dialect::OpenAi | Dialect::Ollama => "text/event-stream",
        };
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        self.with_headers(response)
    }

    fn answer(&self, model: &str, request: &Value) -> Answer {
        let n = self.next_id();
        let created = chrono::Utc::now().timestamp();
        let id = match self.dialect {
            Dialect::OpenAi => format!("chatcmpl-mock{n:020}"),
            Dialect::Vllm => format!("chatcmpl-{:032x}", u128::from(n) * 0x2545_f491_4f6c_dd1d),
            Dialect::Ollama => format!("chatcmpl-{}", n % 999),
        };
        Answer {
            dialect: self.dialect,
            completion: wire::Completion::new(id, created, model, &self.config().label, request),
        }
    }

    fn model_list(&self) -> String {
        let data: Vec<Value> =
            self.config().models.iter().map(|m| self.model_card_value(m)).collect();
        json!({"object": "list", "data": data}).to_string()
    }

    fn model_card(&self, name: &str) -> String {
        self.model_card_value(name).to_string()
    }

    fn model_card_value(&self, name: &str) -> Value {
        let created = 1_721_172_741;
        match self.dialect {
            Dialect::OpenAi => {
                json!({"id": name, "object": "model", "created": created, "owned_by": "system"})
            }
            Dialect::Vllm => json!({
                "id": name, "object": "model", "created": created, "owned_by": "vllm",
                "root": name, "parent": null, "max_model_len": 8192, "permission": [],
            }),
            Dialect::Ollama => {
                json!({"id": ollama_tagged(name), "object": "model", "created": created, "owned_by": "library"})
            }
        }
    }

    fn embeddings(&self, model: &str, request: &Value) -> Option<String> {
        let (body, tokens) = wire::embeddings(model, request).ok()?;
        let mut body: Value = serde_json::from_str(&body).ok()?;
        match self.dialect {
            Dialect::OpenAi => Some(body.to_string()),
            Dialect::Vllm => {
                let object = body.as_object_mut()?;
                object.insert("id".into(), json!(format!("embd-{:032x}", self.next_id())));
                object.insert("created".into(), json!(chrono::Utc::now().timestamp()));
                object.insert(
                    "usage".into(),
                    json!({"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": null}),
                );
                Some(body.to_string())
            }
            Dialect::Ollama => Some(format!("{body}\n")),
        }
    }
}

/// OpenAI's error object (also what vLLM and Ollama imitate, with their own `type`/`code`).
fn openai_error(message: &str, kind: &str, code: Option<&str>) -> String {
    error_object(message, kind, &json!(code))
}

/// `{"error":{"message":…,"type":…,"param":null,"code":…}}` in this key order, as the servers
/// write it (`serde_json` without `preserve_order` would sort the keys).
fn error_object(message: &str, kind: &str, code: &Value) -> String {
    format!(
        r#"{{"error":{{"message":{},"type":{},"param":null,"code":{code}}}}}"#,
        Value::from(message),
        Value::from(kind),
    )
}

/// OpenAI's hint of a key in its 401 message: a few leading and trailing characters.
fn key_hint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 10 {
        return "***".to_owned();
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}***{tail}")
}

/// An Ollama model name with its tag: `llama3.2` → `llama3.2:latest`.
fn ollama_tagged(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') { name.to_owned() } else { format!("{name}:latest") }
}

/// One generated answer, rendered in a dialect.
struct Answer {
    dialect: Dialect,
    completion: wire::Completion,
}

impl Answer {
    fn usage(&self) -> Value {
        let c = &self.completion;
        let mut usage = json!({
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens(),
            "total_tokens": c.total_tokens(),
        });
        match self.dialect {
            Dialect::OpenAi => {
                usage["prompt_tokens_details"] = json!({"cached_tokens": 0, "audio_tokens": 0});
                usage["completion_tokens_details"] = json!({"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0});
            }
            Dialect::Vllm => usage["prompt_tokens_details"] = Value::Null,
            Dialect::Ollama => {}
        }
        usage
    }

    fn chat_json(&self) -> String {
        let c = &self.completion;
        let body = match self.dialect {
            Dialect::OpenAi => json!({
                "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": c.content(), "refusal": null, "annotations": []},
                    "logprobs": null,
                    "finish_reason": c.finish_reason,
                }],
                "usage": self.usage(),
                "service_tier": "default",
                "system_fingerprint": OPENAI_FINGERPRINT,
            }),
            Dialect::Vllm => json!({
                "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": c.content(), "refusal": null, "annotations": null, "audio": null, "function_call": null, "tool_calls": [], "reasoning_content": null},
                    "logprobs": null,
                    "finish_reason": c.finish_reason,
                    "stop_reason": null,
                }],
                "service_tier": null, "system_fingerprint": null,
                "usage": self.usage(),
                "prompt_logprobs": null, "kv_transfer_params": null,
            }),
            Dialect::Ollama => {
                let body = json!({
                    "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": c.content()}, "finish_reason": c.finish_reason}],
                    "usage": self.usage(),
                });
                return format!("{body}\n");
            }
        };
        body.to_string()
    }

    /// A chat chunk in the dialect, `choice` its only choice (`None`: the usage chunk).
    fn chat_chunk(&self, choice: Option<Value>, include_usage: bool) -> String {
        let c = &self.completion;
        let mut chunk = json!({
            "id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
        });
        match self.dialect {
            Dialect::OpenAi => {
                chunk["service_tier"] = json!("default");
                chunk["system_fingerprint"] = json!(OPENAI_FINGERPRINT);
            }
            Dialect::Ollama => chunk["system_fingerprint"] = json!("fp_ollama"),
            Dialect::Vllm => {}
        }
        chunk["choices"] = json!(choice.iter().collect::<Vec<_>>());
        match (choice.is_some(), include_usage) {
            (false, _) => chunk["usage"] = self.usage(),
            // OpenAI and vLLM write `"usage":null` on every chunk once usage was asked for.
            (true, true) if self.dialect != Dialect::Ollama => chunk["usage"] = Value::Null,
            _ => {}
        }
        chunk.to_string()
    }

    fn chat_stream(&self, include_usage: bool) -> Vec<String> {
        let c = &self.completion;
        let choice = |delta: Value, finish: Value| {
            let mut choice = json!({"index": 0, "delta": delta});
            if self.dialect != Dialect::Ollama {
                choice["logprobs"] = Value::Null;
            }
            choice["finish_reason"] = finish;
            if self.dialect == Dialect::Vllm && !choice["finish_reason"].is_null() {
                choice["stop_reason"] = Value::Null;
            }
            choice
        };
        let mut out = Vec::new();
        let mut pieces = c.chunks.iter();
        match self.dialect {
            Dialect::OpenAi => out.push(self.chat_chunk(
                Some(choice(
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    Value::Null,
                )),
                include_usage,
            )),
            Dialect::Vllm => out.push(self.chat_chunk(
                Some(choice(json!({"role": "assistant", "content": ""}), Value::Null)),
                include_usage,
            )),
            // Ollama's first chunk carries the role with the first piece of content.
            Dialect::Ollama => {
                let first = pieces.next().cloned().unwrap_or_default();
                out.push(self.chat_chunk(
                    Some(choice(json!({"role": "assistant", "content": first}), Value::Null)),
                    include_usage,
                ));
            }
        }
        for piece in pieces {
            out.push(
                self.chat_chunk(
                    Some(choice(json!({"content": piece}), Value::Null)),
                    include_usage,
                ),
            );
        }
        let last_delta = match self.dialect {
            Dialect::Vllm => json!({"content": ""}),
            Dialect::OpenAi | Dialect::Ollama => json!({}),
        };
        out.push(self.chat_chunk(Some(choice(last_delta, json!(c.finish_reason))), include_usage));
        if include_usage {
            out.push(self.chat_chunk(None, true));
        }
        out.push("[DONE]".to_owned());
        out
    }

    fn text_json(&self) -> String {
        let c = &self.completion;
        let mut body = json!({
            "id": c.id.replacen("chatcmpl-", "cmpl-", 1), "object": "text_completion",
            "created": c.created, "model": c.model,
            "choices": [{"text": c.content(), "index": 0, "logprobs": null, "finish_reason": c.finish_reason}],
            "usage": self.usage(),
        });
        match self.dialect {
            Dialect::OpenAi => body["system_fingerprint"] = json!(OPENAI_FINGERPRINT),
            Dialect::Ollama => {
                body["system_fingerprint"] = json!("fp_ollama");
                return format!("{body}\n");
            }
            Dialect::Vllm => {}
        }
        body.to_string()
    }

    fn text_stream(&self, include_usage: bool) -> Vec<String> {
        let c = &self.completion;
        let id = c.id.replacen("chatcmpl-", "cmpl-", 1);
        let chunk = |choices: Value| {
            let mut chunk = json!({"id": id, "object": "text_completion", "created": c.created, "model": c.model, "choices": choices});
            if self.dialect == Dialect::Ollama {
                chunk["system_fingerprint"] = json!("fp_ollama");
            }
            chunk
        };
        let last = c.chunks.len().saturating_sub(1);
        let mut out: Vec<String> = c
            .chunks
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let finish = if i == last { json!(c.finish_reason) } else { Value::Null };
                let mut chunk = chunk(
                    json!([{"text": piece, "index": 0, "logprobs": null, "finish_reason": finish}]),
                );
                if include_usage {
                    // Ollama's completions writer sets an empty `Usage{}` on every chunk once
                    // usage was asked for (zeros, not null); OpenAI and vLLM write null.
                    chunk["usage"] = match self.dialect {
                        Dialect::Ollama => {
                            json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
                        }
                        Dialect::OpenAi | Dialect::Vllm => Value::Null,
                    };
                }
                chunk.to_string()
            })
            .collect();
        if include_usage {
            let mut usage = chunk(json!([]));
            usage["usage"] = self.usage();
            out.push(usage.to_string());
        }
        out.push("[DONE]".to_owned());
        out
    }

    /// A completed Responses API object (non-streamed; enough for `responses.create`).
    fn response_json(&self) -> String {
        let c = &self.completion;
        let id = c.id.replacen("chatcmpl-", "resp_", 1);
        json!({
            "id": id, "object": "response", "created_at": c.created, "status": "completed",
            "model": c.model,
            "output": [{
                "type": "message", "id": id.replacen("resp_", "msg_", 1), "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": c.content(), "annotations": []}],
            }],
            "usage": {
                "input_tokens": c.prompt_tokens,
                "output_tokens": c.completion_tokens(),
                "total_tokens": c.total_tokens(),
            },
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_under_v1() {
        assert_eq!(route(&Method::POST, "/v1/chat/completions"), Some(Op::Chat));
        assert_eq!(route(&Method::GET, "/v1/models/llama3.2:latest"), Some(Op::GetModel));
        assert_eq!(route(&Method::GET, "/v1/models/"), None);
        assert_eq!(route(&Method::POST, "/chat/completions"), None);
        assert_eq!(route(&Method::GET, "/v1/chat/completions"), None);
    }

    #[test]
    fn ollama_names_default_to_latest() {
        assert_eq!(ollama_tagged("llama3.2"), "llama3.2:latest");
        assert_eq!(ollama_tagged("llama3.2:1b"), "llama3.2:1b");
        assert_eq!(ollama_tagged("hf.co/org/model"), "hf.co/org/model:latest");
    }

    fn answer(dialect: Dialect) -> Answer {
        let request = json!({"messages": [{"role": "user", "content": "hi"}]});
        let completion = wire::Completion::new("chatcmpl-1".into(), 1, "m", "Local", &request);
        Answer { dialect, completion }
    }

    #[test]
    fn error_objects_keep_the_servers_key_order() {
        assert_eq!(
            openai_error("a \"b\"", "invalid_request_error", Some("model_not_found")),
            r#"{"error":{"message":"a \"b\"","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#
        );
    }

    #[test]
    fn streams_end_with_finish_then_usage_then_done() {
        for dialect in Dialect::ALL {
            let frames = answer(dialect).chat_stream(true);
            let n = frames.len();
            assert_eq!(frames[n - 1], "[DONE]");
            let usage: Value = serde_json::from_str(&frames[n - 2]).expect("usage chunk");
            assert_eq!(usage["choices"], json!([]), "{dialect:?}");
            assert!(usage["usage"]["total_tokens"].as_u64().is_some_and(|t| t > 0));
            let finish: Value = serde_json::from_str(&frames[n - 3]).expect("finish chunk");
            assert_eq!(finish["choices"][0]["finish_reason"], "stop", "{dialect:?}");
            let first: Value = serde_json::from_str(&frames[0]).expect("first chunk");
            assert_eq!(first["choices"][0]["delta"]["role"], "assistant", "{dialect:?}");
            // OpenAI and vLLM mark every chunk `"usage":null`; Ollama's chat chunks omit it.
            let marked = first.get("usage").is_some_and(Value::is_null);
            assert_eq!(marked, dialect != Dialect::Ollama, "{dialect:?}");
        }
        let plain = answer(Dialect::OpenAi).chat_stream(false);
        assert!(plain.iter().all(|f| !f.contains("usage")));
    }

    #[test]
    fn key_hints_show_only_a_few_characters() {
        assert_eq!(key_hint("sk-abcdefghijklmnopcd"), "sk-ab***cd");
        assert_eq!(key_hint("short"), "***");
    }
}
