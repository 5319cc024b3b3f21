//! Issue 13, the control plane's metrics and the Grafana dashboard, across real processes:
//! the control plane's `/metrics` follows a configuration change to the data planes (version,
//! connected data planes, propagation), and every query of `deploy/grafana/` names a series
//! that a scrape of the control plane or a data plane holds after a little traffic, filtered
//! only by labels that series has. The dashboard's shape (ids, gridPos, datasources,
//! variables) is checked here too; its schema by `tests/grafana/run.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use modelgw_e2e::metrics::{Scrape, Selector, promql_selectors};
use modelgw_e2e::{API_VERSION, Cluster, Fault, chat, spawn};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");
const DASHBOARD: &str = include_str!("../../../deploy/grafana/modelgw-dashboard.json");
/// Bound for what follows a request or a change within a report or two.
const WITHIN: Duration = Duration::from_secs(10);
/// Grafana's dashboard grid is 24 columns wide.
const GRID_COLUMNS: u64 = 24;

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("the dashboard is JSON")
}

/// Every panel, rows' collapsed children included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Every PromQL expression of every panel, with the panel's title.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            exprs.push((panel["title"].as_str().unwrap_or("").to_owned(), expr.to_owned()));
        }
    }
    exprs
}

#[test]
fn the_dashboard_has_unique_ids_a_datasource_everywhere_and_panels_that_fit_the_grid() {
    let dashboard = dashboard();
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));

    // The variables: a Prometheus datasource, and gateways from the data planes' metric.
    let variables = dashboard["templating"]["list"].as_array().expect("templating");
    let variable = |name: &str| {
        variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name}"))
    };
    let datasource = variable("datasource");
    assert_eq!(
        (&datasource["type"], &datasource["query"]),
        (&json!("datasource"), &json!("prometheus"))
    );
    let gateway = variable("gateway");
    assert_eq!(gateway["type"], "query");
    assert_eq!(gateway["datasource"]["uid"], "${datasource}");
    assert!(gateway["query"].as_str().is_some_and(|q| q.contains("label_values(")));
    assert_eq!((&gateway["includeAll"], &gateway["multi"]), (&json!(true), &json!(true)));

    let panels = panels(&dashboard);
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("").to_owned();
        let id = panel["id"].as_u64().unwrap_or_else(|| panic!("{title}: no numeric id"));
        assert!(ids.insert(id), "{title}: id {id} is used twice");
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"]
            .map(|k| grid[k].as_u64().unwrap_or_else(|| panic!("{title}: gridPos.{k}")));
        assert!(w >= 1 && h >= 1 && x + w <= GRID_COLUMNS, "{title}: gridPos {grid}");
        for (other, [ox, oy, ow, oh]) in &boxes {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "{title} overlaps {other}");
        }
        boxes.push((title.clone(), [x, y, w, h]));
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        assert_eq!(panel["datasource"]["type"], "prometheus", "{title}");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let ref_id = target["refId"].as_str().unwrap_or_else(|| panic!("{title}: refId"));
            assert!(ref_ids.insert(ref_id), "{title}: refId {ref_id} twice");
        }
    }
    // Every query is PromQL, with at least one metric.
    for (title, expr) in queries(&dashboard) {
        let selectors = promql_selectors(&expr).unwrap_or_else(|e| panic!("{title}: {e}"));
        assert!(!selectors.is_empty(), "{title}: {expr} names no metric");
    }
}

/// Polls `scrape` until `condition` holds on it, failing with what is still missing after
/// [`WITHIN`]; returns the last scrape.
async fn scrape_until(
    url: &str,
    mut condition: impl FnMut(&Scrape) -> Result<(), String>,
) -> anyhow::Result<Scrape> {
    let deadline = Instant::now() + WITHIN;
    loop {
        let scrape = Scrape::get(url).await?;
        match condition(&scrape) {
            Ok(()) => return Ok(scrape),
            Err(missing) if Instant::now() > deadline => {
                anyhow::bail!("after {WITHIN:?}, {url}: {missing}\n{}", scrape.text)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape.value(name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{}", scrape.text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_counts_its_version_its_data_planes_and_the_propagation_of_a_change()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    cluster.start_control_plane().await?;
    cluster.start_data_plane("dp-0").await?;
    let url = cluster.control_plane.as_ref().expect("started").metrics_url();
    let admin = cluster.admin();
    let initial = admin.config_version().await?;
    admin.wait_for_applied(&["dp-0"], initial, WITHIN).await?;

    // Connected and current; a data plane that joins after a publish catches up, which is no
    // propagation.
    let before = scrape_until(&url, |s| match s.value("modelgw_data_planes_current", &[]) {
        Some(1.0) => Ok(()),
        other => Err(format!("modelgw_data_planes_current is {other:?}")),
    })
    .await?;
    assert_eq!(value(&before, "modelgw_config_version", &[]), initial as f64);
    assert_eq!(value(&before, "modelgw_connected_data_planes", &[]), 1.0);
    assert_eq!(value(&before, "modelgw_snapshot_propagation_seconds_count", &[]), 0.0);
    assert_eq!(value(&before, "modelgw_snapshot_publish_duration_seconds_count", &[]), 1.0);

    // A change through the admin API reaches the data plane: one more publish, and its
    // propagation to the one data plane.
    let (status, body) = admin
        .call(
            "POST",
            "/api/v1/inference-endpoints",
            Some(json!({
                "name": "gpt-4o-mini-eastus", "platform": "azure_openai",
                "endpoint": "http://127.0.0.1:9", "deployment": "gpt-4o-mini",
                "model_name": "gpt-4o-mini", "model_version": "2024-07-18", "region": "eastus",
                "api_key": "azkey-metrics-test-0000",
            })),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let version = admin.config_version().await?;
    assert_eq!(version, initial + 1);
    admin.wait_for_applied(&["dp-0"], version, WITHIN).await?;
    let after =
        scrape_until(&url, |s| match s.value("modelgw_snapshot_propagation_seconds_count", &[]) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("propagation count is {other:?}")),
        })
        .await?;
    assert_eq!(value(&after, "modelgw_config_version", &[]), version as f64);
    assert_eq!(value(&after, "modelgw_connected_data_planes", &[]), 1.0);
    assert_eq!(value(&after, "modelgw_data_planes_current", &[]), 1.0);
    assert_eq!(value(&after, "modelgw_snapshot_propagation_seconds_count", &[]), 1.0);
    let propagation = value(&after, "modelgw_snapshot_propagation_seconds_sum", &[]);
    assert!(propagation > 0.0 && propagation < WITHIN.as_secs_f64(), "{propagation}");
    assert_eq!(value(&after, "modelgw_snapshot_publish_duration_seconds_count", &[]), 2.0);
    let commit = [("operation", "config_commit")];
    assert_eq!(value(&after, "modelgw_store_operation_duration_seconds_count", &commit), 1.0);
    let loads = [("operation", "load_snapshot")];
    assert!(value(&after, "modelgw_store_operation_duration_seconds_count", &loads) >= 2.0);
    assert!(value(&after, "modelgw_admin_requests_total", &[("status_class", "2xx")]) >= 2.0);
    // A refused request is counted as a 4xx.
    let (status, _) = admin.call("GET", "/api/v1/no-such-route", None).await?;
    assert_eq!(status, 404);
    scrape_until(&url, |s| {
        match s.value("modelgw_admin_requests_total", &[("status_class", "4xx")]) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("4xx admin requests: {other:?}")),
        }
    })
    .await?;

    // The data plane goes away: no longer connected.
    let mut dp = cluster.data_planes.pop().expect("one data plane");
    dp.stop().await;
    scrape_until(&url, |s| match s.value("modelgw_connected_data_planes", &[]) {
        Some(0.0) => Ok(()),
        other => Err(format!("connected data planes: {other:?}")),
    })
    .await?;

    // `off`: no listener, and no `metrics` in the ready line.
    let dir = tempfile::tempdir()?;
    let env = [
        ("MODELGW_DATABASE_URL", format!("sqlite://{}", dir.path().join("off.db").display())),
        ("MODELGW_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("MODELGW_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("MODELGW_ADMIN_TOKEN", "mgwadm_metrics-off-0123456789abcdef0123".to_owned()),
        ("MODELGW_INSECURE_GRPC", "true".to_owned()),
        ("MODELGW_METRICS_ADDR", "off".to_owned()),
    ];
    let off = spawn(cluster.bin.as_path(), "control-plane (metrics off)", &["control-plane"], &env)
        .await?;
    assert!(!off.ready.contains_key("metrics"), "{:?}", off.ready);
    Ok(())
}

/// A gateway over `members` (endpoint id, priority).
async fn gateway(
    admin: &modelgw_e2e::Admin,
    name: &str,
    members: &[(&str, u32)],
) -> anyhow::Result<String> {
    let members: Vec<Value> = members
        .iter()
        .map(|(id, priority)| json!({"endpoint_id": id, "enabled": true, "priority": priority, "weight": 1}))
        .collect();
    let (status, body) = admin
        .call("POST", "/api/v1/gateways", Some(json!({"name": name, "endpoints": members})))
        .await?;
    anyhow::ensure!(status == 201, "creating gateway {name}: {status} {body}");
    let id = body["id"].as_str().expect("gateway id").to_owned();
    admin.create_key(&id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_a_series_that_the_processes_expose() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    cluster.start_control_plane().await?;
    for region in ["East US", "West Europe", "Japan East"] {
        cluster.start_region(region).await?;
    }
    cluster.start_data_plane("dp-0").await?;
    let admin = cluster.admin();
    let mut ids = Vec::new();
    for r in &cluster.regions {
        ids.push(admin.create_endpoint(&r.name, r).await?);
    }
    let (east, west, japan) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    // `steady` is served by East US; `spill` tries West Europe first, East US next; `down`
    // has Japan East only.
    let steady = gateway(&admin, "steady", &[(east, 0)]).await?;
    let spill = gateway(&admin, "spill", &[(west, 0), (east, 1)]).await?;
    let down = gateway(&admin, "down", &[(japan, 0)]).await?;
    let version = admin.config_version().await?;
    admin.wait_for_applied(&["dp-0"], version, WITHIN).await?;
    cluster.regions[1].script(Fault::throttled(60, 1));
    cluster.regions[2].script(Fault::Status {
        status: 503,
        retry_after: None,
        retry_after_ms: None,
        times: 1,
    });

    // A little traffic: a success, a throttled region failing over, a 503 region, a stream,
    // and a request with a key nobody issued.
    let gw = cluster.gateway_url(0).to_owned();
    let (status, _, body) = chat(&gw, &steady, "steady").await?;
    assert_eq!(status, 200, "{body}");
    let (status, headers, body) = chat(&gw, &spill, "spill").await?;
    assert_eq!(status, 200, "{body}");
    let attempts = headers.get("x-modelgw-attempts").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(attempts.contains("throttled"), "West Europe throttled first: {attempts}");
    let (status, _, body) = chat(&gw, &down, "down").await?;
    assert!(status >= 500, "Japan East failed: {status} {body}");
    let stream = reqwest::Client::new()
        .post(format!("{gw}/openai/deployments/steady/chat/completions?api-version={API_VERSION}"))
        .header("api-key", &steady)
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "stream": true}))
        .send()
        .await?;
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await {
        text.extend_from_slice(&chunk?);
    }
    assert!(String::from_utf8(text)?.trim_end().ends_with("data: [DONE]"));
    let (status, _, _) = chat(&gw, "mgw-a-key-nobody-issued-000000000000", "steady").await?;
    assert_eq!(status, 401);

    // Every query's selectors, by metric.
    let dashboard = dashboard();
    let mut wanted: BTreeMap<String, Vec<(String, Selector)>> = BTreeMap::new();
    for (title, expr) in queries(&dashboard) {
        for selector in promql_selectors(&expr).map_err(anyhow::Error::msg)? {
            wanted.entry(selector.metric.clone()).or_default().push((title.clone(), selector));
        }
    }
    let control_plane = cluster.control_plane.as_ref().expect("started").metrics_url();
    let data_plane = cluster.data_planes[0].metrics_url();
    // The data plane's health report reaches the control plane.
    scrape_until(&control_plane, |s| match s.value("modelgw_health_reports_total", &[]) {
        Some(n) if n >= 1.0 => Ok(()),
        other => Err(format!("health reports: {other:?}")),
    })
    .await?;
    // Metrics recorded as a stream ends may trail the client's last byte: poll until every
    // name is there (or say which are not).
    let missing = |series: &BTreeMap<String, BTreeSet<String>>| -> Vec<String> {
        wanted.keys().filter(|m| !series.contains_key(*m)).cloned().collect()
    };
    let deadline = Instant::now() + WITHIN;
    let series = loop {
        let mut series = Scrape::get(&control_plane).await?.series();
        for (name, labels) in Scrape::get(&data_plane).await?.series() {
            series.entry(name).or_default().extend(labels);
        }
        let absent = missing(&series);
        if absent.is_empty() {
            break series;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries name series neither /metrics holds: {absent:?}\nexposed: {:?}",
            series.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Each filters only by labels its series carry, and a series with a gateway label is
    // filtered by the dashboard's gateway variable.
    for (metric, uses) in &wanted {
        let labels = &series[metric];
        for (title, selector) in uses {
            for (label, _) in &selector.matchers {
                assert!(
                    labels.contains(label),
                    "{title}: {metric} has no label {label}: {labels:?}"
                );
            }
            if labels.contains("gateway") {
                assert!(
                    selector.matchers.iter().any(|(l, v)| l == "gateway" && v == ".*"),
                    "{title}: {metric} is not filtered by $gateway"
                );
            }
        }
    }
    Ok(())
}
