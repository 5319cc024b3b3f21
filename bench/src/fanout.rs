//! The fan-out section: config propagation and fleet-health fan-out to a fleet of 1,000 data
//! planes, simulated by lightweight subscribers inside the benchmark process.
//!
//! A control plane of its own (SQLite, one endpoint, one gateway, `MODELGW_MAX_DATA_PLANES`
//! raised above the fleet) and N subscribers (`--fanout-subscribers`, default 1,000; 100 with
//! `--quick`), connected [`RAMP_BATCH`] at a time. Each subscriber is what the real data
//! plane's control-plane client is on the wire, minus the proxy: its own TCP connection with
//! mTLS (a client certificate per node id from the benchmark's CA, issued in memory, as the
//! benchmark's real data planes get), one `ConfigDiscovery/Stream` session, the `Hello` the
//! data plane sends (node id, version 0, build, an instance id), every message decoded into
//! its domain form exactly as the data plane does (`ControlPlaneMessage::try_from`, i.e. the
//! protobuf decode by tonic and `model::wire`'s conversion and checks), and an ACK per
//! snapshot. It does not compile the snapshot into a routing table (there is no proxy; the
//! propagation section measures that with real data planes) and sends no heartbeats: the
//! control plane requires none (HTTP/2 keep-alive answers keep the connection).
//!
//! - **Config changes**: K changes one at a time (a PATCH of the gateway's member weight,
//!   alternating, as in [`crate::propagation`]). t0 is taken just before the admin call; a
//!   subscriber's latency is the instant its decode of that version (or a newer one) ended,
//!   minus t0. Per change the slowest subscriber is "all applied". Between changes the
//!   benchmark waits until the control plane's `modelgw_data_planes_current` gauge counts
//!   every subscriber (all ACKs processed), so changes never overlap.
//! - **Fleet health**: one subscriber sends the `HealthReport` a data plane sends when an
//!   endpoint answers 429 (throttling, with a window), then one saying it is healthy again,
//!   alternating. The control plane merges the fleet's reports and pushes the new
//!   `FleetHealth` to every stream; the latency is from just before the report is handed to
//!   the reporting subscriber's stream to each subscriber's decode of the first `FleetHealth`
//!   that shows the change.
//! - **Cost**: the control plane's CPU time (`/proc/<pid>/task/*/schedstat`) over the changes
//!   ÷ changes (ACK handling, its logging and the benchmark's metric polls included), its RSS
//!   before the fleet connects and with it connected, and the benchmark process's own CPU
//!   over the same span, so a reader sees whether the simulator is the bottleneck (all
//!   processes share the machine's 2 cores).

use std::num::NonZeroU64;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use modelgw_model::protocol::{
    ControlPlaneMessage, DataPlaneMessage, EndpointHealth, HealthReport, Hello,
};
use modelgw_model::wire::{InvalidControlPlaneMessage, cfg};
use modelgw_model::{ConfigVersion, EndpointId, EndpointState, NodeId};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::fixture::{self, random_token};
use crate::procs::{self, Logs};
use crate::stats::{every_latency, percentile, slowest_per_push};

/// Subscribers connected at once; the next batch starts when this one has applied the
/// configuration, so the control plane sees a rollout, not 1,000 simultaneous handshakes.
pub const RAMP_BATCH: usize = 100;

/// Registry entries beyond the fleet (`MODELGW_MAX_DATA_PLANES`): the default cap is exactly
/// 1,000, which a reconnect during the run could overflow.
const REGISTRY_MARGIN: usize = 100;

/// How long one ramp batch may take to connect and apply the configuration.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one change (or fleet-health push) may take to reach every subscriber.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Time allowed to establish one subscriber's connection (the data plane's value).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest message a subscriber accepts (the data plane's `MAX_SNAPSHOT_BYTES`).
const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// Outbound queue of one subscriber (Hello, ACKs, the odd health report).
const OUTBOUND_CAPACITY: usize = 16;

/// The throttling window of the probe report: far longer than the run, so the endpoint stays
/// throttled until the healthy report (the control plane caps windows at 5 min anyway).
const THROTTLE_WINDOW: Duration = Duration::from_secs(120);

/// How often the control plane's metrics are read while waiting for its ACK count.
const GAUGE_POLL: Duration = Duration::from_millis(10);

/// Sizes of the section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FanoutSettings {
    pub subscribers: usize,
    pub changes: usize,
    /// Health reports of the probe subscriber (throttled, healthy, throttled, …).
    pub health_reports: usize,
}

impl FanoutSettings {
    /// 1,000 subscribers and 10 health reports; 100 and 4 with `--quick`.
    pub fn new(
        quick: bool,
        subscribers: Option<usize>,
        changes: usize,
    ) -> anyhow::Result<FanoutSettings> {
        let subscribers = subscribers.unwrap_or(if quick { 100 } else { 1_000 });
        ensure!((1..=10_000).contains(&subscribers), "--fanout-subscribers must be 1–10,000");
        Ok(FanoutSettings { subscribers, changes, health_reports: if quick { 4 } else { 10 } })
    }
}

/// One fleet-health push: which state was reported, and each subscriber's latency.
#[derive(Clone, Debug)]
pub struct FleetPush {
    pub throttled: bool,
    pub latencies: Vec<Duration>,
}

#[derive(Clone, Debug, Default)]
pub struct FanoutResults {
    pub subscribers: usize,
    /// Per change: (version, latency of each subscriber).
    pub changes: Vec<(u64, Vec<Duration>)>,
    pub fleet: Vec<FleetPush>,
    /// Issuing the N client certificates (in memory, before the ramp).
    pub certificates: Duration,
    /// Connecting every subscriber and applying the first configuration.
    pub startup: Duration,
    /// Control-plane CPU time over the changes ÷ changes.
    pub cp_cpu_per_change: Duration,
    /// The benchmark process's CPU time over the same span ÷ changes.
    pub bench_cpu_per_change: Duration,
    /// Control-plane RSS, configured, before any subscriber; KiB.
    pub cp_rss_idle_kib: u64,
    /// Control-plane RSS with every subscriber connected; KiB.
    pub cp_rss_connected_kib: u64,
    /// The benchmark process's RSS with every subscriber connected; KiB.
    pub bench_rss_kib: u64,
}

impl FanoutResults {
    /// Every subscriber's latency of every change, seconds.
    pub fn per_subscriber(&self) -> Vec<f64> {
        every_latency(self.changes.iter().map(|(_, l)| l.as_slice()))
    }

    /// Per change, the slowest subscriber, seconds.
    pub fn all_applied(&self) -> Vec<f64> {
        slowest_per_push(self.changes.iter().map(|(_, l)| l.as_slice()))
    }

    pub fn all_applied_p99(&self) -> Option<f64> {
        percentile(&self.all_applied(), 0.99)
    }

    /// Every subscriber's latency of every fleet-health push, seconds.
    pub fn fleet_per_subscriber(&self) -> Vec<f64> {
        every_latency(self.fleet.iter().map(|p| p.latencies.as_slice()))
    }

    /// Per push, the slowest subscriber, seconds.
    pub fn fleet_all_received(&self) -> Vec<f64> {
        slowest_per_push(self.fleet.iter().map(|p| p.latencies.as_slice()))
    }

    /// Control-plane RSS per connected subscriber, KiB.
    pub fn cp_rss_per_subscriber_kib(&self) -> f64 {
        self.cp_rss_connected_kib.saturating_sub(self.cp_rss_idle_kib) as f64
            / self.subscribers.max(1) as f64
    }
}

/// What the subscribers decoded, shared with the benchmark's waits.
struct Board {
    /// Per subscriber, the newest snapshot version decoded (0: none yet).
    version: Vec<AtomicU64>,
    /// Per subscriber, the newest fleet health decoded: [`FLEET_NONE`], [`FLEET_HEALTHY`] or
    /// [`FLEET_UNAVAILABLE`] (for the probe endpoint).
    fleet: Vec<AtomicU8>,
    /// Per subscriber, every decode and when it ended.
    logs: Vec<Mutex<DecodeLog>>,
    /// Why subscribers stopped early.
    failures: Mutex<Vec<String>>,
    /// Bumped after every record, so a wait re-checks its condition.
    changed: watch::Sender<u64>,
}

const FLEET_NONE: u8 = 0;
const FLEET_HEALTHY: u8 = 1;
const FLEET_UNAVAILABLE: u8 = 2;

/// One subscriber's decodes.
#[derive(Debug, Default)]
struct DecodeLog {
    /// (snapshot version, end of its decode).
    snapshots: Vec<(u64, Instant)>,
    /// (the probe endpoint is unavailable in it, end of its decode).
    fleet: Vec<(bool, Instant)>,
}

impl Board {
    fn new(subscribers: usize) -> Board {
        Board {
            version: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            fleet: (0..subscribers).map(|_| AtomicU8::new(FLEET_NONE)).collect(),
            logs: (0..subscribers).map(|_| Mutex::default()).collect(),
            failures: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }

    fn log(&self, i: usize) -> std::sync::MutexGuard<'_, DecodeLog> {
        self.logs[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self, i: usize, version: u64, at: Instant) {
        self.log(i).snapshots.push((version, at));
        self.version[i].fetch_max(version, Ordering::Release);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn fleet_health(&self, i: usize, unavailable: bool, at: Instant) {
        self.log(i).fleet.push((unavailable, at));
        let state = if unavailable { FLEET_UNAVAILABLE } else { FLEET_HEALTHY };
        self.fleet[i].store(state, Ordering::Release);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn fail(&self, why: String) {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).push(why);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether subscribers `0..n` all decoded `version` or a newer one.
    fn applied(&self, n: usize, version: u64) -> bool {
        self.version[..n].iter().all(|v| v.load(Ordering::Acquire) >= version)
    }

    /// Whether every subscriber's newest fleet health shows the probe as `unavailable`.
    fn fleet_shows(&self, unavailable: bool) -> bool {
        let want = if unavailable { FLEET_UNAVAILABLE } else { FLEET_HEALTHY };
        self.fleet.iter().all(|s| s.load(Ordering::Acquire) == want)
    }

    /// Waits until `done` holds; fails at once when a subscriber failed.
    async fn wait(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&Board) -> bool,
    ) -> anyhow::Result<()> {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Marked seen before the check: a record made during it wakes the next wait.
            changed.borrow_and_update();
            if let Some(first) =
                self.failures.lock().unwrap_or_else(PoisonError::into_inner).first()
            {
                bail!("waiting for {what}: a subscriber failed: {first}");
            }
            if done(self) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("waiting for {what}: the board is gone"),
                Err(_) => bail!("{what}: not within {within:?}"),
            }
        }
    }
}

/// The latency of the first decode of `version` or newer, from `t0`.
fn applied_after(log: &[(u64, Instant)], version: u64, t0: Instant) -> Option<Duration> {
    log.iter().find(|(v, _)| *v >= version).map(|(_, at)| at.saturating_duration_since(t0))
}

/// The latency of the first fleet health decoded at or after `t0` that shows the probe as
/// `unavailable`, from `t0`.
fn fleet_after(log: &[(bool, Instant)], unavailable: bool, t0: Instant) -> Option<Duration> {
    log.iter()
        .find(|(u, at)| *u == unavailable && *at >= t0)
        .map(|(_, at)| at.saturating_duration_since(t0))
}

/// The value of an unlabelled metric in a Prometheus text exposition.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

/// The bound on registered data planes for a fleet of `subscribers`.
fn max_data_planes(subscribers: usize) -> usize {
    subscribers.max(modelgw_control_plane::distribution::DEFAULT_MAX_DATA_PLANES) + REGISTRY_MARGIN
}

/// The node id of subscriber `i`.
fn node_id(i: usize) -> String {
    format!("fan-{i:04}")
}

/// One simulated data plane.
struct Subscriber {
    index: usize,
    node_id: String,
    url: String,
    tls: ClientTlsConfig,
    probe: EndpointId,
    board: Arc<Board>,
    /// Health reports to send (the probe subscriber only).
    reports: Option<mpsc::Receiver<DataPlaneMessage>>,
    stop: watch::Receiver<bool>,
}

impl Subscriber {
    async fn run(self) {
        let board = self.board.clone();
        let node_id = self.node_id.clone();
        if let Err(e) = self.session().await {
            board.fail(format!("{node_id}: {e:#}"));
        }
    }

    async fn session(mut self) -> anyhow::Result<()> {
        let endpoint = Endpoint::from_shared(self.url.clone())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .tls_config(self.tls.clone())?;
        let channel = endpoint.connect().await.context("connecting")?;
        let mut client = cfg::config_discovery_client::ConfigDiscoveryClient::new(channel)
            .max_decoding_message_size(MAX_SNAPSHOT_BYTES);
        let (tx, rx) = mpsc::channel::<cfg::DataPlaneMessage>(OUTBOUND_CAPACITY);
        // Unique per subscriber within the run, never zero.
        let instance =
            NonZeroU64::new((u64::from(std::process::id()) << 32) | (self.index as u64 + 1));
        let hello = DataPlaneMessage::Hello(Hello {
            node_id: NodeId(self.node_id.clone()),
            applied_version: ConfigVersion(0),
            build_version: env!("CARGO_PKG_VERSION").to_owned(),
            instance,
        });
        tx.send(cfg::DataPlaneMessage::from(&hello)).await.context("queueing Hello")?;
        let mut inbound = client
            .stream(tonic::Request::new(ReceiverStream::new(rx)))
            .await
            .context("opening the stream")?
            .into_inner();
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let message = message.context("the stream broke")?
                        .context("the control plane closed the stream")?;
                    if let Some(ack) = self.decode(message)? {
                        tx.send(cfg::DataPlaneMessage::from(&ack)).await.context("sending an ACK")?;
                    }
                }
                report = recv(&mut self.reports) => {
                    let report = report.context("the report queue closed")?;
                    tx.send(cfg::DataPlaneMessage::from(&report)).await.context("sending a report")?;
                }
                () = stopped(&mut self.stop) => return Ok(()),
            }
        }
    }

    /// Decodes one message as the data plane does and records it; returns the ACK to send.
    fn decode(
        &self,
        message: cfg::ControlPlaneMessage,
    ) -> anyhow::Result<Option<DataPlaneMessage>> {
        match ControlPlaneMessage::try_from(message) {
            Ok(ControlPlaneMessage::Snapshot(snapshot)) => {
                let at = Instant::now();
                self.board.snapshot(self.index, snapshot.version.0, at);
                Ok(Some(DataPlaneMessage::Ack { version: snapshot.version }))
            }
            Ok(ControlPlaneMessage::FleetHealth(fleet)) => {
                let at = Instant::now();
                ensure!(
                    fleet.skipped.is_empty(),
                    "fleet health entries unreadable: {:?}",
                    fleet.skipped
                );
                let unavailable = fleet
                    .endpoints
                    .iter()
                    .any(|e| e.endpoint_id == self.probe && e.state != EndpointState::Healthy);
                self.board.fleet_health(self.index, unavailable, at);
                Ok(None)
            }
            // Decoded; nothing the benchmark measures.
            Ok(ControlPlaneMessage::Leases(_) | ControlPlaneMessage::FleetQuota(_))
            | Err(InvalidControlPlaneMessage::Unknown) => Ok(None),
            Err(e @ InvalidControlPlaneMessage::Snapshot { .. }) => {
                bail!("a snapshot the data plane would NACK: {e}")
            }
        }
    }
}

/// Resolves once the benchmark tells the subscribers to stop (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The next report to send; pending forever for a subscriber that sends none.
async fn recv(reports: &mut Option<mpsc::Receiver<DataPlaneMessage>>) -> Option<DataPlaneMessage> {
    match reports {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The report a data plane sends when `probe` answered 429 (`throttled`) or works again.
fn health_report(probe: EndpointId, throttled: bool) -> DataPlaneMessage {
    let entry = if throttled {
        EndpointHealth {
            endpoint_id: probe,
            state: EndpointState::Throttling,
            until: Some(SystemTime::now() + THROTTLE_WINDOW),
            reason: Some("429 Too Many Requests".to_owned()),
        }
    } else {
        EndpointHealth {
            endpoint_id: probe,
            state: EndpointState::Healthy,
            until: None,
            reason: None,
        }
    };
    DataPlaneMessage::Health(HealthReport { endpoints: vec![entry], skipped: Vec::new() })
}

/// The control plane's metrics endpoint.
struct Gauges {
    url: String,
    http: reqwest::Client,
}

impl Gauges {
    /// Waits until every one of `n` data planes is connected and ACKed `version`, as the
    /// control plane counts them.
    async fn wait_current(&self, n: usize, version: u64, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let text = self.http.get(&self.url).send().await?.error_for_status()?.text().await?;
            let read =
                |name| gauge(&text, name).with_context(|| format!("no {name} in the metrics"));
            let (distributed, connected, current) = (
                read("modelgw_config_version")?,
                read("modelgw_connected_data_planes")?,
                read("modelgw_data_planes_current")?,
            );
            if distributed == version && connected == n as u64 && current == n as u64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the control plane counts {current} of {connected} connected data planes on version {distributed}, not {n} on {version}, after {within:?}"
                );
            }
            tokio::time::sleep(GAUGE_POLL).await;
        }
    }
}

pub async fn run(
    bin: &Path,
    dir: &Path,
    settings: FanoutSettings,
) -> anyhow::Result<FanoutResults> {
    let n = settings.subscribers;
    let token = random_token("mgwadm_bench_")?;
    let (mut cp, admin) = fixture::start_control_plane(
        bin,
        dir,
        "fanout.db",
        &token,
        &[("MODELGW_MAX_DATA_PLANES", max_data_planes(n).to_string())],
        Logs::File(&dir.join("fanout-control-plane.log")),
    )
    .await?;
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    let result = async {
        let url = cp.field("grpc")?.to_owned();
        let gauges = Gauges { url: cp.field("metrics")?.to_owned(), http: reqwest::Client::new() };
        let cp_pid = cp.proc.pid();
        let endpoint = fixture::create_endpoint(
            &admin,
            "fanout-eastus",
            "http://127.0.0.1:9",
            "chat",
            "East US",
        )
        .await?;
        let probe = EndpointId::from_str(&endpoint).context("the endpoint id")?;
        let gateway = admin.create_gateway("fanout", std::slice::from_ref(&endpoint)).await?;
        let initial = admin.config_version().await?;
        let cp_rss_idle_kib = procs::rss_kib(cp_pid)?;

        let issuing = Instant::now();
        let mut tls = Vec::with_capacity(n);
        for i in 0..n {
            let id = procs::client_identity(&node_id(i))?;
            tls.push(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(id.ca_pem))
                    .identity(Identity::from_pem(id.cert_pem, id.key_pem)),
            );
        }
        let certificates = issuing.elapsed();

        let board = Arc::new(Board::new(n));
        let (report_tx, report_rx) = mpsc::channel(1);
        let mut report_rx = Some(report_rx);
        let started = Instant::now();
        let mut tls = tls.into_iter();
        for first in (0..n).step_by(RAMP_BATCH) {
            let upto = (first + RAMP_BATCH).min(n);
            for i in first..upto {
                let subscriber = Subscriber {
                    index: i,
                    node_id: node_id(i),
                    url: url.clone(),
                    tls: tls.next().context("a TLS config per subscriber")?,
                    probe,
                    board: board.clone(),
                    reports: if i == 0 { report_rx.take() } else { None },
                    stop: stop.clone(),
                };
                tasks.push(tokio::spawn(subscriber.run()));
            }
            board
                .wait(BATCH_TIMEOUT, &format!("subscribers 0–{upto} to apply version {initial}"), |b| {
                    b.applied(upto, initial)
                })
                .await?;
        }
        let startup = started.elapsed();
        gauges.wait_current(n, initial, BATCH_TIMEOUT).await?;
        let cp_rss_connected_kib = procs::rss_kib(cp_pid)?;
        let bench_rss_kib = procs::rss_kib(std::process::id())?;
        eprintln!(
            "  {n} subscribers connected and on version {initial} in {:.2} s (certificates {:.2} s); control plane RSS {} → {} KiB",
            startup.as_secs_f64(),
            certificates.as_secs_f64(),
            cp_rss_idle_kib,
            cp_rss_connected_kib
        );

        let (cp_cpu0, bench_cpu0) = (procs::cpu_ns(cp_pid)?, procs::cpu_ns(std::process::id())?);
        let mut changes = Vec::with_capacity(settings.changes);
        for k in 0..settings.changes {
            let weight = if k % 2 == 0 { 2 } else { 1 };
            let t0 = Instant::now();
            let (status, body) = admin
                .call(
                    "PATCH",
                    &format!("/api/v1/gateways/{gateway}"),
                    Some(json!({"endpoints": [{"endpoint_id": endpoint, "weight": weight}]})),
                )
                .await?;
            ensure!(status == 200, "PATCH gateway: {status} {body}");
            let version = admin.config_version().await?;
            board
                .wait(CHANGE_TIMEOUT, &format!("all {n} subscribers to apply version {version}"), |b| {
                    b.applied(n, version)
                })
                .await?;
            let latencies = (0..n)
                .map(|i| applied_after(&board.log(i).snapshots, version, t0))
                .collect::<Option<Vec<_>>>()
                .context("a subscriber's decode of the version is missing")?;
            changes.push((version, latencies));
            // Every ACK processed before the next change, so changes never overlap.
            gauges.wait_current(n, version, CHANGE_TIMEOUT).await?;
        }
        let count = settings.changes.max(1) as u64;
        let cp_cpu_per_change =
            Duration::from_nanos(procs::cpu_ns(cp_pid)?.saturating_sub(cp_cpu0) / count);
        let bench_cpu_per_change = Duration::from_nanos(
            procs::cpu_ns(std::process::id())?.saturating_sub(bench_cpu0) / count,
        );

        // Every subscriber got the (healthy) fleet health after each snapshot.
        board.wait(CHANGE_TIMEOUT, "every subscriber's first fleet health", |b| b.fleet_shows(false)).await?;
        let mut fleet = Vec::with_capacity(settings.health_reports);
        for r in 0..settings.health_reports {
            let throttled = r % 2 == 0;
            let t0 = Instant::now();
            report_tx
                .send(health_report(probe, throttled))
                .await
                .context("the probe subscriber is gone")?;
            let state = if throttled { "throttled" } else { "healthy" };
            board
                .wait(CHANGE_TIMEOUT, &format!("all {n} subscribers to see the probe {state}"), |b| {
                    b.fleet_shows(throttled)
                })
                .await?;
            let latencies = (0..n)
                .map(|i| fleet_after(&board.log(i).fleet, throttled, t0))
                .collect::<Option<Vec<_>>>()
                .context("a subscriber's fleet health is missing")?;
            fleet.push(FleetPush { throttled, latencies });
        }
        cp.proc.ensure_running()?;
        anyhow::Ok(FanoutResults {
            subscribers: n,
            changes,
            fleet,
            certificates,
            startup,
            cp_cpu_per_change,
            bench_cpu_per_change,
            cp_rss_idle_kib,
            cp_rss_connected_kib,
            bench_rss_kib,
        })
    }
    .await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(tasks)).await;
    cp.proc.stop(Duration::from_secs(5)).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_quick_mode_and_an_explicit_count() {
        let full = FanoutSettings::new(false, None, 30).expect("full");
        assert_eq!(full, FanoutSettings { subscribers: 1_000, changes: 30, health_reports: 10 });
        let quick = FanoutSettings::new(true, None, 5).expect("quick");
        assert_eq!((quick.subscribers, quick.health_reports), (100, 4));
        assert_eq!(FanoutSettings::new(true, Some(250), 5).expect("explicit").subscribers, 250);
        assert!(FanoutSettings::new(false, Some(0), 30).is_err());
    }

    #[test]
    fn the_registry_bound_leaves_a_margin_above_the_fleet() {
        assert_eq!(max_data_planes(100), 1_100);
        assert_eq!(max_data_planes(1_000), 1_100);
        assert_eq!(max_data_planes(5_000), 5_100);
    }

    #[test]
    fn a_change_counts_from_t0_to_the_first_decode_of_its_version_or_a_newer_one() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let log = [(3, t0), (4, ms(7)), (5, ms(9))];
        assert_eq!(applied_after(&log, 4, t0), Some(Duration::from_millis(7)));
        // A subscriber that skipped straight to a newer version applied this one too.
        let skipped = [(3, t0), (5, ms(11))];
        assert_eq!(applied_after(&skipped, 4, t0), Some(Duration::from_millis(11)));
        assert_eq!(applied_after(&log, 6, t0), None);
    }

    #[test]
    fn a_fleet_push_counts_the_first_matching_decode_after_t0() {
        let base = Instant::now();
        let t0 = base + Duration::from_millis(100);
        let log = [
            (true, base),
            (false, base + Duration::from_millis(50)),
            (false, base + Duration::from_millis(104)),
            (true, base + Duration::from_millis(120)),
        ];
        // The throttled state seen before t0 belongs to an earlier push.
        assert_eq!(fleet_after(&log, true, t0), Some(Duration::from_millis(20)));
        assert_eq!(fleet_after(&log, false, t0), Some(Duration::from_millis(4)));
        assert_eq!(fleet_after(&log[..3], true, t0), None);
    }

    #[test]
    fn gauges_are_read_by_exact_name() {
        let text = "# HELP modelgw_data_planes_current Connected …\n\
                    # TYPE modelgw_data_planes_current gauge\n\
                    modelgw_data_planes_current_extra 7\n\
                    modelgw_data_planes_current 998\n\
                    modelgw_connected_data_planes 1000\n";
        assert_eq!(gauge(text, "modelgw_data_planes_current"), Some(998));
        assert_eq!(gauge(text, "modelgw_connected_data_planes"), Some(1000));
        assert_eq!(gauge(text, "modelgw_config_version"), None);
    }

    #[test]
    fn the_targets_judge_the_slowest_subscriber_per_change_against_250_ms() {
        let ms = Duration::from_millis;
        let results = FanoutResults {
            subscribers: 1_000,
            changes: vec![(2, vec![ms(10), ms(40)]), (3, vec![ms(20), ms(300)])],
            fleet: vec![FleetPush { throttled: true, latencies: vec![ms(5), ms(9)] }],
            ..Default::default()
        };
        assert_eq!(results.all_applied(), vec![0.040, 0.300]);
        assert_eq!(results.per_subscriber().len(), 4);
        assert_eq!(results.fleet_all_received(), vec![0.009]);
        let report = crate::report::Results { fanout: Some(results), ..Default::default() };
        let lines = crate::report::targets(&report);
        let change = lines.iter().find(|l| l.metric.contains("config change")).expect("row");
        assert_eq!((change.measured.as_str(), change.met), ("300 ms", Some(false)));
        let fleet = lines.iter().find(|l| l.metric.contains("fleet-health")).expect("row");
        assert_eq!((fleet.measured.as_str(), fleet.met), ("9.00 ms", None));
    }

    #[tokio::test]
    async fn the_board_waits_for_every_subscriber_and_stops_at_a_failure() {
        let board = Arc::new(Board::new(3));
        let t = Instant::now();
        board.snapshot(0, 2, t);
        board.snapshot(1, 2, t);
        assert!(board.applied(2, 2) && !board.applied(3, 2));
        let waiting = {
            let board = board.clone();
            tokio::spawn(async move {
                board.wait(Duration::from_secs(5), "all three", |b| b.applied(3, 2)).await
            })
        };
        board.snapshot(2, 3, t);
        waiting.await.expect("join").expect("all three applied");
        assert!(!board.fleet_shows(false), "nothing received yet");
        for i in 0..3 {
            board.fleet_health(i, false, t);
        }
        assert!(board.fleet_shows(false) && !board.fleet_shows(true));
        board.fail("fan-0001: the stream broke".into());
        let err = board.wait(Duration::from_secs(5), "never", |_| false).await.expect_err("fails");
        assert!(format!("{err:#}").contains("the stream broke"));
    }
}
