//! Which gateway a request may use: its key names one (an expired key is as unknown as a
//! wrong one), and the deployment in its path (or `model` in a v1 or `/openai/responses`
//! body) must be `auto` or that gateway's name. Refusals are Azure-shaped (401
//! `AccessDenied`, 404 `DeploymentNotFound`, 400 for a `model` that is not a name) and logged
//! without the key: failed keys at `debug` only, their aggregate per client address by
//! `failed_auth`.

use http::{HeaderMap, Response};
use modelgw_model::gateway_key_hash;
use tracing::{debug, info};

use super::rewrite::ModelProbe;
use super::route::{Call, client_key};
use super::{ProxyBody, reply};
use crate::routing_table::{CompiledGateway, CompiledKey, RoutingTable};

/// Why a request may not use any gateway, or not the one it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No key, or a key no gateway has: 401.
    AccessDenied,
    /// The path's deployment or the body's `model` is neither `auto` nor the gateway: 404.
    DeploymentNotFound,
    /// Where `model` names the deployment, it is not a string: 400.
    ModelNotAName,
}

impl Refusal {
    /// The Azure-shaped answer.
    pub(super) fn response(self) -> Response<ProxyBody> {
        match self {
            Refusal::AccessDenied => reply::access_denied(),
            Refusal::DeploymentNotFound => reply::deployment_not_found(),
            Refusal::ModelNotAName => {
                reply::bad_request("'model' must be a string: 'auto' or the gateway's name.")
            }
        }
    }
}

/// The gateway the request's key (`api-key`, else `Authorization: Bearer`) opens, the key as
/// configured, and the key as sent (the query filter drops any parameter that repeats it).
pub(super) fn gateway_for_key<'t, 'h>(
    table: &'t RoutingTable,
    headers: &'h HeaderMap,
    rid: &str,
) -> Result<(&'t CompiledGateway, &'t CompiledKey, &'h str), Refusal> {
    let Some(key) = client_key(headers) else {
        debug!(request_id = rid, "no gateway key");
        return Err(Refusal::AccessDenied);
    };
    let Some((gateway, compiled)) = table.key(&gateway_key_hash(key)) else {
        debug!(request_id = rid, "unknown gateway key");
        return Err(Refusal::AccessDenied);
    };
    if compiled.expires_unix_ms.is_some() && compiled.expired(now_unix_ms()) {
        debug!(request_id = rid, key_id = %compiled.id, "expired gateway key");
        return Err(Refusal::AccessDenied);
    }
    Ok((gateway, compiled, key))
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The deployment in the path, if any, must be `auto` or the gateway's name.
pub(super) fn check_deployment(
    call: Call<'_>,
    gateway: &CompiledGateway,
    rid: &str,
) -> Result<(), Refusal> {
    if let Some(deployment) = call.deployment
        && deployment != "auto"
        && deployment != gateway.name
    {
        info!(request_id = rid, deployment, "deployment is neither auto nor the gateway");
        return Err(Refusal::DeploymentNotFound);
    }
    Ok(())
}

/// Where the body's `model` names the deployment (`/openai/v1/{op}`, `/openai/responses`) it
/// is `auto` or the gateway's name, or absent (the upstream then says it is required).
pub(super) fn check_model(
    call: Call<'_>,
    model: &ModelProbe,
    gateway: &CompiledGateway,
    rid: &str,
) -> Result<(), Refusal> {
    if !call.model_names_deployment() {
        return Ok(());
    }
    let ModelProbe::Present(field) = model else { return Ok(()) };
    let Some(name) = field.value.as_deref() else {
        info!(request_id = rid, "model is not a string");
        return Err(Refusal::ModelNotAName);
    };
    if name != "auto" && name != gateway.name {
        info!(request_id = rid, model = name, "model is neither auto nor the gateway");
        return Err(Refusal::DeploymentNotFound);
    }
    Ok(())
}
