//! Endpoint and gateway `state`, and `/status`, from what a data plane reports over gRPC.

use std::time::{Duration, Instant};

use http::StatusCode;
use modelgw_proto::cfg;
use modelgw_proto::cfg::config_discovery_client::ConfigDiscoveryClient;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::harness::{Harness, WAIT, endpoint_body, id_of};

fn msg(kind: cfg::data_plane_message::Kind) -> cfg::DataPlaneMessage {
    cfg::DataPlaneMessage { kind: Some(kind) }
}

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

#[tokio::test]
async fn states_follow_data_plane_health_reports() {
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

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = h.distribution.serve_grpc(listener, async {
        let _ = stop_rx.await;
    });

    let scenario = async {
        let mut client =
            ConfigDiscoveryClient::connect(format!("http://{addr}")).await.expect("connects");
        let (tx, rx) = mpsc::channel(16);
        tx.send(msg(cfg::data_plane_message::Kind::Hello(cfg::Hello {
            node_id: "dp-test".into(),
            applied_version: 0,
            build_version: "test".into(),
        })))
        .await
        .expect("send hello");
        let mut inbound =
            client.stream(ReceiverStream::new(rx)).await.expect("stream").into_inner();
        // The publisher reloads asynchronously after each commit: the first snapshot sent may
        // predate the endpoints created above, and reports about endpoints a snapshot does not
        // know are ignored. Take snapshots until the current version arrives.
        let current = h.store.config_version().await.expect("version").0;
        let snapshot = loop {
            let next = inbound.message().await.expect("message").expect("a snapshot");
            let Some(cfg::control_plane_message::Kind::Snapshot(snapshot)) = next.kind else {
                panic!("expected a snapshot")
            };
            if snapshot.version >= current {
                break snapshot;
            }
        };
        tx.send(msg(cfg::data_plane_message::Kind::Ack(cfg::Ack { version: snapshot.version })))
            .await
            .expect("send ack");
        let status = wait_until(&h, "/api/v1/status", |s| {
            s["data_planes"][0]["applied_version"] == snapshot.version
        })
        .await;
        assert_eq!(status["data_planes"][0]["node_id"], "dp-test");
        assert_eq!(status["data_planes"][0]["connected"], true);
        assert!(status["data_planes"][0]["last_seen"].is_string());
        assert!(status["data_planes"][0].get("last_nack").is_none());

        // One member throttling, the other healthy: the gateway still serves.
        tx.send(health(&e1, cfg::EndpointState::Throttling, "429 from upstream"))
            .await
            .expect("send");
        let e1_body = wait_until(&h, &e1_path, |b| b["state"] == "throttling").await;
        assert_eq!(e1_body["state_reason"], "429 from upstream");
        assert!(e1_body["state_until"].is_string(), "{e1_body}");
        assert_eq!(e1_body["state_reported_by"], "dp-test");
        assert_eq!(h.get(&gw_path).await.json()["state"], "healthy");

        // Both throttling: the gateway is throttling.
        tx.send(health(&e2, cfg::EndpointState::Throttling, "429")).await.expect("send");
        wait_until(&h, &gw_path, |b| b["state"] == "throttling").await;

        // One throttling, one in error: the gateway is in error.
        tx.send(health(&e2, cfg::EndpointState::Error, "503 from upstream")).await.expect("send");
        wait_until(&h, &gw_path, |b| b["state"] == "error").await;
        let list = h.get("/api/v1/inference-endpoints").await.json();
        let states: Vec<&str> =
            list.as_array().expect("array").iter().filter_map(|e| e["state"].as_str()).collect();
        assert_eq!(states, ["throttling", "error"]);

        // Recovered.
        tx.send(health(&e1, cfg::EndpointState::Healthy, "")).await.expect("send");
        let e1_body = wait_until(&h, &e1_path, |b| b["state"] == "healthy").await;
        assert!(e1_body.get("state_reason").is_none(), "{e1_body}");
        assert_eq!(h.get(&gw_path).await.json()["state"], "healthy");

        drop(tx);
        let _ = stop_tx.send(());
    };
    let (served, ()) = tokio::join!(server, scenario);
    served.expect("gRPC server");
}
