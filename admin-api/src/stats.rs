//! `/api/v1/stats/…`: traffic statistics for the Admin Console's charts, read from the control
//! plane's rolling window (`modelgw_control_plane::distribution::stats`): what every data plane
//! connected to this control plane reported, per minute, for up to the last 24 hours, summed
//! over data planes. Names and regions come from the current configuration; ids are always
//! included. Every configured gateway / endpoint / region is listed, with zeros when it had no
//! traffic; a per-minute series lists only minutes with traffic.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use modelgw_control_plane::distribution::stats::{Counts, MinuteCounts, WINDOW_MINUTES};
use modelgw_model::GatewayId;
use modelgw_model::stats::Buckets;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AdminState;
use crate::problem::{ApiError, Problem};

/// The window when `minutes` is not given: the console's charts show the last hour.
const DEFAULT_MINUTES: u32 = 60;

/// Query of `GET /stats/gateways` and `GET /stats/regions`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WindowQuery {
    /// The window: the last `minutes` minutes, the current one included, 1–1440.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1440, default = 60)]
    pub minutes: Option<String>,
}

/// Query of `GET /stats/endpoints`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EndpointsQuery {
    /// The window: the last `minutes` minutes, the current one included, 1–1440.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1440, default = 60)]
    pub minutes: Option<String>,
    /// Only this gateway's members, and only the traffic through this gateway (default: every
    /// endpoint, summed over the gateways that use it).
    #[param(value_type = Option<String>, format = Uuid)]
    pub gateway_id: Option<String>,
}

/// Counts over the window (or one minute of it), summed over data planes.
#[derive(Clone, Copy, Debug, Default, Serialize, ToSchema)]
pub struct StatsCounts {
    /// Answers clients got. For an endpoint: the answers it gave (any status). For a gateway:
    /// also the answers it gave itself (429 when every member was throttling, 503/504 when
    /// none could serve).
    pub requests: u64,
    /// 5xx answers passed on and streams cut after they started; for a gateway also its own
    /// 503/504 answers.
    pub errors: u64,
    /// 429s: attempts an endpoint answered 429 (the request may then have been served by
    /// another); for a gateway also its own 429 answers.
    pub throttled: u64,
    /// Attempts that failed over for another reason (5xx, transport, timeout).
    pub failed_attempts: u64,
    /// Tokens from the answers' `usage` (streams included).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: u64,
}

impl From<Counts> for StatsCounts {
    fn from(c: Counts) -> Self {
        StatsCounts {
            requests: c.requests,
            errors: c.errors,
            throttled: c.throttled,
            failed_attempts: c.failed_attempts,
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            total_tokens: c.prompt_tokens.saturating_add(c.completion_tokens),
        }
    }
}

/// One minute with traffic.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsMinute {
    /// The minute's start (UTC).
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub counts: StatsCounts,
}

fn series(minutes: &[MinuteCounts]) -> Vec<StatsMinute> {
    minutes
        .iter()
        .map(|m| StatsMinute { at: DateTime::<Utc>::from(m.at), counts: m.counts.into() })
        .collect()
}

/// One gateway over the window.
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayStatsResponse {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    pub totals: StatsCounts,
    /// Of `totals.throttled` and `totals.requests`: 429s the gateway answered itself because
    /// every member was throttling.
    pub own_throttled: u64,
    /// Of `totals.errors` and `totals.requests`: 503/504s the gateway answered itself.
    pub own_unavailable: u64,
    /// Minutes with traffic, oldest first.
    pub series: Vec<StatsMinute>,
}

/// `GET /api/v1/stats/gateways`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayStatsPage {
    /// The window's length in minutes.
    pub minutes: u32,
    /// The start of the window's first minute.
    pub from: DateTime<Utc>,
    /// Every configured gateway, by name.
    pub gateways: Vec<GatewayStatsResponse>,
}

/// One inference endpoint over the window.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointStatsResponse {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    pub region: String,
    pub totals: StatsCounts,
    /// End-to-end latency to the response head, in milliseconds: median and 95th percentile
    /// (interpolated within the shared latency buckets); `null` without answers.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// Streams' time to first token, in milliseconds; `null` without streams.
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    /// Streamed answers whose first token arrived: the samples of the TTFT quantiles.
    pub ttft_samples: u64,
    /// Minutes with traffic, oldest first.
    pub series: Vec<StatsMinute>,
}

/// `GET /api/v1/stats/endpoints`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointStatsPage {
    pub minutes: u32,
    pub from: DateTime<Utc>,
    /// The gateway the numbers are restricted to, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Uuid)]
    pub gateway_id: Option<String>,
    /// Every configured endpoint (with `gateway_id`: that gateway's members), by name.
    pub endpoints: Vec<EndpointStatsResponse>,
}

/// One region over the window: its endpoints' numbers merged.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegionStatsResponse {
    /// The endpoints' `region`, as configured.
    pub region: String,
    /// Ids of the configured endpoints in this region.
    pub endpoint_ids: Vec<String>,
    pub requests: u64,
    pub errors: u64,
    pub throttled: u64,
    /// From the region's merged latency buckets; `null` without answers.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// From the region's merged time-to-first-token buckets; `null` without streams.
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub ttft_samples: u64,
}

/// `GET /api/v1/stats/regions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegionStatsPage {
    pub minutes: u32,
    pub from: DateTime<Utc>,
    /// Every region of a configured endpoint, by name.
    pub regions: Vec<RegionStatsResponse>,
}

/// `minutes` as given, checked: 1–1440, default 60.
fn minutes(raw: Option<&str>) -> Result<u32, ApiError> {
    let Some(raw) = raw else { return Ok(DEFAULT_MINUTES) };
    raw.trim().parse::<u32>().ok().filter(|m| (1..=WINDOW_MINUTES).contains(m)).ok_or_else(|| {
        ApiError::BadParameter {
            field: "minutes",
            reason: format!("must be a whole number of minutes from 1 to {WINDOW_MINUTES}"),
        }
    })
}

fn query_reason(rejection: &QueryRejection) -> String {
    let text = rejection.body_text();
    text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text).to_owned()
}

/// The start of the window's first minute, `minutes` long and ending now.
fn window_start(minutes: u32) -> DateTime<Utc> {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let first = (now / 60).saturating_sub(u64::from(minutes) - 1) * 60;
    DateTime::<Utc>::from_timestamp(i64::try_from(first).unwrap_or(0), 0).unwrap_or_default()
}

/// A quantile in milliseconds, to a tenth.
fn quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    buckets.quantile_ms(q).map(|ms| (ms * 10.0).round() / 10.0)
}

/// Traffic per gateway: totals and a per-minute series of requests, errors, throttles (the
/// gateway's own 429s included) and tokens.
#[utoipa::path(
    get,
    path = "/api/v1/stats/gateways",
    operation_id = "get_gateway_stats",
    tag = "stats",
    params(WindowQuery),
    responses(
        (status = 200, description = "Every configured gateway's traffic over the window",
            body = GatewayStatsPage),
        (status = 400, description = "Invalid query string (`minutes` outside 1–1440, or an \
            unknown parameter), the field named in `errors`", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn gateways(
    State(state): State<AdminState>,
    query: Result<Query<WindowQuery>, QueryRejection>,
) -> Result<Json<GatewayStatsPage>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError::BadQuery { reason: query_reason(&rejection) })?;
    let minutes = minutes(query.minutes.as_deref())?;
    let configured = state.store.list_gateways().await?;
    let mut traffic: HashMap<GatewayId, _> =
        state.registry.stats().gateways(minutes).into_iter().map(|g| (g.gateway_id, g)).collect();
    let gateways = configured
        .into_iter()
        .map(|g| {
            let t = traffic.remove(&g.id);
            GatewayStatsResponse {
                id: g.id.to_string(),
                name: g.name,
                totals: t.as_ref().map(|t| t.totals).unwrap_or_default().into(),
                own_throttled: t.as_ref().map_or(0, |t| t.own_throttled),
                own_unavailable: t.as_ref().map_or(0, |t| t.own_unavailable),
                series: t.as_ref().map(|t| series(&t.minutes)).unwrap_or_default(),
            }
        })
        .collect();
    Ok(Json(GatewayStatsPage { minutes, from: window_start(minutes), gateways }))
}

/// Traffic per inference endpoint: the same counts as per gateway, plus p50/p95 latency and
/// time to first token.
#[utoipa::path(
    get,
    path = "/api/v1/stats/endpoints",
    operation_id = "get_endpoint_stats",
    tag = "stats",
    params(EndpointsQuery),
    responses(
        (status = 200, description = "Every configured endpoint's traffic over the window (or \
            one gateway's members' traffic through it)", body = EndpointStatsPage),
        (status = 400, description = "Invalid query string (`minutes` outside 1–1440, a \
            `gateway_id` that is not a UUID, or an unknown parameter), the field named in \
            `errors`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No gateway with this `gateway_id`", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn endpoints(
    State(state): State<AdminState>,
    query: Result<Query<EndpointsQuery>, QueryRejection>,
) -> Result<Json<EndpointStatsPage>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError::BadQuery { reason: query_reason(&rejection) })?;
    let minutes = minutes(query.minutes.as_deref())?;
    let gateway = query
        .gateway_id
        .as_deref()
        .map(|raw| {
            raw.trim().parse::<GatewayId>().map_err(|_| ApiError::BadParameter {
                field: "gateway_id",
                reason: "must be a gateway id (a UUID)".to_owned(),
            })
        })
        .transpose()?;
    let mut configured = state.store.list_endpoints().await?;
    if let Some(id) = gateway {
        let gateway = state.store.get_gateway(id).await?;
        configured.retain(|e| gateway.members.iter().any(|m| m.endpoint_id == e.id));
    }
    let mut traffic: HashMap<_, _> = state
        .registry
        .stats()
        .endpoints(minutes, gateway)
        .into_iter()
        .map(|e| (e.endpoint_id, e))
        .collect();
    let endpoints = configured
        .into_iter()
        .map(|e| {
            let t = traffic.remove(&e.id);
            let (latency, ttft) =
                t.as_ref().map(|t| (t.latency.clone(), t.ttft.clone())).unwrap_or_default();
            EndpointStatsResponse {
                id: e.id.to_string(),
                name: e.name,
                region: e.region,
                totals: t.as_ref().map(|t| t.totals).unwrap_or_default().into(),
                latency_p50_ms: quantile(&latency, 0.5),
                latency_p95_ms: quantile(&latency, 0.95),
                ttft_p50_ms: quantile(&ttft, 0.5),
                ttft_p95_ms: quantile(&ttft, 0.95),
                ttft_samples: ttft.total(),
                series: t.as_ref().map(|t| series(&t.minutes)).unwrap_or_default(),
            }
        })
        .collect();
    Ok(Json(EndpointStatsPage {
        minutes,
        from: window_start(minutes),
        gateway_id: gateway.map(|g| g.to_string()),
        endpoints,
    }))
}

/// Traffic per region: requests and p50/p95 time to first token from the region's merged
/// buckets (never an average of quantiles).
#[utoipa::path(
    get,
    path = "/api/v1/stats/regions",
    operation_id = "get_region_stats",
    tag = "stats",
    params(WindowQuery),
    responses(
        (status = 200, description = "Every configured region's traffic over the window",
            body = RegionStatsPage),
        (status = 400, description = "Invalid query string (`minutes` outside 1–1440, or an \
            unknown parameter), the field named in `errors`", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub async fn regions(
    State(state): State<AdminState>,
    query: Result<Query<WindowQuery>, QueryRejection>,
) -> Result<Json<RegionStatsPage>, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError::BadQuery { reason: query_reason(&rejection) })?;
    let minutes = minutes(query.minutes.as_deref())?;
    let configured = state.store.list_endpoints().await?;
    let mut traffic: HashMap<_, _> = state
        .registry
        .stats()
        .endpoints(minutes, None)
        .into_iter()
        .map(|e| (e.endpoint_id, e))
        .collect();
    struct Region {
        endpoint_ids: Vec<String>,
        counts: Counts,
        latency: Buckets,
        ttft: Buckets,
    }
    let mut regions: BTreeMap<String, Region> = BTreeMap::new();
    for e in configured {
        let region = regions.entry(e.region).or_insert_with(|| Region {
            endpoint_ids: Vec::new(),
            counts: Counts::default(),
            latency: Buckets::default(),
            ttft: Buckets::default(),
        });
        region.endpoint_ids.push(e.id.to_string());
        if let Some(t) = traffic.remove(&e.id) {
            region.counts.requests += t.totals.requests;
            region.counts.errors += t.totals.errors;
            region.counts.throttled += t.totals.throttled;
            region.latency.add(&t.latency);
            region.ttft.add(&t.ttft);
        }
    }
    let regions = regions
        .into_iter()
        .map(|(name, r)| RegionStatsResponse {
            region: name,
            endpoint_ids: r.endpoint_ids,
            requests: r.counts.requests,
            errors: r.counts.errors,
            throttled: r.counts.throttled,
            latency_p50_ms: quantile(&r.latency, 0.5),
            latency_p95_ms: quantile(&r.latency, 0.95),
            ttft_p50_ms: quantile(&r.ttft, 0.5),
            ttft_p95_ms: quantile(&r.ttft, 0.95),
            ttft_samples: r.ttft.total(),
        })
        .collect();
    Ok(Json(RegionStatsPage { minutes, from: window_start(minutes), regions }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_default_to_an_hour_and_stay_within_a_day() {
        assert_eq!(minutes(None).ok(), Some(60));
        assert_eq!(minutes(Some("1")).ok(), Some(1));
        assert_eq!(minutes(Some("1440")).ok(), Some(1440));
        for bad in ["0", "1441", "-5", "abc", "", "1.5"] {
            match minutes(Some(bad)) {
                Err(ApiError::BadParameter { field, .. }) => assert_eq!(field, "minutes"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
