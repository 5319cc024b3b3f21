//! The trace queue between the request path and the control-plane stream, and the shipper
//! that empties it into `TraceBatch`es.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use modelgw_model::protocol::TraceBatch;
use modelgw_model::traces::{MAX_TRACE_BATCH_BYTES, MAX_TRACES_PER_BATCH, RequestTrace};
use tokio::sync::{Notify, mpsc};
use tracing::warn;

/// Traces the queue holds unless `MODELGW_TRACE_QUEUE` says otherwise: ten seconds of a busy
/// data plane (1,000 traced requests a second) while the control plane is away or slow, a few
/// MiB of metadata.
pub const DEFAULT_TRACE_QUEUE: usize = 10_000;

/// Bodies the queue holds at most, over all its traces: 64 MiB. Counting traces alone would
/// let ten thousand captured 256 KiB bodies (both directions) take 5 GiB; with capture on the
/// queue is full at whichever bound comes first.
pub const MAX_QUEUED_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

/// How often queued traces are shipped: the console shows a request about a second after it
/// ended, at one small message per second.
pub const TRACE_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest gap between two batches: at most ten a second, half of what the control plane
/// allows a stream (`MESSAGES_PER_SECOND` = 20) so heartbeats, reports and usage never have
/// to wait for traces. A fleet tracing faster than ten full batches a second drops (counted).
pub const TRACE_BATCH_GAP: Duration = Duration::from_millis(100);

/// Bytes of a `TraceBatch` message besides its traces: the message's own tag and length, and
/// `dropped`.
const BATCH_OVERHEAD: usize = 6 + 11;

/// An upper bound of the protobuf encoding of `trace` inside a `TraceBatch` (a test of the
/// control-plane client compares it with the real encoding): every length as its largest
/// varint, every number as its largest.
pub fn encoded_len_bound(trace: &RequestTrace) -> usize {
    // Tag (at most 2 bytes: field numbers up to 17) and length (at most 5 bytes) of a string.
    const STRING: usize = 7;
    // Tag and the longest varint.
    const NUMBER: usize = 12;
    let strings = [
        Some(trace.request_id.len()),
        Some(36),
        Some(36),
        Some(trace.operation.len()),
        trace.model.as_ref().map(String::len),
        trace.client_request_id.as_ref().map(String::len),
        trace.request_body.as_ref().map(String::len),
        trace.response_body.as_ref().map(String::len),
    ];
    let strings: usize = strings.iter().flatten().map(|len| STRING + len).sum();
    // started, stream, status, latency, ttft, prompt and completion tokens, truncated.
    let numbers = 8 * NUMBER;
    let attempts: usize = trace
        .attempts
        .iter()
        .map(|a| STRING + (STRING + 36) + (STRING + a.outcome.len()) + 2 * NUMBER)
        .sum();
    // The trace's own tag and length in the batch.
    STRING + strings + numbers + attempts
}

/// An upper bound of the encoding of a `DataPlaneMessage` carrying a batch of `traces`.
pub fn batch_len_bound(traces: &[RequestTrace]) -> usize {
    BATCH_OVERHEAD + traces.iter().map(encoded_len_bound).sum::<usize>()
}

/// Bytes of captured bodies a trace holds.
fn payload_len(trace: &RequestTrace) -> usize {
    trace.request_body.as_ref().map_or(0, String::len)
        + trace.response_body.as_ref().map_or(0, String::len)
}

/// The bounded queue of finished traces. Pushing never waits; a full queue drops the trace
/// and counts it.
#[derive(Debug)]
pub struct TraceQueue {
    tx: mpsc::Sender<RequestTrace>,
    /// Taken only by the shipper, for a few microseconds per batch (never on the request path).
    rx: Mutex<mpsc::Receiver<RequestTrace>>,
    /// A trace taken that did not fit the previous batch: the first of the next.
    held: Mutex<Option<RequestTrace>>,
    capacity: usize,
    /// Bodies queued (see [`MAX_QUEUED_PAYLOAD_BYTES`]).
    queued_payload: AtomicUsize,
    /// Every trace dropped since start (`modelgw_traces_dropped_total`).
    dropped_total: AtomicU64,
    /// Dropped since the last batch taken (its `dropped`).
    unreported: AtomicU64,
    /// Unix minute of the last "queue full" warning: one line a minute at most.
    warned_minute: AtomicU64,
    /// Woken when a full batch is waiting.
    full: Notify,
}

impl TraceQueue {
    /// A queue of at most `capacity` traces (at least one).
    pub fn new(capacity: usize) -> TraceQueue {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        TraceQueue {
            tx,
            rx: Mutex::new(rx),
            held: Mutex::new(None),
            capacity,
            queued_payload: AtomicUsize::new(0),
            dropped_total: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            warned_minute: AtomicU64::new(0),
            full: Notify::new(),
        }
    }

    /// Queues a finished trace, or drops and counts it when the queue is full. Never waits.
    pub(crate) fn push(&self, trace: RequestTrace) -> bool {
        let payload = payload_len(&trace);
        if payload > 0 {
            let before = self.queued_payload.fetch_add(payload, Ordering::Relaxed);
            if before + payload > MAX_QUEUED_PAYLOAD_BYTES {
                self.queued_payload.fetch_sub(payload, Ordering::Relaxed);
                self.dropped(1);
                return false;
            }
        }
        match self.tx.try_send(trace) {
            Ok(()) => {
                if self.capacity - self.tx.capacity() >= MAX_TRACES_PER_BATCH {
                    self.full.notify_one();
                }
                true
            }
            Err(_) => {
                self.queued_payload.fetch_sub(payload, Ordering::Relaxed);
                self.dropped(1);
                false
            }
        }
    }

    /// Counts `count` traces lost (full queue, or a batch the closed stream refused).
    pub(crate) fn dropped(&self, count: u64) {
        self.dropped_total.fetch_add(count, Ordering::Relaxed);
        self.unreported.fetch_add(count, Ordering::Relaxed);
        let minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60);
        if self.warned_minute.swap(minute, Ordering::Relaxed) != minute {
            warn!(
                capacity = self.capacity,
                dropped_total = self.dropped_total.load(Ordering::Relaxed),
                "request trace queue full; traces dropped (at most one such line a minute)"
            );
        }
    }

    /// Traces dropped since start.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Traces waiting.
    pub fn len(&self) -> usize {
        self.capacity - self.tx.capacity()
            + usize::from(self.held.lock().unwrap_or_else(PoisonError::into_inner).is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a batch would carry anything (traces or a count of drops).
    fn has_work(&self) -> bool {
        !self.is_empty() || self.unreported.load(Ordering::Relaxed) > 0
    }

    /// The next batch: the oldest traces, at most [`MAX_TRACES_PER_BATCH`] and (unless the
    /// first alone is larger) [`MAX_TRACE_BATCH_BYTES`] encoded, with the drops since the
    /// previous batch. `None` when there is nothing to say.
    pub fn next_batch(&self) -> Option<TraceBatch> {
        let mut rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = TraceBatch::default();
        let mut bytes = BATCH_OVERHEAD;
        if let Some(first) = held.take() {
            bytes += encoded_len_bound(&first);
            batch.traces.push(first);
        }
        while batch.traces.len() < MAX_TRACES_PER_BATCH {
            let Ok(trace) = rx.try_recv() else { break };
            self.queued_payload.fetch_sub(payload_len(&trace), Ordering::Relaxed);
            let len = encoded_len_bound(&trace);
            if !batch.traces.is_empty() && bytes + len > MAX_TRACE_BATCH_BYTES {
                *held = Some(trace);
                break;
            }
            bytes += len;
            batch.traces.push(trace);
        }
        batch.dropped = self.unreported.swap(0, Ordering::Relaxed);
        (!batch.traces.is_empty() || batch.dropped > 0).then_some(batch)
    }
}

/// Empties a [`TraceQueue`] into batches for the control-plane stream: every `interval`, or as
/// soon as a full batch waits (but never within [`TRACE_BATCH_GAP`] of the previous batch).
#[derive(Debug)]
pub struct TraceShipper {
    queue: std::sync::Arc<TraceQueue>,
    ticker: tokio::time::Interval,
    last: Instant,
}

impl TraceShipper {
    pub fn new(queue: std::sync::Arc<TraceQueue>, interval: Duration) -> TraceShipper {
        let mut ticker = tokio::time::interval(interval.max(TRACE_BATCH_GAP));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        TraceShipper { queue, ticker, last: Instant::now() }
    }

    /// Resolves when a batch is due. Cancel-safe (a `select!` branch).
    pub async fn due(&mut self) {
        loop {
            tokio::select! {
                _ = self.ticker.tick() => {
                    if self.queue.has_work() {
                        return;
                    }
                }
                () = self.queue.full.notified() => {
                    tokio::time::sleep_until((self.last + TRACE_BATCH_GAP).into()).await;
                    return;
                }
            }
        }
    }

    /// The batch that is due (see [`TraceQueue::next_batch`]).
    pub fn next_batch(&mut self) -> Option<TraceBatch> {
        self.last = Instant::now();
        let batch = self.queue.next_batch();
        if self.queue.len() >= MAX_TRACES_PER_BATCH {
            // Another full batch is waiting: due again after the gap.
            self.queue.full.notify_one();
        }
        batch
    }

    /// A batch of `traces` the stream did not take: they count as dropped, and the batch's
    /// own count of drops (`dropped`) is reported again with the next one.
    pub fn lost(&self, traces: u64, dropped: u64) {
        self.queue.dropped(traces);
        self.queue.unreported.fetch_add(dropped, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelgw_model::traces::TraceAttempt;
    use modelgw_model::{EndpointId, GatewayId, GatewayKeyId};

    pub(crate) fn trace(body: Option<usize>) -> RequestTrace {
        RequestTrace {
            request_id: "req".into(),
            started_unix_ms: 1,
            gateway_id: GatewayId::new(),
            key_id: GatewayKeyId::new(),
            operation: "chat_completions".into(),
            model: Some("gpt-4o-mini".into()),
            stream: true,
            status: 200,
            attempts: vec![TraceAttempt {
                endpoint_id: EndpointId::new(),
                status: Some(200),
                outcome: "ok".into(),
                latency_ms: 3,
            }],
            latency_ms: 5,
            ttft_ms: Some(2),
            prompt_tokens: Some(1),
            completion_tokens: Some(2),
            client_request_id: None,
            request_body: body.map(|n| "x".repeat(n)),
            response_body: None,
            payload_truncated: false,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_reports_the_drops_once() {
        let queue = TraceQueue::new(3);
        for _ in 0..5 {
            queue.push(trace(None));
        }
        assert_eq!((queue.len(), queue.dropped_total()), (3, 2));
        let batch = queue.next_batch().expect("a batch");
        assert_eq!((batch.traces.len(), batch.dropped), (3, 2));
        assert!(queue.next_batch().is_none(), "nothing left, drops reported once");
        assert!(queue.push(trace(None)), "room again");
        assert_eq!(queue.dropped_total(), 2);
    }

    #[test]
    fn batches_stay_within_the_count_and_the_encoded_size() {
        let queue = TraceQueue::new(2_000);
        for _ in 0..(MAX_TRACES_PER_BATCH + 10) {
            queue.push(trace(None));
        }
        assert_eq!(queue.next_batch().expect("batch").traces.len(), MAX_TRACES_PER_BATCH);
        assert_eq!(queue.next_batch().expect("batch").traces.len(), 10);
        // Large bodies: a batch holds what fits under the bound, the next trace waits.
        for _ in 0..4 {
            queue.push(trace(Some(200 * 1024)));
        }
        let first = queue.next_batch().expect("batch");
        assert_eq!(first.traces.len(), 2);
        let size = batch_len_bound(&first.traces);
        assert!(size <= MAX_TRACE_BATCH_BYTES, "{size}");
        assert_eq!(queue.next_batch().expect("batch").traces.len(), 2);
        // A trace larger than the bound alone still goes, alone.
        queue.push(trace(Some(MAX_TRACE_BATCH_BYTES)));
        queue.push(trace(None));
        assert_eq!(queue.next_batch().expect("batch").traces.len(), 1);
        assert_eq!(queue.next_batch().expect("batch").traces.len(), 1);
    }

    #[test]
    fn queued_bodies_are_bounded_in_bytes() {
        let queue = TraceQueue::new(10_000);
        let each = 1024 * 1024;
        let fit = MAX_QUEUED_PAYLOAD_BYTES / each;
        for _ in 0..fit + 3 {
            queue.push(trace(Some(each)));
        }
        assert_eq!((queue.len(), queue.dropped_total()), (fit, 3));
        assert!(queue.push(trace(None)), "metadata still fits");
        while queue.next_batch().is_some() {}
        assert!(queue.push(trace(Some(each))), "room again once shipped");
    }

    #[tokio::test(start_paused = true)]
    async fn the_shipper_is_due_every_interval_with_work_or_at_once_for_a_full_batch() {
        let queue = std::sync::Arc::new(TraceQueue::new(10_000));
        let mut shipper = TraceShipper::new(queue.clone(), Duration::from_secs(1));
        // Nothing queued: not due.
        assert!(tokio::time::timeout(Duration::from_secs(3), shipper.due()).await.is_err());
        queue.push(trace(None));
        let waited = Instant::now();
        shipper.due().await;
        assert!(waited.elapsed() <= Duration::from_secs(1));
        assert_eq!(shipper.next_batch().expect("batch").traces.len(), 1);
        // A full batch does not wait for the tick, only for the gap.
        for _ in 0..MAX_TRACES_PER_BATCH * 2 {
            queue.push(trace(None));
        }
        let waited = Instant::now();
        shipper.due().await;
        assert!(waited.elapsed() <= TRACE_BATCH_GAP, "{:?}", waited.elapsed());
        assert_eq!(shipper.next_batch().expect("batch").traces.len(), MAX_TRACES_PER_BATCH);
        let waited = Instant::now();
        shipper.due().await;
        assert!(waited.elapsed() <= TRACE_BATCH_GAP, "{:?}", waited.elapsed());
        assert_eq!(shipper.next_batch().expect("batch").traces.len(), MAX_TRACES_PER_BATCH);
    }
}
