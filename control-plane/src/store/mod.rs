//! The configuration store. Every mutating call commits in one transaction that also bumps
//! the configuration version, and returns the version it committed.
//!
//! One code path serves SQLite and PostgreSQL: sqlx's `Any` driver with runtime queries
//! (`$1` placeholders work on both), column types both decode the same way (TEXT ids, BIGINT
//! unix-millisecond timestamps, 0/1 integers for booleans, BLOB/BYTEA hashes) and one
//! migration folder per backend.
//!
//! The version bump is the FIRST statement of every write transaction: on PostgreSQL its row
//! lock serialises writers (so versions commit in order and checks made inside the
//! transaction cannot race), on SQLite it takes the write lock at once (so a deferred
//! transaction never has to upgrade its lock, which `busy_timeout` cannot resolve).
//!
//! Every mutating call also takes an [`AuditContext`] and writes the change's audit row in the
//! same transaction (`audit.rs`): a change that rolls back leaves no audit row.
//!
//! CONTRACT (shared with `modelgw-admin-api`): the public signatures here are fixed.

mod api_tokens;
mod audit;
mod azure_import;
mod data_plane_tokens;
mod discovery_jobs;
mod endpoints;
mod gateways;
mod health;
mod keys;
mod leases;
mod snapshot;
mod traces;
mod usage;

use std::time::Duration;

use chrono::{DateTime, Utc};
use modelgw_model::keys::{KeyLimitPolicy, KeyLimits};
use modelgw_model::{
    ConfigVersion, EndpointId, GatewayId, GatewayKeyId, GatewayMember, Platform, RoutingPolicy,
    Secret,
};
use sqlx::any::{Any, AnyPoolOptions};
use sqlx::error::ErrorKind;
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Transaction};
use tracing::Instrument as _;

use crate::MasterKey;
use crate::metrics::{ControlPlaneMetrics, StoreOperation};

pub use api_tokens::{API_TOKEN_PREFIX, ApiTokenRecord, NewApiToken};
pub use audit::{AuditAction, AuditContext, AuditEntity, AuditEntry, AuditQuery};
pub use azure_import::{AzureEndpointRecord, AzureImportItem, AzureImportOutcome};
pub use data_plane_tokens::{ActiveDataPlaneToken, DataPlaneTokenId, DataPlaneTokenRecord};
pub use discovery_jobs::{
    DiscoveryJobOutcome, DiscoveryJobRecord, DiscoveryJobState, DiscoveryReplica,
};
pub use health::EndpointHealthRecord;
pub use keys::LAST_USED_PRECISION_MS;
pub use leases::LeaseRequest;
pub use traces::{
    DEFAULT_TRACE_MAX_COUNT, DEFAULT_TRACE_RETENTION_DAYS, GatewayTraces, MAX_TRACE_MAX_COUNT,
    MAX_TRACE_RETENTION_DAYS, StatusFilter, StoredTrace, TraceCursor, TraceId, TracePage,
    TraceQuery, TraceRetention,
};
pub use usage::{KeyUsageRow, KeyWindowUsage, USAGE_RETENTION, usage_retention};

/// Which database the store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// An Inference Endpoint as the admin API shows it: never the key, only its hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    pub id: EndpointId,
    pub name: String,
    pub platform: Platform,
    /// Base URL of the upstream resource (admin API field `endpoint`).
    pub endpoint: url::Url,
    pub deployment: String,
    pub model_name: String,
    pub model_version: String,
    pub region: String,
    pub auth: AuthMode,
    /// e.g. `…a1b2`; empty in [`AuthMode::Entra`].
    pub api_key_hint: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A validated new endpoint (the admin API validated formats; the store enforces uniqueness).
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    pub name: String,
    pub platform: Platform,
    pub endpoint: url::Url,
    pub deployment: String,
    pub model_name: String,
    pub model_version: String,
    pub region: String,
    pub auth: EndpointAuth,
}

/// How the data plane authenticates to an endpoint (stored as `auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// The stored, sealed API key.
    #[default]
    ApiKey,
    /// The data plane's own Microsoft Entra ID token; no key is stored.
    Entra,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::ApiKey => "api_key",
            AuthMode::Entra => "entra",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "api_key" => Some(AuthMode::ApiKey),
            "entra" => Some(AuthMode::Entra),
            _ => None,
        }
    }
}

/// An endpoint's credential as written: a key to seal, or Entra ID (nothing to store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointAuth {
    ApiKey(Secret),
    Entra,
}

impl EndpointAuth {
    pub fn mode(&self) -> AuthMode {
        match self {
            EndpointAuth::ApiKey(_) => AuthMode::ApiKey,
            EndpointAuth::Entra => AuthMode::Entra,
        }
    }
}

/// A partial update: `None` leaves the field as it is.
#[derive(Clone, Debug, Default)]
pub struct EndpointPatch {
    pub name: Option<String>,
    pub platform: Option<Platform>,
    pub endpoint: Option<url::Url>,
    pub deployment: Option<String>,
    pub model_name: Option<String>,
    pub model_version: Option<String>,
    pub region: Option<String>,
    /// A new credential (switches mode, or rotates the key in `api_key` mode).
    pub auth: Option<EndpointAuth>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRecord {
    pub id: GatewayId,
    pub name: String,
    /// In the order they were given.
    pub members: Vec<GatewayMember>,
    pub routing: RoutingPolicy,
    /// What its data planes trace, and how long the traces are kept.
    pub traces: GatewayTraces,
    /// How data planes enforce the limits of this gateway's keys.
    pub key_limits: KeyLimitPolicy,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default)]
pub struct NewGateway {
    pub name: String,
    pub members: Vec<GatewayMember>,
    /// `RoutingPolicy::default()` for today's behaviour (weighted, no waiting, default deadline).
    pub routing: RoutingPolicy,
    /// `GatewayTraces::default()`: nothing traced.
    pub traces: GatewayTraces,
    /// `KeyLimitPolicy::default()`: the data plane's default reservation, fail open.
    pub key_limits: KeyLimitPolicy,
}

#[derive(Clone, Debug, Default)]
pub struct GatewayPatch {
    pub name: Option<String>,
    /// Replaces the whole member list when present.
    pub members: Option<Vec<GatewayMember>>,
    /// Replaces the whole routing policy when present.
    pub routing: Option<RoutingPolicy>,
    /// Replaces the whole trace settings when present.
    pub traces: Option<GatewayTraces>,
    /// Replaces the whole key-limit policy when present.
    pub key_limits: Option<KeyLimitPolicy>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayKeyRecord {
    pub id: GatewayKeyId,
    pub gateway_id: GatewayId,
    pub name: String,
    /// Last four characters of the secret, e.g. `…9f3c`.
    pub hint: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key above this one in the gateway's key tree; `None` for a root key.
    pub parent_id: Option<GatewayKeyId>,
    /// After this, data planes refuse the key; `None` = never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When data planes last reported a request with this key (to the minute); `None` =
    /// never.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Limits on the key's subtree; `KeyLimits::default()` = none.
    pub limits: KeyLimits,
}

/// A validated new gateway key (the admin API validated formats; the store checks the parent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewGatewayKey {
    pub name: String,
    /// An active key of the same gateway, at most `MAX_KEY_DEPTH` levels below a root.
    pub parent_id: Option<GatewayKeyId>,
    pub expires_at: Option<DateTime<Utc>>,
    pub limits: KeyLimits,
}

impl NewGatewayKey {
    /// A root key without expiry or limits.
    pub fn named(name: impl Into<String>) -> NewGatewayKey {
        NewGatewayKey { name: name.into(), ..NewGatewayKey::default() }
    }
}

/// A partial update of a key: `None` leaves the field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayKeyPatch {
    pub name: Option<String>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// `Some(KeyLimits::default())` removes every limit.
    pub limits: Option<KeyLimits>,
}

impl GatewayKeyPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.expires_at.is_none() && self.limits.is_none()
    }
}

/// Store failures. Messages name the field and never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    /// A uniqueness rule was violated, e.g. `field = "name"`.
    #[error("{field}: {reason}")]
    Conflict { field: String, reason: String },
    /// A field names something the store cannot accept (e.g. `parent_id` names a revoked key);
    /// the admin API answers 422 naming `field`.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A gateway member names an endpoint that does not exist; `field` is e.g. `endpoints[1].endpoint_id`.
    #[error("{field}: unknown inference endpoint {endpoint_id}")]
    UnknownEndpoint { field: String, endpoint_id: EndpointId },
    /// The endpoint is a member of these gateways (by name); delete with force to remove it from them.
    #[error("inference endpoint is used by gateways: {}", gateways.join(", "))]
    InUse { gateways: Vec<String> },
    #[error("secret could not be decrypted or encrypted: {0}")]
    Crypto(String),
    /// The stored configuration breaks a snapshot rule (it was written around the admin API
    /// or by a bug): nothing is published until it is fixed.
    #[error("the stored configuration is not a valid snapshot: {0}")]
    InvalidSnapshot(#[from] modelgw_model::InvalidSnapshot),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

/// The configuration store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    master_key: MasterKey,
    /// The control plane's metrics: store operations are timed here, and every component
    /// that holds the store counts its events in the same instruments.
    metrics: ControlPlaneMetrics,
    /// PostgreSQL: the URL a `LISTEN` connection for other replicas' changes opens
    /// (`distribution/notify.rs`). Holds the password, if any: never logged.
    listen_url: Option<std::sync::Arc<str>>,
    /// The endpoint keys the last snapshot load opened, with their sealed form: the next load
    /// reuses a key whose sealed form is unchanged instead of decrypting it again (at 10,000
    /// endpoints the decryption was ~13 % of a build). Holds nothing the published snapshot
    /// does not already hold in memory.
    opened_keys: std::sync::Arc<std::sync::Mutex<snapshot::OpenedKeys>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

/// Migrations per backend: the schemas are equivalent, only the SQL dialect differs.
static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a SQLite connection waits for another writer's lock before failing with
/// SQLITE_BUSY. Config writes are tiny and rare, so 5 s only runs out if something is stuck.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;
/// SQLite allows one writer at a time; a few connections let reads (snapshot loads, admin
/// lists) proceed next to it in WAL mode without a large pool of idle file handles.
const SQLITE_MAX_CONNECTIONS: u32 = 4;
/// Connections to PostgreSQL: the control plane's load is a few admin calls and one snapshot
/// load per change per replica, so a small pool leaves server slots for other replicas.
const POSTGRES_MAX_CONNECTIONS: u32 = 8;
/// How long a store call waits for a pooled connection before failing, instead of hanging
/// an admin request forever when the database is unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Key of the admin token hash in the `settings` table.
pub(crate) const ADMIN_TOKEN_SETTING: &str = "admin_token_sha256";

impl Store {
    /// Connects and runs migrations. `sqlite:` URLs create the file if missing; `postgres://`
    /// URLs use PostgreSQL.
    pub async fn connect(url: &str, master_key: MasterKey) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(url)?;
        let span = tracing::info_span!("store.connect", backend = ?backend);
        async move {
            let (url, options) = match backend {
                Backend::Sqlite => {
                    let (url, in_memory) = sqlite_url(url);
                    let options = if in_memory {
                        // Every connection to `:memory:` is a separate database: keep exactly
                        // one, forever, so the data lives as long as the store.
                        AnyPoolOptions::new()
                            .max_connections(1)
                            .min_connections(1)
                            .idle_timeout(None)
                            .max_lifetime(None)
                    } else {
                        AnyPoolOptions::new().max_connections(SQLITE_MAX_CONNECTIONS)
                    };
                    (url, options.after_connect(|conn, _| Box::pin(sqlite_pragmas(conn))))
                }
                Backend::Postgres => (
                    url.to_owned(),
                    AnyPoolOptions::new().max_connections(POSTGRES_MAX_CONNECTIONS),
                ),
            };
            let pool = options.acquire_timeout(ACQUIRE_TIMEOUT).connect(&url).await?;
            let migrator = match backend {
                Backend::Sqlite => &SQLITE_MIGRATOR,
                Backend::Postgres => &POSTGRES_MIGRATOR,
            };
            migrator.run(&pool).await?;
            let listen_url = (backend == Backend::Postgres).then(|| std::sync::Arc::from(url));
            let store = Store {
                pool,
                backend,
                master_key,
                metrics: ControlPlaneMetrics::default(),
                listen_url,
                opened_keys: Default::default(),
            };
            let version = store.config_version().await?;
            tracing::info!(config_version = %version, "configuration store open");
            Ok(store)
        }
        .instrument(span)
        .await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// PostgreSQL: where to `LISTEN` for the changes other replicas commit; `None` on SQLite
    /// (one process owns the file).
    pub(crate) fn listen_url(&self) -> Option<&str> {
        self.listen_url.as_deref()
    }

    /// The control plane's metrics (one set per store, shared by its clones).
    pub fn metrics(&self) -> &ControlPlaneMetrics {
        &self.metrics
    }

    /// Closes the connection pool; later calls fail. For orderly shutdown and for tests that
    /// reopen the same database.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The committed version; one cheap query (the publisher polls it).
    #[tracing::instrument(name = "store.config_version", skip_all, level = "debug")]
    pub async fn config_version(&self) -> Result<ConfigVersion, StoreError> {
        let _timer = self.metrics.time_store(StoreOperation::ConfigVersion);
        let v: i64 = sqlx::query_scalar("SELECT version FROM config_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        version_from_db(v)
    }

    /// Begins a write transaction and bumps the version in it (see the module docs for why
    /// this comes first). Dropping the transaction without `commit` rolls both back.
    async fn begin_write(&self) -> Result<(Transaction<'static, Any>, ConfigVersion), StoreError> {
        let mut tx = self.pool.begin().await?;
        let v: i64 = sqlx::query_scalar(
            "UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok((tx, version_from_db(v)?))
    }

    /// Begins a read transaction that sees one consistent state of the whole database.
    async fn begin_read(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            // READ COMMITTED (the default) would let each statement see a different commit.
            Backend::Postgres => {
                self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?
            }
            // In WAL mode a read transaction keeps the snapshot of its first read.
            Backend::Sqlite => self.pool.begin().await?,
        })
    }
}

impl Store {
    /// Commits a configuration change's write transaction and logs it with its new version.
    async fn commit(
        &self,
        tx: Transaction<'static, Any>,
        version: ConfigVersion,
        change: &'static str,
    ) -> Result<ConfigVersion, StoreError> {
        {
            let _timer = self.metrics.time_store(StoreOperation::ConfigCommit);
            tx.commit().await?;
        }
        tracing::info!(config_version = %version, change, "config change committed");
        Ok(version)
    }
}

fn backend_of(url: &str) -> Result<Backend, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        // The URL itself is not repeated: it may carry a password.
        Err(StoreError::Database(sqlx::Error::Configuration(
            "unsupported database URL: use sqlite:<path> or postgres://…".into(),
        )))
    }
}

/// Makes a file-backed `sqlite:` URL create its file when missing (`mode=rwc`) unless the
/// URL chooses a mode itself. Returns the URL and whether it names an in-memory database.
fn sqlite_url(url: &str) -> (String, bool) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mode = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.into_owned());
    let in_memory = path.ends_with(":memory:") || mode.as_deref() == Some("memory");
    if in_memory || mode.is_some() {
        return (url.to_owned(), in_memory);
    }
    let sep = if query.is_empty() { "?" } else { "&" };
    let url = url.strip_suffix('?').unwrap_or(url);
    (format!("{url}{sep}mode=rwc"), false)
}

/// Per-connection SQLite settings. The Any driver only takes a URL, which cannot carry
/// pragmas, so they are set here on every new connection.
async fn sqlite_pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    // Foreign keys are off by default in SQLite and are per connection.
    sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
    sqlx::query(AssertSqlSafe(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")))
        .execute(&mut *conn)
        .await?;
    // WAL: readers (snapshot loads) never block the writer, and a crash cannot corrupt the
    // database. Persistent in the file; an in-memory database answers `memory` and stays so.
    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
    Ok(())
}

fn version_from_db(v: i64) -> Result<ConfigVersion, StoreError> {
    u64::try_from(v)
        .map(ConfigVersion)
        .map_err(|_| decode_error("config_version.version", format!("negative version {v}")))
}

/// The current time, truncated to what the database stores (milliseconds), so a record
/// returned by a write equals the one read back later.
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn time_from_db(column: &str, ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| decode_error(column, format!("timestamp out of range: {ms}")))
}

fn decode_error(column: &str, reason: impl Into<String>) -> StoreError {
    let reason: String = reason.into();
    StoreError::Database(sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: reason.into(),
    })
}

fn parse_column<T: std::str::FromStr>(column: &str, value: &str) -> Result<T, StoreError> {
    value.parse().map_err(|_| decode_error(column, format!("invalid value {value:?}")))
}

/// The kind of a database error, when the statement was rejected by a constraint.
fn constraint_kind(e: &sqlx::Error) -> Option<ErrorKind> {
    match e {
        sqlx::Error::Database(db) => Some(db.kind()),
        _ => None,
    }
}

/// Maps a unique-constraint violation to `Conflict` on `field`; other errors pass through.
fn conflict_on_unique(e: sqlx::Error, field: &str, reason: impl Into<String>) -> StoreError {
    if constraint_kind(&e) == Some(ErrorKind::UniqueViolation) {
        StoreError::Conflict { field: field.to_owned(), reason: reason.into() }
    } else {
        StoreError::Database(e)
    }
}

fn u32_from_db(column: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| decode_error(column, format!("out of range: {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_create_the_database_unless_a_mode_is_chosen() {
        assert_eq!(sqlite_url("sqlite://data/m.db"), ("sqlite://data/m.db?mode=rwc".into(), false));
        assert_eq!(
            sqlite_url("sqlite:m.db?cache=private"),
            ("sqlite:m.db?cache=private&mode=rwc".into(), false)
        );
        assert_eq!(sqlite_url("sqlite://m.db?mode=ro"), ("sqlite://m.db?mode=ro".into(), false));
        assert_eq!(sqlite_url("sqlite::memory:"), ("sqlite::memory:".into(), true));
        assert_eq!(sqlite_url("sqlite://?mode=memory"), ("sqlite://?mode=memory".into(), true));
    }

    #[test]
    fn backends_follow_the_url_scheme_and_errors_do_not_repeat_the_url() {
        assert_eq!(backend_of("sqlite://x.db").ok(), Some(Backend::Sqlite));
        assert_eq!(backend_of("postgres://u:p@h/db").ok(), Some(Backend::Postgres));
        assert_eq!(backend_of("postgresql://h/db").ok(), Some(Backend::Postgres));
        let err = backend_of("mysql://user:hunter2@h/db").expect_err("unsupported");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn an_in_memory_store_keeps_its_data_across_calls() {
        let store = Store::connect("sqlite::memory:", MasterKey::generate()).await.expect("open");
        let (gw, v) = store
            .create_gateway(
                NewGateway {
                    name: "gw".into(),
                    members: vec![],
                    routing: RoutingPolicy::default(),
                    ..Default::default()
                },
                &AuditContext::system("test"),
            )
            .await
            .expect("create");
        assert_eq!(v, ConfigVersion(2));
        assert_eq!(store.get_gateway(gw.id).await.expect("get"), gw);
        assert_eq!(store.config_version().await.expect("version"), v);
    }
}
