//! The playground (`/playground`): a chat through a real data plane, streamed token by token.
//!
//! The browser never holds a gateway key. The control plane makes the request itself, to the
//! Gateway URL (`MODELGW_GATEWAY_URL`), with a short-lived key it creates for this one chat:
//!
//! 1. `POST /playground/chats` (gateway, prompt) keeps the chat in memory under a random id,
//!    bound to the operator who asked, for at most [`PENDING_TTL`], and answers a fragment
//!    that opens `GET /playground/chats/<id>/stream` (server-sent events, htmx's SSE extension).
//! 2. The stream creates a key through the admin API as the operator
//!    (`console-playground (<actor>)`, audited like any key), waits until every connected data
//!    plane has applied the configuration version that contains it, sends the chat with
//!    `stream: true`, and relays each token as an event, with the `x-modelgw-endpoint` and
//!    `x-modelgw-attempts` the gateway answered.
//! 3. The key is revoked when the answer ends, fails, or the browser goes away (a drop guard
//!    spawns the revoke, so an aborted stream revokes too).
//!
//! Logged: gateway, actor, served-by, attempts, status, token count. Never the key or the prompt.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use futures::{Stream, StreamExt as _};
use http::Method;
use maud::{Markup, html};
use modelgw_admin_api::identity::Role;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{GatewayView, StatusView};
use crate::Console;
use crate::api::ApiCaller;
use crate::error::ConsoleError;
use crate::layout::{self, Nav, csrf_field, empty_state};
use crate::operator::Operator;

/// How long a chat waits for its stream to be opened (the fragment opens it at once).
const PENDING_TTL: Duration = Duration::from_secs(60);
/// Chats waiting for their stream, across all operators: a bound on memory, far above what
/// people type.
const MAX_PENDING: usize = 256;
/// The longest prompt accepted (the form's body limit is 64 KiB).
const MAX_PROMPT_CHARS: usize = 16 * 1024;
/// How long the data planes get to apply the configuration with the new key (they apply a
/// change within a second; a lagging or partitioned one fails the chat rather than hanging).
const APPLY_DEADLINE: Duration = Duration::from_secs(5);
/// How often `/api/v1/status` is read while waiting.
const APPLY_POLL: Duration = Duration::from_millis(75);
/// Connecting to the Gateway URL.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest silence between two pieces of the answer before the chat is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// The most of an error answer that is read to show its message.
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// The most one SSE event of the answer may hold before the chat is given up.
const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// The Azure OpenAI API version of the request.
const API_VERSION: &str = "2024-10-21";

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new()
        .route("/playground", get(page))
        .route("/playground/chats", post(start))
        .route("/playground/chats/{id}/stream", get(stream))
}

/// The chats waiting for their stream, and the HTTP client that calls the Gateway URL.
#[derive(Default)]
pub(crate) struct Playground {
    pending: Mutex<HashMap<String, Pending>>,
    http: OnceLock<Result<reqwest::Client, String>>,
}

struct Pending {
    actor: String,
    gateway_id: String,
    prompt: String,
    created: Instant,
}

impl Playground {
    /// Keeps a chat for its stream; `None` when too many are waiting.
    fn insert(&self, chat: Pending) -> Option<String> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.retain(|_, p| p.created.elapsed() < PENDING_TTL);
        if pending.len() >= MAX_PENDING {
            return None;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        pending.insert(id.clone(), chat);
        Some(id)
    }

    /// Takes the chat `id` if `actor` started it and it has not expired (a stream is opened
    /// once: a reconnecting browser finds nothing).
    fn take(&self, id: &str, actor: &str) -> Option<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.get(id) {
            Some(p) if p.actor == actor && p.created.elapsed() < PENDING_TTL => pending.remove(id),
            _ => None,
        }
    }

    fn http(&self, ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
        self.http.get_or_init(|| build_client(ca_pem)).clone()
    }
}

/// The client for the Gateway URL: the platform's roots, plus the CA of
/// `MODELGW_GATEWAY_CA_FILE` when set (data planes behind a private CA).
fn build_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("MODELGW_GATEWAY_CA_FILE is not a PEM bundle: {e}"))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| format!("building the HTTP client for the Gateway URL: {e}"))
}

fn operators_only(op: &Operator) -> Result<(), ConsoleError> {
    op.require(
        Role::Operator,
        "The playground creates a gateway key for each chat: it needs the operator role.",
    )
}

/// `GET /playground`.
async fn page(State(console): State<Console>, op: Operator) -> Result<Markup, ConsoleError> {
    operators_only(&op)?;
    let mut gateways: Vec<GatewayView> = op.api.get("/api/v1/gateways").await?;
    gateways.sort_by(|a, b| a.name.cmp(&b.name));
    let gateway_url = console.settings().gateway_url.get();
    let content = html! {
        div.page-head {
            div {
                h1 { "Playground" }
                p { "Send a chat through a gateway and watch the answer stream in from a real data plane. "
                    "Each chat uses a short-lived gateway key that is revoked when the answer ends." }
            }
        }
        @if gateway_url.is_none() {
            div.alert role="alert" #no-gateway-url {
                strong { "No Gateway URL." }
                " The playground calls the data planes at the public Gateway URL: start the control plane with "
                code { "MODELGW_GATEWAY_URL" } " set (e.g. " code { "https://gateway.example.com" } ")."
            }
        }
        @if gateways.is_empty() {
            (empty_state("No gateways yet. Create one to try it here.",
                Some(html! { a.button href="/gateways/new" { "New gateway" } })))
        } @else {
            div.panel {
                form.stacked #playground-form method="post" action="/playground/chats"
                    hx-post="/playground/chats" hx-target="#chat" hx-swap="innerHTML" hx-disabled-elt="#send" {
                    (csrf_field(&op))
                    div.field {
                        label for="gateway" { "Gateway" }
                        select #gateway name="gateway" {
                            @for g in &gateways {
                                option value=(g.id) { (g.name) }
                            }
                        }
                    }
                    div.field {
                        label for="prompt" { "Message" }
                        textarea #prompt name="prompt" required maxlength=(MAX_PROMPT_CHARS)
                            placeholder="Say hello…" { }
                    }
                    div.actions {
                        button #send type="submit" disabled[gateway_url.is_none()] { "Send" }
                        @if let Some(url) = gateway_url {
                            span.sub { "to " code { (url) } }
                        }
                    }
                }
            }
            section #chat aria-live="polite" {}
        }
    };
    Ok(layout::page(&op, "Playground", Nav::Playground, content))
}

#[derive(Debug, Deserialize)]
struct ChatForm {
    gateway: String,
    prompt: String,
}

/// `POST /playground/chats`: keeps the chat and answers the fragment that streams it.
async fn start(
    State(console): State<Console>,
    op: Operator,
    axum::Form(form): axum::Form<ChatForm>,
) -> Result<Markup, ConsoleError> {
    operators_only(&op)?;
    let prompt = form.prompt.trim();
    let refused = |message: &str| html! { div.alert role="alert" #chat-error { (message) } };
    if console.settings().gateway_url.get().is_none() {
        return Ok(refused("No Gateway URL: set MODELGW_GATEWAY_URL on the control plane."));
    }
    if prompt.is_empty() {
        return Ok(refused("Type a message first."));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Ok(refused("The message is too long for the playground."));
    }
    // The gateway must exist and be visible to this operator (a 404 is shown as such).
    let gateway: GatewayView = op
        .api
        .get(&format!("/api/v1/gateways/{}", super::path_id(&form.gateway, "gateway")?))
        .await?;
    let Some(id) = console.playground().insert(Pending {
        actor: op.me.actor.clone(),
        gateway_id: gateway.id.clone(),
        prompt: prompt.to_owned(),
        created: Instant::now(),
    }) else {
        return Ok(refused("Too many chats are starting at once. Try again in a minute."));
    };
    Ok(html! {
        div.chat #chat-run hx-ext="sse" sse-connect={ "/playground/chats/" (id) "/stream" } sse-close="done" {
            div.bubble.user { (prompt) }
            div.bubble.assistant #answer sse-swap="token" hx-swap="beforeend" {}
            dl.facts.chat-facts {
                dt { "Gateway" } dd { (gateway.name) }
                dt { "Status" } dd #chat-status sse-swap="status" { "Connecting…" }
                dt { "Served by" } dd.mono #served-by sse-swap="served-by" { "–" }
                dt { "Attempts" } dd.mono #attempts sse-swap="attempts" { "–" }
            }
            div #chat-error sse-swap="chat-error" {}
        }
    })
}

/// `GET /playground/chats/<id>/stream`.
async fn stream(
    State(console): State<Console>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ConsoleError> {
    operators_only(&op)?;
    let (tx, rx) = mpsc::channel(64);
    let chat = console.playground().take(&id, &op.me.actor);
    let task = match (chat, console.settings().gateway_url.get()) {
        (Some(chat), Some(url)) => {
            let http = console.playground().http(console.settings().gateway_ca_pem.as_deref());
            let run = Run {
                api: op.api.clone(),
                actor: op.me.actor.clone(),
                gateway_url: url.clone(),
                http,
                events: tx,
            };
            tokio::spawn(run.chat(chat))
        }
        // Unknown, expired, someone else's, or opened already (a reconnect): say so and close,
        // so the browser does not reconnect again.
        _ => tokio::spawn(async move {
            let _ = tx.send(error_event("This chat has ended or expired. Send it again.")).await;
            let _ = tx.send(done_event()).await;
        }),
    };
    let events = ChatEvents { rx, task: task.abort_handle() };
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The events of one chat; dropping it (the browser went away) aborts the chat, whose key
/// guard then revokes the key.
pub(crate) struct ChatEvents {
    rx: mpsc::Receiver<Event>,
    task: tokio::task::AbortHandle,
}

impl Stream for ChatEvents {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|e| e.map(Ok))
    }
}

impl Drop for ChatEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status_event(text: &str) -> Event {
    Event::default().event("status").data(html! { (text) }.into_string())
}

fn error_event(text: &str) -> Event {
    let body = html! { div.alert role="alert" { (text) } };
    Event::default().event("chat-error").data(body.into_string())
}

/// Ends the stream: the fragment's `sse-close="done"` closes the connection (an event needs
/// data to be dispatched at all).
fn done_event() -> Event {
    Event::default().event("done").data("done")
}

/// One chat being answered.
struct Run {
    api: ApiCaller,
    actor: String,
    gateway_url: String,
    http: Result<reqwest::Client, String>,
    events: mpsc::Sender<Event>,
}

/// What the gateway answered, for the log line.
#[derive(Default)]
struct Outcome {
    status: Option<u16>,
    served_by: String,
    attempts: String,
    tokens: usize,
}

impl Run {
    async fn send(&self, event: Event) {
        // The browser went away: the stream is dropped and this task aborted shortly.
        let _ = self.events.send(event).await;
    }

    async fn chat(self, chat: Pending) {
        let started = Instant::now();
        let mut outcome = Outcome::default();
        let mut gateway_name = String::new();
        let result = self.answer(&chat, &mut gateway_name, &mut outcome).await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(()) => tracing::info!(
                gateway = %gateway_name, actor = %self.actor, served_by = %outcome.served_by,
                attempts = %outcome.attempts, status = outcome.status, tokens = outcome.tokens,
                elapsed_ms, "playground chat answered"
            ),
            Err(reason) => tracing::warn!(
                gateway = %gateway_name, actor = %self.actor, served_by = %outcome.served_by,
                attempts = %outcome.attempts, status = outcome.status, tokens = outcome.tokens,
                elapsed_ms, %reason, "playground chat failed"
            ),
        }
        if let Err(reason) = result {
            self.send(error_event(&reason)).await;
            self.send(status_event("Failed")).await;
        } else {
            self.send(status_event(&format!(
                "Done · {} tokens in {:.1} s",
                outcome.tokens,
                started.elapsed().as_secs_f64()
            )))
            .await;
        }
        self.send(done_event()).await;
    }

    /// Creates the key, waits for the data planes, streams the answer; the key is revoked on
    /// every way out (the guard, when this future is dropped half-way).
    async fn answer(
        &self,
        chat: &Pending,
        gateway_name: &mut String,
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        let http = self.http.clone()?;
        let gateway: GatewayView = self
            .api
            .get(&format!("/api/v1/gateways/{}", chat.gateway_id))
            .await
            .map_err(|e| format!("The gateway cannot be read: {}", describe(&e)))?;
        gateway_name.clone_from(&gateway.name);

        self.send(status_event("Creating a short-lived gateway key…")).await;
        let key = self.create_key(&gateway).await?;
        let guard = KeyGuard::new(self.api.clone(), &gateway.id, &key.id);

        self.send(status_event("Waiting for the data planes to apply the key…")).await;
        self.wait_for_data_planes().await?;

        self.send(status_event("Sending…")).await;
        let result = self.relay(&http, &gateway.name, &key.key, &chat.prompt, outcome).await;
        guard.revoke().await;
        result
    }

    async fn create_key(&self, gateway: &GatewayView) -> Result<CreatedKey, String> {
        let name = format!("console-playground ({})", self.actor);
        let reply = self
            .api
            .send(
                Method::POST,
                &format!("/api/v1/gateways/{}/keys", gateway.id),
                Some(&json!({ "name": name })),
            )
            .await
            .map_err(|e| format!("The gateway key could not be created: {}", describe(&e)))?;
        reply
            .json::<CreatedKey>()
            .map_err(|e| format!("The gateway key could not be created: {}", describe(&e)))
    }

    /// Until every connected data plane has applied the version that holds the new key.
    async fn wait_for_data_planes(&self) -> Result<(), String> {
        let deadline = Instant::now() + APPLY_DEADLINE;
        let mut wanted = None;
        loop {
            let status: StatusView =
                self.api.get("/api/v1/status").await.map_err(|e| {
                    format!("The data planes' status cannot be read: {}", describe(&e))
                })?;
            // The first read is after the key was committed, so its version holds the key.
            let version = *wanted.get_or_insert(status.config_version);
            let connected: Vec<_> = status.data_planes.iter().filter(|d| d.connected).collect();
            if connected.is_empty() {
                return Err("No data plane is connected to the control plane.".to_owned());
            }
            let lagging: Vec<&str> = connected
                .iter()
                .filter(|d| d.applied_version < version)
                .map(|d| d.node_id.as_str())
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "The data planes did not apply configuration version {version} within {} s: {}.",
                    APPLY_DEADLINE.as_secs(),
                    lagging.join(", ")
                ));
            }
            tokio::time::sleep(APPLY_POLL).await;
        }
    }

    /// Sends the chat and relays the streamed answer.
    async fn relay(
        &self,
        http: &reqwest::Client,
        gateway: &str,
        key: &str,
        prompt: &str,
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        let url = format!(
            "{}/openai/deployments/{}/chat/completions?api-version={API_VERSION}",
            self.gateway_url,
            super::endpoints::urlencode(gateway)
        );
        let response = http
            .post(&url)
            .header("api-key", key)
            .json(&json!({
                "messages": [{"role": "user", "content": prompt}],
                "stream": true,
            }))
            .send()
            .await
            .map_err(|e| format!("The Gateway URL {} cannot be reached: {e}", self.gateway_url))?;
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
        };
        outcome.status = Some(response.status().as_u16());
        outcome.served_by = header("x-modelgw-endpoint");
        outcome.attempts = header("x-modelgw-attempts");
        let dash = |s: &str| if s.is_empty() { "–".to_owned() } else { s.to_owned() };
        self.send(Event::default().event("served-by").data(dash(&outcome.served_by))).await;
        self.send(Event::default().event("attempts").data(dash(&outcome.attempts))).await;
        if !response.status().is_success() {
            let status = response.status();
            let body = read_bounded(response, MAX_ERROR_BYTES).await;
            return Err(format!("The gateway answered {status}: {}", error_message(&body)));
        }
        self.send(status_event("Streaming…")).await;
        let mut body = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            while let Some((event, rest)) = split_event(&buffer) {
                let event = String::from_utf8_lossy(event).into_owned();
                buffer = rest.to_vec();
                match read_event(&event) {
                    Piece::Token(text) => {
                        outcome.tokens += 1;
                        let html = html! { span { (text) } }.into_string();
                        self.send(Event::default().event("token").data(html)).await;
                    }
                    Piece::Done => return Ok(()),
                    Piece::Error(message) => {
                        return Err(format!("The answer stopped: {message}"));
                    }
                    Piece::Nothing => {}
                }
            }
            if buffer.len() > MAX_EVENT_BYTES {
                return Err("The gateway sent an event too large for the playground.".to_owned());
            }
            match body.next().await {
                Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
                Some(Err(e)) => return Err(format!("The answer stopped: {e}")),
                // The gateway ends every stream with `[DONE]` or an error event.
                None => return Err("The answer ended without its final event.".to_owned()),
            }
        }
    }
}

/// `POST /api/v1/gateways/{id}/keys` (the secret is used for this chat only, never logged).
#[derive(Deserialize)]
struct CreatedKey {
    id: String,
    key: String,
}

/// Revokes the playground's key: explicitly when the chat ends, or from `Drop` when the chat
/// is aborted (the browser went away) or panics.
struct KeyGuard {
    api: ApiCaller,
    path: Option<String>,
    runtime: tokio::runtime::Handle,
}

impl KeyGuard {
    fn new(api: ApiCaller, gateway_id: &str, key_id: &str) -> KeyGuard {
        KeyGuard {
            api,
            path: Some(format!("/api/v1/gateways/{gateway_id}/keys/{key_id}")),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    async fn revoke(mut self) {
        if let Some(path) = self.path.take() {
            revoke(&self.api, &path).await;
        }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let api = self.api.clone();
            self.runtime.spawn(async move { revoke(&api, &path).await });
        }
    }
}

async fn revoke(api: &ApiCaller, path: &str) {
    match api.send(Method::DELETE, path, None).await {
        Ok(reply) if reply.status.is_success() => {
            tracing::debug!(key = path.rsplit('/').next().unwrap_or(""), "playground key revoked");
        }
        Ok(reply) => tracing::warn!(
            key = path.rsplit('/').next().unwrap_or(""),
            status = reply.status.as_u16(),
            "the playground's gateway key could not be revoked; revoke it on the gateway's page"
        ),
        Err(e) => tracing::warn!(
            key = path.rsplit('/').next().unwrap_or(""), error = ?e,
            "the playground's gateway key could not be revoked; revoke it on the gateway's page"
        ),
    }
}

/// A console error as a sentence for the chat.
fn describe(e: &ConsoleError) -> String {
    match e {
        ConsoleError::SignedOut { reason } => format!("signed out ({reason})"),
        ConsoleError::Forbidden(p)
        | ConsoleError::NotFound(p)
        | ConsoleError::Refused(p)
        | ConsoleError::Unavailable(p) => {
            if p.detail.is_empty() {
                p.title.clone()
            } else {
                p.detail.clone()
            }
        }
        ConsoleError::Csrf => "refused".to_owned(),
        ConsoleError::Internal(e) => e.clone(),
    }
}

async fn read_bounded(response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = response.bytes_stream();
    let mut out = Vec::new();
    while let Some(Ok(bytes)) = body.next().await {
        out.extend_from_slice(&bytes);
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    out
}

/// The message of an Azure-style error body (`{"error":{"message":…}}`), else the text.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect())
}

/// The first complete SSE event in `buffer` and what follows it.
fn split_event(buffer: &[u8]) -> Option<(&[u8], &[u8])> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let (at, len) = match (lf, crlf) {
        (Some(a), Some(b)) => {
            if a.0 <= b.0 {
                a
            } else {
                b
            }
        }
        (a, b) => a.or(b)?,
    };
    Some((&buffer[..at], &buffer[at + len..]))
}

/// What one SSE event of a chat completion stream means for the playground.
#[derive(Debug, PartialEq)]
enum Piece {
    Token(String),
    Done,
    Error(String),
    Nothing,
}

fn read_event(event: &str) -> Piece {
    let data: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return Piece::Nothing;
    }
    let data = data.join("\n");
    if data.trim() == "[DONE]" {
        return Piece::Done;
    }
    let Ok(value) = serde_json::from_str::<Value>(&data) else {
        return Piece::Nothing;
    };
    if let Some(error) = value.get("error") {
        let message = error.get("message").and_then(Value::as_str).unwrap_or("error");
        return Piece::Error(message.to_owned());
    }
    match value.pointer("/choices/0/delta/content").and_then(Value::as_str) {
        Some(text) if !text.is_empty() => Piece::Token(text.to_owned()),
        _ => Piece::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_events_split_on_blank_lines_of_either_kind() {
        let buf = b"data: a\n\ndata: b\r\n\r\nrest";
        let (first, rest) = split_event(buf).expect("one");
        assert_eq!(first, b"data: a");
        let (second, rest) = split_event(rest).expect("two");
        assert_eq!(second, b"data: b");
        assert_eq!(rest, b"rest");
        assert!(split_event(rest).is_none());
    }

    #[test]
    fn tokens_the_end_and_errors_are_read_from_events() {
        let token = r#"data: {"choices":[{"index":0,"delta":{"content":" world"}}]}"#;
        assert_eq!(read_event(token), Piece::Token(" world".to_owned()));
        assert_eq!(
            read_event(r#"data: {"choices":[],"prompt_filter_results":[]}"#),
            Piece::Nothing
        );
        assert_eq!(read_event("data: [DONE]"), Piece::Done);
        let error = r#"data: {"error":{"code":"stream_interrupted","message":"upstream cut"}}"#;
        assert_eq!(read_event(error), Piece::Error("upstream cut".to_owned()));
        assert_eq!(read_event(": keep-alive"), Piece::Nothing);
    }

    #[test]
    fn pending_chats_belong_to_their_operator_and_are_taken_once() {
        let p = Playground::default();
        let chat = |actor: &str| Pending {
            actor: actor.to_owned(),
            gateway_id: "g".to_owned(),
            prompt: "hi".to_owned(),
            created: Instant::now(),
        };
        let id = p.insert(chat("alice")).expect("room");
        assert!(p.take(&id, "mallory").is_none(), "another operator's chat");
        assert!(p.take(&id, "alice").is_some());
        assert!(p.take(&id, "alice").is_none(), "a stream is opened once");
        for _ in 0..MAX_PENDING {
            let _ = p.insert(chat("bob"));
        }
        assert!(p.insert(chat("bob")).is_none(), "bounded");
    }
}
