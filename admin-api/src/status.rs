//! `/api/v1/status`: the configuration version and what each data plane has applied.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use modelgw_control_plane::DataPlaneStatus;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AdminState;
use crate::problem::ApiError;

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    /// The latest committed configuration version.
    pub config_version: u64,
    /// Every data plane this control-plane process has seen, sorted by node id.
    pub data_planes: Vec<DataPlaneResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DataPlaneResponse {
    pub node_id: String,
    /// The configuration version the data plane last acknowledged.
    pub applied_version: u64,
    /// Whether its configuration stream is open now.
    pub connected: bool,
    pub last_seen: DateTime<Utc>,
    /// Why it rejected the last snapshot it was sent (absent when it applied it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<String>,
}

impl From<DataPlaneStatus> for DataPlaneResponse {
    fn from(s: DataPlaneStatus) -> Self {
        DataPlaneResponse {
            node_id: s.node_id.0,
            applied_version: s.applied_version.0,
            connected: s.connected,
            last_seen: s.last_seen,
            last_nack: s.last_nack,
        }
    }
}

/// Configuration version and data-plane status.
#[utoipa::path(
    get,
    path = "/api/v1/status",
    operation_id = "get_status",
    tag = "status",
    responses((status = 200, description = "Configuration and data-plane status", body = StatusResponse))
)]
pub async fn get(State(state): State<AdminState>) -> Result<Json<StatusResponse>, ApiError> {
    let version = state.store.config_version().await?;
    let data_planes =
        state.registry.data_planes().into_iter().map(DataPlaneResponse::from).collect();
    Ok(Json(StatusResponse { config_version: version.0, data_planes }))
}
