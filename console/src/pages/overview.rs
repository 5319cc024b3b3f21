//! `/`: the state of the whole product at a glance — gateways and their aggregate state,
//! endpoints by state, the last hour's traffic (charts), data planes and the configuration
//! version they applied, and the latest configuration changes.

use chrono::Utc;
use maud::{Markup, html};

use super::{AuditPageView, EndpointView, GatewayView, StatusView, ago};
use crate::error::ConsoleError;
use crate::layout::{self, Nav, empty_state, state_badge};
use crate::operator::Operator;

/// `GET /`.
pub(crate) async fn page(op: Operator) -> Result<Markup, ConsoleError> {
    let (endpoints, gateways, status, audit, traffic) = tokio::try_join!(
        op.api.get::<Vec<EndpointView>>("/api/v1/inference-endpoints"),
        op.api.get::<Vec<GatewayView>>("/api/v1/gateways"),
        op.api.get::<StatusView>("/api/v1/status"),
        op.api.get::<AuditPageView>("/api/v1/audit-log?limit=8"),
        super::stats::overview(&op),
    )?;
    let now = Utc::now();
    let count = |state: &str| endpoints.iter().filter(|e| e.state == state).count();
    let connected = status.data_planes.iter().filter(|d| d.connected).count();
    let current = status
        .data_planes
        .iter()
        .filter(|d| d.connected && d.applied_version == status.config_version)
        .count();
    let content = html! {
        div.page-head {
            div {
                h1 { "Overview" }
                p { "Configuration version " strong { (status.config_version) } }
            }
        }
        section.cards aria-label="Summary" {
            div.card { div.num { (gateways.len()) } div.label { "Gateways" } }
            div.card { div.num { (count("healthy")) } div.label { "Endpoints healthy" } }
            div.card { div.num { (count("throttling")) } div.label { "Endpoints throttling" } }
            div.card { div.num { (count("error")) } div.label { "Endpoints in error" } }
            div.card {
                div.num { (connected) }
                div.label { "Data planes connected (" (current) " on the current version)" }
            }
        }
        (traffic)
        h2 { "Gateways" }
        @if gateways.is_empty() {
            (empty_state("No gateways yet. A gateway is the name your applications call; it routes over inference endpoints.",
                op.can(modelgw_admin_api::identity::Role::Operator).then(|| html! { a.button href="/gateways" { "Create a gateway" } })))
        } @else {
            div.table-wrap hx-ext="sse" sse-connect="/events/health" {
                table {
                    thead { tr { th { "Gateway" } th { "State" } th.num { "Endpoints enabled" } th { "Routing" } } }
                    tbody {
                        @for g in &gateways {
                            tr {
                                td { a href={ "/gateways/" (g.id) } { (g.name) } }
                                td { span #{ "gw-state-" (g.id) } sse-swap={ "gw-" (g.id) } { (state_badge(&g.state, None)) } }
                                td.num { (g.endpoints.iter().filter(|m| m.enabled).count()) " / " (g.endpoints.len()) }
                                td { (g.routing.strategy) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Data planes" }
        @if status.data_planes.is_empty() {
            (empty_state("No data plane has connected to this control plane yet.", None))
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th { "Node" } th { "Connected" } th.num { "Applied version" } th { "Last seen" } } }
                    tbody {
                        @for d in &status.data_planes {
                            tr {
                                td.mono { (d.node_id) }
                                td { (if d.connected { state_badge("healthy", None) } else { state_badge("unknown", Some("disconnected")) }) }
                                td.num {
                                    (d.applied_version)
                                    @if d.applied_version != status.config_version { span.sub { " (behind)" } }
                                }
                                td { (ago(d.last_seen, now)) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Recent changes" }
        @if audit.entries.is_empty() {
            (empty_state("No configuration changes yet.", None))
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th { "When" } th { "Who" } th { "What" } } }
                    tbody {
                        @for e in &audit.entries {
                            tr {
                                td { (ago(e.at, now)) }
                                td.mono { (e.actor) }
                                td { (e.action.replace('_', " ")) " " (e.entity.replace('_', " ")) " " strong { (e.entity_name) } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&op, "Overview", Nav::Overview, content))
}
