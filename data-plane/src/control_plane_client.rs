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
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};

use crate::apply::{ApplyOutcome, apply_fleet_health, apply_leases, apply_snapshot};
use crate::health::HealthRegistry;
use crate::limits::KeyLimiter;
use crate::routing_table::SnapshotStore;
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

/// Floor for a configured heartbeat interval, so a zero cannot turn into a busy loop.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// Most endpoint states sent in one `HealthReport`.
const HEALTH_BATCH_MAX: usize = 256;

/// Outbound queue towards the control plane (Hello, Ack/Nack, heartbeats, reports).
const OUTBOUND_CAPACITY: usize = 64;

/// Settings of the control-plane connection.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub control_plane_url: String,
    pub node_id: String,
    /// Default [`HEARTBEAT_INTERVAL`].
    pub heartbeat_interval: Duration,
    /// Default [`STATS_INTERVAL`].
    pub stats_interval: Duration,
    /// Default [`USAGE_INTERVAL`].
    pub usage_interval: Duration,
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
}

/// The connection settings, checked: builds a fresh endpoint (files re-read) per connect.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    url: String,
    tls: bool,
    trust: ControlPlaneTrust,
}

impl Connector {
    /// Checks the URL and reads every file once, so a misconfiguration fails the start.
    pub(crate) fn new(url: &str, trust: ControlPlaneTrust) -> Result<Connector, TrustError> {
        let tls = if url.starts_with("https://") {
            true
        } else if url.starts_with("http://") {
            if !trust.allow_insecure {
                return Err(TrustError::PlaintextNotAllowed(url.to_owned()));
            }
            false
        } else {
            return Err(TrustError::Scheme(url.to_owned()));
        };
        if tls && trust.client_cert.is_none() && trust.token.is_none() {
            return Err(TrustError::NoCredential);
        }
        let connector = Connector { url: url.to_owned(), tls, trust };
        connector.endpoint()?;
        connector.token()?;
        if !tls {
            warn!(
                url,
                "the control-plane connection is PLAINTEXT and the control plane is not authenticated (MODELGW_INSECURE_CONTROL_PLANE): anyone on the path can read endpoint keys and push a snapshot; use https:// outside a development machine"
            );
        }
        Ok(connector)
    }

    /// The endpoint for one connection attempt, with the CA and client certificate read now.
    fn endpoint(&self) -> Result<Endpoint, TrustError> {
        let endpoint = Endpoint::from_shared(self.url.clone())?
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
}

/// Runs forever (until the task is aborted): connect, serve the session, back off, repeat.
pub(crate) async fn run(
    config: ClientConfig,
    connector: Connector,
    store: Arc<SnapshotStore>,
    health: Arc<HealthRegistry>,
    mut health_rx: mpsc::Receiver<EndpointHealth>,
    mut traces: TraceShipper,
) {
    let mut pending: HashMap<EndpointId, EndpointHealth> = HashMap::new();
    let mut unsent_stats = StatsReport::default();
    let mut failures = 0u32;
    loop {
        let mut got_snapshot = false;
        let end = session(
            &config,
            &connector,
            &store,
            &health,
            &mut health_rx,
            Pending { health: &mut pending, stats: &mut unsent_stats, traces: &mut traces },
            &mut got_snapshot,
        )
        .await;
        store.metrics().set_control_plane_connected(false);
        if got_snapshot {
            // The session worked; a drop after that is a fresh incident, not a persistent one.
            failures = 0;
        }
        let delay = backoff_delay(failures, &mut rand::rng());
        failures = failures.saturating_add(1);
        warn!(
            url = %config.control_plane_url,
            reason = %end,
            serving = store.version().0,
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
                change = health_rx.recv() => match change {
                    Some(change) => { pending.insert(change.endpoint_id, change); }
                    None => { (&mut sleep).await; break; }
                },
            }
        }
    }
}

/// What waits for the next session: the newest health change per endpoint, and statistics
/// that could not be sent.
struct Pending<'a> {
    health: &'a mut HashMap<EndpointId, EndpointHealth>,
    stats: &'a mut StatsReport,
    /// Request traces: the queue keeps what the request path finished while disconnected.
    traces: &'a mut TraceShipper,
}

async fn session(
    config: &ClientConfig,
    connector: &Connector,
    store: &SnapshotStore,
    health: &HealthRegistry,
    health_rx: &mut mpsc::Receiver<EndpointHealth>,
    pending: Pending<'_>,
    got_snapshot: &mut bool,
) -> SessionEnd {
    let Pending { health: pending, stats: unsent_stats, traces } = pending;
    let (endpoint, token) = match connector.endpoint().and_then(|e| Ok((e, connector.token()?))) {
        Ok(settings) => settings,
        Err(err) => return SessionEnd::Settings(err),
    };
    let channel = match endpoint.connect().await {
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
    let mut inbound = match client.stream(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return SessionEnd::Refused(status),
    };
    info!(
        url = %config.control_plane_url,
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
    let mut early: Option<tokio::time::Instant> = None;
    let mut health_open = true;
    loop {
        let outbound = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(message)) => match ControlPlaneMessage::try_from(message) {
                    Ok(ControlPlaneMessage::Snapshot(snapshot)) => {
                        *got_snapshot = true;
                        apply_snapshot(store, &snapshot).to_message()
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
                        return SessionEnd::OutboundClosed;
                    }
                }
                continue;
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
