//! Issue 15, item 4 ("cold start without the control plane"), across real processes: a data
//! plane keeps its last applied snapshot on disk, sealed with a key from its environment, and
//! a data plane started while no control plane answers serves it — marked stale — until the
//! control plane is back. The file holds no endpoint key in plaintext; a file older than the
//! maximum age, or one the key does not open, is not served, and the log says why.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use modelgw_e2e::{Cluster, Proc, chat, spawn};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

/// The endpoint's Azure key: distinctive, so a grep for it cannot miss.
const ENDPOINT_KEY: &str = "azkey-SEALED-e2e-3b9f6a1c72d04e85";
/// base64 of 32 bytes (0, 1, …, 31): the snapshot key.
const SNAPSHOT_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Another 32-byte key: the wrong one.
const WRONG_KEY: &str = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";
/// Upper bound for anything that should happen promptly.
const DEADLINE: Duration = Duration::from_secs(15);
const NODE: &str = "dp-sealed";

/// The version and the confirmation time (unix ms) in the clear header of a sealed file.
fn header(file: &[u8]) -> Option<(u64, i64)> {
    if file.len() < 28 || &file[..8] != b"MGWSNAP\0" {
        return None;
    }
    let version = u64::from_be_bytes(file[12..20].try_into().ok()?);
    let confirmed = i64::from_be_bytes(file[20..28].try_into().ok()?);
    Some((version, confirmed))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A data plane of `cluster` as its own process, with `extra` environment (the snapshot
/// settings); not added to the cluster.
async fn data_plane(cluster: &Cluster, extra: &[(&str, String)]) -> anyhow::Result<Proc> {
    let mut env = cluster.data_plane_tls(NODE)?;
    env.extend([
        ("MODELGW_GATEWAY_ADDR", "127.0.0.1:0".to_owned()),
        ("MODELGW_NODE_ID", NODE.to_owned()),
    ]);
    env.extend(extra.iter().cloned());
    spawn(&cluster.bin, NODE, &["data-plane"], &env).await
}

async fn readyz(gateway: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::Client::new().get(format!("{gateway}/readyz")).send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// A gauge without labels from the process's `/metrics`.
async fn gauge(proc: &Proc, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(proc.metrics_url()).await?.text().await?;
    let line = text
        .lines()
        .find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')))
        .with_context(|| format!("no {name}"))?;
    Ok(line.rsplit(' ').next().context("value")?.parse()?)
}

/// Polls until `condition` holds; fails naming `what` after [`DEADLINE`].
async fn wait_until<F, Fut>(what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if condition().await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until the process's log holds `needle`.
async fn wait_for_log(proc: &Proc, needle: &str) -> anyhow::Result<()> {
    wait_until(&format!("log line {needle:?}"), || async { Ok(proc.logs().contains(needle)) })
        .await
        .with_context(|| proc.logs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_without_its_control_plane_serves_its_sealed_snapshot() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    cluster.start_control_plane().await?;
    let region = cluster.start_region_with_key("East US", ENDPOINT_KEY).await?;
    let state = cluster.dir.path().join("state");
    std::fs::create_dir(&state)?;
    let file: PathBuf = state.join("snapshot.sealed");
    let key_file = cluster.dir.path().join("snapshot.key");
    std::fs::write(&key_file, format!("{SNAPSHOT_KEY}\n"))?;
    let snapshot_env = |key: (&'static str, String)| {
        vec![("MODELGW_SNAPSHOT_FILE", file.display().to_string()), key]
    };

    // Every data plane's log, for the leak check at the end.
    let mut logs = String::new();

    // 1. A data plane with its control plane applies the configuration and saves it.
    let mut dp =
        data_plane(&cluster, &snapshot_env(("MODELGW_SNAPSHOT_KEY", SNAPSHOT_KEY.into()))).await?;
    let admin = cluster.admin();
    let endpoint = admin.create_endpoint("gpt-4o-mini-eastus", &cluster.regions[region]).await?;
    let gateway = admin.create_gateway("gpt-4o-mini", &[endpoint]).await?;
    let gateway_key = admin.create_key(&gateway).await?;
    let version = admin.config_version().await?;
    admin.wait_for_applied(&[NODE], version, DEADLINE).await?;
    let (status, _, body) = chat(dp.field("gateway"), &gateway_key, "gpt-4o-mini").await?;
    assert_eq!(status, 200, "{body}");
    wait_until("the file holds the applied version", || async {
        Ok(std::fs::read(&file).ok().and_then(|f| header(&f)).map(|(v, _)| v) == Some(version))
    })
    .await?;
    assert!(dp.logs().contains("snapshot saved to disk, sealed"), "{}", dp.logs());

    // 2. Both stop. The file is private and holds no key in plaintext.
    dp.stop().await;
    logs.push_str(&dp.logs());
    cluster.stop_control_plane().await;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
    let sealed = std::fs::read(&file)?;
    assert!(!contains(&sealed, ENDPOINT_KEY.as_bytes()), "the endpoint key is in the file");
    assert!(!contains(&sealed, b"azkey-"), "part of the endpoint key is in the file");
    assert!(!contains(&sealed, gateway_key.as_bytes()), "the gateway key is in the file");
    assert!(!contains(&sealed, b"gpt-4o-mini"), "names are sealed too");
    let names: Vec<_> = std::fs::read_dir(&state)?.map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["snapshot.sealed"], "no temp file left");

    // 3. The data plane alone (the key from a file this time): serves the sealed snapshot.
    let dp =
        data_plane(&cluster, &snapshot_env(("MODELGW_SNAPSHOT_KEY_FILE", path(&key_file)))).await?;
    let gateway_url = dp.field("gateway").to_owned();
    let (status, body) = readyz(&gateway_url).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with(&format!("ready (stale snapshot from disk, version {version}, age ")),
        "{body}"
    );
    assert_eq!(gauge(&dp, "modelgw_snapshot_stale").await?, 1.0);
    let calls = cluster.regions[region].calls();
    let (status, headers, body) = chat(&gateway_url, &gateway_key, "gpt-4o-mini").await?;
    assert_eq!(status, 200, "the mock region checks the api-key: {body}");
    assert_eq!(headers.get("x-modelgw-endpoint").unwrap(), "gpt-4o-mini-eastus");
    assert_eq!(cluster.regions[region].calls(), calls + 1);
    assert!(dp.logs().contains("serving the snapshot saved on disk (stale)"), "{}", dp.logs());

    // 4. The control plane comes back: its snapshot replaces the stale one.
    cluster.start_control_plane().await?;
    wait_until("stale goes to 0", || async {
        Ok(gauge(&dp, "modelgw_snapshot_stale").await? == 0.0)
    })
    .await?;
    assert_eq!(readyz(&gateway_url).await?, (200, "ready\n".to_owned()));
    wait_for_log(&dp, "the control plane's snapshot replaced the one loaded from disk").await?;
    logs.push_str(&dp.logs());
    drop(dp);
    cluster.stop_control_plane().await;

    // 5. The wrong key: not served, and the log says why.
    let dp =
        data_plane(&cluster, &snapshot_env(("MODELGW_SNAPSHOT_KEY", WRONG_KEY.into()))).await?;
    assert_eq!(readyz(dp.field("gateway")).await?.0, 503);
    wait_for_log(&dp, "wrong MODELGW_SNAPSHOT_KEY").await?;
    logs.push_str(&dp.logs());
    drop(dp);

    // 6. Older than the maximum age (1 s): not served, and the log says why.
    let confirmed = header(&std::fs::read(&file)?).context("a header")?.1;
    wait_until("the file is older than 1 s", || async { Ok(now_unix_ms() - confirmed > 1_500) })
        .await?;
    let mut env = snapshot_env(("MODELGW_SNAPSHOT_KEY", SNAPSHOT_KEY.into()));
    env.push(("MODELGW_SNAPSHOT_MAX_AGE", "1s".into()));
    let dp = data_plane(&cluster, &env).await?;
    assert_eq!(readyz(dp.field("gateway")).await?.0, 503);
    wait_for_log(&dp, "too old").await?;
    assert!(dp.logs().contains("MODELGW_SNAPSHOT_MAX_AGE"), "{}", dp.logs());
    logs.push_str(&dp.logs());
    drop(dp);

    // 7. A snapshot file without a key stops the start with a clear message.
    let err = data_plane(&cluster, &[("MODELGW_SNAPSHOT_FILE", path(&file))]).await.err();
    let err = err.context("a data plane with a snapshot file but no key started")?.to_string();
    assert!(err.contains("no key seals it"), "{err}");

    logs.push_str(&cluster.all_logs());
    assert!(!logs.contains(ENDPOINT_KEY), "an endpoint key reached a log");
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
