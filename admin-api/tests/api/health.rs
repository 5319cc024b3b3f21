//! Endpoint and gateway `state`, and `/status`, from what a data plane reports over gRPC.

use std::time::{Duration, Instant};

use http::StatusCode;
use modelgw_proto::cfg;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::harness::{Harness, WAIT, endpoint_body, id_of};
use peer::{Grpc, msg};

fn health(endpoint_id: &str, state: cfg::EndpointState, reason: &str) -> cfg::DataPlaneMessage {
    let until = chrono::Utc::now() + chrono::Duration::minutes(10);
    msg(cfg::data_plane_message::Kind::Health(cfg::HealthReport {
        endpoints: vec![cfg::EndpointHealth {
            endpoint_id: endpoint_id.to_owned(),
            state: state as i32,
            until_unix_ms: until.timestamp_millis(),
            reason: reason.to_owned(),
        }],
    }))
}

/// Polls `path` until `check` holds, failing after [`WAIT`].
async fn wait_until(h: &Harness, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = h.get(path).await.expect(StatusCode::OK).json();
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never matched; last: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A data plane's side of the config stream.
struct DataPlane {
    tx: mpsc::Sender<cfg::DataPlaneMessage>,
    inbound: tonic::Streaming<cfg::ControlPlaneMessage>,
}

impl DataPlane {
    /// Subscribes as `node_id` and waits for the snapshot of the current version: the
    /// publisher reloads asynchronously after each commit, so the first snapshot sent may
    /// predate the endpoints just created, and reports about endpoints a snapshot does not
    /// know are ignored.
    async fn subscribe(h: &Harness, grpc: &Grpc, token: &str, node_id: &str) -> DataPlane {
        let channel = grpc.channel().await;
        let stream = Grpc::open(&channel, token, node_id).await.expect("stream");
        let mut dp = DataPlane { tx: stream.tx, inbound: stream.inbound };
        let current = h.store.config_version().await.expect("version").0;
        loop {
            let next = dp.inbound.message().await.expect("message").expect("a message");
            match next.kind {
                Some(cfg::control_plane_message::Kind::Snapshot(s)) if s.version >= current => {
                    dp.send(msg(cfg::data_plane_message::Kind::Ack(cfg::Ack {
                        version: s.version,
                    })))
                    .await;
                    return dp;
                }
                Some(_) => continue, // an older snapshot, or the fleet health after one
                None => panic!("empty control-plane message"),
            }
        }
    }

    async fn send(&self, message: cfg::DataPlaneMessage) {
        self.tx.send(message).await.expect("send to the control plane");
    }
}

#[tokio::test]
async fn states_follow_fleet_health_reports() {
    let h = Harness::start().await;
    let e1 = id_of(&h.create_endpoint(endpoint_body("eus", "azkey-0123456789abcdef-1")).await);
    let e2 = id_of(&h.create_endpoint(endpoint_body("weu", "azkey-0123456789abcdef-2")).await);
    let gw = id_of(
        &h.create_gateway(
            json!({"name": "gpt-4o", "endpoints": [{"endpoint_id": e1}, {"endpoint_id": e2}]}),
        )
        .await,
    );
    let gw_path = format!("/api/v1/gateways/{gw}");
    let e1_path = format!("/api/v1/inference-endpoints/{e1}");
    let e2_path = format!("/api/v1/inference-endpoints/{e2}");

    let (grpc, stop_tx, server) = Grpc::start(&h).await;
    let token = peer::token(&h, "dp").await;

    let scenario = async {
        let dp_a = DataPlane::subscribe(&h, &grpc, &token, "dp-a").await;
        let dp_b = DataPlane::subscribe(&h, &grpc, &token, "dp-b").await;
        let version = h.store.config_version().await.expect("version").0;
        let status = wait_until(&h, "/api/v1/status", |s| {
            s["data_planes"]
                .as_array()
                .is_some_and(|d| d.len() == 2 && d.iter().all(|p| p["applied_version"] == version))
        })
        .await;
        assert_eq!(status["data_planes"][0]["node_id"], "dp-a");
        assert_eq!(status["data_planes"][1]["node_id"], "dp-b");
        assert_eq!(status["data_planes"][0]["connected"], true);
        assert!(status["data_planes"][0]["last_seen"].is_string());
        assert!(status["data_planes"][0].get("last_nack").is_none());
        let fresh = h.get(&e1_path).await.json();
        assert_eq!(fresh["state"], "healthy");
        assert_eq!(fresh["data_planes"], json!([]));
        assert!(fresh.get("last_error").is_none() && fresh.get("retry_after").is_none());

        // dp-a sees e1 throttling; e2 still serves: degraded.
        dp_a.send(health(&e1, cfg::EndpointState::Throttling, "429 from upstream")).await;
        let e1_body = wait_until(&h, &e1_path, |b| b["state"] == "throttling").await;
        assert_eq!(e1_body["state_reason"], "429 from upstream");
        assert!(e1_body["retry_after"].is_string(), "{e1_body}");
        assert_eq!(e1_body["state_until"], e1_body["retry_after"], "alias");
        assert_eq!(e1_body["state_reported_by"], "dp-a");
        assert_eq!(e1_body["last_error"]["reason"], "429 from upstream");
        assert_eq!(e1_body["last_error"]["node_id"], "dp-a");
        let planes = e1_body["data_planes"].as_array().expect("data_planes");
        assert_eq!(planes.len(), 1, "{e1_body}");
        assert_eq!(planes[0]["node_id"], "dp-a");
        assert_eq!(planes[0]["state"], "throttling");
        assert_eq!(planes[0]["until"], e1_body["retry_after"]);
        assert_eq!(planes[0]["reason"], "429 from upstream");
        assert!(planes[0]["updated_at"].is_string());
        assert_eq!(h.get(&gw_path).await.json()["state"], "degraded");

        // dp-b sees e2 in error: every member unavailable, one throttling.
        dp_b.send(health(&e2, cfg::EndpointState::Error, "503 from upstream")).await;
        wait_until(&h, &gw_path, |b| b["state"] == "throttling").await;
        let e2_body = h.get(&e2_path).await.json();
        assert_eq!(
            (e2_body["state"].as_str(), e2_body["state_reported_by"].as_str()),
            (Some("error"), Some("dp-b"))
        );

        // dp-a recovers e1: the gateway is degraded again; e1 keeps its last error.
        dp_a.send(health(&e1, cfg::EndpointState::Healthy, "")).await;
        let e1_body = wait_until(&h, &e1_path, |b| b["state"] == "healthy").await;
        for absent in ["state_reason", "retry_after", "state_until", "state_reported_by"] {
            assert!(e1_body.get(absent).is_none(), "{absent} in {e1_body}");
        }
        assert_eq!(e1_body["last_error"]["reason"], "429 from upstream");
        assert_eq!(e1_body["data_planes"][0]["state"], "healthy");
        assert!(e1_body["data_planes"][0].get("until").is_none());
        assert_eq!(h.get(&gw_path).await.json()["state"], "degraded");

        // dp-b sees e1 in error too: every member in error.
        dp_b.send(health(&e1, cfg::EndpointState::Error, "connection reset")).await;
        wait_until(&h, &gw_path, |b| b["state"] == "error").await;
        let e1_body = h.get(&e1_path).await.json();
        let views: Vec<(&str, &str)> = e1_body["data_planes"]
            .as_array()
            .expect("data_planes")
            .iter()
            .map(|p| (p["node_id"].as_str().unwrap_or(""), p["state"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(views, [("dp-a", "healthy"), ("dp-b", "error")]);
        assert_eq!(e1_body["last_error"]["reason"], "connection reset");
        let list = h.get("/api/v1/inference-endpoints").await.json();
        let states: Vec<&str> =
            list.as_array().expect("array").iter().filter_map(|e| e["state"].as_str()).collect();
        assert_eq!(states, ["error", "error"]);

        drop((dp_a, dp_b));
        let _ = stop_tx.send(());
    };
    tokio::join!(server, scenario);
}

/// The harness's distribution served over gRPC with TLS on loopback, in join-token mode (the
/// mode an admin API test can drive end to end: tokens come from `/api/v1/data-plane-tokens`),
/// and a data plane's side of a stream. Here because this file is the admin API tests' one
/// wire peer (`model/tests/protocol_boundary.rs`); other tests use it without naming wire types.
pub(crate) mod peer {
    use http::{Method, StatusCode};
    use modelgw_control_plane::{GrpcSecurity, GrpcSettings, TlsFiles};
    use modelgw_mock_openai::pki::TestPki;
    use modelgw_proto::cfg;
    use modelgw_proto::cfg::config_discovery_client::ConfigDiscoveryClient;
    use serde_json::{Value, json};
    use std::future::Future;
    use std::net::SocketAddr;
    use tokio::sync::{mpsc, oneshot};
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

    use crate::harness::Harness;

    /// The address and CA of a gRPC server of `Harness::distribution`.
    pub struct Grpc {
        pub addr: SocketAddr,
        pki: TestPki,
        _dir: tempfile::TempDir,
    }

    /// Stops the server when sent (or dropped).
    pub type Stop = oneshot::Sender<()>;

    impl Grpc {
        /// Binds a server of `h`'s distribution with a fresh test CA's certificate (data planes
        /// use tokens); the returned future serves until `Stop` fires. Run it next to the
        /// scenario (`tokio::join!`): it borrows the harness.
        pub async fn start(h: &Harness) -> (Grpc, Stop, impl Future<Output = ()> + '_) {
            Grpc::start_with(h, |settings| settings).await
        }

        /// Like [`Grpc::start`], with the settings adjusted by `adjust`.
        pub async fn start_with(
            h: &Harness,
            adjust: impl FnOnce(GrpcSettings) -> GrpcSettings,
        ) -> (Grpc, Stop, impl Future<Output = ()> + '_) {
            let dir = tempfile::tempdir().expect("temp dir");
            let pki = TestPki::write(dir.path()).expect("test PKI");
            let files = TlsFiles {
                cert: pki.server_cert_file.clone(),
                key: pki.server_key_file.clone(),
                client_ca: None,
            };
            let settings = adjust(GrpcSettings::new(GrpcSecurity::tls(files).expect("TLS")));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (stop, stopped) = oneshot::channel::<()>();
            let serve = async move {
                h.distribution
                    .serve_grpc(listener, settings, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("gRPC server");
            };
            (Grpc { addr, pki, _dir: dir }, stop, serve)
        }

        /// A TLS channel that trusts the server's CA.
        pub async fn channel(&self) -> Channel {
            let ca = std::fs::read(&self.pki.ca_file).expect("CA file");
            Endpoint::from_shared(format!("https://{}", self.addr))
                .expect("URL")
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
                .expect("TLS config")
                .connect()
                .await
                .expect("connects")
        }

        /// Opens a stream on `channel` presenting `token`, whose first message is a `Hello` as
        /// `node_id`; the error is the call's status.
        pub async fn open(
            channel: &Channel,
            token: &str,
            node_id: &str,
        ) -> Result<Stream, tonic::Status> {
            let (tx, rx) = mpsc::channel(16);
            tx.send(msg(cfg::data_plane_message::Kind::Hello(cfg::Hello {
                node_id: node_id.into(),
                applied_version: 0,
                build_version: "test".into(),
                instance: 0,
            })))
            .await
            .expect("send hello");
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().expect("header value"));
            let inbound =
                ConfigDiscoveryClient::new(channel.clone()).stream(request).await?.into_inner();
            Ok(Stream { tx, inbound })
        }
    }

    /// A data plane's side of a stream.
    pub struct Stream {
        pub tx: mpsc::Sender<cfg::DataPlaneMessage>,
        pub inbound: tonic::Streaming<cfg::ControlPlaneMessage>,
    }

    pub fn msg(kind: cfg::data_plane_message::Kind) -> cfg::DataPlaneMessage {
        cfg::DataPlaneMessage { kind: Some(kind) }
    }

    /// Creates a data-plane token through the admin API; returns the response body.
    pub async fn create_token(h: &Harness, body: Value) -> Value {
        h.call(Method::POST, "/api/v1/data-plane-tokens", Some(body))
            .await
            .expect(StatusCode::CREATED)
            .json()
    }

    /// Creates a token named `name`; returns the token.
    pub async fn token(h: &Harness, name: &str) -> String {
        let created = create_token(h, json!({"name": name})).await;
        created["token"].as_str().expect("token").to_owned()
    }

    impl Stream {
        /// The next message, which must be a snapshot.
        pub async fn snapshot(&mut self) {
            let first = self.inbound.message().await.expect("message").expect("a message");
            assert!(
                matches!(first.kind, Some(cfg::control_plane_message::Kind::Snapshot(_))),
                "{first:?}"
            );
        }
    }
}

impl DataPlane {
    /// The next fleet health the control plane pushes, skipping anything else.
    async fn next_fleet_health(&mut self) -> cfg::FleetHealth {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.inbound.message())
                .await
                .expect("a fleet health push in time")
                .expect("message")
                .expect("a message");
            if let Some(cfg::control_plane_message::Kind::FleetHealth(f)) = next.kind {
                return f;
            }
        }
    }

    /// Waits for a fleet health push that satisfies `check`.
    async fn fleet_health_until(
        &mut self,
        check: impl Fn(&cfg::FleetHealth) -> bool,
    ) -> cfg::FleetHealth {
        loop {
            let fleet = self.next_fleet_health().await;
            if check(&fleet) {
                return fleet;
            }
        }
    }
}

/// A report that claims a window of thousands of years is capped at the maximum window
/// (5 minutes by default), in the API and in what every other data plane is sent; an
/// operator's reset then reaches every data plane within a second, and later reports count
/// again.
#[tokio::test]
async fn long_windows_are_capped_and_a_reset_reaches_every_data_plane_at_once() {
    let h = Harness::start().await;
    let e1 = id_of(&h.create_endpoint(endpoint_body("eus", "azkey-0123456789abcdef-1")).await);
    let e1_path = format!("/api/v1/inference-endpoints/{e1}");
    let (grpc, stop_tx, server) = Grpc::start(&h).await;
    let token = peer::token(&h, "dp").await;

    let scenario = async {
        let mut dp_a = DataPlane::subscribe(&h, &grpc, &token, "dp-a").await;
        let mut dp_b = DataPlane::subscribe(&h, &grpc, &token, "dp-b").await;
        let until_9999 = chrono::DateTime::parse_from_rfc3339("9999-12-31T00:00:00Z")
            .expect("a date")
            .timestamp_millis();
        let sent = chrono::Utc::now();
        dp_a.send(msg(cfg::data_plane_message::Kind::Health(cfg::HealthReport {
            endpoints: vec![cfg::EndpointHealth {
                endpoint_id: e1.clone(),
                state: cfg::EndpointState::Throttling as i32,
                until_unix_ms: until_9999,
                reason: "429".into(),
            }],
        })))
        .await;
        let pushed = dp_b.fleet_health_until(|f| !f.endpoints.is_empty()).await;
        // Read after the push: the window is capped from the report's reception.
        let cap = modelgw_control_plane::DEFAULT_MAX_HEALTH_WINDOW;
        let latest = (chrono::Utc::now() + chrono::Duration::from_std(cap).expect("fits"))
            .timestamp_millis();
        let until = pushed.endpoints[0].until_unix_ms;
        assert!(
            until > sent.timestamp_millis() && until <= latest,
            "the window pushed to the fleet is capped: {until} > {latest}"
        );
        let body = wait_until(&h, &e1_path, |b| b["state"] == "throttling").await;
        let shown =
            chrono::DateTime::parse_from_rfc3339(body["state_until"].as_str().expect("until"))
                .expect("a time")
                .timestamp_millis();
        assert!(shown <= latest, "the API shows the capped window: {body}");

        // The reset: both data planes are sent a fleet view without the endpoint, naming the
        // reset, within a second.
        let reset_sent = Instant::now();
        let reset = h.call(http::Method::POST, &format!("{e1_path}/health:reset"), None).await;
        let body = reset.expect(StatusCode::OK).json();
        assert_eq!(body["state"], "healthy", "{body}");
        assert_eq!(body["last_error"]["reason"], "429", "the history stays visible");
        for dp in [&mut dp_a, &mut dp_b] {
            let fleet =
                dp.fleet_health_until(|f| f.endpoints.is_empty() && !f.resets.is_empty()).await;
            assert_eq!(fleet.resets.len(), 1, "{fleet:?}");
            assert_eq!(fleet.resets[0].endpoint_id, e1);
        }
        assert!(reset_sent.elapsed() < Duration::from_secs(1), "took {:?}", reset_sent.elapsed());
        assert_eq!(h.get(&e1_path).await.json()["state"], "healthy");

        // A report after the reset counts again.
        dp_b.send(health(&e1, cfg::EndpointState::Error, "503")).await;
        let body = wait_until(&h, &e1_path, |b| b["state"] == "error").await;
        assert_eq!(body["state_reported_by"], "dp-b");

        // An unknown endpoint is a 404, and nothing is stored for it.
        h.call(
            http::Method::POST,
            &format!("/api/v1/inference-endpoints/{}/health:reset", uuid::Uuid::new_v4()),
            None,
        )
        .await
        .expect(StatusCode::NOT_FOUND);

        drop((dp_a, dp_b));
        let _ = stop_tx.send(());
    };
    tokio::join!(server, scenario);
}
