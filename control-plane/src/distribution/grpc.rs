//! The `ConfigDiscovery` gRPC service: one bidirectional stream per data plane.
//!
//! Per stream, one task reads the data plane's messages into the registry, and the response
//! stream sends the current snapshot at once (even when the `Hello` says the data plane
//! already has that version: a repeat is harmless and keeps the protocol stateless), then
//! each newer published version. The reader tells the response stream when to end (client
//! gone, replaced by a newer stream of the same node, or shutdown).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::Stream;
use modelgw_model::{ConfigVersion, EndpointId, EndpointState, NodeId};
use modelgw_proto::cfg;
use modelgw_proto::cfg::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use modelgw_proto::cfg::data_plane_message::Kind;
use tokio::sync::{Notify, oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::{ConnectionId, DataPlaneRegistry, HealthUpdate};

/// How long a new stream may take to send its `Hello`; a client that connects and says
/// nothing holds a task and a connection, so it is cut off after this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval: detects data planes that vanished without closing the connection
/// (crashed host, dropped NAT entry) so the registry shows them disconnected within
/// about `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long to wait for the PING answer before closing the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest node id accepted: a fully qualified host name is at most 253 characters.
const MAX_NODE_ID_CHARS: usize = 253;
/// Longest NACK or health reason kept; reasons are for operators, and the registry lives in
/// memory for the life of the process, so a misbehaving client cannot grow it unboundedly.
const MAX_REASON_CHARS: usize = 512;
/// Longest build version logged.
const MAX_BUILD_VERSION_CHARS: usize = 64;

pub(super) async fn serve(
    snapshots: watch::Receiver<Arc<cfg::Snapshot>>,
    registry: DataPlaneRegistry,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stopping_tx, stopping) = watch::channel(false);
    let service = DiscoveryService { snapshots, registry, stopping };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "config distribution (gRPC) listening");
    }
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(ConfigDiscoveryServer::new(service))
        .serve_with_incoming_shutdown(incoming(listener), async move {
            shutdown.await;
            tracing::info!("config distribution shutting down; ending open streams");
            // Streams never end by themselves: tell them to, or graceful shutdown waits forever.
            let _ = stopping_tx.send(true);
        })
        .await
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
    snapshots: watch::Receiver<Arc<cfg::Snapshot>>,
    registry: DataPlaneRegistry,
    stopping: watch::Receiver<bool>,
}

type OutboundStream = Pin<Box<dyn Stream<Item = Result<cfg::ControlPlaneMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for DiscoveryService {
    type StreamStream = OutboundStream;

    async fn stream(
        &self,
        request: Request<Streaming<cfg::DataPlaneMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let hello = read_hello(&mut inbound).await.inspect_err(|status| {
            tracing::warn!(peer = ?peer, code = ?status.code(), reason = status.message(), "config stream refused");
        })?;
        let node_id = NodeId(hello.node_id);
        let (connection, replaced) =
            self.registry.connect(&node_id, ConfigVersion(hello.applied_version));
        let span = tracing::info_span!("config_stream", node_id = %node_id, connection = %connection, peer = ?peer);
        span.in_scope(|| {
            tracing::info!(
                applied_version = hello.applied_version,
                build_version = truncate(&hello.build_version, MAX_BUILD_VERSION_CHARS),
                "data plane subscribed"
            );
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let session = Session {
            node_id,
            connection,
            registry: self.registry.clone(),
            snapshots: self.snapshots.clone(),
            stop: Some(stop_tx),
        };
        tokio::spawn(
            session.run(inbound, replaced, self.stopping.clone()).instrument(span.clone()),
        );
        let fleet = self.registry.subscribe_fleet_health();
        Ok(Response::new(outbound(self.snapshots.clone(), fleet, stop_rx, span)))
    }
}

async fn read_hello(inbound: &mut Streaming<cfg::DataPlaneMessage>) -> Result<cfg::Hello, Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no Hello within 10 s of opening the stream"))??;
    let hello = match first.and_then(|m| m.kind) {
        Some(Kind::Hello(hello)) => hello,
        Some(_) => return Err(Status::invalid_argument("the first message must be Hello")),
        None => return Err(Status::invalid_argument("the stream ended before Hello")),
    };
    let chars = hello.node_id.chars().count();
    if chars == 0 || chars > MAX_NODE_ID_CHARS || hello.node_id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "Hello.node_id must be 1–{MAX_NODE_ID_CHARS} printable characters"
        )));
    }
    Ok(hello)
}

/// The reading half of one stream.
struct Session {
    node_id: NodeId,
    connection: ConnectionId,
    registry: DataPlaneRegistry,
    snapshots: watch::Receiver<Arc<cfg::Snapshot>>,
    /// Ends the response stream; `Some(status)` ends it with that error.
    stop: Option<oneshot::Sender<Option<Status>>>,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<cfg::DataPlaneMessage>,
        replaced: Arc<Notify>,
        mut stopping: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
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
    fn handle(&self, message: cfg::DataPlaneMessage) -> bool {
        let (node, conn) = (&self.node_id, self.connection);
        match message.kind {
            Some(Kind::Ack(ack)) => {
                tracing::info!(version = ack.version, "data plane applied snapshot");
                self.registry.update(node, conn, |s| {
                    s.applied_version = ConfigVersion(ack.version);
                    s.last_nack = None;
                })
            }
            Some(Kind::Nack(nack)) => {
                let reason = truncate(&nack.reason, MAX_REASON_CHARS);
                tracing::warn!(version = nack.version, reason = %reason, "data plane rejected snapshot");
                self.registry.update(node, conn, |s| s.last_nack = Some(reason))
            }
            Some(Kind::Heartbeat(beat)) => {
                tracing::trace!(applied_version = beat.applied_version, "heartbeat");
                self.registry
                    .update(node, conn, |s| s.applied_version = ConfigVersion(beat.applied_version))
            }
            Some(Kind::Health(report)) => {
                let updates = self.health_updates(report);
                let owned = self.registry.update(node, conn, |_| {});
                if owned {
                    self.registry.report_health(node, updates);
                }
                owned
            }
            Some(Kind::Hello(_)) => {
                tracing::warn!("ignoring a second Hello on the same stream");
                self.registry.update(node, conn, |_| {})
            }
            None => {
                tracing::warn!("ignoring an empty message");
                self.registry.update(node, conn, |_| {})
            }
        }
    }

    /// Parses a health report, skipping (and logging) entries that are malformed or name an
    /// endpoint that is not in the current configuration.
    fn health_updates(&self, report: cfg::HealthReport) -> Vec<HealthUpdate> {
        let snapshot = self.snapshots.borrow().clone();
        let mut updates = Vec::with_capacity(report.endpoints.len());
        for entry in report.endpoints {
            let Ok(endpoint_id) = entry.endpoint_id.parse::<EndpointId>() else {
                tracing::warn!(endpoint_id = %truncate(&entry.endpoint_id, 64), "health report names a malformed endpoint id; skipped");
                continue;
            };
            let canonical = endpoint_id.to_string();
            if !snapshot.endpoints.iter().any(|e| e.id == canonical) {
                tracing::debug!(%endpoint_id, "health report for an endpoint not in the current configuration; skipped");
                continue;
            }
            let state = match cfg::EndpointState::try_from(entry.state) {
                Ok(cfg::EndpointState::Healthy) => EndpointState::Healthy,
                Ok(cfg::EndpointState::Throttling) => EndpointState::Throttling,
                Ok(cfg::EndpointState::Error) => EndpointState::Error,
                _ => {
                    tracing::warn!(%endpoint_id, state = entry.state, "health report with an unknown state; skipped");
                    continue;
                }
            };
            let until = (entry.until_unix_ms > 0)
                .then(|| DateTime::<Utc>::from_timestamp_millis(entry.until_unix_ms))
                .flatten();
            let reason =
                (!entry.reason.is_empty()).then(|| truncate(&entry.reason, MAX_REASON_CHARS));
            tracing::info!(%endpoint_id, state = state.as_str(), reason = reason.as_deref(), until = ?until, "endpoint health reported");
            updates.push(HealthUpdate { endpoint_id, state, reason, until });
        }
        updates
    }
}

struct Outbound {
    snapshots: watch::Receiver<Arc<cfg::Snapshot>>,
    fleet: watch::Receiver<Arc<cfg::FleetHealth>>,
    stop: oneshot::Receiver<Option<Status>>,
    last_sent: Option<u64>,
    /// A snapshot was just sent: the fleet health follows it, changed or not, so a data plane
    /// that (re)connects learns what the fleet avoids at once.
    fleet_due: bool,
    /// The registry is gone (only at teardown): stop watching it rather than spin.
    fleet_closed: bool,
    done: bool,
}

/// The response stream: the current snapshot and fleet health, then every newer snapshot
/// (each followed by the fleet health) and every change of the fleet health, until told to
/// stop.
fn outbound(
    snapshots: watch::Receiver<Arc<cfg::Snapshot>>,
    fleet: watch::Receiver<Arc<cfg::FleetHealth>>,
    stop: oneshot::Receiver<Option<Status>>,
    span: tracing::Span,
) -> OutboundStream {
    let state = Outbound {
        snapshots,
        fleet,
        stop,
        last_sent: None,
        fleet_due: false,
        fleet_closed: false,
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

impl Outbound {
    async fn next(&mut self) -> Option<Result<cfg::ControlPlaneMessage, Status>> {
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
                    if snapshot.version > last_sent {
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
            }
        }
    }

    fn send_fleet(&mut self) -> cfg::ControlPlaneMessage {
        self.fleet_due = false;
        let fleet = self.fleet.borrow_and_update().clone();
        tracing::debug!(unavailable = fleet.endpoints.len(), "sending fleet health");
        cfg::ControlPlaneMessage {
            kind: Some(cfg::control_plane_message::Kind::FleetHealth(fleet.as_ref().clone())),
        }
    }

    fn send(&mut self, snapshot: &Arc<cfg::Snapshot>) -> cfg::ControlPlaneMessage {
        self.last_sent = Some(snapshot.version);
        self.fleet_due = true;
        tracing::debug!(version = snapshot.version, "sending snapshot");
        cfg::ControlPlaneMessage {
            kind: Some(cfg::control_plane_message::Kind::Snapshot(snapshot.as_ref().clone())),
        }
    }
}

/// At most `max` characters of `s` (client-supplied text kept in memory or logged).
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
