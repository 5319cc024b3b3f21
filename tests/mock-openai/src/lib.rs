//! `modelgw-mock-openai`: a faithful, scriptable mock of one Azure OpenAI region's *inference*
//! API — what the gateway proxies to. The Azure *management* side that the control plane's
//! discovery talks to (Resource Manager, Entra ID tokens) is mocked by `modelgw-mock-arm`.
//!
//! It is faithful to Azure OpenAI's wire (paths, api-version rules,
//! `api-key` auth, exact error bodies, response headers, Azure's SSE framing) and to the shapes
//! the official `openai` SDKs parse, so that the gateway can be shown transparent to real
//! clients, and it can be told to misbehave per deployment
//! ([`Fault`]): statuses with retry hints, latency, connection resets, stalled or cut streams,
//! content-filter rejections. It counts and records every request (raw body bytes kept, so a
//! multipart upload can be compared byte for byte) so a test can assert what an upstream
//! received (or that a throttled region received nothing).
//!
//! # Surface
//! Dated paths need `?api-version=YYYY-MM-DD[-preview]`; `/openai/v1/…` paths take none, `v1` or
//! `preview`. On `/openai/deployments/{d}/…` (also under `/openai/v1/`) the deployment is `d`;
//! on `/openai/v1/{op}` it is the body's (or the form's) `model`.
//! - `POST …/chat/completions`: text, or with function `tools` a `tool_calls` answer (streamed as
//!   `tool_calls` deltas with `index` and partial `arguments`); a `tool` message answering the
//!   call gets text ([`wire::function_call`]). `POST …/completions`, `POST …/embeddings`.
//! - `POST /openai/responses?api-version=2025-03-01-preview` or later, and
//!   `POST /openai/v1/responses` (`model` in the body is the deployment): the Responses API,
//!   JSON or (`stream: true`) named SSE events from `response.created` to `response.completed`;
//!   function tools give a `function_call` item, a `function_call_output` input gives text.
//!   Responses are **stored per region** (unless `store: false`; at most
//!   [`responses::MAX_STORED_RESPONSES`]), so `GET`/`DELETE responses/{id}`,
//!   `POST responses/{id}/cancel`, `GET responses/{id}/input_items` and a create naming
//!   `previous_response_id` work only in the region that created the response: elsewhere they get
//!   OpenAI's 404 (400 `previous_response_not_found` for `previous_response_id`). Those follow-ups
//!   count as calls of, and meet the faults of, the deployment that created the response. Only a
//!   `background: true` response can be cancelled (400 otherwise, as OpenAI answers); the mock
//!   "finishes" a background response when it is first retrieved.
//! - `POST …/images/generations` (JSON) and `POST …/images/edits` (multipart, `image` parts):
//!   `b64_json` of a 1×1 PNG (the default, as gpt-image-1) or a blob `url` (the default for
//!   `dall-e` deployments).
//! - `POST …/audio/transcriptions` and `…/audio/translations` (multipart, `file` required;
//!   `response_format` `json`, `text`, `verbose_json`, `srt`, `vtt`); `POST …/audio/speech` (JSON
//!   in, a few KiB of binary audio out in several chunks). Malformed forms get a 400.
//! - `GET /openai/models?api-version=…` (Azure's list shape) and `GET /openai/v1/models`
//!   (OpenAI's): the region's deployments and model. No deployment, so no faults.
//!
//! A region can be given a token-bucket [`Quota`] ([`MockAzure::set_quota`], `POST
//! /_mock/quota`), as Azure enforces a deployment's requests and tokens per minute: a request
//! bucket and a token bucket that start full and refill continuously, charged at a request's
//! arrival (before any latency) with one request and `ceil(prompt characters / 4) +` its
//! maximum completion tokens. A chat, completions, embeddings or Responses create that does not
//! fit gets Azure's 429 with `retry-after`/`retry-after-ms` saying when it would, and costs
//! nothing. Every answer carries the `x-ratelimit-*` headers its [`QuotaHeaders`] asks for
//! (all six, Azure's two `remaining` ones, or none); [`MockAzure::quota_counts`] says what was
//! admitted, served and throttled. Without a quota the mock only reports a large per-minute
//! window and never throttles on its own.
//!
//! Every answer that has a text names the region ([`wire::reply_text`], "Transcribed … in",
//! "drawn in", tool-call string arguments), so a test can tell which region answered.
//!
//! Who runs it: tests in-process ([`MockAzure::start`]), the end-to-end scenarios out of process
//! as `modelgw mock-azure` ([`run`]), and `modelgw demo`, which starts three as its regions. Tests
//! of either kind hold a region through one harness type, [`Region`], scripted with the same
//! typed [`Fault`]s. The same listener serves a small control API under `/_mock/` (below) so
//! another process can script it.
//!
//! This crate owns nothing but the mock. The `modelgw` binary links it for `demo` and
//! `mock-azure`, and only those two subcommands ever start one: no path that serves real traffic
//! (`control-plane`, `data-plane`) does. It must never log a credential (the `api-key` and
//! `Authorization` values are neither logged nor returned by the control API, which shows only a
//! hint of them). [`MockAzure::requests`] does keep the full values in memory, so an in-process
//! test can check which credential the gateway injected.
//!
//! # Control API
//! No auth; all under `/_mock/`:
//! - `POST /_mock/faults/{deployment}`, body a [`Fault`] as JSON → 204.
//! - `GET /_mock/calls` → `{"<deployment>": n, …}` (configured deployments always listed).
//! - `GET /_mock/requests` → the [`RecordedRequest`]s as JSON, credential headers redacted; a
//!   body that is not UTF-8 also comes as exact `body_base64` (multipart uploads).
//! - `POST /_mock/reset` → 204 (stored responses stay: they are the region's data).
//! - `GET /_mock/responses/{id}` → 200 `{"id":…,"deployment":…}` when this region holds the
//!   response, else 404: which region a stateful call's object lives in.
//! - `POST /_mock/quota`, body a [`Quota`] as JSON (`{"requests_per_sec":5,"tokens_per_sec":750,
//!   "window_ms":10000,"headers":"full"}`) or `null` to remove it → 204; 400 naming the field.
//!   `GET /_mock/quota` → `{"quota":…|null,"admitted":n,"served":n,"throttled":n}`.
//! - `GET /_mock/settings` → `{"latency_ms":…,"stream_gap_ms":…}`; `POST` the same (either field
//!   optional) → 204.
//!
//! # Choices where Azure's behaviour is not documented
//! Checks run in this order, each answering with Azure's body: unknown path or bad/missing
//! api-version (404 "Resource not found"), credential (401), deployment (404
//! `DeploymentNotFound`; for `responses/{id}…` paths, the response: OpenAI's 404), then the head
//! scripted fault, then body validation (400; a malformed multipart form, a
//! `previous_response_id` this region does not hold). API Management authenticates before the
//! backend looks the deployment up, hence 401 before 404. A form too malformed to name its
//! `model` on a v1 path is refused (400) before any deployment is known, so no fault applies.
//! Azure's operation names in 429 messages beyond chat, completions and embeddings, and the
//! wording of the cancel refusal, are guesses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::HeaderValue;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod azure;
mod compatible;
mod control;
mod fault;
pub mod media;
pub mod multipart;
pub mod pki;
pub mod quota;
mod region;
pub mod responses;
mod server;
mod state;
pub mod wire;

pub use compatible::{CompatibleConfig, CompatibleFault, CompatibleMock, Dialect};
pub use fault::Fault;
pub use quota::{InvalidQuota, Quota, QuotaCounts, QuotaHeaders};
pub use region::{DEFAULT_MODEL, Region};
pub use state::{MAX_RECORDED_REQUESTS, RecordedRequest};

/// Pause between two SSE frames unless changed with [`MockAzure::set_stream_gap`]: long enough
/// that a client observes separate chunks, short enough that a 12-frame stream takes ~0.1 s.
pub const DEFAULT_STREAM_GAP: Duration = Duration::from_millis(10);

/// Largest request body the mock reads (413 beyond): above any chat or embeddings payload.
pub const MAX_REQUEST_BODY_BYTES: usize = 32 * 1024 * 1024;

/// One region's identity.
#[derive(Clone)]
pub struct MockConfig {
    /// `x-ms-region` display name, e.g. "East US"; also named in the reply text.
    pub region: String,
    /// The only key accepted (as `api-key`, or as `Authorization: Bearer` on v1 paths).
    pub api_key: String,
    /// Deployments that exist; any other answers 404 `DeploymentNotFound`.
    pub deployments: Vec<String>,
    /// Model reported in responses, e.g. "gpt-4o-mini-2024-07-18".
    pub model: String,
}

impl fmt::Debug for MockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockConfig")
            .field("region", &self.region)
            .field("api_key", &"<redacted>")
            .field("deployments", &self.deployments)
            .field("model", &self.model)
            .finish()
    }
}

/// Decides whether a bearer token is an Entra ID token this region accepts (e.g. one a
/// `TokenMock` issued and that has not expired).
pub type BearerCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A running mock region. Cheap to clone; every clone controls the same server. The server runs
/// until [`MockAzure::shutdown`] (dropping the handles does not stop it).
#[derive(Clone)]
pub struct MockAzure {
    shared: Arc<Shared>,
}

/// What the server tasks and the handles share.
pub(crate) struct Shared {
    pub(crate) config: MockConfig,
    pub(crate) addr: SocketAddr,
    /// `x-ms-region`, validated once at start.
    pub(crate) region_header: HeaderValue,
    /// `azureml-model-session`, fixed for the life of the mock like a real model instance's.
    pub(crate) session_header: HeaderValue,
    pub(crate) latency_ms: AtomicU64,
    pub(crate) stream_gap_ms: AtomicU64,
    /// Answers carry a fixed id and `created` (tests comparing two answers byte for byte).
    pub(crate) fixed_ids: std::sync::atomic::AtomicBool,
    state: Mutex<state::State>,
    bearer: Mutex<Option<BearerCheck>>,
    pub(crate) shutdown: watch::Sender<bool>,
}

impl Shared {
    /// The state lock. A panic elsewhere cannot leave the state half-updated in a way that
    /// matters to a mock, so poisoning is ignored.
    pub(crate) fn state(&self) -> MutexGuard<'_, state::State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn bearer_check(&self) -> Option<BearerCheck> {
        self.bearer.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn stream_gap(&self) -> Duration {
        Duration::from_millis(self.stream_gap_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn has_deployment(&self, name: &str) -> bool {
        self.config.deployments.iter().any(|d| d == name)
    }
}

impl MockAzure {
    /// Binds `addr` (port 0 picks a free port) and serves in background tasks.
    pub async fn start(addr: SocketAddr, config: MockConfig) -> std::io::Result<MockAzure> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
        let region_header = HeaderValue::from_str(&config.region)
            .map_err(|_| invalid("mock region must be a valid header value"))?;
        let session =
            format!("d{:03}-{}", addr.port() % 1000, chrono::Utc::now().format("%Y%m%d%H%M%S"));
        let session_header =
            HeaderValue::from_str(&session).map_err(|_| invalid("model session header"))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            addr,
            region_header,
            session_header,
            latency_ms: AtomicU64::new(0),
            stream_gap_ms: AtomicU64::new(duration_ms(DEFAULT_STREAM_GAP)),
            fixed_ids: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(state::State::default()),
            bearer: Mutex::new(None),
            shutdown,
        });
        tokio::spawn(server::accept_loop(listener, shared.clone()));
        Ok(MockAzure { shared })
    }

    /// Also accepts `Authorization: Bearer <token>` on every path when `check(token)` holds,
    /// as Azure accepts Entra ID tokens; `api-key` handling is unchanged.
    pub fn set_bearer_check(&self, check: impl Fn(&str) -> bool + Send + Sync + 'static) {
        *self.shared.bearer.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(check));
    }

    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT` (a wildcard bind is reported as loopback, which is reachable).
    pub fn base_url(&self) -> String {
        let addr = self.shared.addr;
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, addr.port()))
    }

    /// The region display name this mock reports.
    pub fn region(&self) -> &str {
        &self.shared.config.region
    }

    /// The exact assistant content this mock answers (unless cut by `max_tokens`).
    pub fn reply_text(&self) -> String {
        wire::reply_text(&self.shared.config.region)
    }

    /// Appends `fault` to `deployment`'s queue.
    pub fn script(&self, deployment: &str, fault: Fault) {
        tracing::debug!(region = %self.shared.config.region, deployment, fault = ?fault, "mock fault scripted");
        self.shared.state().script(deployment, fault);
    }

    /// Requests received for `deployment`, whatever their outcome (401s and 404s included).
    pub fn calls(&self, deployment: &str) -> u64 {
        self.shared.state().calls(deployment)
    }

    /// Every Azure-surface request received (oldest first, at most [`MAX_RECORDED_REQUESTS`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().requests()
    }

    /// Clears faults, counts, records and rate-limit windows. Latency and stream-gap settings
    /// and stored responses are kept: they describe the region, not a test step.
    pub fn reset(&self) {
        tracing::debug!(region = %self.shared.config.region, "mock reset");
        self.shared.state().reset();
    }

    /// Sets the region's token-bucket quota (`None` removes it): from now on every deployment
    /// has a request bucket and a token bucket, full, and inference requests that do not fit
    /// get Azure's 429 ([`quota`]). Counts start at zero. Kept by [`MockAzure::reset`], which
    /// refills the buckets.
    pub fn set_quota(&self, quota: Option<Quota>) -> Result<(), InvalidQuota> {
        if let Some(q) = &quota {
            q.validate()?;
        }
        tracing::debug!(region = %self.shared.config.region, quota = ?quota, "mock quota set");
        self.shared.state().set_quota(quota);
        Ok(())
    }

    /// Inference requests admitted, served (2xx) and throttled since the quota was set.
    pub fn quota_counts(&self) -> QuotaCounts {
        self.shared.state().quota_counts()
    }

    /// Whether this region holds the stored response `id` (Responses API): where a follow-up
    /// naming it must be sent.
    pub fn holds_response(&self, id: &str) -> bool {
        self.shared.state().responses.get(id).is_some()
    }

    /// Adds `latency` before every Azure answer (a region's baseline distance). Default zero.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.latency_ms.store(duration_ms(latency), Ordering::Relaxed);
    }

    /// Pause between SSE frames. Default [`DEFAULT_STREAM_GAP`].
    pub fn set_stream_gap(&self, gap: Duration) {
        self.shared.stream_gap_ms.store(duration_ms(gap), Ordering::Relaxed);
    }

    /// Answers with a fixed id and `created` from now on, so that the same request gets the
    /// same bytes (a test comparing what a client gets with and without the gateway).
    pub fn set_fixed_ids(&self, fixed: bool) {
        self.shared.fixed_ids.store(fixed, Ordering::Relaxed);
    }

    /// Stops accepting and closes every open connection (in-flight answers are cut). Returns at
    /// once: the listener task exits on its next turn, so a test that needs "connection
    /// refused" should poll for it.
    pub fn shutdown(&self) {
        tracing::debug!(region = %self.shared.config.region, "mock shutting down");
        self.shared.shutdown.send_replace(true);
    }

    /// Resolves once [`MockAzure::shutdown`] has been called.
    pub async fn stopped(&self) {
        let mut rx = self.shared.shutdown.subscribe();
        // The sender lives in `shared`, which `self` keeps alive: an error cannot happen.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// Starts a mock on `addr` and serves until it is shut down (the CLI's `modelgw mock-azure`).
/// Prints nothing: the caller announces readiness.
pub async fn run(addr: SocketAddr, config: MockConfig) -> std::io::Result<()> {
    let mock = MockAzure::start(addr, config).await?;
    mock.stopped().await;
    Ok(())
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
