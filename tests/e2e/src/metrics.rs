//! Prometheus metrics as the scenarios see them: a scrape of a process's `/metrics`, parsed
//! with a Prometheus text-format parser (`prometheus-parse`), and the metric selectors of a
//! PromQL expression, found by a PromQL parser (`promql-parser`) — what a dashboard's queries
//! need from a scrape.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};

/// The content type both processes answer a scrape with.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One scrape of a `/metrics` endpoint.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// The exposition as served.
    pub text: String,
    samples: Vec<prometheus_parse::Sample>,
}

impl Scrape {
    /// `GET url`; fails unless it answers 200 with OpenMetrics text that parses.
    pub async fn get(url: &str) -> anyhow::Result<Scrape> {
        let response = reqwest::get(url).await.with_context(|| format!("scraping {url}"))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{url}: {status}: {text}");
        }
        if content_type != OPENMETRICS_CONTENT_TYPE {
            bail!("{url}: content type {content_type:?}, not OpenMetrics text");
        }
        Scrape::parse(text)
    }

    /// Parses an exposition (Prometheus or OpenMetrics text).
    pub fn parse(text: String) -> anyhow::Result<Scrape> {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).context("parsing the exposition")?;
        Ok(Scrape { text, samples: parsed.samples })
    }

    /// Every series name a PromQL selector can name in this scrape (a counter's `_total`, a
    /// histogram's `_bucket`, `_sum` and `_count`), with the label names its samples carry
    /// (`le` aside).
    pub fn series(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for sample in &self.samples {
            let name = match sample.value {
                // The parser folds `x_bucket` lines into one histogram sample named `x`.
                prometheus_parse::Value::Histogram(_) => format!("{}_bucket", sample.metric),
                _ => sample.metric.clone(),
            };
            series.entry(name).or_default().extend(sample.labels.keys().cloned());
        }
        series
    }

    /// The sum of the values of `name`'s samples whose labels include all of `labels`
    /// (`None` when there is none). Counters as `x_total`; histograms as `x_count`/`x_sum`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for sample in self.samples.iter().filter(|s| s.metric == name) {
            if !labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v)) {
                continue;
            }
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            *found.get_or_insert(0.0) += value;
        }
        found
    }
}

/// A metric selector in a PromQL expression: the metric's name and the labels it filters on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    /// Label names of its matchers (`__name__` aside), with the value each matches.
    pub matchers: Vec<(String, String)>,
}

/// The metric selectors of `expr`, parsed as PromQL. Grafana's variables are replaced first:
/// the interval ones (`$__rate_interval`, `$__interval`, `$__range`) by a duration, every other
/// `$name` / `${name}` by `.*` (they are used inside regex matchers).
pub fn promql_selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let expr = substitute_variables(expr);
    let ast = promql_parser::parser::parse(&expr).map_err(|e| format!("{expr}: {e}"))?;
    struct Collect(Vec<Selector>);
    impl ExprVisitor for Collect {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            let vs: &VectorSelector = match expr {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(ms) => &ms.vs,
                _ => return Ok(true),
            };
            let matchers = &vs.matchers.matchers;
            let name = vs
                .name
                .clone()
                .or_else(|| matchers.iter().find(|m| m.name == "__name__").map(|m| m.value.clone()))
                .ok_or_else(|| "a selector without a metric name".to_owned())?;
            self.0.push(Selector {
                metric: name,
                matchers: matchers
                    .iter()
                    .filter(|m| m.name != "__name__")
                    .map(|m| (m.name.clone(), m.value.clone()))
                    .collect(),
            });
            Ok(true)
        }
    }
    let mut collect = Collect(Vec::new());
    walk_expr(&mut collect, &ast)?;
    Ok(collect.0)
}

fn substitute_variables(expr: &str) -> String {
    let mut out = expr.to_owned();
    for interval in ["$__rate_interval", "$__interval", "$__range"] {
        out = out.replace(interval, "5m");
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find('$') {
        result.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = if let Some(braced) = after.strip_prefix('{') {
            braced.find('}').map_or(after.len(), |i| i + 2)
        } else {
            after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len())
        };
        result.push_str(".*");
        rest = &after[end..];
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_found_through_functions_aggregations_and_variables() {
        let selectors = promql_selectors(
            r#"histogram_quantile(0.95, sum by (le, region) (rate(x_seconds_bucket{gateway=~"$gateway"}[$__rate_interval]))) / on() group_left count(up{job="${job}"}) or vector(0)"#,
        )
        .unwrap();
        assert_eq!(
            selectors,
            [
                Selector {
                    metric: "x_seconds_bucket".into(),
                    matchers: vec![("gateway".into(), ".*".into())]
                },
                Selector { metric: "up".into(), matchers: vec![("job".into(), ".*".into())] },
            ]
        );
        assert!(promql_selectors("sum(rate(x[5m])").is_err(), "unbalanced parentheses");
    }

    #[test]
    fn a_scrape_names_series_as_promql_selects_them() {
        let scrape = Scrape::parse(
            "# TYPE c counter\nc_total{a=\"1\"} 2\nc_total{a=\"2\"} 3\n# TYPE h histogram\n\
             h_bucket{g=\"x\",le=\"1.0\"} 1\nh_bucket{g=\"x\",le=\"+Inf\"} 1\nh_sum{g=\"x\"} 0.5\n\
             h_count{g=\"x\"} 1\n# EOF\n"
                .to_owned(),
        )
        .unwrap();
        let series = scrape.series();
        let names: Vec<&str> = series.keys().map(String::as_str).collect();
        assert_eq!(names, ["c_total", "h_bucket", "h_count", "h_sum"]);
        assert!(series["h_bucket"].contains("g") && !series["h_bucket"].contains("le"));
        assert_eq!(scrape.value("c_total", &[]), Some(5.0));
        assert_eq!(scrape.value("c_total", &[("a", "2")]), Some(3.0));
        assert_eq!(scrape.value("h_count", &[("g", "x")]), Some(1.0));
        assert_eq!(scrape.value("missing", &[]), None);
    }
}
