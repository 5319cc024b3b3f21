//! Request traces from data planes (issue #14, item 3): what a stream's reader does with a
//! `TraceBatch`, the writer that stores them, and the retention job.
//!
//! - **The stream never waits.** The reader checks a batch against the current snapshot and
//!   hands it to one writer task over a bounded queue ([`TRACE_WRITE_QUEUE`] batches) with
//!   `try_send`; a full queue (the database is slower than the fleet's traces) drops the
//!   batch and counts it (`modelgw_traces_dropped_total{by="control_plane"}`). The drops a
//!   data plane reports (its own queue was full) are counted under `by="data_plane"`.
//! - **What is kept of a batch.** Traces of gateways the current snapshot does not hold, or
//!   holds with traces off, are discarded (the data plane traced under an older
//!   configuration). Bodies are discarded when the gateway does not capture payloads, and cut
//!   to its cap otherwise: the stored rows follow the control plane's settings, whatever a
//!   data plane sends.
//! - **Batches.** The writer takes every batch waiting (up to [`MAX_TRACES_PER_WRITE`]
//!   traces) and inserts them in one transaction, multi-row `INSERT`s. A failed write is
//!   retried ([`WRITE_ATTEMPTS`] times, [`WRITE_RETRY`] apart), then dropped and counted:
//!   traces are diagnostics, never worth holding up the streams for.
//! - **Retention.** Every [`RETENTION_INTERVAL`] the store deletes, per gateway, the traces
//!   older than its `retention_days` and those beyond its `max_count` (the oldest), and the
//!   traces of gateways that no longer exist. Every replica runs it; deletes are idempotent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use modelgw_model::protocol::TraceBatch;
use modelgw_model::traces::{RequestTrace, TraceSettings};
use modelgw_model::{GatewayId, NodeId, Snapshot};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::Store;
use crate::metrics::{ControlPlaneMetrics, TraceDropper};

/// Batches waiting for the writer. A data plane sends at most ten batches a second; 64 hold
/// several seconds of a busy fleet while the database catches up, and bound the memory to
/// 64 × 512 KiB (the largest batch a data plane sends, `MAX_TRACE_BATCH_BYTES`) = 32 MiB.
pub const TRACE_WRITE_QUEUE: usize = 64;

/// Most traces the writer inserts in one transaction: a few hundred milliseconds of SQLite
/// at the most, so a configuration write never waits long behind it.
pub const MAX_TRACES_PER_WRITE: usize = 2_000;

/// Tries of one write before its traces are dropped.
pub const WRITE_ATTEMPTS: u32 = 3;

/// Pause between two tries of a failed write.
pub const WRITE_RETRY: Duration = Duration::from_secs(1);

/// How often the retention job runs: traces are at most a minute past their retention.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// One batch on its way to the writer.
struct Pending {
    node: NodeId,
    traces: Vec<RequestTrace>,
}

/// The streams' side of the writer. Cheap to clone.
#[derive(Clone)]
pub(crate) struct TraceIntake {
    tx: mpsc::Sender<Pending>,
    metrics: ControlPlaneMetrics,
    /// Set to ask the writer to store what is queued and stop (shutdown).
    stop: Arc<watch::Sender<bool>>,
    /// Set by the writer once it stopped.
    stopped: watch::Receiver<bool>,
}

impl TraceIntake {
    /// Keeps what the current configuration traces of `batch` and queues it for the writer;
    /// never waits. Called by the stream's reader.
    pub(crate) fn submit(&self, node: &NodeId, batch: TraceBatch, snapshot: &Snapshot) {
        for skipped in &batch.skipped {
            tracing::warn!(reason = %skipped, "trace unreadable; skipped");
        }
        if batch.dropped > 0 {
            tracing::warn!(
                dropped = batch.dropped,
                "the data plane's trace queue was full; traces lost there"
            );
            self.metrics.traces_dropped(TraceDropper::DataPlane, batch.dropped);
        }
        let traces = kept(batch.traces, snapshot);
        if traces.is_empty() {
            return;
        }
        let count = traces.len() as u64;
        self.metrics.traces_received(count);
        match self.tx.try_send(Pending { node: node.clone(), traces }) {
            Ok(()) => {}
            Err(_) => {
                tracing::warn!(traces = count, "the trace writer is behind; batch dropped");
                self.metrics.traces_dropped(TraceDropper::ControlPlane, count);
            }
        }
    }

    /// Asks the writer to store what is queued and stop; waits at most `timeout`.
    pub(crate) async fn flush(&self, timeout: Duration) {
        let _ = self.stop.send(true);
        let mut stopped = self.stopped.clone();
        if tokio::time::timeout(timeout, stopped.wait_for(|s| *s)).await.is_err() {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "traces still queued at shutdown were not all stored"
            );
        }
    }
}

/// The traces of `traces` that the current configuration records, bodies as it captures them.
fn kept(traces: Vec<RequestTrace>, snapshot: &Snapshot) -> Vec<RequestTrace> {
    let settings: HashMap<GatewayId, &TraceSettings> =
        snapshot.gateways.iter().filter(|g| g.traces.enabled).map(|g| (g.id, &g.traces)).collect();
    let total = traces.len();
    let kept: Vec<RequestTrace> = traces
        .into_iter()
        .filter_map(|mut t| {
            let settings = settings.get(&t.gateway_id)?;
            if settings.capture_payload {
                let cap = settings.payload_cap();
                for body in [&mut t.request_body, &mut t.response_body].into_iter().flatten() {
                    if body.len() > cap {
                        body.truncate(floor_char_boundary(body, cap));
                        t.payload_truncated = true;
                    }
                }
            } else {
                t.request_body = None;
                t.response_body = None;
                t.payload_truncated = false;
            }
            Some(t)
        })
        .collect();
    if kept.len() < total {
        tracing::debug!(
            discarded = total - kept.len(),
            "traces of gateways the current configuration does not trace; discarded"
        );
    }
    kept
}

/// The largest index ≤ `at` on a character boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Starts the writer; returns the streams' intake and the writer's task.
pub(crate) fn start_writer(store: Store) -> (TraceIntake, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(TRACE_WRITE_QUEUE);
    let (stop, stop_rx) = watch::channel(false);
    let (stopped_tx, stopped) = watch::channel(false);
    let metrics = store.metrics().clone();
    let writer = Writer { store, rx, stop: stop_rx, stopped: stopped_tx };
    let task = tokio::spawn(tracing::Instrument::instrument(
        writer.run(),
        tracing::info_span!("trace_writer"),
    ));
    (TraceIntake { tx, metrics, stop: Arc::new(stop), stopped }, task)
}

struct Writer {
    store: Store,
    rx: mpsc::Receiver<Pending>,
    stop: watch::Receiver<bool>,
    stopped: watch::Sender<bool>,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let first = tokio::select! {
                first = self.rx.recv() => first,
                _ = self.stop.wait_for(|s| *s) => None,
            };
            let Some(first) = first else { break };
            self.write(first).await;
        }
        // Shutdown: what is already queued, then done.
        while let Ok(pending) = self.rx.try_recv() {
            self.write(pending).await;
        }
        let _ = self.stopped.send(true);
    }

    /// Writes `first` and every batch waiting behind it (up to [`MAX_TRACES_PER_WRITE`]),
    /// one transaction per data plane.
    async fn write(&mut self, first: Pending) {
        let mut by_node: Vec<Pending> = vec![first];
        let mut total: usize = by_node[0].traces.len();
        while total < MAX_TRACES_PER_WRITE {
            let Ok(next) = self.rx.try_recv() else { break };
            total += next.traces.len();
            match by_node.iter_mut().find(|p| p.node == next.node) {
                Some(p) => p.traces.extend(next.traces),
                None => by_node.push(next),
            }
        }
        for pending in by_node {
            self.insert(&pending).await;
        }
    }

    async fn insert(&self, pending: &Pending) {
        let metrics = self.store.metrics();
        let count = pending.traces.len() as u64;
        for attempt in 1..=WRITE_ATTEMPTS {
            match self.store.insert_traces(&pending.node, &pending.traces).await {
                Ok(n) => {
                    metrics.traces_stored(n as u64);
                    tracing::debug!(node_id = %pending.node.0, traces = n, "traces stored");
                    return;
                }
                Err(e) if attempt < WRITE_ATTEMPTS => {
                    tracing::warn!(error = %e, traces = count, attempt, "storing traces failed; retrying");
                    tokio::time::sleep(WRITE_RETRY).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, traces = count, attempts = WRITE_ATTEMPTS, "storing traces failed; dropped");
                    metrics.traces_dropped(TraceDropper::ControlPlane, count);
                }
            }
        }
    }
}

/// Deletes traces past their gateway's retention every [`RETENTION_INTERVAL`], the first time
/// one interval after start (a restart does not add a run to the other replicas' ones).
pub(crate) async fn retain(store: Store) {
    let first = tokio::time::Instant::now() + RETENTION_INTERVAL;
    let mut ticker = tokio::time::interval_at(first, RETENTION_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        run_retention(&store).await;
    }
}

/// One retention run, counted and logged.
pub(crate) async fn run_retention(store: &Store) {
    match store.prune_traces(Utc::now()).await {
        Ok(deleted) => {
            store.metrics().traces_deleted(&deleted);
            let total = deleted.by_age + deleted.by_count + deleted.orphaned;
            if total > 0 {
                tracing::info!(
                    by_age = deleted.by_age,
                    by_count = deleted.by_count,
                    orphaned = deleted.orphaned,
                    "request traces past their retention deleted"
                );
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "trace retention failed; retrying at the next interval")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelgw_model::traces::TraceAttempt;
    use modelgw_model::{ConfigVersion, Gateway, GatewayKeyId, RoutingPolicy};

    fn gateway(traces: TraceSettings) -> Gateway {
        Gateway {
            id: GatewayId::new(),
            name: "gw".into(),
            members: vec![],
            keys: vec![],
            routing: RoutingPolicy::default(),
            key_limits: Default::default(),
            traces,
            pin_key: modelgw_model::PinKey::new([0; 32]),
        }
    }

    fn trace(gateway_id: GatewayId, body: &str) -> RequestTrace {
        RequestTrace {
            request_id: "r".into(),
            started_unix_ms: 1,
            gateway_id,
            key_id: GatewayKeyId::new(),
            operation: "chat_completions".into(),
            model: None,
            stream: false,
            status: 200,
            attempts: Vec::<TraceAttempt>::new(),
            latency_ms: 1,
            ttft_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            client_request_id: None,
            request_body: Some(body.into()),
            response_body: Some(body.into()),
            payload_truncated: false,
        }
    }

    #[test]
    fn only_traced_gateways_are_kept_with_bodies_as_they_capture_them() {
        let metadata = gateway(TraceSettings { enabled: true, ..Default::default() });
        let capped = gateway(TraceSettings {
            enabled: true,
            capture_payload: true,
            max_payload_bytes: Some(2),
            ..Default::default()
        });
        let off = gateway(TraceSettings::default());
        let snapshot = Snapshot {
            version: ConfigVersion(2),
            endpoints: vec![],
            gateways: vec![metadata.clone(), capped.clone(), off.clone()],
        };
        let kept = kept(
            vec![
                trace(metadata.id, "secret prompt"),
                trace(capped.id, "héllo"),
                trace(off.id, "x"),
                trace(GatewayId::new(), "x"),
            ],
            &snapshot,
        );
        assert_eq!(kept.len(), 2);
        assert_eq!((kept[0].request_body.as_deref(), kept[0].payload_truncated), (None, false));
        // Cut at the cap, on a character boundary ("é" is bytes 1 and 2).
        assert_eq!(kept[1].request_body.as_deref(), Some("h"));
        assert_eq!(kept[1].response_body.as_deref(), Some("h"));
        assert!(kept[1].payload_truncated);
    }
}
