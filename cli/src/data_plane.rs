//! `modelgw data-plane`: the gateway apps call.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use azure_core::credentials::TokenCredential;
use modelgw_control_plane::azure::credential::CREDENTIAL_ENV;
use modelgw_control_plane::azure::{CredentialOptions, CredentialSettings, build_chosen, resolve};
use modelgw_data_plane::{
    ClientCertFiles, ControlPlaneTrust, DEFAULT_SNAPSHOT_MAX_AGE, DataPlane, DataPlaneConfig,
    RequestTracer, Shutdown, SnapshotFileConfig, SnapshotKey, TokenSource,
};
use modelgw_model::{DEFAULT_ENTRA_SCOPE, Secret};

use crate::metrics_server::{ListenAddr, parse_listen_addr};

/// The environment variable that may hold the join token itself (there is no flag: a secret on
/// the command line shows in `ps` and in shell history).
pub(crate) const TOKEN_ENV: &str = "MODELGW_DATA_PLANE_TOKEN";

/// Bound on picking a credential at start in `auto` mode (one token fetch per candidate, the
/// managed-identity probe included); past it the data plane serves without Entra ID.
const ENTRA_RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Listen address of the gateway (the Gateway URL apps call).
    #[arg(long, env = "MODELGW_GATEWAY_ADDR", default_value = "127.0.0.1:4001")]
    pub gateway_addr: SocketAddr,
    /// Where Prometheus metrics are served (`GET /metrics`), never on the gateway's own
    /// address; `off` also stops the request path's counting (and the statistics the Admin
    /// Console charts).
    #[arg(long, env = "MODELGW_METRICS_ADDR", default_value = "127.0.0.1:4003", value_parser = parse_listen_addr)]
    pub metrics_addr: ListenAddr,
    /// gRPC URL of the control plane's distribution service (https://; http:// only with
    /// --insecure-control-plane). Several control-plane replicas without one Service in front:
    /// their URLs separated by commas, tried in turn (the next at once when one goes away).
    #[arg(long, env = "MODELGW_CONTROL_PLANE_URL", default_value = "https://127.0.0.1:4002")]
    pub control_plane_url: String,
    /// CA (PEM) the control plane's certificate must chain to (default: the system's roots).
    /// Re-read at every reconnect.
    #[arg(long, env = "MODELGW_CONTROL_PLANE_CA_FILE")]
    pub control_plane_ca_file: Option<PathBuf>,
    /// Name the control plane's certificate must hold, when not the URL's host.
    #[arg(long, env = "MODELGW_CONTROL_PLANE_SERVER_NAME")]
    pub control_plane_server_name: Option<String>,
    /// mTLS: this data plane's client certificate (PEM); it must name the node id.
    #[arg(long, env = "MODELGW_DATA_PLANE_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// mTLS: the client certificate's private key (PEM).
    #[arg(long, env = "MODELGW_DATA_PLANE_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// File holding a join token from /api/v1/data-plane-tokens (or set MODELGW_DATA_PLANE_TOKEN).
    /// The node id must then be the token's name or start with `<name>-`.
    #[arg(long, env = "MODELGW_DATA_PLANE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The join token itself, from MODELGW_DATA_PLANE_TOKEN only (never a flag).
    #[arg(skip)]
    pub token: Option<Secret>,
    /// Allow a plaintext http:// control-plane URL (development only).
    #[arg(long, env = "MODELGW_INSECURE_CONTROL_PLANE")]
    pub insecure_control_plane: bool,
    /// Identity reported to the control plane (default: the host name).
    #[arg(long, env = "MODELGW_NODE_ID")]
    pub node_id: Option<String>,
    /// Largest request body accepted, in bytes (larger → 413).
    #[arg(long, env = "MODELGW_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Per-attempt time to wait for an upstream's response headers (e.g. 30s).
    #[arg(long, env = "MODELGW_UPSTREAM_TIMEOUT", value_parser = crate::control_plane::parse_duration)]
    pub upstream_timeout: Option<Duration>,
    /// Default end-to-end deadline of one request, failovers included (a gateway's
    /// `routing.request_timeout_ms` overrides it; a client's `x-modelgw-timeout-ms` may shorten it).
    #[arg(long, env = "MODELGW_REQUEST_TIMEOUT", value_parser = crate::control_plane::parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Longest silence between two chunks of a streamed answer before the stream is ended with
    /// an error event.
    #[arg(long, env = "MODELGW_STREAM_IDLE_TIMEOUT", value_parser = crate::control_plane::parse_duration)]
    pub stream_idle_timeout: Option<Duration>,
    /// Serving threads, each with its own upstream connection pool (default: one per core).
    #[arg(long, env = "MODELGW_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// How often the traffic counted since the previous report goes to the control plane for
    /// the Admin Console's statistics (default 5s; nothing is sent for an interval without
    /// traffic).
    #[arg(long, env = "MODELGW_STATS_INTERVAL", value_parser = crate::control_plane::parse_duration)]
    pub stats_interval: Option<Duration>,
    /// How often the gateway keys' usage (cumulative per key and window) goes to the control
    /// plane, which tops up this data plane's budget leases from it (default 1s; sooner, at
    /// most ten times a second, when a lease runs low).
    #[arg(long, env = "MODELGW_USAGE_INTERVAL", value_parser = crate::control_plane::parse_duration)]
    pub usage_interval: Option<Duration>,
    /// On SIGTERM, how long to keep serving while /readyz fails (503 `draining`) so load
    /// balancers move away, before new connections are refused (default 15s; 0s: none).
    #[arg(long, env = "MODELGW_DRAIN_PERIOD", value_parser = crate::control_plane::parse_duration)]
    pub drain_period: Option<Duration>,
    /// After the drain period, how long in-flight requests and streams may take to finish
    /// before they are cut and the process exits (default 30s).
    #[arg(long, env = "MODELGW_SHUTDOWN_GRACE", value_parser = crate::control_plane::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// The gateway edge: connection limits, SSE bounds, failed authentications, egress.
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// The sealed snapshot file served at start while no control plane answers.
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
}

/// The environment variable that may hold the snapshot key itself (never a flag).
pub(crate) const SNAPSHOT_KEY_ENV: &str = "MODELGW_SNAPSHOT_KEY";

/// The last applied snapshot kept on disk, sealed (issue #15): served at start until a control
/// plane answers. The key comes from `MODELGW_SNAPSHOT_KEY` (base64 of 32 bytes) or the file
/// `--snapshot-key-file` names, never from a flag.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SnapshotArgs {
    /// Where the last applied snapshot is kept, sealed with the snapshot key (a writable
    /// directory; unset: nothing is kept and a restarted data plane serves nothing until a
    /// control plane answers).
    #[arg(long, env = "MODELGW_SNAPSHOT_FILE")]
    pub snapshot_file: Option<PathBuf>,
    /// File holding the snapshot key (base64 of 32 random bytes), instead of
    /// MODELGW_SNAPSHOT_KEY.
    #[arg(long, env = "MODELGW_SNAPSHOT_KEY_FILE")]
    pub snapshot_key_file: Option<PathBuf>,
    /// A saved snapshot older than this (since a control plane last sent or confirmed it) is
    /// not served at start (default 24h).
    #[arg(long, env = "MODELGW_SNAPSHOT_MAX_AGE", value_parser = crate::control_plane::parse_duration)]
    pub snapshot_max_age: Option<Duration>,
}

impl SnapshotArgs {
    /// The snapshot file's settings; `key` is `MODELGW_SNAPSHOT_KEY`'s value. A file without a
    /// key (or with two) stops the start: the file is never written in plaintext.
    pub fn resolve(&self, key: Option<&str>) -> anyhow::Result<Option<SnapshotFileConfig>> {
        let key = key.filter(|k| !k.trim().is_empty());
        let Some(path) = &self.snapshot_file else {
            if key.is_some() || self.snapshot_key_file.is_some() {
                tracing::warn!(
                    "a snapshot key is set but MODELGW_SNAPSHOT_FILE is not: no snapshot is kept on disk"
                );
            }
            return Ok(None);
        };
        let key = match (key, &self.snapshot_key_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "both {SNAPSHOT_KEY_ENV} and MODELGW_SNAPSHOT_KEY_FILE are set: use one"
            ),
            (Some(key), None) => SnapshotKey::from_base64(key).context(SNAPSHOT_KEY_ENV)?,
            (None, Some(file)) => SnapshotKey::from_file(file)?,
            (None, None) => anyhow::bail!(
                "MODELGW_SNAPSHOT_FILE={} is set but no key seals it: set {SNAPSHOT_KEY_ENV} (base64 of 32 random bytes: `openssl rand -base64 32`) or MODELGW_SNAPSHOT_KEY_FILE. The snapshot holds endpoint keys; it is never written in plaintext",
                path.display()
            ),
        };
        Ok(Some(SnapshotFileConfig {
            path: path.clone(),
            key,
            max_age: self.snapshot_max_age.unwrap_or(DEFAULT_SNAPSHOT_MAX_AGE),
        }))
    }
}

/// Limits of the gateway's edge (issue #11). Every field unset takes the data plane's default
/// (`modelgw_data_plane::DEFAULT_*`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EdgeArgs {
    /// Deadline, from accept, for a connection's first complete request head (HTTP/1 and h2c;
    /// default 30s).
    #[arg(long, env = "MODELGW_HEADER_READ_TIMEOUT", value_parser = crate::control_plane::parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Close a client connection after this long without a request in flight (default 75s).
    #[arg(long, env = "MODELGW_CLIENT_IDLE_TIMEOUT", value_parser = crate::control_plane::parse_duration)]
    pub client_idle_timeout: Option<Duration>,
    /// HTTP/2 PING interval on client connections; 0s disables (default 30s).
    #[arg(long, env = "MODELGW_HTTP2_KEEPALIVE_INTERVAL", value_parser = crate::control_plane::parse_duration)]
    pub http2_keepalive_interval: Option<Duration>,
    /// Wait for a PING's acknowledgement before closing (default 20s).
    #[arg(long, env = "MODELGW_HTTP2_KEEPALIVE_TIMEOUT", value_parser = crate::control_plane::parse_duration)]
    pub http2_keepalive_timeout: Option<Duration>,
    /// Most client connections open at once; beyond, new ones are closed at once and counted
    /// (default 10000, lowered to fit the open-file limit).
    #[arg(long, env = "MODELGW_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Largest SSE event relayed from an upstream, in bytes (default 1 MiB).
    #[arg(long, env = "MODELGW_MAX_SSE_EVENT_BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sse_event_bytes: Option<u32>,
    /// Window of the failed-authentication log line per client address, and of the limit
    /// (default 60s).
    #[arg(long, env = "MODELGW_FAILED_AUTH_WINDOW", value_parser = crate::control_plane::parse_duration)]
    pub failed_auth_window: Option<Duration>,
    /// Failed authentications per client address per window before it gets 429 for a window;
    /// 0 or unset: no limit.
    #[arg(long, env = "MODELGW_FAILED_AUTH_LIMIT")]
    pub failed_auth_limit: Option<u32>,
    /// Allow endpoints on loopback addresses (demo and tests only).
    #[arg(long, env = "MODELGW_ALLOW_LOOPBACK_UPSTREAMS")]
    pub allow_loopback_upstreams: bool,
    /// Forward the client's X-Forwarded-* and Forwarded headers upstream.
    #[arg(long, env = "MODELGW_FORWARD_CLIENT_ADDRESS_HEADERS")]
    pub forward_client_address_headers: bool,
    /// Request traces (of gateways that record them) waiting to be shipped to the control
    /// plane at most; beyond, traces are dropped and counted (default 10000).
    #[arg(long, env = "MODELGW_TRACE_QUEUE", value_parser = clap::value_parser!(u32).range(1..))]
    pub trace_queue: Option<u32>,
}

impl EdgeArgs {
    fn apply(&self, config: DataPlaneConfig) -> DataPlaneConfig {
        DataPlaneConfig {
            header_read_timeout: self.header_read_timeout.unwrap_or(config.header_read_timeout),
            client_idle_timeout: self.client_idle_timeout.unwrap_or(config.client_idle_timeout),
            http2_keepalive_interval: self
                .http2_keepalive_interval
                .unwrap_or(config.http2_keepalive_interval),
            http2_keepalive_timeout: self
                .http2_keepalive_timeout
                .unwrap_or(config.http2_keepalive_timeout),
            max_connections: self.max_connections.map_or(config.max_connections, |n| n as usize),
            max_sse_event_bytes: self
                .max_sse_event_bytes
                .map_or(config.max_sse_event_bytes, |n| n as usize),
            failed_auth_window: self.failed_auth_window.unwrap_or(config.failed_auth_window),
            failed_auth_limit: self.failed_auth_limit.filter(|n| *n > 0),
            allow_loopback_upstreams: self.allow_loopback_upstreams,
            forward_client_address_headers: self.forward_client_address_headers,
            trace_queue: self.trace_queue.map_or(config.trace_queue, |n| n as usize),
            ..config
        }
    }
}

impl Args {
    pub fn config(&self) -> DataPlaneConfig {
        let defaults = DataPlaneConfig::default();
        let config = DataPlaneConfig {
            gateway_addr: self.gateway_addr,
            control_plane_url: self.control_plane_url.clone(),
            control_plane_trust: self.trust(),
            node_id: self.node_id.clone().unwrap_or_else(default_node_id),
            max_body_bytes: self.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            upstream_timeout: self.upstream_timeout.unwrap_or(defaults.upstream_timeout),
            request_timeout: self.request_timeout.unwrap_or(defaults.request_timeout),
            stream_idle_timeout: self.stream_idle_timeout.unwrap_or(defaults.stream_idle_timeout),
            workers: self.workers.map_or(defaults.workers, usize::from),
            stats_interval: self.stats_interval.unwrap_or(defaults.stats_interval),
            usage_interval: self.usage_interval.unwrap_or(defaults.usage_interval),
            drain_period: self.drain_period.unwrap_or(defaults.drain_period),
            shutdown_grace: self.shutdown_grace.unwrap_or(defaults.shutdown_grace),
            metrics_enabled: self.metrics_addr.0.is_some(),
            metrics_addr: self.metrics_addr.0,
            ..defaults
        };
        self.edge.apply(config)
    }
}

impl Args {
    fn trust(&self) -> ControlPlaneTrust {
        let client_cert = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                Some(ClientCertFiles { cert: cert.clone(), key: key.clone() })
            }
            _ => None,
        };
        let token = match (&self.token_file, &self.token) {
            (Some(file), _) => Some(TokenSource::File(file.clone())),
            (None, Some(token)) => Some(TokenSource::Value(token.clone())),
            (None, None) => None,
        };
        ControlPlaneTrust {
            ca_file: self.control_plane_ca_file.clone(),
            server_name: self.control_plane_server_name.clone(),
            client_cert,
            token,
            allow_insecure: self.insecure_control_plane,
        }
    }
}

pub(crate) fn default_node_id() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "data-plane".to_owned())
}

/// Serves until `shutdown` (each SIGTERM/SIGINT a request: drain, then close, then cut);
/// `tracer` (when traces are exported) makes the request path's spans.
pub async fn run(
    mut args: Args,
    tracer: Option<RequestTracer>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    if args.token.is_none()
        && let Some(token) = std::env::var(TOKEN_ENV).ok().filter(|t| !t.trim().is_empty())
    {
        args.token = Some(Secret::new(token.trim()));
    }
    let snapshot_key = std::env::var(SNAPSHOT_KEY_ENV).ok();
    let snapshot_file = args.snapshot.resolve(snapshot_key.as_deref())?;
    let config = DataPlaneConfig {
        entra_credential: entra_credential().await?,
        tracer,
        snapshot_file,
        ..args.config()
    };
    let node_id = config.node_id.clone();
    let dp = DataPlane::bind(config)
        .await
        .with_context(|| format!("starting the data plane (gateway on {})", args.gateway_addr))?;
    let addr = dp.local_addr();
    tracing::info!(%addr, node_id, control_plane = %args.control_plane_url, "data plane listening");
    let mut ready = vec![("gateway", format!("http://{addr}")), ("node_id", node_id)];
    match dp.metrics_addr() {
        Some(metrics) => ready.push(("metrics", format!("http://{metrics}/metrics"))),
        None => {
            tracing::warn!("MODELGW_METRICS_ADDR=off: no metrics, no statistics for the console")
        }
    }
    crate::stdout::print_ready("data-plane", &ready);
    dp.run_until_shutdown(shutdown).await.context("data plane")?;
    Ok(())
}

/// The Azure credential for endpoints in Entra ID auth mode, from the same variables as the
/// control plane's discovery (`MODELGW_AZURE_CREDENTIAL` & co.). Opt-in: without
/// `MODELGW_AZURE_CREDENTIAL` there is none (no metadata-service probe at start). An explicit
/// kind is built without fetching (the token refresh retries); a misconfigured one fails the
/// start. `auto` picks the first credential that gets a token.
async fn entra_credential() -> anyhow::Result<Option<Arc<dyn TokenCredential>>> {
    if std::env::var_os(CREDENTIAL_ENV).is_none() {
        tracing::info!(
            "{CREDENTIAL_ENV} is not set: endpoints in Entra ID auth mode are unavailable"
        );
        return Ok(None);
    }
    let settings = CredentialSettings::from_env()?;
    let options = CredentialOptions::default();
    if let Some(credential) = build_chosen(&settings, &options)
        .map_err(|reason| anyhow::anyhow!("Azure credential for Entra ID endpoints: {reason}"))?
    {
        tracing::info!(choice = %settings.choice, "Azure credential for Entra ID endpoints configured");
        return Ok(Some(credential));
    }
    match tokio::time::timeout(
        ENTRA_RESOLVE_TIMEOUT,
        resolve(&settings, &options, DEFAULT_ENTRA_SCOPE),
    )
    .await
    {
        Ok(Ok(resolved)) => Ok(Some(resolved.credential)),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "no Azure credential works: endpoints in Entra ID auth mode are unavailable");
            Ok(None)
        }
        Err(_) => {
            tracing::warn!(
                timeout_s = ENTRA_RESOLVE_TIMEOUT.as_secs(),
                "no Azure credential within the timeout: endpoints in Entra ID auth mode are unavailable"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn args(file: Option<&str>, key_file: Option<PathBuf>) -> SnapshotArgs {
        SnapshotArgs {
            snapshot_file: file.map(PathBuf::from),
            snapshot_key_file: key_file,
            snapshot_max_age: None,
        }
    }

    #[test]
    fn a_snapshot_file_needs_exactly_one_key_and_never_goes_plaintext() {
        let err = args(Some("/state/snap"), None).resolve(None).unwrap_err().to_string();
        assert!(err.contains("no key seals it") && err.contains("MODELGW_SNAPSHOT_KEY"), "{err}");
        let err = args(Some("/state/snap"), None).resolve(Some("  ")).unwrap_err().to_string();
        assert!(err.contains("no key seals it"), "an empty variable is no key: {err}");
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, KEY).unwrap();
        let both = args(Some("/state/snap"), Some(key_file.clone())).resolve(Some(KEY));
        assert!(both.unwrap_err().to_string().contains("use one"));
        let short = args(Some("/state/snap"), None).resolve(Some("c2hvcnQ=")).unwrap_err();
        let short = format!("{short:#}");
        assert!(
            short.starts_with("MODELGW_SNAPSHOT_KEY: the snapshot key must be 32 bytes"),
            "{short}"
        );
        assert!(!short.contains("c2hvcnQ"), "the key is not echoed: {short}");

        let from_env = args(Some("/state/snap"), None).resolve(Some(KEY)).unwrap().unwrap();
        assert_eq!(from_env.path, PathBuf::from("/state/snap"));
        assert_eq!(from_env.max_age, DEFAULT_SNAPSHOT_MAX_AGE);
        let mut from_file = args(Some("/state/snap"), Some(key_file));
        from_file.snapshot_max_age = Some(Duration::from_secs(60));
        assert_eq!(from_file.resolve(None).unwrap().unwrap().max_age, Duration::from_secs(60));
        // A key alone configures nothing (a warning says so).
        assert!(args(None, None).resolve(Some(KEY)).unwrap().is_none());
    }
}
