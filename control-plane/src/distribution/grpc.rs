//! The `ConfigDiscovery` gRPC service: one bidirectional stream per data plane. One of the two
//! transport files of the protocol (the other is the data plane's control-plane client): the
//! only control-plane code that names generated types; everything it hands the registry is a
//! domain message (`modelgw_model::protocol`).
//!
//! Responses are `ControlPlaneFrame`s (`proto/modelgw/config/v1/frames.proto`), wire-identical
//! to `ControlPlaneMessage`: a snapshot goes out as the bytes encoded once per version, shared
//! by every stream, never copied or re-encoded per data plane.
//!
//! Per stream, one task reads the data plane's messages into the registry, and the response
//! stream sends the current snapshot at once (even when the `Hello` says the data plane
//! already has that version: a repeat is harmless and keeps the protocol stateless), then
//! each newer published version. The reader tells the response stream when to end (client
//! gone, replaced by a newer stream of the same node, or shutdown).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use modelgw_model::protocol::{DataPlaneMessage, FleetHealth, HealthReport, Hello};
use modelgw_model::wire::cfg;
use modelgw_model::{ConfigVersion, NodeId};
use modelgw_proto::frames::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use tokio::sync::{Notify, oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::{ConnectionId, DataPlaneRegistry, PublishedSnapshot};

/// How long a new stream may take to send its `Hello`; a client that connects and says
/// nothing holds a task and a connection, so it is cut off after this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval: detects data planes that vanished without closing the connection
/// (crashed host, dropped NAT entry) so the registry shows them disconnected within
/// about `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long to wait for the PING answer before closing the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn serve(
    snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
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
    snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
    registry: DataPlaneRegistry,
    stopping: watch::Receiver<bool>,
}

type OutboundStream = Pin<Box<dyn Stream<Item = Result<cfg::ControlPlaneFrame, Status>> + Send>>;

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
        let Hello { node_id, applied_version, build_version } = hello;
        let (connection, replaced) = self.registry.connect(&node_id, applied_version);
        let span = tracing::info_span!("config_stream", node_id = %node_id, connection = %connection, peer = ?peer);
        span.in_scope(|| {
            tracing::info!(
                applied_version = applied_version.0,
                build_version,
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
        let message = match DataPlaneMessage::try_from(message) {
            Ok(message) => message,
            Err(invalid) => {
                tracing::warn!(reason = %invalid, "ignoring an unreadable message");
                return self.registry.update(node, conn, |_| {});
            }
        };
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
                let report = self.configured_only(report);
                let owned = self.registry.update(node, conn, |_| {});
                if owned {
                    self.registry.report_health(node, report.endpoints);
                }
                owned
            }
            DataPlaneMessage::Hello(_) => {
                tracing::warn!("ignoring a second Hello on the same stream");
                self.registry.update(node, conn, |_| {})
            }
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
    stop: oneshot::Receiver<Option<Status>>,
    last_sent: Option<ConfigVersion>,
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
    snapshots: watch::Receiver<Arc<PublishedSnapshot>>,
    fleet: watch::Receiver<Arc<FleetHealth>>,
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
        self.last_sent = Some(snapshot.version());
        self.fleet_due = true;
        tracing::debug!(version = snapshot.version().0, "sending snapshot");
        // A reference-counted handle on the bytes encoded at publish time.
        cfg::ControlPlaneFrame { kind: Some(Kind::Snapshot(snapshot.encoded().clone())) }
    }
}
