//! Issue 2 acceptance, across real process boundaries: a control plane, data planes and mock
//! regions as separate OS processes, talking real gRPC and HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::time::{Duration, Instant};

use futures::StreamExt;
use modelgw_e2e::{API_VERSION, Cluster, Fault, chat};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_planes_serve_chat_and_apply_a_change_within_one_second() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    let key = cluster.standard(2).await?;

    for i in 0..2 {
        let (status, headers, body) = chat(cluster.gateway_url(i), &key, "gpt-4o-mini").await?;
        assert_eq!(status, 200, "data plane {i}: {body}");
        assert_eq!(body["object"], "chat.completion");
        let served_by = headers.get("x-modelgw-endpoint").expect("x-modelgw-endpoint").to_str()?;
        assert!(served_by.starts_with("gpt-4o-mini-"), "{served_by}");
        assert!(headers.contains_key("x-ms-region"), "Azure headers pass through");
        assert!(headers.contains_key("apim-request-id"));
    }

    // A change: a fourth region joins as a new endpoint.
    let admin = cluster.admin();
    let before = admin.config_version().await?;
    let idx = cluster.start_region("Sweden Central").await?;
    let started = Instant::now();
    admin.create_endpoint("gpt-4o-mini-swedencentral", &cluster.regions[idx]).await?;
    let after = admin.config_version().await?;
    assert_eq!(after, before + 1, "one change, one version");
    let took = admin.wait_for_applied(&["dp-0", "dp-1"], after, Duration::from_secs(1)).await?;
    eprintln!(
        "both data planes applied v{after} {took:?} after the change ({:?} incl. the API call)",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_chat_reaches_the_client_chunk_by_chunk() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    let key = cluster.standard(1).await?;
    // Every region stalls 1.5 s after the second frame: a buffering proxy would deliver nothing
    // until the end.
    for r in &cluster.regions {
        r.script(Fault::StreamStall { after_chunks: 2, ms: 1500, times: 1 });
    }
    let started = Instant::now();
    let res = reqwest::Client::new()
        .post(format!(
            "{}/openai/deployments/gpt-4o-mini/chat/completions?api-version={API_VERSION}",
            cluster.gateway_url(0)
        ))
        .header("api-key", &key)
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "stream": true}))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str()?.split(';').next(),
        Some("text/event-stream")
    );
    let mut body = res.bytes_stream();
    let mut first_chunk_at = None;
    let mut all = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if first_chunk_at.is_none() && !chunk.is_empty() {
            first_chunk_at = Some(started.elapsed());
        }
        all.extend_from_slice(&chunk);
    }
    let finished_at = started.elapsed();
    let first = first_chunk_at.expect("at least one chunk");
    let text = String::from_utf8(all)?;
    assert!(text.trim_end().ends_with("data: [DONE]"), "complete stream: {text}");
    assert!(
        finished_at - first >= Duration::from_millis(1200),
        "first chunk at {first:?}, end at {finished_at:?}: the first chunk must arrive before the mock finishes"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_planes_keep_serving_without_the_control_plane_and_resync_after_it_returns()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    let key = cluster.standard(2).await?;
    let admin = cluster.admin();
    let version_before = admin.config_version().await?;
    let pids: Vec<_> = cluster.data_planes.iter().map(|p| p.pid()).collect();

    cluster.stop_control_plane().await;
    for i in 0..2 {
        for _ in 0..5 {
            let (status, _, body) = chat(cluster.gateway_url(i), &key, "gpt-4o-mini").await?;
            assert_eq!(status, 200, "data plane {i} without control plane: {body}");
        }
        let ready = reqwest::get(format!("{}/readyz", cluster.gateway_url(i))).await?;
        assert_eq!(ready.status(), 200, "still ready on its last snapshot");
    }

    // Restart on the same ports and database.
    cluster.start_control_plane().await?;
    let admin = cluster.admin();
    let version_after_restart = admin.config_version().await?;
    assert!(
        version_after_restart >= version_before,
        "version went back: {version_before} → {version_after_restart}"
    );
    admin
        .wait_for_applied(&["dp-0", "dp-1"], version_after_restart, Duration::from_secs(15))
        .await?;

    // A change after the restart reaches both, with no restart of their own.
    let idx = cluster.start_region("Sweden Central").await?;
    admin.create_endpoint("gpt-4o-mini-swedencentral", &cluster.regions[idx]).await?;
    let v = admin.config_version().await?;
    assert!(v > version_before);
    admin.wait_for_applied(&["dp-0", "dp-1"], v, Duration::from_secs(2)).await?;
    for (i, dp) in cluster.data_planes.iter_mut().enumerate() {
        assert!(dp.is_running(), "data plane {i} exited");
        assert_eq!(dp.pid(), pids[i], "data plane {i} was restarted");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_api_keys_never_appear_in_responses_debug_logs_or_the_database()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    cluster.env.push(("RUST_LOG", "debug".to_owned()));
    let key = cluster.standard(1).await?;
    let admin = cluster.admin();

    // Traffic, including a failover, so every code path that handles the key runs.
    cluster.regions[0].script(Fault::throttled(1, 3));
    for _ in 0..6 {
        let (status, _, _) = chat(cluster.gateway_url(0), &key, "gpt-4o-mini").await?;
        assert_eq!(status, 200);
    }
    // The audit log of the real process records who set the keys, and from where (the TCP
    // peer the control plane serves the admin API with).
    let (status, audit) = admin.call("GET", "/api/v1/audit-log", None).await?;
    assert_eq!(status, 200);
    let entries = audit["entries"].as_array().expect("entries");
    assert!(!entries.is_empty(), "{audit}");
    for entry in entries {
        assert_eq!(entry["actor"], "bootstrap", "{entry}");
        assert_eq!(entry["client_ip"], "127.0.0.1", "{entry}");
    }
    assert!(!audit.to_string().contains(&key), "the gateway key is in the audit log");
    // Every admin read.
    let mut responses = audit.to_string();
    for path in ["/api/v1/inference-endpoints", "/api/v1/gateways", "/api/v1/status"] {
        let (status, body) = admin.call("GET", path, None).await?;
        assert_eq!(status, 200);
        responses.push_str(&body.to_string());
    }
    let (_, eps) = admin.call("GET", "/api/v1/inference-endpoints", None).await?;
    for ep in eps.as_array().expect("list") {
        let (_, one) = admin
            .call(
                "GET",
                &format!("/api/v1/inference-endpoints/{}", ep["id"].as_str().expect("id")),
                None,
            )
            .await?;
        responses.push_str(&one.to_string());
        assert!(
            one["api_key_hint"].as_str().is_some_and(|h| h.starts_with('…')),
            "hint shown: {one}"
        );
    }

    let logs = cluster.all_logs();
    assert!(logs.contains("DEBUG"), "the processes really logged at debug level");
    let mut db = std::fs::read(cluster.database_path())?;
    if let Ok(wal) = std::fs::read(cluster.database_path().with_extension("db-wal")) {
        db.extend(wal);
    }
    let db = String::from_utf8_lossy(&db);
    for region in &cluster.regions {
        let secret = &region.key;
        assert!(
            !responses.contains(secret.as_str()),
            "{} key in an admin response",
            region.display
        );
        // The mock regions' own logs are not ours to police; they log no keys either.
        assert!(!logs.contains(secret.as_str()), "{} key in the logs", region.display);
        assert!(
            !db.contains(secret.as_str()),
            "{} key in plaintext in the database",
            region.display
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_is_refused_and_leaves_the_version_unchanged() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    let _key = cluster.standard(0).await?;
    let admin = cluster.admin();
    let version = admin.config_version().await?;
    let (_, eps) = admin.call("GET", "/api/v1/inference-endpoints", None).await?;
    let used = eps[0]["id"].as_str().expect("id").to_owned();
    let valid = json!({"name": "x", "platform": "azure_openai", "endpoint": "https://x.openai.azure.com",
        "deployment": "d", "model_name": "m", "model_version": "v", "region": "r", "api_key": "k-1234567890"});
    let with = |field: &str, value: serde_json::Value| {
        let mut v = valid.clone();
        v[field] = value;
        v
    };
    let without = |field: &str| {
        let mut v = valid.clone();
        v.as_object_mut().expect("object").remove(field);
        v
    };
    let cases: Vec<(&str, String, Option<serde_json::Value>, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/inference-endpoints".into(),
            Some(with("endpoint", json!("ftp://x"))),
            422,
            "endpoint",
        ),
        (
            "POST",
            "/api/v1/inference-endpoints".into(),
            Some(with("colour", json!("red"))),
            422,
            "colour",
        ),
        (
            "POST",
            "/api/v1/inference-endpoints".into(),
            Some(without("deployment")),
            422,
            "deployment",
        ),
        (
            "POST",
            "/api/v1/inference-endpoints".into(),
            Some(with("name", json!("gpt-4o-mini-east-us"))),
            409,
            "name",
        ),
        (
            "POST",
            "/api/v1/gateways".into(),
            Some(json!({"name": "gpt-4o-mini", "endpoints": []})),
            409,
            "name",
        ),
        (
            "POST",
            "/api/v1/gateways".into(),
            Some(
                json!({"name": "g2", "endpoints": [{"endpoint_id": "0191e5a0-0000-7000-8000-000000000000"}]}),
            ),
            422,
            "endpoints[0].endpoint_id",
        ),
        ("DELETE", format!("/api/v1/inference-endpoints/{used}"), None, 409, ""),
    ];
    for (method, path, body, want, field) in cases {
        let (status, problem) = admin.call(method, &path, body.clone()).await?;
        assert_eq!(status, want, "{method} {path} {body:?}: {problem}");
        if !field.is_empty() {
            assert!(
                problem.to_string().contains(field),
                "{method} {path}: problem names {field}: {problem}"
            );
        }
        assert_eq!(admin.config_version().await?, version, "{method} {path} changed the version");
    }
    // Malformed JSON.
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/gateways", admin.base))
        .bearer_auth(&admin.token)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await?;
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(admin.config_version().await?, version);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_gateway_key_stops_working_on_every_data_plane() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    let key = cluster.standard(2).await?;
    let admin = cluster.admin();
    let (_, gateways) = admin.call("GET", "/api/v1/gateways", None).await?;
    let gateway_id = gateways[0]["id"].as_str().expect("gateway id").to_owned();
    let (_, keys) = admin.call("GET", &format!("/api/v1/gateways/{gateway_id}/keys"), None).await?;
    assert!(keys.to_string().find(&key).is_none(), "a key list never shows the secret");
    let key_id = keys[0]["id"].as_str().expect("key id").to_owned();

    let (status, _) =
        admin.call("DELETE", &format!("/api/v1/gateways/{gateway_id}/keys/{key_id}"), None).await?;
    assert_eq!(status, 204);
    let version = admin.config_version().await?;
    admin.wait_for_applied(&["dp-0", "dp-1"], version, Duration::from_secs(1)).await?;
    for i in 0..2 {
        let (status, _, body) = chat(cluster.gateway_url(i), &key, "gpt-4o-mini").await?;
        assert_eq!(status, 401, "data plane {i} still accepts a revoked key: {body}");
        assert_eq!(body["error"]["code"], "401", "Azure-shaped: {body}");
    }
    Ok(())
}
