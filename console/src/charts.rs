//! Charts as server-rendered inline SVG: no chart script, no inline style (the content security
//! policy forbids both). Colours and strokes come from classes in `console.css`; geometry from
//! SVG attributes. Each chart is a `figure` with a stable id, an SVG with `role="img"`, a
//! `<title>` and a `<desc>` stating its numbers, a legend, and the same numbers as a table (in
//! a `details` element) for screen readers and for copying.

use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};

/// The SVG's coordinate system (it scales to the figure's width): about the width a chart
/// gets in the console's grid, so its text renders near its nominal size.
const WIDTH: f64 = 480.0;
/// Height of a per-minute chart's plot area.
const PLOT_HEIGHT: f64 = 160.0;
/// Room for the axis labels: left of the plot (values), below it (times).
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;
/// One row of a bar chart, and the width of its label column.
const ROW: f64 = 30.0;
const LABEL: f64 = 120.0;
/// Room right of the bars for the value.
const VALUE: f64 = 150.0;

/// One series of a per-minute chart: a value per minute of the window, oldest first.
pub(crate) struct Line<'a> {
    pub name: &'a str,
    /// The `console.css` class that colours it (`s-requests`, `s-errors`, `s-throttled`, …).
    pub class: &'static str,
    pub values: Vec<u64>,
}

/// A round number at or above `max` for the top of an axis (1, 2, 5 × 10ⁿ).
fn axis_top(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|top| *top >= max).unwrap_or(max)
}

fn fmt_num(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// `12:34` (UTC).
fn hhmm(t: DateTime<Utc>) -> String {
    t.format("%H:%M").to_string()
}

/// A line per series over the minutes from `from` (one point per minute), with a table of the
/// minutes that had any value.
pub(crate) fn per_minute(id: &str, title: &str, from: DateTime<Utc>, lines: &[Line<'_>]) -> Markup {
    let minutes = lines.iter().map(|l| l.values.len()).max().unwrap_or(0).max(2);
    let max = lines.iter().flat_map(|l| &l.values).copied().max().unwrap_or(0);
    let top = axis_top(max as f64);
    let plot_w = WIDTH - LEFT - 8.0;
    let x = |i: usize| LEFT + plot_w * i as f64 / (minutes - 1) as f64;
    let y = |v: u64| TOP + PLOT_HEIGHT * (1.0 - v as f64 / top);
    let height = TOP + PLOT_HEIGHT + BOTTOM;
    let totals: Vec<(&str, u64)> = lines.iter().map(|l| (l.name, l.values.iter().sum())).collect();
    let desc = totals.iter().map(|(n, t)| format!("{n}: {t}")).collect::<Vec<_>>().join(", ");
    let until = from + Duration::minutes(minutes as i64 - 1);
    let busy: Vec<usize> = (0..minutes)
        .filter(|i| lines.iter().any(|l| l.values.get(*i).is_some_and(|v| *v > 0)))
        .collect();
    html! {
        figure.chart id=(id) {
            figcaption { (title) }
            svg.chart-svg viewBox={ "0 0 " (WIDTH) " " (height) } role="img"
                aria-labelledby={ (id) "-title " (id) "-desc" } preserveAspectRatio="xMidYMid meet" {
                title id={ (id) "-title" } { (title) }
                desc id={ (id) "-desc" } { "Totals from " (hhmm(from)) " to " (hhmm(until)) " UTC: " (desc) "." }
                @for frac in [0.0, 0.5, 1.0] {
                    @let gy = TOP + PLOT_HEIGHT * (1.0 - frac);
                    line.grid x1=(LEFT) x2=(WIDTH - 8.0) y1=(gy) y2=(gy) stroke="#dfe3e8" stroke-width="1" {}
                    text.axis x=(LEFT - 6.0) y=(gy + 4.0) text-anchor="end" font-size="11" fill="#5f6b7a" { (fmt_num(top * frac)) }
                }
                text.axis x=(LEFT) y=(height - 6.0) font-size="11" fill="#5f6b7a" { (hhmm(from)) }
                text.axis x=(WIDTH - 8.0) y=(height - 6.0) text-anchor="end" font-size="11" fill="#5f6b7a" { (hhmm(until)) " UTC" }
                @for line in lines {
                    @let points = line.values.iter().enumerate()
                        .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
                        .collect::<Vec<_>>().join(" ");
                    polyline class={ "series " (line.class) } data-series=(line.name) points=(points)
                        fill="none" stroke-width="2" stroke-linejoin="round" {}
                    // Sparse traffic is a spike at most: a dot marks each minute with any.
                    @for (i, v) in line.values.iter().enumerate().filter(|(_, v)| **v > 0) {
                        circle class={ "dot " (line.class) } cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(*v))) r="2.5" {}
                    }
                }
            }
            ul.legend {
                @for (line, (_, total)) in lines.iter().zip(&totals) {
                    li { span class={ "swatch " (line.class) } aria-hidden="true" {} (line.name) " " strong { (total) } }
                }
            }
            details.chart-data {
                summary { "Data" }
                @if busy.is_empty() {
                    p.sub { "No traffic from " (hhmm(from)) " to " (hhmm(until)) " UTC." }
                } @else {
                    table {
                        thead { tr { th scope="col" { "Minute (UTC)" } @for l in lines { th.num scope="col" { (l.name) } } } }
                        tbody {
                            @for i in &busy {
                                tr {
                                    td { (hhmm(from + Duration::minutes(*i as i64))) }
                                    @for l in lines { td.num { (l.values.get(*i).copied().unwrap_or(0)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One column of a column chart: the window it counts (its start) and one value per part.
pub(crate) struct Column {
    pub at: DateTime<Utc>,
    pub values: Vec<u64>,
}

/// A limit drawn across a column chart as a dashed line, e.g. a key's total tokens per hour.
pub(crate) struct Limit {
    /// What is limited, e.g. "Total tokens".
    pub name: String,
    pub value: u64,
}

/// A limit stretches the scale to show its line only up to this many times the tallest column:
/// a key using 50 of its 1,000,000 tokens would otherwise be a chart of invisible columns.
/// Beyond it the limit is stated in the legend as above the scale.
const LIMIT_IN_VIEW: u64 = 10;

/// How a column's window reads: `10:05` per minute, `12-07 10:00` per hour or longer.
fn window_label(t: DateTime<Utc>, step: Duration) -> String {
    if step < Duration::hours(1) { hhmm(t) } else { t.format("%m-%d %H:%M").to_string() }
}

/// Each part's (bottom, top) in a column stacked from the axis up, in the order of the parts.
fn stack(values: &[u64]) -> Vec<(u64, u64)> {
    let mut base = 0u64;
    values
        .iter()
        .map(|v| {
            let part = (base, base.saturating_add(*v));
            base = part.1;
            part
        })
        .collect()
}

/// Columns over consecutive windows `step` long (oldest first, every window present, zeros
/// included), each stacked from `parts` (name, `console.css` class), with `limits` as dashed
/// lines; a table of the windows with any value.
pub(crate) fn columns(
    id: &str,
    title: &str,
    parts: &[(&str, &'static str)],
    step: Duration,
    columns: &[Column],
    limits: &[Limit],
) -> Markup {
    let n = columns.len().max(1);
    let total = |c: &Column| c.values.iter().sum::<u64>();
    let peak = columns.iter().map(total).max().unwrap_or(0);
    let (drawn, above): (Vec<&Limit>, Vec<&Limit>) =
        limits.iter().partition(|l| peak == 0 || l.value <= peak.saturating_mul(LIMIT_IN_VIEW));
    let top = axis_top(drawn.iter().map(|l| l.value).fold(peak, u64::max) as f64);
    let plot_w = WIDTH - LEFT - 8.0;
    let slot = plot_w / n as f64;
    // A gap between columns of a fifth of their slot, at least half a unit.
    let bar_w = (slot * 0.8).min(slot - 0.5).max(0.5);
    let y = |v: u64| TOP + PLOT_HEIGHT * (1.0 - v as f64 / top);
    let height = TOP + PLOT_HEIGHT + BOTTOM;
    let (first, last) = match (columns.first(), columns.last()) {
        (Some(f), Some(l)) => (f.at, l.at),
        _ => (Utc::now(), Utc::now()),
    };
    let period = if step < Duration::hours(1) { "Minute" } else { "Hour" };
    let totals: Vec<u64> =
        (0..parts.len()).map(|p| columns.iter().filter_map(|c| c.values.get(p)).sum()).collect();
    let mut desc = format!(
        "Totals from {} to {} UTC: {}; the most in one {}: {peak}",
        window_label(first, step),
        window_label(last, step),
        parts
            .iter()
            .zip(&totals)
            .map(|((n, _), t)| format!("{n}: {t}"))
            .collect::<Vec<_>>()
            .join(", "),
        period.to_lowercase(),
    );
    for l in limits {
        desc.push_str(&format!("; limit, {}: {}", l.name, l.value));
    }
    let busy: Vec<&Column> = columns.iter().filter(|c| total(c) > 0).collect();
    html! {
        figure.chart id=(id) {
            figcaption { (title) }
            svg.chart-svg viewBox={ "0 0 " (WIDTH) " " (height) } role="img"
                aria-labelledby={ (id) "-title " (id) "-desc" } preserveAspectRatio="xMidYMid meet" {
                title id={ (id) "-title" } { (title) }
                desc id={ (id) "-desc" } { (desc) "." }
                @for frac in [0.0, 0.5, 1.0] {
                    @let gy = TOP + PLOT_HEIGHT * (1.0 - frac);
                    line.grid x1=(LEFT) x2=(WIDTH - 8.0) y1=(gy) y2=(gy) stroke="#dfe3e8" stroke-width="1" {}
                    text.axis x=(LEFT - 6.0) y=(gy + 4.0) text-anchor="end" font-size="11" fill="#5f6b7a" { (fmt_num(top * frac)) }
                }
                text.axis x=(LEFT) y=(height - 6.0) font-size="11" fill="#5f6b7a" { (window_label(first, step)) }
                text.axis x=(WIDTH - 8.0) y=(height - 6.0) text-anchor="end" font-size="11" fill="#5f6b7a" { (window_label(last, step)) " UTC" }
                @for (i, column) in columns.iter().enumerate().filter(|(_, c)| total(c) > 0) {
                    @let x = LEFT + slot * i as f64 + (slot - bar_w) / 2.0;
                    g.column data-at=(column.at.to_rfc3339()) {
                        title {
                            (window_label(column.at, step)) " UTC: "
                            (parts.iter().zip(&column.values).map(|((n, _), v)| format!("{v} {n}")).collect::<Vec<_>>().join(", "))
                        }
                        @for ((name, class), (bottom, top)) in parts.iter().zip(stack(&column.values)).filter(|(_, (b, t))| t > b) {
                            rect class={ "bar " (class) } data-part=(name) x=(format!("{x:.1}")) y=(format!("{:.1}", y(top)))
                                width=(format!("{bar_w:.1}")) height=(format!("{:.1}", y(bottom) - y(top))) {}
                        }
                    }
                }
                @for l in &drawn {
                    @let ly = y(l.value);
                    line.limit data-limit=(l.name) x1=(LEFT) x2=(WIDTH - 8.0) y1=(format!("{ly:.1}")) y2=(format!("{ly:.1}"))
                        stroke-width="1.5" stroke-dasharray="5 4" {}
                    text.limit-label x=(WIDTH - 10.0) y=(format!("{:.1}", (ly - 4.0).max(TOP + 9.0))) text-anchor="end" font-size="11" {
                        "limit " (l.name.to_lowercase()) " " (fmt_num(l.value as f64))
                    }
                }
            }
            ul.legend {
                @for ((name, class), t) in parts.iter().zip(&totals) {
                    li { span class={ "swatch " (class) } aria-hidden="true" {} (name) " " strong { (t) } }
                }
                @for l in &drawn {
                    li { span.swatch.limit aria-hidden="true" {} "Limit, " (l.name.to_lowercase()) " " strong { (l.value) } }
                }
                @for l in &above {
                    li.limit-above { "Limit, " (l.name.to_lowercase()) " " strong { (l.value) } " (above the scale)" }
                }
            }
            details.chart-data {
                summary { "Data" }
                @if busy.is_empty() {
                    p.sub { "Nothing from " (window_label(first, step)) " to " (window_label(last, step)) " UTC." }
                } @else {
                    table {
                        thead {
                            tr {
                                th scope="col" { (period) " (UTC)" }
                                @for (n, _) in parts { th.num scope="col" { (n) } }
                                @if parts.len() > 1 { th.num scope="col" { "Total" } }
                            }
                        }
                        tbody {
                            @for c in &busy {
                                tr {
                                    td { (window_label(c.at, step)) }
                                    @for v in &c.values { td.num { (v) } }
                                    @if parts.len() > 1 { td.num { (total(c)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One row of a stacked bar chart: a label and one value per part.
pub(crate) struct Bar {
    pub label: String,
    pub values: Vec<u64>,
}

/// Where each part of a stacked bar starts and how wide it is, at `scale` units per count.
fn segments<'a>(
    parts: &[(&'a str, &'static str)],
    values: &[u64],
    scale: f64,
) -> Vec<(&'a str, &'static str, f64, f64)> {
    let mut start = LABEL;
    parts
        .iter()
        .zip(values)
        .map(|((name, class), v)| {
            let w = scale * *v as f64;
            let segment = (*name, *class, start, w);
            start += w;
            segment
        })
        .collect()
}

/// Horizontal bars, each stacked from `parts` (name, `console.css` class), on one scale.
pub(crate) fn stacked_bars(
    id: &str,
    title: &str,
    parts: &[(&str, &'static str)],
    rows: &[Bar],
) -> Markup {
    let max = rows.iter().map(|r| r.values.iter().sum::<u64>()).max().unwrap_or(0).max(1);
    let bar_w = WIDTH - LABEL - VALUE;
    let height = (rows.len().max(1) as f64) * ROW + 4.0;
    let desc = rows
        .iter()
        .map(|r| {
            let values: Vec<String> =
                parts.iter().zip(&r.values).map(|((n, _), v)| format!("{v} {n}")).collect();
            format!("{}: {}", r.label, values.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        figure.chart id=(id) {
            figcaption { (title) }
            svg.chart-svg viewBox={ "0 0 " (WIDTH) " " (height) } role="img"
                aria-labelledby={ (id) "-title " (id) "-desc" } preserveAspectRatio="xMidYMid meet" {
                title id={ (id) "-title" } { (title) }
                desc id={ (id) "-desc" } { @if rows.is_empty() { "Nothing to show." } @else { (desc) "." } }
                @for (i, row) in rows.iter().enumerate() {
                    @let top = i as f64 * ROW + 4.0;
                    text.label x=(LABEL - 8.0) y=(top + 15.0) text-anchor="end" font-size="12" fill="#1c2430" { (row.label) }
                    @let segments = segments(parts, &row.values, bar_w / max as f64);
                    @for (name, class, start, w) in &segments {
                        rect class={ "bar " (class) } data-part=(name) x=(format!("{start:.1}")) y=(top) width=(format!("{w:.1}")) height=(ROW - 10.0) {}
                    }
                    @let end = segments.last().map_or(LABEL, |(_, _, start, w)| start + w);
                    text.value x=(format!("{:.1}", end + 6.0)) y=(top + 15.0) font-size="12" fill="#5f6b7a" {
                        (row.values.iter().sum::<u64>())
                    }
                }
            }
            ul.legend {
                @for (name, class) in parts {
                    li { span class={ "swatch " (class) } aria-hidden="true" {} (name) }
                }
            }
            details.chart-data {
                summary { "Data" }
                table {
                    thead { tr { th scope="col" { "" } @for (n, _) in parts { th.num scope="col" { (n) } } th.num scope="col" { "Total" } } }
                    tbody {
                        @for row in rows {
                            tr {
                                th scope="row" { (row.label) }
                                @for v in &row.values { td.num { (v) } }
                                td.num { (row.values.iter().sum::<u64>()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One row of a quantile chart.
pub(crate) struct Quantiles {
    pub label: String,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    /// Observations behind the quantiles.
    pub samples: u64,
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.0} ms"))
}

/// A p95 bar with the p50 bar over it, per row, on one scale.
pub(crate) fn quantile_bars(id: &str, title: &str, rows: &[Quantiles]) -> Markup {
    let max = rows.iter().filter_map(|r| r.p95_ms.or(r.p50_ms)).fold(0.0, f64::max);
    let top = axis_top(max);
    let bar_w = WIDTH - LABEL - VALUE;
    let height = (rows.len().max(1) as f64) * ROW + 4.0;
    let desc = rows
        .iter()
        .map(|r| match (r.p50_ms, r.p95_ms) {
            (Some(_), _) | (_, Some(_)) => {
                format!(
                    "{}: p50 {}, p95 {} ({} samples)",
                    r.label,
                    ms(r.p50_ms),
                    ms(r.p95_ms),
                    r.samples
                )
            }
            _ => format!("{}: no samples", r.label),
        })
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        figure.chart id=(id) {
            figcaption { (title) }
            svg.chart-svg viewBox={ "0 0 " (WIDTH) " " (height) } role="img"
                aria-labelledby={ (id) "-title " (id) "-desc" } preserveAspectRatio="xMidYMid meet" {
                title id={ (id) "-title" } { (title) }
                desc id={ (id) "-desc" } { @if rows.is_empty() { "Nothing to show." } @else { (desc) "." } }
                @for (i, row) in rows.iter().enumerate() {
                    @let y = i as f64 * ROW + 4.0;
                    text.label x=(LABEL - 8.0) y=(y + 15.0) text-anchor="end" font-size="12" fill="#1c2430" { (row.label) }
                    @if let Some(p95) = row.p95_ms {
                        rect class="bar q-p95" data-part="p95" x=(LABEL) y=(y) width=(format!("{:.1}", bar_w * p95 / top)) height=(ROW - 10.0) {}
                    }
                    @if let Some(p50) = row.p50_ms {
                        rect class="bar q-p50" data-part="p50" x=(LABEL) y=(y + 4.0) width=(format!("{:.1}", bar_w * p50 / top)) height=(ROW - 18.0) {}
                    }
                    text.value x=(LABEL + bar_w + 6.0) y=(y + 15.0) font-size="12" fill="#5f6b7a" {
                        @if row.samples == 0 { "no streams" } @else {
                            "p50 " (row.p50_ms.map_or("–".to_owned(), |v| format!("{v:.0}"))) " · p95 " (ms(row.p95_ms))
                        }
                    }
                }
            }
            ul.legend {
                li { span class="swatch q-p50" aria-hidden="true" {} "p50" }
                li { span class="swatch q-p95" aria-hidden="true" {} "p95" }
            }
            details.chart-data {
                summary { "Data" }
                table {
                    thead { tr { th scope="col" { "" } th.num scope="col" { "p50" } th.num scope="col" { "p95" } th.num scope="col" { "Samples" } } }
                    tbody {
                        @for row in rows {
                            tr {
                                th scope="row" { (row.label) }
                                td.num { (ms(row.p50_ms)) }
                                td.num { (ms(row.p95_ms)) }
                                td.num { (row.samples) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(axis_top(0.0), 1.0);
        assert_eq!(axis_top(7.0), 10.0);
        assert_eq!(axis_top(12.0), 20.0);
        assert_eq!(axis_top(300.0), 500.0);
        assert_eq!(axis_top(1000.0), 1000.0);
    }

    #[test]
    fn a_per_minute_chart_plots_each_value_and_tabulates_busy_minutes() {
        let from = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z").unwrap().to_utc();
        let mut requests = vec![0; 60];
        requests[59] = 10;
        let html = per_minute(
            "c",
            "Requests",
            from,
            &[Line { name: "Requests", class: "s-requests", values: requests }],
        )
        .into_string();
        assert!(html.contains("points=\"48.0,168.0"), "the first minute at zero: {html}");
        assert!(html.contains("472.0,8.0\""), "the last at the top of a 10 axis: {html}");
        assert!(html.contains("<td>10:59</td><td class=\"num\">10</td>"), "{html}");
        assert!(!html.contains("style="), "no inline style (CSP)");
        assert!(html.contains("<title id=\"c-title\">Requests</title>"));
    }

    #[test]
    fn columns_stack_their_parts_and_draw_the_limits_in_view() {
        let from = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z").unwrap().to_utc();
        let mut cols: Vec<Column> = (0..4)
            .map(|i| Column { at: from + Duration::minutes(i), values: vec![0, 0] })
            .collect();
        cols[1].values = vec![60, 20];
        cols[3].values = vec![10, 0];
        let limits = [
            Limit { name: "Total tokens".into(), value: 100 },
            Limit { name: "Prompt tokens".into(), value: 5_000 },
        ];
        let parts = [("Prompt", "s-prompt"), ("Completion", "s-completion")];
        let html =
            columns("c", "Tokens", &parts, Duration::minutes(1), &cols, &limits).into_string();
        // The axis ends at the drawn limit, 100: a slot of 106 units per column, 80 % of it wide.
        assert!(
            html.contains(r#"data-part="Prompt" x="164.6" y="72.0" width="84.8" height="96.0""#),
            "{html}"
        );
        assert!(
            html.contains(
                r#"data-part="Completion" x="164.6" y="40.0" width="84.8" height="32.0""#
            ),
            "stacked on the prompt part: {html}"
        );
        assert_eq!(html.matches("data-part=\"Completion\"").count(), 1, "no empty parts");
        assert!(html.contains(r#"data-limit="Total tokens" x1="48" x2="472" y1="8.0""#), "{html}");
        assert!(!html.contains(r#"data-limit="Prompt tokens""#), "5,000 is off the scale");
        assert!(html.contains("prompt tokens <strong>5000</strong> (above the scale)"), "{html}");
        assert!(html.contains("<td>10:01</td><td class=\"num\">60</td><td class=\"num\">20</td><td class=\"num\">80</td>"));
        assert!(html.contains("<td>10:03</td><td class=\"num\">10</td>"));
        assert!(!html.contains("<td>10:00</td>"), "only windows with a value are tabulated");
        assert!(html.contains("Prompt: 70, Completion: 20; the most in one minute: 80"), "{html}");
        assert!(!html.contains("style="), "no inline style (CSP)");
    }
}
