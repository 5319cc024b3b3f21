//! Model Gateway data plane: the stateless, horizontally scaled proxy apps call instead of
//! Azure OpenAI.
//!
//! Owns: the client-facing Azure OpenAI surface (`/openai/deployments/…`, `/openai/v1/…`,
//! `/healthz`, `/readyz`), gateway-key authentication, endpoint selection and failover, the
//! upstream requests with injected credentials, per-endpoint health as this node sees it, and
//! the gRPC stream that receives routing snapshots from the control plane.
//!
//! Must never: touch a database, call the control plane on the request path, hold a lock
//! across an await, or let a secret (endpoint key, gateway key, a gateway's pin key) reach a
//! log line, an error message or a response.
//!
//! Modules: [`routing_table`] (compiled routing table behind one `ArcSwap`), [`health`]
//! (per-endpoint health state machine with half-open trials, fleet windows from the control
//! plane, quota headroom and latency estimates — all surviving swaps), [`balance`] (selection:
//! priority spillover, `weighted` and `fastest` per gateway), `proxy` (hyper server and the
//! request path: one deadline per request, failover before the first byte — for non-streamed
//! answers before the whole (bounded) body was read —, SSE error events after it, waiting for
//! recovery; OpenTelemetry spans per request and attempt when [`DataPlaneConfig::tracer`] is
//! set), [`limits`] (gateway keys' limits: admission against the control plane's budget
//! leases, every answer charged to its key and each ancestor, cumulative usage reports),
//! [`apply`] (what the control plane sends, applied in domain form: snapshots with ACK/NACK,
//! fleet health, budget leases), `pin` (pinned response ids: minting, verifying, the
//! gateway's pins compiled with the routing table, and the rewrite of ids in answers), [`traces`] (request traces of gateways that record them: the
//! per-request recorder, payload redaction and stream reassembly, the bounded queue and its
//! shipper), [`snapshot_file`] (the last applied snapshot sealed on local disk, served at start
//! until a control plane answers) and `control_plane_client` (the gRPC transport to the control
//! plane: the only module that sees wire types).

pub mod apply;
pub mod balance;
mod control_plane_client;
pub mod entra;
pub mod health;
pub mod limits;
pub mod metrics;
mod pin;
mod proxy;
pub mod routing_table;
pub mod shutdown;
pub mod snapshot_file;
pub mod traces;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::balance::{ByStrategy, EndpointSelector};
use crate::control_plane_client as client;
use crate::entra::EntraTokens;
use crate::health::{EndpointHealth, HEALTH_CHANNEL_CAPACITY, HealthPolicy, HealthRegistry};
use crate::routing_table::SnapshotStore;

pub use crate::apply::{ApplyOutcome, apply_fleet_health, apply_leases, apply_snapshot};
pub use crate::control_plane_client::{
    ClientCertFiles, ControlPlaneTrust, HEARTBEAT_INTERVAL, STATS_INTERVAL, TokenSource,
    TrustError, USAGE_INTERVAL,
};
pub use crate::limits::KeyLimiter;
pub use crate::proxy::connection::ConnectionStats;
pub use crate::proxy::trace_context::RequestTracer;
pub use crate::shutdown::{Shutdown, ShutdownTrigger, shutdown_channel};
pub use crate::snapshot_file::{DEFAULT_SNAPSHOT_MAX_AGE, SnapshotFileConfig, SnapshotKey};

/// Default request-body limit: 32 MiB. Bodies are held in memory so they can be re-sent on
/// failover; 32 MiB covers Azure's largest inputs (25 MB audio files plus multipart framing,
/// base64 images in chat) while bounding memory per request.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Default first-byte timeout per upstream attempt (response head, and for SSE the first
/// data frame).
/// Non-streaming completions only send headers when the whole answer is done, which takes
/// minutes for long outputs of reasoning models; 180 s allows that while a hung endpoint
/// still fails over well within the OpenAI SDK's 600 s request timeout.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(180);

/// Default longest gap between two chunks of an upstream body once it started. Azure streams
/// tokens many times a second, but reasoning models may think silently between output items;
/// 120 s tolerates that while a hung stream still ends (with an error event) long before a
/// client's own 600 s timeout.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Default end-to-end deadline of one request (all attempts, recovery waits and the body)
/// when the gateway sets no `routing.request_timeout_ms`: 600 s, the OpenAI SDKs' own
/// default timeout, past which the client has given up anyway.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Default cap on how much of a non-streamed 2xx answer is held back before the response
/// head goes to the client: 8 MiB. Holding the whole answer lets a connection cut in the
/// middle of it fail over instead of reaching the client. Chat answers are far smaller (a
/// 16k-token completion is well under 1 MiB) and so are typical embeddings batches (about a
/// hundred 3072-dimension vectors as JSON floats fit), while memory per request stays bounded.
/// A larger answer is committed once the cap is reached and the rest streamed as before.
pub const DEFAULT_MAX_BUFFERED_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Default TCP+TLS connect timeout to an upstream. Azure endpoints connect in well under a
/// second even across regions; 5 s (the OpenAI SDK's own) fails over fast on a dead host.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default time to receive the whole request body: 32 MiB over a slow 5 Mbit/s uplink takes
/// about 55 s.
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Default time in-flight requests get to finish on shutdown, once accepting stopped (after
/// the drain period); matches Kubernetes' default termination grace period.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Default drain period: how long a data plane asked to stop keeps serving while `/readyz`
/// fails, before it stops accepting. 15 s covers what has to happen before no new request is
/// sent here: Kubernetes removes a terminating pod from its Service's endpoints at once, but
/// kube-proxy, ingress controllers and cloud load balancers apply that a few seconds later
/// (5–10 s is commonly seen); a balancer that only follows the readiness probe needs
/// `periodSeconds × failureThreshold` (5 s × 2 in `deploy/`) plus its own refresh. An Azure Front
/// Door probing data planes directly needs its probe interval × the failed samples that mark
/// an origin down: set its interval to 5 s, or raise the drain period to match. Longer only
/// delays a rollout; shorter risks refused connections at the balancer.
pub const DEFAULT_DRAIN_PERIOD: Duration = Duration::from_secs(15);

/// How long the control-plane stream may take to close cleanly at exit (the last usage
/// report, then the control plane's end of the stream) before it is dropped.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Default deadline, from accept, for a client connection's first complete request head (HTTP/1
/// and h2c alike): 30 s, between Envoy's edge recommendation (10 s for request headers) and
/// nginx's `client_header_timeout` (60 s). SDK clients send their head at once; a connection
/// that has sent nothing in 30 s is a stuck or hostile one.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Default idle timeout of a client connection with no request in flight (HTTP/1 keep-alive,
/// HTTP/2 without streams): 75 s, nginx's `keepalive_timeout`. Long enough that an SDK's
/// pooled connection is reused across a conversation's turns, short enough that idle
/// connections do not pile up.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Default HTTP/2 PING interval on client connections: 30 s, so a peer that vanished during
/// a long, quiet stream is noticed within a minute.
pub const DEFAULT_HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Default wait for a PING's acknowledgement before the connection is closed: 20 s (hyper's
/// and gRPC's default).
pub const DEFAULT_HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Default maximum of open client connections per data-plane process: 10,000 (Envoy's edge
/// guidance caps downstream connections in the same range). Lowered at start to what the
/// process's open-file limit allows (each proxied request may also hold an upstream
/// connection), so the limit — a clean refusal, counted — is reached before `accept` fails
/// with "too many open files".
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// File descriptors kept free of client connections for upstream pools, the control-plane
/// stream, logs and the listener.
const RESERVED_FDS: usize = 64;

/// Default largest SSE event relayed: 1 MiB. Azure's events are a few hundred bytes (a
/// Responses API event carrying a whole output item is a few KiB); 1 MiB is generous while one
/// stream's framing buffer stays bounded.
pub const DEFAULT_MAX_SSE_EVENT_BYTES: usize = 1024 * 1024;

/// Default window of the failed-authentication log (one line per client address per window)
/// and of the optional per-address limit.
pub const DEFAULT_FAILED_AUTH_WINDOW: Duration = Duration::from_secs(60);

/// How long idle upstream connections stay pooled. Azure's front ends close idle connections
/// after a few minutes; 90 s reuses warm TLS sessions without meeting a closed socket.
const UPSTREAM_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// TCP keepalive on upstream connections, to notice dead peers of long streams.
const UPSTREAM_TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Settings of one data plane.
#[derive(Clone, Debug)]
pub struct DataPlaneConfig {
    /// Listen address of the gateway (`MODELGW_GATEWAY_ADDR`); port 0 picks a free port.
    pub gateway_addr: SocketAddr,
    /// gRPC URL of the control plane (`MODELGW_CONTROL_PLANE_URL`), `https://` unless
    /// `control_plane_trust.allow_insecure`; several separated by commas (control-plane
    /// replicas without one Service in front: tried in turn, the next at once when one goes
    /// away). Empty = run without a control plane (snapshots only through
    /// [`DataPlane::snapshot_store`], e.g. in tests).
    pub control_plane_url: String,
    /// How the control plane is verified and how this data plane authenticates to it.
    pub control_plane_trust: ControlPlaneTrust,
    /// Identity reported to the control plane (`MODELGW_NODE_ID`).
    pub node_id: String,
    /// Largest request body accepted (`MODELGW_MAX_BODY_BYTES`); see [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
    /// Per-attempt wait for the upstream's response head (first byte); see
    /// [`DEFAULT_UPSTREAM_TIMEOUT`].
    pub upstream_timeout: Duration,
    /// Longest gap between two upstream body chunks; see [`DEFAULT_STREAM_IDLE_TIMEOUT`].
    pub stream_idle_timeout: Duration,
    /// End-to-end deadline when a gateway sets none; see [`DEFAULT_REQUEST_TIMEOUT`]. A
    /// client's `x-modelgw-timeout-ms` header may only shorten it.
    pub request_timeout: Duration,
    /// Largest non-streamed 2xx answer read in full before it is committed to the client (so
    /// that a cut inside it can still fail over); see
    /// [`DEFAULT_MAX_BUFFERED_RESPONSE_BYTES`]. 0 commits every answer at its head.
    pub max_buffered_response_bytes: usize,
    /// Thresholds of the per-endpoint health state machine and of selection.
    pub health_policy: HealthPolicy,
    /// See [`DEFAULT_UPSTREAM_CONNECT_TIMEOUT`].
    pub upstream_connect_timeout: Duration,
    /// See [`DEFAULT_CLIENT_BODY_TIMEOUT`].
    pub client_body_timeout: Duration,
    /// See [`DEFAULT_SHUTDOWN_GRACE`] (`MODELGW_SHUTDOWN_GRACE`).
    pub shutdown_grace: Duration,
    /// See [`DEFAULT_DRAIN_PERIOD`] (`MODELGW_DRAIN_PERIOD`); zero stops accepting at once.
    pub drain_period: Duration,
    /// Serving threads (`MODELGW_WORKERS`), each with its own runtime and upstream connection
    /// pool; default: one per available core.
    pub workers: usize,
    /// How often a heartbeat goes to the control plane; see [`HEARTBEAT_INTERVAL`].
    pub heartbeat_interval: Duration,
    /// How often the traffic counted since the previous report goes to the control plane for
    /// the Admin Console's statistics (`MODELGW_STATS_INTERVAL`); see [`STATS_INTERVAL`].
    /// Nothing is sent when nothing happened, or with metrics off.
    pub stats_interval: Duration,
    /// How often the keys' usage (cumulative per key and window) goes to the control plane
    /// (`MODELGW_USAGE_INTERVAL`); see [`USAGE_INTERVAL`]. Sooner, at most ten times a second,
    /// when a budget lease runs low.
    pub usage_interval: Duration,
    /// Azure credential for endpoints in Entra ID auth mode (built by the binary from
    /// `MODELGW_AZURE_CREDENTIAL` & co.). `None`: such endpoints are unavailable.
    pub entra_credential: Option<Arc<dyn azure_core::credentials::TokenCredential>>,
    /// `MODELGW_HEADER_READ_TIMEOUT`; see [`DEFAULT_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// `MODELGW_CLIENT_IDLE_TIMEOUT`; see [`DEFAULT_CLIENT_IDLE_TIMEOUT`].
    pub client_idle_timeout: Duration,
    /// `MODELGW_HTTP2_KEEPALIVE_INTERVAL` (zero: no PINGs); see
    /// [`DEFAULT_HTTP2_KEEPALIVE_INTERVAL`].
    pub http2_keepalive_interval: Duration,
    /// `MODELGW_HTTP2_KEEPALIVE_TIMEOUT`; see [`DEFAULT_HTTP2_KEEPALIVE_TIMEOUT`].
    pub http2_keepalive_timeout: Duration,
    /// `MODELGW_MAX_CONNECTIONS`; see [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// `MODELGW_MAX_SSE_EVENT_BYTES`; see [`DEFAULT_MAX_SSE_EVENT_BYTES`]. An upstream event
    /// above it ends the stream with an SSE error event and fails the endpoint.
    pub max_sse_event_bytes: usize,
    /// `MODELGW_FAILED_AUTH_WINDOW`; see [`DEFAULT_FAILED_AUTH_WINDOW`].
    pub failed_auth_window: Duration,
    /// `MODELGW_FAILED_AUTH_LIMIT`: failed authentications per client address per window
    /// after which the address gets 429 for a window. `None` (default): no limit (behind a
    /// proxy every client shares its address).
    pub failed_auth_limit: Option<u32>,
    /// `MODELGW_ALLOW_LOOPBACK_UPSTREAMS`: let endpoints resolve to loopback addresses (the
    /// demo and tests). Off by default; link-local and metadata addresses are never allowed.
    pub allow_loopback_upstreams: bool,
    /// `MODELGW_FORWARD_CLIENT_ADDRESS_HEADERS`: forward the client's `X-Forwarded-*` and
    /// `Forwarded` headers upstream. Off by default.
    pub forward_client_address_headers: bool,
    /// OpenTelemetry spans for each request and upstream attempt, with W3C trace context
    /// taken from the client and passed to the upstream (the binary sets it when an OTLP
    /// endpoint is configured). `None` (default): no span is made, the client's
    /// `traceparent` goes upstream as it came.
    pub tracer: Option<RequestTracer>,
    /// Whether the request path counts (Prometheus metrics and the statistics reported to the
    /// control plane). On by default; `MODELGW_METRICS_ADDR=off` turns it off.
    pub metrics_enabled: bool,
    /// Where `GET /metrics` is served (`MODELGW_METRICS_ADDR`); `None`: nowhere (counting
    /// still feeds the control plane's statistics). Never the gateway's own address.
    pub metrics_addr: Option<SocketAddr>,
    /// `MODELGW_TRACE_QUEUE`: request traces waiting to be shipped at most (beyond, they are
    /// dropped and counted); see [`traces::DEFAULT_TRACE_QUEUE`].
    pub trace_queue: usize,
    /// `MODELGW_SNAPSHOT_FILE` & co.: where the last applied snapshot is kept, sealed, and
    /// served from at start until a control plane answers. `None` (default): nothing is
    /// saved, and the data plane serves nothing until a control plane sends a snapshot.
    pub snapshot_file: Option<SnapshotFileConfig>,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        Self {
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], 4001)),
            control_plane_url: "https://127.0.0.1:4002".to_owned(),
            control_plane_trust: ControlPlaneTrust::default(),
            node_id: "data-plane".to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_buffered_response_bytes: DEFAULT_MAX_BUFFERED_RESPONSE_BYTES,
            health_policy: HealthPolicy::default(),
            upstream_connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            client_body_timeout: DEFAULT_CLIENT_BODY_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            drain_period: DEFAULT_DRAIN_PERIOD,
            workers: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            heartbeat_interval: client::HEARTBEAT_INTERVAL,
            stats_interval: client::STATS_INTERVAL,
            usage_interval: client::USAGE_INTERVAL,
            entra_credential: None,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            client_idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT,
            http2_keepalive_interval: DEFAULT_HTTP2_KEEPALIVE_INTERVAL,
            http2_keepalive_timeout: DEFAULT_HTTP2_KEEPALIVE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_sse_event_bytes: DEFAULT_MAX_SSE_EVENT_BYTES,
            failed_auth_window: DEFAULT_FAILED_AUTH_WINDOW,
            failed_auth_limit: None,
            allow_loopback_upstreams: false,
            forward_client_address_headers: false,
            tracer: None,
            metrics_enabled: true,
            metrics_addr: None,
            trace_queue: traces::DEFAULT_TRACE_QUEUE,
            snapshot_file: None,
        }
    }
}

/// Why [`DataPlane::run`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataPlaneError {
    /// The control-plane client task died (a bug); the process should restart rather than
    /// serve a configuration that can no longer change.
    #[error("the control-plane client stopped unexpectedly: {0}")]
    ControlPlaneClient(String),
}

/// A bound, not yet running data plane.
pub struct DataPlane {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: DataPlaneConfig,
    control_plane: Option<client::Connector>,
    store: Arc<SnapshotStore>,
    health: Arc<HealthRegistry>,
    health_rx: mpsc::Receiver<EndpointHealth>,
    tls: rustls::ClientConfig,
    entra: Arc<EntraTokens>,
    connections: Arc<ConnectionStats>,
    metrics_listener: Option<TcpListener>,
    traces: Arc<traces::TraceQueue>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .field("version", &self.store.version())
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    /// Binds the listener and prepares the upstream client; nothing is served until `run`.
    /// Fails on an unusable address, control-plane URL or TLS file (plaintext without
    /// `allow_insecure`, no credential, an unreadable CA, certificate or token), or a snapshot
    /// file whose directory does not exist. A saved snapshot that opens and is young enough is
    /// installed here, so the first request is served from it; one that does not is logged
    /// and ignored.
    pub async fn bind(config: DataPlaneConfig) -> std::io::Result<DataPlane> {
        // rustls is built without a default crypto provider; install ring unless the
        // binary already chose one.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let control_plane = if config.control_plane_url.is_empty() {
            None
        } else {
            let connector = client::Connector::new(
                &config.control_plane_url,
                config.control_plane_trust.clone(),
            )
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
            Some(connector)
        };
        let tls = proxy::upstream_client::tls_config()?;
        let listener = TcpListener::bind(config.gateway_addr).await?;
        let local_addr = listener.local_addr()?;
        let metrics_listener = match config.metrics_addr.filter(|_| config.metrics_enabled) {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let metrics =
            Arc::new(metrics::Metrics::new(config.metrics_enabled, config.workers.max(1)));
        let (health, health_rx) =
            HealthRegistry::with_policy(config.health_policy.clone(), HEALTH_CHANNEL_CAPACITY);
        let entra = Arc::new(EntraTokens::new(config.entra_credential.clone()));
        let traces = Arc::new(traces::TraceQueue::new(config.trace_queue));
        let store = Arc::new(SnapshotStore::with_metrics(metrics));
        match &config.snapshot_file {
            Some(file) => {
                file.check()
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                serve_saved_snapshot(file, &store);
            }
            None if control_plane.is_some() => info!(
                "no MODELGW_SNAPSHOT_FILE: the last snapshot is not kept on disk, so this data plane cannot serve after a restart until a control plane answers"
            ),
            None => {}
        }
        Ok(DataPlane {
            entra,
            connections: Arc::new(ConnectionStats::default()),
            listener,
            local_addr,
            config,
            control_plane,
            store,
            health: Arc::new(health),
            health_rx,
            tls,
            metrics_listener,
            traces,
        })
    }

    /// The queue of finished request traces (shipped to the control plane while connected).
    pub fn trace_queue(&self) -> Arc<traces::TraceQueue> {
        Arc::clone(&self.traces)
    }

    /// The address `/metrics` is served on, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// What the request path counts.
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        Arc::clone(self.store.metrics())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The routing-table store; swap a compiled snapshot in directly to run without a
    /// control plane, or subscribe to follow the applied version.
    pub fn snapshot_store(&self) -> Arc<SnapshotStore> {
        Arc::clone(&self.store)
    }

    /// The Entra ID token cache of endpoints in `entra` auth mode (refreshed while running).
    pub fn entra_tokens(&self) -> Arc<EntraTokens> {
        Arc::clone(&self.entra)
    }

    /// Gateway keys' limits and usage (budget leases, counters, this instance's id).
    pub fn key_limits(&self) -> Arc<KeyLimiter> {
        Arc::clone(self.store.key_limits())
    }

    /// Per-endpoint health as this data plane sees it.
    pub fn health(&self) -> Arc<HealthRegistry> {
        Arc::clone(&self.health)
    }

    /// The listener's connection counters (open, refused at the limit, closed by a limit).
    pub fn connection_stats(&self) -> Arc<ConnectionStats> {
        Arc::clone(&self.connections)
    }

    /// Serves until `shutdown` resolves (selecting endpoints per gateway by its
    /// `routing.strategy`, see [`ByStrategy`]), then drains: see [`shutdown`] for the phases
    /// (`drain_period`, then up to `shutdown_grace` for in-flight requests).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DataPlaneError> {
        self.run_with_selector(Arc::new(ByStrategy), shutdown).await
    }

    /// [`DataPlane::run`] with another endpoint-selection policy.
    pub async fn run_with_selector(
        self,
        selector: Arc<dyn EndpointSelector>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DataPlaneError> {
        let (shutdown, _stop_waiting) = Shutdown::when(shutdown);
        self.run_until(selector, shutdown).await
    }

    /// [`DataPlane::run`] driven by repeated requests: each one (a SIGTERM/SIGINT) moves the
    /// shutdown a phase on — the first starts the drain period, a second ends it, a third cuts
    /// in-flight requests.
    pub async fn run_until_shutdown(self, shutdown: Shutdown) -> Result<(), DataPlaneError> {
        self.run_until(Arc::new(ByStrategy), shutdown).await
    }

    /// [`DataPlane::run_until_shutdown`] with another endpoint-selection policy.
    pub async fn run_until(
        self,
        selector: Arc<dyn EndpointSelector>,
        shutdown: Shutdown,
    ) -> Result<(), DataPlaneError> {
        let DataPlane {
            listener,
            local_addr,
            config,
            control_plane,
            store,
            health,
            health_rx,
            tls,
            entra,
            connections,
            metrics_listener,
            traces,
        } = self;
        let metrics = Arc::clone(store.metrics());
        let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let metrics_task = metrics_listener.map(|listener| {
            let mut registry = metrics::Scrape {
                metrics: Arc::clone(&metrics),
                health: Arc::clone(&health),
                connections: Arc::clone(&connections),
                store: Arc::clone(&store),
            }
            .registry();
            registry.register_collector(Box::new(traces::QueueMetrics(Arc::clone(&traces))));
            tokio::spawn(metrics::server::serve(listener, registry, async {
                let _ = metrics_stop_rx.await;
            }))
        });
        let entra_task = tokio::spawn(keep_entra_tokens(Arc::clone(&store), Arc::clone(&entra)));
        // Tells the control-plane client to close its stream cleanly (shutting down).
        let (leave_tx, leave_rx) = tokio::sync::watch::channel(false);
        let mut client_task = control_plane.map(|connector| {
            let saver = config.snapshot_file.clone().map(|file| {
                Arc::new(snapshot_file::writer::SnapshotSaver::start(
                    file,
                    Arc::clone(store.metrics()),
                ))
            });
            let client_config = client::ClientConfig {
                node_id: config.node_id.clone(),
                heartbeat_interval: config.heartbeat_interval,
                stats_interval: config.stats_interval,
                usage_interval: config.usage_interval,
                saver,
            };
            let shipper = traces::TraceShipper::new(Arc::clone(&traces), traces::TRACE_INTERVAL);
            tokio::spawn(client::run(
                client_config,
                connector,
                Arc::clone(&store),
                Arc::clone(&health),
                health_rx,
                shipper,
                leave_rx,
            ))
        });
        let limits = proxy::Limits {
            max_body_bytes: config.max_body_bytes,
            upstream_timeout: config.upstream_timeout,
            idle_timeout: config.stream_idle_timeout,
            request_timeout: config.request_timeout,
            max_buffered_response_bytes: config.max_buffered_response_bytes,
            client_body_timeout: config.client_body_timeout,
            max_sse_event_bytes: config.max_sse_event_bytes.max(1),
            forward_client_address_headers: config.forward_client_address_headers,
        };
        let settings = proxy::upstream_client::ClientSettings {
            connect_timeout: config.upstream_connect_timeout,
            pool_idle_timeout: UPSTREAM_POOL_IDLE_TIMEOUT,
            tcp_keepalive: UPSTREAM_TCP_KEEPALIVE,
            egress: proxy::egress::EgressPolicy { allow_loopback: config.allow_loopback_upstreams },
        };
        let lifecycle = Arc::new(shutdown::Lifecycle::default());
        let failed_auths =
            Arc::new(proxy::FailedAuths::new(config.failed_auth_window, config.failed_auth_limit));
        let failed_auth_task = tokio::spawn(proxy::report_failed_auths(Arc::clone(&failed_auths)));
        let server_limits = proxy::server::ServerLimits {
            connection: proxy::connection::ConnectionLimits {
                header_read_timeout: config.header_read_timeout,
                idle_timeout: config.client_idle_timeout,
            },
            max_connections: max_connections(config.max_connections),
            http2_keepalive_interval: Some(config.http2_keepalive_interval)
                .filter(|interval| !interval.is_zero()),
            http2_keepalive_timeout: config.http2_keepalive_timeout,
        };
        // One proxy per serving thread: shared routing table, health and tokens; its own
        // upstream connection pool.
        let workers = config.workers.max(1);
        let proxies = (0..workers)
            .map(|shard| proxy::Proxy {
                store: Arc::clone(&store),
                health: Arc::clone(&health),
                selector: Arc::clone(&selector),
                http: proxy::upstream_client::build(settings, tls.clone()),
                entra: Arc::clone(&entra),
                limits: limits.clone(),
                failed_auths: Arc::clone(&failed_auths),
                tracer: config.tracer.clone(),
                metrics: Arc::clone(&metrics),
                shard,
                traces: Arc::clone(&traces),
                lifecycle: Arc::clone(&lifecycle),
            })
            .collect();
        info!(
            addr = %local_addr,
            node_id = %config.node_id,
            control_plane = %config.control_plane_url,
            workers,
            max_connections = server_limits.max_connections,
            drain_period_ms = config.drain_period.as_millis() as u64,
            shutdown_grace_ms = config.shutdown_grace.as_millis() as u64,
            allow_loopback_upstreams = config.allow_loopback_upstreams,
            "data plane serving"
        );

        // Stop serving when asked, or when the control-plane client dies.
        let (client_died_tx, client_died_rx) = tokio::sync::oneshot::channel::<String>();
        let client_abort = client_task.as_ref().map(tokio::task::JoinHandle::abort_handle);
        let watcher = client_task.take().map(|task| {
            tokio::spawn(async move {
                if let Err(err) = task.await
                    && err.is_panic()
                {
                    let _ = client_died_tx.send(err.to_string());
                }
            })
        });
        let mut died: Option<String> = None;
        let client_died = async {
            match client_died_rx.await {
                Ok(reason) => reason,
                // The client ended without panicking (or never ran): only `shutdown` stops us.
                Err(_) => std::future::pending().await,
            }
        };
        // A dead client stops serving like a shutdown request (draining first).
        let client_stop = async { died = Some(client_died.await) };
        let phases = proxy::server::Phases {
            shutdown,
            drain_period: config.drain_period,
            grace: config.shutdown_grace,
            lifecycle,
        };
        proxy::server::serve(listener, proxies, phases, client_stop, server_limits, connections)
            .await;
        failed_auth_task.abort();
        let _ = metrics_stop_tx.send(());
        if let Some(task) = metrics_task {
            task.abort();
        }
        // Leave the control plane cleanly: the last usage, then an orderly end of the stream.
        let _ = leave_tx.send(true);
        if let Some(mut watcher) = watcher {
            if tokio::time::timeout(LEAVE_TIMEOUT, &mut watcher).await.is_err() {
                warn!(
                    timeout_ms = LEAVE_TIMEOUT.as_millis() as u64,
                    "the control-plane stream did not close in time; dropping it"
                );
            }
            watcher.abort();
        }
        if let Some(client) = client_abort {
            client.abort();
        }
        entra_task.abort();
        info!("data plane stopped");
        match died {
            Some(reason) => Err(DataPlaneError::ControlPlaneClient(reason)),
            None => Ok(()),
        }
    }
}

/// `configured`, lowered to what the open-file limit leaves for client connections (half of
/// it after [`RESERVED_FDS`]: each proxied request may hold an upstream connection too).
fn max_connections(configured: usize) -> usize {
    let configured = configured.max(1);
    let Some(files) = open_file_limit() else { return configured };
    let fitting = (files.saturating_sub(RESERVED_FDS) / 2).max(1);
    if fitting < configured {
        warn!(
            configured,
            open_file_limit = files,
            max_connections = fitting,
            "open-file limit too low for the connection limit; lowering it"
        );
        return fitting;
    }
    configured
}

/// The soft limit on open files (`RLIMIT_NOFILE`), from `/proc/self/limits` (Linux; `None`
/// elsewhere or when unlimited).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Installs the sealed snapshot saved on disk, when it opens and is young enough; logs why
/// not otherwise (the data plane then starts as without a file).
fn serve_saved_snapshot(file: &SnapshotFileConfig, store: &SnapshotStore) {
    let path = file.path.display();
    let loaded = match snapshot_file::load(file) {
        Ok(loaded) => loaded,
        Err(snapshot_file::SnapshotFileError::Missing) => {
            info!(%path, "no saved snapshot yet; waiting for a control plane");
            return;
        }
        Err(error) => {
            warn!(%path, %error, "saved snapshot not served; waiting for a control plane");
            return;
        }
    };
    let version = loaded.snapshot.version.0;
    let table = match routing_table::RoutingTable::compile(&loaded.snapshot) {
        Ok(table) => table,
        Err(error) => {
            warn!(%path, version, %error, "saved snapshot not served; waiting for a control plane");
            return;
        }
    };
    let origin = snapshot_file::DiskOrigin { confirmed_unix_ms: loaded.confirmed_unix_ms };
    if store.install_from_disk(table, origin) {
        warn!(
            %path,
            version,
            age_s = loaded.age.as_secs(),
            "serving the snapshot saved on disk (stale) until a control plane sends one"
        );
    }
}

/// Starts token refresh for every Entra ID scope of each routing table applied.
async fn keep_entra_tokens(store: Arc<SnapshotStore>, entra: Arc<EntraTokens>) {
    let mut versions = store.subscribe();
    loop {
        entra.ensure(store.load().entra_scopes());
        if versions.changed().await.is_err() {
            return;
        }
    }
}
