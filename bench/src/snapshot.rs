//! The snapshot section: a large estate's configuration change, end to end.
//!
//! Whole snapshots (not deltas) are pushed on every change, so their cost at scale matters:
//! 10,000 endpoints and 1,000 gateways of 10 members (one key each). The database is filled
//! in-process through the control-plane store library before the control plane starts: one
//! transaction (and version bump) per row, as the admin API writes — unless per-row endpoint
//! inserts would take over a minute, when the rest go through the Azure-import batch path
//! (one transaction). Then one control plane and one
//! data plane (JSON logs piped) start, and K changes go through the admin API. Per change:
//!
//! - **e2e**: admin call → the data plane's `snapshot applied` line for that version;
//! - **build**: the control plane's `build_us` (store load, validation, encoding once);
//! - **control-plane CPU**: the control plane's CPU time from the admin call until 200 ms after
//!   the data plane applied (everything the change cost it: the admin call, the publish and
//!   whatever follows it, e.g. per-stream work);
//! - **apply**: the data plane's `apply_us` (validate + compile + swap, after decoding);
//! - **bytes**: the encoded snapshot;
//! - **send + decode** ≈ e2e − build − apply (also the admin call, commit and log lines).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use modelgw_control_plane::store::{
    AuditContext, AzureImportItem, EndpointAuth, NewEndpoint, NewGateway,
};
use modelgw_control_plane::{MasterKey, Store};
use modelgw_model::{GatewayMember, Platform, RoutingPolicy, Secret};
use serde_json::json;

use crate::events::{EventLog, first_at_least};
use crate::fixture::{self, MASTER_KEY_B64, random_token};
use crate::procs::Logs;

const PUBLISHED: &str = "snapshot published";
const APPLIED: &str = "snapshot applied";
const CP: usize = 0;
const DP: usize = 1;

/// One measured change.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    pub version: u64,
    pub e2e: Duration,
    pub build_us: u64,
    pub apply_us: u64,
    pub bytes: u64,
    /// Control-plane CPU time spent on the change (see the module docs).
    pub cp_cpu: Duration,
}

impl Change {
    /// What is left of e2e after build and apply: admin call and commit, gRPC send,
    /// protobuf decode, log lines.
    pub fn rest(&self) -> Duration {
        self.e2e.saturating_sub(Duration::from_micros(self.build_us + self.apply_us))
    }
}

#[derive(Clone, Debug, Default)]
pub struct SnapshotResults {
    pub endpoints: usize,
    pub gateways: usize,
    pub members_per_gateway: usize,
    pub populated: Populated,
    pub populate_endpoints: Duration,
    pub populate_gateways: Duration,
    /// The first snapshot at control-plane start: build time, and until the data plane applied it.
    pub initial_build_us: u64,
    pub initial_apply_us: u64,
    pub changes: Vec<Change>,
}

/// Per-row endpoint inserts are used unless they would take longer than this in total; the
/// rest then go through the Azure-import batch path (one transaction).
const PER_ROW_BUDGET: Duration = Duration::from_secs(60);

/// How the endpoints were written.
#[derive(Clone, Debug, Default)]
pub struct Populated {
    pub per_row: usize,
    pub batched: usize,
}

/// The endpoint fields of row `i` (a deployment of a made-up account, ten per account).
fn endpoint_fields(i: usize) -> anyhow::Result<(String, url::Url, String, String)> {
    const REGIONS: [&str; 5] =
        ["eastus", "westeurope", "japaneast", "swedencentral", "australiaeast"];
    let account = format!("bench-aoai-{:04}", i / 10);
    Ok((
        format!("{account}-gpt-4o-{i:05}"),
        url::Url::parse(&format!("https://{account}.openai.azure.com/"))?,
        format!("gpt-4o-{i:05}"),
        REGIONS[i % REGIONS.len()].to_owned(),
    ))
}

/// Fills a fresh database; returns how, the endpoint and gateway times, and the id of the
/// first gateway with its members.
pub(crate) async fn populate(
    url: &str,
    endpoints: usize,
    gateways: usize,
    members: usize,
) -> anyhow::Result<(Populated, Duration, Duration, String, Vec<String>)> {
    let key = MasterKey::from_base64(MASTER_KEY_B64).context("master key")?;
    let store = Store::connect(url, key).await.context("opening the snapshot database")?;
    let audit = AuditContext::system("bench");
    let started = Instant::now();
    let mut ids = Vec::with_capacity(endpoints);
    let mut how = Populated::default();
    // Per row (one transaction and version bump each, like the admin API) while the
    // projected total stays within the budget.
    while ids.len() < endpoints {
        let done = ids.len();
        if done >= 200 && started.elapsed().mul_f64(endpoints as f64 / done as f64) > PER_ROW_BUDGET
        {
            break;
        }
        let (name, endpoint, deployment, region) = endpoint_fields(done)?;
        let (record, _) = store
            .create_endpoint(
                NewEndpoint {
                    name,
                    platform: Platform::AzureOpenai,
                    endpoint,
                    deployment,
                    model_name: "gpt-4o".into(),
                    model_version: "2024-11-20".into(),
                    region,
                    auth: EndpointAuth::ApiKey(Secret::new(random_token("")?)),
                },
                &audit,
            )
            .await
            .context("creating an endpoint")?;
        ids.push(record.id);
    }
    how.per_row = ids.len();
    if ids.len() < endpoints {
        let items: Vec<AzureImportItem> = (ids.len()..endpoints)
            .map(|i| {
                let (name, endpoint, deployment, region) = endpoint_fields(i)?;
                Ok(AzureImportItem {
                    arm_resource_id: format!(
                        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/\
                         rg-bench/providers/Microsoft.CognitiveServices/accounts/{name}"
                    ),
                    name,
                    endpoint,
                    deployment,
                    model_name: "gpt-4o".into(),
                    model_version: "2024-11-20".into(),
                    region,
                    sku_name: "Standard".into(),
                    sku_capacity: Some(100),
                    auth: EndpointAuth::ApiKey(Secret::new(random_token("")?)),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let outcome =
            store.import_azure_endpoints(items, &audit).await.context("importing endpoints")?;
        how.batched = outcome.created.len();
        ids.extend(outcome.created);
    }
    ensure!(ids.len() == endpoints, "created {} endpoints", ids.len());
    let endpoint_time = started.elapsed();

    let started = Instant::now();
    let mut first = None;
    for g in 0..gateways {
        let chosen = ids.iter().cycle().skip(g * members).take(members);
        let member_list: Vec<GatewayMember> = chosen
            .map(|id| GatewayMember { endpoint_id: *id, enabled: true, priority: 0, weight: 1 })
            .collect();
        let (gw, _) = store
            .create_gateway(
                NewGateway {
                    name: format!("gw-{g:04}"),
                    members: member_list.clone(),
                    routing: RoutingPolicy::default(),
                    ..Default::default()
                },
                &audit,
            )
            .await
            .context("creating a gateway")?;
        store.create_gateway_key(gw.id, "bench".into(), &audit).await.context("creating a key")?;
        if first.is_none() {
            first = Some((
                gw.id.to_string(),
                member_list.iter().map(|m| m.endpoint_id.to_string()).collect(),
            ));
        }
    }
    let gateway_time = started.elapsed();
    store.close().await;
    let (gw, members) = first.context("no gateway")?;
    Ok((how, endpoint_time, gateway_time, gw, members))
}

pub async fn run(
    bin: &Path,
    dir: &Path,
    endpoints: usize,
    gateways: usize,
    changes: usize,
) -> anyhow::Result<SnapshotResults> {
    const MEMBERS: usize = 10;
    let db = "snapshot.db";
    let url = format!("sqlite://{}", dir.join(db).display());
    eprintln!("  snapshot: populating {endpoints} endpoints and {gateways} gateways …");
    let (populated, populate_endpoints, populate_gateways, gateway, members) =
        populate(&url, endpoints, gateways, MEMBERS).await?;
    eprintln!(
        "  snapshot: populated in {:.1} s (endpoints: {} per row, {} batched) + {:.1} s (gateways and keys)",
        populate_endpoints.as_secs_f64(),
        populated.per_row,
        populated.batched,
        populate_gateways.as_secs_f64()
    );

    let json_logs = [("MODELGW_LOG_FORMAT", "json".to_owned())];
    let token = random_token("mgwadm_bench_")?;
    let log = EventLog::default();
    let (mut cp, admin) =
        fixture::start_control_plane(bin, dir, db, &token, &json_logs, Logs::Piped).await?;
    log.watch(CP, cp.proc.take_stderr().context("control-plane stderr")?, &[PUBLISHED]);
    let mut dp =
        fixture::start_data_plane(bin, cp.field("grpc")?, "snap-dp", &json_logs, Logs::Piped)
            .await?;
    log.watch(DP, dp.proc.take_stderr().context("data-plane stderr")?, &[APPLIED]);

    let result = async {
        let initial = admin.config_version().await?;
        let applied = log
            .wait_for(Duration::from_secs(120), "the initial snapshot to be applied", |ev| {
                first_at_least(ev, DP, APPLIED, "version", initial).cloned()
            })
            .await?;
        let initial_build_us = log.with(|ev| {
            first_at_least(ev, CP, PUBLISHED, "config_version", initial)
                .and_then(|e| e.u64("build_us"))
                .unwrap_or(0)
        });
        let mut results = SnapshotResults {
            endpoints,
            gateways,
            members_per_gateway: MEMBERS,
            populated,
            populate_endpoints,
            populate_gateways,
            initial_build_us,
            initial_apply_us: applied.u64("apply_us").unwrap_or(0),
            changes: Vec::new(),
        };
        ensure!(
            applied.u64("endpoints") == Some(endpoints as u64),
            "the data plane applied {:?} endpoints, expected {endpoints}",
            applied.u64("endpoints")
        );

        for k in 0..changes {
            let weight = if k % 2 == 0 { 2 } else { 1 };
            let list: Vec<serde_json::Value> = members
                .iter()
                .enumerate()
                .map(
                    |(i, id)| json!({"endpoint_id": id, "weight": if i == 0 { weight } else { 1 }}),
                )
                .collect();
            let cp_pids = cp.proc.pids();
            let cp_ticks = crate::procs::cpu_ticks(&cp_pids);
            let t0 = Instant::now();
            let (status, body) = admin
                .call(
                    "PATCH",
                    &format!("/api/v1/gateways/{gateway}"),
                    Some(json!({"endpoints": list})),
                )
                .await?;
            ensure!(status == 200, "PATCH gateway: {status} {body}");
            let version = admin.config_version().await?;
            let (applied, published) = log
                .wait_for(
                    Duration::from_secs(60),
                    &format!("version {version} to be applied"),
                    |ev| {
                        Some((
                            first_at_least(ev, DP, APPLIED, "version", version)?.clone(),
                            first_at_least(ev, CP, PUBLISHED, "config_version", version)?.clone(),
                        ))
                    },
                )
                .await?;
            // Work the publisher does after the publish line (it used to re-validate the
            // snapshot there) and per-stream sends finish within this.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let ticks = crate::procs::cpu_ticks(&cp_pids).saturating_sub(cp_ticks);
            let change = Change {
                version,
                e2e: applied.at.saturating_duration_since(t0),
                build_us: published.u64("build_us").unwrap_or(0),
                apply_us: applied.u64("apply_us").unwrap_or(0),
                bytes: published.u64("bytes").unwrap_or(0),
                cp_cpu: Duration::from_secs_f64(
                    ticks as f64 / crate::procs::clock_ticks_per_sec() as f64,
                ),
            };
            eprintln!(
                "  snapshot change {} (version {}): e2e {}  build {}  apply {}  control-plane CPU {}  {} bytes",
                k + 1,
                change.version,
                crate::stats::fmt_secs(change.e2e.as_secs_f64()),
                crate::stats::fmt_secs(change.build_us as f64 / 1e6),
                crate::stats::fmt_secs(change.apply_us as f64 / 1e6),
                crate::stats::fmt_secs(change.cp_cpu.as_secs_f64()),
                change.bytes
            );
            results.changes.push(change);
        }
        anyhow::Ok(results)
    }
    .await;
    dp.proc.stop(Duration::from_secs(5)).await;
    cp.proc.stop(Duration::from_secs(5)).await;
    result
}
