//! The data planes page, with and without data planes (a data plane's side of the real gRPC
//! stream, in process).

use http::{Method, StatusCode};
use modelgw_control_plane::{GrpcSecurity, GrpcSettings, TlsFiles};
use modelgw_mock_openai::pki::TestPki;
use modelgw_proto::cfg;
use modelgw_proto::cfg::config_discovery_client::ConfigDiscoveryClient;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::harness::{ADMIN_TOKEN, Console};

#[tokio::test]
async fn the_data_planes_page_says_when_none_has_connected() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let page = c.send(Method::GET, "/data-planes", Some(&cookie), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("<title>Data Planes"));
    assert!(page.body.contains("No data plane has connected"));
    assert!(page.body.contains(r#"id="config-version""#));
    assert!(!page.body.contains(r#"id="data-planes-table""#));
}

fn msg(kind: cfg::data_plane_message::Kind) -> cfg::DataPlaneMessage {
    cfg::DataPlaneMessage { kind: Some(kind) }
}

#[tokio::test]
async fn the_data_planes_page_shows_versions_behind_and_nacks() {
    let c = Console::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::write(dir.path()).unwrap();
    let files = TlsFiles {
        cert: pki.server_cert_file.clone(),
        key: pki.server_key_file.clone(),
        client_ca: None,
    };
    let settings = GrpcSettings::new(GrpcSecurity::tls(files).unwrap());
    // Before the server starts: it reads the active tokens when it starts serving.
    let (status, created) =
        c.api(Method::POST, "/api/v1/data-plane-tokens", Some(json!({"name": "dp"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = async {
        c.distribution()
            .serve_grpc(listener, settings, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    };
    let scenario = async {
        let ca = std::fs::read(&pki.ca_file).unwrap();
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(msg(cfg::data_plane_message::Kind::Hello(cfg::Hello {
            node_id: "dp-1".into(),
            applied_version: 0,
            build_version: "test".into(),
            instance: 0,
        })))
        .await
        .unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut inbound =
            ConfigDiscoveryClient::new(channel).stream(request).await.unwrap().into_inner();
        inbound.message().await.unwrap().expect("a snapshot");

        let cookie = c.sign_in(ADMIN_TOKEN).await;
        // Not acknowledged yet: version 0, behind the current one.
        let page = c.send(Method::GET, "/data-planes", Some(&cookie), None).await;
        assert!(page.body.contains(r#"id="data-planes-table""#), "{}", page.body);
        assert!(page.body.contains(r#"data-node="dp-1""#));
        assert!(page.body.contains(r#"data-state="connected""#));
        assert!(page.body.contains(r#"data-state="behind""#));

        // A rejected snapshot: the reason is shown.
        let (_, status) = c.api(Method::GET, "/api/v1/status", None).await;
        let current = status["config_version"].as_u64().unwrap();
        tx.send(msg(cfg::data_plane_message::Kind::Nack(cfg::Nack {
            version: current,
            reason: "gateway gw: no usable member".into(),
        })))
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let page = c.send(Method::GET, "/data-planes", Some(&cookie), None).await;
            if page.body.contains("gateway gw: no usable member") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no NACK shown: {}", page.body);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }

        // Acknowledged: current, and the NACK is cleared.
        tx.send(msg(cfg::data_plane_message::Kind::Ack(cfg::Ack { version: current })))
            .await
            .unwrap();
        loop {
            let page = c.send(Method::GET, "/data-planes", Some(&cookie), None).await;
            if !page.body.contains(r#"data-state="behind""#)
                && !page.body.contains("no usable member")
            {
                assert!(page.body.contains("1 connected · 1 on the current version"));
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not current: {}", page.body);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(tx);
        let _ = stop.send(());
    };
    tokio::join!(server, scenario);
}
