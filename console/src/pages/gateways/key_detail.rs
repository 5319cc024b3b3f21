//! A gateway key's page (`/gateways/{id}/keys/{key_id}`): its details (state, parent, the keys
//! under it, expiry, last use, limits), its usage in the current minute, hour and day against
//! its limits, and its usage over time — tokens (prompt and completion) and requests per hour
//! over the last 24 hours and per minute over the last hour, with the window's limits drawn
//! across the charts. Everything comes from `GET …/keys` and `GET …/keys/{key_id}/usage` (the
//! stored per-window counters data planes report), so the numbers are the fleet's, the key's
//! subtree included, from the last reset.

use axum::extract::{Path, Query};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use maud::{Markup, html};
use modelgw_admin_api::identity::Role;
use serde::Deserialize;

use super::keys::{
    KeyLimitsView, UsageView, WindowLimitsView, limits_summary, state_badge, thousands,
};
use super::{KeyView, path_uuid};
use crate::charts::{self, Column, Limit};
use crate::error::ConsoleError;
use crate::layout::{self, Nav};
use crate::operator::Operator;
use crate::pages::endpoints::urlencode;
use crate::pages::stats::TOKEN_PARTS;
use crate::pages::{GatewayView, ago};

/// Hours the hourly charts show (the current one included).
const HOURS: i32 = 24;
/// Minutes the per-minute charts show (the current one included), as on the gateway's page.
const MINUTES: i32 = 60;

/// `GET /api/v1/gateways/{id}/keys/{key_id}/usage`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct KeyUsageView {
    pub rows: Vec<UsageRowView>,
    pub current: CurrentWindowView,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct UsageRowView {
    pub window_start: DateTime<Utc>,
    #[serde(flatten)]
    pub usage: UsageView,
}

/// The window holding now, against the key's limits.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct CurrentWindowView {
    pub window_start: DateTime<Utc>,
    pub resets_at: DateTime<Utc>,
    pub used: UsageView,
    #[serde(default)]
    pub limit: WindowLimitsView,
    #[serde(default)]
    pub remaining: WindowLimitsView,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct KeyPageQuery {
    /// Set after a reset from this page (for the notice).
    #[serde(default)]
    reset: Option<u8>,
}

/// A window kind as the page uses it: the API's name, its length, and how it reads.
#[derive(Clone, Copy)]
struct Span {
    window: &'static str,
    len: Duration,
    this: &'static str,
    /// The key's limits in windows of this kind.
    limits: fn(&KeyLimitsView) -> &WindowLimitsView,
}

const MINUTE: Span = Span {
    window: "minute",
    len: Duration::minutes(1),
    this: "This minute",
    limits: |l| &l.per_minute,
};
const HOUR: Span =
    Span { window: "hour", len: Duration::hours(1), this: "This hour", limits: |l| &l.per_hour };
const DAY: Span =
    Span { window: "day", len: Duration::days(1), this: "Today", limits: |l| &l.per_day };

impl Span {
    /// The start of the window holding `t`.
    fn start_of(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let len = self.len.num_milliseconds();
        let ms = t.timestamp_millis();
        DateTime::from_timestamp_millis(ms - ms.rem_euclid(len)).unwrap_or(t)
    }

    /// The usage path for the windows from the one `back` windows before `now`'s, to now.
    fn usage_path(self, gateway_id: &str, key_id: &str, now: DateTime<Utc>, back: i32) -> String {
        let from = self.start_of(now) - self.len * back;
        format!(
            "/api/v1/gateways/{gateway_id}/keys/{key_id}/usage?window={}&from={}",
            self.window,
            urlencode(&from.to_rfc3339_opts(SecondsFormat::Secs, true))
        )
    }
}

/// `count` consecutive windows ending with the API's current one, each with its usage (zero
/// where the API lists none).
fn windows(usage: &KeyUsageView, span: Span, count: i32) -> Vec<(DateTime<Utc>, UsageView)> {
    let first = usage.current.window_start - span.len * (count - 1);
    let mut out: Vec<(DateTime<Utc>, UsageView)> =
        (0..count).map(|i| (first + span.len * i, UsageView::default())).collect();
    for row in &usage.rows {
        let i = (row.window_start - first).num_milliseconds() / span.len.num_milliseconds();
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i))
            && slot.0 == row.window_start
        {
            slot.1 = row.usage;
        }
    }
    out
}

/// Tokens (stacked prompt and completion) and requests per window, with the window's limits:
/// total and prompt tokens are drawn on the tokens chart (a prompt limit compares with the
/// lower, prompt part of each column); a completion-token limit is stated with the current
/// usage, not drawn.
fn usage_charts(
    what: &str,
    span: Span,
    windows: &[(DateTime<Utc>, UsageView)],
    limits: &KeyLimitsView,
) -> Markup {
    let limit = (span.limits)(limits);
    let tokens: Vec<Column> = windows
        .iter()
        .map(|(at, u)| Column { at: *at, values: vec![u.prompt_tokens, u.completion_tokens] })
        .collect();
    let requests: Vec<Column> =
        windows.iter().map(|(at, u)| Column { at: *at, values: vec![u.requests] }).collect();
    let mut token_limits = Vec::new();
    if let Some(v) = limit.total_tokens {
        token_limits.push(Limit { name: "Total tokens".to_owned(), value: v });
    }
    if let Some(v) = limit.prompt_tokens {
        token_limits.push(Limit { name: "Prompt tokens".to_owned(), value: v });
    }
    let request_limits: Vec<Limit> = limit
        .requests
        .map(|v| Limit { name: "Requests".to_owned(), value: v })
        .into_iter()
        .collect();
    html! {
        div.charts {
            (charts::columns(&format!("key-tokens-{what}"), &format!("Tokens per {what}"), &TOKEN_PARTS, span.len, &tokens, &token_limits))
            (charts::columns(&format!("key-requests-{what}"), &format!("Requests per {what}"), &[("Requests", "s-requests")], span.len, &requests, &request_limits))
        }
    }
}

/// One cell of the usage-now table: the amount used, and against a limit what is left.
fn used_cell(used: u64, limit: Option<u64>, remaining: Option<u64>) -> Markup {
    html! {
        td.num {
            (thousands(used))
            @if let Some(limit) = limit {
                span.sub { "of " (thousands(limit)) ", " (thousands(remaining.unwrap_or(0))) " left" }
            }
        }
    }
}

/// `GET /gateways/{id}/keys/{key_id}`.
pub(super) async fn page(
    op: Operator,
    Path((id, key_id)): Path<(String, String)>,
    Query(q): Query<KeyPageQuery>,
) -> Result<Markup, ConsoleError> {
    let gateway_id = path_uuid(&id, "gateway")?;
    let key_id = path_uuid(&key_id, "gateway key")?;
    let now = Utc::now();
    let (gateway_path, keys_path) =
        (format!("/api/v1/gateways/{gateway_id}"), format!("/api/v1/gateways/{gateway_id}/keys"));
    let (minute_path, hour_path, day_path) = (
        MINUTE.usage_path(&gateway_id, &key_id, now, MINUTES - 1),
        HOUR.usage_path(&gateway_id, &key_id, now, HOURS - 1),
        DAY.usage_path(&gateway_id, &key_id, now, 0),
    );
    // The usage calls answer 404 for a key that is not this gateway's.
    let (gateway, keys, per_minute, per_hour, today) = tokio::try_join!(
        op.api.get::<GatewayView>(&gateway_path),
        op.api.get::<Vec<KeyView>>(&keys_path),
        op.api.get::<KeyUsageView>(&minute_path),
        op.api.get::<KeyUsageView>(&hour_path),
        op.api.get::<KeyUsageView>(&day_path),
    )?;
    let Some(key) = keys.iter().find(|k| k.id == key_id) else {
        return Err(ConsoleError::NotFound(Box::new(crate::api::Problem {
            title: "Not found".to_owned(),
            status: 404,
            detail: "There is no gateway key with this id.".to_owned(),
            ..crate::api::Problem::default()
        })));
    };
    let parent = key.parent_id.as_deref().and_then(|p| keys.iter().find(|k| k.id == p));
    let mut children: Vec<&KeyView> =
        keys.iter().filter(|k| k.parent_id.as_deref() == Some(key.id.as_str())).collect();
    children
        .sort_by(|a, b| (a.revoked_at.is_some(), &a.name).cmp(&(b.revoked_at.is_some(), &b.name)));
    let key_href = |k: &KeyView| format!("/gateways/{}/keys/{}", gateway.id, k.id);
    let limits = limits_summary(&key.limits);
    let can_change = op.can(Role::Operator);
    let hours = windows(&per_hour, HOUR, HOURS);
    let minutes = windows(&per_minute, MINUTE, MINUTES);
    let now_rows =
        [(MINUTE, &per_minute.current), (HOUR, &per_hour.current), (DAY, &today.current)];
    let content = html! {
        div.page-head {
            div {
                p.crumbs {
                    a href="/gateways" { "Gateways" } " / "
                    a href={ "/gateways/" (gateway.id) "#h-keys" } { (gateway.name) } " /"
                }
                h1 { "Key " (key.name) }
                p { (state_badge(key, now)) " " span.mono { (key.hint) } }
            }
            @if can_change {
                div.actions {
                    form.inline method="post" action={ "/gateways/" (gateway.id) "/keys/" (key.id) "/reset-usage" }
                        data-confirm={ "Reset the usage counters of key " (key.name) "? Its usage in the current minute, hour and day counts from zero again." } {
                        (layout::csrf_field(&op))
                        input type="hidden" name="back" value="key";
                        button.secondary #reset-usage type="submit" { "Reset usage" }
                    }
                }
            }
        }
        @if q.reset.is_some() {
            div.success role="status" { "Usage reset: the key's counters start from zero for the current minute, hour and day." }
        }

        section.panel aria-labelledby="h-key" {
            h2 #h-key { "Key" }
            dl.facts #key-facts {
                dt { "Key" } dd.mono { (key.hint) }
                dt { "Parent" }
                dd #key-parent {
                    @match (parent, key.parent_id.as_deref()) {
                        (Some(p), _) => a href=(key_href(p)) { (p.name) },
                        (None, Some(id)) => span.mono { (id) },
                        (None, None) => span.sub { "None (a root key)" },
                    }
                }
                dt { "Keys under it" }
                dd #key-children {
                    @if children.is_empty() { span.sub { "None" } }
                    @for (i, c) in children.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href=(key_href(c)) { (c.name) }
                        @if c.revoked_at.is_some() { " " span.sub { "(revoked)" } }
                    }
                }
                dt { "Created" } dd { time datetime=(key.created_at.to_rfc3339()) { (ago(key.created_at, now)) } }
                dt { "Expires" }
                dd #key-expires {
                    @match key.expires_at {
                        Some(at) => time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M UTC")) },
                        None => span.sub { "Never" },
                    }
                }
                dt { "Last used" }
                dd #key-last-used {
                    @match key.last_used_at {
                        Some(at) => time datetime=(at.to_rfc3339()) title=(at.to_rfc3339()) { (ago(at, now)) },
                        None => span.sub { "Never" },
                    }
                }
                dt { "Requests" }
                dd { a #key-traces href={ "/traces?gateway_id=" (gateway.id) "&key_id=" (key.id) } { "This key's request traces" } " " span.sub { "(when the gateway records traces)" } }
                dt { "Limits" }
                dd #key-limits-summary {
                    @if limits.is_empty() { span.sub { "None" } }
                    @for l in &limits { div { (l) } }
                }
            }
        }

        section aria-labelledby="h-usage-now" {
            h2 #h-usage-now { "Usage now" }
            p.sub {
                "This key's requests and every key's under it, as the data planes report them (every few seconds): "
                "requests still in flight count with their reservation, and counting starts again at a reset. "
                "A limit applies to the same numbers."
            }
            div.table-wrap {
                table.usage-now #usage-now {
                    thead {
                        tr {
                            th scope="col" { "Window (UTC)" }
                            th.num scope="col" { "Requests" }
                            th.num scope="col" { "Prompt tokens" }
                            th.num scope="col" { "Completion tokens" }
                            th.num scope="col" { "Total tokens" }
                            th scope="col" { "Resets" }
                        }
                    }
                    tbody {
                        @for (w, current) in now_rows {
                            @let limit = &current.limit;
                            tr data-window=(w.window) {
                                th scope="row" { (w.this) }
                                (used_cell(current.used.requests, limit.requests, current.remaining.requests))
                                (used_cell(current.used.prompt_tokens, limit.prompt_tokens, current.remaining.prompt_tokens))
                                (used_cell(current.used.completion_tokens, limit.completion_tokens, current.remaining.completion_tokens))
                                (used_cell(current.used.total_tokens, limit.total_tokens, current.remaining.total_tokens))
                                td { time datetime=(current.resets_at.to_rfc3339()) { (current.resets_at.format("%H:%M")) } }
                            }
                        }
                    }
                }
            }
        }

        section.stats aria-labelledby="h-usage-hours" {
            h2 #h-usage-hours { "Last 24 hours" }
            (usage_charts("hour", HOUR, &hours, &key.limits))
        }
        section.stats aria-labelledby="h-usage-minutes" {
            h2 #h-usage-minutes { "Last hour" }
            (usage_charts("minute", MINUTE, &minutes, &key.limits))
        }
    };
    Ok(layout::page(&op, &format!("Key {}", key.name), Nav::Gateways, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn rows_land_in_their_window_and_the_rest_are_zero() {
        let usage = KeyUsageView {
            rows: vec![
                UsageRowView {
                    window_start: at("2026-12-07T08:00:00Z"),
                    usage: UsageView {
                        requests: 2,
                        prompt_tokens: 20,
                        completion_tokens: 5,
                        total_tokens: 25,
                    },
                },
                // Older than the span: left out.
                UsageRowView {
                    window_start: at("2026-12-06T09:00:00Z"),
                    usage: UsageView { requests: 9, ..UsageView::default() },
                },
            ],
            current: CurrentWindowView {
                window_start: at("2026-12-07T10:00:00Z"),
                resets_at: at("2026-12-07T11:00:00Z"),
                used: UsageView::default(),
                limit: WindowLimitsView::default(),
                remaining: WindowLimitsView::default(),
            },
        };
        let w = windows(&usage, HOUR, 24);
        assert_eq!(w.len(), 24);
        assert_eq!(w[0].0, at("2026-12-06T11:00:00Z"));
        assert_eq!(w[23].0, at("2026-12-07T10:00:00Z"));
        assert_eq!(w[21].0, at("2026-12-07T08:00:00Z"));
        assert_eq!(w[21].1.total_tokens, 25);
        assert_eq!(w.iter().map(|(_, u)| u.requests).sum::<u64>(), 2);
        assert_eq!(HOUR.start_of(at("2026-12-07T10:59:59Z")), at("2026-12-07T10:00:00Z"));
        assert!(
            MINUTE
                .usage_path("g", "k", at("2026-12-07T10:30:42Z"), 59)
                .ends_with("window=minute&from=2026-12-07T09%3A31%3A00Z")
        );
    }
}
