//! The traffic charts of the overview and of a gateway's page, from `GET /api/v1/stats/…` (the
//! control plane's per-minute window of what data planes report): requests, errors and throttles
//! per minute over the last hour, tokens (per minute on a gateway's page, and per gateway or
//! endpoint), and p50/p95 time to first token. Ids are stable (`stats-requests`,
//! `stats-tokens-minute`, `stats-tokens`, `stats-ttft`) for tests and links.

use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use crate::charts::{self, Bar, Column, Line, Quantiles};
use crate::error::ConsoleError;
use crate::operator::Operator;

/// The window the charts show, in minutes.
const MINUTES: usize = 60;

/// Counts of `GET /api/v1/stats/…` (totals, or one minute).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct CountsView {
    pub requests: u64,
    pub errors: u64,
    pub throttled: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct MinuteView {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub counts: CountsView,
}

/// `GET /api/v1/stats/gateways`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct GatewayStatsPageView {
    pub from: DateTime<Utc>,
    pub gateways: Vec<GatewayStatsView>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct GatewayStatsView {
    pub id: String,
    pub name: String,
    pub totals: CountsView,
    pub series: Vec<MinuteView>,
}

/// `GET /api/v1/stats/endpoints`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct EndpointStatsPageView {
    pub endpoints: Vec<EndpointStatsView>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct EndpointStatsView {
    pub name: String,
    pub region: String,
    pub totals: CountsView,
    #[serde(default)]
    pub ttft_p50_ms: Option<f64>,
    #[serde(default)]
    pub ttft_p95_ms: Option<f64>,
    pub ttft_samples: u64,
}

/// `GET /api/v1/stats/regions`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct RegionStatsPageView {
    pub regions: Vec<RegionStatsView>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct RegionStatsView {
    pub region: String,
    #[serde(default)]
    pub ttft_p50_ms: Option<f64>,
    #[serde(default)]
    pub ttft_p95_ms: Option<f64>,
    pub ttft_samples: u64,
}

/// Requests, errors and throttles per minute of the window starting at `from`, summed over
/// `series`.
fn requests_chart<'a>(
    from: DateTime<Utc>,
    series: impl Iterator<Item = &'a MinuteView>,
    title: &str,
) -> Markup {
    let mut values = [vec![0u64; MINUTES], vec![0u64; MINUTES], vec![0u64; MINUTES]];
    for m in series {
        let Ok(i) = usize::try_from((m.at - from).num_minutes()) else { continue };
        if i < MINUTES {
            values[0][i] += m.counts.requests;
            values[1][i] += m.counts.errors;
            values[2][i] += m.counts.throttled;
        }
    }
    let [requests, errors, throttled] = values;
    charts::per_minute(
        "stats-requests",
        title,
        from,
        &[
            Line { name: "Requests", class: "s-requests", values: requests },
            Line { name: "Errors", class: "s-errors", values: errors },
            Line { name: "Throttled", class: "s-throttled", values: throttled },
        ],
    )
}

/// Prompt and completion tokens per minute of the window starting at `from`, summed over
/// `series`, stacked.
fn tokens_chart<'a>(
    from: DateTime<Utc>,
    series: impl Iterator<Item = &'a MinuteView>,
    title: &str,
) -> Markup {
    let mut columns: Vec<Column> = (0..MINUTES)
        .map(|i| Column {
            at: from + Duration::minutes(i64::try_from(i).unwrap_or(0)),
            values: vec![0, 0],
        })
        .collect();
    for m in series {
        let Ok(i) = usize::try_from((m.at - from).num_minutes()) else { continue };
        if let Some(c) = columns.get_mut(i) {
            c.values[0] += m.counts.prompt_tokens;
            c.values[1] += m.counts.completion_tokens;
        }
    }
    charts::columns("stats-tokens-minute", title, &TOKEN_PARTS, Duration::minutes(1), &columns, &[])
}

/// The parts of a tokens chart: prompt below, completion stacked on it.
pub(crate) const TOKEN_PARTS: [(&str, &str); 2] =
    [("Prompt", "s-prompt"), ("Completion", "s-completion")];

/// The overview's charts: every gateway together.
pub(crate) async fn overview(op: &Operator) -> Result<Markup, ConsoleError> {
    let (gateways_path, regions_path) = (
        format!("/api/v1/stats/gateways?minutes={MINUTES}"),
        format!("/api/v1/stats/regions?minutes={MINUTES}"),
    );
    let (gateways, regions) = tokio::try_join!(
        op.api.get::<GatewayStatsPageView>(&gateways_path),
        op.api.get::<RegionStatsPageView>(&regions_path),
    )?;
    let tokens: Vec<Bar> = gateways
        .gateways
        .iter()
        .map(|g| Bar {
            label: g.name.clone(),
            values: vec![g.totals.prompt_tokens, g.totals.completion_tokens],
        })
        .collect();
    let ttft: Vec<Quantiles> = regions
        .regions
        .iter()
        .map(|r| Quantiles {
            label: r.region.clone(),
            p50_ms: r.ttft_p50_ms,
            p95_ms: r.ttft_p95_ms,
            samples: r.ttft_samples,
        })
        .collect();
    Ok(html! {
        section.stats aria-labelledby="h-traffic" {
            h2 #h-traffic { "Traffic, last hour" }
            p.sub { "As the data planes connected to this control plane report it (every few seconds), per minute." }
            div.charts {
                (requests_chart(gateways.from, gateways.gateways.iter().flat_map(|g| &g.series),
                    "Requests, errors and throttles per minute, all gateways"))
                (charts::stacked_bars("stats-tokens", "Tokens per gateway", &TOKEN_PARTS, &tokens))
                (charts::quantile_bars("stats-ttft", "Time to first token per region (streams)", &ttft))
            }
        }
    })
}

/// A gateway page's charts: this gateway's traffic, and its members'.
pub(crate) async fn gateway(op: &Operator, gateway_id: &str) -> Result<Markup, ConsoleError> {
    let (gateways_path, endpoints_path) = (
        format!("/api/v1/stats/gateways?minutes={MINUTES}"),
        format!("/api/v1/stats/endpoints?minutes={MINUTES}&gateway_id={gateway_id}"),
    );
    let (gateways, endpoints) = tokio::try_join!(
        op.api.get::<GatewayStatsPageView>(&gateways_path),
        op.api.get::<EndpointStatsPageView>(&endpoints_path),
    )?;
    let this = gateways.gateways.iter().find(|g| g.id == gateway_id);
    let tokens: Vec<Bar> = endpoints
        .endpoints
        .iter()
        .map(|e| Bar {
            label: e.name.clone(),
            values: vec![e.totals.prompt_tokens, e.totals.completion_tokens],
        })
        .collect();
    let ttft: Vec<Quantiles> = endpoints
        .endpoints
        .iter()
        .map(|e| Quantiles {
            label: format!("{} ({})", e.name, e.region),
            p50_ms: e.ttft_p50_ms,
            p95_ms: e.ttft_p95_ms,
            samples: e.ttft_samples,
        })
        .collect();
    let totals = this.map(|g| g.totals).unwrap_or_default();
    Ok(html! {
        section.stats aria-labelledby="h-traffic" {
            h2 #h-traffic { "Traffic, last hour" }
            p.sub {
                "Requests " strong { (totals.requests) } " · errors " strong { (totals.errors) }
                " · throttled " strong { (totals.throttled) } " · tokens " strong { (totals.prompt_tokens + totals.completion_tokens) }
                ", as the data planes connected to this control plane report it."
            }
            div.charts {
                (requests_chart(gateways.from, this.into_iter().flat_map(|g| &g.series),
                    "Requests, errors and throttles per minute"))
                (tokens_chart(gateways.from, this.into_iter().flat_map(|g| &g.series),
                    "Tokens per minute"))
                (charts::stacked_bars("stats-tokens", "Tokens through this gateway, per endpoint", &TOKEN_PARTS, &tokens))
                (charts::quantile_bars("stats-ttft", "Time to first token per endpoint (streams)", &ttft))
            }
        }
    })
}
