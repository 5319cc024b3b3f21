//! Snapshot distribution over real gRPC on 127.0.0.1, on SQLite and on PostgreSQL. The port is
//! TLS as in production: by default with client certificates (mTLS) from a throwaway test CA;
//! the trust tests also run it with join tokens and in plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{TestDb, wait_until};
use modelgw_control_plane::store::{
    AuditContext, EndpointAuth, GatewayKeyPatch, GatewayTraces, NewEndpoint, NewGateway,
    NewGatewayKey, TraceQuery,
};
use modelgw_control_plane::{
    DataPlaneStatus, Distribution, DistributionSettings, GrpcSecurity, GrpcSettings,
    QuotaSharingSettings, RegistrationLimits, Store, TlsFiles,
};
use modelgw_mock_openai::pki::{CertifiedKey, TestCa, TestPki};
use modelgw_model::keys::{KeyLimits, KeyUsage, Usage, Window};
use modelgw_model::{
    ConfigVersion, EndpointId, EndpointState, GatewayMember, NodeId, Platform, RoutingPolicy,
    Secret,
};
use modelgw_proto::cfg;
use modelgw_proto::cfg::config_discovery_client::ConfigDiscoveryClient;
use modelgw_proto::cfg::control_plane_message::Kind as Inbound;
use modelgw_proto::cfg::data_plane_message::Kind;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status, Streaming};

on_both_backends!(
    a_subscriber_gets_the_current_snapshot_then_each_committed_change,
    acks_nacks_heartbeats_and_disconnects_show_in_the_registry,
    health_reports_show_per_endpoint,
    stats_reports_of_two_data_planes_add_up_for_configured_pairs_only,
    the_first_message_must_be_hello,
    changes_made_by_another_replica_arrive_by_polling,
    a_second_stream_with_the_same_node_id_replaces_the_first,
    shutdown_ends_open_streams,
    fleet_health_follows_each_snapshot,
    a_report_from_one_data_plane_reaches_every_other_within_a_second,
    fleet_state_aggregates_every_data_plane_and_outlives_a_disconnect,
    health_survives_a_restart_and_never_bumps_the_version,
    another_replica_sees_reported_health_by_polling,
    a_join_token_admits_its_own_node_ids_and_its_revocation_ends_its_streams,
    trace_batches_are_stored_for_traced_gateways_and_drops_are_counted,
    an_instance_gets_leases_after_its_snapshot_and_a_top_up_when_its_usage_calls_for_one,
    replicas_on_one_database_share_a_limit_between_their_instances,
);

/// Scenarios that do not depend on the backend (trust, quota sharing: nothing stored) run on
/// SQLite only.
macro_rules! on_sqlite {
    ($module:ident: $($scenario:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $scenario() {
            common::run(common::Backend::Sqlite, $module::$scenario).await;
        }
    )*};
}

on_sqlite!(
    trust:
    clients_without_a_certificate_from_the_ca_or_for_another_node_get_nothing,
    a_rotated_server_certificate_is_served_to_new_connections_without_a_restart,
    a_stream_over_its_message_budget_is_ended,
    plaintext_only_when_the_operator_chose_it,
    the_registry_bound_refuses_new_node_ids_and_retention_drops_departed_ones,
);

on_sqlite!(
    fleet_quota:
    quota_reports_of_two_data_planes_add_up_and_reach_every_data_plane,
    a_data_plane_that_stops_reporting_drops_out_and_an_empty_view_is_pushed,
    a_quota_report_with_an_impossible_interval_is_ignored,
);

/// Replicas telling each other through PostgreSQL's LISTEN/NOTIFY (SQLite has one process).
macro_rules! on_postgres {
    ($($scenario:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $scenario() {
            crate::common::run(crate::common::Backend::Postgres, super::$scenario).await;
        }
    )*};
}

mod notified {
    on_postgres!(
        changes_made_through_another_replica_arrive_at_once_without_polling,
        health_stored_by_another_replica_arrives_at_once_without_polling,
    );
}

use trust::a_join_token_admits_its_own_node_ids_and_its_revocation_ends_its_streams;

/// A fleet-health push must reach every data plane within this time (the requirement is
/// "well within 1 s"; on loopback it takes milliseconds).
const FLEET_PUSH_DEADLINE: Duration = Duration::from_secs(1);

/// A committed change must reach a subscriber within this time (the requirement is 1 s).
const PUSH_DEADLINE: Duration = Duration::from_secs(1);
/// Bound for everything that follows a message promptly (registry updates, stream ends).
const DEADLINE: Duration = Duration::from_secs(5);
/// Long enough that only `ConfigChanges::committed` can explain a prompt push.
const NO_POLL: Duration = Duration::from_secs(3600);

/// How the test server's data planes authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Auth {
    /// mTLS: a client certificate from the test CA naming the node id.
    Certificates,
    /// Join tokens over TLS; [`Server::token`] is an active token named `dp`.
    Tokens,
    /// `--insecure-grpc`.
    Plaintext,
}

/// A distribution serving gRPC on 127.0.0.1 port 0.
struct Server {
    distribution: Arc<Distribution>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), modelgw_control_plane::distribution::GrpcServeError>>,
    auth: Auth,
    pki: TestPki,
    /// With [`Auth::Tokens`]: a token named `dp` (node ids `dp` and `dp-…`).
    token: String,
    _dir: tempfile::TempDir,
}

/// How a test client presents itself.
enum Credential<'a> {
    Certificate(&'a CertifiedKey),
    Token(&'a str),
    Nothing,
}

impl Server {
    async fn start(store: Store, poll: Duration) -> Server {
        Server::start_with(store, poll, Auth::Certificates, |s| s).await
    }

    async fn start_with(
        store: Store,
        poll: Duration,
        auth: Auth,
        adjust: impl FnOnce(GrpcSettings) -> GrpcSettings,
    ) -> Server {
        let settings = DistributionSettings { poll_interval: poll, ..Default::default() };
        Server::start_configured(store, settings, auth, adjust).await
    }

    /// With mTLS, no polling, and quota sharing on `quota_sharing`'s intervals.
    async fn start_sharing_quota(store: Store, quota_sharing: QuotaSharingSettings) -> Server {
        let settings =
            DistributionSettings { poll_interval: NO_POLL, quota_sharing, ..Default::default() };
        Server::start_configured(store, settings, Auth::Certificates, |s| s).await
    }

    async fn start_configured(
        store: Store,
        distribution: DistributionSettings,
        auth: Auth,
        adjust: impl FnOnce(GrpcSettings) -> GrpcSettings,
    ) -> Server {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::write(dir.path()).expect("test PKI");
        let security = match auth {
            Auth::Plaintext => GrpcSecurity::insecure(),
            Auth::Certificates | Auth::Tokens => GrpcSecurity::tls(TlsFiles {
                cert: pki.server_cert_file.clone(),
                key: pki.server_key_file.clone(),
                client_ca: (auth == Auth::Certificates).then(|| pki.ca_file.clone()),
            })
            .expect("TLS settings"),
        };
        let token = match auth {
            Auth::Tokens => {
                let (_, token) =
                    store.create_data_plane_token("dp".into(), 100, &audit()).await.expect("token");
                token.expose().to_owned()
            }
            _ => String::new(),
        };
        let settings = adjust(GrpcSettings::new(security));
        let distribution =
            Arc::new(Distribution::start(store, distribution).await.expect("distribution"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let serving = distribution.clone();
        let task = tokio::spawn(async move {
            serving
                .serve_grpc(listener, settings, async move {
                    let _ = stop.await;
                })
                .await
        });
        Server { distribution, addr, shutdown: Some(shutdown), task, auth, pki, token, _dir: dir }
    }

    fn node(&self, node_id: &str) -> Option<DataPlaneStatus> {
        self.distribution.registry().data_planes().into_iter().find(|s| s.node_id.0 == node_id)
    }

    /// A channel to the server: TLS trusting the test CA (unless plaintext), with `identity`.
    async fn channel(
        &self,
        identity: Option<&CertifiedKey>,
    ) -> Result<Channel, tonic::transport::Error> {
        if self.auth == Auth::Plaintext {
            return Endpoint::from_shared(format!("http://{}", self.addr))?.connect().await;
        }
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.pki.ca.cert_pem()));
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        Endpoint::from_shared(format!("https://{}", self.addr))?.tls_config(tls)?.connect().await
    }

    /// Opens a stream presenting `credential`, whose first message is `first`; the error is
    /// the call's status (or the connection's failure, as `UNAVAILABLE`).
    async fn open_as(
        &self,
        credential: Credential<'_>,
        first: cfg::DataPlaneMessage,
    ) -> Result<DataPlane, Status> {
        let identity = match &credential {
            Credential::Certificate(id) => Some(*id),
            _ => None,
        };
        let channel = self
            .channel(identity)
            .await
            .map_err(|e| Status::unavailable(format!("connect: {e:?}")))?;
        let (outbound, rx) = mpsc::channel(16);
        outbound.send(first).await.expect("queue first message");
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Credential::Token(token) = credential {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().expect("header value"));
        }
        let inbound = ConfigDiscoveryClient::new(channel).stream(request).await?.into_inner();
        Ok(DataPlane { outbound, inbound })
    }
}

/// Opens a stream whose first message is `first`, with the credential a legitimate data plane
/// of `server` holds for the `Hello`'s node id; the error is the call's status.
async fn open(server: &Server, first: cfg::DataPlaneMessage) -> Result<DataPlane, Status> {
    let node_id = match &first.kind {
        Some(Kind::Hello(h)) if !h.node_id.is_empty() => h.node_id.clone(),
        _ => "dp-any".to_owned(),
    };
    match server.auth {
        Auth::Certificates => {
            let cert = server.pki.ca.client_cert(&node_id).expect("client certificate");
            server.open_as(Credential::Certificate(&cert), first).await
        }
        Auth::Tokens => server.open_as(Credential::Token(&server.token), first).await,
        Auth::Plaintext => server.open_as(Credential::Nothing, first).await,
    }
}

async fn subscribe(server: &Server, node_id: &str) -> DataPlane {
    open(server, hello(node_id, 0)).await.expect("subscribe")
}

/// A data plane's side of the stream.
struct DataPlane {
    outbound: mpsc::Sender<cfg::DataPlaneMessage>,
    inbound: Streaming<cfg::ControlPlaneMessage>,
}

fn message(kind: Kind) -> cfg::DataPlaneMessage {
    cfg::DataPlaneMessage { kind: Some(kind) }
}

fn hello(node_id: &str, applied_version: u64) -> cfg::DataPlaneMessage {
    message(Kind::Hello(cfg::Hello {
        node_id: node_id.into(),
        applied_version,
        build_version: "test".into(),
        instance: 0,
    }))
}

impl DataPlane {
    /// The next message of any kind, within `within`.
    async fn next_message(&mut self, within: Duration) -> Inbound {
        let received = tokio::time::timeout(within, self.inbound.message())
            .await
            .unwrap_or_else(|_| panic!("no message within {within:?}"))
            .expect("stream error")
            .expect("stream ended");
        received.kind.expect("empty control-plane message")
    }

    /// The next snapshot, skipping the fleet health that follows each one.
    async fn next_snapshot(&mut self, within: Duration) -> cfg::Snapshot {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_message(left).await {
                Inbound::Snapshot(s) => return s,
                Inbound::FleetHealth(_) | Inbound::Leases(_) | Inbound::FleetQuota(_) => continue,
            }
        }
    }

    /// The next fleet health message, skipping snapshots.
    async fn next_fleet_health(&mut self, within: Duration) -> cfg::FleetHealth {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_message(left).await {
                Inbound::FleetHealth(f) => return f,
                Inbound::Snapshot(_) | Inbound::Leases(_) | Inbound::FleetQuota(_) => continue,
            }
        }
    }

    /// The status the stream ends with (`Ok` for a clean end).
    async fn end(&mut self) -> Result<(), Status> {
        loop {
            match tokio::time::timeout(DEADLINE, self.inbound.message())
                .await
                .expect("stream did not end")
            {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    }

    async fn send(&self, kind: Kind) {
        self.outbound.send(message(kind)).await.expect("send to control plane");
    }
}

/// Who the test's changes are recorded as.
fn audit() -> AuditContext {
    AuditContext::system("test")
}

fn new_endpoint(name: &str) -> NewEndpoint {
    NewEndpoint {
        name: name.into(),
        platform: Platform::AzureOpenai,
        endpoint: url::Url::parse(&format!("https://{name}.openai.azure.com")).expect("url"),
        deployment: "gpt-4o".into(),
        model_name: "gpt-4o".into(),
        model_version: "2024-11-20".into(),
        region: "eastus".into(),
        auth: EndpointAuth::ApiKey(Secret::new(format!("sk-test-key-for-{name}"))),
    }
}

async fn a_subscriber_gets_the_current_snapshot_then_each_committed_change(db: &TestDb) {
    let store = db.open().await;
    store.create_endpoint(new_endpoint("before"), &audit()).await.expect("endpoint");
    let server = Server::start(store.clone(), NO_POLL).await;
    let current = store.config_version().await.expect("version");
    assert_eq!(server.distribution.current_version(), current);

    let mut dp = subscribe(&server, "dp-1").await;
    let first = dp.next_snapshot(PUSH_DEADLINE).await;
    assert_eq!(first.version, current.0, "the current snapshot, at once");
    assert_eq!(first.endpoints.len(), 1);
    assert_eq!(
        modelgw_model::Snapshot::try_from(first).expect("valid snapshot"),
        store.load_snapshot().await.expect("snapshot")
    );

    let (endpoint, v) =
        store.create_endpoint(new_endpoint("after"), &audit()).await.expect("endpoint");
    server.distribution.changes().committed(v);
    let pushed = dp.next_snapshot(PUSH_DEADLINE).await;
    assert_eq!(pushed.version, v.0);
    assert!(pushed.endpoints.iter().any(|e| e.id == endpoint.id.to_string()));

    // A burst of commits ends with the last version; nothing older follows a newer one.
    let mut last = v;
    for name in ["g1", "g2", "g3"] {
        let (_, v) = store
            .create_gateway(
                NewGateway {
                    routing: RoutingPolicy::default(),
                    name: name.into(),
                    members: vec![GatewayMember {
                        endpoint_id: endpoint.id,
                        enabled: true,
                        priority: 0,
                        weight: 1,
                    }],
                    ..Default::default()
                },
                &audit(),
            )
            .await
            .expect("gateway");
        server.distribution.changes().committed(v);
        last = v;
    }
    let mut seen = v.0;
    while seen < last.0 {
        let s = dp.next_snapshot(PUSH_DEADLINE).await;
        assert!(s.version > seen, "versions only increase: {} after {seen}", s.version);
        seen = s.version;
    }
    assert_eq!(server.distribution.current_version(), last);

    // On PostgreSQL every commit announces itself (NOTIFY, `notified::*`): there is no
    // unannounced version to catch a needless reload with.
    if db.backend == common::Backend::Postgres {
        return;
    }
    // Announcing an old version (or the current one again) neither reloads nor publishes. To
    // tell, the store holds a newer version nobody announced (with no polling, only a reload
    // would publish it): an implementation that reloads on any announcement publishes it.
    let mut published = server.distribution.subscribe();
    published.mark_unchanged();
    let (unannounced, newer) =
        store.create_endpoint(new_endpoint("unannounced"), &audit()).await.expect("endpoint");
    assert!(newer > last);
    server.distribution.changes().committed(ConfigVersion(1));
    server.distribution.changes().committed(last);
    // A reload takes milliseconds on loopback; a second is far more than one needs, and a
    // correct implementation passes however long this waits.
    let publish = tokio::time::timeout(Duration::from_secs(1), published.changed()).await;
    assert!(
        publish.is_err(),
        "after an old announcement: {publish:?} (Ok(Err) = the publisher is gone), version {}",
        published.borrow().version()
    );
    assert_eq!(server.distribution.current_version(), last, "never goes backwards");
    assert!(
        tokio::time::timeout(
            Duration::from_millis(200),
            dp.next_snapshot(Duration::from_secs(3600))
        )
        .await
        .is_err(),
        "nothing pushed to the data plane"
    );

    // The newer version, announced, is still published and pushed.
    server.distribution.changes().committed(newer);
    let pushed = dp.next_snapshot(PUSH_DEADLINE).await;
    assert_eq!(pushed.version, newer.0);
    assert!(pushed.endpoints.iter().any(|e| e.id == unannounced.id.to_string()));
    assert_eq!(server.distribution.current_version(), newer);
}

async fn acks_nacks_heartbeats_and_disconnects_show_in_the_registry(db: &TestDb) {
    let store = db.open().await;
    let server = Server::start(store.clone(), NO_POLL).await;
    let mut dp = subscribe(&server, "dp-ack").await;
    let s = dp.next_snapshot(PUSH_DEADLINE).await;

    let status = server.node("dp-ack").expect("registered on Hello");
    assert!(status.connected);
    assert_eq!(status.applied_version, ConfigVersion(0), "Hello said it has nothing yet");
    let registered_at = status.last_seen;

    dp.send(Kind::Ack(cfg::Ack { version: s.version })).await;
    wait_until("the Ack in the registry", DEADLINE, || {
        server.node("dp-ack").is_some_and(|n| n.applied_version == ConfigVersion(s.version))
    })
    .await;

    let (_, v) = store.create_endpoint(new_endpoint("x"), &audit()).await.expect("endpoint");
    server.distribution.changes().committed(v);
    assert_eq!(dp.next_snapshot(PUSH_DEADLINE).await.version, v.0);
    dp.send(Kind::Nack(cfg::Nack { version: v.0, reason: "endpoints[0].base_url: bad".into() }))
        .await;
    wait_until("the Nack reason in the registry", DEADLINE, || {
        server
            .node("dp-ack")
            .is_some_and(|n| n.last_nack.as_deref() == Some("endpoints[0].base_url: bad"))
    })
    .await;
    let status = server.node("dp-ack").expect("node");
    assert_eq!(
        status.applied_version,
        ConfigVersion(s.version),
        "a Nack keeps the applied version"
    );

    dp.send(Kind::Heartbeat(cfg::Heartbeat { applied_version: s.version })).await;
    wait_until("the heartbeat to refresh last_seen", DEADLINE, || {
        server.node("dp-ack").is_some_and(|n| n.last_seen > registered_at)
    })
    .await;

    dp.send(Kind::Ack(cfg::Ack { version: v.0 })).await;
    wait_until("an Ack to clear the Nack", DEADLINE, || {
        server.node("dp-ack").is_some_and(|n| n.applied_version == v && n.last_nack.is_none())
    })
    .await;

    drop(dp);
    wait_until("disconnect to show", DEADLINE, || {
        server.node("dp-ack").is_some_and(|n| !n.connected)
    })
    .await;
    let status = server.node("dp-ack").expect("kept after disconnect");
    assert_eq!(status.applied_version, v);
}

async fn health_reports_show_per_endpoint(db: &TestDb) {
    let store = db.open().await;
    let (a, _) = store.create_endpoint(new_endpoint("a"), &audit()).await.expect("endpoint");
    let (b, _) = store.create_endpoint(new_endpoint("b"), &audit()).await.expect("endpoint");
    let (c, _) = store.create_endpoint(new_endpoint("c"), &audit()).await.expect("endpoint");
    let server = Server::start(store.clone(), NO_POLL).await;
    let mut dp = subscribe(&server, "dp-health").await;
    dp.next_snapshot(PUSH_DEADLINE).await;
    let registry = server.distribution.registry();
    let in_a_minute = chrono::Utc::now() + chrono::Duration::seconds(60);
    let a_second_ago = chrono::Utc::now() - chrono::Duration::seconds(1);

    let health = |id: EndpointId,
                  state: cfg::EndpointState,
                  until: chrono::DateTime<chrono::Utc>,
                  reason: &str| {
        cfg::EndpointHealth {
            endpoint_id: id.to_string(),
            state: state as i32,
            until_unix_ms: until.timestamp_millis(),
            reason: reason.into(),
        }
    };
    dp.send(Kind::Health(cfg::HealthReport {
        endpoints: vec![
            health(a.id, cfg::EndpointState::Throttling, in_a_minute, "429 from upstream"),
            health(b.id, cfg::EndpointState::Error, a_second_ago, "503 from upstream"),
            // Not configured: ignored rather than kept forever.
            health(EndpointId::new(), cfg::EndpointState::Error, in_a_minute, "ghost"),
        ],
    }))
    .await;
    wait_until("the health report", DEADLINE, || {
        registry.endpoint_health(a.id).state == EndpointState::Throttling
    })
    .await;

    let view = registry.endpoint_health(a.id);
    assert_eq!(view.reason.as_deref(), Some("429 from upstream"));
    assert_eq!(view.until.map(|t| t.timestamp_millis()), Some(in_a_minute.timestamp_millis()));
    assert_eq!(view.reported_by, Some(NodeId("dp-health".into())));
    let expired = registry.endpoint_health(b.id);
    assert_eq!(expired.state, EndpointState::Healthy, "a passed window reads as healthy");
    assert_eq!(expired.reason.as_deref(), Some("503 from upstream"), "the last reason is kept");
    let untouched = registry.endpoint_health(c.id);
    assert_eq!(
        (untouched.state, untouched.reason, untouched.reported_by),
        (EndpointState::Healthy, None, None)
    );

    // Recovery is reported as healthy.
    dp.send(Kind::Health(cfg::HealthReport {
        endpoints: vec![cfg::EndpointHealth {
            endpoint_id: a.id.to_string(),
            state: cfg::EndpointState::Healthy as i32,
            until_unix_ms: 0,
            reason: String::new(),
        }],
    }))
    .await;
    wait_until("recovery", DEADLINE, || {
        registry.endpoint_health(a.id).state == EndpointState::Healthy
    })
    .await;
    assert_eq!(registry.endpoint_health(a.id).until, None);

    // Health of a deleted endpoint is forgotten with the next snapshot.
    dp.send(Kind::Health(cfg::HealthReport {
        endpoints: vec![health(c.id, cfg::EndpointState::Error, in_a_minute, "reset")],
    }))
    .await;
    wait_until("c in error", DEADLINE, || {
        registry.endpoint_health(c.id).state == EndpointState::Error
    })
    .await;
    let v = store.delete_endpoint(c.id, false, &audit()).await.expect("delete");
    server.distribution.changes().committed(v);
    assert_eq!(dp.next_snapshot(PUSH_DEADLINE).await.version, v.0);
    assert_eq!(registry.endpoint_health(c.id).reason, None);
}

async fn stats_reports_of_two_data_planes_add_up_for_configured_pairs_only(db: &TestDb) {
    let store = db.open().await;
    let (a, _) = store.create_endpoint(new_endpoint("a"), &audit()).await.expect("endpoint");
    let (b, _) = store.create_endpoint(new_endpoint("b"), &audit()).await.expect("endpoint");
    let member = |endpoint_id| GatewayMember { endpoint_id, enabled: true, priority: 0, weight: 1 };
    let (gw, _) = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "chat".into(),
                members: vec![member(a.id)],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("gateway");
    let server = Server::start(store.clone(), NO_POLL).await;
    let mut dp1 = subscribe(&server, "dp-stats-1").await;
    let mut dp2 = subscribe(&server, "dp-stats-2").await;
    dp1.next_snapshot(PUSH_DEADLINE).await;
    dp2.next_snapshot(PUSH_DEADLINE).await;
    let buckets = |at: usize, n: u64| {
        let mut counts = vec![0; modelgw_model::stats::LATENCY_BUCKETS_MS.len() + 1];
        counts[at] = n;
        counts
    };
    let route = |endpoint: EndpointId, requests: u64| cfg::RouteStats {
        gateway_id: gw.id.to_string(),
        endpoint_id: endpoint.to_string(),
        requests,
        throttled: 1,
        prompt_tokens: 7 * requests,
        completion_tokens: 3 * requests,
        latency_buckets: buckets(4, requests),
        ttft_buckets: vec![],
        ..Default::default()
    };
    dp1.send(Kind::Stats(cfg::StatsReport {
        routes: vec![
            route(a.id, 2),
            // `b` is not a member of `chat`: dropped.
            route(b.id, 100),
            // Unreadable: skipped, the rest kept.
            cfg::RouteStats { latency_buckets: vec![1], ..route(a.id, 1000) },
        ],
        gateways: vec![cfg::GatewayStats {
            gateway_id: gw.id.to_string(),
            throttled: 1,
            unavailable: 0,
        }],
    }))
    .await;
    dp2.send(Kind::Stats(cfg::StatsReport { routes: vec![route(a.id, 3)], gateways: vec![] }))
        .await;
    let registry = server.distribution.registry();
    let stats = registry.stats();
    wait_until("both reports", DEADLINE, || {
        stats.endpoints(60, None).first().map(|e| e.totals.requests) == Some(5)
    })
    .await;
    let endpoints = stats.endpoints(60, None);
    assert_eq!(endpoints.len(), 1, "only the configured pair");
    let ep = &endpoints[0];
    assert_eq!(ep.endpoint_id, a.id);
    assert_eq!(
        (ep.totals.throttled, ep.totals.prompt_tokens, ep.totals.completion_tokens),
        (2, 35, 15)
    );
    assert_eq!(ep.latency.counts[4], 5, "buckets of both data planes");
    let gateways = stats.gateways(60);
    assert_eq!(gateways.len(), 1);
    assert_eq!((gateways[0].gateway_id, gateways[0].own_throttled), (gw.id, 1));
    assert_eq!(gateways[0].totals.throttled, 3, "two endpoint 429s and the gateway's own");

    // The gateway goes away with the next snapshot, and so do its statistics.
    let v = store.delete_gateway(gw.id, &audit()).await.expect("delete");
    server.distribution.changes().committed(v);
    assert_eq!(dp1.next_snapshot(PUSH_DEADLINE).await.version, v.0);
    wait_until("statistics dropped", DEADLINE, || stats.gateways(60).is_empty()).await;
    assert!(stats.endpoints(60, None).is_empty());
}

async fn the_first_message_must_be_hello(db: &TestDb) {
    let server = Server::start(db.open().await, NO_POLL).await;
    let refused = open(&server, message(Kind::Heartbeat(cfg::Heartbeat { applied_version: 0 })))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("Hello"), "{}", refused.message());

    let refused = open(&server, hello("", 0)).await.err().expect("empty node id refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(server.distribution.registry().data_planes().is_empty(), "nothing registered");
}

async fn changes_made_by_another_replica_arrive_by_polling(db: &TestDb) {
    let store = db.open().await;
    let server = Server::start(store, Duration::from_millis(100)).await;
    let mut dp = subscribe(&server, "dp-poll").await;
    dp.next_snapshot(PUSH_DEADLINE).await;

    // Another control-plane process writes to the same database and never tells us.
    let replica = db.open().await;
    let (endpoint, v) =
        replica.create_endpoint(new_endpoint("remote"), &audit()).await.expect("endpoint");
    let s = dp.next_snapshot(PUSH_DEADLINE).await;
    assert_eq!(s.version, v.0);
    assert!(s.endpoints.iter().any(|e| e.id == endpoint.id.to_string()));
}

async fn a_second_stream_with_the_same_node_id_replaces_the_first(db: &TestDb) {
    let server = Server::start(db.open().await, NO_POLL).await;
    let mut first = subscribe(&server, "dp-twin").await;
    first.next_snapshot(PUSH_DEADLINE).await;
    let mut second = open(&server, hello("dp-twin", 7)).await.expect("second stream");
    second.next_snapshot(PUSH_DEADLINE).await;

    let ended = first.end().await.expect_err("the first stream is ended with a status");
    assert_eq!(ended.code(), Code::Aborted);
    let planes = server.distribution.registry().data_planes();
    assert_eq!(planes.len(), 1, "one entry per node id");
    assert!(planes[0].connected, "the replaced stream's end does not mark the node disconnected");
    assert_eq!(planes[0].applied_version, ConfigVersion(7), "the second Hello owns the entry");
}

async fn shutdown_ends_open_streams(db: &TestDb) {
    let mut server = Server::start(db.open().await, NO_POLL).await;
    let mut dp = subscribe(&server, "dp-shutdown").await;
    dp.next_snapshot(PUSH_DEADLINE).await;

    let _ = server.shutdown.take().expect("shutdown handle").send(());
    let served = tokio::time::timeout(DEADLINE, &mut server.task)
        .await
        .expect("serve_grpc returns even with a stream open");
    served.expect("task").expect("clean shutdown");
    let ended = dp.end().await.expect_err("the stream ends with a status");
    assert_eq!(ended.code(), Code::Unavailable);
    wait_until("disconnect on shutdown", DEADLINE, || {
        server.node("dp-shutdown").is_some_and(|n| !n.connected)
    })
    .await;
}

fn report(
    id: EndpointId,
    state: cfg::EndpointState,
    until: Option<chrono::DateTime<chrono::Utc>>,
    reason: &str,
) -> Kind {
    Kind::Health(cfg::HealthReport {
        endpoints: vec![cfg::EndpointHealth {
            endpoint_id: id.to_string(),
            state: state as i32,
            until_unix_ms: until.map_or(0, |t| t.timestamp_millis()),
            reason: reason.into(),
        }],
    })
}

fn in_secs(s: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::seconds(s)
}

fn listed(fleet: &cfg::FleetHealth) -> Vec<(String, i32)> {
    fleet.endpoints.iter().map(|e| (e.endpoint_id.clone(), e.state)).collect()
}

async fn fleet_health_follows_each_snapshot(db: &TestDb) {
    let store = db.open().await;
    let server = Server::start(store.clone(), NO_POLL).await;
    let mut dp = subscribe(&server, "dp-1").await;
    assert!(matches!(dp.next_message(PUSH_DEADLINE).await, Inbound::Snapshot(_)));
    match dp.next_message(PUSH_DEADLINE).await {
        Inbound::FleetHealth(f) => assert!(f.endpoints.is_empty(), "nothing unavailable: {f:?}"),
        other => panic!("expected fleet health after the snapshot, got {other:?}"),
    }
    let (_, v) = store.create_endpoint(new_endpoint("a"), &audit()).await.expect("endpoint");
    server.distribution.changes().committed(v);
    match dp.next_message(PUSH_DEADLINE).await {
        Inbound::Snapshot(s) => assert_eq!(s.version, v.0),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    assert!(matches!(dp.next_message(PUSH_DEADLINE).await, Inbound::FleetHealth(_)));
}

async fn a_report_from_one_data_plane_reaches_every_other_within_a_second(db: &TestDb) {
    let store = db.open().await;
    let (a, _) = store.create_endpoint(new_endpoint("a"), &audit()).await.expect("endpoint");
    let (b, _) = store.create_endpoint(new_endpoint("b"), &audit()).await.expect("endpoint");
    let server = Server::start(store, NO_POLL).await;
    let mut first = subscribe(&server, "dp-1").await;
    let mut second = subscribe(&server, "dp-2").await;
    for dp in [&mut first, &mut second] {
        dp.next_snapshot(PUSH_DEADLINE).await;
        assert!(dp.next_fleet_health(PUSH_DEADLINE).await.endpoints.is_empty());
    }

    let until = in_secs(60);
    let sent = tokio::time::Instant::now();
    first
        .send(report(a.id, cfg::EndpointState::Throttling, Some(until), "429 from upstream"))
        .await;
    let fleet = second.next_fleet_health(FLEET_PUSH_DEADLINE).await;
    let took = sent.elapsed();
    assert!(took < FLEET_PUSH_DEADLINE, "took {took:?}");
    eprintln!("fleet health reached the second data plane in {took:?}");
    assert_eq!(
        fleet.endpoints,
        vec![cfg::EndpointHealth {
            endpoint_id: a.id.to_string(),
            state: cfg::EndpointState::Throttling as i32,
            until_unix_ms: until.timestamp_millis(),
            reason: "429 from upstream".into(),
        }]
    );
    // The reporter gets the same view.
    assert_eq!(first.next_fleet_health(FLEET_PUSH_DEADLINE).await, fleet);

    // A repeat that changes nothing is not echoed: the next push is the next real change.
    first
        .send(report(a.id, cfg::EndpointState::Throttling, Some(until), "429 from upstream"))
        .await;
    first.send(report(b.id, cfg::EndpointState::Error, Some(in_secs(60)), "503")).await;
    let next = second.next_fleet_health(FLEET_PUSH_DEADLINE).await;
    let mut expected = vec![
        (a.id.to_string(), cfg::EndpointState::Throttling as i32),
        (b.id.to_string(), cfg::EndpointState::Error as i32),
    ];
    expected.sort();
    assert_eq!(listed(&next), expected);
}

async fn fleet_state_aggregates_every_data_plane_and_outlives_a_disconnect(db: &TestDb) {
    let store = db.open().await;
    let (a, _) = store.create_endpoint(new_endpoint("a"), &audit()).await.expect("endpoint");
    let server = Server::start(store, NO_POLL).await;
    let registry = server.distribution.registry();
    let mut first = subscribe(&server, "dp-1").await;
    let mut second = subscribe(&server, "dp-2").await;
    first.next_snapshot(PUSH_DEADLINE).await;
    second.next_snapshot(PUSH_DEADLINE).await;

    second.send(report(a.id, cfg::EndpointState::Error, Some(in_secs(120)), "503")).await;
    wait_until("dp-2's error", DEADLINE, || {
        registry.endpoint_health(a.id).state == EndpointState::Error
    })
    .await;
    let throttled_until = in_secs(60);
    first.send(report(a.id, cfg::EndpointState::Throttling, Some(throttled_until), "429")).await;
    wait_until("throttling wins over error", DEADLINE, || {
        registry.endpoint_health(a.id).state == EndpointState::Throttling
    })
    .await;
    let view = registry.endpoint_health(a.id);
    assert_eq!(view.until.map(|t| t.timestamp_millis()), Some(throttled_until.timestamp_millis()));
    assert_eq!(view.reported_by, Some(NodeId("dp-1".into())));
    let nodes: Vec<(&str, EndpointState)> =
        view.data_planes.iter().map(|d| (d.node_id.0.as_str(), d.state)).collect();
    assert_eq!(nodes, [("dp-1", EndpointState::Throttling), ("dp-2", EndpointState::Error)]);
    assert_eq!(view.last_error.as_ref().map(|e| e.reason.as_str()), Some("429"));

    // The throttle seen by dp-1 stays true after dp-1 is gone.
    drop(first);
    wait_until("dp-1 disconnected", DEADLINE, || server.node("dp-1").is_some_and(|n| !n.connected))
        .await;
    assert_eq!(registry.endpoint_health(a.id).state, EndpointState::Throttling);

    // dp-2 recovering does not clear dp-1's window; an expired window does not count.
    second.send(report(a.id, cfg::EndpointState::Healthy, None, "")).await;
    wait_until("dp-2 healthy", DEADLINE, || {
        registry.endpoint_health(a.id).data_planes[1].state == EndpointState::Healthy
    })
    .await;
    assert_eq!(registry.endpoint_health(a.id).state, EndpointState::Throttling);
    second.send(report(a.id, cfg::EndpointState::Error, Some(in_secs(-1)), "old 503")).await;
    wait_until("dp-2's expired report", DEADLINE, || {
        registry.endpoint_health(a.id).data_planes[1].reason.as_deref() == Some("old 503")
    })
    .await;
    let view = registry.endpoint_health(a.id);
    assert_eq!((view.state, view.reason.as_deref()), (EndpointState::Throttling, Some("429")));
    assert_eq!(view.data_planes[1].state, EndpointState::Healthy);
}

async fn health_survives_a_restart_and_never_bumps_the_version(db: &TestDb) {
    let store = db.open().await;
    let (a, v) = store.create_endpoint(new_endpoint("a"), &audit()).await.expect("endpoint");
    let until = in_secs(300);
    {
        let server = Server::start(store.clone(), NO_POLL).await;
        let mut dp = subscribe(&server, "dp-1").await;
        dp.next_snapshot(PUSH_DEADLINE).await;
        dp.send(report(a.id, cfg::EndpointState::Throttling, Some(until), "429")).await;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let stored = store.load_endpoint_health().await.expect("load health");
            if stored.iter().any(|r| r.endpoint_id == a.id && r.state == EndpointState::Throttling)
            {
                assert_eq!(stored.len(), 1);
                assert_eq!(stored[0].node_id, NodeId("dp-1".into()));
                assert_eq!(
                    stored[0].until.map(|t| t.timestamp_millis()),
                    Some(until.timestamp_millis())
                );
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "health never persisted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.config_version().await.expect("version"), v, "health is not config");
        assert_eq!(server.distribution.current_version(), v);
    }
    store.close().await;

    // A restarted control plane knows, and tells a data plane that connects to it.
    let reopened = db.open().await;
    let server = Server::start(reopened, NO_POLL).await;
    let view = server.distribution.registry().endpoint_health(a.id);
    assert_eq!(view.state, EndpointState::Throttling);
    assert_eq!(view.reason.as_deref(), Some("429"));
    assert_eq!(view.data_planes.len(), 1);
    let mut dp = subscribe(&server, "dp-2").await;
    let fleet = dp.next_fleet_health(PUSH_DEADLINE).await;
    assert_eq!(listed(&fleet), [(a.id.to_string(), cfg::EndpointState::Throttling as i32)]);
}

async fn another_replica_sees_reported_health_by_polling(db: &TestDb) {
    another_replica_sees_reported_health(db, Duration::from_millis(100), DEADLINE).await;
}

/// A report one replica stores reaches the data planes of a replica that polls every `poll`,
/// within `within`.
async fn another_replica_sees_reported_health(db: &TestDb, poll: Duration, within: Duration) {
    let store = db.open().await;
    let (a, _) = store.create_endpoint(new_endpoint("a"), &audit()).await.expect("endpoint");
    let server = Server::start(store, NO_POLL).await;
    let replica = Server::start(db.open().await, poll).await;
    let mut remote = subscribe(&replica, "dp-remote").await;
    remote.next_snapshot(PUSH_DEADLINE).await;
    assert!(remote.next_fleet_health(PUSH_DEADLINE).await.endpoints.is_empty());

    let mut dp = subscribe(&server, "dp-1").await;
    dp.next_snapshot(PUSH_DEADLINE).await;
    dp.send(report(a.id, cfg::EndpointState::Error, Some(in_secs(60)), "503")).await;
    // Persisted, then read by the replica (its poll, or the notification of the write) and
    // pushed to its own data planes.
    let fleet = remote.next_fleet_health(within).await;
    assert_eq!(listed(&fleet), [(a.id.to_string(), cfg::EndpointState::Error as i32)]);
    let view = replica.distribution.registry().endpoint_health(a.id);
    assert_eq!(view.reported_by, Some(NodeId("dp-1".into())));
}

/// A change through one replica reaches another replica's data planes within a database round
/// trip (issue #15: 100 ms), by the NOTIFY its commit sends: with the poll an hour apart,
/// nothing else can explain the push.
async fn changes_made_through_another_replica_arrive_at_once_without_polling(db: &TestDb) {
    let server = Server::start(db.open().await, NO_POLL).await;
    let mut dp = subscribe(&server, "dp-listening").await;
    dp.next_snapshot(PUSH_DEADLINE).await;
    let replica = db.open().await;
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let started = std::time::Instant::now();
        let (endpoint, v) = replica
            .create_endpoint(new_endpoint(&format!("remote-{i}")), &audit())
            .await
            .expect("endpoint");
        let s = dp.next_snapshot(PUSH_DEADLINE).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(s.version, v.0, "change {i}");
        assert!(s.endpoints.iter().any(|e| e.id == endpoint.id.to_string()));
    }
    eprintln!("slowest of 10 changes through another replica: {slowest:?}");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
}

/// A health report one replica stores reaches the data planes of another, which never polls,
/// at once.
async fn health_stored_by_another_replica_arrives_at_once_without_polling(db: &TestDb) {
    another_replica_sees_reported_health(db, NO_POLL, PUSH_DEADLINE).await;
}

// ---- key limits: usage reports and leases (issue #14) ----

/// A Hello from a data plane that enforces key limits (its process's random instance id).
fn hello_instance(node_id: &str, instance: u64) -> cfg::DataPlaneMessage {
    message(Kind::Hello(cfg::Hello {
        node_id: node_id.into(),
        applied_version: 0,
        build_version: "test".into(),
        instance,
    }))
}

/// A gateway with one key limited to 10,000 total tokens per hour and 60 requests per minute.
async fn limited_key(store: &Store) -> (modelgw_model::GatewayId, modelgw_model::GatewayKeyId) {
    let (gw, _) = store
        .create_gateway(NewGateway { name: "gw".into(), ..Default::default() }, &audit())
        .await
        .expect("gateway");
    let mut limits = KeyLimits::default();
    limits.per_hour.total_tokens = Some(10_000);
    limits.per_minute.requests = Some(60);
    let new = NewGatewayKey { limits, ..NewGatewayKey::named("team") };
    let (key, _, _) = store.create_gateway_key_with(gw.id, new, &audit()).await.expect("key");
    (gw.id, key.id)
}

/// The hour grant of `key` in a `Leases` message.
fn hour_grant<'a>(
    leases: &'a cfg::Leases,
    key: &modelgw_model::GatewayKeyId,
) -> &'a cfg::LeaseGrant {
    let hour = cfg::UsageWindow::Hour as i32;
    let now = chrono::Utc::now().timestamp_millis();
    leases
        .grants
        .iter()
        .find(|g| {
            g.key_id == key.to_string()
                && g.window == hour
                && g.window_start_unix_ms == Window::Hour.start_of(now)
        })
        .unwrap_or_else(|| panic!("no current hour grant for {key} in {leases:?}"))
}

fn granted_tokens(grant: &cfg::LeaseGrant) -> u64 {
    grant.granted.as_ref().and_then(|g| g.total_tokens).expect("total tokens are limited")
}

/// A usage report: `tokens` charged this hour to `key` in one request each of 100 tokens.
fn hour_usage(key: &modelgw_model::GatewayKeyId, tokens: u64) -> Kind {
    let now = chrono::Utc::now().timestamp_millis();
    let usage = modelgw_model::keys::UsageReport {
        keys: vec![KeyUsage {
            key_id: *key,
            window: Window::Hour,
            window_start_unix_ms: Window::Hour.start_of(now),
            charged: Usage { requests: tokens / 100, total_tokens: tokens, ..Usage::default() },
            reserved: Usage::default(),
            wanted: Usage::default(),
        }],
        skipped: vec![],
    };
    Kind::Usage(cfg::UsageReport::from(&usage))
}

impl DataPlane {
    /// The next leases message, skipping snapshots and fleet health.
    async fn next_leases(&mut self, within: Duration) -> cfg::Leases {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_message(left).await {
                Inbound::Leases(l) => return l,
                Inbound::Snapshot(_) | Inbound::FleetHealth(_) | Inbound::FleetQuota(_) => continue,
            }
        }
    }
}

async fn an_instance_gets_leases_after_its_snapshot_and_a_top_up_when_its_usage_calls_for_one(
    db: &TestDb,
) {
    let store = db.open().await;
    let (gw, key) = limited_key(&store).await;
    let server = Server::start(store.clone(), NO_POLL).await;
    let mut dp = open(&server, hello_instance("dp-1", 42)).await.expect("subscribe");

    // The snapshot first (it names the key), then its fleet health, then the grants.
    let Inbound::Snapshot(first) = dp.next_message(PUSH_DEADLINE).await else {
        panic!("the snapshot comes first")
    };
    assert_eq!(first.gateways[0].keys[0].id, key.to_string());
    assert!(matches!(dp.next_message(PUSH_DEADLINE).await, Inbound::FleetHealth(_)));
    let Inbound::Leases(leases) = dp.next_message(PUSH_DEADLINE).await else {
        panic!("leases follow the snapshot")
    };
    assert_eq!(leases.valid_for_ms, 30_000);
    let grant = hour_grant(&leases, &key);
    // The only instance: a quarter of the limit; only the limited measure is set.
    assert_eq!(granted_tokens(grant), 2_500);
    assert_eq!(grant.granted.as_ref().and_then(|g| g.requests), None);
    let minute = cfg::UsageWindow::Minute as i32;
    let per_minute = leases.grants.iter().find(|g| g.window == minute).expect("minute grant");
    assert_eq!(per_minute.granted.as_ref().and_then(|g| g.requests), Some(15));

    // 2,000 of 2,500 spent: under half the target left, so a top-up follows the report.
    dp.send(hour_usage(&key, 2_000)).await;
    let topped = dp.next_leases(PUSH_DEADLINE).await;
    let grant = hour_grant(&topped, &key);
    assert_eq!(granted_tokens(grant), 2_000 + 2_500);
    let fleet_used = grant.fleet_used.as_ref().and_then(|u| u.total_tokens);
    assert_eq!(fleet_used, Some(2_000));
    assert_eq!(grant.own_used.as_ref().and_then(|u| u.total_tokens), Some(2_000));
    // The report was stored (the fleet's usage, read through the store) and marked the key used.
    let current = store.current_key_usage(gw, chrono::Utc::now()).await.expect("usage");
    assert_eq!(current[&key][Window::Hour.index()].total_tokens, 2_000);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while store.get_gateway_key(gw, key).await.expect("key").last_used_at.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "last_used_at never set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A new snapshot (the limit tripled) is followed by grants computed with it.
    let mut tripled = KeyLimits::default();
    tripled.per_hour.total_tokens = Some(30_000);
    let patch = GatewayKeyPatch { limits: Some(tripled), ..Default::default() };
    let (_, v) = store.update_gateway_key(gw, key, patch, &audit()).await.expect("patch");
    server.distribution.changes().committed(v.expect("a change"));
    loop {
        match dp.next_message(PUSH_DEADLINE).await {
            Inbound::Snapshot(s) => {
                assert_eq!(s.version, v.expect("a change").0);
                break;
            }
            Inbound::Leases(l) => {
                assert_eq!(
                    granted_tokens(hour_grant(&l, &key)),
                    4_500,
                    "grants of the old snapshot"
                );
            }
            Inbound::FleetHealth(_) | Inbound::FleetQuota(_) => {}
        }
    }
    let after = dp.next_leases(PUSH_DEADLINE).await;
    // 2,500 headroom is under half the new target (7,500): topped up to used + 7,500; the
    // minute limit is gone, and so is its grant.
    assert_eq!(granted_tokens(hour_grant(&after, &key)), 2_000 + 7_500);
    assert!(after.grants.iter().all(|g| g.window != minute));

    // Without any trigger, grants are renewed within RENEW_INTERVAL (10 s).
    let renewed = dp.next_leases(Duration::from_secs(12)).await;
    assert_eq!(granted_tokens(hour_grant(&renewed, &key)), 9_500);
    // Nothing of this is configuration.
    assert_eq!(store.config_version().await.expect("version"), v.expect("a change"));
}

async fn replicas_on_one_database_share_a_limit_between_their_instances(db: &TestDb) {
    let store = db.open().await;
    let (_, key) = limited_key(&store).await;
    let a = Server::start(store.clone(), NO_POLL).await;
    let b = Server::start(db.open().await, NO_POLL).await;
    let mut on_a = open(&a, hello_instance("dp-a", 1)).await.expect("subscribe to a");
    let first = on_a.next_leases(PUSH_DEADLINE).await;
    assert_eq!(granted_tokens(hour_grant(&first, &key)), 2_500, "alone: a quarter of the limit");
    let mut on_b = open(&b, hello_instance("dp-b", 2)).await.expect("subscribe to b");
    let second = on_b.next_leases(PUSH_DEADLINE).await;
    // Two instances now hold leases: an eighth of the limit (1,250) each, lent by another
    // replica, or one typical request while the window has no traffic (500 prompt tokens and
    // the default 1,024 completion tokens), whichever is more.
    assert_eq!(granted_tokens(hour_grant(&second, &key)), 1_524);

    // What the instance on replica A charged reaches B's grants through the database.
    on_a.send(hour_usage(&key, 2_400)).await;
    let topped = on_a.next_leases(PUSH_DEADLINE).await;
    assert_eq!(granted_tokens(hour_grant(&topped, &key)), 2_400 + 1_250);
    on_b.send(hour_usage(&key, 1_000)).await;
    let grant = on_b.next_leases(PUSH_DEADLINE).await;
    let grant = hour_grant(&grant, &key);
    assert_eq!(grant.fleet_used.as_ref().and_then(|u| u.total_tokens), Some(3_400));
    // Typical requests are now 100 tokens (3,400 over 34): the target is an eighth.
    assert_eq!(granted_tokens(grant), 1_000 + 1_250);
}

mod trust {
    //! Who may open a stream, as which node, and what a refused one gets (nothing).

    use super::*;

    /// How a connection the TLS handshake refused shows to the client (under TLS 1.3 the
    /// client learns only when it uses the connection).
    const HANDSHAKE_REFUSED: [Code; 3] = [Code::Unavailable, Code::Unknown, Code::Cancelled];

    /// A configured endpoint and a legitimate data plane `dp-1` that knows it.
    async fn one_endpoint(db: &TestDb, auth: Auth) -> (Server, EndpointId) {
        let store = db.open().await;
        let (a, _) = store.create_endpoint(new_endpoint("a"), &audit()).await.expect("endpoint");
        (Server::start_with(store, NO_POLL, auth, |s| s).await, a.id)
    }

    /// A `Hello` as `node_id` followed at once by a throttling report about `endpoint`: if the
    /// stream were admitted, the report would reach the registry.
    async fn hello_then_report(
        server: &Server,
        credential: Credential<'_>,
        node_id: &str,
        endpoint: EndpointId,
    ) -> Result<DataPlane, Status> {
        let dp = server.open_as(credential, hello(node_id, 0)).await?;
        dp.send(report(endpoint, cfg::EndpointState::Throttling, Some(in_secs(3600)), "forged"))
            .await;
        Ok(dp)
    }

    /// Asserts that a refused client got no snapshot and registered and reported nothing.
    fn refused_with_nothing(
        server: &Server,
        endpoint: EndpointId,
        outcome: Result<DataPlane, Status>,
        codes: &[Code],
        node_id: &str,
    ) {
        let status = match outcome {
            Ok(_) => panic!("{node_id}: a stream was admitted"),
            Err(status) => status,
        };
        assert!(codes.contains(&status.code()), "{node_id}: {status:?}");
        let health = server.distribution.registry().endpoint_health(endpoint);
        assert_eq!(health.state, EndpointState::Healthy, "{node_id}: a report got through");
    }

    pub(crate) async fn clients_without_a_certificate_from_the_ca_or_for_another_node_get_nothing(
        db: &TestDb,
    ) {
        let (server, a) = one_endpoint(db, Auth::Certificates).await;
        let mut legit = subscribe(&server, "dp-1").await;
        legit.next_snapshot(PUSH_DEADLINE).await;

        // No certificate: the handshake fails (or the stream does, under TLS 1.3).
        let none = server.open_as(Credential::Nothing, hello("dp-2", 0)).await;
        refused_with_nothing(&server, a, none, &HANDSHAKE_REFUSED, "dp-2");
        assert!(server.node("dp-2").is_none());

        // A certificate for the right name from another CA.
        let rogue_ca = TestCa::new("rogue CA").expect("CA");
        let foreign = rogue_ca.client_cert("dp-2").expect("cert");
        let outcome =
            hello_then_report(&server, Credential::Certificate(&foreign), "dp-2", a).await;
        refused_with_nothing(&server, a, outcome, &HANDSHAKE_REFUSED, "dp-2");
        assert!(server.node("dp-2").is_none());

        // A valid certificate for dp-3 claiming dp-1: refused, and dp-1 keeps its stream.
        let dp3 = server.pki.ca.client_cert("dp-3").expect("cert");
        let outcome = hello_then_report(&server, Credential::Certificate(&dp3), "dp-1", a).await;
        refused_with_nothing(&server, a, outcome, &[Code::PermissionDenied], "dp-1");
        assert!(server.node("dp-1").is_some_and(|n| n.connected));
        assert_eq!(server.distribution.registry().data_planes().len(), 1, "only dp-1");
        legit.send(Kind::Heartbeat(cfg::Heartbeat { applied_version: 0 })).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(200), legit.end()).await.is_err(),
            "dp-1's stream was not taken over"
        );
    }

    pub(crate) async fn a_join_token_admits_its_own_node_ids_and_its_revocation_ends_its_streams(
        db: &TestDb,
    ) {
        let (server, a) = one_endpoint(db, Auth::Tokens).await;
        let store = db.open().await;
        let (west, west_token) =
            store.create_data_plane_token("west".into(), 100, &audit()).await.expect("token");
        server.distribution.registry().data_plane_tokens_changed();

        // Without a token, or with an unknown one: nothing.
        let outcome = hello_then_report(&server, Credential::Nothing, "dp-1", a).await;
        refused_with_nothing(&server, a, outcome, &[Code::Unauthenticated], "dp-1");
        let outcome =
            hello_then_report(&server, Credential::Token("mgwdp_not-a-token"), "dp-1", a).await;
        refused_with_nothing(&server, a, outcome, &[Code::Unauthenticated], "dp-1");
        assert!(server.distribution.registry().data_planes().is_empty());
        // The `dp` token cannot register the `west` token's node ids, nor a look-alike.
        for claimed in ["west-1", "dpx-1", "dp-"] {
            let outcome =
                hello_then_report(&server, Credential::Token(&server.token), claimed, a).await;
            refused_with_nothing(&server, a, outcome, &[Code::PermissionDenied], claimed);
        }
        assert!(server.distribution.registry().data_planes().is_empty());

        // Its own node ids are admitted; the other token's stream too.
        let mut dp = subscribe(&server, "dp-1").await;
        dp.next_snapshot(PUSH_DEADLINE).await;
        let mut west_dp = wait_for_admission(&server, west_token.expose(), "west-1").await;
        west_dp.next_snapshot(PUSH_DEADLINE).await;

        // Revoking ends the token's stream within a second, refuses it afterwards, and
        // leaves the other token alone.
        let dp_token = store
            .list_data_plane_tokens()
            .await
            .expect("tokens")
            .into_iter()
            .find(|t| t.name == "dp")
            .expect("dp token");
        store.revoke_data_plane_token(dp_token.id, &audit()).await.expect("revoke");
        let revoked = tokio::time::Instant::now();
        server.distribution.registry().data_plane_tokens_changed();
        let ended = dp.end().await.expect_err("ended with a status");
        assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
        assert!(revoked.elapsed() < Duration::from_secs(1), "took {:?}", revoked.elapsed());
        let outcome = hello_then_report(&server, Credential::Token(&server.token), "dp-1", a).await;
        refused_with_nothing(&server, a, outcome, &[Code::Unauthenticated], "dp-1");
        assert!(server.node("dp-1").is_some_and(|n| !n.connected));
        assert!(server.node("west-1").is_some_and(|n| n.connected), "{west:?}");
    }

    /// Opens a stream with `token`, retrying while the token is not yet loaded (it was
    /// created behind the server's back and announced).
    async fn wait_for_admission(server: &Server, token: &str, node_id: &str) -> DataPlane {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match server.open_as(Credential::Token(token), hello(node_id, 0)).await {
                Ok(dp) => return dp,
                Err(status) if status.code() == Code::Unauthenticated => {
                    assert!(tokio::time::Instant::now() < deadline, "never admitted: {status:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => panic!("{node_id}: {status:?}"),
            }
        }
    }

    /// The certificate a TLS handshake with `server` presents.
    async fn served_certificate(server: &Server) -> Vec<u8> {
        use rustls::pki_types::ServerName;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pem_certificate(server.pki.ca.cert_pem())).expect("CA");
        let config =
            rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("handshake");
        let (_, session) = tls.get_ref();
        session.peer_certificates().expect("a certificate")[0].to_vec()
    }

    fn pem_certificate(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM")
    }

    pub(crate) async fn a_rotated_server_certificate_is_served_to_new_connections_without_a_restart(
        db: &TestDb,
    ) {
        let server = Server::start_with(db.open().await, NO_POLL, Auth::Tokens, |s| GrpcSettings {
            tls_reload_interval: Duration::from_millis(50),
            ..s
        })
        .await;
        let first = std::fs::read_to_string(&server.pki.server_cert_file).expect("cert");
        assert_eq!(served_certificate(&server).await, pem_certificate(&first).to_vec());
        let mut dp = subscribe(&server, "dp-1").await;
        dp.next_snapshot(PUSH_DEADLINE).await;

        let rotated = server.pki.rotate_server_cert().expect("rotate");
        let rotated = pem_certificate(&rotated).to_vec();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while served_certificate(&server).await != rotated {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the rotated certificate is never served"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // New streams work with it, and the open one was not cut.
        let mut again = subscribe(&server, "dp-2").await;
        again.next_snapshot(PUSH_DEADLINE).await;
        assert!(server.node("dp-1").is_some_and(|n| n.connected));
    }

    pub(crate) async fn a_stream_over_its_message_budget_is_ended(db: &TestDb) {
        use modelgw_control_plane::distribution::MESSAGE_BURST;
        let server = Server::start(db.open().await, NO_POLL).await;
        let mut dp = subscribe(&server, "dp-1").await;
        dp.next_snapshot(PUSH_DEADLINE).await;
        for _ in 0..MESSAGE_BURST * 2 {
            if dp
                .outbound
                .send(message(Kind::Heartbeat(cfg::Heartbeat { applied_version: 0 })))
                .await
                .is_err()
            {
                break;
            }
        }
        let ended = dp.end().await.expect_err("ended with a status");
        assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
        wait_until("dp-1 disconnected", DEADLINE, || {
            server.node("dp-1").is_some_and(|n| !n.connected)
        })
        .await;
    }

    pub(crate) async fn plaintext_only_when_the_operator_chose_it(db: &TestDb) {
        let plain = Server::start_with(db.open().await, NO_POLL, Auth::Plaintext, |s| s).await;
        let mut dp = subscribe(&plain, "anything").await;
        dp.next_snapshot(PUSH_DEADLINE).await;

        // A TLS port does not speak plaintext.
        let tls = Server::start(db.open().await, NO_POLL).await;
        let connected =
            Endpoint::from_shared(format!("http://{}", tls.addr)).expect("URL").connect().await;
        if let Ok(channel) = connected {
            let (tx, rx) = mpsc::channel(1);
            tx.send(hello("dp-1", 0)).await.expect("queue");
            let refused = ConfigDiscoveryClient::new(channel).stream(ReceiverStream::new(rx)).await;
            assert!(refused.is_err(), "a plaintext client was served by the TLS port");
        }
        assert!(tls.node("dp-1").is_none());
    }

    pub(crate) async fn the_registry_bound_refuses_new_node_ids_and_retention_drops_departed_ones(
        db: &TestDb,
    ) {
        let server =
            Server::start_with(db.open().await, NO_POLL, Auth::Certificates, |s| GrpcSettings {
                limits: RegistrationLimits {
                    max_data_planes: 2,
                    retention: Duration::from_secs(3600),
                },
                ..s
            })
            .await;
        let mut one = subscribe(&server, "dp-1").await;
        one.next_snapshot(PUSH_DEADLINE).await;
        let mut two = subscribe(&server, "dp-2").await;
        two.next_snapshot(PUSH_DEADLINE).await;
        let full = open(&server, hello("dp-3", 0)).await.err().expect("refused");
        assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
        // A known node reconnects; a departed one makes room for a new one.
        drop(two);
        wait_until("dp-2 disconnected", DEADLINE, || {
            server.node("dp-2").is_some_and(|n| !n.connected)
        })
        .await;
        let mut three = subscribe(&server, "dp-3").await;
        three.next_snapshot(PUSH_DEADLINE).await;
        let names: Vec<String> =
            server.distribution.registry().data_planes().into_iter().map(|s| s.node_id.0).collect();
        assert_eq!(names, ["dp-1", "dp-3"]);
        drop(one);
    }
}

/// The `modelgw_…` sample `line` of the control plane's metrics (e.g.
/// `modelgw_traces_stored_total`), as a number.
fn sample(server: &Server, line: &str) -> f64 {
    let registry = server.distribution.metrics_registry();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {line} in\n{text}"))
}

/// A trace batch on the stream is stored (bodies only where the gateway captures them, and
/// only for gateways that trace), without holding up the stream, and the drops the data plane
/// reports are counted.
async fn trace_batches_are_stored_for_traced_gateways_and_drops_are_counted(db: &TestDb) {
    let store = db.open().await;
    let new = |name: &str, traces: GatewayTraces| NewGateway {
        name: name.into(),
        traces,
        ..Default::default()
    };
    let (metadata, _) = store
        .create_gateway(
            new("metadata", GatewayTraces { enabled: true, ..Default::default() }),
            &audit(),
        )
        .await
        .expect("gateway");
    let (untraced, _) = store
        .create_gateway(new("untraced", GatewayTraces::default()), &audit())
        .await
        .expect("gateway");
    let server = Server::start(store.clone(), NO_POLL).await;
    let mut dp = subscribe(&server, "dp-traces").await;
    dp.next_snapshot(PUSH_DEADLINE).await;
    let trace = |gateway: &modelgw_model::GatewayId, request_id: &str| cfg::RequestTrace {
        request_id: request_id.into(),
        started_unix_ms: 1_700_000_000_000,
        gateway_id: gateway.to_string(),
        key_id: modelgw_model::GatewayKeyId::new().to_string(),
        operation: "chat_completions".into(),
        status: 200,
        attempts: vec![cfg::TraceAttempt {
            endpoint_id: EndpointId::new().to_string(),
            status: 200,
            outcome: "ok".into(),
            latency_ms: 3,
        }],
        latency_ms: 9,
        prompt_tokens: Some(5),
        completion_tokens: Some(7),
        request_body: Some("a body the gateway does not capture".into()),
        ..Default::default()
    };
    dp.send(Kind::Traces(cfg::TraceBatch {
        traces: vec![
            trace(&metadata.id, "kept"),
            trace(&untraced.id, "not traced"),
            trace(&modelgw_model::GatewayId::new(), "unknown gateway"),
            cfg::RequestTrace { gateway_id: "not-a-uuid".into(), ..trace(&metadata.id, "bad") },
        ],
        dropped: 4,
    }))
    .await;
    // The stream keeps going while the writer stores.
    dp.send(Kind::Heartbeat(cfg::Heartbeat { applied_version: 1 })).await;
    let page = loop {
        let page =
            store.list_traces(&TraceQuery { limit: 10, ..Default::default() }).await.expect("list");
        if !page.traces.is_empty() {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(page.traces.len(), 1, "only the traced gateway's readable trace");
    let stored = &page.traces[0];
    assert_eq!((stored.trace.request_id.as_str(), stored.node_id.as_str()), ("kept", "dp-traces"));
    assert_eq!((stored.trace.prompt_tokens, stored.trace.completion_tokens), (Some(5), Some(7)));
    let full = store.get_trace(stored.id).await.expect("get");
    assert_eq!(full.trace.request_body, None, "the gateway does not capture payloads");
    assert!(!full.payload_captured);
    assert_eq!(sample(&server, "modelgw_traces_dropped_total{by=\"data_plane\"}"), 4.0);
    assert_eq!(sample(&server, "modelgw_traces_dropped_total{by=\"control_plane\"}"), 0.0);
    assert_eq!(sample(&server, "modelgw_traces_received_total"), 1.0);
    common::wait_until("stored counted", DEADLINE, || {
        sample(&server, "modelgw_traces_stored_total") == 1.0
    })
    .await;
    assert!(server.node("dp-traces").expect("registered").connected);
}

mod fleet_quota {
    //! Quota sharing (issue #18): what data planes report they send to each endpoint, summed
    //! per endpoint and pushed back to every data plane.

    use super::*;

    /// A report's effect reaches every data plane within one push interval (1 s) plus
    /// transit; 2 s is the bound the design states (one report interval plus one push).
    const QUOTA_PUSH_DEADLINE: Duration = Duration::from_secs(2);

    /// Short enough that a report ages out within a test.
    const QUICK: QuotaSharingSettings = QuotaSharingSettings {
        freshness: Duration::from_millis(600),
        push_interval: Duration::from_millis(50),
    };

    fn quota_report(interval_ms: u32, spends: &[(EndpointId, u64, u64)]) -> Kind {
        Kind::Quota(cfg::QuotaReport {
            interval_ms,
            endpoints: spends
                .iter()
                .map(|&(id, requests, tokens)| cfg::EndpointSpend {
                    endpoint_id: id.to_string(),
                    requests,
                    tokens,
                })
                .collect(),
        })
    }

    /// (endpoint id, requests/min, tokens/min, data planes), in the view's order.
    type Spent = Vec<(String, u64, u64, u32)>;

    fn spent(view: &cfg::FleetQuota) -> Spent {
        view.endpoints
            .iter()
            .map(|e| (e.endpoint_id.clone(), e.requests_per_min, e.tokens_per_min, e.data_planes))
            .collect()
    }

    fn sorted(mut spent: Spent) -> Spent {
        spent.sort();
        spent
    }

    impl DataPlane {
        /// The first fleet quota pushed within `within` for which `wanted` holds, skipping
        /// other messages and earlier views (the view converges as reports arrive).
        async fn fleet_quota_until(
            &mut self,
            what: &str,
            within: Duration,
            wanted: impl Fn(&Spent) -> bool,
        ) -> Spent {
            let deadline = tokio::time::Instant::now() + within;
            let mut seen = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let message = tokio::time::timeout(left, self.inbound.message()).await;
                let Ok(message) = message else {
                    panic!("no fleet quota with {what} within {within:?}; pushed: {seen:?}");
                };
                let message = message.expect("stream error").expect("stream ended");
                if let Some(Inbound::FleetQuota(view)) = message.kind {
                    let view = spent(&view);
                    if wanted(&view) {
                        return view;
                    }
                    seen.push(view);
                }
            }
        }
    }

    pub(crate) async fn quota_reports_of_two_data_planes_add_up_and_reach_every_data_plane(
        db: &TestDb,
    ) {
        let store = db.open().await;
        let (a, _) = store.create_endpoint(new_endpoint("a"), &audit()).await.expect("endpoint");
        // The production intervals: 3 s freshness, a push at most once a second.
        let server = Server::start_sharing_quota(store, QuotaSharingSettings::default()).await;
        let mut first = subscribe(&server, "dp-1").await;
        let mut second = subscribe(&server, "dp-2").await;
        for dp in [&mut first, &mut second] {
            dp.next_snapshot(PUSH_DEADLINE).await;
        }

        let sent = tokio::time::Instant::now();
        // An id outside the configuration is no part of the view.
        let unknown = EndpointId::new();
        first.send(quota_report(1000, &[(a.id, 3, 300), (unknown, 50, 5000)])).await;
        // Over 2 s: 4 requests are 120 a minute.
        second.send(quota_report(2000, &[(a.id, 4, 400)])).await;
        let expected = vec![(a.id.to_string(), 180 + 120, 18_000 + 12_000, 2)];
        for dp in [&mut first, &mut second] {
            let view = dp
                .fleet_quota_until("both data planes", QUOTA_PUSH_DEADLINE, |v| {
                    v.iter().any(|e| e.3 == 2)
                })
                .await;
            assert_eq!(view, expected);
        }
        let took = sent.elapsed();
        assert!(took < QUOTA_PUSH_DEADLINE, "took {took:?}");
        eprintln!("fleet quota reached both data planes in {took:?}");

        // A data plane that connects now gets the view right after its snapshot and health.
        let mut third = subscribe(&server, "dp-3").await;
        assert!(matches!(third.next_message(PUSH_DEADLINE).await, Inbound::Snapshot(_)));
        assert!(matches!(third.next_message(PUSH_DEADLINE).await, Inbound::FleetHealth(_)));
        match third.next_message(PUSH_DEADLINE).await {
            Inbound::FleetQuota(view) => assert_eq!(spent(&view), expected),
            other => panic!("expected the fleet quota after the snapshot, got {other:?}"),
        }
    }

    pub(crate) async fn a_data_plane_that_stops_reporting_drops_out_and_an_empty_view_is_pushed(
        db: &TestDb,
    ) {
        let store = db.open().await;
        let (a, _) = store.create_endpoint(new_endpoint("a"), &audit()).await.expect("endpoint");
        let server = Server::start_sharing_quota(store, QUICK).await;
        let mut first = subscribe(&server, "dp-1").await;
        let mut second = subscribe(&server, "dp-2").await;
        for dp in [&mut first, &mut second] {
            dp.next_snapshot(PUSH_DEADLINE).await;
        }
        // dp-2 keeps reporting 1 request per 100 ms (600 a minute), well within freshness.
        let reports = second.outbound.clone();
        let reporter = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if reports.send(message(quota_report(100, &[(a.id, 1, 10)]))).await.is_err() {
                    return;
                }
            }
        });
        // dp-1 reports once: 5 requests in a second, 300 a minute.
        let stopped = tokio::time::Instant::now();
        first.send(quota_report(1000, &[(a.id, 5, 0)])).await;
        let id = a.id.to_string();
        let both = second
            .fleet_quota_until("both data planes", QUOTA_PUSH_DEADLINE, |v| {
                v.iter().any(|e| e.3 == 2)
            })
            .await;
        assert_eq!(both, [(id.clone(), 900, 6_000, 2)]);

        // dp-1 never reports again: its share drops out once its report is no longer fresh.
        let alone = second
            .fleet_quota_until("dp-1 gone", QUOTA_PUSH_DEADLINE, |v| v.iter().any(|e| e.3 == 1))
            .await;
        let took = stopped.elapsed();
        assert_eq!(alone, [(id, 600, 6_000, 1)]);
        assert!(took >= QUICK.freshness, "a report counts for its whole window: {took:?}");
        eprintln!("a silent data plane dropped out of the fleet quota after {took:?}");

        // Nobody reports: the empty view is pushed too, so nobody assumes others still spend.
        reporter.abort();
        first.fleet_quota_until("nothing", QUOTA_PUSH_DEADLINE, Vec::is_empty).await;
    }

    pub(crate) async fn a_quota_report_with_an_impossible_interval_is_ignored(db: &TestDb) {
        let store = db.open().await;
        let (a, _) = store.create_endpoint(new_endpoint("a"), &audit()).await.expect("endpoint");
        let (b, _) = store.create_endpoint(new_endpoint("b"), &audit()).await.expect("endpoint");
        // Long freshness, quick pushes: every report of the test still counts at its end.
        let settings = QuotaSharingSettings { freshness: Duration::from_secs(30), ..QUICK };
        let server = Server::start_sharing_quota(store, settings).await;
        let mut first = subscribe(&server, "dp-1").await;
        let mut second = subscribe(&server, "dp-2").await;
        for dp in [&mut first, &mut second] {
            dp.next_snapshot(PUSH_DEADLINE).await;
        }
        first.send(quota_report(1000, &[(a.id, 1, 0)])).await;
        let view =
            first.fleet_quota_until("dp-1's report", QUOTA_PUSH_DEADLINE, |v| !v.is_empty()).await;
        assert_eq!(view, [(a.id.to_string(), 60, 0, 1)]);

        // Neither counted nor replacing dp-1's previous report.
        for interval_ms in [0, 60_001] {
            first.send(quota_report(interval_ms, &[(a.id, 100, 0), (b.id, 100, 0)])).await;
        }
        // The stream is read in order: once the heartbeat shows, both reports were handled.
        first.send(Kind::Heartbeat(cfg::Heartbeat { applied_version: 42 })).await;
        wait_until("dp-1's heartbeat", DEADLINE, || {
            server.node("dp-1").is_some_and(|n| n.applied_version == ConfigVersion(42))
        })
        .await;
        second.send(quota_report(1000, &[(b.id, 2, 0)])).await;
        let view =
            first.fleet_quota_until("dp-2's report", QUOTA_PUSH_DEADLINE, |v| v.len() == 2).await;
        assert_eq!(view, sorted(vec![(a.id.to_string(), 60, 0, 1), (b.id.to_string(), 120, 0, 1)]));
    }
}
