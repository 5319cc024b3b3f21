//! `POST /api/v1/azure/gateway-proposals`: one proposed gateway per model and version over the
//! imported Azure endpoints — provisioned (PTU) deployments first, weights from capacity, and a
//! name that passes the gateway-name rules of `modelgw_model::limits`. Nothing is created.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use modelgw_control_plane::store::AzureEndpointRecord;
use modelgw_model::EndpointId;
use modelgw_model::limits::{
    MAX_GATEWAY_NAME_CHARS, WEIGHT_RANGE, is_gateway_name_char, is_reserved_gateway_name,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AdminState;
use crate::problem::ApiError;

/// SKU names ending in this are provisioned throughput (PTU): reserved capacity, paid for
/// whether used or not, so proposals route to them first.
const PROVISIONED_SKU_SUFFIX: &str = "provisionedmanaged";
/// Member weights of a proposal span [`WEIGHT_RANGE`]: the largest capacity gets the top
/// weight, the others their share of it, never less than the bottom one.
const PROPOSAL_WEIGHTS: (u64, u64) =
    (WEIGHT_RANGE.start().unsigned_abs(), WEIGHT_RANGE.end().unsigned_abs());

/// A member of a proposed gateway, as `POST /api/v1/gateways` takes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProposedMember {
    #[schema(value_type = String, format = Uuid)]
    pub endpoint_id: EndpointId,
    pub enabled: bool,
    /// 0 for provisioned (PTU) deployments, 1 for standard ones.
    pub priority: u32,
    /// From the deployment's capacity, scaled so the largest in the gateway gets 1000.
    pub weight: u32,
}

/// Routing of a proposed gateway.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProposedRouting {
    pub strategy: String,
    pub wait_for_recovery: bool,
}

/// A gateway proposal: the body of `POST /api/v1/gateways`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayProposal {
    pub name: String,
    pub endpoints: Vec<ProposedMember>,
    pub routing: ProposedRouting,
}

/// Proposals, one per model and version.
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayProposals {
    pub proposals: Vec<GatewayProposal>,
}

/// Propose one gateway per model+version over the imported endpoints.
#[utoipa::path(
    post,
    path = "/api/v1/azure/gateway-proposals",
    operation_id = "propose_azure_gateways",
    tag = "azure",
    responses((status = 200, description = "Proposals (nothing is created)", body = GatewayProposals))
)]
pub async fn propose_gateways(
    State(state): State<AdminState>,
) -> Result<Json<GatewayProposals>, ApiError> {
    let endpoints = state.store.list_azure_endpoints().await?;
    let proposals = proposals(endpoints);
    tracing::info!(proposals = proposals.len(), "gateway proposals");
    Ok(Json(GatewayProposals { proposals }))
}

fn is_provisioned(sku: Option<&str>) -> bool {
    sku.is_some_and(|s| s.to_ascii_lowercase().ends_with(PROVISIONED_SKU_SUFFIX))
}

fn proposals(endpoints: Vec<AzureEndpointRecord>) -> Vec<GatewayProposal> {
    let mut groups: BTreeMap<(String, String), Vec<AzureEndpointRecord>> = BTreeMap::new();
    for e in endpoints {
        groups.entry((e.model_name.clone(), e.model_version.clone())).or_default().push(e);
    }
    groups
        .into_iter()
        .map(|((model, version), mut members)| {
            members.sort_by(|a, b| {
                let pa = !is_provisioned(a.sku_name.as_deref());
                let pb = !is_provisioned(b.sku_name.as_deref());
                pa.cmp(&pb).then_with(|| a.name.cmp(&b.name))
            });
            // A deployment without a reported capacity counts as one unit.
            let capacity = |e: &AzureEndpointRecord| u64::from(e.sku_capacity.unwrap_or(1).max(1));
            let max = members.iter().map(capacity).max().unwrap_or(1);
            let (lowest, top) = PROPOSAL_WEIGHTS;
            let endpoints = members
                .iter()
                .map(|e| {
                    let weight = (capacity(e) * top).div_ceil(max);
                    ProposedMember {
                        endpoint_id: e.id,
                        enabled: true,
                        priority: if is_provisioned(e.sku_name.as_deref()) { 0 } else { 1 },
                        weight: u32::try_from(weight.clamp(lowest, top)).unwrap_or(1),
                    }
                })
                .collect();
            GatewayProposal {
                name: gateway_name(&model, &version),
                endpoints,
                routing: ProposedRouting {
                    strategy: "weighted".to_owned(),
                    wait_for_recovery: false,
                },
            }
        })
        .collect()
}

/// `<model>-<version>` in the characters a gateway name allows, at most
/// [`MAX_GATEWAY_NAME_CHARS`] of them; an empty or reserved result gets a `model-` prefix (and
/// its dots become dashes), so every proposal passes `Validator::gateway_name`.
fn gateway_name(model: &str, version: &str) -> String {
    let raw = if version.is_empty() { model.to_owned() } else { format!("{model}-{version}") };
    let mut name: String = raw
        .chars()
        .map(|c| if is_gateway_name_char(c) { c } else { '-' })
        .take(MAX_GATEWAY_NAME_CHARS)
        .collect();
    if name.is_empty() || is_reserved_gateway_name(&name) {
        name = format!("model-{name}").replace('.', "-");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Validator;

    fn record(name: &str, sku: &str, capacity: Option<u32>) -> AzureEndpointRecord {
        AzureEndpointRecord {
            id: EndpointId::new(),
            name: name.into(),
            arm_resource_id: format!("/x/{name}"),
            model_name: "gpt-4o".into(),
            model_version: "2024-11-20".into(),
            sku_name: Some(sku.into()),
            sku_capacity: capacity,
        }
    }

    #[test]
    fn provisioned_first_and_weights_scale_to_1000() {
        let p = proposals(vec![
            record("a-std", "Standard", Some(10)),
            record("b-ptu", "GlobalProvisionedManaged", Some(100)),
            record("c-none", "GlobalStandard", None),
        ]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "gpt-4o-2024-11-20");
        let m = &p[0].endpoints;
        assert_eq!((m[0].priority, m[0].weight), (0, 1000));
        assert_eq!((m[1].priority, m[1].weight), (1, 100));
        assert_eq!((m[2].priority, m[2].weight), (1, 10));
    }

    #[test]
    fn gateway_names_are_valid() {
        assert_eq!(gateway_name("gpt 4o", "v/1"), "gpt-4o-v-1");
        assert_eq!(gateway_name("auto", ""), "model-auto");
    }

    /// The proposal's name rule and the admin API's gateway-name rule are two sites over the
    /// same limits: whatever a model is called, its proposal must be creatable as proposed.
    #[test]
    fn proposed_names_are_never_reserved_and_always_pass_validation() {
        let long = "m".repeat(100);
        let cases = [
            ("auto", ""),
            ("AUTO", ""),
            ("Auto", ""),
            (".", ""),
            ("..", ""),
            ("", ""),
            ("", "."),
            (".", "."),
            ("auto", "2024-11-20"),
            (long.as_str(), ""),
            (long.as_str(), "2024-11-20"),
            ("gpt 4o/mini", "v 1"),
            ("gpt-4o", "2024/11/20"),
            ("modèle", "ü"),
            ("../..", ""),
        ];
        for (model, version) in cases {
            let name = gateway_name(model, version);
            assert!(!is_reserved_gateway_name(&name), "{model:?} {version:?} -> {name:?}");
            let mut v = Validator::new();
            assert_eq!(v.gateway_name("name", &name), name);
            assert!(!v.has_errors(), "{model:?} {version:?} -> {name:?} fails validation");
        }
    }
}
