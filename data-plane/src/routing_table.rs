//! The routing table: one immutable value compiled once per configuration snapshot, and the
//! store that swaps it atomically.
//!
//! Everything a request needs that depends only on configuration is computed here, once:
//! lookups by key hash and gateway name, members grouped by priority, upstream base URLs,
//! the credential as a ready `HeaderValue`, the deployment as a JSON literal for body
//! rewrites, each key's chain of ancestors with their limits (its budgets attached by the
//! [`KeyLimiter`] at the swap). The request path then only reads (`SnapshotStore::load`),
//! never locks or awaits.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use modelgw_model::keys::{KeyLimitPolicy, KeyLimits};
use modelgw_model::{
    ConfigVersion, Credential, EndpointId, GatewayId, GatewayKeyId, InvalidSnapshot, Platform,
    RoutingPolicy, Snapshot,
};
use tokio::sync::watch;
use tracing::info;

use crate::limits::{KeyChain, KeyLimiter};
use crate::metrics::{EndpointMetrics, GatewayMetrics, Metrics, RouteMetrics};
use crate::pin::{EndpointTag, GatewayPinKey, GatewayPins, PinSigner, endpoint_tag};
use crate::snapshot_file::DiskOrigin;
use crate::traces::CompiledTraces;

/// Header Azure OpenAI reads the resource key from.
pub(crate) const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// Why a snapshot cannot be served; becomes the NACK reason. The rules are
/// [`Snapshot::validate`]'s (one rule set for the store, the wire and this compile step);
/// what remains here can only fail for values no rule lets through. Names the field and never
/// contains a secret.
pub type CompileError = InvalidSnapshot;

fn compile_error(field: String, reason: impl Into<String>) -> CompileError {
    InvalidSnapshot::new(field, reason)
}

/// An Inference Endpoint with everything the upstream request needs precomputed.
pub struct CompiledEndpoint {
    pub id: EndpointId,
    pub name: String,
    pub region: String,
    pub platform: Platform,
    /// Deployment (Azure) or model (OpenAI-compatible) name at the upstream.
    pub deployment: String,
    /// `deployment` as a JSON string literal, spliced into request bodies as `model`.
    pub(crate) deployment_json: Bytes,
    /// `deployment` percent-encoded as one URL path segment.
    pub(crate) deployment_segment: String,
    /// Base URL without trailing slash, e.g. `https://res.openai.azure.com`.
    pub(crate) base: String,
    /// Scheme and authority of `base`, and its path without trailing slash (often empty),
    /// split once here: a request's URI is built from them without parsing a URL per request.
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) authority: http::uri::Authority,
    pub(crate) path_prefix: String,
    /// How the upstream request is authenticated.
    pub(crate) auth: UpstreamAuth,
    /// `name` as a response header value (`x-modelgw-endpoint`).
    pub(crate) name_header: HeaderValue,
    /// `name` reduced to characters safe inside `x-modelgw-attempts` (no `,` or `:`).
    pub(crate) attempt_label: String,
    /// Which endpoint a pinned response id names (`pin.rs`).
    pub(crate) pin_tag: EndpointTag,
    /// Quota gauges, set when the table is attached to the metrics (unset with metrics off).
    pub(crate) metrics: OnceLock<Arc<EndpointMetrics>>,
}

impl fmt::Debug for CompiledEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written so the credential can never end up in a log through `{:?}`.
        f.debug_struct("CompiledEndpoint")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("region", &self.region)
            .field("platform", &self.platform)
            .field("deployment", &self.deployment)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The credential of one endpoint, as the request path injects it.
pub(crate) enum UpstreamAuth {
    /// A precomputed header (`api-key` or `authorization`), value marked sensitive.
    Static { name: HeaderName, value: HeaderValue },
    /// `Authorization: Bearer` with the current Entra ID token for `scope`, kept fresh off the
    /// request path by [`crate::entra::EntraTokens`].
    Entra { scope: Arc<str> },
}

/// One enabled member of a gateway.
#[derive(Debug, Clone)]
pub struct CompiledMember {
    pub endpoint: Arc<CompiledEndpoint>,
    /// Relative share within its priority group; 0 = only when the others are unusable.
    pub weight: u32,
    /// The pair's counters, attached with the table (`None` with metrics off).
    pub metrics: Option<Arc<RouteMetrics>>,
    /// Mints the pinned ids of the responses this member creates through this gateway.
    pub(crate) pin: PinSigner,
}

/// Enabled members sharing one priority; lower priorities are tried first.
#[derive(Debug, Clone)]
pub struct PriorityGroup {
    pub priority: u32,
    pub members: Vec<CompiledMember>,
    /// Where quota-aware `weighted` selection stands in its smooth round robin.
    pub spread: crate::balance::Spread,
}

/// A gateway key as the request path needs it.
#[derive(Debug)]
pub struct CompiledKey {
    pub id: GatewayKeyId,
    /// For logs (not a secret).
    pub name: String,
    /// Unix ms from which the key is refused (as unknown).
    pub expires_unix_ms: Option<i64>,
    /// The key itself, then each ancestor up to its root, with the limits each sets.
    pub(crate) ancestry: Box<[(GatewayKeyId, KeyLimits)]>,
    /// Its budgets and theirs, attached with the table (`None` before).
    pub(crate) chain: Option<KeyChain>,
}

impl CompiledKey {
    /// Whether the key has expired at `now_unix_ms`.
    #[inline]
    pub fn expired(&self, now_unix_ms: i64) -> bool {
        self.expires_unix_ms.is_some_and(|at| now_unix_ms >= at)
    }
}

/// A gateway: its name (what clients put as deployment / model, besides `auto`) and its
/// enabled members grouped by ascending priority. Disabled members are not compiled in.
#[derive(Debug)]
pub struct CompiledGateway {
    pub id: GatewayId,
    pub name: String,
    pub groups: Vec<PriorityGroup>,
    /// Strategy, recovery waiting and deadline, as configured.
    pub routing: RoutingPolicy,
    /// How its keys' limits are enforced.
    pub key_limits: KeyLimitPolicy,
    /// Its keys, parents before their children.
    pub keys: Vec<CompiledKey>,
    /// The gateway's own answers and overhead, attached with the table (`None` with metrics
    /// off).
    pub metrics: Option<Arc<GatewayMetrics>>,
    /// What the gateway traces of each request (`None`: traces off, nothing recorded).
    pub traces: Option<Arc<CompiledTraces>>,
    /// Its answers to `GET …/models`, built by the first request that needs them.
    pub(crate) models: crate::proxy::models::ModelsAnswer,
    /// Its pin key and members by tag: where a pinned response id leads.
    pub(crate) pins: GatewayPins,
}

impl CompiledGateway {
    /// Number of enabled members over all priority groups.
    pub fn member_count(&self) -> usize {
        self.groups.iter().map(|g| g.members.len()).sum()
    }
}

/// The compiled routing configuration at one version.
#[derive(Debug)]
pub struct RoutingTable {
    version: ConfigVersion,
    gateways: Vec<CompiledGateway>,
    by_name: HashMap<String, usize>,
    /// Key hash → (gateway, key) indexes.
    by_key: HashMap<[u8; 32], (usize, usize)>,
    endpoint_count: usize,
    /// Distinct scopes of `entra` endpoints, for which tokens must be kept fresh.
    entra_scopes: Vec<Arc<str>>,
    /// Every configured endpoint by its pin tag: names the endpoint of a pinned id whose
    /// endpoint is no longer a member of the gateway (a rare path, never a hot one).
    by_pin_tag: HashMap<EndpointTag, Vec<Arc<CompiledEndpoint>>>,
    /// Set when the table was loaded from the sealed snapshot file at start rather than sent
    /// by a control plane: it may be stale, and the first control plane's snapshot replaces it
    /// whatever its version.
    from_disk: Option<DiskOrigin>,
}

impl RoutingTable {
    /// The table before any snapshot: version 0, no gateway, no key.
    pub fn empty() -> Self {
        Self {
            version: ConfigVersion(0),
            gateways: Vec::new(),
            by_name: HashMap::new(),
            by_key: HashMap::new(),
            endpoint_count: 0,
            entra_scopes: Vec::new(),
            by_pin_tag: HashMap::new(),
            from_disk: None,
        }
    }

    /// Validates ([`Snapshot::validate`]) and compiles a snapshot. Fails with the field named.
    pub fn compile(snapshot: &Snapshot) -> Result<Self, CompileError> {
        snapshot.validate()?;
        let mut endpoints: HashMap<EndpointId, Arc<CompiledEndpoint>> =
            HashMap::with_capacity(snapshot.endpoints.len());
        for (i, e) in snapshot.endpoints.iter().enumerate() {
            let field = |name: &str| format!("endpoints[{i}].{name}");
            let url = &e.base_url;
            let base = url.as_str().trim_end_matches('/').to_owned();
            let scheme = http::uri::Scheme::try_from(url.scheme())
                .map_err(|_| compile_error(field("base_url"), "unsupported scheme"))?;
            let authority = http::uri::Authority::try_from(
                &url[url::Position::BeforeHost..url::Position::AfterPort],
            )
            .map_err(|_| compile_error(field("base_url"), "not a valid host and port"))?;
            let path_prefix = url.path().trim_end_matches('/').to_owned();
            let auth = match &e.credential {
                Credential::ApiKey(key) => {
                    let (name, raw_value) = match e.platform {
                        Platform::AzureOpenai => (API_KEY, key.expose().to_owned()),
                        Platform::OpenaiCompatible => {
                            (AUTHORIZATION, format!("Bearer {}", key.expose()))
                        }
                    };
                    let mut value = HeaderValue::from_str(&raw_value).map_err(|_| {
                        compile_error(field("credential"), "not a valid header value")
                    })?;
                    value.set_sensitive(true);
                    UpstreamAuth::Static { name, value }
                }
                Credential::Entra { scope } => {
                    UpstreamAuth::Entra { scope: Arc::from(scope.as_str()) }
                }
            };
            let deployment_json = serde_json::to_vec(&e.deployment)
                .map_err(|err| compile_error(field("deployment"), err.to_string()))?;
            let attempt_label = header_safe(&e.name, |c| c != ',' && c != ':');
            let name_header = HeaderValue::from_str(&header_safe(&e.name, |_| true))
                .map_err(|_| compile_error(field("name"), "not representable in a header"))?;
            let compiled = CompiledEndpoint {
                id: e.id,
                name: e.name.clone(),
                region: e.region.clone(),
                platform: e.platform,
                deployment: e.deployment.clone(),
                deployment_json: Bytes::from(deployment_json),
                deployment_segment: encode_path_segment(&e.deployment),
                base,
                scheme,
                authority,
                path_prefix,
                auth,
                name_header,
                attempt_label,
                pin_tag: endpoint_tag(e.id),
                metrics: OnceLock::new(),
            };
            endpoints.insert(e.id, Arc::new(compiled));
        }

        let mut gateways = Vec::with_capacity(snapshot.gateways.len());
        let mut by_name = HashMap::with_capacity(snapshot.gateways.len());
        let mut by_key = HashMap::new();
        for (i, g) in snapshot.gateways.iter().enumerate() {
            let pin_key = GatewayPinKey::new(&g.pin_key);
            let mut groups: Vec<PriorityGroup> = Vec::new();
            let mut disabled = Vec::new();
            for (j, m) in g.members.iter().enumerate() {
                // Unreachable after `validate`; kept so a bug there cannot become a panic.
                let endpoint = endpoints.get(&m.endpoint_id).ok_or_else(|| {
                    compile_error(
                        format!("gateways[{i}].members[{j}].endpoint_id"),
                        format!("unknown endpoint {}", m.endpoint_id),
                    )
                })?;
                if !m.enabled {
                    disabled.push(Arc::clone(endpoint));
                    continue;
                }
                let member = CompiledMember {
                    endpoint: Arc::clone(endpoint),
                    weight: m.weight,
                    metrics: None,
                    pin: PinSigner::new(&pin_key, endpoint.id, endpoint.pin_tag),
                };
                match groups.iter_mut().find(|group| group.priority == m.priority) {
                    Some(group) => group.members.push(member),
                    None => groups.push(PriorityGroup {
                        priority: m.priority,
                        members: vec![member],
                        spread: crate::balance::Spread::default(),
                    }),
                }
            }
            groups.sort_by_key(|group| group.priority);
            let mut pins = GatewayPins::new(pin_key);
            for (group, members) in groups.iter().enumerate() {
                for (member, m) in members.members.iter().enumerate() {
                    pins.add(&m.endpoint, Some((group, member)));
                }
            }
            for endpoint in &disabled {
                pins.add(endpoint, None);
            }
            pins.seal();
            let index = gateways.len();
            by_name.insert(g.name.clone(), index);
            let keys = compile_keys(g);
            for (j, k) in g.keys.iter().enumerate() {
                by_key.insert(k.sha256, (index, j));
            }
            gateways.push(CompiledGateway {
                id: g.id,
                name: g.name.clone(),
                groups,
                routing: g.routing,
                key_limits: g.key_limits,
                keys,
                metrics: None,
                traces: CompiledTraces::compile(&g.traces),
                models: crate::proxy::models::ModelsAnswer::new(&g.name, g.id),
                pins,
            });
        }
        let mut entra_scopes: Vec<Arc<str>> = endpoints
            .values()
            .filter_map(|e| match &e.auth {
                UpstreamAuth::Entra { scope } => Some(Arc::clone(scope)),
                UpstreamAuth::Static { .. } => None,
            })
            .collect();
        entra_scopes.sort();
        entra_scopes.dedup();
        let mut by_pin_tag: HashMap<EndpointTag, Vec<Arc<CompiledEndpoint>>> = HashMap::new();
        for endpoint in endpoints.values() {
            by_pin_tag.entry(endpoint.pin_tag).or_default().push(Arc::clone(endpoint));
        }
        Ok(Self {
            version: snapshot.version,
            gateways,
            by_name,
            by_key,
            endpoint_count: endpoints.len(),
            entra_scopes,
            by_pin_tag,
            from_disk: None,
        })
    }

    /// Where the table came from when it is the sealed snapshot loaded from disk at start
    /// (`None`: from a control plane, or built in process).
    pub fn from_disk(&self) -> Option<DiskOrigin> {
        self.from_disk
    }

    /// Distinct Entra ID scopes the endpoints of this table need tokens for.
    pub fn entra_scopes(&self) -> &[Arc<str>] {
        &self.entra_scopes
    }

    pub fn version(&self) -> ConfigVersion {
        self.version
    }

    /// The gateway a client key (by its SHA-256) belongs to.
    pub fn gateway_for_key(&self, key_sha256: &[u8; 32]) -> Option<&CompiledGateway> {
        self.key(key_sha256).map(|(gateway, _)| gateway)
    }

    /// A client key (by its SHA-256) and its gateway.
    #[inline]
    pub fn key(&self, key_sha256: &[u8; 32]) -> Option<(&CompiledGateway, &CompiledKey)> {
        let &(g, k) = self.by_key.get(key_sha256)?;
        let gateway = self.gateways.get(g)?;
        Some((gateway, gateway.keys.get(k)?))
    }

    pub fn gateway_by_name(&self, name: &str) -> Option<&CompiledGateway> {
        self.by_name.get(name).map(|&i| &self.gateways[i])
    }

    /// The gateways, to attach their counters before the table is served.
    pub(crate) fn gateways_mut(&mut self) -> &mut [CompiledGateway] {
        &mut self.gateways
    }

    pub fn gateways(&self) -> &[CompiledGateway] {
        &self.gateways
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoint_count
    }

    /// The configured endpoints whose pin tag is `tag` (usually none or one).
    pub(crate) fn endpoints_tagged(&self, tag: EndpointTag) -> &[Arc<CompiledEndpoint>] {
        self.by_pin_tag.get(&tag).map_or(&[], Vec::as_slice)
    }
}

/// A gateway's keys with their ancestry (the snapshot lists parents first, which `validate`
/// checked; a parent missing anyway just ends the chain).
fn compile_keys(g: &modelgw_model::Gateway) -> Vec<CompiledKey> {
    let mut index: HashMap<GatewayKeyId, usize> = HashMap::with_capacity(g.keys.len());
    let mut keys: Vec<CompiledKey> = Vec::with_capacity(g.keys.len());
    for k in &g.keys {
        let mut ancestry = vec![(k.id, k.limits)];
        if let Some(parent) = k.parent.and_then(|p| index.get(&p)) {
            ancestry.extend(keys[*parent].ancestry.iter().copied());
        }
        index.insert(k.id, keys.len());
        keys.push(CompiledKey {
            id: k.id,
            name: k.name.clone(),
            expires_unix_ms: k.expires_unix_ms,
            ancestry: ancestry.into_boxed_slice(),
            chain: None,
        });
    }
    keys
}

/// Replaces characters a header value cannot carry (and those `keep` rejects) with `_`.
fn header_safe(name: &str, keep: impl Fn(char) -> bool) -> String {
    name.chars().map(|c| if (' '..='~').contains(&c) && keep(c) { c } else { '_' }).collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The current routing table behind one `ArcSwap`: readers never block, and a swap is one
/// atomic pointer store. Older or equal versions are refused so a reordered or repeated
/// delivery can never roll the configuration back.
pub struct SnapshotStore {
    current: ArcSwap<RoutingTable>,
    version_tx: watch::Sender<ConfigVersion>,
    /// Gives each table swapped in its counters (kept across swaps by id).
    metrics: Arc<Metrics>,
    /// Gives each table's keys their budgets (kept across swaps by key id).
    limits: Arc<KeyLimiter>,
}

impl Default for SnapshotStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotStore").field("version", &self.version()).finish()
    }
}

/// Frees a table that was just replaced on a blocking thread rather than on the applying task
/// when this is its last reference: at 10,000 endpoints that drop (compiled endpoints, their
/// metrics handles, clients, pin tables) was ~15 % of an apply (`perf`, BENCHMARKS.md), time
/// the acknowledgement and the next snapshot waited for. A table requests still hold is freed
/// by the last of them, as before; outside a runtime (tests, tools) it is freed here.
fn free_off_task(table: Arc<RoutingTable>) {
    if Arc::strong_count(&table) > 1 {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        drop(runtime.spawn_blocking(move || drop(table)));
    }
}

impl SnapshotStore {
    /// A store holding the empty table (version 0): not ready.
    pub fn new() -> Self {
        Self::with_metrics(Arc::new(Metrics::default()))
    }

    /// A store whose tables get their counters from `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        let (version_tx, _) = watch::channel(ConfigVersion(0));
        Self {
            current: ArcSwap::from_pointee(RoutingTable::empty()),
            version_tx,
            metrics,
            limits: Arc::new(KeyLimiter::new()),
        }
    }

    /// The metrics the tables are attached to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The key limits the tables' keys are attached to.
    pub fn key_limits(&self) -> &Arc<KeyLimiter> {
        &self.limits
    }

    /// The current table. Cheap (one atomic increment); hold it for the whole request so
    /// every attempt sees the same configuration.
    pub fn load(&self) -> Arc<RoutingTable> {
        self.current.load_full()
    }

    /// Installs `table` if its version is newer than the current one, or if the current one
    /// came from disk; `true` if it did. The first table after one from disk replaces it at
    /// any version: the control plane is the source of truth, and its database may have been
    /// restored to an older version than the file holds.
    pub fn swap_if_newer(&self, mut table: RoutingTable) -> bool {
        let new_version = table.version;
        let current = self.current.load();
        let from_disk = current.from_disk;
        if new_version <= current.version && from_disk.is_none() {
            return false;
        }
        drop(current);
        // Snapshots are applied by one task; the check above and the swap below do not race.
        self.metrics.attach(&mut table);
        self.limits.attach(&mut table);
        let table = Arc::new(table);
        let previous = self.current.rcu(|current| {
            if new_version > current.version || current.from_disk.is_some() {
                Arc::clone(&table)
            } else {
                Arc::clone(current)
            }
        });
        let swapped = new_version > previous.version || previous.from_disk.is_some();
        if swapped {
            self.version_tx.send_replace(new_version);
            if let Some(origin) = previous.from_disk {
                info!(
                    version = new_version.0,
                    disk_version = previous.version.0,
                    disk_age_s = origin.age().as_secs(),
                    "the control plane's snapshot replaced the one loaded from disk; no longer stale"
                );
            }
            free_off_task(previous);
        }
        swapped
    }

    /// Installs `table`, read from the sealed snapshot file at start, marked as from disk
    /// (stale until a control plane's snapshot replaces it). Only into an empty store: a
    /// control plane's table is never replaced by the file's.
    pub fn install_from_disk(&self, mut table: RoutingTable, origin: DiskOrigin) -> bool {
        if self.is_ready() {
            return false;
        }
        table.from_disk = Some(origin);
        self.swap_if_newer(table)
    }

    /// The origin of the table served when it came from disk: serving, but maybe stale.
    pub fn stale(&self) -> Option<DiskOrigin> {
        self.current.load().from_disk
    }

    /// Version of the current table; 0 before the first snapshot.
    pub fn version(&self) -> ConfigVersion {
        self.current.load().version
    }

    /// Whether a snapshot has been applied (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.version() > ConfigVersion(0)
    }

    /// Follows the applied version, e.g. to wait until a given version is served.
    pub fn subscribe(&self) -> watch::Receiver<ConfigVersion> {
        self.version_tx.subscribe()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use modelgw_model::{
        Endpoint, Gateway, GatewayKey, GatewayKeyId, GatewayMember, Secret, gateway_key_hash,
    };

    pub(crate) fn endpoint(name: &str, platform: Platform, deployment: &str) -> Endpoint {
        Endpoint {
            id: EndpointId::new(),
            name: name.to_owned(),
            platform,
            base_url: url::Url::parse("https://res.openai.azure.com/").expect("url"),
            deployment: deployment.to_owned(),
            model_name: "gpt-4o".into(),
            model_version: "2024-11-20".into(),
            region: "eastus".into(),
            credential: Credential::ApiKey(Secret::new(format!("upstream-key-{name}"))),
        }
    }

    pub(crate) fn member(e: &Endpoint, enabled: bool, priority: u32, weight: u32) -> GatewayMember {
        GatewayMember { endpoint_id: e.id, enabled, priority, weight }
    }

    pub(crate) fn gateway(name: &str, key: &str, members: Vec<GatewayMember>) -> Gateway {
        Gateway {
            id: GatewayId::new(),
            name: name.to_owned(),
            members,
            keys: vec![GatewayKey::new(GatewayKeyId::new(), gateway_key_hash(key), "test")],
            routing: Default::default(),
            key_limits: Default::default(),
            traces: Default::default(),
            pin_key: modelgw_model::PinKey::new([9; 32]),
        }
    }

    /// One gateway (`chat`, key `client-key`) over one endpoint, at `version`.
    pub(crate) fn one_gateway(version: u64) -> Snapshot {
        let e = endpoint("eus", Platform::AzureOpenai, "gpt-4o");
        let gw = gateway("chat", "client-key", vec![member(&e, true, 0, 1)]);
        Snapshot { version: ConfigVersion(version), endpoints: vec![e], gateways: vec![gw] }
    }

    fn sample() -> Snapshot {
        let a = endpoint("eus, primary", Platform::AzureOpenai, "gpt 4o");
        let b = endpoint("swc", Platform::OpenaiCompatible, "gpt-4o");
        let c = endpoint("off", Platform::AzureOpenai, "gpt-4o");
        let gw = gateway(
            "chat",
            "key-chat",
            vec![member(&b, true, 2, 1), member(&a, true, 1, 3), member(&c, false, 1, 1)],
        );
        Snapshot { version: ConfigVersion(7), endpoints: vec![a, b, c], gateways: vec![gw] }
    }

    #[test]
    fn compile_groups_enabled_members_by_ascending_priority() {
        let table = RoutingTable::compile(&sample()).expect("compiles");
        assert_eq!(table.version(), ConfigVersion(7));
        assert_eq!(table.endpoint_count(), 3);
        let gw = table.gateway_for_key(&modelgw_model::gateway_key_hash("key-chat")).expect("key");
        assert_eq!(gw.name, "chat");
        assert_eq!(gw.groups.iter().map(|g| g.priority).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(gw.groups[0].members.len(), 1, "the disabled member is not compiled in");
        assert_eq!(gw.groups[0].members[0].endpoint.name, "eus, primary");
        assert_eq!(gw.groups[0].members[0].weight, 3);
        assert_eq!(gw.member_count(), 2);
        assert!(table.gateway_by_name("chat").is_some());
        assert!(table.gateway_for_key(&modelgw_model::gateway_key_hash("other")).is_none());
    }

    #[test]
    fn compile_precomputes_upstream_bits() {
        let table = RoutingTable::compile(&sample()).expect("compiles");
        let gw = table.gateway_by_name("chat").expect("gateway");
        let azure = &gw.groups[0].members[0].endpoint;
        assert_eq!(azure.base, "https://res.openai.azure.com");
        let UpstreamAuth::Static { name, value } = &azure.auth else { panic!("static auth") };
        assert_eq!(*name, API_KEY);
        assert_eq!(value.to_str().expect("ascii"), "upstream-key-eus, primary");
        assert!(value.is_sensitive());
        assert_eq!(&azure.deployment_json[..], br#""gpt 4o""#);
        assert_eq!(azure.deployment_segment, "gpt%204o");
        assert_eq!(azure.attempt_label, "eus_ primary");
        assert!(!format!("{azure:?}").contains("upstream-key"), "Debug must not show the key");
        let compatible = &gw.groups[1].members[0].endpoint;
        let UpstreamAuth::Static { name, value } = &compatible.auth else { panic!("static auth") };
        assert_eq!(*name, AUTHORIZATION);
        assert_eq!(value.to_str().expect("ascii"), "Bearer upstream-key-swc");
        assert!(table.entra_scopes().is_empty());
    }

    #[test]
    fn an_entra_endpoint_compiles_to_its_scope_and_no_header() {
        let mut s = sample();
        s.endpoints[0].credential =
            Credential::Entra { scope: modelgw_model::DEFAULT_ENTRA_SCOPE.to_owned() };
        s.endpoints[1].credential =
            Credential::Entra { scope: modelgw_model::DEFAULT_ENTRA_SCOPE.to_owned() };
        let table = RoutingTable::compile(&s).expect("compiles");
        let scopes: Vec<&str> = table.entra_scopes().iter().map(|s| &**s).collect();
        assert_eq!(scopes, [modelgw_model::DEFAULT_ENTRA_SCOPE], "one scope, deduplicated");
        let gw = table.gateway_by_name("chat").expect("gateway");
        let UpstreamAuth::Entra { scope } = &gw.groups[0].members[0].endpoint.auth else {
            panic!("entra auth")
        };
        assert_eq!(&**scope, modelgw_model::DEFAULT_ENTRA_SCOPE);
        s.endpoints[0].credential = Credential::Entra { scope: " ".to_owned() };
        let err = RoutingTable::compile(&s).expect_err("rejected");
        assert_eq!(err.to_string(), "endpoints[0].credential: empty Entra scope");
    }

    #[test]
    fn compile_rejects_user_info_in_base_url_naming_the_field() {
        let mut s = sample();
        s.endpoints[1].base_url = url::Url::parse("https://u:p@host/").expect("url");
        let err = RoutingTable::compile(&s).expect_err("rejected");
        assert_eq!(err.to_string(), "endpoints[1].base_url: must not carry user info");
    }

    #[test]
    fn compile_rejects_a_credential_that_is_no_header_value_without_showing_it() {
        let mut s = sample();
        s.endpoints[0].credential = Credential::ApiKey(Secret::new("bad\nkey-secret"));
        let err = RoutingTable::compile(&s).expect_err("rejected");
        assert_eq!(err.to_string(), "endpoints[0].credential: not a valid header value");
    }

    #[test]
    fn compile_rejects_duplicate_members() {
        let mut s = sample();
        let first = s.gateways[0].members[0].clone();
        s.gateways[0].members.push(first);
        let err = RoutingTable::compile(&s).expect_err("rejected");
        assert!(err.field.starts_with("gateways[0].members[3]"), "{err}");
    }

    #[test]
    fn store_swaps_only_newer_versions_and_reports_readiness() {
        let store = SnapshotStore::new();
        assert!(!store.is_ready());
        let mut versions = store.subscribe();
        assert!(store.swap_if_newer(RoutingTable::compile(&sample()).expect("compiles")));
        assert!(store.is_ready());
        assert_eq!(store.version(), ConfigVersion(7));
        assert_eq!(*versions.borrow_and_update(), ConfigVersion(7));

        let mut older = sample();
        older.version = ConfigVersion(6);
        assert!(!store.swap_if_newer(RoutingTable::compile(&older).expect("compiles")));
        assert!(!store.swap_if_newer(RoutingTable::compile(&sample()).expect("compiles")));
        assert_eq!(store.version(), ConfigVersion(7));
        assert!(!versions.has_changed().expect("open"));

        let mut newer = sample();
        newer.version = ConfigVersion(8);
        newer.gateways.clear();
        assert!(store.swap_if_newer(RoutingTable::compile(&newer).expect("compiles")));
        assert!(store.load().gateways().is_empty());
    }

    /// The replaced table is freed: on a blocking thread inside a runtime, at once outside
    /// one, and by its last holder when a request still holds it.
    #[test]
    fn a_replaced_table_is_freed_off_the_applying_task_or_by_its_last_holder() {
        let versioned = |v: u64| {
            let mut s = sample();
            s.version = ConfigVersion(v);
            RoutingTable::compile(&s).expect("compiles")
        };
        let store = SnapshotStore::new();
        assert!(store.swap_if_newer(versioned(1)));
        let first = Arc::downgrade(&store.load());
        assert!(store.swap_if_newer(versioned(2)));
        assert!(first.upgrade().is_none(), "outside a runtime: freed by the swap");

        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        runtime.block_on(async {
            let second = Arc::downgrade(&store.load());
            assert!(store.swap_if_newer(versioned(3)));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while second.upgrade().is_some() {
                assert!(std::time::Instant::now() < deadline, "the replaced table was never freed");
                tokio::task::yield_now().await;
                std::thread::yield_now();
            }

            let held = store.load();
            let third = Arc::downgrade(&held);
            assert!(store.swap_if_newer(versioned(4)));
            assert_eq!(held.version, ConfigVersion(3), "a request keeps the table it loaded");
            drop(held);
            assert!(third.upgrade().is_none(), "freed by its last holder");
        });
    }

    #[test]
    fn a_table_from_disk_is_stale_until_any_control_plane_version_replaces_it() {
        let origin = DiskOrigin { confirmed_unix_ms: 1 };
        let store = SnapshotStore::new();
        assert!(
            store.install_from_disk(RoutingTable::compile(&sample()).expect("compiles"), origin)
        );
        assert!(store.is_ready());
        assert_eq!(store.stale(), Some(origin));
        assert_eq!(store.version(), ConfigVersion(7));
        // A restored control-plane database may be behind the file: its older version wins.
        let mut older = sample();
        older.version = ConfigVersion(5);
        assert!(store.swap_if_newer(RoutingTable::compile(&older).expect("compiles")));
        assert_eq!(store.stale(), None);
        assert_eq!(store.version(), ConfigVersion(5));
        // From then on, only newer versions, and never the file again.
        assert!(!store.swap_if_newer(RoutingTable::compile(&older).expect("compiles")));
        assert!(
            !store.install_from_disk(RoutingTable::compile(&sample()).expect("compiles"), origin)
        );
        assert_eq!(store.version(), ConfigVersion(5));

        // The same version as the file's replaces it too (ACKed as applied, not stale).
        let store = SnapshotStore::new();
        assert!(
            store.install_from_disk(RoutingTable::compile(&sample()).expect("compiles"), origin)
        );
        assert!(store.swap_if_newer(RoutingTable::compile(&sample()).expect("compiles")));
        assert_eq!(store.stale(), None);
    }
}
