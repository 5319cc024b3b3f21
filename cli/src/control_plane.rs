//! `modelgw control-plane`: wires the store, the admin API and snapshot distribution together.

use crate::stdout::out;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use modelgw_admin_api::identity::BearerVerifier;
use modelgw_admin_api::oidc::{OidcConfig, OidcVerifier};
use modelgw_admin_api::{AdminState, AzureImport, AzureImportConfig, check_bootstrap_token};
use modelgw_console::ConsoleSettings;
use modelgw_control_plane::distribution::dev_pki;
use modelgw_control_plane::store::Backend;
use modelgw_control_plane::{
    Distribution, DistributionSettings, GrpcSecurity, GrpcSettings, MasterKey, RegistrationLimits,
    Store, TlsFiles,
};
use tokio::net::TcpListener;

use crate::metrics_server::{ListenAddr, parse_listen_addr};

/// How often the publisher re-reads the configuration version, so that control-plane
/// replicas sharing one PostgreSQL see each other's changes. A local change is pushed at once;
/// this only bounds the delay for changes made through another replica.
const DEFAULT_CONFIG_POLL: &str = "1s";

/// [`modelgw_control_plane::DEFAULT_MAX_HEALTH_WINDOW`], as the flag's default text.
const DEFAULT_MAX_HEALTH_WINDOW: &str = "5m";

/// The control plane's metrics listener: loopback (a scraper on the host or a sidecar; set an
/// address the scraper reaches otherwise), next to the admin API (4000), the gateway (4001),
/// gRPC (4002) and a data plane's metrics (4003).
pub(crate) const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:4004";

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
    /// Listen address of the Prometheus metrics (`GET /metrics`, OpenMetrics text), or `off`.
    #[arg(long, env = "MODELGW_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR, value_parser = parse_listen_addr)]
    pub metrics_addr: ListenAddr,
    /// The bootstrap admin token (role admin, at least 32 characters): from
    /// MODELGW_ADMIN_TOKEN, or the file MODELGW_ADMIN_TOKEN_FILE names. Never a flag: `ps`
    /// shows flags. When neither is set, one is generated on first start, printed once, and
    /// only its hash is stored.
    #[arg(skip)]
    pub admin_token: Option<String>,
    /// File holding the bootstrap admin token (alternative to MODELGW_ADMIN_TOKEN; surrounding
    /// whitespace is ignored).
    #[arg(long, env = "MODELGW_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Base64 of the 32-byte master key that seals endpoint API keys at rest: from
    /// MODELGW_MASTER_KEY (never a flag: `ps` shows flags), or see `--master-key-file`.
    #[arg(skip)]
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
    /// The gRPC port's TLS settings and bounds on data-plane registrations.
    #[command(flatten)]
    pub grpc: GrpcArgs,
    /// The Admin Console served under `/` on the admin port.
    #[command(flatten)]
    pub console: ConsoleArgs,
}

/// The Admin Console (README "Admin Console").
#[derive(clap::Args, Clone, Debug)]
pub struct ConsoleArgs {
    /// The public Gateway URL applications call (the data planes, e.g. behind Azure Front
    /// Door): shown in the console's snippets and used by its playground.
    #[arg(long, env = "MODELGW_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// PEM CA bundle the playground trusts for the Gateway URL, beside the platform's roots
    /// (data planes behind a private CA).
    #[arg(long, env = "MODELGW_GATEWAY_CA_FILE")]
    pub gateway_ca_file: Option<PathBuf>,
    /// A console session ends after this long without a request.
    #[arg(long, env = "MODELGW_CONSOLE_IDLE_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub console_idle_timeout: Duration,
    /// A console session ends this long after sign-in.
    #[arg(long, env = "MODELGW_CONSOLE_MAX_AGE", default_value = "12h", value_parser = parse_duration)]
    pub console_max_age: Duration,
    /// Send the console's session cookie without `Secure` to non-loopback hosts (plain HTTP
    /// with no TLS in front; development only). Loopback hosts never need it.
    #[arg(long, env = "MODELGW_CONSOLE_INSECURE_COOKIES")]
    pub console_insecure_cookies: bool,
    /// Single sign-on to the console: the console's application (client) id at the OpenID
    /// Connect provider (MODELGW_OIDC_ISSUER). It must also be an accepted audience
    /// (MODELGW_OIDC_AUDIENCE): the console signs in with the ID token, whose audience it is.
    #[arg(long, env = "MODELGW_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// The client secret, for a confidential client (Entra ID web app): from
    /// MODELGW_OIDC_CLIENT_SECRET (never a flag) or this file. Without one, a public client
    /// with PKCE.
    #[arg(long, env = "MODELGW_OIDC_CLIENT_SECRET_FILE")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// Scopes requested at sign-in (space-separated; `openid` is required).
    #[arg(long, env = "MODELGW_OIDC_SCOPES", default_value = "openid profile")]
    pub oidc_scopes: String,
    /// What the console's sign-in button calls the provider.
    #[arg(long, env = "MODELGW_OIDC_PROVIDER_NAME", default_value = "single sign-on")]
    pub oidc_provider_name: String,
    /// The console's public base URL (e.g. https://modelgw-admin.example.com), from which the
    /// sign-in redirect URI `<url>/sign-in/oidc/callback` is made; register that URI at the
    /// provider. Unset: taken from each request's host.
    #[arg(long, env = "MODELGW_CONSOLE_URL")]
    pub console_url: Option<String>,
}

/// TLS of the distribution port (README "Securing the distribution port").
#[derive(clap::Args, Clone, Debug)]
pub struct GrpcArgs {
    /// Server certificate chain (PEM) of the gRPC port; reloaded when the file changes.
    #[arg(long, env = "MODELGW_GRPC_TLS_CERT_FILE")]
    pub grpc_tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of that certificate; reloaded when the file changes.
    #[arg(long, env = "MODELGW_GRPC_TLS_KEY_FILE")]
    pub grpc_tls_key_file: Option<PathBuf>,
    /// mTLS: CA (PEM) that issues data planes' client certificates; a data plane's node id
    /// must be a DNS or URI name of its certificate. Unset: data planes use join tokens.
    #[arg(long, env = "MODELGW_GRPC_CLIENT_CA_FILE")]
    pub grpc_client_ca_file: Option<PathBuf>,
    /// Serve the gRPC port in plaintext with no authentication (development only).
    #[arg(long, env = "MODELGW_INSECURE_GRPC")]
    pub insecure_grpc: bool,
    /// Most data planes registered at once (connected or recently disconnected).
    #[arg(long, env = "MODELGW_MAX_DATA_PLANES", default_value_t = modelgw_control_plane::distribution::DEFAULT_MAX_DATA_PLANES)]
    pub max_data_planes: usize,
    /// How long a disconnected data plane stays in the registry and /api/v1/status.
    #[arg(long, env = "MODELGW_DATA_PLANE_RETENTION", default_value = "15m", value_parser = parse_duration)]
    pub data_plane_retention: Duration,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?} (e.g. 500ms, 2s, 1m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration unit in {s:?} (use ms, s, m or h)")),
    }
}

/// Environment variables that carry secrets: read here, never accepted as flags.
const ADMIN_TOKEN_ENV: &str = "MODELGW_ADMIN_TOKEN";
const MASTER_KEY_ENV: &str = "MODELGW_MASTER_KEY";

impl Args {
    /// Fills the secrets from MODELGW_ADMIN_TOKEN and MODELGW_MASTER_KEY (those not already
    /// set in-process, as `modelgw demo` does).
    pub fn with_secrets_from_env(mut self) -> Self {
        let env = |name: &str| std::env::var(name).ok();
        self.admin_token = self.admin_token.or_else(|| env(ADMIN_TOKEN_ENV));
        self.master_key = self.master_key.or_else(|| env(MASTER_KEY_ENV));
        self
    }
}

/// The configured bootstrap admin token, if any: MODELGW_ADMIN_TOKEN or the file
/// MODELGW_ADMIN_TOKEN_FILE names (not both), refused when shorter than
/// `MIN_BOOTSTRAP_TOKEN_CHARS`. An empty one counts as not configured.
fn bootstrap_token(args: &Args) -> anyhow::Result<Option<String>> {
    let from_file = match &args.admin_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("MODELGW_ADMIN_TOKEN_FILE: reading {}", path.display()))?,
        ),
        None => None,
    };
    let (token, source) = match (&args.admin_token, from_file) {
        (Some(_), Some(_)) => anyhow::bail!(
            "both {ADMIN_TOKEN_ENV} and MODELGW_ADMIN_TOKEN_FILE are set; set one of them"
        ),
        (Some(token), None) => (token.trim().to_owned(), ADMIN_TOKEN_ENV),
        (None, Some(token)) => (token.trim().to_owned(), "MODELGW_ADMIN_TOKEN_FILE"),
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        tracing::warn!(source, "the configured admin token is empty; ignoring it");
        return Ok(None);
    }
    check_bootstrap_token(&token).with_context(|| format!("{source} refused"))?;
    Ok(Some(token))
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
        return MasterKey::from_base64(b64).context(MASTER_KEY_ENV);
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
    let path = database_dir(&db).join("modelgw-master.key");
    let (key, created) = MasterKey::load_or_generate(&path).context("development master key")?;
    if created {
        tracing::warn!(path = %path.display(), "generated a development master key for the embedded database; set MODELGW_MASTER_KEY in production and keep it out of the database backup");
    } else {
        tracing::info!(path = %path.display(), "using the development master key file");
    }
    Ok(key)
}

impl Default for GrpcArgs {
    /// No TLS files (so a development certificate on SQLite), the default bounds.
    fn default() -> Self {
        let limits = RegistrationLimits::default();
        GrpcArgs {
            grpc_tls_cert_file: None,
            grpc_tls_key_file: None,
            grpc_client_ca_file: None,
            insecure_grpc: false,
            max_data_planes: limits.max_data_planes,
            data_plane_retention: limits.retention,
        }
    }
}

impl Default for ConsoleArgs {
    /// No Gateway URL, the default session lifetimes, Secure cookies.
    fn default() -> Self {
        ConsoleArgs {
            gateway_url: None,
            gateway_ca_file: None,
            console_idle_timeout: ConsoleSettings::DEFAULT_IDLE_TIMEOUT,
            console_max_age: ConsoleSettings::DEFAULT_MAX_AGE,
            console_insecure_cookies: false,
            oidc_client_id: None,
            oidc_client_secret_file: None,
            oidc_scopes: "openid profile".to_owned(),
            oidc_provider_name: "single sign-on".to_owned(),
            console_url: None,
        }
    }
}

/// How the gRPC port is secured, from the flags; with none on SQLite, a development CA and
/// certificate next to the database (like the development master key). Returns the settings
/// and, when one was used, the development CA file data planes must trust.
fn grpc_settings(args: &Args) -> anyhow::Result<(GrpcSettings, Option<PathBuf>)> {
    let g = &args.grpc;
    let limits = RegistrationLimits {
        max_data_planes: g.max_data_planes.max(1),
        retention: g.data_plane_retention,
    };
    let any_tls = g.grpc_tls_cert_file.is_some()
        || g.grpc_tls_key_file.is_some()
        || g.grpc_client_ca_file.is_some();
    if g.insecure_grpc {
        anyhow::ensure!(
            !any_tls,
            "MODELGW_INSECURE_GRPC and MODELGW_GRPC_TLS_* / MODELGW_GRPC_CLIENT_CA_FILE are both set: choose TLS or plaintext"
        );
        tracing::warn!(
            "MODELGW_INSECURE_GRPC: the gRPC port is plaintext and unauthenticated; anyone who reaches it gets every endpoint's API key"
        );
        return Ok((GrpcSettings { limits, ..GrpcSettings::new(GrpcSecurity::insecure()) }, None));
    }
    let (files, dev_ca) = match (&g.grpc_tls_cert_file, &g.grpc_tls_key_file) {
        (Some(cert), Some(key)) => (
            TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: g.grpc_client_ca_file.clone(),
            },
            None,
        ),
        (None, None) => {
            let Some(db) = sqlite_path(&args.database_url) else {
                anyhow::bail!(
                    "the gRPC distribution port needs TLS with this database: set                      MODELGW_GRPC_TLS_CERT_FILE and MODELGW_GRPC_TLS_KEY_FILE (and                      MODELGW_GRPC_CLIENT_CA_FILE for mTLS; without it data planes use join                      tokens from /api/v1/data-plane-tokens), or MODELGW_INSECURE_GRPC=true on a                      development machine"
                );
            };
            anyhow::ensure!(
                g.grpc_client_ca_file.is_none(),
                "MODELGW_GRPC_CLIENT_CA_FILE needs MODELGW_GRPC_TLS_CERT_FILE and MODELGW_GRPC_TLS_KEY_FILE"
            );
            let pki = dev_pki::load_or_generate(&database_dir(&db))
                .context("development certificate of the gRPC port")?;
            if pki.created {
                tracing::warn!(ca = %pki.ca_file.display(), cert = %pki.cert_file.display(), "generated a development CA and certificate for the gRPC port (SQLite, no MODELGW_GRPC_TLS_CERT_FILE); data planes trust it with MODELGW_CONTROL_PLANE_CA_FILE and join with a token from /api/v1/data-plane-tokens; use your own certificate in production");
            } else {
                tracing::info!(ca = %pki.ca_file.display(), "using the development certificate of the gRPC port");
            }
            (pki.tls_files(), Some(pki.ca_file))
        }
        _ => anyhow::bail!(
            "MODELGW_GRPC_TLS_CERT_FILE and MODELGW_GRPC_TLS_KEY_FILE must be set together"
        ),
    };
    let security = GrpcSecurity::tls(files).context("TLS of the gRPC distribution port")?;
    Ok((GrpcSettings { limits, ..GrpcSettings::new(security) }, dev_ca))
}

/// The directory of a SQLite database file (`.` for a bare file name).
fn database_dir(db: &std::path::Path) -> PathBuf {
    db.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The running control plane: bound listeners and the wired services.
pub struct ControlPlane {
    pub admin_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Where `GET /metrics` is served (`None`: off).
    pub metrics_addr: Option<SocketAddr>,
    pub store: Store,
    pub distribution: Distribution,
    /// Set only when the admin token was generated by this start.
    pub generated_admin_token: Option<String>,
    /// The development CA of the gRPC port, when no TLS settings were given (SQLite only).
    pub grpc_dev_ca: Option<PathBuf>,
    admin_listener: TcpListener,
    grpc_listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    grpc_settings: GrpcSettings,
    admin_state: AdminState,
    console: ConsoleSettings,
}

impl ControlPlane {
    /// `azure`: the credential and ARM endpoint that Azure discoveries use (read from the
    /// environment by `run`; the demo points it at its mocks).
    /// `oidc`: OpenID Connect sign-in to the admin API (`MODELGW_OIDC_*`), when configured.
    pub async fn start(
        args: &Args,
        azure: AzureImportConfig,
        oidc: Option<OidcConfig>,
    ) -> anyhow::Result<ControlPlane> {
        // Checked first: a refused token must stop the start before anything is opened.
        let admin_token = bootstrap_token(args)?;
        let key = master_key(args)?;
        let console = console_settings(&args.console, &key, oidc.as_ref())?;
        let (grpc_settings, grpc_dev_ca) = grpc_settings(args)?;
        let store = Store::connect(&args.database_url, key).await.with_context(|| {
            format!("opening the configuration store ({})", redact_url(&args.database_url))
        })?;
        let backend = match store.backend() {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        let (token_sha256, generated) = store.admin_token(admin_token.as_deref()).await?;
        let distribution = Distribution::start(
            store.clone(),
            DistributionSettings {
                poll_interval: args.config_poll_interval,
                max_health_window: args.max_health_window,
                // Production values: 3 s freshness, pushed at most once a second.
                ..Default::default()
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
        let metrics_listener = crate::metrics_server::bind(args.metrics_addr).await?;
        let admin_state = AdminState {
            store: store.clone(),
            changes: distribution.changes(),
            registry: distribution.registry(),
            admin_token_sha256: token_sha256,
            bearer_verifier: oidc_verifier(oidc).await?,
            azure: AzureImport::new(azure),
        };
        Ok(ControlPlane {
            admin_addr: admin_listener.local_addr()?,
            grpc_addr: grpc_listener.local_addr()?,
            metrics_addr: metrics_listener.as_ref().map(TcpListener::local_addr).transpose()?,
            store,
            distribution,
            generated_admin_token: generated.map(|s| s.expose().to_owned()),
            grpc_dev_ca,
            admin_listener,
            grpc_listener,
            metrics_listener,
            grpc_settings,
            admin_state,
            console,
        })
    }

    /// Serves until `shutdown` resolves.
    /// Where the console's snippets and playground send clients, when it was not configured
    /// (the demo sets it once its data plane is bound).
    pub fn console_gateway_url(&self) -> std::sync::Arc<std::sync::OnceLock<String>> {
        self.console.gateway_url.clone()
    }

    /// The gRPC URL data planes use (`https://` unless the port is plaintext).
    pub fn grpc_url(&self) -> String {
        let scheme = if self.grpc_settings.security.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// How data planes authenticate: `certificate`, `token` or `none`.
    pub fn client_auth(&self) -> &'static str {
        self.grpc_settings.security.client_auth().as_str()
    }

    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        // The console under `/`, the JSON API under `/api/v1` behind it (the console calls it
        // in process for everything it reads and changes).
        let router =
            modelgw_console::router(self.console, modelgw_admin_api::router(self.admin_state))
                .context("setting up the Admin Console")?;
        // The admin API's own server (header deadline, HTTP/2 keepalive); each request carries
        // the peer's address, which the audit log records for every change.
        let admin =
            crate::admin_server::serve(self.admin_listener, router, stopped(stop_rx.clone()));
        // The data plane's `/metrics` listener serves the control plane's registry too.
        if let Some(listener) = self.metrics_listener {
            let registry = self.distribution.metrics_registry();
            tokio::spawn(modelgw_data_plane::metrics::server::serve(
                listener,
                registry,
                stopped(stop_rx.clone()),
            ));
        }
        let grpc = self.distribution.serve_grpc(
            self.grpc_listener,
            self.grpc_settings,
            stopped(stop_rx.clone()),
        );
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        // On shutdown both servers stop accepting; admin calls in flight finish, and every data
        // plane's stream is ended (UNAVAILABLE) so it reconnects — to another replica — at
        // once. Both within a bound: a call or connection that does not end is cut.
        let served = async { tokio::join!(admin, grpc) };
        tokio::pin!(served);
        let bound = async {
            stopped(stop_rx).await;
            tracing::info!(
                grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
                "control plane shutting down: finishing admin calls, closing data-plane streams"
            );
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let (a, g) = tokio::select! {
            served = &mut served => served,
            () = bound => {
                tracing::warn!(
                    grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
                    "admin calls or data-plane connections still open after the grace period; closing them"
                );
                (Ok(()), Ok(()))
            }
        };
        // Close the pool so SQLite checkpoints its WAL and PostgreSQL sessions end cleanly.
        self.store.close().await;
        tracing::info!("control plane stopped");
        a.context("admin API server")?;
        g.context("gRPC distribution server")?;
        Ok(())
    }
}

/// The console's settings; its session key is derived from the master key, so every replica
/// opens every session.
fn console_settings(
    args: &ConsoleArgs,
    key: &MasterKey,
    oidc: Option<&OidcConfig>,
) -> anyhow::Result<ConsoleSettings> {
    let mut settings = ConsoleSettings::new(key.derive(modelgw_console::SESSION_KEY_PURPOSE));
    settings.idle_timeout = args.console_idle_timeout;
    settings.max_age = args.console_max_age;
    if let Some(url) = &args.gateway_url {
        let _ = settings.gateway_url.set(url.trim_end_matches('/').to_owned());
    }
    settings.insecure_cookies = args.console_insecure_cookies;
    if let Some(path) = &args.gateway_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading MODELGW_GATEWAY_CA_FILE {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("MODELGW_GATEWAY_CA_FILE {}", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "MODELGW_GATEWAY_CA_FILE {} holds no PEM certificate",
            path.display()
        );
        settings.gateway_ca_pem = Some(pem);
    }
    if settings.insecure_cookies {
        tracing::warn!(
            "MODELGW_CONSOLE_INSECURE_COOKIES is set: console session cookies are sent without Secure \
             over plain HTTP, where anyone on the path can read them; use only for development"
        );
    }
    settings.oidc = console_sign_in(args, oidc)?;
    Ok(settings)
}

/// Single sign-on to the console, when a client id is configured: checked against the admin
/// API's OpenID Connect settings, which verify the tokens it yields.
fn console_sign_in(
    args: &ConsoleArgs,
    oidc: Option<&OidcConfig>,
) -> anyhow::Result<Option<modelgw_console::OidcSignIn>> {
    let Some(client_id) = args.oidc_client_id.as_deref().map(str::trim).filter(|c| !c.is_empty())
    else {
        return Ok(None);
    };
    let Some(oidc) = oidc else {
        anyhow::bail!(
            "MODELGW_OIDC_CLIENT_ID is set but MODELGW_OIDC_ISSUER is not: console single sign-on \
             needs the admin API's OpenID Connect settings"
        );
    };
    if !oidc.audiences.iter().any(|a| a == client_id) {
        anyhow::bail!(
            "MODELGW_OIDC_CLIENT_ID must also be in MODELGW_OIDC_AUDIENCE: the console signs in with \
             the ID token, whose audience is the client id"
        );
    }
    if !args.oidc_scopes.split_whitespace().any(|s| s == "openid") {
        anyhow::bail!("MODELGW_OIDC_SCOPES must include `openid`");
    }
    let secret =
        match (&args.oidc_client_secret_file, std::env::var("MODELGW_OIDC_CLIENT_SECRET").ok()) {
            (Some(_), Some(_)) => anyhow::bail!(
                "set MODELGW_OIDC_CLIENT_SECRET or MODELGW_OIDC_CLIENT_SECRET_FILE, not both"
            ),
            (Some(path), None) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the client secret file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, secret) => secret.map(|s| s.trim().to_owned()),
        };
    tracing::info!(issuer = %oidc.issuer, client_id, confidential = secret.is_some(), "console single sign-on enabled");
    Ok(Some(modelgw_console::OidcSignIn {
        issuer: oidc.issuer.clone(),
        client_id: client_id.to_owned(),
        client_secret: secret.filter(|s| !s.is_empty()),
        scopes: args.oidc_scopes.clone(),
        public_url: args.console_url.clone(),
        provider_name: args.oidc_provider_name.clone(),
    }))
}

/// The OpenID Connect verifier of the admin API, with its signing keys fetched once now. A
/// fetch that fails does not stop the start: tokens get 503 until a later fetch succeeds.
async fn oidc_verifier(
    config: Option<OidcConfig>,
) -> anyhow::Result<Option<std::sync::Arc<dyn BearerVerifier>>> {
    let Some(config) = config else {
        return Ok(None);
    };
    let http = reqwest::Client::builder()
        .timeout(config.fetch_timeout)
        .build()
        .context("building the OpenID Connect HTTP client")?;
    let issuer = config.issuer.clone();
    let verifier = OidcVerifier::new(config, http).context("OpenID Connect settings")?;
    match verifier.fetch_keys().await {
        Ok(keys) => tracing::info!(%issuer, keys, "OpenID Connect sign-in enabled"),
        Err(e) => {
            tracing::warn!(%issuer, error = %e, "OpenID Connect signing keys not fetched yet; bearer tokens get 503 until they are")
        }
    }
    Ok(Some(std::sync::Arc::new(verifier)))
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

/// Longest a control plane asked to stop waits for admin calls in flight and for data-plane
/// connections to close before it exits. Admin calls are a few database statements (Azure
/// discovery runs as a job, not inside a call) and streams end as soon as they are told, so
/// 10 s is ample and well inside Kubernetes' default 30 s termination grace period.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Read once: discovery jobs use this credential and ARM endpoint until restart.
    let azure = AzureImportConfig::from_env().context("reading the Azure import settings")?;
    let args = args.with_secrets_from_env();
    let oidc = OidcConfig::from_env().context("reading the OpenID Connect settings")?;
    let cp = ControlPlane::start(&args, azure, oidc).await?;
    if let Some(token) = &cp.generated_admin_token {
        out!(
            "Generated admin token (shown once; only its hash is stored — set MODELGW_ADMIN_TOKEN or MODELGW_ADMIN_TOKEN_FILE to choose your own):\n  {token}"
        );
    }
    tracing::info!(admin = %cp.admin_addr, grpc = %cp.grpc_addr, metrics = ?cp.metrics_addr, "control plane listening");
    let mut ready = vec![
        ("admin", format!("http://{}", cp.admin_addr)),
        ("grpc", cp.grpc_url()),
        ("client_auth", cp.client_auth().to_owned()),
        ("config_version", cp.distribution.current_version().to_string()),
    ];
    match cp.metrics_addr {
        Some(metrics) => ready.push(("metrics", crate::metrics_server::url(Some(metrics)))),
        None => tracing::info!("MODELGW_METRICS_ADDR=off: no Prometheus metrics"),
    }
    if let Some(ca) = &cp.grpc_dev_ca {
        ready.push(("grpc_ca", ca.display().to_string()));
    }
    crate::stdout::print_ready("control-plane", &ready);
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

    fn test_args(dir: &std::path::Path) -> Args {
        Args {
            database_url: format!("sqlite://{}", dir.join("modelgw.db").display()),
            admin_addr: "127.0.0.1:0".parse().expect("address"),
            grpc_addr: "127.0.0.1:0".parse().expect("address"),
            metrics_addr: ListenAddr(None),
            admin_token: None,
            admin_token_file: None,
            master_key: None,
            master_key_file: None,
            config_poll_interval: Duration::from_secs(1),
            max_health_window: modelgw_control_plane::DEFAULT_MAX_HEALTH_WINDOW,
            grpc: GrpcArgs::default(),
            console: ConsoleArgs::default(),
        }
    }

    fn no_azure() -> AzureImportConfig {
        AzureImportConfig::from_lookup(|_| None).expect("empty Azure config")
    }

    #[tokio::test]
    async fn a_short_bootstrap_token_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let short = "mgwadm_only-31-characters-long_"; // 31 characters
        assert_eq!(short.chars().count(), 31);
        let args = Args { admin_token: Some(short.to_owned()), ..test_args(dir.path()) };
        let Err(err) = ControlPlane::start(&args, no_azure(), None).await else {
            panic!("a 31-character admin token was accepted");
        };
        let message = format!("{err:#}");
        assert!(
            message.contains("MODELGW_ADMIN_TOKEN") && message.contains("at least 32"),
            "{message}"
        );
        assert!(!message.contains(short), "the token is quoted: {message}");
        assert!(!dir.path().join("modelgw.db").exists(), "nothing was opened");

        // From a file too; 32 characters (and a trailing newline) are enough.
        let file = dir.path().join("admin-token");
        std::fs::write(&file, format!("{short}\n")).expect("write");
        let args = Args { admin_token_file: Some(file.clone()), ..test_args(dir.path()) };
        let Err(err) = ControlPlane::start(&args, no_azure(), None).await else {
            panic!("a 31-character admin token file was accepted");
        };
        assert!(format!("{err:#}").contains("MODELGW_ADMIN_TOKEN_FILE"), "{err:#}");
        std::fs::write(&file, format!("{short}x\n")).expect("write");
        let cp = ControlPlane::start(&args, no_azure(), None)
            .await
            .expect("a 32-character token starts");
        assert!(cp.generated_admin_token.is_none());
        cp.store.close().await;
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
