//! The `ConfigDiscovery` gRPC service: one bidirectional stream per data plane. One of the two
//! transport files of the protocol (the other is the data plane's control-plane client): the
//! only control-plane code that names generated types; everything it hands the registry is a
//! domain message (`modelgw_model::protocol`).
//!
//! Responses are `ControlPlaneFrame`s (`proto/modelgw/config/v1/frames.proto`), wire-identical
//! to `ControlPlaneMessage`: a snapshot goes out as the bytes encoded once per version (and the
//! fleet quota as the bytes encoded once per change), shared by every stream, never copied or
//! re-encoded per data plane.
//!
//! Per stream, one task reads the data plane's messages into the registry, and the response
//! stream sends the current snapshot at once (even when the `Hello` says the data plane
//! already has that version: a repeat is harmless and keeps the protocol stateless), then
//! each newer published version. The reader tells the response stream when to end (client
//! gone, replaced by a newer stream of the same node, its token revoked, its message budget
//! spent, or shutdown).
//!
//! Trust: the port is TLS ([`GrpcSecurity::tls`]) unless the operator chose plaintext
//! ([`GrpcSecurity::insecure`]). Before anything is read from a stream its peer is
//! authenticated (client certificate from the configured CA, or an active join token); then
//! its `Hello` must name a node id the peer is bound to ([`Peer::may_register`]) and fit the
//! registry's bounds. A refused stream gets its status and nothing else: no snapshot, and no
//! message of it reaches the registry.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use modelgw_model::limits::truncate_chars;
use modelgw_model::protocol::{DataPlaneMessage, FleetHealth, HealthReport, Hello, UsageReport};
use modelgw_model::wire::cfg;
use modelgw_model::{ConfigVersion, NodeId};
use modelgw_proto::frames::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::admission::{MessageBudget, Peer, RegistrationRate};
use super::join_tokens::{ActiveTokens, JoinTokens, TOKEN_POLL_INTERVAL};
use super::leases::{LeasePush, LeaseSession, lease_channel};
use super::quota::PublishedFleetQuota;
use super::registry::RegistrationLimits;
use super::tls::{ServerTls, TLS_RELOAD_INTERVAL, TlsError, TlsFiles, certificate_identities};
use super::traces::TraceIntake;
use super::{ConnectionId, DataPlaneRegistry, PublishedSnapshot};
use crate::store::DataPlaneTokenId;
use crate::{ControlPlaneMetrics, Store, StoreError};

/// Lease pushes queued for one stream's response. The lease task waits when the data plane
/// reads slowly (each push supersedes the previous, so there is no point in queueing many).
const LEASE_PUSH_QUEUE: usize = 2;

/// How long a new stream may take to send its `Hello`; a client that connects and says
/// nothing holds a task and a connection, so it is cut off after this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval: detects data planes that vanished without closing the connection
/// (crashed host, dropped NAT entry) so the registry shows them disconnected within
/// about `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long to wait for the PING answer before closing the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest message a data plane may send. Its messages are a `Hello`, ACK/NACKs, heartbeats,
/// health reports of at most 256 endpoints (a few dozen KiB), statistics reports (at most
/// `MAX_STATS_ROUTES_PER_REPORT` pairs: under 1 MiB even with every count at its largest, a
/// test in `model::wire` checks it), usage reports (at most `MAX_USAGE_ENTRIES_PER_REPORT`
/// entries of about 100 bytes) and trace batches (kept under `MAX_TRACE_BATCH_BYTES`, 512 KiB,
/// except a lone trace with both bodies at the 256 KiB cap); 1 MiB leaves room while a peer
/// cannot make the control plane buffer tonic's 4 MiB default (or more) per message.
pub const MAX_INBOUND_MESSAGE_BYTES: usize = 1024 * 1024;

/// Concurrent streams on one HTTP/2 connection. A data plane needs one (a reconnect opens a
/// new connection); a few allow for an overlap, while one connection cannot register
/// hundreds of node ids at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 4;

/// Messages a stream may send at once before the rate applies. A data plane sends a
/// heartbeat every 5 s, an ACK per snapshot, a health report per burst of changes (256
/// endpoints each), a statistics report every `MODELGW_STATS_INTERVAL` (5 s; several only
/// beyond 2,000 active pairs), a usage report every `MODELGW_USAGE_INTERVAL` (1 s) and at
/// most ten a second more while its budget leases run low, and at most ten trace batches a
/// second: 100 covers a fleet-wide incident's reports.
pub const MESSAGE_BURST: u32 = 100;

/// Sustained messages per second per stream; a stream beyond it is ended with
/// `RESOURCE_EXHAUSTED` (the data plane reconnects with backoff, so a bug slows down rather
/// than floods the registry and the health writer).
pub const MESSAGES_PER_SECOND: u32 = 20;

/// Registrations a connection may make at once (each admitted `Hello`), then
/// [`REGISTRATIONS_PER_SECOND`]. A data plane registers once per connection; a few allow for a
/// stream replaced on the same connection.
pub const REGISTRATION_BURST: u32 = 8;

/// Sustained registrations per second per connection.
pub const REGISTRATIONS_PER_SECOND: u32 = 1;

/// Longest node id quoted in a log line.
const LOGGED_NODE_ID_CHARS: usize = 128;

/// How the distribution port is secured; built once at start, so unreadable or mismatched
/// files fail the start rather than the first data plane.
#[derive(Clone, Debug)]
pub struct GrpcSecurity(Security);

#[derive(Clone, Debug)]
enum Security {
    Tls(Arc<ServerTls>),
    Insecure,
}

/// How data planes authenticate on the distribution port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// mTLS: a client certificate from the configured CA; node id = a SAN of it.
    Certificate,
    /// A join token (`authorization: Bearer …`) over TLS; node id bound to the token's name.
    Token,
    /// Plaintext, nobody authenticated (`--insecure-grpc`).
    None,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Certificate => "certificate",
            ClientAuth::Token => "token",
            ClientAuth::None => "none",
        }
    }
}

impl GrpcSecurity {
    /// TLS with these files, read and checked now: mTLS when `files.client_ca` is set, join
    /// tokens otherwise.
    pub fn tls(files: TlsFiles) -> Result<GrpcSecurity, TlsError> {
        Ok(GrpcSecurity(Security::Tls(Arc::new(ServerTls::load(files)?))))
    }

    /// Plaintext and unauthenticated: for a development machine only.
    pub fn insecure() -> GrpcSecurity {
        GrpcSecurity(Security::Insecure)
    }

    pub fn client_auth(&self) -> ClientAuth {
        match &self.0 {
            Security::Tls(tls) if tls.client_certificates() => ClientAuth::Certificate,
            Security::Tls(_) => ClientAuth::Token,
            Security::Insecure => ClientAuth::None,
        }
    }

    /// Whether the port speaks TLS (`https://` for data planes).
    pub fn is_tls(&self) -> bool {
        matches!(self.0, Security::Tls(_))
    }
}

/// Everything the gRPC server is configured with.
#[derive(Clone, Debug)]
pub struct GrpcSettings {
    pub security: GrpcSecurity,
    pub limits: RegistrationLimits,
    /// How often certificate files are checked for changes; see [`TLS_RELOAD_INTERVAL`].
    pub tls_reload_interval: Duration,
    /// How often active join tokens are re-read; see [`TOKEN_POLL_INTERVAL`].
    pub token_poll_interval: Duration,
}

impl GrpcSettings {
    /// `security` with the default bounds and intervals.
    pub fn new(security: GrpcSecurity) -> GrpcSettings {
        GrpcSettings {
            security,
            limits: RegistrationLimits::default(),
            tls_reload_interval: TLS_RELOAD_INTERVAL,
            token_poll_interval: TOKEN_POLL_INTERVAL,
        }
    }
}

/// Why the gRPC server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GrpcServeError {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reading the data-plane tokens: {0}")]
    Store(#[from] StoreError),
}

pub(super) async fn serve(
    snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
    registry: DataPlaneRegistry,
    store: Store,
    traces: TraceIntake,
    listener: tokio::net::TcpListener,
    settings: GrpcSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcServeError> {
    let (stopping_tx, stopping) = watch::channel(false);
    let metrics = store.metrics().clone();
    registry.set_limits(settings.limits);
    let client_auth = settings.security.client_auth();
    let mut tasks = Vec::new();
    if client_auth == ClientAuth::Token {
        // Before the first connection, so a valid token is never refused at start.
        registry.tokens.reload(&store).await?;
        let tokens =
            registry.tokens.clone().keep_fresh(store.clone(), settings.token_poll_interval);
        tasks.push(super::AbortOnDrop(tokio::spawn(
            tokens.instrument(tracing::info_span!("data_plane_tokens")),
        )));
    }
    if let Security::Tls(tls) = &settings.security.0 {
        let reload = tls.clone().keep_fresh(settings.tls_reload_interval);
        tasks.push(super::AbortOnDrop(tokio::spawn(
            reload.instrument(tracing::info_span!("tls_reload")),
        )));
    }
    let service = DiscoveryService {
        store: store.clone(),
        metrics,
        snapshots,
        registrations: RegistrationRate::new(REGISTRATION_BURST, REGISTRATIONS_PER_SECOND),
        tokens: registry.tokens.clone(),
        registry,
        stopping,
        client_auth,
        traces,
    };
    if let Ok(addr) = listener.local_addr() {
        match client_auth {
            ClientAuth::None => {
                tracing::warn!(%addr, "config distribution (gRPC) listening in PLAINTEXT with no authentication (--insecure-grpc): anyone who reaches this port gets every endpoint's API key; use TLS outside a development machine")
            }
            auth => {
                tracing::info!(%addr, tls = true, client_auth = auth.as_str(), "config distribution (gRPC) listening")
            }
        }
    }
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(
            ConfigDiscoveryServer::new(service)
                .max_decoding_message_size(MAX_INBOUND_MESSAGE_BYTES),
        );
    let shutdown = async move {
        shutdown.await;
        tracing::info!("config distribution shutting down; ending open streams");
        // Streams never end by themselves: tell them to, or graceful shutdown waits forever.
        let _ = stopping_tx.send(true);
    };
    let served = match &settings.security.0 {
        Security::Tls(tls) => {
            router.serve_with_incoming_shutdown(tls.incoming(listener), shutdown).await
        }
        Security::Insecure => {
            router.serve_with_incoming_shutdown(incoming(listener), shutdown).await
        }
    };
    drop(tasks);
    Ok(served?)
}

/// Accepted connections with Nagle's algorithm off. tonic ignores its own `tcp_nodelay` for
/// an incoming stream, and with Nagle on, a small message (a fleet-health push) can wait
/// ~40 ms for the peer's delayed ACK: too much of the fleet-push budget.
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::debug!(error = %e, "could not disable Nagle on a config stream");
        }
        accepted
    })
}

struct DiscoveryService {
    /// For the lease tasks of data-plane instances (usage and leases live in the store).
    store: Store,
    snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
    registry: DataPlaneRegistry,
    tokens: JoinTokens,
    /// Registrations per connection.
    registrations: RegistrationRate,
    stopping: watch::Receiver<bool>,
    client_auth: ClientAuth,
    metrics: ControlPlaneMetrics,
    /// Where request traces go (the trace writer).
    traces: TraceIntake,
}

impl DiscoveryService {
    /// Who opened the stream, from its TLS client certificate or its join token.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<Peer, Status> {
        match self.client_auth {
            ClientAuth::None => Ok(Peer::Unauthenticated),
            ClientAuth::Certificate => {
                // The handshake already required a certificate from the configured CA.
                let certs = request.peer_certs().unwrap_or_default();
                let leaf = certs
                    .first()
                    .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
                Ok(Peer::Certificate { identities: certificate_identities(leaf) })
            }
            ClientAuth::Token => {
                let presented = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .ok_or_else(|| {
                        Status::unauthenticated(
                            "a data-plane token is required (authorization: Bearer <token>)",
                        )
                    })?;
                self.tokens
                    .authenticate(presented)
                    .map(Peer::Token)
                    .ok_or_else(|| Status::unauthenticated("unknown or revoked data-plane token"))
            }
        }
    }
}

type OutboundStream = Pin<Box<dyn Stream<Item = Result<cfg::ControlPlaneFrame, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for DiscoveryService {
    type StreamStream = OutboundStream;

    async fn stream(
        &self,
        request: Request<Streaming<cfg::DataPlaneMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let addr = request.remote_addr();
        let refused = |who: &str, node_id: Option<&NodeId>, status: &Status| {
            let node_id = node_id.map(|n| truncate_chars(&n.0, LOGGED_NODE_ID_CHARS));
            tracing::warn!(peer = ?addr, who, node_id, code = ?status.code(), reason = status.message(), "config stream refused");
        };
        let peer = self
            .authenticate(&request)
            .inspect_err(|status| refused("unauthenticated", None, status))?;
        let who = peer.describe();
        let mut inbound = request.into_inner();
        let hello =
            read_hello(&mut inbound).await.inspect_err(|status| refused(&who, None, status))?;
        let Hello { node_id, applied_version, build_version, instance } = hello;
        peer.may_register(&node_id.0)
            .map_err(Status::permission_denied)
            .inspect_err(|status| refused(&who, Some(&node_id), status))?;
        if let Some(addr) = addr
            && !self.registrations.allow(addr)
        {
            let status = Status::resource_exhausted(format!(
                "more than {REGISTRATION_BURST} registrations on one connection, or {REGISTRATIONS_PER_SECOND} per second"
            ));
            refused(&who, Some(&node_id), &status);
            return Err(status);
        }
        let subscribed_at = Instant::now();
        let (connection, replaced) = self
            .registry
            .connect(&node_id, applied_version, &peer)
            .map_err(|full| Status::resource_exhausted(full.to_string()))
            .inspect_err(|status| refused(&who, Some(&node_id), status))?;
        let span = tracing::info_span!("config_stream", node_id = %node_id, connection = %connection, peer = ?addr, who);
        span.in_scope(|| {
            tracing::info!(
                applied_version = applied_version.0,
                build_version,
                instance = instance.map(|i| format!("{:016x}", i.get())),
                "data plane subscribed"
            );
        });
        // An instance enforces key limits: its lease task lends it budget and stores its
        // usage. It ends with the stream (its report queue or its pushes' receiver closes).
        let (usage, leases) = match instance {
            Some(instance) => {
                let (report_tx, reports) = lease_channel();
                let (push_tx, pushes) = mpsc::channel(LEASE_PUSH_QUEUE);
                let task = LeaseSession {
                    instance,
                    node_id: node_id.clone(),
                    store: self.store.clone(),
                    snapshots: self.snapshots.clone(),
                    reports,
                    pushes: push_tx,
                    pushed: Default::default(),
                    wanted: Default::default(),
                    seen_requests: Default::default(),
                };
                tokio::spawn(task.run().instrument(span.clone()));
                (Some(report_tx), Some(pushes))
            }
            None => (None, None),
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let revocation = match &peer {
            Peer::Token(grant) => Some((grant.id, self.tokens.subscribe())),
            _ => None,
        };
        let session = Session {
            node_id,
            connection,
            registry: self.registry.clone(),
            snapshots: self.snapshots.clone(),
            stop: Some(stop_tx),
            budget: MessageBudget::new(MESSAGE_BURST, MESSAGES_PER_SECOND),
            revocation,
            metrics: self.metrics.clone(),
            subscribed_at,
            acked: applied_version,
            usage,
            traces: self.traces.clone(),
        };
        tokio::spawn(
            session.run(inbound, replaced, self.stopping.clone()).instrument(span.clone()),
        );
        let fleet = self.registry.subscribe_fleet_health();
        let quota = self.registry.subscribe_fleet_quota();
        Ok(Response::new(outbound(self.snapshots.clone(), fleet, quota, leases, stop_rx, span)))
    }
}

async fn read_hello(inbound: &mut Streaming<cfg::DataPlaneMessage>) -> Result<Hello, Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no Hello within 10 s of opening the stream"))??;
    let Some(first) = first else {
        return Err(Status::invalid_argument("the stream ended before Hello"));
    };
    match DataPlaneMessage::try_from(first) {
        Ok(DataPlaneMessage::Hello(hello)) => Ok(hello),
        Ok(_) => Err(Status::invalid_argument("the first message must be Hello")),
        Err(invalid) => Err(Status::invalid_argument(invalid.to_string())),
    }
}

/// The reading half of one stream.
struct Session {
    node_id: NodeId,
    connection: ConnectionId,
    registry: DataPlaneRegistry,
    snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
    /// Ends the response stream; `Some(status)` ends it with that error.
    stop: Option<oneshot::Sender<Option<Status>>>,
    /// Messages this stream may still send (a token bucket).
    budget: MessageBudget,
    /// The join token the stream authenticated with, and the active tokens to watch.
    revocation: Option<(DataPlaneTokenId, watch::Receiver<Arc<ActiveTokens>>)>,
    metrics: ControlPlaneMetrics,
    /// When the stream was admitted: versions published before it are a catch-up, not a
    /// propagation.
    subscribed_at: Instant,
    /// The highest version this data plane said it applied on this stream (its `Hello`, then
    /// ACKs), so each version's propagation is observed once.
    acked: ConfigVersion,
    /// The lease task's report queue, when the data plane is an instance that enforces key
    /// limits (`Hello.instance`).
    usage: Option<mpsc::Sender<UsageReport>>,
    /// Where request traces go (the trace writer; never awaited).
    traces: TraceIntake,
}

/// Resolves when the token `id` is no longer active (never for a stream without a token).
async fn revoked(revocation: Option<(DataPlaneTokenId, watch::Receiver<Arc<ActiveTokens>>)>) {
    let Some((id, mut active)) = revocation else {
        return std::future::pending().await;
    };
    loop {
        if !active.borrow_and_update().contains(id) {
            return;
        }
        if active.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<cfg::DataPlaneMessage>,
        replaced: Arc<Notify>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let revoked = revoked(self.revocation.take());
        tokio::pin!(revoked);
        loop {
            tokio::select! {
                () = &mut revoked => {
                    tracing::warn!("the stream's data-plane token was revoked; closing it");
                    self.registry.disconnect(&self.node_id, self.connection);
                    self.end(Some(Status::unauthenticated("the data-plane token was revoked")));
                    return;
                }
                () = replaced.notified() => {
                    tracing::warn!("stream replaced by a newer one with the same node id; closing it");
                    self.end(Some(Status::aborted("replaced by a newer stream with the same node id")));
                    return;
                }
                _ = stopping.wait_for(|s| *s) => {
                    self.registry.disconnect(&self.node_id, self.connection);
                    self.end(Some(Status::unavailable("control plane is shutting down")));
                    return;
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        if !self.budget.take() {
                            tracing::warn!(burst = MESSAGE_BURST, per_second = MESSAGES_PER_SECOND, "data plane exceeded its message budget; closing the stream");
                            self.registry.disconnect(&self.node_id, self.connection);
                            self.end(Some(Status::resource_exhausted(format!(
                                "more than {MESSAGE_BURST} messages at once or {MESSAGES_PER_SECOND} per second"
                            ))));
                            return;
                        }
                        if !self.handle(message) {
                            tracing::warn!("stream no longer owns its registry entry; closing it");
                            self.end(Some(Status::aborted("replaced by a newer stream with the same node id")));
                            return;
                        }
                    }
                    Ok(None) => {
                        tracing::info!("data plane closed the stream");
                        self.registry.disconnect(&self.node_id, self.connection);
                        self.end(None);
                        return;
                    }
                    Err(status) => {
                        tracing::info!(code = ?status.code(), reason = status.message(), "config stream broke");
                        self.registry.disconnect(&self.node_id, self.connection);
                        self.end(None);
                        return;
                    }
                },
            }
        }
    }

    fn end(&mut self, status: Option<Status>) {
        if let Some(stop) = self.stop.take() {
            // The response stream may already be gone (client disconnected): nothing to end.
            let _ = stop.send(status);
        }
    }

    /// Applies one message to the registry. Returns false when a newer stream owns the entry.
    fn handle(&mut self, message: cfg::DataPlaneMessage) -> bool {
        let message = match DataPlaneMessage::try_from(message) {
            Ok(message) => message,
            Err(invalid) => {
                tracing::warn!(reason = %invalid, "ignoring an unreadable message");
                return self.registry.update(&self.node_id, self.connection, |_| {});
            }
        };
        if let DataPlaneMessage::Ack { version } = message {
            self.observe_propagation(version);
        }
        let (node, conn) = (&self.node_id, self.connection);
        match message {
            DataPlaneMessage::Ack { version } => {
                tracing::info!(version = version.0, "data plane applied snapshot");
                self.registry.update(node, conn, |s| {
                    s.applied_version = version;
                    s.last_nack = None;
                })
            }
            DataPlaneMessage::Nack(nack) => {
                tracing::warn!(version = nack.version.0, reason = %nack.reason, "data plane rejected snapshot");
                self.registry.update(node, conn, |s| s.last_nack = Some(nack.reason))
            }
            DataPlaneMessage::Heartbeat { applied_version } => {
                tracing::trace!(applied_version = applied_version.0, "heartbeat");
                self.registry.update(node, conn, |s| s.applied_version = applied_version)
            }
            DataPlaneMessage::Health(report) => {
                self.metrics.health_report_received();
                let report = self.configured_only(report);
                let owned = self.registry.update(node, conn, |_| {});
                if owned {
                    self.registry.report_health(node, report.endpoints);
                }
                owned
            }
            DataPlaneMessage::Stats(report) => {
                self.metrics.stats_report_received();
                let owned = self.registry.update(node, conn, |_| {});
                if owned {
                    self.registry.report_stats(node, &report);
                }
                owned
            }
            DataPlaneMessage::Usage(report) => {
                let owned = self.registry.update(node, conn, |_| {});
                match &self.usage {
                    Some(queue) if owned => match queue.try_send(report) {
                        Ok(()) => {}
                        // Cumulative: the next report supersedes this one.
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::debug!("lease task busy; usage report superseded by the next")
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            tracing::warn!("lease task gone; usage report dropped")
                        }
                    },
                    Some(_) => {}
                    None => tracing::debug!(
                        "usage report from a data plane without an instance id; ignored"
                    ),
                }
                owned
            }
            DataPlaneMessage::Traces(batch) => {
                let owned = self.registry.update(node, conn, |_| {});
                if owned {
                    let snapshot = self.snapshots.borrow().snapshot().clone();
                    self.traces.submit(node, batch, &snapshot);
                }
                owned
            }
            DataPlaneMessage::Quota(report) => {
                let owned = self.registry.update(node, conn, |_| {});
                if owned {
                    let published = self.snapshots.borrow().clone();
                    // Logged (debug, or warn when ignored) by the registry.
                    let _ = self.registry.report_quota(node, &report, &published);
                }
                owned
            }
            DataPlaneMessage::Hello(_) => {
                tracing::warn!("ignoring a second Hello on the same stream");
                self.registry.update(node, conn, |_| {})
            }
        }
    }

    /// Observes the propagation time of `version` (publish → this ACK) when it is the version
    /// being distributed, was published while this stream was open, and is acknowledged here
    /// for the first time. A data plane that (re)connects and catches up is not a propagation;
    /// an ACK of a version already superseded is not observed (its publish time is gone).
    fn observe_propagation(&mut self, version: ConfigVersion) {
        if version <= self.acked {
            return;
        }
        self.acked = version;
        let snapshot = self.snapshots.borrow().clone();
        if snapshot.version() == version && snapshot.ready_at() >= self.subscribed_at {
            self.metrics.snapshot_propagated(snapshot.ready_at().elapsed());
        }
    }

    /// Keeps the entries that name an endpoint of the current configuration, logging each one
    /// kept and each one skipped (unreadable, or not configured).
    fn configured_only(&self, mut report: HealthReport) -> HealthReport {
        for skipped in &report.skipped {
            tracing::warn!(reason = %skipped, "health report entry unreadable; skipped");
        }
        let snapshot = self.snapshots.borrow().clone();
        report.endpoints.retain(|entry| {
            let configured = snapshot.contains_endpoint(entry.endpoint_id);
            if configured {
                tracing::info!(endpoint_id = %entry.endpoint_id, state = entry.state.as_str(), reason = entry.reason.as_deref(), until = ?entry.until.map(chrono::DateTime::<chrono::Utc>::from), "endpoint health reported");
            } else {
                tracing::debug!(endpoint_id = %entry.endpoint_id, "health report for an endpoint not in the current configuration; skipped");
            }
            configured
        });
        report
    }
}

struct Outbound {
    snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
    fleet: watch::Receiver<Arc<FleetHealth>>,
    /// The fleet's quota spend, encoded once per change.
    quota: watch::Receiver<Arc<PublishedFleetQuota>>,
    /// Grants from the instance's lease task (none for a data plane without an instance).
    leases: Option<mpsc::Receiver<LeasePush>>,
    /// Grants waiting for the snapshot they were computed with to go out first.
    pending_leases: Option<LeasePush>,
    stop: oneshot::Receiver<Option<Status>>,
    last_sent: Option<ConfigVersion>,
    /// A snapshot was just sent: the fleet health follows it, changed or not, so a data plane
    /// that (re)connects learns what the fleet avoids at once.
    fleet_due: bool,
    /// The registry is gone (only at teardown): stop watching it rather than spin.
    fleet_closed: bool,
    /// The first snapshot was just sent: the fleet quota follows (after the fleet health)
    /// when it is not empty, so a data plane that (re)connects knows the fleet's spend
    /// without waiting for the next change. Later snapshots do not repeat it: the data plane
    /// keeps the last view it was sent.
    quota_due: bool,
    /// The quota push is gone (only at teardown).
    quota_closed: bool,
    done: bool,
}

/// The response stream: the current snapshot, fleet health and (when not empty) fleet quota,
/// then every newer snapshot (each followed by the fleet health), every change of the fleet
/// health or of the fleet quota and, for an instance that enforces key limits, every lease
/// push (never before the snapshot it was computed with), until told to stop.
fn outbound(
    snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
    fleet: watch::Receiver<Arc<FleetHealth>>,
    quota: watch::Receiver<Arc<PublishedFleetQuota>>,
    leases: Option<mpsc::Receiver<LeasePush>>,
    stop: oneshot::Receiver<Option<Status>>,
    span: tracing::Span,
) -> OutboundStream {
    let state = Outbound {
        snapshots,
        fleet,
        quota,
        leases,
        pending_leases: None,
        stop,
        last_sent: None,
        fleet_due: false,
        fleet_closed: false,
        quota_due: false,
        quota_closed: false,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, move |mut state| {
        let span = span.clone();
        async move {
            let item = state.next().await?;
            Some((item, state))
        }
        .instrument(span)
    }))
}

/// The next lease push (`None` once the lease task is gone); pending forever without one.
async fn recv_leases(leases: &mut Option<mpsc::Receiver<LeasePush>>) -> Option<LeasePush> {
    match leases {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn send_fleet_quota(quota: &PublishedFleetQuota) -> cfg::ControlPlaneFrame {
    use cfg::control_plane_frame::Kind;
    // Trace: the push itself is logged once (debug) where it is published, not per stream.
    tracing::trace!(entries = quota.quota().endpoints.len(), "sending fleet quota");
    // A reference-counted handle on the bytes encoded once per change.
    cfg::ControlPlaneFrame { kind: Some(Kind::FleetQuota(quota.encoded().clone())) }
}

fn send_leases(push: &LeasePush) -> cfg::ControlPlaneFrame {
    use cfg::control_plane_frame::Kind;
    tracing::debug!(grants = push.leases.grants.len(), "sending leases");
    // Per instance, so encoded per send.
    let encoded = prost::Message::encode_to_vec(&cfg::Leases::from(&push.leases));
    cfg::ControlPlaneFrame { kind: Some(Kind::Leases(encoded.into())) }
}

impl Outbound {
    async fn next(&mut self) -> Option<Result<cfg::ControlPlaneFrame, Status>> {
        if self.done {
            return None;
        }
        let Some(last_sent) = self.last_sent else {
            let snapshot = self.snapshots.borrow_and_update().clone();
            return Some(Ok(self.send(&snapshot)));
        };
        if self.fleet_due {
            return Some(Ok(self.send_fleet()));
        }
        if self.quota_due {
            self.quota_due = false;
            let current = self.quota.borrow_and_update().clone();
            if !current.quota().endpoints.is_empty() {
                return Some(Ok(send_fleet_quota(&current)));
            }
        }
        if let Some(push) = self.pending_leases.take() {
            return Some(Ok(send_leases(&push)));
        }
        loop {
            tokio::select! {
                biased;
                stop = &mut self.stop => {
                    self.done = true;
                    return match stop {
                        Ok(Some(status)) => Some(Err(status)),
                        _ => None,
                    };
                }
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        self.done = true;
                        return Some(Err(Status::unavailable("the config publisher stopped")));
                    }
                    let snapshot = self.snapshots.borrow_and_update().clone();
                    if snapshot.version() > last_sent {
                        return Some(Ok(self.send(&snapshot)));
                    }
                }
                changed = self.fleet.changed(), if !self.fleet_closed => {
                    if changed.is_err() {
                        self.fleet_closed = true;
                        continue;
                    }
                    return Some(Ok(self.send_fleet()));
                }
                changed = self.quota.changed(), if !self.quota_closed => {
                    if changed.is_err() {
                        self.quota_closed = true;
                        continue;
                    }
                    let current = self.quota.borrow_and_update().clone();
                    return Some(Ok(send_fleet_quota(&current)));
                }
                push = recv_leases(&mut self.leases), if self.leases.is_some() => {
                    let Some(push) = push else {
                        self.leases = None;
                        continue;
                    };
                    if push.version > last_sent {
                        // Computed with a snapshot this data plane has not been sent yet.
                        let snapshot = self.snapshots.borrow_and_update().clone();
                        if snapshot.version() > last_sent {
                            self.pending_leases = Some(push);
                            return Some(Ok(self.send(&snapshot)));
                        }
                    }
                    return Some(Ok(send_leases(&push)));
                }
            }
        }
    }

    fn send_fleet(&mut self) -> cfg::ControlPlaneFrame {
        use cfg::control_plane_frame::Kind;
        self.fleet_due = false;
        let fleet = self.fleet.borrow_and_update().clone();
        tracing::debug!(unavailable = fleet.endpoints.len(), "sending fleet health");
        // Small (unavailable endpoints only), so encoded per send.
        let encoded = prost::Message::encode_to_vec(&cfg::FleetHealth::from(fleet.as_ref()));
        cfg::ControlPlaneFrame { kind: Some(Kind::FleetHealth(encoded.into())) }
    }

    fn send(&mut self, snapshot: &PublishedSnapshot) -> cfg::ControlPlaneFrame {
        use cfg::control_plane_frame::Kind;
        self.quota_due |= self.last_sent.is_none();
        self.last_sent = Some(snapshot.version());
        self.fleet_due = true;
        tracing::debug!(version = snapshot.version().0, "sending snapshot");
        // A reference-counted handle on the bytes encoded at publish time.
        cfg::ControlPlaneFrame { kind: Some(Kind::Snapshot(snapshot.encoded().clone())) }
    }
}
