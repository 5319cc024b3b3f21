//! Configuration entities in domain form and the one set of rules a snapshot must meet.
//! Their wire form and its conversion live in `wire` (feature `wire`).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::keys::{KeyLimitPolicy, KeyLimits, MAX_KEY_DEPTH};
use crate::traces::{MAX_PAYLOAD_BYTES, MAX_REDACT_FIELDS, TraceSettings};
use crate::{ConfigVersion, EndpointId, GatewayId, GatewayKeyId, PinKey, Secret};

/// Which API an Inference Endpoint speaks upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Azure OpenAI: `{base}/openai/deployments/{deployment}/…?api-version=…`, `api-key` header.
    AzureOpenai,
    /// An OpenAI-compatible API: `{base}/{operation}`, `Authorization: Bearer`, `model` in body.
    OpenaiCompatible,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::AzureOpenai => "azure_openai",
            Platform::OpenaiCompatible => "openai_compatible",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "azure_openai" => Some(Platform::AzureOpenai),
            "openai_compatible" => Some(Platform::OpenaiCompatible),
            _ => None,
        }
    }
}

/// Health of an endpoint as operators see it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    #[default]
    Healthy,
    /// Answered 429 (limit exceeded); unused until its Retry-After passes.
    Throttling,
    /// Answered 5xx, timed out, reset the connection, or rejected our credential.
    Error,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Healthy => "healthy",
            EndpointState::Throttling => "throttling",
            EndpointState::Error => "error",
        }
    }
}

/// A gateway's availability, derived from the health of its enabled members. One rule for the
/// admin API (over fleet health) and the data plane (over its own view, for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GatewayState {
    /// Every enabled member is available.
    Healthy,
    /// Some enabled members are unavailable; the others serve.
    Degraded,
    /// Every enabled member is unavailable and at least one is throttling (clients get 429
    /// with `Retry-After`).
    Throttling,
    /// Every enabled member is unavailable and none is throttling, or no member is enabled.
    Error,
}

impl GatewayState {
    /// The state of a gateway whose enabled members are in `members`. No member at all is
    /// `Error`: such a gateway cannot serve anything.
    pub fn of(members: &[EndpointState]) -> GatewayState {
        let available = members.iter().filter(|s| **s == EndpointState::Healthy).count();
        if members.is_empty() {
            GatewayState::Error
        } else if available == members.len() {
            GatewayState::Healthy
        } else if available > 0 {
            GatewayState::Degraded
        } else if members.contains(&EndpointState::Throttling) {
            GatewayState::Throttling
        } else {
            GatewayState::Error
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GatewayState::Healthy => "healthy",
            GatewayState::Degraded => "degraded",
            GatewayState::Throttling => "throttling",
            GatewayState::Error => "error",
        }
    }
}

/// The credential a data plane injects into upstream requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A static key sent as `api-key` (Azure) or `Authorization: Bearer` (OpenAI-compatible).
    ApiKey(Secret),
    /// A Microsoft Entra ID token for `scope`, obtained by the data plane with its own Azure
    /// credential and sent as `Authorization: Bearer`.
    Entra { scope: String },
}

/// The scope of Azure OpenAI (Cognitive Services) data-plane tokens.
pub const DEFAULT_ENTRA_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// An Inference Endpoint (Azure: a model deployment) as the data plane routes to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub id: EndpointId,
    pub name: String,
    pub platform: Platform,
    /// Base URL without trailing slash, e.g. `https://res.openai.azure.com`.
    pub base_url: url::Url,
    pub deployment: String,
    pub model_name: String,
    pub model_version: String,
    pub region: String,
    pub credential: Credential,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayMember {
    pub endpoint_id: EndpointId,
    pub enabled: bool,
    pub priority: u32,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayKey {
    pub id: GatewayKeyId,
    pub sha256: [u8; 32],
    /// For traces and logs (not a secret).
    pub name: String,
    /// The key above this one in the gateway's key tree; its limits apply to this key's
    /// traffic too.
    pub parent: Option<GatewayKeyId>,
    /// Unix ms after which the key is refused.
    pub expires_unix_ms: Option<i64>,
    pub limits: KeyLimits,
}

impl GatewayKey {
    /// A root key without expiry or limits.
    pub fn new(id: GatewayKeyId, sha256: [u8; 32], name: impl Into<String>) -> GatewayKey {
        GatewayKey {
            id,
            sha256,
            name: name.into(),
            parent: None,
            expires_unix_ms: None,
            limits: KeyLimits::default(),
        }
    }
}

/// How a gateway picks among the available members of its best priority group.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RoutingStrategy {
    /// Weighted random by member `weight`.
    #[default]
    Weighted,
    /// Latency-aware: power of two choices over a decaying average of time to first byte.
    Fastest,
}

/// A gateway's routing settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoutingPolicy {
    pub strategy: RoutingStrategy,
    /// When every member is unavailable, wait for the first to recover if that fits within the
    /// request deadline, instead of answering 429/503 at once.
    pub wait_for_recovery: bool,
    /// End-to-end deadline of one request; `None` = the data plane's default.
    pub request_timeout_ms: Option<u32>,
    /// Quota-aware routing (`routing.quota`).
    pub quota: crate::quota::QuotaPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub id: GatewayId,
    pub name: String,
    pub members: Vec<GatewayMember>,
    /// Parents before their children.
    pub keys: Vec<GatewayKey>,
    pub routing: RoutingPolicy,
    pub key_limits: KeyLimitPolicy,
    pub traces: TraceSettings,
    /// Signs the response ids this gateway mints, so that a follow-up reaches the endpoint
    /// that holds the response (ARCHITECTURE.md, "Pinned stateful calls"). One per gateway:
    /// an id minted through one gateway is refused by every other.
    pub pin_key: PinKey,
}

/// The whole routing configuration at one version, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub version: ConfigVersion,
    pub endpoints: Vec<Endpoint>,
    pub gateways: Vec<Gateway>,
}

/// Why a snapshot was rejected: by the store's build, the wire conversion or a data plane's
/// compile step (where it becomes the NACK reason). Names the field, never a secret.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct InvalidSnapshot {
    /// The offending field's path, e.g. `gateways[0].members[1].endpoint_id`.
    pub field: String,
    pub reason: String,
}

impl InvalidSnapshot {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> InvalidSnapshot {
        InvalidSnapshot { field: field.into(), reason: reason.into() }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidSnapshot {
    InvalidSnapshot::new(field, reason)
}

impl Snapshot {
    /// A validated snapshot: the one constructor every producer goes through (the store's
    /// build, the wire conversion, tests), so the rules live here only.
    pub fn new(
        version: ConfigVersion,
        endpoints: Vec<Endpoint>,
        gateways: Vec<Gateway>,
    ) -> Result<Snapshot, InvalidSnapshot> {
        let snapshot = Snapshot { version, endpoints, gateways };
        snapshot.validate()?;
        Ok(snapshot)
    }

    /// Checks every rule a data plane relies on to serve a snapshot safely; the error names
    /// the first offending field. Rules:
    /// - the version is at least 1; endpoint ids are unique;
    /// - a base URL is http(s), with a host, without user info, query or fragment (it ends up
    ///   in logs and error messages; credentials belong in the credential);
    /// - a deployment is not empty; an API key is not empty and is what an HTTP header
    ///   value may hold (it is sent as one); an Entra scope is not blank;
    /// - gateway names are not empty and unique; a member names a configured endpoint, once;
    ///   a key hash belongs to one gateway only; a key id is unique, and a key's parent is a
    ///   key of the same gateway listed before it, at most [`MAX_KEY_DEPTH`] levels deep;
    /// - a gateway sets at most [`MAX_REDACT_FIELDS`] non-empty redacted field names and a
    ///   payload cap of at most [`MAX_PAYLOAD_BYTES`].
    pub fn validate(&self) -> Result<(), InvalidSnapshot> {
        if self.version.0 == 0 {
            return Err(invalid("version", "must be at least 1"));
        }
        let mut endpoint_ids = HashSet::with_capacity(self.endpoints.len());
        for (i, e) in self.endpoints.iter().enumerate() {
            let f = |name: &str| format!("endpoints[{i}].{name}");
            if !endpoint_ids.insert(e.id) {
                return Err(invalid(f("id"), format!("duplicate endpoint id {}", e.id)));
            }
            let url = &e.base_url;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid(f("base_url"), "must be an http(s) URL"));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(invalid(f("base_url"), "must have a host"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(invalid(f("base_url"), "must not carry user info"));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(invalid(f("base_url"), "must not have a query or fragment"));
            }
            if e.deployment.is_empty() {
                return Err(invalid(f("deployment"), "must not be empty"));
            }
            match &e.credential {
                Credential::ApiKey(key) if key.is_empty() => {
                    return Err(invalid(f("credential"), "missing"));
                }
                Credential::ApiKey(key)
                    if !key.expose().bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) =>
                {
                    // What an HTTP header value may hold; the reason never quotes the value.
                    return Err(invalid(f("credential"), "not a valid header value"));
                }
                Credential::Entra { scope } if scope.trim().is_empty() => {
                    return Err(invalid(f("credential"), "empty Entra scope"));
                }
                Credential::ApiKey(_) | Credential::Entra { .. } => {}
            }
        }

        let mut gateway_names = HashSet::with_capacity(self.gateways.len());
        let mut key_hashes = HashSet::new();
        for (i, g) in self.gateways.iter().enumerate() {
            if g.name.is_empty() {
                return Err(invalid(format!("gateways[{i}].name"), "must not be empty"));
            }
            if !gateway_names.insert(g.name.as_str()) {
                return Err(invalid(
                    format!("gateways[{i}].name"),
                    format!("duplicate gateway name {:?}", g.name),
                ));
            }
            let mut members = HashSet::with_capacity(g.members.len());
            for (j, m) in g.members.iter().enumerate() {
                let field = format!("gateways[{i}].members[{j}].endpoint_id");
                if !endpoint_ids.contains(&m.endpoint_id) {
                    return Err(invalid(field, format!("unknown endpoint {}", m.endpoint_id)));
                }
                if !members.insert(m.endpoint_id) {
                    return Err(invalid(field, format!("duplicate member {}", m.endpoint_id)));
                }
            }
            // Key id -> depth (0 for a root), for the parent rules.
            let mut depths: HashMap<GatewayKeyId, usize> = HashMap::with_capacity(g.keys.len());
            for (j, k) in g.keys.iter().enumerate() {
                if !key_hashes.insert(k.sha256) {
                    return Err(invalid(
                        format!("gateways[{i}].keys[{j}].sha256"),
                        "key shared by two gateways",
                    ));
                }
                let depth = match k.parent {
                    None => 0,
                    Some(parent) => match depths.get(&parent) {
                        Some(d) if *d < MAX_KEY_DEPTH => d + 1,
                        Some(_) => {
                            return Err(invalid(
                                format!("gateways[{i}].keys[{j}].parent_id"),
                                format!("key tree deeper than {MAX_KEY_DEPTH} levels"),
                            ));
                        }
                        None => {
                            return Err(invalid(
                                format!("gateways[{i}].keys[{j}].parent_id"),
                                format!("{parent} is not a key of this gateway listed before it"),
                            ));
                        }
                    },
                };
                if depths.insert(k.id, depth).is_some() {
                    return Err(invalid(
                        format!("gateways[{i}].keys[{j}].id"),
                        format!("duplicate key id {}", k.id),
                    ));
                }
            }
            let t = &g.traces;
            if t.redact_fields.len() > MAX_REDACT_FIELDS {
                return Err(invalid(
                    format!("gateways[{i}].traces.redact_fields"),
                    format!("more than {MAX_REDACT_FIELDS}"),
                ));
            }
            if let Some(j) = t.redact_fields.iter().position(|f| f.is_empty()) {
                return Err(invalid(
                    format!("gateways[{i}].traces.redact_fields[{j}]"),
                    "must not be empty",
                ));
            }
            if t.max_payload_bytes.is_some_and(|b| b == 0 || b > MAX_PAYLOAD_BYTES) {
                return Err(invalid(
                    format!("gateways[{i}].traces.max_payload_bytes"),
                    format!("must be 1..={MAX_PAYLOAD_BYTES}"),
                ));
            }
        }
        Ok(())
    }
}

/// SHA-256 of a gateway key secret, as stored and as looked up by the data plane.
pub fn gateway_key_hash(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid snapshot with one endpoint, one gateway and one key.
    pub(crate) fn sample() -> Snapshot {
        let e = EndpointId::new();
        Snapshot::new(
            ConfigVersion(3),
            vec![Endpoint {
                id: e,
                name: "eus".into(),
                platform: Platform::AzureOpenai,
                base_url: "https://eus.openai.azure.com".parse().expect("url"),
                deployment: "gpt-4o".into(),
                model_name: "gpt-4o".into(),
                model_version: "2024-11-20".into(),
                region: "eastus".into(),
                credential: Credential::ApiKey(Secret::new("k-123456789012")),
            }],
            vec![Gateway {
                id: GatewayId::new(),
                name: "gw".into(),
                members: vec![GatewayMember {
                    endpoint_id: e,
                    enabled: true,
                    priority: 0,
                    weight: 1,
                }],
                keys: vec![GatewayKey::new(
                    GatewayKeyId::new(),
                    gateway_key_hash("secret"),
                    "team",
                )],
                routing: RoutingPolicy {
                    strategy: RoutingStrategy::Fastest,
                    wait_for_recovery: true,
                    request_timeout_ms: Some(30_000),
                    quota: crate::QuotaPolicy {
                        enabled: false,
                        request_window_secs: 5,
                        token_window_secs: 30,
                        reserve_percent: 10,
                    },
                },
                key_limits: KeyLimitPolicy::default(),
                traces: TraceSettings::default(),
                pin_key: PinKey::new([7; 32]),
            }],
        )
        .expect("valid")
    }

    fn rejected(s: &Snapshot) -> String {
        s.validate().expect_err("invalid").to_string()
    }

    #[test]
    fn a_member_naming_an_unknown_endpoint_is_rejected_with_its_field() {
        let mut s = sample();
        s.gateways[0].members[0].endpoint_id = EndpointId::new();
        assert!(rejected(&s).starts_with("gateways[0].members[0].endpoint_id: unknown endpoint"));
    }

    #[test]
    fn a_duplicate_member_is_rejected() {
        let mut s = sample();
        let member = s.gateways[0].members[0].clone();
        s.gateways[0].members.push(member);
        assert!(rejected(&s).starts_with("gateways[0].members[1].endpoint_id: duplicate member"));
    }

    #[test]
    fn base_url_rules_name_the_field() {
        for (url, reason) in [
            ("ftp://x", "must be an http(s) URL"),
            ("https://user:pw@x", "must not carry user info"),
            ("https://x/?a=b", "must not have a query or fragment"),
            ("https://x/#f", "must not have a query or fragment"),
        ] {
            let mut s = sample();
            s.endpoints[0].base_url = url.parse().expect("url");
            assert_eq!(rejected(&s), format!("endpoints[0].base_url: {reason}"), "{url}");
        }
    }

    #[test]
    fn credentials_must_be_usable_and_are_never_quoted() {
        let mut s = sample();
        s.endpoints[0].credential = Credential::ApiKey(Secret::new("bad key\n"));
        let reason = rejected(&s);
        assert_eq!(reason, "endpoints[0].credential: not a valid header value");
        s.endpoints[0].credential = Credential::ApiKey(Secret::new(""));
        assert_eq!(rejected(&s), "endpoints[0].credential: missing");
        s.endpoints[0].credential = Credential::Entra { scope: " ".into() };
        assert_eq!(rejected(&s), "endpoints[0].credential: empty Entra scope");
    }

    #[test]
    fn gateway_names_and_key_hashes_are_unique() {
        let mut s = sample();
        let mut second = s.gateways[0].clone();
        second.id = GatewayId::new();
        second.keys.clear();
        s.gateways.push(second.clone());
        assert_eq!(rejected(&s), "gateways[1].name: duplicate gateway name \"gw\"");
        s.gateways[1].name = "other".into();
        s.gateways[1].keys = s.gateways[0].keys.clone();
        assert_eq!(rejected(&s), "gateways[1].keys[0].sha256: key shared by two gateways");
    }

    #[test]
    fn a_key_tree_is_listed_parents_first_within_its_gateway_and_bounded_in_depth() {
        let mut s = sample();
        let root = s.gateways[0].keys[0].id;
        let mut child = GatewayKey::new(GatewayKeyId::new(), gateway_key_hash("child"), "child");
        child.parent = Some(root);
        s.gateways[0].keys.push(child.clone());
        s.validate().expect("a child after its parent");

        let mut orphan = child.clone();
        orphan.id = GatewayKeyId::new();
        orphan.sha256 = gateway_key_hash("orphan");
        orphan.parent = Some(GatewayKeyId::new());
        s.gateways[0].keys.push(orphan);
        assert!(rejected(&s).starts_with("gateways[0].keys[2].parent_id: "));
        s.gateways[0].keys.pop();

        // Child before its parent.
        s.gateways[0].keys.swap(0, 1);
        assert!(rejected(&s).starts_with("gateways[0].keys[0].parent_id: "));
        s.gateways[0].keys.swap(0, 1);

        let mut parent = child.id;
        for level in 0..MAX_KEY_DEPTH {
            let mut k =
                GatewayKey::new(GatewayKeyId::new(), gateway_key_hash(&format!("l{level}")), "l");
            k.parent = Some(parent);
            parent = k.id;
            s.gateways[0].keys.push(k);
        }
        assert_eq!(
            rejected(&s),
            format!("gateways[0].keys[9].parent_id: key tree deeper than {MAX_KEY_DEPTH} levels")
        );
    }

    #[test]
    fn trace_settings_are_bounded() {
        let mut s = sample();
        s.gateways[0].traces.redact_fields = vec!["api_key".into(), String::new()];
        assert_eq!(rejected(&s), "gateways[0].traces.redact_fields[1]: must not be empty");
        s.gateways[0].traces.redact_fields.pop();
        s.gateways[0].traces.max_payload_bytes = Some(MAX_PAYLOAD_BYTES + 1);
        assert!(rejected(&s).starts_with("gateways[0].traces.max_payload_bytes: "));
    }

    #[test]
    fn version_zero_and_duplicate_endpoints_are_rejected() {
        let mut s = sample();
        s.version = ConfigVersion(0);
        assert_eq!(rejected(&s), "version: must be at least 1");
        let mut s = sample();
        s.endpoints.push(s.endpoints[0].clone());
        assert!(rejected(&s).starts_with("endpoints[1].id: duplicate endpoint id"));
    }
}
