//! Azure discovery jobs across control-plane replicas (issue #15, item 3): two admin APIs over
//! one database, on SQLite and on PostgreSQL. Each replica runs on a Tokio runtime of its own,
//! so a test can kill one outright (`shutdown_background`: its tasks vanish mid-run, as in a
//! crash) while the other keeps answering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use modelgw_admin_api::{AdminState, AzureImport, AzureImportConfig, JobHeartbeat, router};
use modelgw_control_plane::store::DiscoveryJobState;
use modelgw_control_plane::{Distribution, DistributionSettings, MasterKey, Store};
use modelgw_mock_arm::{ArmMock, TokenMock, actions};
use modelgw_model::Credential;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Connection as _, Row as _};
use tower::ServiceExt;

use crate::azure::{account, inventory, list_keys_calls, mocks};
use crate::harness::{ADMIN_TOKEN, CLIENT_ADDR, Reply, WAIT};

/// Short enough that a test of a dead replica takes about a second, long enough (ten missed
/// heartbeats) that a loaded CI machine never fails a live job.
const HEARTBEAT: JobHeartbeat =
    JobHeartbeat { every: Duration::from_millis(100), stale_after: Duration::from_secs(1) };

/// The PostgreSQL server the tests create their databases on (as the store tests do).
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const POSTGRES_URL_ENV: &str = "MODELGW_TEST_POSTGRES_URL";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One database both replicas open; dropped (PostgreSQL) or deleted (SQLite) afterwards.
struct Database {
    url: String,
    master_key: MasterKey,
    sqlite_path: Option<std::path::PathBuf>,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl Database {
    async fn new(backend: Backend) -> Database {
        sqlx::any::install_default_drivers();
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("modelgw.db");
                Database {
                    url: format!("sqlite://{}", path.display()),
                    master_key: MasterKey::generate(),
                    sqlite_path: Some(path),
                    _dir: Some(dir),
                    postgres: None,
                }
            }
            Backend::Postgres => {
                let server =
                    std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
                let mut conn = sqlx::AnyConnection::connect(&server)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL unreachable at {server}: {e}"));
                let name = format!("modelgw_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("CREATE DATABASE");
                let _ = conn.close().await;
                let mut url = url::Url::parse(&server).expect("PostgreSQL URL");
                url.set_path(&format!("/{name}"));
                Database {
                    url: url.to_string(),
                    master_key: MasterKey::generate(),
                    sqlite_path: None,
                    _dir: None,
                    postgres: Some((server, name)),
                }
            }
        }
    }

    async fn drop_database(&self) {
        if let Some((server, name)) = &self.postgres
            && let Ok(mut conn) = sqlx::AnyConnection::connect(server).await
        {
            let _ =
                sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&mut conn)
                    .await;
        }
    }

    /// Every stored discovery job's columns as text (what a database dump would show).
    async fn stored_jobs_text(&self) -> String {
        let url = match &self.sqlite_path {
            Some(_) => format!("{}?mode=rw", self.url),
            None => self.url.clone(),
        };
        let mut conn = sqlx::AnyConnection::connect(&url).await.expect("raw connection");
        let rows = sqlx::query(
            "SELECT id, instance_id, host, state, progress, error, report FROM discovery_jobs",
        )
        .fetch_all(&mut conn)
        .await
        .expect("raw select");
        let mut text = String::new();
        for row in rows {
            for column in ["id", "instance_id", "host", "state", "progress", "error", "report"] {
                let value: Option<String> = row.get(column);
                text.push_str(&value.unwrap_or_default());
                text.push('\n');
            }
        }
        text
    }
}

/// A control-plane replica's admin API on a runtime of its own.
struct Replica {
    runtime: Option<tokio::runtime::Runtime>,
    router: Router,
    store: Store,
    host: String,
    _distribution: Distribution,
}

impl Replica {
    async fn start(db: &Database, azure: AzureImportConfig) -> Replica {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("replica runtime");
        let (url, key) = (db.url.clone(), db.master_key.clone());
        let (router, store, host, distribution) = runtime
            .spawn(async move {
                let store = Store::connect(&url, key).await.expect("store opens");
                let distribution = Distribution::start(
                    store.clone(),
                    DistributionSettings {
                        poll_interval: Duration::from_secs(3600),
                        ..Default::default()
                    },
                )
                .await
                .expect("distribution starts");
                let azure = AzureImport::new(azure).with_heartbeat(HEARTBEAT);
                let host = azure.replica().host.clone();
                let state = AdminState {
                    store: store.clone(),
                    changes: distribution.changes(),
                    registry: distribution.registry(),
                    admin_token_sha256: Sha256::digest(ADMIN_TOKEN.as_bytes()).into(),
                    bearer_verifier: None,
                    azure,
                };
                let client: SocketAddr = CLIENT_ADDR.parse().expect("address");
                (router(state).layer(MockConnectInfo(client)), store, host, distribution)
            })
            .await
            .expect("replica starts");
        Replica { runtime: Some(runtime), router, store, host, _distribution: distribution }
    }

    /// A request with the admin token, served on this replica's runtime (so whatever it
    /// spawns, a discovery job above all, runs there).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"));
        let body = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let request = builder.body(body).expect("request");
        let router = self.router.clone();
        let runtime = self.runtime.as_ref().expect("the replica is running");
        runtime
            .spawn(async move {
                let response = router.oneshot(request).await.expect("infallible");
                let status = response.status();
                let headers = response.headers().clone();
                let bytes = response.into_body().collect().await.expect("body").to_bytes();
                let text = String::from_utf8(bytes.to_vec()).expect("UTF-8 body");
                Reply { status, headers, text }
            })
            .await
            .expect("request task")
    }

    async fn get(&self, path: &str) -> Value {
        self.call(Method::GET, path, None).await.expect(StatusCode::OK).json()
    }

    /// Stops the replica as a crash would: its runtime and every task on it (the running
    /// discovery, its heartbeat) vanish without writing anything.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a discovery on `replica`; returns its path.
async fn start_discovery(replica: &Replica) -> String {
    let started = replica
        .call(Method::POST, "/api/v1/azure/discoveries", None)
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(started.json()["status"], "running");
    started.headers.get("location").and_then(|v| v.to_str().ok()).expect("location").to_owned()
}

/// Every account key the ARM mock hands out now.
fn mock_keys(arm: &ArmMock) -> Vec<String> {
    arm.inventory()
        .subscriptions
        .iter()
        .flat_map(|s| s.accounts.iter())
        .flat_map(|a| [a.key1.clone(), a.key2.clone()])
        .collect()
}

/// Runs `scenario` on a fresh database of `backend`, then drops the database (also when the
/// scenario panicked, whose panic is then resumed).
async fn on<F: Future<Output = ()> + Send + 'static>(
    backend: Backend,
    scenario: impl FnOnce(Arc<Database>) -> F,
) {
    let db = Arc::new(Database::new(backend).await);
    let outcome = tokio::spawn(scenario(db.clone())).await;
    db.drop_database().await;
    if let Err(e) = outcome
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_is_seen_and_imported_through_another_replica_sqlite() {
    on(Backend::Sqlite, seen_and_imported_through_another_replica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_is_seen_and_imported_through_another_replica_postgres() {
    on(Backend::Postgres, seen_and_imported_through_another_replica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_whose_replica_dies_is_failed_by_another_sqlite() {
    on(Backend::Sqlite, failed_by_another_when_its_replica_dies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_whose_replica_dies_is_failed_by_another_postgres() {
    on(Backend::Postgres, failed_by_another_when_its_replica_dies).await;
}

/// A discovery started on A is followed on B — while running (its progress, even through a
/// pause longer than the heartbeat bound: heartbeats keep it alive) and finished (the same
/// report A shows) — and B imports from it with a `listKeys` of its own. No account key is
/// stored with the job.
async fn seen_and_imported_through_another_replica(db: Arc<Database>) {
    let db = &*db;
    let (tokens, arm, config): (TokenMock, ArmMock, AzureImportConfig) = mocks(inventory()).await;
    let (locked, _) = account(arm.inventory(), "aoai-locked");
    arm.forbid(&locked, actions::DEPLOYMENTS_READ);
    // One account's deployments wait out a 429 twice the heartbeat bound: the job makes no
    // progress for 2 s and must still be running, not failed.
    let (ptu, _) = account(arm.inventory(), "aoai-ptu");
    arm.throttle_once(&format!("{ptu}/deployments"), 2);
    let a = Replica::start(db, config.clone()).await;
    let b = Replica::start(db, config).await;

    let path = start_discovery(&a).await;
    let started = Instant::now();
    let mut saw_progress = false;
    let from_b = loop {
        let body = b.get(&path).await;
        match body["status"].as_str() {
            Some("running") => {
                assert_eq!(body["started_by"]["host"], a.host.as_str(), "{body}");
                if body["progress"]["subscriptions_scanned"] == 2 {
                    saw_progress = true;
                }
            }
            Some("succeeded") => break body,
            _ => panic!("the discovery did not succeed: {body}"),
        }
        assert!(started.elapsed() < WAIT, "still running after {WAIT:?}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(saw_progress, "B saw A's progress while the job ran");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the throttled account held the job for its Retry-After"
    );
    assert_eq!(from_b["progress"]["accounts_scanned"], 3, "{from_b}");
    let deployments = from_b["deployments"].as_array().expect("deployments");
    assert_eq!(deployments.len(), 3, "{from_b}");
    assert_eq!(from_b["errors"].as_array().expect("errors").len(), 1, "the 403: {from_b}");
    assert_eq!(from_b["errors"][0]["scope"], locked.as_str());
    let from_a = a.get(&path).await;
    assert_eq!(from_a, from_b, "both replicas give the same answer");

    // Import through B: B reads the keys itself (A's client never held them for it).
    let ids: Vec<String> =
        deployments.iter().map(|d| d["id"].as_str().expect("id").to_owned()).collect();
    let list_keys_before = list_keys_calls(&arm);
    let reply = b
        .call(Method::POST, "/api/v1/azure/imports", Some(json!({"deployment_ids": ids})))
        .await
        .expect(StatusCode::OK);
    let imported = reply.json();
    assert_eq!(imported["created"].as_array().expect("created").len(), 3, "{imported}");
    assert_eq!(list_keys_calls(&arm), list_keys_before + 2, "one listKeys per account");
    let snapshot = a.store.load_snapshot().await.expect("snapshot");
    let ptu_endpoint =
        snapshot.endpoints.iter().find(|e| e.name == "aoai-ptu-gpt-4o-ptu").expect("imported");
    let Credential::ApiKey(key) = &ptu_endpoint.credential else { panic!("an api-key endpoint") };
    let (_, ptu_account) = account(arm.inventory(), "aoai-ptu");
    assert_eq!(key.expose(), ptu_account.key1);
    // Both replicas now mark the deployments as imported.
    let marked = a.get(&path).await;
    assert!(
        marked["deployments"]
            .as_array()
            .expect("deployments")
            .iter()
            .all(|d| d["endpoint_id"].is_string()),
        "{marked}"
    );

    // No account key anywhere in the stored jobs, nor (SQLite) in the database files, where
    // the imported keys are sealed.
    let keys = mock_keys(&arm);
    let stored = db.stored_jobs_text().await;
    assert!(stored.contains("aoai-ptu"), "the report is stored: {stored}");
    for k in &keys {
        assert!(!stored.contains(k.as_str()), "an account key is stored with the job");
        assert!(!reply.text.contains(k.as_str()));
    }
    if let Some(path) = &db.sqlite_path {
        for file in [path.clone(), path.with_extension("db-wal")] {
            let Ok(bytes) = std::fs::read(&file) else { continue };
            for k in &keys {
                assert!(
                    !bytes.windows(k.len()).any(|w| w == k.as_bytes()),
                    "an account key is in {}",
                    file.display()
                );
            }
        }
    }
    drop(tokens);
}

/// A discovery stalls on A (a 429 with a long Retry-After), A dies; B shows it running with
/// A's last progress until the heartbeat bound passes, then failed naming A's host — and it
/// stays failed, in the database too.
async fn failed_by_another_when_its_replica_dies(db: Arc<Database>) {
    let db = &*db;
    let (_tokens, arm, config) = mocks(inventory()).await;
    let (ptu, _) = account(arm.inventory(), "aoai-ptu");
    let stalled = format!("{ptu}/deployments");
    arm.throttle_once(&stalled, 50);
    let mut a = Replica::start(db, config.clone()).await;
    let b = Replica::start(db, config.clone()).await;

    let path = start_discovery(&a).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let body = b.get(&path).await;
        assert_eq!(body["status"], "running", "{body}");
        // Stalled: the throttled account is the only one left.
        if body["progress"]["accounts_scanned"] == 2 && arm.calls(&stalled) == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the discovery never stalled: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    a.kill();
    let killed = Instant::now();
    let failed = loop {
        let body = b.get(&path).await;
        if body["status"] != "running" {
            break body;
        }
        assert!(
            killed.elapsed() < HEARTBEAT.stale_after + Duration::from_secs(5),
            "still running long after its replica died: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = killed.elapsed();
    eprintln!("failed {after:?} after its replica died (bound {:?})", HEARTBEAT.stale_after);
    assert!(
        after >= HEARTBEAT.stale_after - HEARTBEAT.every * 2,
        "failed before the heartbeat bound: {after:?}"
    );
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["finished_at"].is_string(), "{failed}");
    assert_eq!(failed["progress"]["accounts_scanned"], 2, "A's last progress: {failed}");
    let errors = failed["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{failed}");
    assert_eq!(errors[0]["scope"], "control_plane");
    let message = errors[0]["message"].as_str().expect("message");
    assert_eq!(
        message,
        format!(
            "the control-plane replica running this discovery stopped ({}); start it again",
            a.host
        )
    );

    // It stays failed: in the database, on B, and on a replica started afterwards.
    let stored = b
        .store
        .discovery_job(uuid::Uuid::parse_str(path.rsplit('/').next().expect("id")).expect("uuid"))
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(stored.state, DiscoveryJobState::Failed);
    tokio::time::sleep(HEARTBEAT.every * 3).await;
    assert_eq!(b.get(&path).await, failed);
    let c = Replica::start(db, config).await;
    assert_eq!(c.get(&path).await, failed);
    // Nothing of it can be imported.
    let reply = c
        .call(
            Method::POST,
            "/api/v1/azure/imports",
            Some(json!({"deployment_ids": [format!("{ptu}/deployments/gpt-4o-ptu")]})),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["deployment_ids[0]"]);
}
