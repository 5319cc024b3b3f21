//! The connection to the control plane: receive snapshots, apply them (ACK) or reject them
//! (NACK, keeping the last good one), send heartbeats, health changes and traffic statistics.
//! Reconnects forever with capped, fully jittered exponential backoff while the proxy keeps
//! serving.
//!
//! Statistics: every [`ClientConfig::stats_interval`] this task asks the metrics for what
//! happened since it last asked (`Metrics::stats_report`, deltas read from the request path's
//! atomic counters — the request path itself never waits on this) and sends it when it is not
//! empty, split into reports within the protocol's bounds. While the stream is down nothing is
//! read, so the counters keep what happens meanwhile, and a report read but refused by a
//! closed stream is kept and merged (added) into the next one: counts survive a reconnect. A
//! report already handed to the transport when the stream breaks is not resent (the protocol
//! has no acknowledgement for statistics; the control plane's window is in memory anyway).
//!
//! Key limits: `Hello` carries this process's instance id (random, non-zero, drawn once per
//! process); `Leases` go to the key limits ([`crate::apply::apply_leases`]); every
//! [`ClientConfig::usage_interval`], and sooner (at most ten times a second) when a grant's
//! headroom fell under half, the keys' usage goes out as `UsageReport`s. Usage is cumulative
//! per (key, window, window start) and kept in the counters themselves, so nothing is lost
//! while the stream is down, and after a reconnect everything is sent again: the control
//! plane keeps the larger of what it has and what it gets, so nothing counts twice.
//!
//! Snapshots applied (or sent again while current) are offered to the sealed snapshot file's
//! writer ([`crate::snapshot_file`]) when one is configured; it never makes this task wait.
//!
//! One of the two transport files of the protocol (the other is the control plane's gRPC
//! server): the only data-plane code that names generated types. It decodes each message into
//! its domain form (`modelgw_model::protocol`) at once and hands that to [`crate::apply`].
//!
//! Trust: an `https://` control plane must present a certificate that chains to the
//! configured CA (`MODELGW_CONTROL_PLANE_CA_FILE`) or, without one, to the system roots; one
//! that does not is refused (the reason is logged) and retried with backoff while the proxy
//! keeps serving its last snapshot. The data plane authenticates with a client certificate
//! (mTLS) or a join token (`authorization: Bearer …`). Every file (CA, certificate, key,
//! token) is read again at each (re)connect, so rotated files are picked up without a
//! restart. `http://` is refused unless the operator allowed plaintext
//! (`MODELGW_INSECURE_CONTROL_PLANE=true`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cfg::config_discovery_client::ConfigDiscoveryClient;
use modelgw_model::protocol::{
    ControlPlaneMessage, DataPlaneMessage, EndpointHealth, HealthReport, Hello, StatsReport,
};
use modelgw_model::wire::{InvalidControlPlaneMessage, cfg};
use modelgw_model::{EndpointId, NodeId, Secret};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};

use crate::apply::{ApplyOutcome, apply_fleet_health, apply_leases, apply_snapshot};
use crate::health::HealthRegistry;
use crate::limits::KeyLimiter;
use crate::routing_table::SnapshotStore;
use crate::snapshot_file::writer::SnapshotSaver;
use crate::traces::TraceShipper;

/// How often the data plane says it is alive. The control plane marks a data plane stale
/// after missing a few; 5 s keeps that detection within ~15 s at negligible cost.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How often traffic statistics go to the control plane (`MODELGW_STATS_INTERVAL`). The
/// console charts per minute; 5 s keeps its newest minute nearly current at one small message
/// per interval (nothing at all while there is no traffic).
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// Floor for a configured statistics interval, so a zero cannot flood the stream (the control
/// plane ends a stream beyond 20 messages a second).
const MIN_STATS_INTERVAL: Duration = Duration::from_millis(100);

/// How often the keys' usage goes to the control plane (`MODELGW_USAGE_INTERVAL`). The
/// control plane tops up an instance's budget leases from these reports, so the interval is
/// how stale its view of the fleet's usage may get: 1 s keeps a busy key's leases flowing
/// at one small message a second (nothing while no key is used).
pub const USAGE_INTERVAL: Duration = Duration::from_secs(1);

/// Floor for a configured usage interval (as [`MIN_STATS_INTERVAL`]).
const MIN_USAGE_INTERVAL: Duration = Duration::from_millis(100);

/// Shortest time between two usage reports sent early because a lease runs low: at most ten
/// a second, well within the control plane's per-stream message budget.
const EARLY_USAGE_SPACING: Duration = Duration::from_millis(100);

/// First reconnect delay bound; doubled per failed attempt. 100 ms makes a control-plane
/// restart invisible, while full jitter spreads hundreds of data planes apart.
pub const RECONNECT_BASE: Duration = Duration::from_millis(100);

/// Largest reconnect delay bound: a data plane notices a recovered control plane within 5 s.
pub const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// Time allowed to establish the gRPC connection before counting the attempt as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 keep-alive ping interval on the control-plane connection, so a silently dropped
/// connection (NAT, load balancer) is detected instead of waiting forever for a snapshot.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Largest snapshot accepted. A snapshot holds every endpoint and gateway (a few hundred
/// bytes each); tonic's 4 MiB default would cap a large fleet for no benefit.
pub const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// How often this data plane tells the control plane what it sent to each endpoint
/// (`QuotaReport`), so every data plane plans with its share of an endpoint's quota. With the
/// control plane's push at most once a second, a share is at most ~2 s old.
pub const QUOTA_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Floor for a configured heartbeat interval, so a zero cannot turn into a busy loop.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// Most endpoint states sent in one `HealthReport`.
const HEALTH_BATCH_MAX: usize = 256;

/// Outbound queue towards the control plane (Hello, Ack/Nack, heartbeats, reports).
const OUTBOUND_CAPACITY: usize = 64;

/// Settings of the control-plane connection.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub node_id: String,
    /// Default [`HEARTBEAT_INTERVAL`].
    pub heartbeat_interval: Duration,
    /// Default [`STATS_INTERVAL`].
    pub stats_interval: Duration,
    /// Default [`USAGE_INTERVAL`].
    pub usage_interval: Duration,
    /// Where applied snapshots go to be saved on disk, sealed (`MODELGW_SNAPSHOT_FILE`).
    pub(crate) saver: Option<Arc<SnapshotSaver>>,
}

/// How the data plane trusts the control plane and proves who it is.
#[derive(Clone, Debug, Default)]
pub struct ControlPlaneTrust {
    /// CA (PEM) the control plane's certificate must chain to (`MODELGW_CONTROL_PLANE_CA_FILE`);
    /// `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The name the control plane's certificate must hold, when it is not the URL's host
    /// (`MODELGW_CONTROL_PLANE_SERVER_NAME`).
    pub server_name: Option<String>,
    /// mTLS: this data plane's certificate and key, PEM (`MODELGW_DATA_PLANE_CERT_FILE`,
    /// `MODELGW_DATA_PLANE_KEY_FILE`); the certificate must name the node id.
    pub client_cert: Option<ClientCertFiles>,
    /// Join token (`MODELGW_DATA_PLANE_TOKEN_FILE` or `MODELGW_DATA_PLANE_TOKEN`).
    pub token: Option<TokenSource>,
    /// Allows a plaintext `http://` control-plane URL (`MODELGW_INSECURE_CONTROL_PLANE=true`).
    pub allow_insecure: bool,
}

/// A client certificate and its key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the join token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// A file holding the token (read at each connect, so it can be rotated in place).
    File(PathBuf),
    /// The token itself (from the environment).
    Value(Secret),
}

impl TokenSource {
    fn read(&self) -> Result<Secret, String> {
        match self {
            TokenSource::Value(secret) => Ok(secret.clone()),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map(|t| Secret::new(t.trim()))
                .map_err(|e| format!("reading the data-plane token {}: {e}", path.display())),
        }
    }
}

/// Why the control-plane connection cannot be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "the control-plane URL {0:?} is plaintext (http://): use https://, or set MODELGW_INSECURE_CONTROL_PLANE=true on a development machine"
    )]
    PlaintextNotAllowed(String),
    #[error("the control-plane URL {0:?} must start with https:// (or http:// in insecure mode)")]
    Scheme(String),
    #[error(
        "no data-plane credential: set MODELGW_DATA_PLANE_CERT_FILE and MODELGW_DATA_PLANE_KEY_FILE (mTLS) or MODELGW_DATA_PLANE_TOKEN_FILE (join token)"
    )]
    NoCredential,
    #[error("{0}")]
    File(String),
    #[error("control-plane URL: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    #[error("the control-plane URLs mix https:// and http://: use one scheme for every replica")]
    MixedSchemes,
}

/// The connection settings, checked: builds a fresh endpoint (files re-read) per connect.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    /// Every control-plane replica's URL, in the order given (at least one).
    urls: Vec<String>,
    tls: bool,
    trust: ControlPlaneTrust,
}

impl Connector {
    /// Checks the URLs (`url`: one, or several separated by commas: the control-plane
    /// replicas, tried in turn) and reads every file once, so a misconfiguration fails the
    /// start. All of them must use the same scheme.
    pub(crate) fn new(url: &str, trust: ControlPlaneTrust) -> Result<Connector, TrustError> {
        let urls: Vec<String> =
            url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        let Some(first) = urls.first() else {
            return Err(TrustError::Scheme(url.to_owned()));
        };
        let tls = first.starts_with("https://");
        for url in &urls {
            if url.starts_with("https://") {
                if !tls {
                    return Err(TrustError::MixedSchemes);
                }
            } else if url.starts_with("http://") {
                if !trust.allow_insecure {
                    return Err(TrustError::PlaintextNotAllowed(url.clone()));
                }
                if tls {
                    return Err(TrustError::MixedSchemes);
                }
            } else {
                return Err(TrustError::Scheme(url.clone()));
            }
        }
        if tls && trust.client_cert.is_none() && trust.token.is_none() {
            return Err(TrustError::NoCredential);
        }
        let connector = Connector { urls, tls, trust };
        for at in 0..connector.urls.len() {
            connector.endpoint(at)?;
        }
        connector.token()?;
        if !tls {
            warn!(
                url,
                "the control-plane connection is PLAINTEXT and the control plane is not authenticated (MODELGW_INSECURE_CONTROL_PLANE): anyone on the path can read endpoint keys and push a snapshot; use https:// outside a development machine"
            );
        }
        Ok(connector)
    }

    /// How many control-plane URLs there are to try.
    fn len(&self) -> usize {
        self.urls.len()
    }

    /// The URL at `at` (modulo their number).
    fn url(&self, at: usize) -> &str {
        &self.urls[at % self.urls.len()]
    }

    /// The endpoint of URL `at` for one connection attempt, with the CA and client
    /// certificate read now.
    fn endpoint(&self, at: usize) -> Result<Endpoint, TrustError> {
        let endpoint = Endpoint::from_shared(self.url(at).to_owned())?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if !self.tls {
            return Ok(endpoint);
        }
        let mut tls = match &self.trust.ca_file {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some(files) = &self.trust.client_cert {
            tls = tls.identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
        }
        if let Some(name) = &self.trust.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(endpoint.tls_config(tls)?)
    }

    /// The `authorization` value to send, when a join token is configured.
    fn token(&self) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, TrustError> {
        let Some(source) = &self.trust.token else { return Ok(None) };
        let token = source.read().map_err(TrustError::File)?;
        let mut value =
            MetadataValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
                TrustError::File("the data-plane token holds characters a header cannot".to_owned())
            })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(path).map_err(|e| TrustError::File(format!("reading {}: {e}", path.display())))
}

/// An error and its sources, one line: tonic's "transport error" alone hides the reason
/// (e.g. `invalid peer certificate: UnknownIssuer`).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// Delay before reconnect attempt `attempt` (0-based): uniform in
/// `[0, min(cap, base·2^attempt)]` ("full jitter").
pub fn backoff_delay<R: Rng + ?Sized>(attempt: u32, rng: &mut R) -> Duration {
    let bound =
        RECONNECT_BASE.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
    let bound = bound.min(RECONNECT_CAP);
    Duration::from_millis(rng.random_range(0..=bound.as_millis() as u64))
}

/// Why a session with the control plane ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("connect failed: {}", chain(.0))]
    Connect(tonic::transport::Error),
    #[error("not connecting: {0}")]
    Settings(TrustError),
    #[error("stream refused: {0}")]
    Refused(tonic::Status),
    #[error("stream failed: {0}")]
    Stream(tonic::Status),
    #[error("control plane closed the stream")]
    Closed,
    #[error("outbound stream closed")]
    OutboundClosed,
    #[error("this data plane is shutting down")]
    Leaving,
}

/// Runs until `leave` turns true (the data plane is shutting down) or the task is aborted:
/// connect, serve the session, back off, repeat. On `leave` an open stream is closed cleanly
/// after a last usage and statistics report, so the control plane records a departure.
pub(crate) async fn run(
    config: ClientConfig,
    connector: Connector,
    store: Arc<SnapshotStore>,
    health: Arc<HealthRegistry>,
    mut health_rx: mpsc::Receiver<EndpointHealth>,
    mut traces: TraceShipper,
    mut leave: watch::Receiver<bool>,
) {
    let mut pending: HashMap<EndpointId, EndpointHealth> = HashMap::new();
    let mut unsent_stats = StatsReport::default();
    let mut failures = 0u32;
    // The URL in use, and how many in a row have failed since one worked: with several
    // control-plane replicas, the next one is tried at once (within the first backoff step)
    // and the backoff grows only once every one of them has failed.
    let mut at = 0usize;
    let mut failed_in_round = 0usize;
    loop {
        let mut got_snapshot = false;
        let end = session(
            &config,
            (&connector, at),
            &store,
            &health,
            &mut health_rx,
            Pending {
                health: &mut pending,
                stats: &mut unsent_stats,
                traces: &mut traces,
                leave: &mut leave,
            },
            &mut got_snapshot,
        )
        .await;
        store.metrics().set_control_plane_connected(false);
        if matches!(end, SessionEnd::Leaving) {
            info!(url = connector.url(at), "left the control plane");
            return;
        }
        if got_snapshot {
            // The session worked; a drop after that is a fresh incident, not a persistent one.
            failures = 0;
            failed_in_round = 0;
        }
        let url = connector.url(at);
        // A replica that went away or never answered: the next one (the same one when alone).
        at = (at + 1) % connector.len();
        failed_in_round += 1;
        let delay = if failed_in_round < connector.len() {
            backoff_delay(0, &mut rand::rng())
        } else {
            failed_in_round = 0;
            let delay = backoff_delay(failures, &mut rand::rng());
            failures = failures.saturating_add(1);
            delay
        };
        warn!(
            url,
            reason = %end,
            serving = store.version().0,
            next_url = connector.url(at),
            retry_in_ms = delay.as_millis() as u64,
            "disconnected from the control plane"
        );
        // Keep folding health changes while waiting, so the newest state per endpoint is
        // reported after reconnecting.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                () = leaving(&mut leave) => return,
                change = health_rx.recv() => match change {
                    Some(change) => { pending.insert(change.endpoint_id, change); }
                    None => { (&mut sleep).await; break; }
                },
            }
        }
    }
}

/// What a session carries over to the next: the newest health change per endpoint, statistics
/// that could not be sent, queued traces — and the signal to leave.
struct Pending<'a> {
    health: &'a mut HashMap<EndpointId, EndpointHealth>,
    stats: &'a mut StatsReport,
    /// Request traces: the queue keeps what the request path finished while disconnected.
    traces: &'a mut TraceShipper,
    /// Turns true when the data plane shuts down: the session then closes its stream cleanly.
    leave: &'a mut watch::Receiver<bool>,
}

async fn session(
    config: &ClientConfig,
    (connector, at): (&Connector, usize),
    store: &SnapshotStore,
    health: &HealthRegistry,
    health_rx: &mut mpsc::Receiver<EndpointHealth>,
    pending: Pending<'_>,
    got_snapshot: &mut bool,
) -> SessionEnd {
    let Pending { health: pending, stats: unsent_stats, traces, leave } = pending;
    let (endpoint, token) = match connector.endpoint(at).and_then(|e| Ok((e, connector.token()?))) {
        Ok(settings) => settings,
        Err(err) => return SessionEnd::Settings(err),
    };
    let connected = tokio::select! {
        connected = endpoint.connect() => connected,
        // Still connecting: nothing to close.
        () = leaving(leave) => return SessionEnd::Leaving,
    };
    let channel = match connected {
        Ok(channel) => channel,
        Err(err) => return SessionEnd::Connect(err),
    };
    let mut client =
        ConfigDiscoveryClient::new(channel).max_decoding_message_size(MAX_SNAPSHOT_BYTES);
    let (tx, rx) = mpsc::channel::<cfg::DataPlaneMessage>(OUTBOUND_CAPACITY);
    let hello = DataPlaneMessage::Hello(Hello {
        node_id: NodeId(config.node_id.clone()),
        applied_version: store.version(),
        build_version: env!("CARGO_PKG_VERSION").to_owned(),
        instance: Some(store.key_limits().instance()),
    });
    if tx.send(cfg::DataPlaneMessage::from(&hello)).await.is_err() {
        return SessionEnd::OutboundClosed;
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", token);
    }
    let opened = tokio::select! {
        opened = client.stream(request) => opened,
        () = leaving(leave) => return SessionEnd::Leaving,
    };
    let mut inbound = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => return SessionEnd::Refused(status),
    };
    info!(
        url = connector.url(at),
        node_id = %config.node_id,
        applied_version = store.version().0,
        "connected to the control plane"
    );
    store.metrics().set_control_plane_connected(true);
    let send = |message: DataPlaneMessage| {
        let tx = tx.clone();
        let wire = cfg::DataPlaneMessage::from(&message);
        async move { tx.send(wire).await.map_err(|_| SessionEnd::OutboundClosed) }
    };
    if !pending.is_empty()
        && let Err(end) = send(report(pending)).await
    {
        return end;
    }
    let mut heartbeat =
        tokio::time::interval(config.heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await; // The first tick is immediate; Hello already said we are alive.
    // The first tick is immediate: what was counted while disconnected goes out at once.
    let mut stats = tokio::time::interval(config.stats_interval.max(MIN_STATS_INTERVAL));
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Everything with usage goes out again on a new stream (cumulative: resending is
    // harmless), at the first tick, which is immediate.
    let limits = store.key_limits();
    limits.resend_all();
    let mut usage = tokio::time::interval(config.usage_interval.max(MIN_USAGE_INTERVAL));
    usage.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_usage = tokio::time::Instant::now();
    let mut quota = tokio::time::interval(QUOTA_REPORT_INTERVAL);
    quota.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    quota.tick().await;
    let mut last_quota = tokio::time::Instant::now();
    let mut early: Option<tokio::time::Instant> = None;
    let mut health_open = true;
    loop {
        let outbound = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(message)) => match ControlPlaneMessage::try_from(message) {
                    Ok(ControlPlaneMessage::Snapshot(snapshot)) => {
                        *got_snapshot = true;
                        let outcome = apply_snapshot(store, &snapshot);
                        if let Some(saver) = &config.saver {
                            saver.offer(&outcome, snapshot);
                        }
                        outcome.to_message()
                    }
                    Ok(ControlPlaneMessage::FleetHealth(fleet)) => {
                        for skipped in &fleet.skipped {
                            warn!(reason = %skipped, "fleet health entry unreadable; ignored");
                        }
                        apply_fleet_health(health, &fleet);
                        continue;
                    }
                    Ok(ControlPlaneMessage::Leases(leases)) => {
                        apply_leases(limits, &leases);
                        continue;
                    }
                    Ok(ControlPlaneMessage::FleetQuota(fleet)) => {
                        for skipped in &fleet.skipped {
                            warn!(reason = %skipped, "fleet quota entry unreadable; ignored");
                        }
                        let shared = health.apply_fleet_quota(&fleet);
                        debug!(endpoints = fleet.endpoints.len(), shared, "fleet quota applied");
                        continue;
                    }
                    Err(InvalidControlPlaneMessage::Snapshot { version, error }) => {
                        *got_snapshot = true;
                        ApplyOutcome::unreadable(store, version, error.to_string()).to_message()
                    }
                    // An empty or newer kind of message: nothing to do.
                    Err(InvalidControlPlaneMessage::Unknown) => continue,
                },
                Ok(None) => return SessionEnd::Closed,
                Err(status) => return SessionEnd::Stream(status),
            },
            _ = heartbeat.tick() => {
                DataPlaneMessage::Heartbeat { applied_version: store.version() }
            }
            _ = stats.tick() => {
                if let Err(end) = send_stats(&tx, store, unsent_stats).await {
                    return end;
                }
                continue;
            }
            () = leaving(leave) => break,
            _ = quota.tick() => {
                let now = tokio::time::Instant::now();
                let interval_ms = u32::try_from((now - last_quota).as_millis()).unwrap_or(u32::MAX).clamp(1, 60_000);
                last_quota = now;
                let report = health.take_quota_report(interval_ms);
                if report.endpoints.is_empty() {
                    continue;
                }
                DataPlaneMessage::Quota(report)
            }
            _ = usage.tick() => {
                // Notices (and counts) an expired lease even while no request comes.
                limits.lease_valid();
                if let Err(end) = send_usage(&tx, limits).await {
                    return end;
                }
                last_usage = tokio::time::Instant::now();
                continue;
            }
            () = limits.wants_report(), if early.is_none() => {
                let now = tokio::time::Instant::now();
                early = Some((last_usage + EARLY_USAGE_SPACING).max(now));
                continue;
            }
            () = async { if let Some(at) = early { tokio::time::sleep_until(at).await } }, if early.is_some() => {
                early = None;
                debug!("a budget lease runs low: reporting usage early");
                if let Err(end) = send_usage(&tx, limits).await {
                    return end;
                }
                last_usage = tokio::time::Instant::now();
                continue;
            }
            () = traces.due() => {
                let Some(batch) = traces.next_batch() else { continue };
                let count = batch.traces.len();
                let wire = cfg::DataPlaneMessage::from(&DataPlaneMessage::Traces(batch));
                if let Err(mpsc::error::SendError(wire)) = tx.send(wire).await {
                    // Not resent: the stream may have taken part of what it was handed.
                    if let Some(cfg::data_plane_message::Kind::Traces(lost)) = wire.kind {
                        traces.lost(lost.traces.len() as u64, lost.dropped);
                    }
                    return SessionEnd::OutboundClosed;
                }
                debug!(traces = count, "request traces sent");
                continue;
            }
            change = health_rx.recv(), if health_open => {
                let Some(change) = change else {
                    health_open = false; // The registry is gone (shutting down).
                    continue;
                };
                pending.insert(change.endpoint_id, change);
                while pending.len() < HEALTH_BATCH_MAX {
                    match health_rx.try_recv() {
                        Ok(change) => { pending.insert(change.endpoint_id, change); }
                        Err(_) => break,
                    }
                }
                report(pending)
            }
        };
        if let Err(end) = send(outbound).await {
            return end;
        }
    }
    // Shutting down: what was counted since the last reports, then our end of the stream; the
    // control plane ends its side in turn (a departure, not a broken stream).
    let _ = send_usage(&tx, limits).await;
    let _ = send_stats(&tx, store, unsent_stats).await;
    drop(tx);
    while let Ok(Some(_)) = inbound.message().await {}
    SessionEnd::Leaving
}

/// Resolves once the data plane is shutting down (or its owner is gone).
async fn leaving(leave: &mut watch::Receiver<bool>) {
    let _ = leave.wait_for(|l| *l).await;
}

/// Sends the traffic counted since the last report (and what an earlier stream could not
/// send), in reports within the protocol's bounds.
async fn send_stats(
    tx: &mpsc::Sender<cfg::DataPlaneMessage>,
    store: &SnapshotStore,
    unsent_stats: &mut StatsReport,
) -> Result<(), SessionEnd> {
    let mut report = std::mem::take(unsent_stats);
    report.merge(store.metrics().stats_report());
    let mut reports = report.into_bounded().into_iter();
    while let Some(report) = reports.next() {
        let message = DataPlaneMessage::Stats(report);
        let wire = cfg::DataPlaneMessage::from(&message);
        if tx.send(wire).await.is_err() {
            // Kept for the next session, added to what is counted meanwhile.
            if let DataPlaneMessage::Stats(report) = message {
                unsent_stats.merge(report);
            }
            reports.for_each(|rest| unsent_stats.merge(rest));
            return Err(SessionEnd::OutboundClosed);
        }
    }
    Ok(())
}

/// Sends the keys' usage that changed since it last went out, in reports within the
/// protocol's bound; each is marked sent once the transport took it (what was not is sent
/// on the next stream).
async fn send_usage(
    tx: &mpsc::Sender<cfg::DataPlaneMessage>,
    limits: &KeyLimiter,
) -> Result<(), SessionEnd> {
    let batch = limits.pending_usage();
    if batch.is_empty() {
        return Ok(());
    }
    for (i, report) in batch.reports().into_iter().enumerate() {
        let wire = cfg::DataPlaneMessage::from(&DataPlaneMessage::Usage(report));
        if tx.send(wire).await.is_err() {
            return Err(SessionEnd::OutboundClosed);
        }
        batch.mark_sent(i);
    }
    debug!(entries = batch.len(), "key usage reported");
    Ok(())
}

/// Drains `pending` into one `HealthReport`.
fn report(pending: &mut HashMap<EndpointId, EndpointHealth>) -> DataPlaneMessage {
    let endpoints = pending.drain().map(|(_, change)| change).collect();
    DataPlaneMessage::Health(HealthReport { endpoints, skipped: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelgw_model::EndpointState;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn backoff_is_jittered_under_an_exponential_cap() {
        let mut rng = StdRng::seed_from_u64(1);
        for attempt in 0..40 {
            let bound = (RECONNECT_BASE * 2u32.saturating_pow(attempt.min(20))).min(RECONNECT_CAP);
            for _ in 0..50 {
                assert!(backoff_delay(attempt, &mut rng) <= bound);
            }
        }
        let late: Vec<Duration> = (0..200).map(|_| backoff_delay(30, &mut rng)).collect();
        assert!(late.iter().any(|d| *d > Duration::from_secs(3)), "reaches towards the cap");
        assert!(late.iter().any(|d| *d < Duration::from_secs(2)), "jittered, not fixed");
    }

    #[test]
    fn several_control_plane_urls_are_taken_in_turn_with_one_scheme() {
        let insecure = ControlPlaneTrust { allow_insecure: true, ..Default::default() };
        let c = Connector::new(" http://cp-0:4002 , http://cp-1:4002,", insecure.clone())
            .expect("two replicas");
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c.url(0), c.url(1), c.url(2)),
            ("http://cp-0:4002", "http://cp-1:4002", "http://cp-0:4002")
        );
        let one = Connector::new("http://cp:4002", insecure.clone()).expect("one");
        assert_eq!((one.len(), one.url(1)), (1, "http://cp:4002"));
        let token = ControlPlaneTrust {
            allow_insecure: true,
            token: Some(TokenSource::Value(Secret::new("t"))),
            ..Default::default()
        };
        assert!(matches!(
            Connector::new("https://cp-0:4002,http://cp-1:4002", token.clone()),
            Err(TrustError::MixedSchemes)
        ));
        assert!(matches!(
            Connector::new("http://cp-0:4002,https://cp-1:4002", token),
            Err(TrustError::MixedSchemes)
        ));
        assert!(matches!(
            Connector::new("http://cp-0:4002,http://cp-1:4002", ControlPlaneTrust::default()),
            Err(TrustError::PlaintextNotAllowed(url)) if url == "http://cp-0:4002"
        ));
        assert!(matches!(
            Connector::new("http://cp-0:4002,cp-1:4002", insecure.clone()),
            Err(TrustError::Scheme(url)) if url == "cp-1:4002"
        ));
        assert!(matches!(Connector::new(" , ", insecure), Err(TrustError::Scheme(_))));
    }

    /// The shipper keeps batches under `MAX_TRACE_BATCH_BYTES` by a bound of their encoding
    /// computed on the domain type; it must never be below the real encoding.
    #[test]
    fn the_size_bound_of_a_trace_batch_is_never_below_its_encoding() {
        use modelgw_model::traces::{RequestTrace, TraceAttempt, TraceBatch};
        use prost::Message as _;
        let long = |n: usize| "é".repeat(n);
        let attempt = TraceAttempt {
            endpoint_id: EndpointId::new(),
            status: Some(599),
            outcome: "server_error_passed_through".into(),
            latency_ms: u32::MAX,
        };
        let full = RequestTrace {
            request_id: long(64),
            started_unix_ms: i64::MIN,
            gateway_id: modelgw_model::GatewayId::new(),
            key_id: modelgw_model::GatewayKeyId::new(),
            operation: "audio_transcriptions".into(),
            model: Some(long(128)),
            stream: true,
            status: 599,
            attempts: vec![attempt; 16],
            latency_ms: u32::MAX,
            ttft_ms: Some(u32::MAX),
            prompt_tokens: Some(u64::MAX),
            completion_tokens: Some(u64::MAX),
            client_request_id: Some(long(128)),
            request_body: Some(long(200_000)),
            response_body: Some(long(100)),
            payload_truncated: true,
        };
        let empty = RequestTrace {
            request_id: String::new(),
            started_unix_ms: 0,
            operation: String::new(),
            model: None,
            stream: false,
            status: 0,
            attempts: vec![],
            latency_ms: 0,
            ttft_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            client_request_id: None,
            request_body: None,
            response_body: None,
            payload_truncated: false,
            ..full.clone()
        };
        for traces in [vec![full.clone()], vec![empty.clone()], vec![full, empty]] {
            let bound = crate::traces::batch_len_bound(&traces);
            let batch = TraceBatch { traces, dropped: u64::MAX, skipped: vec![] };
            let encoded =
                cfg::DataPlaneMessage::from(&DataPlaneMessage::Traces(batch)).encoded_len();
            assert!(encoded <= bound, "encoded {encoded} > bound {bound}");
        }
    }

    #[test]
    fn health_reports_carry_the_latest_state_per_endpoint() {
        let id = EndpointId::new();
        let mut pending = HashMap::new();
        pending.insert(
            id,
            EndpointHealth {
                endpoint_id: id,
                state: EndpointState::Throttling,
                until: Some(std::time::UNIX_EPOCH + Duration::from_millis(42)),
                reason: Some("429".into()),
            },
        );
        let wire = cfg::DataPlaneMessage::from(&report(&mut pending));
        let Some(cfg::data_plane_message::Kind::Health(report)) = wire.kind else {
            panic!("expected a report")
        };
        assert!(pending.is_empty());
        assert_eq!(report.endpoints.len(), 1);
        assert_eq!(report.endpoints[0].endpoint_id, id.to_string());
        assert_eq!(report.endpoints[0].state, cfg::EndpointState::Throttling as i32);
        assert_eq!(report.endpoints[0].until_unix_ms, 42);
        assert_eq!(report.endpoints[0].reason, "429");
    }
}
