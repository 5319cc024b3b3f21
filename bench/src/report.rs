//! The report: a TARGETS table (each goal with measured value, baseline, ratio and whether
//! it is met), then the detailed tables, as markdown. Printed to stdout and, with `--report`,
//! written between `<!-- bench:begin -->` and `<!-- bench:end -->` in a file, leaving
//! everything outside the markers untouched.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::console::ConsoleResults;
use crate::fanout::FanoutResults;
use crate::fixture::Row;
use crate::flood::{FloodResults, p50_p99};
use crate::llm::LlmResults;
use crate::load::{LoadResults, Scenario};
use crate::memory::MemoryResults;
use crate::propagation::PropagationResults;
use crate::snapshot::SnapshotResults;
use crate::stats::{fmt_opt_secs, fmt_secs, max, median, percentile, sig3};
use crate::stream::StreamResults;

pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";

/// Everything measured (sections not run are `None`).
#[derive(Default)]
pub struct Results {
    pub load: Option<LoadResults>,
    pub stream: Option<StreamResults>,
    pub memory: Option<MemoryResults>,
    pub propagation: Option<PropagationResults>,
    pub snapshot: Option<SnapshotResults>,
    pub console: Option<ConsoleResults>,
    pub flood: Option<FloodResults>,
    pub fanout: Option<FanoutResults>,
    pub llm: Option<LlmResults>,
}

/// Where and how the run happened.
pub struct RunInfo {
    pub date_utc: String,
    pub command: String,
    pub machine: Vec<(String, String)>,
    pub settings: String,
}

/// A goal: the measured value must be at least / at most `limit`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    /// `None` when there is nothing to judge.
    pub fn met(self, value: Option<f64>) -> Option<bool> {
        let v = value.filter(|v| v.is_finite())?;
        Some(match self {
            Goal::AtLeast(l) => v >= l,
            Goal::AtMost(l) => v <= l,
        })
    }

    fn show(self, unit: &str) -> String {
        match self {
            Goal::AtLeast(l) => format!("≥ {l}{unit}"),
            Goal::AtMost(l) => format!("≤ {l}{unit}"),
        }
    }
}

/// measured / baseline; `None` unless both exist and the baseline is positive (a ratio to a
/// zero or negative added latency means nothing). A negative measured value (an added
/// latency lost in the noise) counts as 0.
pub fn ratio(measured: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (measured, baseline) {
        (Some(m), Some(b)) if b > 0.0 && m.is_finite() => Some(m.max(0.0) / b),
        _ => None,
    }
}

/// One line of the TARGETS table.
pub struct TargetLine {
    pub metric: String,
    pub measured: String,
    pub baseline: String,
    pub ratio: Option<f64>,
    pub goal: String,
    pub met: Option<bool>,
}

fn met_cell(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "n/a",
    }
}

fn mib(kib: u64) -> String {
    format!("{} MiB", sig3(kib as f64 / 1024.0))
}

fn kib(k: f64) -> String {
    format!("{} KiB", sig3(k))
}

fn rps(r: Option<f64>) -> String {
    r.map_or_else(|| "—".into(), |r| format!("{r:.0} req/s"))
}

/// A gateway/nginx comparison where the ratio is judged.
fn compared(
    metric: &str,
    gw: Option<f64>,
    nginx: Option<f64>,
    goal: Goal,
    fmt: fn(Option<f64>) -> String,
) -> TargetLine {
    let r = ratio(gw, nginx);
    TargetLine {
        metric: metric.into(),
        measured: fmt(gw),
        baseline: format!("nginx {}", fmt(nginx)),
        ratio: r,
        goal: goal.show(" × nginx"),
        met: goal.met(r),
    }
}

/// The TARGETS table's lines, from what was measured.
pub fn targets(r: &Results) -> Vec<TargetLine> {
    let mut lines = Vec::new();
    if let Some(load) = &r.load {
        // Issue #17: the plain proxy row against nginx, and everything on against nginx's
        // plain proxy.
        let (plain, ng) = (load.summary(Row::Plain), load.summary(Row::Nginx));
        lines.push(compared(
            "throughput, 64 conns (gateway, plain)",
            plain.rps,
            ng.rps,
            Goal::AtLeast(0.9),
            rps,
        ));
        lines.push(compared(
            "CPU time per request, 64 conns (gateway, plain)",
            plain.cpu_per_req,
            ng.cpu_per_req,
            Goal::AtMost(1.3),
            fmt_opt_secs,
        ));
        lines.push(compared(
            "added p99 over the floor, 8 conns (gateway, plain)",
            plain.added_p99_8,
            ng.added_p99_8,
            Goal::AtMost(1.3),
            fmt_opt_secs,
        ));
        lines.push(compared(
            "added p99 over the floor, 1000 req/s (gateway, plain)",
            plain.added_p99_fixed,
            ng.added_p99_fixed,
            Goal::AtMost(1.3),
            fmt_opt_secs,
        ));
        let all = load.summary(Row::Gateway);
        lines.push(compared(
            "CPU time per request, 64 conns (gateway, everything on)",
            all.cpu_per_req,
            ng.cpu_per_req,
            Goal::AtMost(1.6),
            fmt_opt_secs,
        ));
        for row in Row::FEATURES {
            let Some((base, feature)) = row.adds() else { continue };
            let cost = load.feature_cost(row);
            lines.push(TargetLine {
                metric: format!("own cost of {feature}, CPU per request"),
                measured: fmt_opt_secs(cost),
                baseline: format!("{} − {}", row.name(), base.name()),
                ratio: None,
                goal: "stated".into(),
                met: cost.map(|_| true),
            });
        }
    }
    if let Some(mem) = &r.memory {
        if let Some(idle) = mem.idle_before_load {
            let goal = Goal::AtMost(30.0);
            lines.push(TargetLine {
                metric: "data-plane RSS idle (configured, before load)".into(),
                measured: mib(idle.gateway_kib),
                baseline: format!("nginx {}", mib(idle.nginx_kib)),
                ratio: None,
                goal: goal.show(" MiB"),
                met: goal.met(Some(idle.gateway_kib as f64 / 1024.0)),
            });
        }
        let cost = |row| mem.streams.iter().find(|s| s.row == row).map(|s| s.per_stream_kib());
        if let Some(gw) = cost(Row::Gateway) {
            let goal = Goal::AtMost(64.0);
            lines.push(TargetLine {
                metric: "memory per open stream (1,000 streams)".into(),
                measured: kib(gw),
                baseline: cost(Row::Nginx).map_or("—".into(), |n| format!("nginx {}", kib(n))),
                ratio: None,
                goal: goal.show(" KiB"),
                met: goal.met(Some(gw)),
            });
        }
    }
    if let Some(l) = &r.llm {
        llm_targets(&mut lines, l);
    }
    if let Some(p) = &r.propagation {
        let goal = Goal::AtMost(0.100);
        let v = p.all_applied_p99();
        lines.push(TargetLine {
            metric: format!("config change applied on all {} subscribers, p99", p.subscribers),
            measured: fmt_opt_secs(v),
            baseline: "—".into(),
            ratio: None,
            goal: "≤ 100 ms".into(),
            met: goal.met(v),
        });
    }
    if let Some(f) = &r.fanout {
        let goal = Goal::AtMost(0.250);
        let v = f.all_applied_p99();
        lines.push(TargetLine {
            metric: format!(
                "config change applied on all {} simulated subscribers, p99",
                thousands(f.subscribers)
            ),
            measured: fmt_opt_secs(v),
            baseline: format!("p50 {}", fmt_opt_secs(percentile(&f.all_applied(), 0.5))),
            ratio: None,
            goal: "≤ 250 ms".into(),
            met: goal.met(v),
        });
        let all = f.fleet_all_received();
        lines.push(TargetLine {
            metric: format!(
                "fleet-health change received by all {} simulated subscribers, p99",
                thousands(f.subscribers)
            ),
            measured: fmt_opt_secs(percentile(&all, 0.99)),
            baseline: format!("p50 {}", fmt_opt_secs(percentile(&all, 0.5))),
            ratio: None,
            goal: "— (none set)".into(),
            met: None,
        });
    }
    if let Some(s) = &r.snapshot {
        let goal = Goal::AtMost(0.050);
        let applies: Vec<f64> = s.changes.iter().map(|c| c.apply_us as f64 / 1e6).collect();
        let v = max(&applies);
        lines.push(TargetLine {
            metric: format!(
                "{}-endpoint snapshot compiled and swapped (apply_us, max of {})",
                thousands(s.endpoints),
                s.changes.len()
            ),
            measured: fmt_opt_secs(v),
            baseline: format!("p50 {}", fmt_opt_secs(median(&applies))),
            ratio: None,
            goal: "≤ 50 ms".into(),
            met: goal.met(v),
        });
    }
    lines
}

pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A compact per-round list: `a / b / c`.
fn rounds(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    if values.is_empty() {
        return "—".into();
    }
    values.iter().map(|v| fmt(*v)).collect::<Vec<_>>().join("; ")
}

/// The whole generated block (without the markers).
pub fn render(ctx: &RunInfo, r: &Results) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "Generated {} by `{}`.\n", ctx.date_utc, ctx.command);
    let _ = writeln!(
        w,
        "Machine: {}.\n",
        ctx.machine.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join("; ")
    );
    let _ = writeln!(w, "Settings: {}.\n", ctx.settings);

    let _ = writeln!(w, "### Targets\n");
    let _ = writeln!(w, "| metric | measured | baseline | ratio | target | met |");
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    for t in targets(r) {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            t.metric,
            t.measured,
            t.baseline,
            t.ratio.map_or("—".into(), |x| format!("{x:.2}")),
            t.goal,
            met_cell(t.met)
        );
    }
    let _ = writeln!(w);
    if let Some(load) = &r.load {
        load_tables(w, load);
    }
    if let Some(st) = &r.stream {
        stream_table(w, st);
    }
    if let Some(m) = &r.memory {
        memory_table(w, m);
    }
    if let Some(p) = &r.propagation {
        propagation_table(w, p);
    }
    if let Some(f) = &r.fanout {
        fanout_table(w, f);
    }
    if let Some(sn) = &r.snapshot {
        snapshot_table(w, sn);
    }
    if let Some(c) = &r.console {
        console_table(w, c);
    }
    if let Some(f) = &r.flood {
        flood_table(w, f);
    }
    if let Some(l) = &r.llm {
        llm_table(w, l);
    }
    s
}

/// The llm section's lines of the TARGETS table (issue #17's LLM-shaped load targets).
fn llm_targets(lines: &mut Vec<TargetLine>, l: &LlmResults) {
    let (gw, ng) = (l.row(Row::Gateway), l.row(Row::Nginx));
    let n = thousands(l.streams);
    lines.push(compared(
        &format!("LLM load: CPU per relayed chunk ({n} streams)"),
        gw.and_then(|r| r.cpu_per_chunk()),
        ng.and_then(|r| r.cpu_per_chunk()),
        Goal::AtMost(1.5),
        fmt_opt_secs,
    ));
    let per_stream = |r: Option<&crate::llm::LlmRow>| r.and_then(|r| r.kib_per_stream(l.streams));
    let goal = Goal::AtMost(24.0);
    lines.push(TargetLine {
        metric: format!("LLM load: memory per open stream ({n} streams)"),
        measured: per_stream(gw).map_or("—".into(), kib),
        baseline: format!("nginx {}", per_stream(ng).map_or("—".into(), kib)),
        ratio: None,
        goal: goal.show(" KiB"),
        met: goal.met(per_stream(gw)),
    });
    for (metric, f) in [
        (
            "LLM load: added time to first token, p99",
            (|r: &crate::llm::LlmRow| r.ttft.map(|d| d.p99))
                as fn(&crate::llm::LlmRow) -> Option<f64>,
        ),
        ("LLM load: added chunk forwarding delay, p99", |r| r.delay.map(|d| d.p99)),
    ] {
        let goal = Goal::AtMost(0.001);
        let v = l.added(Row::Gateway, f);
        lines.push(TargetLine {
            metric: metric.into(),
            measured: fmt_opt_secs(v),
            baseline: format!("nginx {}", fmt_opt_secs(l.added(Row::Nginx, f))),
            ratio: None,
            goal: "≤ 1 ms".into(),
            met: goal.met(v),
        });
    }
}

fn llm_table(w: &mut String, l: &LlmResults) {
    let shape = &l.shape;
    let _ = writeln!(
        w,
        "### LLM-shaped load ({} concurrent streams per row, each on its own HTTP/1.1 connection, opened over {}; first chunk after {}, then {} chunks {}–{} apart, a usage chunk and `[DONE]`; rows one after another)\n",
        thousands(l.streams),
        fmt_secs(l.ramp.as_secs_f64()),
        fmt_secs(shape.first_delay.as_secs_f64()),
        shape.chunks,
        fmt_secs(shape.gap_min.as_secs_f64()),
        fmt_secs(shape.gap_max.as_secs_f64()),
    );
    let _ = writeln!(
        w,
        "| row | streams ok / failed | chunks delivered | CPU per chunk | RSS before → all open | per open stream | TTFT p50 / p99 | added TTFT p50 / p99 | chunk delay p50 / p99 / max | added delay p50 / p99 | jitter p99 (added) | CPU use: bench + proxy / machine |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &l.rows {
        let direct = r.row == Row::Floor;
        let added = |f: fn(&crate::llm::LlmRow) -> Option<f64>| {
            if direct { "—".to_owned() } else { fmt_opt_secs(l.added(r.row, f)) }
        };
        let _ = writeln!(
            w,
            "| {} | {} / {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} / {} | {} / {} | {} ({}) | {} cores / {} |",
            if direct { "direct" } else { r.row.name() },
            thousands(r.completed),
            r.failed,
            thousands(usize::try_from(r.events).unwrap_or(usize::MAX)),
            fmt_opt_secs(r.cpu_per_chunk()),
            match (r.rss_before_kib, r.rss_open_kib) {
                (Some(b), Some(o)) => format!("{} → {}", mib(b), mib(o)),
                _ => "—".into(),
            },
            r.kib_per_stream(l.streams).map_or("—".into(), kib),
            fmt_opt_secs(r.ttft.map(|d| d.p50)),
            fmt_opt_secs(r.ttft.map(|d| d.p99)),
            added(|r| r.ttft.map(|d| d.p50)),
            added(|r| r.ttft.map(|d| d.p99)),
            fmt_opt_secs(r.delay.map(|d| d.p50)),
            fmt_opt_secs(r.delay.map(|d| d.p99)),
            fmt_opt_secs(r.delay.map(|d| d.max)),
            added(|r| r.delay.map(|d| d.p50)),
            added(|r| r.delay.map(|d| d.p99)),
            fmt_opt_secs(r.jitter.map(|d| d.p99)),
            added(|r| r.jitter.map(|d| d.p99)),
            r.cores_used().map_or("—".into(), |c| format!("{c:.2}")),
            r.machine_busy.map_or("—".into(), |b| format!("{:.0} %", b * 100.0)),
        );
    }
    let limited = if l.streams < l.requested {
        format!(
            " {} streams were asked for; the open-file limit ({}) holds {}.",
            thousands(l.requested),
            l.fd_limit,
            thousands(l.streams)
        )
    } else {
        format!(" Open-file limit {} (enough for the streams asked for).", l.fd_limit)
    };
    let _ = writeln!(
        w,
        "\nCPU per chunk: the proxy's CPU time over the row ÷ chunks delivered. Per open stream: (RSS with every stream open and none ended, max of 5 samples − RSS before) ÷ streams. TTFT: connect → first chunk read; *added* = the row's percentile − the direct row's. Chunk delay: client read time − the fake model's send stamp in the chunk (same clock, same process); jitter: |read gap − send gap| of consecutive chunks. CPU use: the bench process (client and fake model) and the proxy, in cores, over the row's wall time; machine: the share of all cores busy (/proc/stat), other work included.{limited}\n"
    );
}

fn console_table(w: &mut String, c: &ConsoleResults) {
    let _ = writeln!(
        w,
        "### Admin Console pages ({} endpoints, {} gateways × 10 members; {} fetches per page after one warm-up, signed in, one keep-alive connection)\n",
        thousands(c.endpoints),
        thousands(c.gateways),
        c.fetches
    );
    let _ = writeln!(w, "| page | shows | p50 | p95 | max | size |");
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    for p in &c.pages {
        let _ = writeln!(
            w,
            "| `{}` | {} | {} | {} | {} | {} KiB |",
            p.path,
            p.what,
            fmt_opt_secs(percentile(&p.secs, 0.5)),
            fmt_opt_secs(percentile(&p.secs, 0.95)),
            fmt_opt_secs(max(&p.secs)),
            sig3(p.bytes as f64 / 1024.0)
        );
    }
    let _ = writeln!(w);
}

fn flood_table(w: &mut String, f: &FloodResults) {
    let _ = writeln!(
        w,
        "### A {} MiB SSE event without a boundary (one serving thread; chats sequential on their own connection)\n",
        crate::flood::FLOOD_BYTES >> 20
    );
    let _ = writeln!(
        w,
        "CPU and peak RSS of the data plane from `/proc` over floods alone; time = request sent → SSE error event at the client. Chats: p50 / p99 without a flood, then while floods run back to back.\n"
    );
    let _ = writeln!(
        w,
        "| event cap | CPU / flood, schedstat (utime+stime) | peak RSS before → after | to the error event, median (max) | most bytes a client got | chats p50 / p99, no flood | chats p50 / p99, during floods | floods / chats during | failed chats |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|");
    for c in &f.cases {
        let (b50, b99) = p50_p99(&c.baseline);
        let (d50, d99) = p50_p99(&c.during);
        let to_error = if c.without_error_event > 0 {
            format!("{} without an error event", c.without_error_event)
        } else {
            format!("{} ({})", fmt_opt_secs(median(&c.to_error)), fmt_opt_secs(max(&c.to_error)))
        };
        let _ = writeln!(
            w,
            "| {} | {} ({}) | {} → {} | {} | {} | {} / {} | {} / {} | {} / {} | {} |",
            c.cap_label(),
            fmt_secs(c.cpu_per_flood),
            fmt_secs(c.cpu_ticks_per_flood),
            mib(c.hwm_before_kib),
            mib(c.hwm_after_kib),
            to_error,
            kib(c.max_flood_bytes as f64 / 1024.0),
            fmt_opt_secs(b50),
            fmt_opt_secs(b99),
            fmt_opt_secs(d50),
            fmt_opt_secs(d99),
            c.floods_during,
            c.during.len(),
            c.chat_failures,
        );
    }
    let _ = writeln!(w);
}

fn load_tables(w: &mut String, load: &LoadResults) {
    let _ = writeln!(
        w,
        "### Load (oha, HTTP/1.1 keep-alive, {}-byte POST → 653-byte answer; median of {} round(s) × {} s per run)\n",
        crate::fixture::REQUEST_BODY.len(),
        load.rounds,
        load.duration.as_secs_f64()
    );
    let _ = writeln!(
        w,
        "Added = row − floor in the same round, then the median. CPU = utime+stime of the row's processes during the 64-connection run ÷ requests (floor: the fake region itself); at 1,000 req/s the threads' run time from `schedstat` ÷ requests. The rows `plain + …` add one feature each to the row named and run at 64 connections only.\n"
    );
    let _ = writeln!(
        w,
        "| row | req/s, 64 conns | CPU / req | CPU / req, 1000 req/s | p50, 8 conns | p99, 8 conns | added p50 / p99, 8 conns | p50, 1000 req/s | p99, 1000 req/s | added p50 / p99, 1000 req/s |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
    for row in Row::ALL {
        let s = load.summary(row);
        let added = |a: Option<f64>, b: Option<f64>| {
            if row == Row::Floor {
                "—".into()
            } else {
                format!("{} / {}", fmt_opt_secs(a), fmt_opt_secs(b))
            }
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name(),
            rps(s.rps),
            fmt_opt_secs(s.cpu_per_req),
            fmt_opt_secs(s.cpu_per_req_fixed),
            fmt_opt_secs(s.p50_8),
            fmt_opt_secs(s.p99_8),
            added(s.added_p50_8, s.added_p99_8),
            fmt_opt_secs(s.p50_fixed),
            fmt_opt_secs(s.p99_fixed),
            added(s.added_p50_fixed, s.added_p99_fixed),
        );
    }
    let _ = writeln!(
        w,
        "\nAt 1,000 req/s the machine idles between requests, so those percentiles carry the wake-up and scheduling jitter of the machine, which hits every row (the floor too): read the fixed-rate p99 together with its spread over the rounds below."
    );
    features_paragraph(w, load);
    let _ = writeln!(w, "\nEach round, in order (round 1; round 2; …):\n");
    let _ = writeln!(
        w,
        "| row | req/s, 64 conns | CPU / req | p50 / p99, 8 conns | p50 / p99, 1000 req/s |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|");
    for row in Row::ALL {
        let pairs = |sc: Scenario| {
            let p50 = load.per_round(row, sc, |r| r.result.p50);
            let p99 = load.per_round(row, sc, |r| r.result.p99);
            if p50.is_empty() {
                return "—".to_owned();
            }
            p50.iter()
                .zip(&p99)
                .map(|(a, b)| format!("{} / {}", fmt_secs(*a), fmt_secs(*b)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} |",
            row.name(),
            rounds(&load.per_round(row, Scenario::Throughput, |r| r.result.rps), |v| format!(
                "{v:.0}"
            )),
            rounds(
                &load.per_round(row, Scenario::Throughput, |r| r.cpu_per_req.unwrap_or(f64::NAN)),
                fmt_secs
            ),
            pairs(Scenario::Conns8),
            pairs(Scenario::FixedRate),
        );
    }
    let _ = writeln!(w);
}

/// What each optional feature costs on its own (its row minus the row it adds to, per round,
/// then the median), and what the key limits and traces did.
fn features_paragraph(w: &mut String, load: &LoadResults) {
    if Row::FEATURES.iter().all(|r| load.summary(*r).cpu_per_req.is_none()) {
        return;
    }
    let _ = writeln!(
        w,
        "\n**Each optional feature's own cost** (64 connections; CPU per request of the row minus the row it adds to, in the same round, then the median):\n"
    );
    let _ = writeln!(w, "| feature | row | CPU / req | minus | own cost per round | own cost |");
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    let mut sum = 0.0;
    for row in Row::FEATURES {
        let Some((base, feature)) = row.adds() else { continue };
        let per_round = load.feature_cost_per_round(row);
        let cost = median(&per_round);
        sum += cost.unwrap_or(0.0);
        let _ = writeln!(
            w,
            "| {feature} | {} | {} | {} ({}) | {} | {} |",
            row.name(),
            fmt_opt_secs(load.summary(row).cpu_per_req),
            base.name(),
            fmt_opt_secs(load.summary(base).cpu_per_req),
            rounds(&per_round, fmt_signed_secs),
            cost.map_or("—".into(), fmt_signed_secs),
        );
    }
    let whole = median(&load.cost_per_round(Row::Gateway, Row::Plain));
    let _ = writeln!(
        w,
        "\nEverything on minus plain: {} per request (median per round); the four features' own costs add up to {}.",
        whole.map_or("—".into(), fmt_signed_secs),
        fmt_signed_secs(sum),
    );
    let (all, plain) = (load.summary(Row::Gateway), load.summary(Row::Plain));
    let _ = writeln!(
        w,
        "The control plane's CPU per request (it stores the traces and takes every row's usage reports): {} everything on vs {} plain at 64 connections, {} vs {} at 1,000 req/s.",
        fmt_opt_secs(all.control_plane_cpu_per_req),
        fmt_opt_secs(plain.control_plane_cpu_per_req),
        fmt_opt_secs(all.control_plane_cpu_per_req_fixed),
        fmt_opt_secs(plain.control_plane_cpu_per_req_fixed),
    );
    let dropped = |s: Scenario| -> (u64, u64) {
        load.runs
            .iter()
            .filter(|r| r.row.traced() && r.scenario == s)
            .fold((0, 0), |(d, n), r| (d + r.traces_dropped.unwrap_or(0), n + r.result.completed()))
    };
    let share = |(d, n): (u64, u64)| {
        if n == 0 { "—".into() } else { format!("{:.1} %", d as f64 * 100.0 / n as f64) }
    };
    let _ = writeln!(
        w,
        "Traces dropped by the data planes' full queues (each ships at most 10 batches of 500 a second): {} of the traced rows' 64-connection requests, {} at 8 connections, {} at 1,000 req/s.",
        share(dropped(Scenario::Throughput)),
        share(dropped(Scenario::Conns8)),
        share(dropped(Scenario::FixedRate)),
    );
    if let Some(k) = &load.keyed {
        let _ = writeln!(
            w,
            "Over the section: {} requests with limits or traces, {} admitted fail-open (without a grant), {} refused; the control plane received {} traces, stored {}, dropped {}.",
            k.requests,
            k.fail_open,
            k.refused,
            k.traces_received,
            k.traces_stored,
            k.traces_dropped_by_control_plane
        );
    }
}

/// Seconds with a sign (a feature's cost can be lost in the noise).
fn fmt_signed_secs(v: f64) -> String {
    if v < 0.0 { format!("−{}", fmt_secs(-v)) } else { fmt_secs(v) }
}

fn stream_table(w: &mut String, st: &StreamResults) {
    let n_rounds = st.rounds.iter().map(|(n, _, _)| *n).max().unwrap_or(0);
    let _ = writeln!(
        w,
        "### Streaming: time to first chunk (3-frame SSE, one keep-alive connection, {} sequential requests per row per round, median of {n_rounds} round(s))\n",
        st.requests_per_round
    );
    let _ = writeln!(
        w,
        "| row | TTFB p50 | TTFB p99 | added p50 / p99 vs direct | total p50 | total p99 |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    for row in Row::MAIN {
        let added = if row == Row::Floor {
            "—".into()
        } else {
            format!(
                "{} / {}",
                fmt_opt_secs(st.added(row, |s| s.ttfb_p50)),
                fmt_opt_secs(st.added(row, |s| s.ttfb_p99))
            )
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            if row == Row::Floor { "direct" } else { row.name() },
            fmt_opt_secs(st.median(row, |s| s.ttfb_p50)),
            fmt_opt_secs(st.median(row, |s| s.ttfb_p99)),
            added,
            fmt_opt_secs(st.median(row, |s| s.total_p50)),
            fmt_opt_secs(st.median(row, |s| s.total_p99)),
        );
    }
    let _ = writeln!(w);
}

fn memory_table(w: &mut String, m: &MemoryResults) {
    let _ = writeln!(w, "### Memory (RSS; nginx = master + workers)\n");
    let _ = writeln!(
        w,
        "| proxy | idle, configured | idle after load | before streams | 1,000 open streams | per stream |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    for row in [Row::Gateway, Row::Nginx] {
        let pick =
            |i: &crate::memory::Idle| if row == Row::Gateway { i.gateway_kib } else { i.nginx_kib };
        let cost = m.streams.iter().find(|s| s.row == row);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            if row == Row::Gateway { "gateway (data plane)" } else { "nginx" },
            m.idle_before_load.as_ref().map_or("—".into(), |i| mib(pick(i))),
            m.idle_after_load.as_ref().map_or("—".into(), |i| mib(pick(i))),
            cost.map_or("—".into(), |c| mib(c.before_kib)),
            cost.map_or("—".into(), |c| mib(c.open_kib)),
            cost.map_or("—".into(), |c| kib(c.per_stream_kib())),
        );
    }
    let _ = writeln!(w);
}

fn propagation_table(w: &mut String, p: &PropagationResults) {
    let per = p.per_subscriber();
    let all = p.all_applied();
    let _ = writeln!(
        w,
        "### Propagation ({} data planes, {} changes one at a time; admin PATCH → each data plane's `snapshot applied` log line read by the bench)\n",
        p.subscribers,
        p.changes.len()
    );
    let _ = writeln!(w, "| | p50 | p99 | max |");
    let _ = writeln!(w, "|---|---|---|---|");
    let _ = writeln!(
        w,
        "| per subscriber | {} | {} | {} |",
        fmt_opt_secs(percentile(&per, 0.5)),
        fmt_opt_secs(percentile(&per, 0.99)),
        fmt_opt_secs(max(&per))
    );
    let _ = writeln!(
        w,
        "| all applied (slowest of {}) | {} | {} | {} |",
        p.subscribers,
        fmt_opt_secs(percentile(&all, 0.5)),
        fmt_opt_secs(percentile(&all, 0.99)),
        fmt_opt_secs(max(&all))
    );
    let _ = writeln!(
        w,
        "\nStarting the {} data planes and applying the first configuration took {:.1} s. `/api/v1/status` listed all of them connected on the last version.\n",
        p.subscribers,
        p.startup.as_secs_f64()
    );
}

fn fanout_table(w: &mut String, f: &FanoutResults) {
    let row = |w: &mut String, name: &str, v: &[f64]| {
        let _ = writeln!(
            w,
            "| {name} | {} | {} | {} |",
            fmt_opt_secs(percentile(v, 0.5)),
            fmt_opt_secs(percentile(v, 0.99)),
            fmt_opt_secs(max(v))
        );
    };
    let n = thousands(f.subscribers);
    let throttled = f.fleet.iter().filter(|p| p.throttled).count();
    let _ = writeln!(
        w,
        "### Fan-out ({n} simulated data planes in the benchmark process, mTLS gRPC, one certificate per node id; {} changes one at a time and {} fleet-health changes: admin PATCH or health report → each subscriber's decode)\n",
        f.changes.len(),
        f.fleet.len()
    );
    let _ = writeln!(w, "| | p50 | p99 | max |");
    let _ = writeln!(w, "|---|---|---|---|");
    row(w, "config change, per subscriber", &f.per_subscriber());
    row(w, &format!("config change, all applied (slowest of {n})"), &f.all_applied());
    row(w, "fleet health, per subscriber", &f.fleet_per_subscriber());
    row(w, &format!("fleet health, all received (slowest of {n})"), &f.fleet_all_received());
    let _ = writeln!(
        w,
        "\nFleet health: one subscriber reported the endpoint throttled ({throttled}×) and healthy again ({}×), alternating; the control plane merged the reports and pushed `FleetHealth` to every stream. Control plane per change: {} CPU (ACKs, logs and the benchmark's metric polls included); RSS {} configured with no data plane, {} with {n} connected ({} KiB per data plane). The simulator (this process) per change: {} CPU; RSS {}. Issuing {n} client certificates took {}; connecting them ({} at a time) and applying the first configuration {}.\n",
        f.fleet.len() - throttled,
        fmt_secs(f.cp_cpu_per_change.as_secs_f64()),
        mib(f.cp_rss_idle_kib),
        mib(f.cp_rss_connected_kib),
        sig3(f.cp_rss_per_subscriber_kib()),
        fmt_secs(f.bench_cpu_per_change.as_secs_f64()),
        mib(f.bench_rss_kib),
        fmt_secs(f.certificates.as_secs_f64()),
        crate::fanout::RAMP_BATCH,
        fmt_secs(f.startup.as_secs_f64())
    );
}

fn snapshot_table(w: &mut String, s: &SnapshotResults) {
    let col =
        |f: fn(&crate::snapshot::Change) -> f64| -> Vec<f64> { s.changes.iter().map(f).collect() };
    let e2e = col(|c| c.e2e.as_secs_f64());
    let build = col(|c| c.build_us as f64 / 1e6);
    let apply = col(|c| c.apply_us as f64 / 1e6);
    let rest = col(|c| c.rest().as_secs_f64());
    let cp_cpu = col(|c| c.cp_cpu.as_secs_f64());
    let bytes = col(|c| c.bytes as f64);
    let _ = writeln!(
        w,
        "### Snapshot at scale ({} endpoints, {} gateways × {} members, one key each; {} changes)\n",
        thousands(s.endpoints),
        thousands(s.gateways),
        s.members_per_gateway,
        s.changes.len()
    );
    let _ = writeln!(w, "| per change | p50 | max |");
    let _ = writeln!(w, "|---|---|---|");
    for (name, v) in [
        ("end to end (admin call → data plane applied)", &e2e),
        ("control plane build (`build_us`: store load + validate + encode once)", &build),
        ("control-plane CPU per change (admin call → 200 ms after applied)", &cp_cpu),
        ("data plane apply (`apply_us`: validate + compile + swap)", &apply),
        ("send + decode + admin call ≈ e2e − build − apply", &rest),
    ] {
        let _ = writeln!(w, "| {name} | {} | {} |", fmt_opt_secs(median(v)), fmt_opt_secs(max(v)));
    }
    let _ = writeln!(
        w,
        "| snapshot size | {} | {} |",
        median(&bytes).map_or("—".into(), |b| format!("{} KiB", sig3(b / 1024.0))),
        max(&bytes).map_or("—".into(), |b| format!("{} KiB", sig3(b / 1024.0))),
    );
    let _ = writeln!(
        w,
        "\nInitial snapshot at control-plane start: build {}, apply {}. Populated in-process through the store library: {} endpoints in {:.1} s ({}); {} gateways and keys with `create_gateway` / `create_gateway_key` (one transaction each) in {:.1} s.\n",
        fmt_secs(s.initial_build_us as f64 / 1e6),
        fmt_secs(s.initial_apply_us as f64 / 1e6),
        thousands(s.endpoints),
        s.populate_endpoints.as_secs_f64(),
        match (s.populated.per_row, s.populated.batched) {
            (n, 0) => format!("{} × `create_endpoint`, one transaction each", thousands(n)),
            (0, b) => format!("{} in one transaction via `import_azure_endpoints`", thousands(b)),
            (n, b) => format!(
                "{} × `create_endpoint`, then the rest ({}) in one transaction via `import_azure_endpoints` as per-row inserts were too slow",
                thousands(n),
                thousands(b)
            ),
        },
        thousands(s.gateways),
        s.populate_gateways.as_secs_f64()
    );
}

/// `existing` with the text between the markers replaced by `block`; markers are appended
/// when missing. Text outside the markers is kept byte for byte.
pub fn replace_block(existing: &str, block: &str) -> String {
    let inner = format!("{BEGIN}\n{}\n{END}", block.trim_end_matches('\n'));
    if let Some(b) = existing.find(BEGIN)
        && let Some(e) = existing[b..].find(END).map(|e| b + e)
    {
        return format!("{}{inner}{}", &existing[..b], &existing[e + END.len()..]);
    }
    let sep = if existing.is_empty() || existing.ends_with("\n\n") {
        ""
    } else if existing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    format!("{existing}{sep}{inner}\n")
}

/// Writes `block` into `path` between the markers (creating the file with just the markers
/// when missing).
pub fn write_report(path: &Path, block: &str) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!("{BEGIN}\n{END}\n"),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    std::fs::write(path, replace_block(&existing, block))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_between_the_markers_is_replaced_and_the_rest_kept() {
        let doc = "# Benchmarks\n\nIntro.\n\n<!-- bench:begin -->\nold\nresults\n<!-- bench:end -->\n\nNotes after.\n";
        let out = replace_block(doc, "new table\n");
        assert_eq!(
            out,
            "# Benchmarks\n\nIntro.\n\n<!-- bench:begin -->\nnew table\n<!-- bench:end -->\n\nNotes after.\n"
        );
        // Idempotent.
        assert_eq!(replace_block(&out, "new table"), out);
    }

    #[test]
    fn missing_markers_are_appended() {
        assert_eq!(replace_block("", "x"), "<!-- bench:begin -->\nx\n<!-- bench:end -->\n");
        assert_eq!(
            replace_block("# T\n", "x"),
            "# T\n\n<!-- bench:begin -->\nx\n<!-- bench:end -->\n"
        );
        // An end marker before the begin marker does not count.
        let odd = "<!-- bench:end -->\n";
        assert!(replace_block(odd, "x").starts_with(odd));
    }

    #[test]
    fn a_new_file_gets_just_the_markers_and_the_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("B.md");
        write_report(&path, "table").expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "<!-- bench:begin -->\ntable\n<!-- bench:end -->\n"
        );
        std::fs::write(&path, "keep\n<!-- bench:begin -->\nold\n<!-- bench:end -->\ntail")
            .expect("w");
        write_report(&path, "t2").expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "keep\n<!-- bench:begin -->\nt2\n<!-- bench:end -->\ntail"
        );
    }

    #[test]
    fn ratios_and_goals() {
        assert_eq!(ratio(Some(8.0), Some(10.0)), Some(0.8));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(1.0), Some(-0.1)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(-0.5), Some(1.0)), Some(0.0));
        assert_eq!(Goal::AtLeast(0.8).met(Some(0.8)), Some(true));
        assert_eq!(Goal::AtLeast(0.8).met(Some(0.79)), Some(false));
        assert_eq!(Goal::AtMost(1.5).met(Some(1.5)), Some(true));
        assert_eq!(Goal::AtMost(1.5).met(Some(1.51)), Some(false));
        assert_eq!(Goal::AtMost(1.5).met(None), None);
        assert_eq!(Goal::AtMost(1.5).met(Some(f64::NAN)), None);
        assert_eq!(met_cell(Some(false)), "NO");
    }

    #[test]
    fn targets_compare_the_plain_and_everything_on_rows_to_nginx() {
        use crate::load::Run;
        let mk = |row, scenario, rps: f64, p99: f64, cpu: f64| {
            Run::sample(1, row, scenario, rps, p99 / 2.0, p99, Some(cpu))
        };
        let mut load = LoadResults { rounds: 1, ..Default::default() };
        for (row, rps, p99, cpu) in [
            (Row::Floor, 100.0, 1.0, 1.0),
            (Row::Nginx, 50.0, 2.0, 2.0),
            (Row::Plain, 45.0, 3.0, 2.5),
            (Row::Gateway, 40.0, 3.5, 3.4),
        ] {
            for sc in Scenario::ALL {
                load.runs.push(mk(row, sc, rps, p99, cpu));
            }
        }
        let r = Results { load: Some(load), ..Default::default() };
        let t = targets(&r);
        // Four plain-row lines, the everything-on line, four feature lines (not measured).
        assert_eq!(t.len(), 9);
        assert_eq!(t[0].ratio, Some(0.9));
        assert_eq!(t[0].met, Some(true));
        // CPU 2.5 / 2.0 = 1.25 ≤ 1.3.
        assert_eq!(t[1].ratio, Some(1.25));
        assert_eq!(t[1].met, Some(true));
        // Added p99: plain 2, nginx 1 → 2.0 > 1.3.
        assert_eq!(t[2].ratio, Some(2.0));
        assert_eq!(t[2].met, Some(false));
        // Everything on: 3.4 / 2.0 = 1.7 > 1.6.
        assert_eq!(t[4].ratio, Some(1.7));
        assert_eq!(t[4].met, Some(false));
        assert_eq!(t[5].met, None, "a feature not measured is not judged");
        let text = render(
            &RunInfo {
                date_utc: "2026-01-01 00:00 UTC".into(),
                command: "bash bench/run.sh".into(),
                machine: vec![("nproc".into(), "2".into())],
                settings: "x".into(),
            },
            &r,
        );
        assert!(
            text.contains(
                "| throughput, 64 conns (gateway, plain) | 45 req/s | nginx 50 req/s | 0.90 | ≥ 0.9 × nginx | yes |"
            ),
            "{text}"
        );
    }

    #[test]
    fn each_feature_costs_its_row_minus_the_row_it_adds_to_in_the_same_round() {
        use crate::load::{KeyedCounts, Run};
        let mut load = LoadResults { rounds: 2, ..Default::default() };
        // Round 2 runs 10 µs slower across the board: per-round differences cancel it.
        for (round, slow) in [(1, 0.0), (2, 10e-6)] {
            for (row, cpu) in [
                (Row::Plain, 20e-6),
                (Row::AccessLog, 23e-6),
                (Row::Metrics, 21e-6),
                (Row::Limits, 25e-6),
                (Row::Traces, 22e-6),
                (Row::Gateway, 30e-6),
            ] {
                let mut run =
                    Run::sample(round, row, Scenario::Throughput, 1000.0, 1e-4, 2e-4, None);
                run.cpu_per_req = Some(cpu + slow);
                if row.traced() {
                    run.traces_dropped = Some(250);
                }
                load.runs.push(run);
            }
        }
        assert_eq!(load.feature_cost(Row::AccessLog).map(|c| (c * 1e7).round()), Some(30.0));
        assert_eq!(load.feature_cost(Row::Metrics).map(|c| (c * 1e7).round()), Some(10.0));
        // Limits and traces over plain + metrics, not over plain.
        assert_eq!(load.feature_cost(Row::Limits).map(|c| (c * 1e7).round()), Some(40.0));
        assert_eq!(load.feature_cost(Row::Traces).map(|c| (c * 1e7).round()), Some(10.0));
        assert_eq!(load.feature_cost(Row::Gateway), None, "everything on adds no one feature");
        load.keyed = Some(KeyedCounts {
            requests: 6000,
            traces_received: 5500,
            traces_stored: 5500,
            ..Default::default()
        });
        let mut text = String::new();
        features_paragraph(&mut text, &load);
        assert!(
            text.contains("| access log (info, into a file) | plain + access log | 28.0 µs | gateway, plain (25.0 µs) | 3.00 µs; 3.00 µs | 3.00 µs |"),
            "{text}"
        );
        assert!(
            text.contains("Everything on minus plain: 10.0 µs per request (median per round); the four features' own costs add up to 9.00 µs."),
            "{text}"
        );
        // 1,000 dropped of the 4,000 requests of the traced rows' 64-connection runs.
        assert!(text.contains("25.0 % of the traced rows' 64-connection requests"), "{text}");
        assert!(
            text.contains("6000 requests with limits or traces, 0 admitted fail-open"),
            "{text}"
        );
        // No feature row measured: no paragraph.
        load.runs.retain(|r| !Row::FEATURES.contains(&r.row));
        let mut text = String::new();
        features_paragraph(&mut text, &load);
        assert!(text.is_empty(), "{text}");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(10000), "10,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000000), "1,000,000");
    }
}
