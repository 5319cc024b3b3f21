//! The official `openai` Python SDK, unchanged, against the gateway.
//!
//! Needs a Python with `openai` installed: `MODELGW_PYTHON` (set by `tests/run.sh`, which
//! creates the virtualenv). Without it the test fails and says how to get one — it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use modelgw_e2e::{API_VERSION, Cluster};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_completes_a_chat_and_a_streamed_chat() -> anyhow::Result<()> {
    let python = std::env::var("MODELGW_PYTHON").map_err(|_| {
        anyhow::anyhow!("MODELGW_PYTHON is not set: run the tests with `bash tests/run.sh`, which installs the openai SDK in a virtualenv")
    })?;
    let mut cluster = Cluster::new(BIN)?;
    let key = cluster.standard(1).await?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/python/sdk_check.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .env("GATEWAY_URL", cluster.gateway_url(0))
        .env("GATEWAY_KEY", &key)
        .env("API_VERSION", API_VERSION)
        .env("DEPLOYMENT", "gpt-4o-mini")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SDK check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("chat ok: Hello from"), "{stdout}");
    assert!(stdout.contains("stream ok:"), "{stdout}");
    assert!(stdout.contains("bad key rejected: AuthenticationError"), "{stdout}");
    Ok(())
}
