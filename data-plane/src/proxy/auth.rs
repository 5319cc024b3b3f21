//! Which gateway a request may use: its key names one, and the deployment in its path (or
//! `model` in a v1 body) must be `auto` or that gateway's name. Refusals are Azure-shaped
//! (401 `AccessDenied`, 404 `DeploymentNotFound`) and logged without the key.

use http::{HeaderMap, Response};
use modelgw_model::gateway_key_hash;
use tracing::info;

use super::rewrite::ModelProbe;
use super::route::{Route, client_key};
use super::{ProxyBody, reply};
use crate::routing_table::{CompiledGateway, RoutingTable};

/// Why a request may not use any gateway, or not the one it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No key, or a key no gateway has: 401.
    AccessDenied,
    /// The path's deployment or the body's `model` is neither `auto` nor the gateway: 404.
    DeploymentNotFound,
}

impl Refusal {
    /// The Azure-shaped answer.
    pub(super) fn response(self) -> Response<ProxyBody> {
        match self {
            Refusal::AccessDenied => reply::access_denied(),
            Refusal::DeploymentNotFound => reply::deployment_not_found(),
        }
    }
}

/// The gateway the request's key (`api-key`, else `Authorization: Bearer`) opens.
pub(super) fn gateway_for_key<'t>(
    table: &'t RoutingTable,
    headers: &HeaderMap,
    rid: &str,
) -> Result<&'t CompiledGateway, Refusal> {
    let Some(key) = client_key(headers) else {
        info!(request_id = rid, "no gateway key");
        return Err(Refusal::AccessDenied);
    };
    let Some(gateway) = table.gateway_for_key(&gateway_key_hash(key)) else {
        info!(request_id = rid, "unknown gateway key");
        return Err(Refusal::AccessDenied);
    };
    Ok(gateway)
}

/// The deployment in the path, if any, must be `auto` or the gateway's name.
pub(super) fn check_deployment(
    route: Route<'_>,
    gateway: &CompiledGateway,
    rid: &str,
) -> Result<(), Refusal> {
    if let Some(deployment) = route.deployment()
        && deployment != "auto"
        && deployment != gateway.name
    {
        info!(request_id = rid, deployment, "deployment is neither auto nor the gateway");
        return Err(Refusal::DeploymentNotFound);
    }
    Ok(())
}

/// On `/openai/v1/…` the body's `model` is the deployment: `auto` or the gateway's name.
pub(super) fn check_model(
    route: Route<'_>,
    model: &ModelProbe,
    gateway: &CompiledGateway,
    rid: &str,
) -> Result<(), Refusal> {
    if let Route::V1 { .. } = route
        && let ModelProbe::Present(field) = model
        && let Some(name) = field.value.as_deref()
        && name != "auto"
        && name != gateway.name
    {
        info!(request_id = rid, model = name, "model is neither auto nor the gateway");
        return Err(Refusal::DeploymentNotFound);
    }
    Ok(())
}
