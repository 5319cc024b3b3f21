//! Configuration entities in domain form, and their conversion from/to the wire.

use std::collections::HashSet;

use modelgw_proto::cfg;
use serde::{Deserialize, Serialize};

use crate::{ConfigVersion, EndpointId, GatewayId, GatewayKeyId, Secret};

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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub id: GatewayId,
    pub name: String,
    pub members: Vec<GatewayMember>,
    pub keys: Vec<GatewayKey>,
    pub routing: RoutingPolicy,
}

/// The whole routing configuration at one version, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub version: ConfigVersion,
    pub endpoints: Vec<Endpoint>,
    pub gateways: Vec<Gateway>,
}

/// Why a snapshot from the wire was rejected; becomes the NACK reason. Names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidSnapshot {
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidSnapshot {
    InvalidSnapshot::Field { field: field.into(), reason: reason.into() }
}

fn parse_id<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, InvalidSnapshot> {
    value.parse().map_err(|_| invalid(field, format!("not a UUID: {value:?}")))
}

impl TryFrom<cfg::Snapshot> for Snapshot {
    type Error = InvalidSnapshot;

    fn try_from(wire: cfg::Snapshot) -> Result<Self, Self::Error> {
        if wire.version == 0 {
            return Err(invalid("version", "must be at least 1"));
        }
        let mut endpoint_ids = HashSet::with_capacity(wire.endpoints.len());
        let mut endpoints = Vec::with_capacity(wire.endpoints.len());
        for (i, e) in wire.endpoints.into_iter().enumerate() {
            let f = |name: &str| format!("endpoints[{i}].{name}");
            let id: EndpointId = parse_id(&f("id"), &e.id)?;
            if !endpoint_ids.insert(id) {
                return Err(invalid(f("id"), format!("duplicate endpoint id {id}")));
            }
            let platform = match cfg::Platform::try_from(e.platform) {
                Ok(cfg::Platform::AzureOpenai) => Platform::AzureOpenai,
                Ok(cfg::Platform::OpenaiCompatible) => Platform::OpenaiCompatible,
                _ => {
                    return Err(invalid(f("platform"), format!("unknown platform {}", e.platform)));
                }
            };
            let base_url = url::Url::parse(&e.base_url)
                .map_err(|err| invalid(f("base_url"), err.to_string()))?;
            if !matches!(base_url.scheme(), "http" | "https") {
                return Err(invalid(f("base_url"), "must be an http(s) URL"));
            }
            if e.deployment.is_empty() {
                return Err(invalid(f("deployment"), "must not be empty"));
            }
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
                id,
                name: e.name,
                platform,
                base_url,
                deployment: e.deployment,
                model_name: e.model_name,
                model_version: e.model_version,
                region: e.region,
                credential,
            });
        }

        let mut gateway_names = HashSet::with_capacity(wire.gateways.len());
        let mut key_hashes = HashSet::new();
        let mut gateways = Vec::with_capacity(wire.gateways.len());
        for (i, g) in wire.gateways.into_iter().enumerate() {
            let f = |name: &str| format!("gateways[{i}].{name}");
            let id: GatewayId = parse_id(&f("id"), &g.id)?;
            if g.name.is_empty() {
                return Err(invalid(f("name"), "must not be empty"));
            }
            if !gateway_names.insert(g.name.clone()) {
                return Err(invalid(f("name"), format!("duplicate gateway name {:?}", g.name)));
            }
            let mut members = Vec::with_capacity(g.members.len());
            for (j, m) in g.members.into_iter().enumerate() {
                let field = format!("gateways[{i}].members[{j}].endpoint_id");
                let endpoint_id: EndpointId = parse_id(&field, &m.endpoint_id)?;
                if !endpoint_ids.contains(&endpoint_id) {
                    return Err(invalid(field, format!("unknown endpoint {endpoint_id}")));
                }
                members.push(GatewayMember {
                    endpoint_id,
                    enabled: m.enabled,
                    priority: m.priority,
                    weight: m.weight,
                });
            }
            let mut keys = Vec::with_capacity(g.keys.len());
            for (j, k) in g.keys.into_iter().enumerate() {
                let field = format!("gateways[{i}].keys[{j}]");
                let sha256: [u8; 32] = k
                    .sha256
                    .as_slice()
                    .try_into()
                    .map_err(|_| invalid(format!("{field}.sha256"), "must be 32 bytes"))?;
                if !key_hashes.insert(sha256) {
                    return Err(invalid(format!("{field}.sha256"), "key shared by two gateways"));
                }
                keys.push(GatewayKey { id: parse_id(&format!("{field}.id"), &k.id)?, sha256 });
            }
            let routing = match g.routing {
                None => RoutingPolicy::default(),
                Some(r) => RoutingPolicy {
                    strategy: match cfg::RoutingStrategy::try_from(r.strategy) {
                        Ok(cfg::RoutingStrategy::Unspecified | cfg::RoutingStrategy::Weighted) => {
                            RoutingStrategy::Weighted
                        }
                        Ok(cfg::RoutingStrategy::Fastest) => RoutingStrategy::Fastest,
                        Err(_) => {
                            return Err(invalid(
                                f("routing.strategy"),
                                format!("unknown strategy {}", r.strategy),
                            ));
                        }
                    },
                    wait_for_recovery: r.wait_for_recovery,
                    request_timeout_ms: (r.request_timeout_ms > 0).then_some(r.request_timeout_ms),
                },
            };
            gateways.push(Gateway { id, name: g.name, members, keys, routing });
        }
        Ok(Snapshot { version: ConfigVersion(wire.version), endpoints, gateways })
    }
}

impl From<&Snapshot> for cfg::Snapshot {
    fn from(s: &Snapshot) -> Self {
        cfg::Snapshot {
            version: s.version.0,
            endpoints: s
                .endpoints
                .iter()
                .map(|e| cfg::Endpoint {
                    id: e.id.to_string(),
                    name: e.name.clone(),
                    platform: match e.platform {
                        Platform::AzureOpenai => cfg::Platform::AzureOpenai,
                        Platform::OpenaiCompatible => cfg::Platform::OpenaiCompatible,
                    } as i32,
                    base_url: e.base_url.to_string(),
                    deployment: e.deployment.clone(),
                    model_name: e.model_name.clone(),
                    model_version: e.model_version.clone(),
                    region: e.region.clone(),
                    credential: Some(cfg::Credential {
                        kind: Some(match &e.credential {
                            Credential::ApiKey(k) => {
                                cfg::credential::Kind::ApiKey(k.expose().to_owned())
                            }
                            Credential::Entra { scope } => {
                                cfg::credential::Kind::Entra(cfg::EntraAuth {
                                    scope: scope.clone(),
                                })
                            }
                        }),
                    }),
                })
                .collect(),
            gateways: s
                .gateways
                .iter()
                .map(|g| cfg::Gateway {
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
                        })
                        .collect(),
                    routing: Some(cfg::RoutingPolicy {
                        strategy: match g.routing.strategy {
                            RoutingStrategy::Weighted => cfg::RoutingStrategy::Weighted,
                            RoutingStrategy::Fastest => cfg::RoutingStrategy::Fastest,
                        } as i32,
                        wait_for_recovery: g.routing.wait_for_recovery,
                        request_timeout_ms: g.routing.request_timeout_ms.unwrap_or(0),
                    }),
                })
                .collect(),
        }
    }
}

/// SHA-256 of a gateway key secret, as stored and as looked up by the data plane.
pub fn gateway_key_hash(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> cfg::Snapshot {
        let e = EndpointId::new();
        cfg::Snapshot {
            version: 3,
            endpoints: vec![cfg::Endpoint {
                id: e.to_string(),
                name: "eus".into(),
                platform: cfg::Platform::AzureOpenai as i32,
                base_url: "https://eus.openai.azure.com".into(),
                deployment: "gpt-4o".into(),
                model_name: "gpt-4o".into(),
                model_version: "2024-11-20".into(),
                region: "eastus".into(),
                credential: Some(cfg::Credential {
                    kind: Some(cfg::credential::Kind::ApiKey("k-123456789012".into())),
                }),
            }],
            gateways: vec![cfg::Gateway {
                id: GatewayId::new().to_string(),
                name: "gw".into(),
                members: vec![cfg::GatewayMember {
                    endpoint_id: e.to_string(),
                    enabled: true,
                    priority: 0,
                    weight: 1,
                }],
                keys: vec![cfg::GatewayKey {
                    id: GatewayKeyId::new().to_string(),
                    sha256: gateway_key_hash("secret").to_vec(),
                }],
                routing: Some(cfg::RoutingPolicy {
                    strategy: cfg::RoutingStrategy::Fastest as i32,
                    wait_for_recovery: true,
                    request_timeout_ms: 30_000,
                }),
            }],
        }
    }

    #[test]
    fn round_trips_through_the_wire() {
        let domain = Snapshot::try_from(wire()).expect("valid");
        let back = Snapshot::try_from(cfg::Snapshot::from(&domain)).expect("valid");
        assert_eq!(domain, back);
    }

    #[test]
    fn an_entra_credential_round_trips_and_an_empty_scope_means_cognitive_services() {
        let mut w = wire();
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
    fn a_member_naming_an_unknown_endpoint_is_rejected_with_its_field() {
        let mut w = wire();
        w.gateways[0].members[0].endpoint_id = EndpointId::new().to_string();
        let err = Snapshot::try_from(w).expect_err("invalid");
        assert!(
            err.to_string().starts_with("gateways[0].members[0].endpoint_id: unknown endpoint")
        );
    }

    #[test]
    fn a_non_http_base_url_is_rejected() {
        let mut w = wire();
        w.endpoints[0].base_url = "ftp://x".into();
        let err = Snapshot::try_from(w).expect_err("invalid");
        assert_eq!(err.to_string(), "endpoints[0].base_url: must be an http(s) URL");
    }

    #[test]
    fn wire_debug_never_shows_the_api_key() {
        assert!(!format!("{:?}", wire()).contains("k-123456789012"));
    }
}
