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
}
