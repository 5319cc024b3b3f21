//! The report: a TARGETS table (each goal with measured value, baseline, ratio and whether
//! it is met), then the detailed tables, as markdown. Printed to stdout and, with `--report`,
//! written between `<!-- bench:begin -->` and `<!-- bench:end -->` in a file, leaving
//! everything outside the markers untouched.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::console::ConsoleResults;
use crate::fixture::Row;
use crate::flood::{FloodResults, p50_p99};
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
        let (gw, ng) = (load.summary(Row::Gateway), load.summary(Row::Nginx));
        lines.push(compared("throughput, 64 conns", gw.rps, ng.rps, Goal::AtLeast(0.8), rps));
        lines.push(compared(
            "added p99 over the floor, 8 conns",
            gw.added_p99_8,
            ng.added_p99_8,
            Goal::AtMost(1.5),
            fmt_opt_secs,
        ));
        lines.push(compared(
            "added p99 over the floor, 1000 req/s",
            gw.added_p99_fixed,
            ng.added_p99_fixed,
            Goal::AtMost(1.5),
            fmt_opt_secs,
        ));
        lines.push(compared(
            "CPU time per request (64 conns)",
            gw.cpu_per_req,
            ng.cpu_per_req,
            Goal::AtMost(2.0),
            fmt_opt_secs,
        ));
        // The request path's accounting (metrics, token usage, statistics): the same gateway
        // through a data plane with it off, in the same rounds.
        let quiet = load.summary(Row::GatewayMetricsOff);
        let r = ratio(gw.cpu_per_req, quiet.cpu_per_req);
        let goal = Goal::AtMost(1.05);
        lines.push(TargetLine {
            metric: "CPU time per request, metrics on vs off (64 conns)".into(),
            measured: fmt_opt_secs(gw.cpu_per_req),
            baseline: format!("metrics off {}", fmt_opt_secs(quiet.cpu_per_req)),
            ratio: r,
            goal: goal.show(" × metrics off"),
            met: goal.met(r),
        });
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
    if let Some(sn) = &r.snapshot {
        snapshot_table(w, sn);
    }
    if let Some(c) = &r.console {
        console_table(w, c);
    }
    if let Some(f) = &r.flood {
        flood_table(w, f);
    }
    s
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
        "Added = row − floor in the same round, then the median. CPU = utime+stime of the row's processes during the 64-connection run ÷ requests (floor: the fake region itself); at 1,000 req/s the threads' run time from `schedstat` ÷ requests.\n"
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
    keyed_paragraph(w, load);
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

/// The keyed row against the plain gateway row (same data plane, same rounds): what key
/// limits and request traces cost, and what they did.
fn keyed_paragraph(w: &mut String, load: &LoadResults) {
    let (gw, keyed) = (load.summary(Row::Gateway), load.summary(Row::GatewayKeyed));
    if keyed.cpu_per_req.is_none() && keyed.cpu_per_req_fixed.is_none() {
        return;
    }
    let vs = |k: Option<f64>, g: Option<f64>| {
        format!(
            "{} vs {} ({})",
            fmt_opt_secs(k),
            fmt_opt_secs(g),
            ratio(k, g).map_or("—".into(), |r| format!("{r:.2} ×"))
        )
    };
    // Per round, keyed ÷ gateway: the pair ran back to back, so machine noise hits both alike.
    let per_round = |sc: Scenario| -> (Vec<f64>, String) {
        let ratios: Vec<f64> =
            load.runs
                .iter()
                .filter(|r| r.row == Row::GatewayKeyed && r.scenario == sc)
                .filter_map(|k| {
                    let g = load.runs.iter().find(|g| {
                        g.row == Row::Gateway && g.scenario == sc && g.round == k.round
                    })?;
                    ratio(k.cpu_per_req, g.cpu_per_req)
                })
                .collect();
        let text = if ratios.is_empty() {
            "—".into()
        } else {
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" / ")
        };
        (ratios, text)
    };
    let rounds_of = |sc: Scenario| {
        let (ratios, text) = per_round(sc);
        format!(
            "per round {text}, median {}",
            median(&ratios).map_or("—".into(), |r| format!("{r:.2} ×"))
        )
    };
    let _ = writeln!(
        w,
        "\n**Key limits + request traces** (`{}` vs `{}`: the same data plane; a key limited in all 12 window × measure counters, never reached; traces on, metadata only). CPU per request at 64 connections: {} ({}); at 1,000 req/s: {} ({}). The control plane's CPU per request (it stores the traces): {} vs {} at 64 connections, {} vs {} at 1,000 req/s.",
        Row::GatewayKeyed.name(),
        Row::Gateway.name(),
        vs(keyed.cpu_per_req, gw.cpu_per_req),
        rounds_of(Scenario::Throughput),
        vs(keyed.cpu_per_req_fixed, gw.cpu_per_req_fixed),
        rounds_of(Scenario::FixedRate),
        fmt_opt_secs(keyed.control_plane_cpu_per_req),
        fmt_opt_secs(gw.control_plane_cpu_per_req),
        fmt_opt_secs(keyed.control_plane_cpu_per_req_fixed),
        fmt_opt_secs(gw.control_plane_cpu_per_req_fixed),
    );
    let dropped = |s: Scenario| -> (u64, u64) {
        load.runs
            .iter()
            .filter(|r| r.row == Row::GatewayKeyed && r.scenario == s)
            .fold((0, 0), |(d, n), r| (d + r.traces_dropped.unwrap_or(0), n + r.result.completed()))
    };
    let share = |(d, n): (u64, u64)| {
        if n == 0 { "—".into() } else { format!("{:.1} %", d as f64 * 100.0 / n as f64) }
    };
    let _ = writeln!(
        w,
        "Traces dropped by the data plane's full queue (it ships at most 10 batches of 500 a second): {} of the 64-connection runs' requests, {} at 8 connections, {} at 1,000 req/s.",
        share(dropped(Scenario::Throughput)),
        share(dropped(Scenario::Conns8)),
        share(dropped(Scenario::FixedRate)),
    );
    if let Some(k) = &load.keyed {
        let _ = writeln!(
            w,
            "Over the section: {} keyed requests, {} admitted fail-open (without a grant), {} refused; the control plane received {} traces, stored {}, dropped {}.",
            k.requests,
            k.fail_open,
            k.refused,
            k.traces_received,
            k.traces_stored,
            k.traces_dropped_by_control_plane
        );
    }
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
    for row in Row::ALL {
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
    fn targets_compare_the_gateway_to_nginx() {
        use crate::load::Run;
        let mk = |row, scenario, rps: f64, p99: f64, cpu: f64| {
            Run::sample(1, row, scenario, rps, p99 / 2.0, p99, Some(cpu))
        };
        let mut load = LoadResults { rounds: 1, ..Default::default() };
        for (row, rps, p99, cpu) in [
            (Row::Floor, 100.0, 1.0, 1.0),
            (Row::Nginx, 50.0, 2.0, 2.0),
            (Row::Gateway, 45.0, 3.0, 5.0),
            (Row::GatewayMetricsOff, 46.0, 3.0, 4.9),
        ] {
            for sc in Scenario::ALL {
                load.runs.push(mk(row, sc, rps, p99, cpu));
            }
        }
        let r = Results { load: Some(load), ..Default::default() };
        let t = targets(&r);
        assert_eq!(t.len(), 5);
        // Metrics on vs off: 5.0 / 4.9 ≈ 1.02 ≤ 1.05.
        assert_eq!(t[4].ratio.map(|r| (r * 100.0).round()), Some(102.0));
        assert_eq!(t[4].met, Some(true));
        assert_eq!(t[0].ratio, Some(0.9));
        assert_eq!(t[0].met, Some(true));
        // Added p99: gateway 2, nginx 1 → 2.0 > 1.5.
        assert_eq!(t[1].ratio, Some(2.0));
        assert_eq!(t[1].met, Some(false));
        assert_eq!(t[3].ratio, Some(2.5));
        assert_eq!(t[3].met, Some(false));
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
                "| throughput, 64 conns | 45 req/s | nginx 50 req/s | 0.90 | ≥ 0.8 × nginx | yes |"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_keyed_row_is_compared_with_the_gateway_in_the_same_rounds() {
        use crate::load::{KeyedCounts, Run};
        let mut load = LoadResults { rounds: 2, ..Default::default() };
        // Round 1: 30 vs 25 µs (1.20); round 2: 33 vs 30 µs (1.10). Medians 31.5 vs 27.5.
        for (round, gw, keyed) in [(1, 25e-6, 30e-6), (2, 30e-6, 33e-6)] {
            for (row, cpu) in [(Row::Gateway, gw), (Row::GatewayKeyed, keyed)] {
                for sc in Scenario::ALL {
                    let mut run = Run::sample(round, row, sc, 1000.0, 1e-4, 2e-4, None);
                    if sc != Scenario::Conns8 {
                        // At 1,000 req/s: twice the CPU per request.
                        let per = if sc == Scenario::FixedRate { 2.0 * cpu } else { cpu };
                        run.cpu_per_req = Some(per);
                    }
                    if row == Row::GatewayKeyed {
                        run.traces_dropped = Some(if sc == Scenario::Throughput { 250 } else { 0 });
                    }
                    load.runs.push(run);
                }
            }
        }
        load.keyed = Some(KeyedCounts {
            requests: 6000,
            traces_received: 5500,
            traces_stored: 5500,
            ..Default::default()
        });
        let mut text = String::new();
        keyed_paragraph(&mut text, &load);
        assert!(
            text.contains("CPU per request at 64 connections: 31.5 µs vs 27.5 µs (1.15 ×) (per round 1.20 / 1.10, median 1.15 ×); at 1,000 req/s: 63.0 µs vs 55.0 µs (1.15 ×) (per round 1.20 / 1.10, median 1.15 ×)"),
            "{text}"
        );
        // 500 dropped of the 2,000 requests of the two 64-connection runs.
        assert!(
            text.contains("25.0 % of the 64-connection runs' requests, 0.0 % at 8 connections"),
            "{text}"
        );
        assert!(text.contains("6000 keyed requests, 0 admitted fail-open"), "{text}");
        assert!(text.contains("received 5500 traces, stored 5500, dropped 0"), "{text}");
        // No keyed row measured: no paragraph.
        load.runs.retain(|r| r.row != Row::GatewayKeyed);
        let mut text = String::new();
        keyed_paragraph(&mut text, &load);
        assert!(text.is_empty(), "{text}");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(10000), "10,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000000), "1,000,000");
    }
}
