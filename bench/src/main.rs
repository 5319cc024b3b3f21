//! `modelgw-bench`: the Model Gateway performance benchmark (run it with `bash bench/run.sh`;
//! results go to BENCHMARKS.md).
//!
//! Everything runs on 127.0.0.1 with a fake Azure OpenAI made of nginx instances (see
//! [`nginx`]), and compares rows (see [`fixture`]): the load generator straight to the
//! fake upstream (the floor), through an nginx reverse proxy (the baseline for one proxy hop),
//! and through `modelgw data-plane` (the code under test): with every optional feature off
//! (plain) and with everything on, plus rows that add one feature each. Sections:
//!
//! - [`load`]: throughput, latency at 8 connections and at a fixed rate, CPU per request;
//! - [`stream`]: time to first chunk of a streamed answer;
//! - [`memory`]: data-plane RSS idle and per open stream;
//! - [`propagation`]: a config change reaching 50 data planes;
//! - [`fanout`]: a config change and a fleet-health change reaching 1,000 simulated data
//!   planes (in-process subscribers over mTLS gRPC);
//! - [`snapshot`]: a change to a 10,000-endpoint estate, build/apply/size;
//! - [`console`]: the Admin Console's pages on a 1,000-endpoint estate.
//! - [`llm`]: LLM-shaped load, thousands of long token streams at once (CPU per chunk, memory
//!   per stream, added time to first token, per-chunk forwarding delay and jitter);
//! - [`flood`]: a 64 MiB SSE event without a boundary, through one serving thread that also
//!   serves chats (its own mock region, control plane and data planes).
//!
//! Every child process is stopped on exit, error or Ctrl-C; every run is bounded in time.

mod console;
mod events;
mod fanout;
mod fixture;
mod flood;
mod llm;
mod load;
mod memory;
mod model_upstream;
mod nginx;
mod procs;
mod propagation;
mod report;
mod snapshot;
mod stats;
mod stream;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

use crate::fixture::{Fixture, Row};
use crate::report::{Results, RunInfo};

/// The console section's estate: the issue's "1,000 endpoints and 100 gateways".
const CONSOLE_ENDPOINTS: usize = 1_000;
const CONSOLE_GATEWAYS: usize = 100;

/// The longest a whole run may take before it is stopped (the full run takes well under 15 min).
const MAX_RUN: Duration = Duration::from_secs(25 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Section {
    Load,
    Stream,
    Memory,
    Propagation,
    Snapshot,
    Console,
    Flood,
    Fanout,
    Llm,
}

/// Model Gateway performance benchmark: gateway vs nginx vs direct, on 127.0.0.1.
#[derive(Parser, Debug, Clone)]
#[command(name = "modelgw-bench", args_override_self = true)]
struct Args {
    /// The `modelgw` binary (release build).
    #[arg(long)]
    modelgw: PathBuf,
    /// The `oha` load generator.
    #[arg(long)]
    oha: PathBuf,
    /// Write the results into this markdown file between `<!-- bench:begin -->` and
    /// `<!-- bench:end -->` (omit to print only).
    /// A later `--report` overrides an earlier one (bench/run.sh passes BENCHMARKS.md first).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print only; no report file (overrides `--report`).
    #[arg(long)]
    no_report: bool,
    /// Short runs and fewer rounds (about 2 minutes), to smoke-test the benchmark.
    #[arg(long)]
    quick: bool,
    /// Seconds per load run (default 10; 2 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Rounds of the load and stream sections (default 3; 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Run only these sections (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Section>,
    /// Config changes in the propagation and fanout sections (default 30; 5 with --quick).
    #[arg(long)]
    changes: Option<usize>,
    /// Data planes in the propagation section.
    #[arg(long, default_value_t = 50)]
    subscribers: usize,
    /// Log filter of the measured data plane, for diagnosis only (e.g. `warn` to see what
    /// logging costs). Default: unset, i.e. the production default `info`.
    #[arg(long)]
    data_plane_log: Option<String>,
    /// Concurrent open streams in the memory section.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Simulated data planes in the fanout section (default 1,000; 100 with --quick).
    #[arg(long)]
    fanout_subscribers: Option<usize>,
    /// Concurrent streams per row in the llm section (default 2,000; 200 with --quick).
    #[arg(long)]
    llm_streams: Option<usize>,
}

/// The effective settings after `--quick` and the defaults.
struct Settings {
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    stream_requests: usize,
    changes: usize,
    snapshot_endpoints: usize,
    snapshot_gateways: usize,
    snapshot_changes: usize,
    fanout: fanout::FanoutSettings,
    llm: llm::LlmSettings,
}

impl Settings {
    fn from(args: &Args) -> anyhow::Result<Settings> {
        let duration = args.duration.unwrap_or(if args.quick { 2.0 } else { 10.0 });
        anyhow::ensure!(duration > 0.0 && duration <= 120.0, "--duration must be in (0, 120]");
        let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
        anyhow::ensure!((1..=20).contains(&rounds), "--rounds must be 1–20");
        let changes = args.changes.unwrap_or(if args.quick { 5 } else { 30 });
        Ok(Settings {
            duration: Duration::from_secs_f64(duration),
            warmup: Duration::from_millis(if args.quick { 500 } else { 1000 }),
            rounds,
            stream_requests: if args.quick { 100 } else { 500 },
            changes,
            snapshot_endpoints: 10_000,
            snapshot_gateways: 1_000,
            snapshot_changes: 5,
            fanout: fanout::FanoutSettings::new(args.quick, args.fanout_subscribers, changes)?,
            llm: llm::LlmSettings::new(args.quick, args.llm_streams),
        })
    }

    fn describe(&self, args: &Args) -> String {
        format!(
            "{} round(s) × {} s per load run (1 warm-up of {} s per row per round); {} streams per row per round; {} open streams; {} data planes × {} changes; {} endpoints × {} changes",
            self.rounds,
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64(),
            self.stream_requests,
            report::thousands(args.streams),
            args.subscribers,
            self.changes,
            report::thousands(self.snapshot_endpoints),
            self.snapshot_changes
        )
    }
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// nproc, CPU, kernel, memory, tool versions, the commit.
fn machine(oha: &Path) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or("unknown".to_owned(), |k| format!("{:.1} GiB", k / 1024.0 / 1024.0));
    let unknown = || "unknown".to_owned();
    let mut m = vec![
        ("nproc".to_owned(), command_output("nproc", &[]).unwrap_or_else(unknown)),
        ("CPU".to_owned(), cpu),
        ("kernel".to_owned(), command_output("uname", &["-r"]).unwrap_or_else(unknown)),
        ("memory".to_owned(), mem),
        (
            "nginx".to_owned(),
            command_output("nginx", &["-v"])
                .map(|v| v.trim_start_matches("nginx version: ").to_owned())
                .unwrap_or_else(unknown),
        ),
        (
            "oha".to_owned(),
            command_output(&oha.display().to_string(), &["--version"])
                .map(|v| v.trim_start_matches("oha ").to_owned())
                .unwrap_or_else(unknown),
        ),
    ];
    if let Some(commit) = command_output("git", &["rev-parse", "--short", "HEAD"]) {
        m.push(("modelgw commit".to_owned(), commit));
    }
    m
}

/// Runs the selected sections; a failed section is reported and the others still run.
async fn run(args: &Args, results: &mut Results) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    let settings = match Settings::from(args) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let selected = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let dir = match tempfile::Builder::new().prefix("modelgw-bench-").tempdir() {
        Ok(d) => d,
        Err(e) => return vec![e.into()],
    };
    eprintln!("modelgw-bench: working in {}", dir.path().display());
    // Run a private copy: a rebuild of the shared target dir during the run cannot mix two
    // versions, and `pkill -f 'modelgw data-plane'` elsewhere on the machine misses ours.
    let bin = dir.path().join("modelgw-under-test");
    if let Err(e) = std::fs::copy(&args.modelgw, &bin) {
        return vec![anyhow::anyhow!("copying {}: {e}", args.modelgw.display())];
    }
    let args = &Args { modelgw: bin, ..args.clone() };

    if (selected(Section::Load)
        || selected(Section::Stream)
        || selected(Section::Memory)
        || selected(Section::Llm))
        && let Err(e) = traffic_sections(args, &settings, dir.path(), &selected, results).await
    {
        errors.push(e);
    }
    if selected(Section::Propagation) {
        eprintln!("propagation: {} data planes, {} changes", args.subscribers, settings.changes);
        match propagation::run(&args.modelgw, dir.path(), args.subscribers, settings.changes).await
        {
            Ok(p) => results.propagation = Some(p),
            Err(e) => errors.push(e.context("propagation section")),
        }
    }
    if selected(Section::Snapshot) {
        eprintln!(
            "snapshot: {} endpoints, {} gateways",
            settings.snapshot_endpoints, settings.snapshot_gateways
        );
        match snapshot::run(
            &args.modelgw,
            dir.path(),
            settings.snapshot_endpoints,
            settings.snapshot_gateways,
            settings.snapshot_changes,
        )
        .await
        {
            Ok(s) => results.snapshot = Some(s),
            Err(e) => errors.push(e.context("snapshot section")),
        }
    }
    if selected(Section::Console) {
        eprintln!("console: {} endpoints, {} gateways", CONSOLE_ENDPOINTS, CONSOLE_GATEWAYS);
        let fetches = if settings.rounds > 1 { 50 } else { 10 };
        match console::run(&args.modelgw, dir.path(), CONSOLE_ENDPOINTS, CONSOLE_GATEWAYS, fetches)
            .await
        {
            Ok(c) => results.console = Some(c),
            Err(e) => errors.push(e.context("console section")),
        }
    }
    if selected(Section::Flood) {
        eprintln!("flood: a {} MiB SSE event without a boundary", flood::FLOOD_BYTES >> 20);
        match flood::run(&args.modelgw, dir.path()).await {
            Ok(f) => results.flood = Some(f),
            Err(e) => errors.push(e.context("flood section")),
        }
    }
    if selected(Section::Fanout) {
        let f = settings.fanout;
        eprintln!(
            "fanout: {} simulated data planes, {} changes, {} fleet-health reports",
            f.subscribers, f.changes, f.health_reports
        );
        match fanout::run(&args.modelgw, dir.path(), f).await {
            Ok(r) => results.fanout = Some(r),
            Err(e) => errors.push(e.context("fanout section")),
        }
    }
    if !errors.is_empty() {
        // Keep the logs and configs for a look at what went wrong.
        let kept = dir.keep();
        eprintln!("modelgw-bench: logs kept in {}", kept.display());
    }
    errors
}

/// Load, stream, memory and llm: one fixture (regions, nginx, control plane, data plane).
async fn traffic_sections(
    args: &Args,
    settings: &Settings,
    dir: &Path,
    selected: &impl Fn(Section) -> bool,
    results: &mut Results,
) -> anyhow::Result<()> {
    eprintln!("starting the fake regions, nginx, the control plane and the data plane");
    let mut fx = Fixture::start(&args.modelgw, dir, args.data_plane_log.as_deref())
        .await
        .context("starting the fixture")?;
    let outcome = async {
        fx.wait_for_grants(Duration::from_secs(15)).await.context("waiting for budget grants")?;
        fx.check_rows().await.context("checking the rows")?;
        let mut memory = memory::MemoryResults::default();
        if selected(Section::Memory) {
            memory.idle_before_load = Some(memory::idle(&fx)?);
        }
        if selected(Section::Load) {
            eprintln!("load: {} round(s) × {} s", settings.rounds, settings.duration.as_secs_f64());
            results.load = Some(
                load::run(&mut fx, &args.oha, settings.rounds, settings.duration, settings.warmup)
                    .await
                    .context("load section")?,
            );
            if selected(Section::Memory) {
                memory.idle_after_load = Some(memory::idle(&fx)?);
            }
        }
        if selected(Section::Stream) {
            eprintln!("stream: {} requests per row per round", settings.stream_requests);
            results.stream = Some(
                stream::run(&fx, settings.rounds, settings.stream_requests)
                    .await
                    .context("stream section")?,
            );
        }
        if selected(Section::Memory) {
            for row in [Row::Gateway, Row::Nginx] {
                eprintln!("memory: {} open streams through {}", args.streams, row.name());
                let cost = memory::stream_cost(&fx, row, args.streams)
                    .await
                    .with_context(|| format!("memory section ({})", row.name()))?;
                eprintln!(
                    "  {}: {} KiB before, {} KiB with the streams open → {:.1} KiB per stream",
                    row.name(),
                    cost.before_kib,
                    cost.open_kib,
                    cost.per_stream_kib()
                );
                memory.streams.push(cost);
                // Let the dropped streams close before the next measurement.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            results.memory = Some(memory);
        }
        if selected(Section::Llm) {
            eprintln!("llm: {} concurrent streams per row", settings.llm.streams);
            let (llm, outcome) = llm::run(&fx, &settings.llm).await;
            results.llm = Some(llm);
            outcome.context("llm section")?;
        }
        fx.ensure_running()
    }
    .await;
    fx.stop().await;
    outcome
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    modelgw_e2e::init();
    let args = Args::parse();
    let command = std::env::var("MODELGW_BENCH_COMMAND")
        .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    let started = chrono::Utc::now();
    let mut results = Results::default();
    let errors = tokio::select! {
        r = tokio::time::timeout(MAX_RUN, run(&args, &mut results)) => match r {
            Ok(errors) => errors,
            Err(_) => vec![anyhow::anyhow!("the run took longer than {MAX_RUN:?} and was stopped")],
        },
        () = interrupted() => {
            // Dropping the run stops every child process (kill_on_drop + explicit SIGTERM).
            eprintln!("modelgw-bench: interrupted; child processes stopped");
            return ExitCode::from(130);
        }
    };
    let mut settings = Settings::from(&args).map(|s| s.describe(&args)).unwrap_or_default();
    if let Some(filter) = &args.data_plane_log {
        settings
            .push_str(&format!("; NOT the production default: data-plane log filter `{filter}`"));
    }
    let info = RunInfo {
        date_utc: started.format("%Y-%m-%d %H:%M UTC").to_string(),
        command,
        machine: machine(&args.oha),
        settings,
    };
    let block = report::render(&info, &results);
    #[allow(clippy::print_stdout, reason = "the report is the benchmark's output")]
    {
        println!("{block}");
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("modelgw-bench: FAILED: {e:#}");
        }
        if args.report.is_some() && !args.no_report {
            eprintln!("modelgw-bench: the report file was not updated");
        }
        return ExitCode::FAILURE;
    }
    if let Some(path) = args.report.as_ref().filter(|_| !args.no_report) {
        if let Err(e) = report::write_report(path, &block) {
            eprintln!("modelgw-bench: {e:#}");
            return ExitCode::FAILURE;
        }
        eprintln!("modelgw-bench: results written to {}", path.display());
    }
    ExitCode::SUCCESS
}
