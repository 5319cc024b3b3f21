//! The connection to the control plane: receive snapshots, apply them (ACK) or reject them
//! (NACK, keeping the last good one), send heartbeats and health changes. Reconnects forever
//! with capped, fully jittered exponential backoff while the proxy keeps serving.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use modelgw_model::{ConfigVersion, EndpointId, EndpointState, Snapshot};
use modelgw_proto::cfg;
use modelgw_proto::cfg::config_discovery_client::ConfigDiscoveryClient;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tracing::{info, warn};

use crate::health::{HealthChange, HealthRegistry, RemoteHealth};
use crate::snapshot::{RoutingTable, SnapshotStore};

/// How often the data plane says it is alive. The control plane marks a data plane stale
/// after missing a few; 5 s keeps that detection within ~15 s at negligible cost.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

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
}

/// What applying one snapshot from the wire resulted in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Compiled and swapped in.
    Applied { version: ConfigVersion },
    /// Valid, but this version (or a newer one) is already served.
    AlreadyCurrent { version: ConfigVersion },
    /// Rejected; the previous table keeps serving. `reason` names the field, never a secret.
    Rejected { version: ConfigVersion, reason: String },
}

impl ApplyOutcome {
    /// The ACK or NACK for the control plane.
    pub fn to_message(&self) -> cfg::DataPlaneMessage {
        use cfg::data_plane_message::Kind;
        let kind = match self {
            ApplyOutcome::Applied { version } | ApplyOutcome::AlreadyCurrent { version } => {
                Kind::Ack(cfg::Ack { version: version.0 })
            }
            ApplyOutcome::Rejected { version, reason } => {
                Kind::Nack(cfg::Nack { version: version.0, reason: reason.clone() })
            }
        };
        cfg::DataPlaneMessage { kind: Some(kind) }
    }
}

/// Validates, compiles and swaps in a snapshot from the wire. An older version than the one
/// served is rejected (versions only grow); the same version is acknowledged again.
pub fn apply_snapshot(store: &SnapshotStore, wire: cfg::Snapshot) -> ApplyOutcome {
    let started = std::time::Instant::now();
    let version = ConfigVersion(wire.version);
    let compiled = Snapshot::try_from(wire)
        .map_err(|err| err.to_string())
        .and_then(|snapshot| RoutingTable::compile(&snapshot).map_err(|err| err.to_string()));
    let table = match compiled {
        Ok(table) => table,
        Err(reason) => {
            warn!(
                version = version.0,
                serving = store.version().0,
                %reason,
                "snapshot rejected; keeping the last good one"
            );
            return ApplyOutcome::Rejected { version, reason };
        }
    };
    let (gateways, endpoints) = (table.gateways().len(), table.endpoint_count());
    if store.swap_if_newer(table) {
        // Validation, compilation and the swap; protobuf decoding happened before.
        let apply_us = started.elapsed().as_micros() as u64;
        info!(version = version.0, gateways, endpoints, apply_us, "snapshot applied");
        return ApplyOutcome::Applied { version };
    }
    let serving = store.version();
    if serving == version {
        info!(version = version.0, "snapshot already applied");
        return ApplyOutcome::AlreadyCurrent { version };
    }
    let reason = format!("version {version} is older than the applied version {serving}");
    warn!(version = version.0, serving = serving.0, "stale snapshot rejected");
    ApplyOutcome::Rejected { version, reason }
}

/// Merges the control plane's fleet view into `health` as remote windows (replacing the
/// previous fleet view). Entries with an unparsable id or state are ignored: one bad entry
/// must not cost the rest. Returns how many windows are active.
pub fn apply_fleet_health(health: &HealthRegistry, wire: &cfg::FleetHealth) -> usize {
    let endpoints: Vec<RemoteHealth> = wire
        .endpoints
        .iter()
        .filter_map(|e| {
            let endpoint_id = e.endpoint_id.parse::<EndpointId>().ok()?;
            let state = match cfg::EndpointState::try_from(e.state).ok()? {
                cfg::EndpointState::Throttling => EndpointState::Throttling,
                cfg::EndpointState::Error => EndpointState::Error,
                cfg::EndpointState::Healthy | cfg::EndpointState::Unspecified => return None,
            };
            Some(RemoteHealth {
                endpoint_id,
                state,
                until_unix_ms: e.until_unix_ms,
                reason: e.reason.clone(),
            })
        })
        .collect();
    let active = health.apply_fleet(&endpoints, std::time::Instant::now());
    info!(listed = wire.endpoints.len(), active, "fleet health applied");
    active
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
    #[error("connect failed: {0}")]
    Connect(#[source] tonic::transport::Error),
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
    endpoint: Endpoint,
    store: Arc<SnapshotStore>,
    health: Arc<HealthRegistry>,
    mut health_rx: mpsc::Receiver<HealthChange>,
) {
    let mut pending: HashMap<EndpointId, HealthChange> = HashMap::new();
    let mut failures = 0u32;
    loop {
        let mut got_snapshot = false;
        let end = session(
            &config,
            &endpoint,
            &store,
            &health,
            &mut health_rx,
            &mut pending,
            &mut got_snapshot,
        )
        .await;
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

/// Builds the tonic endpoint for `url` (validated once, at bind time).
pub(crate) fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        return endpoint.tls_config(ClientTlsConfig::new().with_enabled_roots());
    }
    Ok(endpoint)
}

async fn session(
    config: &ClientConfig,
    endpoint: &Endpoint,
    store: &SnapshotStore,
    health: &HealthRegistry,
    health_rx: &mut mpsc::Receiver<HealthChange>,
    pending: &mut HashMap<EndpointId, HealthChange>,
    got_snapshot: &mut bool,
) -> SessionEnd {
    use cfg::control_plane_message::Kind as Inbound;
    use cfg::data_plane_message::Kind;
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(err) => return SessionEnd::Connect(err),
    };
    let mut client =
        ConfigDiscoveryClient::new(channel).max_decoding_message_size(MAX_SNAPSHOT_BYTES);
    let (tx, rx) = mpsc::channel::<cfg::DataPlaneMessage>(OUTBOUND_CAPACITY);
    let hello = cfg::Hello {
        node_id: config.node_id.clone(),
        applied_version: store.version().0,
        build_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    if tx.send(cfg::DataPlaneMessage { kind: Some(Kind::Hello(hello)) }).await.is_err() {
        return SessionEnd::OutboundClosed;
    }
    let mut inbound = match client.stream(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return SessionEnd::Refused(status),
    };
    info!(
        url = %config.control_plane_url,
        node_id = %config.node_id,
        applied_version = store.version().0,
        "connected to the control plane"
    );
    let send = |message: cfg::DataPlaneMessage| {
        let tx = tx.clone();
        async move { tx.send(message).await.map_err(|_| SessionEnd::OutboundClosed) }
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
    let mut health_open = true;
    loop {
        let outbound = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(cfg::ControlPlaneMessage { kind: Some(Inbound::Snapshot(snapshot)) })) => {
                    *got_snapshot = true;
                    apply_snapshot(store, snapshot).to_message()
                }
                Ok(Some(cfg::ControlPlaneMessage { kind: Some(Inbound::FleetHealth(fleet)) })) => {
                    apply_fleet_health(health, &fleet);
                    continue;
                }
                Ok(Some(_)) => continue, // An empty or newer kind of message: nothing to do.
                Ok(None) => return SessionEnd::Closed,
                Err(status) => return SessionEnd::Stream(status),
            },
            _ = heartbeat.tick() => {
                let beat = cfg::Heartbeat { applied_version: store.version().0 };
                cfg::DataPlaneMessage { kind: Some(Kind::Heartbeat(beat)) }
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

/// Drains `pending` into one `HealthReport`.
fn report(pending: &mut HashMap<EndpointId, HealthChange>) -> cfg::DataPlaneMessage {
    let endpoints = pending
        .drain()
        .map(|(id, change)| cfg::EndpointHealth {
            endpoint_id: id.to_string(),
            state: match change.state {
                EndpointState::Healthy => cfg::EndpointState::Healthy,
                EndpointState::Throttling => cfg::EndpointState::Throttling,
                EndpointState::Error => cfg::EndpointState::Error,
            } as i32,
            until_unix_ms: change.until_unix_ms,
            reason: change.reason,
        })
        .collect();
    cfg::DataPlaneMessage {
        kind: Some(cfg::data_plane_message::Kind::Health(cfg::HealthReport { endpoints })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelgw_model::{GatewayId, GatewayKeyId, gateway_key_hash};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn wire(version: u64) -> cfg::Snapshot {
        let endpoint = EndpointId::new().to_string();
        cfg::Snapshot {
            version,
            endpoints: vec![cfg::Endpoint {
                id: endpoint.clone(),
                name: "eus".into(),
                platform: cfg::Platform::AzureOpenai as i32,
                base_url: "https://eus.openai.azure.com".into(),
                deployment: "gpt-4o".into(),
                model_name: "gpt-4o".into(),
                model_version: "2024-11-20".into(),
                region: "eastus".into(),
                credential: Some(cfg::Credential {
                    kind: Some(cfg::credential::Kind::ApiKey("upstream-secret-1234".into())),
                }),
            }],
            gateways: vec![cfg::Gateway {
                id: GatewayId::new().to_string(),
                name: "chat".into(),
                members: vec![cfg::GatewayMember {
                    endpoint_id: endpoint,
                    enabled: true,
                    priority: 0,
                    weight: 1,
                }],
                keys: vec![cfg::GatewayKey {
                    id: GatewayKeyId::new().to_string(),
                    sha256: gateway_key_hash("client-key").to_vec(),
                }],
                routing: None,
            }],
        }
    }

    #[test]
    fn a_valid_snapshot_is_applied_and_acked() {
        let store = SnapshotStore::new();
        let outcome = apply_snapshot(&store, wire(3));
        assert_eq!(outcome, ApplyOutcome::Applied { version: ConfigVersion(3) });
        assert_eq!(store.version(), ConfigVersion(3));
        assert!(matches!(
            outcome.to_message().kind,
            Some(cfg::data_plane_message::Kind::Ack(cfg::Ack { version: 3 }))
        ));
        assert_eq!(
            apply_snapshot(&store, wire(3)),
            ApplyOutcome::AlreadyCurrent { version: ConfigVersion(3) }
        );
    }

    #[test]
    fn an_invalid_snapshot_is_nacked_naming_the_field_and_the_old_one_keeps_serving() {
        let store = SnapshotStore::new();
        apply_snapshot(&store, wire(3));
        let mut bad = wire(4);
        bad.endpoints[0].base_url = "not a url".into();
        let outcome = apply_snapshot(&store, bad);
        let ApplyOutcome::Rejected { version, reason } = &outcome else { panic!("{outcome:?}") };
        assert_eq!(*version, ConfigVersion(4));
        assert!(reason.starts_with("endpoints[0].base_url:"), "{reason}");
        assert_eq!(store.version(), ConfigVersion(3), "the last good snapshot keeps serving");
        assert!(store.load().gateway_by_name("chat").is_some());
        let Some(cfg::data_plane_message::Kind::Nack(nack)) = outcome.to_message().kind else {
            panic!("expected a NACK")
        };
        assert_eq!(nack.version, 4);
        assert_eq!(&nack.reason, reason);
    }

    #[test]
    fn compile_failures_are_nacked_without_the_secret() {
        let store = SnapshotStore::new();
        let mut bad = wire(2);
        bad.endpoints[0].credential = Some(cfg::Credential {
            kind: Some(cfg::credential::Kind::ApiKey("upstream\nsecret".into())),
        });
        let ApplyOutcome::Rejected { reason, .. } = apply_snapshot(&store, bad) else {
            panic!("expected a rejection")
        };
        assert_eq!(reason, "endpoints[0].credential: not a valid header value");
        assert!(!store.is_ready());
    }

    #[test]
    fn an_older_snapshot_is_nacked() {
        let store = SnapshotStore::new();
        apply_snapshot(&store, wire(5));
        let outcome = apply_snapshot(&store, wire(4));
        assert!(
            matches!(outcome, ApplyOutcome::Rejected { version: ConfigVersion(4), .. }),
            "{outcome:?}"
        );
        assert_eq!(store.version(), ConfigVersion(5));
    }

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
    fn health_reports_carry_the_latest_state_per_endpoint() {
        let id = EndpointId::new();
        let mut pending = HashMap::new();
        pending.insert(
            id,
            HealthChange {
                endpoint_id: id,
                state: EndpointState::Throttling,
                until_unix_ms: 42,
                reason: "429".into(),
            },
        );
        let Some(cfg::data_plane_message::Kind::Health(report)) = report(&mut pending).kind else {
            panic!("expected a report")
        };
        assert!(pending.is_empty());
        assert_eq!(report.endpoints.len(), 1);
        assert_eq!(report.endpoints[0].endpoint_id, id.to_string());
        assert_eq!(report.endpoints[0].state, cfg::EndpointState::Throttling as i32);
        assert_eq!(report.endpoints[0].until_unix_ms, 42);
    }
}
