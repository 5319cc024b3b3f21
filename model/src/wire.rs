//! The protocol boundary: every conversion between the domain types and the generated wire
//! types of `modelgw-proto`, with one mapping per enum. Decoding is `TryFrom` with a typed
//! error naming the field ([`InvalidSnapshot`] for snapshots, [`InvalidMessage`] for the rest);
//! encoding is `From`.
//!
//! Outside this module only the two transport files (the control plane's gRPC server and the
//! data plane's control-plane client) name a generated type; a test keeps it that way.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use modelgw_proto::cfg;

use crate::keys::{
    KeyLimitPolicy, KeyLimits, KeyUsage, LeaseGrant, Leases, MAX_GRANTS_PER_LEASES,
    MAX_USAGE_ENTRIES_PER_REPORT, Usage, UsageReport, Window, WindowLimits,
};
use crate::limits::{
    MAX_BUILD_VERSION_CHARS, MAX_REASON_CHARS, MAX_STATS_GATEWAYS_PER_REPORT,
    MAX_STATS_ROUTES_PER_REPORT, truncate_chars,
};
use crate::protocol::{
    ControlPlaneMessage, DataPlaneMessage, EndpointHealth, FleetHealth, HealthReport, HealthReset,
    Hello, InvalidMessage, Nack, bounded_reason, valid_node_id,
};
use crate::quota::{
    EndpointSpend, FleetQuota, FleetSpend, MAX_QUOTA_ENTRIES, QuotaPolicy, QuotaReport,
};
use crate::stats::{Buckets, GatewayStats, LATENCY_BUCKETS_MS, RouteStats, StatsReport};
use crate::traces::{
    MAX_CLIENT_REQUEST_ID_CHARS, MAX_TRACES_PER_BATCH, RequestTrace, TraceAttempt, TraceBatch,
    TraceSettings,
};
use crate::{
    ConfigVersion, Credential, DEFAULT_ENTRA_SCOPE, Endpoint, EndpointId, EndpointState, Gateway,
    GatewayId, GatewayKey, GatewayMember, InvalidSnapshot, NodeId, PinKey, Platform, RoutingPolicy,
    RoutingStrategy, Secret, Snapshot,
};

// ---- enums: one mapping each ----

impl From<Platform> for cfg::Platform {
    fn from(p: Platform) -> Self {
        match p {
            Platform::AzureOpenai => cfg::Platform::AzureOpenai,
            Platform::OpenaiCompatible => cfg::Platform::OpenaiCompatible,
        }
    }
}

impl TryFrom<i32> for Platform {
    type Error = String;
    fn try_from(raw: i32) -> Result<Self, String> {
        match cfg::Platform::try_from(raw) {
            Ok(cfg::Platform::AzureOpenai) => Ok(Platform::AzureOpenai),
            Ok(cfg::Platform::OpenaiCompatible) => Ok(Platform::OpenaiCompatible),
            _ => Err(format!("unknown platform {raw}")),
        }
    }
}

impl From<RoutingStrategy> for cfg::RoutingStrategy {
    fn from(s: RoutingStrategy) -> Self {
        match s {
            RoutingStrategy::Weighted => cfg::RoutingStrategy::Weighted,
            RoutingStrategy::Fastest => cfg::RoutingStrategy::Fastest,
        }
    }
}

impl TryFrom<i32> for RoutingStrategy {
    type Error = String;
    fn try_from(raw: i32) -> Result<Self, String> {
        match cfg::RoutingStrategy::try_from(raw) {
            // An unset strategy is the default one (proto3 zero value).
            Ok(cfg::RoutingStrategy::Unspecified | cfg::RoutingStrategy::Weighted) => {
                Ok(RoutingStrategy::Weighted)
            }
            Ok(cfg::RoutingStrategy::Fastest) => Ok(RoutingStrategy::Fastest),
            Err(_) => Err(format!("unknown strategy {raw}")),
        }
    }
}

impl From<EndpointState> for cfg::EndpointState {
    fn from(s: EndpointState) -> Self {
        match s {
            EndpointState::Healthy => cfg::EndpointState::Healthy,
            EndpointState::Throttling => cfg::EndpointState::Throttling,
            EndpointState::Error => cfg::EndpointState::Error,
        }
    }
}

impl TryFrom<i32> for EndpointState {
    type Error = String;
    fn try_from(raw: i32) -> Result<Self, String> {
        match cfg::EndpointState::try_from(raw) {
            Ok(cfg::EndpointState::Healthy) => Ok(EndpointState::Healthy),
            Ok(cfg::EndpointState::Throttling) => Ok(EndpointState::Throttling),
            Ok(cfg::EndpointState::Error) => Ok(EndpointState::Error),
            _ => Err(format!("unknown state {raw}")),
        }
    }
}

// ---- snapshot ----

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidSnapshot {
    InvalidSnapshot::new(field, reason)
}

fn parse_id<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, InvalidSnapshot> {
    value.parse().map_err(|_| {
        InvalidSnapshot::new(field, format!("not a UUID: {:?}", truncate_chars(value, 64)))
    })
}

impl TryFrom<cfg::Snapshot> for Snapshot {
    type Error = InvalidSnapshot;

    /// Reads the structure (ids, enums, URLs, hashes), then applies [`Snapshot::validate`].
    fn try_from(wire: cfg::Snapshot) -> Result<Self, Self::Error> {
        let mut endpoints = Vec::with_capacity(wire.endpoints.len());
        for (i, e) in wire.endpoints.into_iter().enumerate() {
            let f = |name: &str| format!("endpoints[{i}].{name}");
            let credential = match e.credential.and_then(|c| c.kind) {
                Some(cfg::credential::Kind::ApiKey(k)) if !k.is_empty() => {
                    Credential::ApiKey(Secret::new(k))
                }
                Some(cfg::credential::Kind::Entra(entra)) => Credential::Entra {
                    scope: if entra.scope.is_empty() {
                        DEFAULT_ENTRA_SCOPE.to_owned()
                    } else {
                        entra.scope
                    },
                },
                _ => return Err(invalid(f("credential"), "missing")),
            };
            endpoints.push(Endpoint {
                id: parse_id(&f("id"), &e.id)?,
                name: e.name,
                platform: Platform::try_from(e.platform).map_err(|r| invalid(f("platform"), r))?,
                base_url: url::Url::parse(&e.base_url)
                    .map_err(|err| invalid(f("base_url"), err.to_string()))?,
                deployment: e.deployment,
                model_name: e.model_name,
                model_version: e.model_version,
                region: e.region,
                credential,
            });
        }
        let mut gateways = Vec::with_capacity(wire.gateways.len());
        for (i, g) in wire.gateways.into_iter().enumerate() {
            let f = |name: &str| format!("gateways[{i}].{name}");
            let mut members = Vec::with_capacity(g.members.len());
            for (j, m) in g.members.into_iter().enumerate() {
                members.push(GatewayMember {
                    endpoint_id: parse_id(
                        &f(&format!("members[{j}].endpoint_id")),
                        &m.endpoint_id,
                    )?,
                    enabled: m.enabled,
                    priority: m.priority,
                    weight: m.weight,
                });
            }
            let mut keys = Vec::with_capacity(g.keys.len());
            for (j, k) in g.keys.into_iter().enumerate() {
                let sha256: [u8; 32] =
                    k.sha256.as_slice().try_into().map_err(|_| {
                        invalid(f(&format!("keys[{j}].sha256")), "must be 32 bytes")
                    })?;
                let parent = if k.parent_id.is_empty() {
                    None
                } else {
                    Some(parse_id(&f(&format!("keys[{j}].parent_id")), &k.parent_id)?)
                };
                keys.push(GatewayKey {
                    id: parse_id(&f(&format!("keys[{j}].id")), &k.id)?,
                    sha256,
                    name: k.name,
                    parent,
                    expires_unix_ms: (k.expires_unix_ms > 0).then_some(k.expires_unix_ms),
                    limits: k.limits.map(key_limits_from_wire).unwrap_or_default(),
                });
            }
            let routing = match g.routing {
                None => RoutingPolicy::default(),
                Some(r) => RoutingPolicy {
                    strategy: RoutingStrategy::try_from(r.strategy)
                        .map_err(|reason| invalid(f("routing.strategy"), reason))?,
                    wait_for_recovery: r.wait_for_recovery,
                    request_timeout_ms: (r.request_timeout_ms > 0).then_some(r.request_timeout_ms),
                    quota: quota_policy_from_wire(r.quota, &f)?,
                },
            };
            let key_limits =
                g.key_limits.map_or_else(KeyLimitPolicy::default, |p| KeyLimitPolicy {
                    default_completion_tokens: (p.default_completion_tokens > 0)
                        .then_some(p.default_completion_tokens),
                    fail_closed: p.fail_closed,
                });
            let traces = g.traces.map_or_else(TraceSettings::default, |t| TraceSettings {
                enabled: t.enabled,
                capture_payload: t.capture_payload,
                redact_fields: t.redact_fields,
                max_payload_bytes: (t.max_payload_bytes > 0).then_some(t.max_payload_bytes),
            });
            let pin_key = PinKey::from_slice(&g.pin_key)
                .ok_or_else(|| invalid(f("pin_key"), format!("must be {} bytes", PinKey::LEN)))?;
            gateways.push(Gateway {
                id: parse_id::<GatewayId>(&f("id"), &g.id)?,
                name: g.name,
                members,
                keys,
                routing,
                key_limits,
                traces,
                pin_key,
            });
        }
        Snapshot::new(ConfigVersion(wire.version), endpoints, gateways)
    }
}

impl From<&Snapshot> for cfg::Snapshot {
    fn from(s: &Snapshot) -> Self {
        cfg::Snapshot {
            version: s.version.0,
            endpoints: s.endpoints.iter().map(cfg::Endpoint::from).collect(),
            gateways: s.gateways.iter().map(cfg::Gateway::from).collect(),
        }
    }
}

impl From<&Endpoint> for cfg::Endpoint {
    fn from(e: &Endpoint) -> Self {
        let kind = match &e.credential {
            Credential::ApiKey(k) => cfg::credential::Kind::ApiKey(k.expose().to_owned()),
            Credential::Entra { scope } => {
                cfg::credential::Kind::Entra(cfg::EntraAuth { scope: scope.clone() })
            }
        };
        cfg::Endpoint {
            id: e.id.to_string(),
            name: e.name.clone(),
            platform: cfg::Platform::from(e.platform) as i32,
            base_url: e.base_url.to_string(),
            deployment: e.deployment.clone(),
            model_name: e.model_name.clone(),
            model_version: e.model_version.clone(),
            region: e.region.clone(),
            credential: Some(cfg::Credential { kind: Some(kind) }),
        }
    }
}

impl From<&Gateway> for cfg::Gateway {
    fn from(g: &Gateway) -> Self {
        cfg::Gateway {
            id: g.id.to_string(),
            name: g.name.clone(),
            members: g
                .members
                .iter()
                .map(|m| cfg::GatewayMember {
                    endpoint_id: m.endpoint_id.to_string(),
                    enabled: m.enabled,
                    priority: m.priority,
                    weight: m.weight,
                })
                .collect(),
            keys: g
                .keys
                .iter()
                .map(|k| cfg::GatewayKey {
                    id: k.id.to_string(),
                    sha256: k.sha256.to_vec(),
                    name: k.name.clone(),
                    parent_id: k.parent.map(|p| p.to_string()).unwrap_or_default(),
                    expires_unix_ms: k.expires_unix_ms.unwrap_or(0),
                    limits: (!k.limits.is_unlimited()).then(|| key_limits_to_wire(&k.limits)),
                })
                .collect(),
            routing: Some(cfg::RoutingPolicy {
                strategy: cfg::RoutingStrategy::from(g.routing.strategy) as i32,
                wait_for_recovery: g.routing.wait_for_recovery,
                request_timeout_ms: g.routing.request_timeout_ms.unwrap_or(0),
                quota: quota_policy_to_wire(&g.routing.quota),
            }),
            key_limits: Some(cfg::KeyLimitPolicy {
                default_completion_tokens: g.key_limits.default_completion_tokens.unwrap_or(0),
                fail_closed: g.key_limits.fail_closed,
            }),
            traces: g.traces.enabled.then(|| cfg::TraceSettings {
                enabled: true,
                capture_payload: g.traces.capture_payload,
                redact_fields: g.traces.redact_fields.clone(),
                max_payload_bytes: g.traces.max_payload_bytes.unwrap_or(0),
            }),
            pin_key: g.pin_key.expose().to_vec(),
        }
    }
}

/// The snapshot's protobuf encoding, done once per version and shared by every stream.
pub fn encode_snapshot(snapshot: &Snapshot) -> bytes::Bytes {
    bytes::Bytes::from(prost::Message::encode_to_vec(&cfg::Snapshot::from(snapshot)))
}

/// Decodes a snapshot from its protobuf encoding (as [`encode_snapshot`] makes it) and
/// validates it.
pub fn decode_snapshot(encoded: &[u8]) -> Result<Snapshot, InvalidSnapshot> {
    let wire: cfg::Snapshot = prost::Message::decode(encoded)
        .map_err(|e| InvalidSnapshot::new("snapshot", format!("not a Snapshot message: {e}")))?;
    Snapshot::try_from(wire)
}

/// The fleet quota's protobuf encoding (the `FleetQuota` message), done once per push and
/// shared by every stream.
pub fn encode_fleet_quota(quota: &FleetQuota) -> bytes::Bytes {
    bytes::Bytes::from(prost::Message::encode_to_vec(&cfg::FleetQuota::from(quota)))
}

/// Decodes a `FleetQuota` message (as [`encode_fleet_quota`] makes it); entries that do not
/// convert are listed in its `skipped`.
pub fn decode_fleet_quota(encoded: &[u8]) -> Result<FleetQuota, prost::DecodeError> {
    let wire: cfg::FleetQuota = prost::Message::decode(encoded)?;
    Ok(FleetQuota::from(wire))
}

// ---- health ----

fn unix_ms(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_unix_ms(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok().filter(|ms| *ms > 0)?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

impl From<&EndpointHealth> for cfg::EndpointHealth {
    fn from(h: &EndpointHealth) -> Self {
        cfg::EndpointHealth {
            endpoint_id: h.endpoint_id.to_string(),
            state: cfg::EndpointState::from(h.state) as i32,
            until_unix_ms: unix_ms(h.until),
            reason: h.reason.clone().unwrap_or_default(),
        }
    }
}

/// `routing.quota` of a gateway; absent = the defaults, a zero window = its default.
fn quota_policy_from_wire(
    wire: Option<cfg::QuotaPolicy>,
    field: &dyn Fn(&str) -> String,
) -> Result<QuotaPolicy, InvalidSnapshot> {
    let Some(q) = wire else { return Ok(QuotaPolicy::default()) };
    let window = |secs: u32, default: u32, name: &str| match secs {
        0 => Ok(default),
        s if QuotaPolicy::WINDOW_SECS_RANGE.contains(&s) => Ok(s),
        s => Err(invalid(field(name), format!("{s} is outside 1..=86400"))),
    };
    let reserve_percent = u8::try_from(q.reserve_percent)
        .ok()
        .filter(|r| QuotaPolicy::RESERVE_PERCENT_RANGE.contains(r))
        .ok_or_else(|| {
            invalid(
                field("routing.quota.reserve_percent"),
                format!("{} is outside 0..=50", q.reserve_percent),
            )
        })?;
    Ok(QuotaPolicy {
        enabled: !q.disabled,
        request_window_secs: window(
            q.request_window_secs,
            QuotaPolicy::DEFAULT_REQUEST_WINDOW_SECS,
            "routing.quota.request_window_secs",
        )?,
        token_window_secs: window(
            q.token_window_secs,
            QuotaPolicy::DEFAULT_TOKEN_WINDOW_SECS,
            "routing.quota.token_window_secs",
        )?,
        reserve_percent,
    })
}

/// `routing.quota` on the wire; the defaults are sent as absent.
fn quota_policy_to_wire(q: &QuotaPolicy) -> Option<cfg::QuotaPolicy> {
    (*q != QuotaPolicy::default()).then(|| cfg::QuotaPolicy {
        disabled: !q.enabled,
        request_window_secs: q.request_window_secs,
        token_window_secs: q.token_window_secs,
        reserve_percent: u32::from(q.reserve_percent),
    })
}

/// Parses `endpoints[i].endpoint_id` of `message`.
fn entry_endpoint_id(
    message: &'static str,
    i: usize,
    id: &str,
) -> Result<EndpointId, InvalidMessage> {
    id.parse::<EndpointId>().map_err(|_| {
        InvalidMessage::new(
            message,
            format!("endpoints[{i}].endpoint_id"),
            format!("not a UUID: {:?}", truncate_chars(id, 64)),
        )
    })
}

impl From<cfg::QuotaReport> for QuotaReport {
    fn from(wire: cfg::QuotaReport) -> Self {
        let mut endpoints = Vec::with_capacity(wire.endpoints.len().min(MAX_QUOTA_ENTRIES));
        let mut skipped = Vec::new();
        for (i, e) in wire.endpoints.into_iter().enumerate() {
            if i >= MAX_QUOTA_ENTRIES {
                skipped.push(InvalidMessage::new(
                    "QuotaReport",
                    "endpoints",
                    format!("more than {MAX_QUOTA_ENTRIES} entries; the rest ignored"),
                ));
                break;
            }
            match entry_endpoint_id("QuotaReport", i, &e.endpoint_id) {
                Ok(endpoint_id) => endpoints.push(EndpointSpend {
                    endpoint_id,
                    requests: e.requests,
                    tokens: e.tokens,
                }),
                Err(err) => skipped.push(err),
            }
        }
        QuotaReport { interval_ms: wire.interval_ms, endpoints, skipped }
    }
}

impl From<&QuotaReport> for cfg::QuotaReport {
    fn from(r: &QuotaReport) -> Self {
        cfg::QuotaReport {
            interval_ms: r.interval_ms,
            endpoints: r
                .endpoints
                .iter()
                .map(|e| cfg::EndpointSpend {
                    endpoint_id: e.endpoint_id.to_string(),
                    requests: e.requests,
                    tokens: e.tokens,
                })
                .collect(),
        }
    }
}

impl From<cfg::FleetQuota> for FleetQuota {
    fn from(wire: cfg::FleetQuota) -> Self {
        let mut endpoints = Vec::with_capacity(wire.endpoints.len().min(MAX_QUOTA_ENTRIES));
        let mut skipped = Vec::new();
        for (i, e) in wire.endpoints.into_iter().enumerate() {
            if i >= MAX_QUOTA_ENTRIES {
                skipped.push(InvalidMessage::new(
                    "FleetQuota",
                    "endpoints",
                    format!("more than {MAX_QUOTA_ENTRIES} entries; the rest ignored"),
                ));
                break;
            }
            match entry_endpoint_id("FleetQuota", i, &e.endpoint_id) {
                Ok(endpoint_id) => endpoints.push(FleetSpend {
                    endpoint_id,
                    requests_per_min: e.requests_per_min,
                    tokens_per_min: e.tokens_per_min,
                    data_planes: e.data_planes,
                }),
                Err(err) => skipped.push(err),
            }
        }
        FleetQuota { endpoints, skipped }
    }
}

impl From<&FleetQuota> for cfg::FleetQuota {
    fn from(f: &FleetQuota) -> Self {
        cfg::FleetQuota {
            endpoints: f
                .endpoints
                .iter()
                .map(|e| cfg::FleetSpend {
                    endpoint_id: e.endpoint_id.to_string(),
                    requests_per_min: e.requests_per_min,
                    tokens_per_min: e.tokens_per_min,
                    data_planes: e.data_planes,
                })
                .collect(),
        }
    }
}

/// Decodes one entry of `message` (a `HealthReport` or `FleetHealth`) at index `i`.
fn endpoint_health(
    message: &'static str,
    i: usize,
    e: cfg::EndpointHealth,
) -> Result<EndpointHealth, InvalidMessage> {
    let field = |name: &str| format!("endpoints[{i}].{name}");
    let endpoint_id = e.endpoint_id.parse::<EndpointId>().map_err(|_| {
        InvalidMessage::new(
            message,
            field("endpoint_id"),
            format!("not a UUID: {:?}", truncate_chars(&e.endpoint_id, 64)),
        )
    })?;
    let state = EndpointState::try_from(e.state)
        .map_err(|reason| InvalidMessage::new(message, field("state"), reason))?;
    let reason = bounded_reason(&e.reason);
    Ok(EndpointHealth { endpoint_id, state, until: from_unix_ms(e.until_unix_ms), reason })
}

/// Every readable entry, and why the others were skipped.
fn endpoint_health_list(
    message: &'static str,
    entries: Vec<cfg::EndpointHealth>,
) -> (Vec<EndpointHealth>, Vec<InvalidMessage>) {
    let mut endpoints = Vec::with_capacity(entries.len());
    let mut skipped = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        match endpoint_health(message, i, e) {
            Ok(h) => endpoints.push(h),
            Err(err) => skipped.push(err),
        }
    }
    (endpoints, skipped)
}

impl From<cfg::HealthReport> for HealthReport {
    fn from(wire: cfg::HealthReport) -> Self {
        let (endpoints, skipped) = endpoint_health_list("HealthReport", wire.endpoints);
        HealthReport { endpoints, skipped }
    }
}

impl From<&HealthReport> for cfg::HealthReport {
    fn from(r: &HealthReport) -> Self {
        cfg::HealthReport { endpoints: r.endpoints.iter().map(cfg::EndpointHealth::from).collect() }
    }
}

impl From<cfg::FleetHealth> for FleetHealth {
    fn from(wire: cfg::FleetHealth) -> Self {
        let (endpoints, mut skipped) = endpoint_health_list("FleetHealth", wire.endpoints);
        let mut resets = Vec::with_capacity(wire.resets.len());
        for (i, r) in wire.resets.into_iter().enumerate() {
            match health_reset(i, r) {
                Ok(r) => resets.push(r),
                Err(err) => skipped.push(err),
            }
        }
        FleetHealth { endpoints, resets, skipped }
    }
}

/// Decodes `FleetHealth.resets[i]`.
fn health_reset(i: usize, r: cfg::HealthReset) -> Result<HealthReset, InvalidMessage> {
    let field = |name: &str| format!("resets[{i}].{name}");
    let endpoint_id = r.endpoint_id.parse::<EndpointId>().map_err(|_| {
        InvalidMessage::new(
            "FleetHealth",
            field("endpoint_id"),
            format!("not a UUID: {:?}", truncate_chars(&r.endpoint_id, 64)),
        )
    })?;
    let at = from_unix_ms(r.at_unix_ms).ok_or_else(|| {
        InvalidMessage::new("FleetHealth", field("at_unix_ms"), "must be a positive time")
    })?;
    Ok(HealthReset { endpoint_id, at })
}

impl From<&FleetHealth> for cfg::FleetHealth {
    fn from(f: &FleetHealth) -> Self {
        cfg::FleetHealth {
            endpoints: f.endpoints.iter().map(cfg::EndpointHealth::from).collect(),
            resets: f
                .resets
                .iter()
                .map(|r| cfg::HealthReset {
                    endpoint_id: r.endpoint_id.to_string(),
                    at_unix_ms: unix_ms(Some(r.at)),
                })
                .collect(),
        }
    }
}

// ---- statistics ----

/// Parses an id field of entry `i` of a `StatsReport` list.
fn stats_id<T: std::str::FromStr>(
    list: &str,
    i: usize,
    name: &str,
    value: &str,
) -> Result<T, InvalidMessage> {
    value.parse::<T>().map_err(|_| {
        InvalidMessage::new(
            "StatsReport",
            format!("{list}[{i}].{name}"),
            format!("not a UUID: {:?}", truncate_chars(value, 64)),
        )
    })
}

/// A bucket list as sent: empty (nothing observed) or one count per bucket.
fn stats_buckets(i: usize, name: &str, counts: Vec<u64>) -> Result<Buckets, InvalidMessage> {
    let want = LATENCY_BUCKETS_MS.len() + 1;
    if !counts.is_empty() && counts.len() != want {
        return Err(InvalidMessage::new(
            "StatsReport",
            format!("routes[{i}].{name}"),
            format!("{} buckets, expected 0 or {want}", counts.len()),
        ));
    }
    Ok(Buckets { counts })
}

fn route_stats(i: usize, r: cfg::RouteStats) -> Result<RouteStats, InvalidMessage> {
    Ok(RouteStats {
        gateway_id: stats_id("routes", i, "gateway_id", &r.gateway_id)?,
        endpoint_id: stats_id("routes", i, "endpoint_id", &r.endpoint_id)?,
        requests: r.requests,
        errors: r.errors,
        throttled: r.throttled,
        failed_attempts: r.failed_attempts,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        latency: stats_buckets(i, "latency_buckets", r.latency_buckets)?,
        ttft: stats_buckets(i, "ttft_buckets", r.ttft_buckets)?,
    })
}

/// Keeps the first `max` entries of `list`; the rest is one skipped entry naming the field.
fn bounded<T>(
    list: &'static str,
    mut entries: Vec<T>,
    max: usize,
    skipped: &mut Vec<InvalidMessage>,
) -> Vec<T> {
    if entries.len() > max {
        skipped.push(InvalidMessage::new(
            "StatsReport",
            list,
            format!("{} entries, at most {max} read; the rest skipped", entries.len()),
        ));
        entries.truncate(max);
    }
    entries
}

impl From<cfg::StatsReport> for StatsReport {
    fn from(wire: cfg::StatsReport) -> Self {
        let mut skipped = Vec::new();
        let wire_routes = bounded("routes", wire.routes, MAX_STATS_ROUTES_PER_REPORT, &mut skipped);
        let wire_gateways =
            bounded("gateways", wire.gateways, MAX_STATS_GATEWAYS_PER_REPORT, &mut skipped);
        let mut routes = Vec::with_capacity(wire_routes.len());
        for (i, r) in wire_routes.into_iter().enumerate() {
            match route_stats(i, r) {
                Ok(r) => routes.push(r),
                Err(err) => skipped.push(err),
            }
        }
        let mut gateways = Vec::with_capacity(wire_gateways.len());
        for (i, g) in wire_gateways.into_iter().enumerate() {
            match stats_id("gateways", i, "gateway_id", &g.gateway_id) {
                Ok(gateway_id) => gateways.push(GatewayStats {
                    gateway_id,
                    throttled: g.throttled,
                    unavailable: g.unavailable,
                }),
                Err(err) => skipped.push(err),
            }
        }
        StatsReport { routes, gateways, skipped }
    }
}

impl From<&StatsReport> for cfg::StatsReport {
    fn from(r: &StatsReport) -> Self {
        cfg::StatsReport {
            routes: r
                .routes
                .iter()
                .map(|r| cfg::RouteStats {
                    gateway_id: r.gateway_id.to_string(),
                    endpoint_id: r.endpoint_id.to_string(),
                    requests: r.requests,
                    errors: r.errors,
                    throttled: r.throttled,
                    failed_attempts: r.failed_attempts,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    latency_buckets: r.latency.counts.clone(),
                    ttft_buckets: r.ttft.counts.clone(),
                })
                .collect(),
            gateways: r
                .gateways
                .iter()
                .map(|g| cfg::GatewayStats {
                    gateway_id: g.gateway_id.to_string(),
                    throttled: g.throttled,
                    unavailable: g.unavailable,
                })
                .collect(),
        }
    }
}

// ---- key limits ----

impl From<Window> for cfg::UsageWindow {
    fn from(w: Window) -> Self {
        match w {
            Window::Minute => cfg::UsageWindow::Minute,
            Window::Hour => cfg::UsageWindow::Hour,
            Window::Day => cfg::UsageWindow::Day,
        }
    }
}

impl TryFrom<i32> for Window {
    type Error = String;
    fn try_from(raw: i32) -> Result<Self, String> {
        match cfg::UsageWindow::try_from(raw) {
            Ok(cfg::UsageWindow::Minute) => Ok(Window::Minute),
            Ok(cfg::UsageWindow::Hour) => Ok(Window::Hour),
            Ok(cfg::UsageWindow::Day) => Ok(Window::Day),
            Ok(cfg::UsageWindow::Unspecified) | Err(_) => Err(format!("unknown window {raw}")),
        }
    }
}

fn limits_from_wire(u: cfg::Usage) -> WindowLimits {
    WindowLimits {
        requests: u.requests,
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.total_tokens,
    }
}

fn limits_to_wire(l: &WindowLimits) -> cfg::Usage {
    cfg::Usage {
        requests: l.requests,
        prompt_tokens: l.prompt_tokens,
        completion_tokens: l.completion_tokens,
        total_tokens: l.total_tokens,
    }
}

/// Usage is sent with every field set; an unset one reads as 0.
fn usage_from_wire(u: Option<cfg::Usage>) -> Usage {
    let u = u.unwrap_or_default();
    Usage {
        requests: u.requests.unwrap_or(0),
        prompt_tokens: u.prompt_tokens.unwrap_or(0),
        completion_tokens: u.completion_tokens.unwrap_or(0),
        total_tokens: u.total_tokens.unwrap_or(0),
    }
}

fn usage_to_wire(u: &Usage) -> cfg::Usage {
    cfg::Usage {
        requests: Some(u.requests),
        prompt_tokens: Some(u.prompt_tokens),
        completion_tokens: Some(u.completion_tokens),
        total_tokens: Some(u.total_tokens),
    }
}

fn key_limits_from_wire(l: cfg::KeyLimits) -> KeyLimits {
    KeyLimits {
        per_minute: l.per_minute.map(limits_from_wire).unwrap_or_default(),
        per_hour: l.per_hour.map(limits_from_wire).unwrap_or_default(),
        per_day: l.per_day.map(limits_from_wire).unwrap_or_default(),
    }
}

fn key_limits_to_wire(l: &KeyLimits) -> cfg::KeyLimits {
    let window = |w: &WindowLimits| (!w.is_unlimited()).then(|| limits_to_wire(w));
    cfg::KeyLimits {
        per_minute: window(&l.per_minute),
        per_hour: window(&l.per_hour),
        per_day: window(&l.per_day),
    }
}

/// The (key, window, window start) of entry `i` of a usage report or a lease list.
fn key_window(
    message: &'static str,
    list: &str,
    i: usize,
    key_id: &str,
    window: i32,
    window_start_unix_ms: i64,
) -> Result<(crate::GatewayKeyId, Window, i64), InvalidMessage> {
    let field = |name: &str| format!("{list}[{i}].{name}");
    let key_id = key_id.parse().map_err(|_| {
        InvalidMessage::new(
            message,
            field("key_id"),
            format!("not a UUID: {:?}", truncate_chars(key_id, 64)),
        )
    })?;
    let window = Window::try_from(window)
        .map_err(|reason| InvalidMessage::new(message, field("window"), reason))?;
    if !window.is_start(window_start_unix_ms) || window_start_unix_ms <= 0 {
        return Err(InvalidMessage::new(
            message,
            field("window_start_unix_ms"),
            format!("{window_start_unix_ms} is not the start of a {}", window.as_str()),
        ));
    }
    Ok((key_id, window, window_start_unix_ms))
}

/// Keeps the first `max` entries; the rest is one skipped entry naming the list.
fn keep_first<T>(
    message: &'static str,
    list: &'static str,
    mut entries: Vec<T>,
    max: usize,
    skipped: &mut Vec<InvalidMessage>,
) -> Vec<T> {
    if entries.len() > max {
        skipped.push(InvalidMessage::new(
            message,
            list,
            format!("{} entries, at most {max} read; the rest skipped", entries.len()),
        ));
        entries.truncate(max);
    }
    entries
}

impl From<cfg::UsageReport> for UsageReport {
    fn from(wire: cfg::UsageReport) -> Self {
        let mut skipped = Vec::new();
        let entries = keep_first(
            "UsageReport",
            "keys",
            wire.keys,
            MAX_USAGE_ENTRIES_PER_REPORT,
            &mut skipped,
        );
        let mut keys = Vec::with_capacity(entries.len());
        for (i, k) in entries.into_iter().enumerate() {
            match key_window("UsageReport", "keys", i, &k.key_id, k.window, k.window_start_unix_ms)
            {
                Ok((key_id, window, window_start_unix_ms)) => keys.push(KeyUsage {
                    key_id,
                    window,
                    window_start_unix_ms,
                    charged: usage_from_wire(k.charged),
                    reserved: usage_from_wire(k.reserved),
                    wanted: usage_from_wire(k.wanted),
                }),
                Err(err) => skipped.push(err),
            }
        }
        UsageReport { keys, skipped }
    }
}

impl From<&UsageReport> for cfg::UsageReport {
    fn from(r: &UsageReport) -> Self {
        cfg::UsageReport {
            keys: r
                .keys
                .iter()
                .map(|k| cfg::KeyUsage {
                    key_id: k.key_id.to_string(),
                    window: cfg::UsageWindow::from(k.window) as i32,
                    window_start_unix_ms: k.window_start_unix_ms,
                    charged: Some(usage_to_wire(&k.charged)),
                    reserved: Some(usage_to_wire(&k.reserved)),
                    wanted: (!k.wanted.is_zero()).then(|| usage_to_wire(&k.wanted)),
                })
                .collect(),
        }
    }
}

impl From<cfg::Leases> for Leases {
    fn from(wire: cfg::Leases) -> Self {
        let mut skipped = Vec::new();
        let entries =
            keep_first("Leases", "grants", wire.grants, MAX_GRANTS_PER_LEASES, &mut skipped);
        let mut grants = Vec::with_capacity(entries.len());
        for (i, g) in entries.into_iter().enumerate() {
            match key_window("Leases", "grants", i, &g.key_id, g.window, g.window_start_unix_ms) {
                Ok((key_id, window, window_start_unix_ms)) => grants.push(LeaseGrant {
                    key_id,
                    window,
                    window_start_unix_ms,
                    granted: g.granted.map(limits_from_wire).unwrap_or_default(),
                    fleet_used: usage_from_wire(g.fleet_used),
                    own_used: usage_from_wire(g.own_used),
                    ceiling: g.ceiling.map(limits_from_wire).unwrap_or_default(),
                }),
                Err(err) => skipped.push(err),
            }
        }
        Leases { grants, valid_for: Duration::from_millis(u64::from(wire.valid_for_ms)), skipped }
    }
}

impl From<&Leases> for cfg::Leases {
    fn from(l: &Leases) -> Self {
        cfg::Leases {
            grants: l
                .grants
                .iter()
                .map(|g| cfg::LeaseGrant {
                    key_id: g.key_id.to_string(),
                    window: cfg::UsageWindow::from(g.window) as i32,
                    window_start_unix_ms: g.window_start_unix_ms,
                    granted: Some(limits_to_wire(&g.granted)),
                    fleet_used: Some(usage_to_wire(&g.fleet_used)),
                    own_used: Some(usage_to_wire(&g.own_used)),
                    ceiling: Some(limits_to_wire(&g.ceiling)),
                })
                .collect(),
            valid_for_ms: u32::try_from(l.valid_for.as_millis()).unwrap_or(u32::MAX),
        }
    }
}

// ---- request traces ----

fn trace_from_wire(i: usize, t: cfg::RequestTrace) -> Result<RequestTrace, InvalidMessage> {
    let bad = |name: &str, reason: String| {
        InvalidMessage::new("TraceBatch", format!("traces[{i}].{name}"), reason)
    };
    let status = u16::try_from(t.status).map_err(|_| bad("status", format!("{}", t.status)))?;
    let mut attempts = Vec::with_capacity(t.attempts.len());
    for (j, a) in t.attempts.into_iter().enumerate() {
        attempts.push(TraceAttempt {
            endpoint_id: a
                .endpoint_id
                .parse()
                .map_err(|_| bad(&format!("attempts[{j}].endpoint_id"), "not a UUID".to_owned()))?,
            status: u16::try_from(a.status).ok().filter(|s| *s > 0),
            outcome: truncate_chars(&a.outcome, 32),
            latency_ms: a.latency_ms,
        });
    }
    let client_request_id: String = t
        .client_request_id
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_CLIENT_REQUEST_ID_CHARS)
        .collect();
    Ok(RequestTrace {
        request_id: truncate_chars(&t.request_id, 64),
        started_unix_ms: t.started_unix_ms,
        gateway_id: t.gateway_id.parse().map_err(|_| bad("gateway_id", "not a UUID".into()))?,
        key_id: t.key_id.parse().map_err(|_| bad("key_id", "not a UUID".into()))?,
        operation: truncate_chars(&t.operation, 64),
        model: (!t.model.is_empty()).then(|| truncate_chars(&t.model, 128)),
        stream: t.stream,
        status,
        attempts,
        latency_ms: t.latency_ms,
        ttft_ms: t.ttft_ms,
        prompt_tokens: t.prompt_tokens,
        completion_tokens: t.completion_tokens,
        client_request_id: (!client_request_id.is_empty()).then_some(client_request_id),
        request_body: t.request_body,
        response_body: t.response_body,
        payload_truncated: t.payload_truncated,
    })
}

impl From<cfg::TraceBatch> for TraceBatch {
    fn from(wire: cfg::TraceBatch) -> Self {
        let mut skipped = Vec::new();
        let entries =
            keep_first("TraceBatch", "traces", wire.traces, MAX_TRACES_PER_BATCH, &mut skipped);
        let mut traces = Vec::with_capacity(entries.len());
        for (i, t) in entries.into_iter().enumerate() {
            match trace_from_wire(i, t) {
                Ok(t) => traces.push(t),
                Err(err) => skipped.push(err),
            }
        }
        TraceBatch { traces, dropped: wire.dropped, skipped }
    }
}

impl From<&RequestTrace> for cfg::RequestTrace {
    fn from(t: &RequestTrace) -> Self {
        cfg::RequestTrace {
            request_id: t.request_id.clone(),
            started_unix_ms: t.started_unix_ms,
            gateway_id: t.gateway_id.to_string(),
            key_id: t.key_id.to_string(),
            operation: t.operation.clone(),
            model: t.model.clone().unwrap_or_default(),
            stream: t.stream,
            status: u32::from(t.status),
            attempts: t
                .attempts
                .iter()
                .map(|a| cfg::TraceAttempt {
                    endpoint_id: a.endpoint_id.to_string(),
                    status: a.status.map_or(0, u32::from),
                    outcome: a.outcome.clone(),
                    latency_ms: a.latency_ms,
                })
                .collect(),
            latency_ms: t.latency_ms,
            ttft_ms: t.ttft_ms,
            prompt_tokens: t.prompt_tokens,
            completion_tokens: t.completion_tokens,
            client_request_id: t.client_request_id.clone().unwrap_or_default(),
            request_body: t.request_body.clone(),
            response_body: t.response_body.clone(),
            payload_truncated: t.payload_truncated,
        }
    }
}

impl From<&TraceBatch> for cfg::TraceBatch {
    fn from(b: &TraceBatch) -> Self {
        cfg::TraceBatch {
            traces: b.traces.iter().map(cfg::RequestTrace::from).collect(),
            dropped: b.dropped,
        }
    }
}

// ---- the two stream messages ----

impl TryFrom<cfg::Hello> for Hello {
    type Error = InvalidMessage;
    fn try_from(h: cfg::Hello) -> Result<Self, InvalidMessage> {
        if !valid_node_id(&h.node_id) {
            return Err(InvalidMessage::new(
                "Hello",
                "node_id",
                format!("must be 1–{} printable characters", crate::limits::MAX_NODE_ID_CHARS),
            ));
        }
        Ok(Hello {
            node_id: NodeId(h.node_id),
            applied_version: ConfigVersion(h.applied_version),
            build_version: truncate_chars(&h.build_version, MAX_BUILD_VERSION_CHARS),
            instance: std::num::NonZeroU64::new(h.instance),
        })
    }
}

impl TryFrom<cfg::DataPlaneMessage> for DataPlaneMessage {
    type Error = InvalidMessage;
    fn try_from(m: cfg::DataPlaneMessage) -> Result<Self, InvalidMessage> {
        use cfg::data_plane_message::Kind;
        Ok(match m.kind {
            Some(Kind::Hello(h)) => DataPlaneMessage::Hello(Hello::try_from(h)?),
            Some(Kind::Ack(a)) => DataPlaneMessage::Ack { version: ConfigVersion(a.version) },
            Some(Kind::Nack(n)) => DataPlaneMessage::Nack(Nack {
                version: ConfigVersion(n.version),
                reason: truncate_chars(&n.reason, MAX_REASON_CHARS),
            }),
            Some(Kind::Heartbeat(b)) => {
                DataPlaneMessage::Heartbeat { applied_version: ConfigVersion(b.applied_version) }
            }
            Some(Kind::Health(r)) => DataPlaneMessage::Health(HealthReport::from(r)),
            Some(Kind::Stats(r)) => DataPlaneMessage::Stats(StatsReport::from(r)),
            Some(Kind::Usage(r)) => DataPlaneMessage::Usage(UsageReport::from(r)),
            Some(Kind::Traces(b)) => DataPlaneMessage::Traces(TraceBatch::from(b)),
            Some(Kind::Quota(r)) => DataPlaneMessage::Quota(QuotaReport::from(r)),
            None => {
                return Err(InvalidMessage::new("DataPlaneMessage", "kind", "empty message"));
            }
        })
    }
}

impl From<&DataPlaneMessage> for cfg::DataPlaneMessage {
    fn from(m: &DataPlaneMessage) -> Self {
        use cfg::data_plane_message::Kind;
        let kind = match m {
            DataPlaneMessage::Hello(h) => Kind::Hello(cfg::Hello {
                node_id: h.node_id.0.clone(),
                applied_version: h.applied_version.0,
                build_version: h.build_version.clone(),
                instance: h.instance.map_or(0, std::num::NonZeroU64::get),
            }),
            DataPlaneMessage::Ack { version } => Kind::Ack(cfg::Ack { version: version.0 }),
            DataPlaneMessage::Nack(n) => {
                Kind::Nack(cfg::Nack { version: n.version.0, reason: n.reason.clone() })
            }
            DataPlaneMessage::Heartbeat { applied_version } => {
                Kind::Heartbeat(cfg::Heartbeat { applied_version: applied_version.0 })
            }
            DataPlaneMessage::Health(r) => Kind::Health(cfg::HealthReport::from(r)),
            DataPlaneMessage::Stats(r) => Kind::Stats(cfg::StatsReport::from(r)),
            DataPlaneMessage::Usage(r) => Kind::Usage(cfg::UsageReport::from(r)),
            DataPlaneMessage::Traces(b) => Kind::Traces(cfg::TraceBatch::from(b)),
            DataPlaneMessage::Quota(r) => Kind::Quota(cfg::QuotaReport::from(r)),
        };
        cfg::DataPlaneMessage { kind: Some(kind) }
    }
}

/// Why a control-plane message could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidControlPlaneMessage {
    /// A snapshot that breaks a rule: the data plane NACKs `version` with this reason.
    #[error("snapshot v{version}: {error}")]
    Snapshot { version: ConfigVersion, error: InvalidSnapshot },
    /// No kind this data plane knows (empty, or from a newer protocol): ignored.
    #[error("unknown or empty message")]
    Unknown,
}

impl TryFrom<cfg::ControlPlaneMessage> for ControlPlaneMessage {
    type Error = InvalidControlPlaneMessage;
    fn try_from(m: cfg::ControlPlaneMessage) -> Result<Self, Self::Error> {
        use cfg::control_plane_message::Kind;
        match m.kind {
            Some(Kind::Snapshot(s)) => {
                let version = ConfigVersion(s.version);
                Snapshot::try_from(s)
                    .map(|s| ControlPlaneMessage::Snapshot(Arc::new(s)))
                    .map_err(|error| InvalidControlPlaneMessage::Snapshot { version, error })
            }
            Some(Kind::FleetHealth(f)) => {
                Ok(ControlPlaneMessage::FleetHealth(FleetHealth::from(f)))
            }
            Some(Kind::Leases(l)) => Ok(ControlPlaneMessage::Leases(Leases::from(l))),
            Some(Kind::FleetQuota(q)) => Ok(ControlPlaneMessage::FleetQuota(FleetQuota::from(q))),
            None => Err(InvalidControlPlaneMessage::Unknown),
        }
    }
}

impl From<&ControlPlaneMessage> for cfg::ControlPlaneMessage {
    fn from(m: &ControlPlaneMessage) -> Self {
        use cfg::control_plane_message::Kind;
        let kind = match m {
            ControlPlaneMessage::Snapshot(s) => Kind::Snapshot(cfg::Snapshot::from(s.as_ref())),
            ControlPlaneMessage::FleetHealth(f) => Kind::FleetHealth(cfg::FleetHealth::from(f)),
            ControlPlaneMessage::Leases(l) => Kind::Leases(cfg::Leases::from(l)),
            ControlPlaneMessage::FleetQuota(q) => Kind::FleetQuota(cfg::FleetQuota::from(q)),
        };
        cfg::ControlPlaneMessage { kind: Some(kind) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;

    #[test]
    fn a_snapshot_round_trips_through_the_wire() {
        let mut domain = sample();
        let g = &mut domain.gateways[0];
        let mut child = GatewayKey::new(crate::GatewayKeyId::new(), [7; 32], "child");
        child.parent = Some(g.keys[0].id);
        child.expires_unix_ms = Some(1_800_000_000_000);
        child.limits.per_hour.total_tokens = Some(10_000);
        child.limits.per_minute.requests = Some(60);
        g.keys.push(child);
        g.key_limits = KeyLimitPolicy { default_completion_tokens: Some(256), fail_closed: true };
        g.traces = TraceSettings {
            enabled: true,
            capture_payload: true,
            redact_fields: vec!["api_key".into()],
            max_payload_bytes: Some(4096),
        };
        let back = Snapshot::try_from(cfg::Snapshot::from(&domain)).expect("valid");
        assert_eq!(domain, back);
        assert_eq!(decode_snapshot(&encode_snapshot(&domain)).expect("valid"), domain);
        assert!(decode_snapshot(b"\xff\xff").is_err(), "garbage is refused, not a panic");
    }

    #[test]
    fn a_gateway_pin_key_is_32_bytes_on_the_wire_and_never_printed() {
        let mut w = cfg::Snapshot::from(&sample());
        assert_eq!(w.gateways[0].pin_key, vec![7; 32]);
        assert!(!format!("{w:?}").contains("7, 7, 7"), "Debug redacts the pin key");
        for len in [0, 31, 33] {
            w.gateways[0].pin_key = vec![7; len];
            let err = Snapshot::try_from(w.clone()).expect_err("refused");
            assert_eq!(err.to_string(), "gateways[0].pin_key: must be 32 bytes");
        }
    }

    #[test]
    fn an_entra_credential_round_trips_and_an_empty_scope_means_cognitive_services() {
        let mut w = cfg::Snapshot::from(&sample());
        w.endpoints[0].credential = Some(cfg::Credential {
            kind: Some(cfg::credential::Kind::Entra(cfg::EntraAuth { scope: String::new() })),
        });
        let domain = Snapshot::try_from(w).expect("valid");
        assert_eq!(
            domain.endpoints[0].credential,
            Credential::Entra { scope: DEFAULT_ENTRA_SCOPE.to_owned() }
        );
        let wire = cfg::Snapshot::from(&domain);
        let Some(cfg::credential::Kind::Entra(entra)) =
            wire.endpoints[0].credential.as_ref().and_then(|c| c.kind.as_ref())
        else {
            panic!("entra on the wire: {:?}", wire.endpoints[0].credential);
        };
        assert_eq!(entra.scope, DEFAULT_ENTRA_SCOPE);
        assert_eq!(Snapshot::try_from(wire).expect("valid"), domain);
    }

    #[test]
    fn wire_structure_errors_name_the_field() {
        type Break = fn(&mut cfg::Snapshot);
        let cases: [(Break, &str); 6] = [
            (|w| w.endpoints[0].id = "nope".into(), "endpoints[0].id: not a UUID: \"nope\""),
            (|w| w.endpoints[0].platform = 9, "endpoints[0].platform: unknown platform 9"),
            (|w| w.endpoints[0].credential = None, "endpoints[0].credential: missing"),
            (
                |w| w.gateways[0].keys[0].sha256 = vec![1, 2],
                "gateways[0].keys[0].sha256: must be 32 bytes",
            ),
            (
                |w| w.gateways[0].routing.as_mut().expect("routing").strategy = 7,
                "gateways[0].routing.strategy: unknown strategy 7",
            ),
            // Validation rules apply to the wire form too (one rule set: `Snapshot::validate`).
            (
                |w| w.endpoints[0].base_url = "ftp://x".into(),
                "endpoints[0].base_url: must be an http(s) URL",
            ),
        ];
        for (break_it, expected) in cases {
            let mut w = cfg::Snapshot::from(&sample());
            break_it(&mut w);
            assert_eq!(Snapshot::try_from(w).expect_err("invalid").to_string(), expected);
        }
    }

    #[test]
    fn every_enum_value_maps_both_ways() {
        for p in [Platform::AzureOpenai, Platform::OpenaiCompatible] {
            assert_eq!(Platform::try_from(cfg::Platform::from(p) as i32), Ok(p));
        }
        for s in [RoutingStrategy::Weighted, RoutingStrategy::Fastest] {
            assert_eq!(RoutingStrategy::try_from(cfg::RoutingStrategy::from(s) as i32), Ok(s));
        }
        for s in [EndpointState::Healthy, EndpointState::Throttling, EndpointState::Error] {
            assert_eq!(EndpointState::try_from(cfg::EndpointState::from(s) as i32), Ok(s));
        }
        assert_eq!(RoutingStrategy::try_from(0), Ok(RoutingStrategy::Weighted), "unset");
        assert!(EndpointState::try_from(0).is_err(), "unset state is not a state");
        assert!(Platform::try_from(0).is_err());
    }

    #[test]
    fn every_data_plane_message_round_trips() {
        let health = EndpointHealth {
            endpoint_id: EndpointId::new(),
            state: EndpointState::Throttling,
            until: Some(UNIX_EPOCH + Duration::from_millis(1_765_000_000_123)),
            reason: Some("429".into()),
        };
        let messages = [
            DataPlaneMessage::Hello(Hello {
                node_id: NodeId("dp-1".into()),
                applied_version: ConfigVersion(4),
                build_version: "0.1.0".into(),
                instance: std::num::NonZeroU64::new(42),
            }),
            DataPlaneMessage::Ack { version: ConfigVersion(5) },
            DataPlaneMessage::Nack(Nack { version: ConfigVersion(6), reason: "x: y".into() }),
            DataPlaneMessage::Heartbeat { applied_version: ConfigVersion(7) },
            DataPlaneMessage::Health(HealthReport { endpoints: vec![health], skipped: vec![] }),
            DataPlaneMessage::Stats(sample_stats()),
            DataPlaneMessage::Usage(UsageReport {
                keys: vec![KeyUsage {
                    key_id: crate::GatewayKeyId::new(),
                    window: Window::Hour,
                    window_start_unix_ms: 1_796_637_600_000,
                    charged: Usage::request(100, 50),
                    reserved: Usage::request(10, 1024),
                    wanted: Usage::request(40, 1024),
                }],
                skipped: vec![],
            }),
            DataPlaneMessage::Traces(TraceBatch {
                traces: vec![RequestTrace {
                    request_id: "r-1".into(),
                    started_unix_ms: 1_796_637_600_123,
                    gateway_id: GatewayId::new(),
                    key_id: crate::GatewayKeyId::new(),
                    operation: "chat.completions".into(),
                    model: Some("gpt-4o".into()),
                    stream: true,
                    status: 200,
                    attempts: vec![TraceAttempt {
                        endpoint_id: EndpointId::new(),
                        status: Some(429),
                        outcome: "throttled".into(),
                        latency_ms: 12,
                    }],
                    latency_ms: 40,
                    ttft_ms: Some(20),
                    prompt_tokens: Some(10),
                    completion_tokens: Some(5),
                    client_request_id: Some("c-1".into()),
                    request_body: Some("{}".into()),
                    response_body: None,
                    payload_truncated: false,
                }],
                dropped: 3,
                skipped: vec![],
            }),
        ];
        for m in messages {
            let back = DataPlaneMessage::try_from(cfg::DataPlaneMessage::from(&m)).expect("valid");
            assert_eq!(back, m);
        }
    }

    #[test]
    fn leases_round_trip_and_a_grant_off_its_window_start_is_skipped_alone() {
        let granted = WindowLimits { total_tokens: Some(2_500), ..Default::default() };
        let good = LeaseGrant {
            key_id: crate::GatewayKeyId::new(),
            window: Window::Minute,
            window_start_unix_ms: 1_796_638_620_000,
            granted,
            fleet_used: Usage::request(1, 2),
            own_used: Usage::default(),
            ceiling: WindowLimits { total_tokens: Some(4_000), ..Default::default() },
        };
        let leases =
            Leases { grants: vec![good], valid_for: Duration::from_secs(30), skipped: vec![] };
        let m = ControlPlaneMessage::Leases(leases.clone());
        assert_eq!(ControlPlaneMessage::try_from(cfg::ControlPlaneMessage::from(&m)), Ok(m));

        let mut wire = cfg::Leases::from(&leases);
        let mut off = wire.grants[0].clone();
        off.window_start_unix_ms += 1;
        wire.grants.insert(0, off);
        let read = Leases::from(wire);
        assert_eq!(read.grants, leases.grants);
        assert_eq!(read.skipped.len(), 1);
        assert_eq!(read.skipped[0].field, "grants[0].window_start_unix_ms");
    }

    fn sample_stats() -> StatsReport {
        let mut latency = Buckets { counts: vec![0; LATENCY_BUCKETS_MS.len() + 1] };
        latency.counts[2] = 3;
        latency.counts[LATENCY_BUCKETS_MS.len()] = 1;
        let gateway_id = GatewayId::new();
        StatsReport {
            routes: vec![
                RouteStats {
                    gateway_id,
                    endpoint_id: EndpointId::new(),
                    requests: 4,
                    errors: 1,
                    throttled: 2,
                    failed_attempts: 3,
                    prompt_tokens: 40,
                    completion_tokens: u64::MAX,
                    ttft: latency.clone(),
                    latency,
                },
                RouteStats {
                    gateway_id,
                    endpoint_id: EndpointId::new(),
                    throttled: 1,
                    ..Default::default()
                },
            ],
            gateways: vec![GatewayStats { gateway_id, throttled: 5, unavailable: 6 }],
            skipped: vec![],
        }
    }

    #[test]
    fn a_bad_stats_entry_is_skipped_with_its_field_and_the_rest_kept() {
        let report = sample_stats();
        let mut wire = cfg::StatsReport::from(&report);
        wire.routes
            .insert(0, cfg::RouteStats { gateway_id: "nope".into(), ..wire.routes[1].clone() });
        wire.routes.push(cfg::RouteStats { latency_buckets: vec![1, 2], ..wire.routes[1].clone() });
        wire.routes.push(cfg::RouteStats {
            ttft_buckets: vec![0; LATENCY_BUCKETS_MS.len() + 2],
            ..wire.routes[1].clone()
        });
        wire.gateways.push(cfg::GatewayStats { gateway_id: String::new(), ..Default::default() });
        let back = StatsReport::from(wire);
        assert_eq!(back.routes, report.routes, "the readable entries, in order");
        assert_eq!(back.gateways, report.gateways);
        let skipped: Vec<String> = back.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(
            skipped,
            [
                "StatsReport.routes[0].gateway_id: not a UUID: \"nope\"",
                "StatsReport.routes[3].latency_buckets: 2 buckets, expected 0 or 15",
                "StatsReport.routes[4].ttft_buckets: 16 buckets, expected 0 or 15",
                "StatsReport.gateways[1].gateway_id: not a UUID: \"\"",
            ]
        );
    }

    #[test]
    fn a_stats_report_beyond_the_bounds_is_read_up_to_them() {
        let one = cfg::StatsReport::from(&sample_stats());
        let wire = cfg::StatsReport {
            routes: vec![one.routes[0].clone(); MAX_STATS_ROUTES_PER_REPORT + 3],
            gateways: vec![one.gateways[0].clone(); MAX_STATS_GATEWAYS_PER_REPORT + 1],
        };
        let back = StatsReport::from(wire);
        assert_eq!(back.routes.len(), MAX_STATS_ROUTES_PER_REPORT);
        assert_eq!(back.gateways.len(), MAX_STATS_GATEWAYS_PER_REPORT);
        let skipped: Vec<String> = back.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(
            skipped,
            [
                "StatsReport.routes: 2003 entries, at most 2000 read; the rest skipped",
                "StatsReport.gateways: 1001 entries, at most 1000 read; the rest skipped",
            ]
        );
    }

    #[test]
    fn the_largest_stats_report_fits_the_control_planes_message_cap() {
        use prost::Message as _;
        // Every count at its largest varint; the bound the limits promise.
        let full = Buckets { counts: vec![u64::MAX; LATENCY_BUCKETS_MS.len() + 1] };
        let route = RouteStats {
            gateway_id: GatewayId::new(),
            endpoint_id: EndpointId::new(),
            requests: u64::MAX,
            errors: u64::MAX,
            throttled: u64::MAX,
            failed_attempts: u64::MAX,
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            latency: full.clone(),
            ttft: full,
        };
        let gateway = GatewayStats {
            gateway_id: GatewayId::new(),
            throttled: u64::MAX,
            unavailable: u64::MAX,
        };
        let report = StatsReport {
            routes: vec![route; MAX_STATS_ROUTES_PER_REPORT],
            gateways: vec![gateway; MAX_STATS_GATEWAYS_PER_REPORT],
            skipped: vec![],
        };
        let bytes = cfg::DataPlaneMessage::from(&DataPlaneMessage::Stats(report)).encoded_len();
        // The control plane's `MAX_INBOUND_MESSAGE_BYTES` (it cannot be named from here).
        assert!(bytes < 1024 * 1024, "{bytes} bytes");
    }

    #[test]
    fn a_bad_health_entry_is_skipped_with_its_field_and_the_rest_kept() {
        let good = EndpointId::new();
        let wire = cfg::HealthReport {
            endpoints: vec![
                cfg::EndpointHealth { endpoint_id: "nope".into(), state: 2, ..Default::default() },
                cfg::EndpointHealth {
                    endpoint_id: good.to_string(),
                    state: 0,
                    ..Default::default()
                },
                cfg::EndpointHealth {
                    endpoint_id: good.to_string(),
                    state: cfg::EndpointState::Error as i32,
                    until_unix_ms: 0,
                    reason: String::new(),
                },
            ],
        };
        let report = HealthReport::from(wire);
        assert_eq!(report.endpoints.len(), 1);
        assert_eq!(report.endpoints[0].state, EndpointState::Error);
        assert_eq!(
            (report.endpoints[0].until, report.endpoints[0].reason.as_deref()),
            (None, None)
        );
        let skipped: Vec<String> = report.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(
            skipped,
            [
                "HealthReport.endpoints[0].endpoint_id: not a UUID: \"nope\"",
                "HealthReport.endpoints[1].state: unknown state 0"
            ]
        );
    }

    #[test]
    fn fleet_health_resets_round_trip_and_a_bad_one_is_skipped_alone() {
        let good = HealthReset {
            endpoint_id: EndpointId::new(),
            at: UNIX_EPOCH + Duration::from_millis(1_765_000_000_000),
        };
        let mut wire = cfg::FleetHealth::from(&FleetHealth {
            endpoints: vec![],
            resets: vec![good],
            skipped: vec![],
        });
        wire.resets.push(cfg::HealthReset { endpoint_id: "nope".into(), at_unix_ms: 1 });
        wire.resets
            .push(cfg::HealthReset { endpoint_id: EndpointId::new().to_string(), at_unix_ms: 0 });
        let fleet = FleetHealth::from(wire);
        assert_eq!(fleet.resets, [good]);
        let skipped: Vec<String> = fleet.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(
            skipped,
            [
                "FleetHealth.resets[1].endpoint_id: not a UUID: \"nope\"",
                "FleetHealth.resets[2].at_unix_ms: must be a positive time"
            ]
        );
    }

    #[test]
    fn hello_needs_a_printable_bounded_node_id_and_bounds_the_rest() {
        let hello = |node_id: &str, build: &str| cfg::Hello {
            node_id: node_id.into(),
            applied_version: 1,
            build_version: build.into(),
            instance: 0,
        };
        let err = Hello::try_from(hello("dp\nforged", "1")).expect_err("invalid");
        assert_eq!(err.to_string(), "Hello.node_id: must be 1–253 printable characters");
        assert!(Hello::try_from(hello("", "1")).is_err());
        let ok = Hello::try_from(hello("dp-1", &"v".repeat(100))).expect("valid");
        assert_eq!(ok.build_version.chars().count(), 65, "64 characters and the cut mark");
        let nack = cfg::DataPlaneMessage {
            kind: Some(cfg::data_plane_message::Kind::Nack(cfg::Nack {
                version: 1,
                reason: "r".repeat(1000),
            })),
        };
        let DataPlaneMessage::Nack(n) = DataPlaneMessage::try_from(nack).expect("valid") else {
            panic!("a nack");
        };
        assert_eq!(n.reason.chars().count(), 513);
    }

    #[test]
    fn a_bad_snapshot_names_its_version_for_the_nack() {
        let mut w = cfg::Snapshot::from(&sample());
        w.gateways[0].members[0].endpoint_id = EndpointId::new().to_string();
        let message =
            cfg::ControlPlaneMessage { kind: Some(cfg::control_plane_message::Kind::Snapshot(w)) };
        match ControlPlaneMessage::try_from(message) {
            Err(InvalidControlPlaneMessage::Snapshot { version, error }) => {
                assert_eq!(version, ConfigVersion(3));
                assert!(
                    error
                        .to_string()
                        .starts_with("gateways[0].members[0].endpoint_id: unknown endpoint")
                );
            }
            other => panic!("expected a snapshot error, got {other:?}"),
        }
    }

    #[test]
    fn a_frame_of_pre_encoded_bytes_is_byte_identical_to_the_message() {
        use prost::Message as _;
        let snapshot = sample();
        let message = cfg::ControlPlaneMessage::from(&ControlPlaneMessage::Snapshot(Arc::new(
            snapshot.clone(),
        )));
        let frame = cfg::ControlPlaneFrame {
            kind: Some(cfg::control_plane_frame::Kind::Snapshot(encode_snapshot(&snapshot))),
        };
        assert_eq!(frame.encode_to_vec(), message.encode_to_vec());

        let fleet = FleetHealth {
            endpoints: vec![EndpointHealth {
                endpoint_id: EndpointId::new(),
                state: EndpointState::Error,
                until: Some(UNIX_EPOCH + Duration::from_millis(1_765_000_000_000)),
                reason: Some("503".into()),
            }],
            resets: vec![HealthReset {
                endpoint_id: EndpointId::new(),
                at: UNIX_EPOCH + Duration::from_millis(1_765_000_001_000),
            }],
            skipped: vec![],
        };
        let message =
            cfg::ControlPlaneMessage::from(&ControlPlaneMessage::FleetHealth(fleet.clone()));
        let frame = cfg::ControlPlaneFrame {
            kind: Some(cfg::control_plane_frame::Kind::FleetHealth(
                cfg::FleetHealth::from(&fleet).encode_to_vec().into(),
            )),
        };
        assert_eq!(frame.encode_to_vec(), message.encode_to_vec());
        let decoded =
            cfg::ControlPlaneMessage::decode(frame.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(
            ControlPlaneMessage::try_from(decoded).expect("valid"),
            ControlPlaneMessage::FleetHealth(fleet)
        );
    }

    #[test]
    fn wire_debug_never_shows_the_api_key() {
        assert!(!format!("{:?}", cfg::Snapshot::from(&sample())).contains("k-123456789012"));
    }
}
