//! Test harness shared by the store and distribution tests: a fresh database per test on
//! SQLite (a temporary file) or PostgreSQL (a new database on the test server), and a
//! runner that cleans up after a scenario even when it fails.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt as _;
use modelgw_control_plane::{MasterKey, Store};
use sqlx::{AssertSqlSafe, Connection as _};

/// The PostgreSQL server the tests create their databases on.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Environment variable that points the tests at another PostgreSQL server.
pub const POSTGRES_URL_ENV: &str = "MODELGW_TEST_POSTGRES_URL";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One test's private database and the master key its store uses.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub master_key: MasterKey,
    /// The SQLite database file, for tests that inspect its bytes.
    pub sqlite_path: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    /// Server URL and database name, to drop the database afterwards.
    postgres: Option<(String, String)>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                // A path in a directory that does not hold the file yet: the store creates it.
                let path = dir.path().join("modelgw.db");
                TestDb {
                    backend,
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
                let mut conn = sqlx::PgConnection::connect(&server).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL for the store tests is unreachable at {server}: {e}\n\
                         Start it (e.g. `psql -h 127.0.0.1 -U postgres -c 'select 1'` must work) \
                         or set {POSTGRES_URL_ENV} to a server where the user may CREATE DATABASE."
                    )
                });
                let name = format!("modelgw_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {server}: {e}"));
                let _ = conn.close().await;
                let mut url = url::Url::parse(&server).expect("PostgreSQL URL");
                url.set_path(&format!("/{name}"));
                TestDb {
                    backend,
                    url: url.to_string(),
                    master_key: MasterKey::generate(),
                    sqlite_path: None,
                    _dir: None,
                    postgres: Some((server, name)),
                }
            }
        }
    }

    /// Opens (or reopens) the store on this database.
    pub async fn open(&self) -> Store {
        Store::connect(&self.url, self.master_key.clone())
            .await
            .unwrap_or_else(|e| panic!("opening the {:?} store: {e}", self.backend))
    }

    /// A raw connection that bypasses the store, for checking what is really stored.
    pub async fn raw(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        let url = match self.backend {
            Backend::Sqlite => format!("{}?mode=rw", self.url),
            Backend::Postgres => self.url.clone(),
        };
        sqlx::AnyConnection::connect(&url).await.expect("raw database connection")
    }

    async fn cleanup(self) {
        if let Some((server, name)) = &self.postgres
            && let Ok(mut conn) = sqlx::PgConnection::connect(server).await
        {
            // FORCE: a failed scenario may have left a pool open.
            let _ =
                sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&mut conn)
                    .await;
        }
    }
}

/// Runs `scenario` on a fresh database of `backend`, then drops the database (also when the
/// scenario panicked, whose panic is then resumed).
pub async fn run(backend: Backend, scenario: impl AsyncFnOnce(&TestDb)) {
    let db = TestDb::new(backend).await;
    let outcome = AssertUnwindSafe(scenario(&db)).catch_unwind().await;
    db.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Polls `condition` until it holds or `within` passes; panics with `what` on timeout.
pub async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Declares one `#[tokio::test]` per backend for each scenario `async fn name(db: &TestDb)`:
/// `name::sqlite` and `name::postgres`. Use with `#[macro_use] mod common;`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                crate::common::run(crate::common::Backend::Sqlite, super::$scenario).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                crate::common::run(crate::common::Backend::Postgres, super::$scenario).await;
            }
        }
    )*};
}
