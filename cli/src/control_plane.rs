//! `modelgw control-plane`: wires the store, the admin API and snapshot distribution together.

use crate::stdout::out;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use modelgw_admin_api::{AdminState, AzureImport, AzureImportConfig};
use modelgw_control_plane::store::Backend;
use modelgw_control_plane::{Distribution, DistributionSettings, MasterKey, Store};
use tokio::net::TcpListener;

/// How often the publisher re-reads the configuration version, so that control-plane
/// replicas sharing one PostgreSQL see each other's changes. A local change is pushed at once;
/// this only bounds the delay for changes made through another replica.
const DEFAULT_CONFIG_POLL: &str = "1s";

/// [`modelgw_control_plane::DEFAULT_MAX_HEALTH_WINDOW`], as the flag's default text.
const DEFAULT_MAX_HEALTH_WINDOW: &str = "5m";

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Database URL: `sqlite://path/to/file.db` (created if missing) or `postgres://…`.
    #[arg(long, env = "MODELGW_DATABASE_URL", default_value = "sqlite://modelgw.db")]
    pub database_url: String,
    /// Listen address of the admin API (HTTP, JSON under /api/v1).
    #[arg(long, env = "MODELGW_ADMIN_ADDR", default_value = "127.0.0.1:4000")]
    pub admin_addr: SocketAddr,
    /// Listen address of the snapshot distribution service (gRPC) that data planes subscribe to.
    #[arg(long, env = "MODELGW_GRPC_ADDR", default_value = "127.0.0.1:4002")]
    pub grpc_addr: SocketAddr,
    /// Admin API bearer token. When unset, one is generated on first start, printed once, and
    /// only its hash is stored.
    #[arg(long, env = "MODELGW_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Base64 of the 32-byte master key that seals endpoint API keys at rest.
    #[arg(long, env = "MODELGW_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// File holding the base64 master key (alternative to MODELGW_MASTER_KEY). With SQLite and
    /// neither set, a development key is generated next to the database file.
    #[arg(long, env = "MODELGW_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// How often to poll the store for changes made by other control-plane replicas.
    #[arg(long, env = "MODELGW_CONFIG_POLL_INTERVAL", default_value = DEFAULT_CONFIG_POLL, value_parser = parse_duration)]
    pub config_poll_interval: Duration,
    /// The longest a data plane's health report can keep an endpoint out of the fleet (a
    /// longer `Retry-After` or window is capped; Azure's own are seconds to about a minute).
    #[arg(long, env = "MODELGW_MAX_HEALTH_WINDOW", default_value = DEFAULT_MAX_HEALTH_WINDOW, value_parser = parse_duration)]
    pub max_health_window: Duration,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?} (e.g. 500ms, 2s, 1m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?} (use ms, s or m)")),
    }
}

/// The file path of a `sqlite:` URL, if it is one (for placing the development master key).
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.starts_with(":memory:") {
        return None;
    }
    Some(PathBuf::from(path))
}

fn master_key(args: &Args) -> anyhow::Result<MasterKey> {
    if let Some(b64) = &args.master_key {
        return MasterKey::from_base64(b64).context("MODELGW_MASTER_KEY");
    }
    if let Some(path) = &args.master_key_file {
        return MasterKey::from_file(path).context("MODELGW_MASTER_KEY_FILE");
    }
    let Some(db) = sqlite_path(&args.database_url) else {
        anyhow::bail!(
            "a master key is required with this database: set MODELGW_MASTER_KEY (base64 of 32 \
             random bytes, e.g. `openssl rand -base64 32`) or MODELGW_MASTER_KEY_FILE"
        );
    };
    let dir = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let path = dir.join("modelgw-master.key");
    let (key, created) = MasterKey::load_or_generate(&path).context("development master key")?;
    if created {
        tracing::warn!(path = %path.display(), "generated a development master key for the embedded database; set MODELGW_MASTER_KEY in production and keep it out of the database backup");
    } else {
        tracing::info!(path = %path.display(), "using the development master key file");
    }
    Ok(key)
}

/// The running control plane: bound listeners and the wired services.
pub struct ControlPlane {
    pub admin_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub store: Store,
    pub distribution: Distribution,
    /// Set only when the admin token was generated by this start.
    pub generated_admin_token: Option<String>,
    admin_listener: TcpListener,
    grpc_listener: TcpListener,
    admin_state: AdminState,
}

impl ControlPlane {
    /// `azure`: the credential and ARM endpoint that Azure discoveries use (read from the
    /// environment by `run`; the demo points it at its mocks).
    pub async fn start(args: &Args, azure: AzureImportConfig) -> anyhow::Result<ControlPlane> {
        let key = master_key(args)?;
        let store = Store::connect(&args.database_url, key).await.with_context(|| {
            format!("opening the configuration store ({})", redact_url(&args.database_url))
        })?;
        let backend = match store.backend() {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        let (token_sha256, generated) = store.admin_token(args.admin_token.as_deref()).await?;
        let distribution = Distribution::start(
            store.clone(),
            DistributionSettings {
                poll_interval: args.config_poll_interval,
                max_health_window: args.max_health_window,
            },
        )
        .await?;
        let version = distribution.current_version();
        tracing::info!(backend, config_version = %version, "configuration store ready");

        let admin_listener = TcpListener::bind(args.admin_addr)
            .await
            .with_context(|| format!("binding the admin API on {}", args.admin_addr))?;
        let grpc_listener = TcpListener::bind(args.grpc_addr).await.with_context(|| {
            format!("binding the gRPC distribution service on {}", args.grpc_addr)
        })?;
        let admin_state = AdminState {
            store: store.clone(),
            changes: distribution.changes(),
            registry: distribution.registry(),
            admin_token_sha256: token_sha256,
            azure: AzureImport::new(azure),
        };
        Ok(ControlPlane {
            admin_addr: admin_listener.local_addr()?,
            grpc_addr: grpc_listener.local_addr()?,
            store,
            distribution,
            generated_admin_token: generated.map(|s| s.expose().to_owned()),
            admin_listener,
            grpc_listener,
            admin_state,
        })
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let router = modelgw_admin_api::router(self.admin_state);
        let admin =
            crate::admin_server::serve(self.admin_listener, router, stopped(stop_rx.clone()));
        let grpc = self.distribution.serve_grpc(self.grpc_listener, stopped(stop_rx));
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let (a, g) = tokio::join!(admin, grpc);
        // Close the pool so SQLite checkpoints its WAL and PostgreSQL sessions end cleanly.
        self.store.close().await;
        a.context("admin API server")?;
        g.context("gRPC distribution server")?;
        Ok(())
    }
}

/// Database URLs may carry a password: show scheme and host only.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.password().is_some() || !u.username().is_empty() => {
            format!("{}://…@{}", u.scheme(), u.host_str().unwrap_or(""))
        }
        _ => url.split('?').next().unwrap_or(url).to_owned(),
    }
}

pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Read once: discovery jobs use this credential and ARM endpoint until restart.
    let azure = AzureImportConfig::from_env().context("reading the Azure import settings")?;
    let cp = ControlPlane::start(&args, azure).await?;
    if let Some(token) = &cp.generated_admin_token {
        out!(
            "Generated admin token (shown once; only its hash is stored — set MODELGW_ADMIN_TOKEN to choose your own):\n  {token}"
        );
    }
    tracing::info!(admin = %cp.admin_addr, grpc = %cp.grpc_addr, "control plane listening");
    crate::stdout::print_ready(
        "control-plane",
        &[
            ("admin", format!("http://{}", cp.admin_addr)),
            ("grpc", format!("http://{}", cp.grpc_addr)),
            ("config_version", cp.distribution.current_version().to_string()),
        ],
    );
    cp.serve(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_are_found_in_urls() {
        assert_eq!(sqlite_path("sqlite://data/m.db?mode=rwc"), Some(PathBuf::from("data/m.db")));
        assert_eq!(sqlite_path("sqlite:m.db"), Some(PathBuf::from("m.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u:p@h/db"), None);
    }

    #[test]
    fn database_passwords_are_not_shown() {
        assert!(!redact_url("postgres://app:hunter2@db.internal/modelgw").contains("hunter2"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn the_health_window_flag_defaults_to_the_library_default() {
        assert_eq!(
            parse_duration(DEFAULT_MAX_HEALTH_WINDOW),
            Ok(modelgw_control_plane::DEFAULT_MAX_HEALTH_WINDOW)
        );
    }
}
