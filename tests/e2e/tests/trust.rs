//! Issue 10, item 1, across real process boundaries: the distribution port's TLS and who it
//! admits. A data plane keeps serving its last snapshot when the control plane on its address
//! is one it does not trust; a control plane with no TLS settings on SQLite makes a
//! development certificate, and a data plane joins it with a token from the admin API, bound
//! to its node id, until the token is revoked.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::time::{Duration, Instant};

use modelgw_e2e::{Cluster, TestPki, address_of, chat, spawn};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");
/// Bound for things that happen within a few reconnect attempts (backoff is capped at 5 s).
const WITHIN: Duration = Duration::from_secs(15);

/// Polls `condition` every 50 ms until it holds, failing with `what` after `within`.
async fn wait_for(what: &str, within: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_refuses_an_untrusted_control_plane_and_keeps_serving() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    let key = cluster.standard(1).await?;
    let (status, _, body) = chat(cluster.gateway_url(0), &key, "gpt-4o-mini").await?;
    assert_eq!(status, 200, "{body}");
    let grpc_addr = cluster.grpc_addr.clone();
    cluster.stop_control_plane().await;

    // Another control plane takes the address, with a certificate from a CA the data plane
    // does not trust, and an empty configuration it would push.
    let rogue_dir = tempfile::tempdir()?;
    let rogue = TestPki::write(rogue_dir.path())?;
    let path = |p: &std::path::Path| p.display().to_string();
    let env = [
        (
            "MODELGW_DATABASE_URL",
            format!("sqlite://{}", rogue_dir.path().join("rogue.db").display()),
        ),
        ("MODELGW_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("MODELGW_GRPC_ADDR", grpc_addr.clone()),
        ("MODELGW_ADMIN_TOKEN", "mgwadm_rogue-0123456789abcdef0123456789".to_owned()),
        ("MODELGW_GRPC_TLS_CERT_FILE", path(&rogue.server_cert_file)),
        ("MODELGW_GRPC_TLS_KEY_FILE", path(&rogue.server_key_file)),
        ("MODELGW_GRPC_CLIENT_CA_FILE", path(&cluster.pki.ca_file)),
    ];
    let rogue_cp =
        spawn(cluster.bin.as_path(), "rogue control-plane", &["control-plane"], &env).await?;
    assert_eq!(address_of(rogue_cp.field("grpc")), grpc_addr);

    // The data plane says why it refuses it, and keeps trying with backoff.
    let dp = &cluster.data_planes[0];
    wait_for("the refusal in the data plane's log", WITHIN, async || {
        dp.logs().contains("invalid peer certificate")
    })
    .await;
    // It never subscribed, so the rogue control plane has no data plane.
    assert!(!rogue_cp.logs().contains("data plane subscribed"), "{}", rogue_cp.logs());
    // The last snapshot keeps serving.
    let (status, _, body) = chat(cluster.gateway_url(0), &key, "gpt-4o-mini").await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_development_control_plane_admits_a_data_plane_with_a_token_bound_to_its_node_id()
-> anyhow::Result<()> {
    modelgw_e2e::init();
    let dir = tempfile::Builder::new().prefix("modelgw-e2e-dev-").tempdir()?;
    let admin_token = "mgwadm_e2e-dev-0123456789abcdef0123456789".to_owned();
    let env = [
        ("MODELGW_DATABASE_URL", format!("sqlite://{}", dir.path().join("modelgw.db").display())),
        ("MODELGW_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("MODELGW_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("MODELGW_ADMIN_TOKEN", admin_token.clone()),
    ];
    let bin = std::path::Path::new(BIN);
    let cp = spawn(bin, "control-plane", &["control-plane"], &env).await?;
    assert!(cp.field("grpc").starts_with("https://"), "TLS by default");
    assert_eq!(cp.field("client_auth"), "token");
    let ca = cp.field("grpc_ca").to_owned();
    assert!(std::path::Path::new(&ca).starts_with(dir.path()), "next to the database: {ca}");
    assert!(cp.logs().contains("generated a development CA"), "{}", cp.logs());
    let admin = modelgw_e2e::Admin::new(cp.field("admin"), &admin_token);
    let (status, created) =
        admin.call("POST", "/api/v1/data-plane-tokens", Some(json!({"name": "eastus"}))).await?;
    assert_eq!(status, 201, "{created}");
    let token_file = dir.path().join("eastus.token");
    std::fs::write(&token_file, created["token"].as_str().unwrap())?;

    let data_plane = async |node_id: &str| {
        let env = [
            ("MODELGW_GATEWAY_ADDR", "127.0.0.1:0".to_owned()),
            ("MODELGW_CONTROL_PLANE_URL", cp.field("grpc").to_owned()),
            ("MODELGW_CONTROL_PLANE_CA_FILE", ca.clone()),
            ("MODELGW_DATA_PLANE_TOKEN_FILE", token_file.display().to_string()),
            ("MODELGW_NODE_ID", node_id.to_owned()),
        ];
        spawn(bin, &format!("data-plane {node_id}"), &["data-plane"], &env).await
    };
    let good = data_plane("eastus-1").await?;
    let version = admin.config_version().await?;
    admin.wait_for_applied(&["eastus-1"], version, WITHIN).await?;

    // A node id outside the token's name is refused, and the data plane logs why.
    let outsider = data_plane("westus-1").await?;
    // (The log line quotes the control plane's reason: `…must be "eastus" or start with…`.)
    wait_for("the refusal in the data plane's log", WITHIN, async || {
        outsider.logs().contains("or start with")
    })
    .await;
    let status = admin.status().await?;
    let nodes: Vec<&str> = status["data_planes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["node_id"].as_str())
        .collect();
    assert_eq!(nodes, ["eastus-1"]);

    // Revoked: the stream ends at once, the data plane keeps serving and keeps being refused.
    let id = created["id"].as_str().unwrap();
    let (status, _) =
        admin.call("DELETE", &format!("/api/v1/data-plane-tokens/{id}"), None).await?;
    assert_eq!(status, 204);
    let started = Instant::now();
    wait_for("eastus-1 disconnected", Duration::from_secs(1), async || {
        admin.status().await.is_ok_and(|s| s["data_planes"][0]["connected"] == false)
    })
    .await;
    eprintln!("revocation ended the stream after {:?}", started.elapsed());
    wait_for("the refusal after revocation", WITHIN, async || {
        good.logs().contains("unknown or revoked data-plane token")
    })
    .await;
    let ready = reqwest::get(format!("{}/readyz", good.field("gateway"))).await?;
    assert_eq!(ready.status(), 200, "the last snapshot keeps serving");
    Ok(())
}
