//! The console's pages, one module per section. Each reads and changes configuration through the
//! admin API as the signed-in operator ([`crate::operator::Operator::api`]).
//!
//! The views below are the parts of the API's answers the pages show; the API's OpenAPI
//! document is the contract (`admin-api`).

pub(crate) mod audit;
pub(crate) mod data_planes;
pub(crate) mod endpoint_forms;
pub(crate) mod endpoints;
pub(crate) mod gateways;
pub(crate) mod import;
pub(crate) mod overview;
pub(crate) mod playground;
pub(crate) mod sign_in;
pub(crate) mod stats;
pub(crate) mod traces;

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// `GET /api/v1/inference-endpoints` (one element).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct EndpointView {
    pub id: String,
    pub name: String,
    pub platform: String,
    pub endpoint: String,
    pub deployment: String,
    pub model_name: String,
    pub model_version: String,
    pub region: String,
    pub auth: String,
    #[serde(default)]
    pub api_key_hint: String,
    pub state: String,
    #[serde(default)]
    pub state_reason: Option<String>,
    #[serde(default)]
    pub retry_after: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_error: Option<LastErrorView>,
    #[serde(default)]
    pub data_planes: Vec<DataPlaneHealthView>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct LastErrorView {
    pub reason: String,
    pub at: DateTime<Utc>,
    pub node_id: String,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct DataPlaneHealthView {
    pub node_id: String,
    pub state: String,
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /api/v1/gateways` (one element).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct GatewayView {
    pub id: String,
    pub name: String,
    pub endpoints: Vec<GatewayMemberView>,
    pub routing: RoutingView,
    pub state: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct GatewayMemberView {
    pub endpoint_id: String,
    pub enabled: bool,
    pub priority: u32,
    pub weight: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct RoutingView {
    pub strategy: String,
    pub wait_for_recovery: bool,
    #[serde(default)]
    pub request_timeout_ms: Option<u32>,
    pub quota: QuotaView,
}

/// `routing.quota` of a gateway (the API always shows every field).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct QuotaView {
    pub enabled: bool,
    pub request_window_secs: u32,
    pub token_window_secs: u32,
    pub reserve_percent: u8,
}

/// `GET /api/v1/status`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct StatusView {
    pub config_version: u64,
    pub data_planes: Vec<DataPlaneView>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct DataPlaneView {
    pub node_id: String,
    pub applied_version: u64,
    pub connected: bool,
    pub last_seen: DateTime<Utc>,
    #[serde(default)]
    pub last_nack: Option<String>,
}

/// An id from a URL path or form, checked to be a UUID before it goes into an API path (so a
/// crafted id cannot name another API route); anything else is a 404, as the API would answer.
pub(crate) fn path_id(raw: &str, what: &str) -> Result<uuid::Uuid, crate::error::ConsoleError> {
    uuid::Uuid::parse_str(raw).map_err(|_| {
        crate::error::ConsoleError::NotFound(Box::new(crate::api::Problem {
            title: "Not found".to_owned(),
            status: 404,
            detail: format!("There is no {what} with this id."),
            ..crate::api::Problem::default()
        }))
    })
}

/// What an endpoint's badge says next to its state: the time until retry while throttling,
/// the reason while in error.
pub(crate) fn endpoint_state_detail(e: &EndpointView, now: DateTime<Utc>) -> Option<String> {
    match e.state.as_str() {
        "throttling" => e.retry_after.map(|at| format!("retry in {}", until(at, now))),
        "error" => {
            e.state_reason.clone().or_else(|| e.last_error.as_ref().map(|l| l.reason.clone()))
        }
        _ => None,
    }
}

/// `12 s`, `3 min`, `now` — how long until `at`.
pub(crate) fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (at - now).num_seconds();
    match secs {
        ..=0 => "now".to_owned(),
        1..=119 => format!("{secs} s"),
        _ => format!("{} min", (secs + 59) / 60),
    }
}

/// `5 s ago`, `3 min ago`, `2 h ago`, or the date.
pub(crate) fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => at.format("%Y-%m-%d %H:%M UTC").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        let now = Utc::now();
        assert_eq!(until(now + TimeDelta::seconds(12), now), "12 s");
        assert_eq!(until(now + TimeDelta::seconds(300), now), "5 min");
        assert_eq!(until(now - TimeDelta::seconds(3), now), "now");
        assert_eq!(ago(now - TimeDelta::seconds(5), now), "5 s ago");
        assert_eq!(ago(now - TimeDelta::seconds(7200), now), "2 h ago");
    }
}

/// `GET /api/v1/audit-log` (one page).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct AuditPageView {
    pub entries: Vec<AuditEntryView>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct AuditEntryView {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub entity: String,
    pub entity_id: String,
    pub entity_name: String,
    pub action: String,
    #[serde(default)]
    pub config_version: Option<u64>,
    #[serde(default)]
    pub client_ip: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub before: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub after: Option<serde_json::Map<String, serde_json::Value>>,
}
