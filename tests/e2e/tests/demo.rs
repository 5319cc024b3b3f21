//! `modelgw demo` — the README's first command — really gives a working gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use modelgw_e2e::{chat, init, spawn};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_a_gateway_that_serves_a_chat_completion() -> anyhow::Result<()> {
    init();
    let mut demo = spawn(
        BIN.as_ref(),
        "demo",
        &[
            "demo",
            "--admin-addr",
            "127.0.0.1:0",
            "--gateway-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await?;
    let stdout = demo.stdout();
    assert!(stdout.contains("curl -sS"), "prints a ready-to-paste curl:\n{stdout}");
    // The gateway came from the Azure import flow against the mocked estate.
    assert!(stdout.contains("Azure discovery") && stdout.contains(": 3 deployments"), "{stdout}");
    assert!(stdout.contains("Imported as Inference Endpoints: 3 created"), "{stdout}");
    assert!(stdout.contains("created from the proposal"), "{stdout}");
    let gateway = demo.field("gateway").to_owned();
    let key = demo.field("gateway_key").to_owned();
    assert!(stdout.contains(&gateway) && stdout.contains(&key));
    let (status, headers, body) = chat(&gateway, &key, "gpt-4o-mini").await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("Hello from")),
        "{body}"
    );
    let served_by = headers.get("x-modelgw-endpoint").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(served_by.starts_with("aoai-"), "served by an imported endpoint: {served_by}");
    demo.stop().await;
    Ok(())
}
