//! Issue #18 acceptance over real processes: quota-aware routing spends every region's quota
//! and takes (almost) no upstream 429s.
//!
//! Each combination of a quota window and an upstream latency gets its own stack — three mock
//! regions with token-bucket quotas of 5, 25 and 25 requests/s (150 tokens per request's worth
//! of tokens/s), one gateway over them with equal weights — and every stack of a phase runs at
//! the same time, through the same data plane(s), to keep the test short. Requests cost 150
//! tokens each (a 200-character message, 50 tokens, plus `max_tokens` 100).
//!
//! Loads, each for [`RUN`]:
//! - "80 %": open-loop paced clients offering [`OFFERED`] of the summed refill rate (44 req/s).
//!   Quota must be spent in proportion: every region's utilization (served / allowed) at least
//!   [`PROPORTION`] × the stack's.
//! - "needs it": closed-loop clients demanding [`DEMAND`] × what the quotas allow over the run.
//!   The gateway waits for a refill (`wait_for_recovery`, 60 s deadline) rather than fail, and
//!   every region must serve at least [`NEEDS_IT_SHARE`] of what its quota allowed.
//!
//! Both: no client error, at most [`MAX_429_PER_1000`] upstream 429 per 1,000 client requests.
//! "Allowed" is `capacity + rate × t`, t from the moment the quota was set (buckets full) to the
//! end of the run; "served" is what the region admitted in that time (the mock charges at
//! arrival; every admitted request is answered 200).
//!
//! Phases (run one with `cargo nextest run -p modelgw --test e2e_quota <name>`):
//! `one_data_plane_offered_80_percent`, `one_data_plane_load_that_needs_the_quota`,
//! `two_data_planes_share_the_quota` (clients alternate between them, like Front Door), and
//! `reactive_without_quota_headers` (regions send no `x-ratelimit-*`; `routing.quota.enabled`
//! false: the reactive router): no client error at "80 %".
//!
//! Every phase prints one table per stack (run with `--no-capture` to see them on success).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use modelgw_e2e::load::{self, Load, Tally, Target};
use modelgw_e2e::{Cluster, Fault, Quota, QuotaCounts, QuotaHeaders};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

/// How long each load runs.
const RUN: Duration = Duration::from_secs(20);

/// Quota windows (what a bucket holds, in seconds of refill) × upstream latencies: one stack
/// each, all at once. Azure's request window is 10 s; 5 s makes an on/off rule's hold-off
/// cost more of the small region's quota.
const WINDOWS: [Duration; 2] = [Duration::from_secs(10), Duration::from_secs(5)];
const LATENCIES: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];

/// The combination of the two-data-plane phase (the one where in-flight requests and the
/// hold-off weigh most).
const FLEET_COMBINATION: Combination =
    Combination { window: Duration::from_secs(5), latency: Duration::from_millis(200) };

/// The three regions of a stack: a label and the refill rate of its request bucket.
const REGIONS: [(&str, f64); 3] = [("small", 5.0), ("large-a", 25.0), ("large-b", 25.0)];

/// Tokens per second of quota per request per second: one request's worth.
const TOKENS_PER_REQUEST: f64 = 150.0;

/// The message: 200 characters, 50 tokens by the 4-characters-per-token estimate.
const PROMPT_CHARS: usize = 200;

/// `max_tokens` of every request: with the prompt, 150 tokens charged at admission.
const MAX_TOKENS: u64 = 100;

/// "80 %" load: this share of the stack's summed refill rate, open loop.
const OFFERED: f64 = 0.8;

/// "Needs it" load: closed-loop clients enough to demand this multiple of what the quotas
/// allow over the run (`Σ (capacity + rate × RUN) / RUN`). That is more than 1.3 × the summed
/// refill rate: with a 10 s window a full bucket adds half a run's refill, so 1.3 × the refill
/// rate alone would not need the quota at all.
const DEMAND: f64 = 1.3;

/// Time a closed-loop client spends per request beyond the upstream latency (client, debug
/// gateway, loopback), for sizing the client count. Generous: on a loaded 2-core machine a
/// round trip took ~130 ms more than the latency, and too few clients would leave quota unused
/// for want of demand; a larger guess only adds clients that wait in the gateway.
const ROUND_TRIP_OVERHEAD: Duration = Duration::from_millis(150);

/// The gateway's deadline in the "needs it" load: long enough to wait for any refill.
const NEEDS_IT_TIMEOUT_MS: u64 = 60_000;

/// Acceptance: upstream 429s per 1,000 client requests, at most.
const MAX_429_PER_1000: f64 = 1.0;

/// Acceptance at "80 %": each region's utilization at least this × the stack's.
const PROPORTION: f64 = 0.9;

/// Acceptance at "needs it": each region serves at least this share of what it allowed.
const NEEDS_IT_SHARE: f64 = 0.9;

/// A quota window and an upstream latency.
#[derive(Clone, Copy, Debug)]
struct Combination {
    window: Duration,
    latency: Duration,
}

impl Combination {
    fn all() -> Vec<Combination> {
        WINDOWS
            .iter()
            .flat_map(|&window| {
                LATENCIES.iter().map(move |&latency| Combination { window, latency })
            })
            .collect()
    }

    /// For names: `10s-200ms`.
    fn slug(&self) -> String {
        format!("{}s-{}ms", self.window.as_secs(), self.latency.as_millis())
    }
}

/// Which load a stack gets, and so which gateway settings and bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadKind {
    /// Open loop at [`OFFERED`] of the refill rate; quota must be spent in proportion.
    Offered80,
    /// Closed loop at [`DEMAND`]; every region's quota must be spent.
    NeedsIt,
    /// [`LoadKind::Offered80`] against regions without quota headers, quota routing off: only
    /// client errors count.
    Reactive,
}

impl LoadKind {
    fn slug(self) -> &'static str {
        match self {
            LoadKind::Offered80 => "80",
            LoadKind::NeedsIt => "needs",
            LoadKind::Reactive => "reactive",
        }
    }

    /// The gateway's `routing`.
    fn routing(self) -> Value {
        match self {
            LoadKind::Offered80 => json!({"strategy": "weighted"}),
            LoadKind::NeedsIt => json!({
                "strategy": "weighted",
                "wait_for_recovery": true,
                "request_timeout_ms": NEEDS_IT_TIMEOUT_MS,
            }),
            LoadKind::Reactive => json!({
                "strategy": "weighted",
                "wait_for_recovery": true,
                "quota": {"enabled": false},
            }),
        }
    }

    fn headers(self) -> QuotaHeaders {
        if self == LoadKind::Reactive { QuotaHeaders::None } else { QuotaHeaders::Full }
    }
}

/// One gateway over three regions, and the load it gets.
struct Stack {
    combination: Combination,
    kind: LoadKind,
    gateway: String,
    key: String,
    /// Indexes into `Cluster::regions`, in [`REGIONS`] order.
    regions: Vec<usize>,
}

impl Stack {
    fn quota(&self, requests_per_sec: f64) -> Quota {
        Quota {
            requests_per_sec,
            tokens_per_sec: requests_per_sec * TOKENS_PER_REQUEST,
            window: self.combination.window,
            headers: self.kind.headers(),
        }
    }

    /// Requests a second the quotas allow over a run: capacity spread over it, plus refill.
    fn allowed_rate(&self) -> f64 {
        let window = self.combination.window.as_secs_f64();
        REGIONS.iter().map(|(_, rate)| rate * window / RUN.as_secs_f64() + rate).sum()
    }

    fn load(&self) -> Load {
        let refill: f64 = REGIONS.iter().map(|(_, rate)| rate).sum();
        match self.kind {
            LoadKind::Offered80 | LoadKind::Reactive => Load::Paced { per_sec: OFFERED * refill },
            LoadKind::NeedsIt => {
                let per_client = (self.combination.latency + ROUND_TRIP_OVERHEAD).as_secs_f64();
                let clients = (DEMAND * self.allowed_rate() * per_client).ceil() as usize;
                Load::ClosedLoop { clients }
            }
        }
    }

    fn title(&self) -> String {
        let load = match (self.kind, self.load()) {
            (_, Load::Paced { per_sec }) => format!("open loop, {per_sec:.1} req/s"),
            (_, Load::ClosedLoop { clients }) => format!(
                "closed loop, {clients} clients ≈ {:.0} req/s of demand",
                DEMAND * self.allowed_rate()
            ),
        };
        let kind = match self.kind {
            LoadKind::Offered80 => "80 %",
            LoadKind::NeedsIt => "needs it",
            LoadKind::Reactive => "reactive, no quota headers",
        };
        format!(
            "{} s window, {} ms latency — {kind} ({load}, {} s)",
            self.combination.window.as_secs(),
            self.combination.latency.as_millis(),
            RUN.as_secs()
        )
    }
}

/// One region's figures over a run.
struct RegionFigures {
    label: &'static str,
    requests_per_sec: f64,
    /// `capacity + rate × t`, t from the quota's start to the end of the run.
    allowed: f64,
    /// Admitted by the end of the run.
    served: u64,
    /// Counts after every answer came back.
    end: QuotaCounts,
}

impl RegionFigures {
    fn utilization(&self) -> f64 {
        self.served as f64 / self.allowed
    }
}

/// A stack's figures, and what the acceptance says of them.
struct Outcome {
    title: String,
    regions: Vec<RegionFigures>,
    clients: Tally,
    kind: LoadKind,
}

impl Outcome {
    fn throttled(&self) -> u64 {
        self.regions.iter().map(|r| r.end.throttled).sum()
    }

    fn per_1000(&self) -> f64 {
        self.throttled() as f64 * 1000.0 / self.clients.requests.max(1) as f64
    }

    fn utilization(&self) -> f64 {
        let served: u64 = self.regions.iter().map(|r| r.served).sum();
        let allowed: f64 = self.regions.iter().map(|r| r.allowed).sum();
        served as f64 / allowed
    }

    fn table(&self) -> String {
        let mut t = format!("\n== {} ==\n", self.title);
        let _ = writeln!(
            t,
            "{:<8} {:>9} {:>8} {:>7} {:>15} {:>6} {:>10}",
            "region", "quota", "allowed", "served", "served/allowed", "429s", "2xx total"
        );
        for r in &self.regions {
            let _ = writeln!(
                t,
                "{:<8} {:>5} r/s {:>8.0} {:>7} {:>14.1}% {:>6} {:>10}",
                r.label,
                r.requests_per_sec,
                r.allowed,
                r.served,
                100.0 * r.utilization(),
                r.end.throttled,
                r.end.served
            );
        }
        let allowed: f64 = self.regions.iter().map(|r| r.allowed).sum();
        let served: u64 = self.regions.iter().map(|r| r.served).sum();
        let _ = writeln!(
            t,
            "{:<8} {:>9} {:>8.0} {:>7} {:>14.1}% {:>6}",
            "total",
            "",
            allowed,
            served,
            100.0 * self.utilization(),
            self.throttled()
        );
        let _ = writeln!(
            t,
            "client requests {}, client errors {}, upstream 429s per 1,000 client requests {:.1}",
            self.clients.requests,
            self.clients.errors,
            self.per_1000()
        );
        for e in &self.clients.error_samples {
            let _ = writeln!(t, "  client error: {e}");
        }
        t
    }

    /// The acceptance bounds this stack misses, each saying why.
    fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        let title = &self.title;
        if self.clients.errors > 0 {
            f.push(format!("{title}: {} client errors", self.clients.errors));
        }
        if self.kind == LoadKind::Reactive {
            return f;
        }
        if self.per_1000() > MAX_429_PER_1000 {
            f.push(format!(
                "{title}: {} upstream 429s = {:.1} per 1,000 client requests (at most {MAX_429_PER_1000})",
                self.throttled(),
                self.per_1000()
            ));
        }
        let total = self.utilization();
        for r in &self.regions {
            let u = r.utilization();
            match self.kind {
                LoadKind::Offered80 if u < PROPORTION * total => f.push(format!(
                    "{title}: {} used {:.1}% of its quota, below {PROPORTION} × the stack's {:.1}%",
                    r.label,
                    100.0 * u,
                    100.0 * total
                )),
                LoadKind::NeedsIt if u < NEEDS_IT_SHARE => f.push(format!(
                    "{title}: {} served {} of the {:.0} its quota allowed ({:.1}%, at least {:.0}%)",
                    r.label,
                    r.served,
                    r.allowed,
                    100.0 * u,
                    100.0 * NEEDS_IT_SHARE
                )),
                _ => {}
            }
        }
        f
    }
}

/// The chat request every client sends.
fn request_body() -> Value {
    let content: String =
        "Summarise the quarterly report. ".chars().cycle().take(PROMPT_CHARS).collect();
    json!({"messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS})
}

/// Creates a gateway with `routing`.
async fn create_gateway(
    cluster: &Cluster,
    name: &str,
    endpoint_ids: &[String],
    routing: Value,
) -> anyhow::Result<String> {
    let admin = cluster.admin();
    let members: Vec<Value> = endpoint_ids
        .iter()
        .map(|id| json!({"endpoint_id": id, "enabled": true, "priority": 0, "weight": 1}))
        .collect();
    let create = |routing: &Value| json!({"name": name, "endpoints": members, "routing": routing});
    let (status, body) = admin.call("POST", "/api/v1/gateways", Some(create(&routing))).await?;
    anyhow::ensure!(status == 201, "creating gateway {name}: {status} {body}");
    let id = body["id"].as_str().ok_or_else(|| anyhow::anyhow!("gateway id in {body}"))?;
    Ok(id.to_owned())
}

/// Starts a control plane, `data_planes` data planes and one stack per `(combination, load)`;
/// runs every load at once; prints the tables; fails with every bound missed.
async fn phase(data_planes: usize, stacks: &[(Combination, LoadKind)]) -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    cluster.start_control_plane().await?;
    let nodes: Vec<String> = (0..data_planes).map(|i| format!("dp-{i}")).collect();
    for node in &nodes {
        cluster.start_data_plane(node).await?;
    }
    let admin = cluster.admin();
    let mut built = Vec::new();
    for &(combination, kind) in stacks {
        let slug = format!("{}-{}", combination.slug(), kind.slug());
        let mut regions = Vec::new();
        let mut endpoint_ids = Vec::new();
        for (label, _) in REGIONS {
            let i = cluster.start_region(&format!("{label} {slug}")).await?;
            let region = &cluster.regions[i];
            let ms = u64::try_from(combination.latency.as_millis())?;
            region.script(Fault::Latency { ms, times: u32::MAX });
            endpoint_ids.push(admin.create_endpoint(&region.name, region).await?);
            regions.push(i);
        }
        let gateway = format!("quota-{slug}");
        let id = create_gateway(&cluster, &gateway, &endpoint_ids, kind.routing()).await?;
        let key = admin.create_key(&id).await?;
        built.push(Stack { combination, kind, gateway, key, regions });
    }
    let version = admin.config_version().await?;
    let node_refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
    admin.wait_for_applied(&node_refs, version, Duration::from_secs(10)).await?;
    let gateways: Vec<String> =
        (0..data_planes).map(|i| cluster.gateway_url(i).to_owned()).collect();

    // Buckets full from here: every region's quota starts now.
    let started: Vec<Vec<Instant>> = tokio::task::block_in_place(|| {
        built
            .iter()
            .map(|s| {
                s.regions
                    .iter()
                    .zip(REGIONS)
                    .map(|(&i, (_, rate))| {
                        cluster.regions[i].set_quota(Some(s.quota(rate)));
                        Instant::now()
                    })
                    .collect()
            })
            .collect()
    });
    let stop = Instant::now() + RUN;
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    let loads: Vec<_> = built
        .iter()
        .map(|s| {
            let target = Target {
                gateways: gateways.clone(),
                key: s.key.clone(),
                deployment: s.gateway.clone(),
                body: request_body(),
            };
            tokio::spawn(load::run(http.clone(), target, s.load(), stop))
        })
        .collect();

    // What each region admitted within the run, and over how long.
    tokio::time::sleep_until(stop.into()).await;
    let at_stop: Vec<Vec<(QuotaCounts, Duration)>> = tokio::task::block_in_place(|| {
        built
            .iter()
            .zip(&started)
            .map(|(s, started)| {
                s.regions
                    .iter()
                    .zip(started)
                    .map(|(&i, at)| (cluster.regions[i].quota_counts(), at.elapsed()))
                    .collect()
            })
            .collect()
    });
    let mut tallies = Vec::new();
    for l in loads {
        tallies.push(l.await?);
    }

    let mut report = String::new();
    let mut failures = Vec::new();
    for ((stack, stop_counts), clients) in built.iter().zip(at_stop).zip(tallies) {
        let regions = stack
            .regions
            .iter()
            .zip(REGIONS)
            .zip(stop_counts)
            .map(|((&i, (label, rate)), (counts, elapsed))| {
                let quota = stack.quota(rate);
                RegionFigures {
                    label,
                    requests_per_sec: rate,
                    allowed: quota.request_capacity() + rate * elapsed.as_secs_f64(),
                    served: counts.admitted,
                    end: cluster.regions[i].quota_counts(),
                }
            })
            .collect();
        let outcome = Outcome { title: stack.title(), regions, clients, kind: stack.kind };
        report.push_str(&outcome.table());
        failures.extend(outcome.failures());
    }
    #[allow(clippy::print_stdout, reason = "the per-region figures are this test's report")]
    {
        println!("{report}");
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{report}\nquota acceptance missed:\n- {}",
        failures.join("\n- ")
    );
    Ok(())
}

fn every_combination(kind: LoadKind) -> Vec<(Combination, LoadKind)> {
    Combination::all().into_iter().map(|c| (c, kind)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_data_plane_offered_80_percent() -> anyhow::Result<()> {
    phase(1, &every_combination(LoadKind::Offered80)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_data_plane_load_that_needs_the_quota() -> anyhow::Result<()> {
    phase(1, &every_combination(LoadKind::NeedsIt)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_planes_share_the_quota() -> anyhow::Result<()> {
    phase(2, &[(FLEET_COMBINATION, LoadKind::Offered80), (FLEET_COMBINATION, LoadKind::NeedsIt)])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactive_without_quota_headers() -> anyhow::Result<()> {
    phase(1, &every_combination(LoadKind::Reactive)).await
}

/// The share `node`'s data plane plans with for endpoint `endpoint` (its
/// `modelgw_endpoint_quota_share`).
async fn quota_share(metrics_url: &str, endpoint: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(metrics_url).await?.text().await?;
    let label = format!("endpoint=\"{endpoint}\"");
    let line = text
        .lines()
        .find(|l| l.starts_with("modelgw_endpoint_quota_share{") && l.contains(&label))
        .ok_or_else(|| anyhow::anyhow!("no quota share for {endpoint}"))?;
    Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
}

/// The staleness of fleet sharing, measured: traffic starts on one data plane only, and the
/// other, idle, learns through the control plane that the endpoint is spent elsewhere (its
/// share drops from 1 to an equal part). Expected: one report interval plus one push interval,
/// about 2 s; bounded here at 4 s for a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_share_reaches_an_idle_data_plane_within_two_report_intervals()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    cluster.start_control_plane().await?;
    for node in ["dp-0", "dp-1"] {
        cluster.start_data_plane(node).await?;
    }
    let admin = cluster.admin();
    let i = cluster.start_region("staleness").await?;
    let region = &cluster.regions[i];
    let endpoint = admin.create_endpoint(&region.name, region).await?;
    let name = region.name.clone();
    let id =
        create_gateway(&cluster, "staleness", &[endpoint], json!({"strategy": "weighted"})).await?;
    let key = admin.create_key(&id).await?;
    let version = admin.config_version().await?;
    admin.wait_for_applied(&["dp-0", "dp-1"], version, Duration::from_secs(10)).await?;
    let idle = cluster.data_planes[1].metrics_url();
    assert_eq!(quota_share(&idle, &name).await?, 1.0, "alone before any traffic");

    let busy = cluster.gateway_url(0).to_owned();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        loop {
            let _ = modelgw_e2e::chat(&busy, &key, "staleness").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let share = loop {
        let share = quota_share(&idle, &name).await?;
        if share < 1.0 {
            break share;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "the share never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let staleness = started.elapsed();
    sender.abort();
    println!(
        "fleet share reached the idle data plane {} ms after traffic began",
        staleness.as_millis()
    );
    assert_eq!(share, 0.5, "an idle data plane takes an equal part");
    assert!(staleness < Duration::from_secs(4), "{staleness:?}");
    Ok(())
}
