//! The official `openai` SDKs, unchanged, against the gateway: Python (the pinned version and
//! the latest) and Node, every operation an app uses, through `AzureOpenAI` with a dated
//! api-version and through `OpenAI(base_url=<gateway>/openai/v1/)`.
//!
//! One cluster (control plane, two data planes, three mock regions as real processes) with a
//! gateway whose name no region serves as a deployment, so every call only succeeds if the
//! gateway rewrote it to an endpoint's deployment. The scripts (`tests/e2e/python/sdk_surface.py`,
//! `tests/e2e/node/sdk_surface.mjs`) check each answer's content and print `ok <mode> <step>`
//! lines; this test asserts every one of them, for each SDK and mode. The follow-up
//! (`previous_response_id`) and the retrieval of a stored response go to the other data plane.
//!
//! Needs the SDKs `tests/run.sh` installs into cached locations: `MODELGW_PYTHON` (pinned
//! Python SDK), `MODELGW_PYTHON_LATEST` (latest Python SDK), `MODELGW_NODE_OPENAI` (the npm
//! prefix of the Node SDK) and `node`. Without them the test fails and says how to get them —
//! it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::time::Instant;

use modelgw_e2e::{API_VERSION, Cluster};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");
/// The gateway's name: what apps put in `model`. The regions serve `gpt-4o-mini`.
const GATEWAY: &str = "sdk-gateway";
/// The dated api-version the `AzureOpenAI` runs use: the first one with the Responses API and
/// `stream_options` both.
const DATED_API_VERSION: &str = "2025-04-01-preview";
const MODES: [&str; 2] = ["azure", "v1"];
/// The steps each script runs in each mode, in order (`ok <mode> <step>: …`).
const STEPS: [&str; 12] = [
    "chat",
    "chat-stream",
    "tool-call",
    "tool-call-stream",
    "embeddings",
    "responses-create",
    "responses-stream",
    "responses-follow-up",
    "responses-retrieve",
    "models",
    "image",
    "transcription",
];
/// The calls each script repeats with a wrong key, each of which must raise
/// `AuthenticationError` (401): `ok <mode> bad-key <step>`.
const BAD_KEY_STEPS: [&str; 11] = [
    "chat",
    "chat-stream",
    "tool-call",
    "embeddings",
    "responses-create",
    "responses-stream",
    "responses-follow-up",
    "responses-retrieve",
    "models",
    "image",
    "transcription",
];

fn required_env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| {
        anyhow::anyhow!(
            "{name} is not set: run the tests with `bash tests/run.sh`, which installs the official \
             openai SDKs (Python: a virtualenv per version; Node: an npm prefix) and exports it"
        )
    })
}

/// One finished run of an SDK script: which one, and what it printed.
struct Run {
    name: &'static str,
    stdout: String,
}

/// Runs `program args…` with `env`; an error (with everything it printed) unless it exits 0.
async fn run_script(
    name: &'static str,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Run> {
    let start = Instant::now();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.map_err(|e| {
        anyhow::anyhow!("running {program}: {e} (`bash tests/run.sh` installs node and the SDKs)")
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("----- {name} ({:?}) -----\n{stdout}", start.elapsed());
    anyhow::ensure!(out.status.success(), "{name} failed ({}):\n{stdout}\n{stderr}", out.status);
    Ok(Run { name, stdout })
}

impl Run {
    /// The first line, where each script prints the SDK's version.
    fn version(&self) -> &str {
        self.stdout.lines().next().unwrap_or_default()
    }

    /// Asserts an `ok` line for every step of every mode, the wrong-key ones included.
    fn assert_every_step(&self) {
        let lines: Vec<&str> = self.stdout.lines().collect();
        for mode in MODES {
            for step in STEPS {
                let ok = format!("ok {mode} {step}: ");
                assert!(
                    lines.iter().any(|l| l.starts_with(&ok)),
                    "{}: no `{ok}…` line:\n{}",
                    self.name,
                    self.stdout
                );
            }
            for step in BAD_KEY_STEPS {
                let ok = format!("ok {mode} bad-key {step}");
                assert!(
                    lines.contains(&ok.as_str()),
                    "{}: no `{ok}` line:\n{}",
                    self.name,
                    self.stdout
                );
            }
        }
        let oks = lines.iter().filter(|l| l.starts_with("ok ")).count();
        assert_eq!(oks, MODES.len() * (STEPS.len() + BAD_KEY_STEPS.len()), "{}", self.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdks_complete_every_operation_through_the_gateway() -> anyhow::Result<()> {
    let python = required_env("MODELGW_PYTHON")?;
    let python_latest = required_env("MODELGW_PYTHON_LATEST")?;
    let node_prefix = required_env("MODELGW_NODE_OPENAI")?;
    let node_sdk = format!("{node_prefix}/node_modules/openai/package.json");
    anyhow::ensure!(
        std::path::Path::new(&node_sdk).exists(),
        "MODELGW_NODE_OPENAI={node_prefix} holds no openai package ({node_sdk}): run `bash \
         tests/run.sh`, or `npm install --prefix {node_prefix} openai@<version>`"
    );

    let mut cluster = Cluster::new(BIN)?;
    let key = cluster.with_gateway(GATEWAY, 2).await?;
    let (dp0, dp1) = (cluster.gateway_url(0).to_owned(), cluster.gateway_url(1).to_owned());

    // The original check, first: the GA api-version, chat and a streamed chat with usage, a
    // wrong key.
    let check = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/python/sdk_check.py");
    let run = run_script(
        "python sdk_check",
        &python,
        &[check],
        &[
            ("GATEWAY_URL", &dp0),
            ("GATEWAY_KEY", &key),
            ("API_VERSION", API_VERSION),
            ("DEPLOYMENT", GATEWAY),
        ],
    )
    .await?;
    assert!(run.stdout.contains("chat ok: Hello from"), "{}", run.stdout);
    assert!(run.stdout.contains("stream ok:"), "{}", run.stdout);
    assert!(run.stdout.contains("bad key rejected: AuthenticationError"), "{}", run.stdout);

    // The whole surface, by each SDK, the three at once (each is one client, one call at a
    // time); the first data plane serves everything but the stateful follow-ups.
    let python_script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/python/sdk_surface.py");
    let node_script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/node/sdk_surface.mjs");
    let env = [
        ("GATEWAY_URL", dp0.as_str()),
        ("FOLLOW_UP_URL", dp1.as_str()),
        ("GATEWAY_KEY", key.as_str()),
        ("GATEWAY_NAME", GATEWAY),
        ("API_VERSION", DATED_API_VERSION),
        ("MODELGW_NODE_OPENAI", node_prefix.as_str()),
    ];
    let recorded_before: usize = cluster.regions.iter().map(|r| r.requests().len()).sum();
    let (python_args, node_args) = ([python_script], [node_script]);
    let (pinned, latest, node) = tokio::join!(
        run_script("python (pinned SDK)", &python, &python_args, &env),
        run_script("python (latest SDK)", &python_latest, &python_args, &env),
        run_script("node", "node", &node_args, &env),
    );
    let failures: Vec<String> = [&pinned, &latest, &node]
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| format!("{e:#}"))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let (pinned, latest, node) = (pinned?, latest?, node?);
    for run in [&pinned, &latest, &node] {
        run.assert_every_step();
    }
    assert!(pinned.version().starts_with("openai "), "{}", pinned.stdout);
    assert!(latest.version().starts_with("openai "), "{}", latest.stdout);
    assert_ne!(
        pinned.version(),
        latest.version(),
        "the pinned and latest Python SDKs are one version"
    );
    assert!(node.version().starts_with("openai-node "), "{}", node.stdout);

    // The calls reached the regions, each as the region's own deployment: no region saw the
    // gateway's name in a path, nor in the `model` of a call whose path names no deployment
    // (v1, dated Responses: JSON or multipart). Per script and mode at least 13 upstream
    // requests succeeded (every step but `models`, which the gateway answers itself; two for
    // each tool-call round trip); wrong keys reach nothing.
    let recorded: Vec<_> = cluster.regions.iter().map(|r| r.requests()).collect();
    let per_region: Vec<usize> = recorded.iter().map(Vec::len).collect();
    let upstream = per_region.iter().sum::<usize>() - recorded_before;
    assert!(
        upstream >= 3 * 2 * 13,
        "only {upstream} upstream requests for three scripts: {per_region:?}"
    );
    assert!(per_region.iter().all(|&n| n > 0), "a region got nothing: {per_region:?}");
    for request in recorded.iter().flatten() {
        assert!(
            !request.path.contains(GATEWAY),
            "a region got the gateway's name: {}",
            request.path
        );
        if !request.path.contains("/deployments/") {
            let body = String::from_utf8_lossy(&request.body);
            assert!(
                !body.contains(GATEWAY),
                "{} {}: the model is not the region's deployment: {body:.300}",
                request.method,
                request.path
            );
        }
    }

    // No gateway key or region key in any log line.
    let logs = cluster.all_logs();
    assert!(!logs.contains(&key), "the gateway key is in a log");
    for region in &cluster.regions {
        assert!(!logs.contains(&region.key), "{}'s key is in a log", region.name);
    }
    Ok(())
}
