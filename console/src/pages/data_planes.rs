//! `/data-planes`: every data plane this control plane has seen, with the configuration version
//! it applied against the current one, whether its stream is open, when it was last heard from,
//! and why it rejected the last snapshot (NACK).
//!
//! The admin API's status does not say how a data plane authenticated (join token, mTLS
//! identity) or which build it runs (its `Hello` carries one, the registry does not keep it),
//! so neither is shown.

use axum::Router;
use axum::routing::get;
use chrono::Utc;
use maud::{Markup, html};

use super::{DataPlaneView, StatusView, ago};
use crate::Console;
use crate::error::ConsoleError;
use crate::layout::{self, Nav, empty_state};
use crate::operator::Operator;

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new().route("/data-planes", get(list))
}

/// `GET /data-planes`.
async fn list(op: Operator) -> Result<Markup, ConsoleError> {
    let status: StatusView = op.api.get("/api/v1/status").await?;
    let current = status.config_version;
    let mut planes: Vec<&DataPlaneView> = status.data_planes.iter().collect();
    // Connected first, then by node id (the API's order).
    planes.sort_by_key(|d| !d.connected);
    let connected = planes.iter().filter(|d| d.connected).count();
    let up_to_date = planes.iter().filter(|d| d.connected && d.applied_version == current).count();
    let now = Utc::now();
    let content = html! {
        div.page-head {
            div {
                h1 { "Data Planes" }
                p { "The gateway processes serving traffic, as this control plane sees them. Configuration version "
                    strong #config-version { (current) } " is current." }
            }
        }
        @if planes.is_empty() {
            (empty_state("No data plane has connected to this control plane yet. Start one with a data-plane token and the control plane's gRPC address.", None))
        } @else {
            p.sub { (connected) " connected · " (up_to_date) " on the current version · " (planes.len()) " known" }
            div.table-wrap {
                table #data-planes-table {
                    thead {
                        tr {
                            th scope="col" { "Node" }
                            th scope="col" { "Connection" }
                            th.num scope="col" { "Applied version" }
                            th scope="col" { "Last seen" }
                            th scope="col" { "Last rejected snapshot (NACK)" }
                        }
                    }
                    tbody {
                        @for d in &planes {
                            @let behind = d.applied_version < current;
                            tr data-node=(d.node_id) class=[behind.then_some("behind")] {
                                td.mono { (d.node_id) }
                                td {
                                    @if d.connected { span.badge.ok data-state="connected" { span.dot aria-hidden="true" {} "Connected" } }
                                    @else { span.badge.muted data-state="disconnected" { span.dot aria-hidden="true" {} "Disconnected" } }
                                }
                                td.num {
                                    (d.applied_version)
                                    @if behind {
                                        " " span.badge.warn data-state="behind" title={ "The current version is " (current) } {
                                            (current - d.applied_version) " behind"
                                        }
                                    } @else {
                                        " " span.sub { "current" }
                                    }
                                }
                                td { span title=(d.last_seen.to_rfc3339()) { (ago(d.last_seen, now)) } }
                                td {
                                    @match &d.last_nack {
                                        Some(reason) => span.error-text { (reason) },
                                        None => span.sub { "None" },
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.hint { "A data plane behind the current version is still applying it, or keeps its last good configuration after rejecting a newer one (see its NACK). Disconnected data planes are listed for a while after they leave." }
        }
    };
    Ok(layout::page(&op, "Data Planes", Nav::DataPlanes, content))
}
