//! `modelgw import`: runs an Azure discovery on the control plane, shows what it found, and
//! (unless `--dry-run`) imports every deployment it listed as Inference Endpoints.
//!
//! Talks only to the control plane's admin API; the control plane holds the Azure credential.
//! Never prints the token or an account key (the API never returns keys).

use crate::stdout::out;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Admin API when nothing is configured: the control plane's default listen address.
const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:4000";
/// How often the discovery job is polled: a large tenant takes tens of seconds, a poll costs
/// one in-memory lookup on the control plane.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait for one discovery. ARM's throttling waits are capped at a minute per call, so
/// a discovery that runs this long is stuck rather than slow.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Per-request timeout towards the admin API (an import calls listKeys per account).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Admin API base URL of the control plane.
    #[arg(long, env = "MODELGW_ADMIN_URL", default_value = DEFAULT_ADMIN_URL)]
    pub admin_url: String,
    /// File holding a token of the admin API with the `operator` role (an API token or the
    /// bootstrap admin token). Otherwise the token is read from MODELGW_ADMIN_TOKEN; never
    /// from a flag, which `ps` would show.
    #[arg(long, env = "MODELGW_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Only discover and show; import nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
    let base = args.admin_url.trim_end_matches('/').to_owned();
    let token = match &args.admin_token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("MODELGW_ADMIN_TOKEN_FILE: reading {}", path.display()))?
            .trim()
            .to_owned(),
        None => std::env::var("MODELGW_ADMIN_TOKEN").map_err(|_| {
            anyhow::anyhow!("set MODELGW_ADMIN_TOKEN or MODELGW_ADMIN_TOKEN_FILE to a token with the operator role")
        })?,
    };
    let api = Api { client, base, token };

    let started = api.send(reqwest::Method::POST, "/api/v1/azure/discoveries", None).await?;
    let id = started["id"].as_str().context("the control plane returned no discovery id")?;
    eprintln!("discovery {id} started");
    let deadline = Instant::now() + DISCOVERY_TIMEOUT;
    let discovery = loop {
        let body = api
            .send(reqwest::Method::GET, &format!("/api/v1/azure/discoveries/{id}"), None)
            .await?;
        if body["status"] != "running" {
            break body;
        }
        let p = &body["progress"];
        eprintln!(
            "  subscriptions {}/{}, accounts {}/{}",
            p["subscriptions_scanned"],
            p["subscriptions_total"],
            p["accounts_scanned"],
            p["accounts_total"]
        );
        if Instant::now() > deadline {
            bail!("discovery {id} still running after {DISCOVERY_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };

    let deployments = discovery["deployments"].as_array().cloned().unwrap_or_default();
    print_table(&deployments);
    let errors = discovery["errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        out!("\nerrors:");
        for e in &errors {
            let permission =
                e["permission"].as_str().map(|p| format!(" (needs {p})")).unwrap_or_default();
            out!("  {}: {}{permission}", text(&e["scope"]), text(&e["message"]));
        }
    }
    if discovery["status"] == "failed" {
        bail!("discovery {id} failed");
    }
    if args.dry_run {
        out!("\ndry run: nothing imported");
        return Ok(());
    }
    if deployments.is_empty() {
        out!("\nnothing to import");
        return Ok(());
    }
    let ids: Vec<&str> = deployments.iter().filter_map(|d| d["id"].as_str()).collect();
    let result = api
        .send(reqwest::Method::POST, "/api/v1/azure/imports", Some(json!({"deployment_ids": ids})))
        .await?;
    out!();
    for outcome in ["created", "updated", "unchanged"] {
        let list = result[outcome].as_array().cloned().unwrap_or_default();
        out!("{outcome}: {}", list.len());
        for id in list {
            out!("  {}", text(&id));
        }
    }
    out!("config version: {}", result["config_version"]);
    Ok(())
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method.clone(), &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response =
            request.send().await.with_context(|| format!("{method} {url}: no answer"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = body["detail"].as_str().unwrap_or("no detail");
            bail!("{method} {url}: {status}: {detail}");
        }
        Ok(body)
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `sub/rg/account/deployment` instead of the full ARM id.
fn short_id(d: &Value) -> String {
    format!(
        "{}/{}/{}/{}",
        text(&d["subscription_id"]),
        text(&d["resource_group"]),
        text(&d["account"]),
        text(&d["deployment"])
    )
}

fn print_table(deployments: &[Value]) {
    let rows: Vec<[String; 6]> = deployments
        .iter()
        .map(|d| {
            let warnings = d["warnings"].as_array().map(Vec::len).unwrap_or(0);
            [
                short_id(d),
                text(&d["model_name"]),
                text(&d["model_version"]),
                text(&d["sku"]),
                text(&d["capacity"]),
                warnings.to_string(),
            ]
        })
        .collect();
    let header = ["DEPLOYMENT", "MODEL", "VERSION", "SKU", "CAPACITY", "WARNINGS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    out!("{}", line(&header.map(str::to_owned)));
    for row in &rows {
        out!("{}", line(row));
    }
    for d in deployments {
        for w in d["warnings"].as_array().into_iter().flatten() {
            out!("  warning {}: {}", short_id(d), text(w));
        }
    }
}
