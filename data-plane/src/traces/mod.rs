//! Request traces (issue #14, item 3): for gateways that enable them, one
//! [`RequestTrace`](modelgw_model::traces::RequestTrace) per request, queued off the request
//! path and shipped to the control plane in batches.
//!
//! Cost, by gateway setting:
//! - **Traces off** (the default): nothing. The compiled gateway holds no [`CompiledTraces`],
//!   the request carries `None`, and no branch below is taken.
//! - **Metadata only**: one boxed recorder per request (ids, operation, model, stream flag,
//!   status, each attempt's endpoint, status, outcome and latency, total latency, time to
//!   first token, tokens, client request id), filled from values the request path has anyway.
//!   Streamed answers are scanned for the first token and the `usage` chunk with the same
//!   `memmem` searches the metrics use; no body byte is copied.
//! - **Payload capture**: the request body and the answer are copied, JSON fields named in
//!   `redact_fields` replaced by `"[REDACTED]"` at any depth (`redact.rs`), and each cut to
//!   the gateway's cap with `payload_truncated` set. A streamed chat completion is reassembled
//!   into the final message (content and tool calls, as a non-streamed answer would carry
//!   them); other streams keep their events as sent, each redacted (`stream.rs`).
//!
//! A finished trace goes into a bounded queue (`queue.rs`: [`DEFAULT_TRACE_QUEUE`] traces and
//! [`MAX_QUEUED_PAYLOAD_BYTES`] of bodies); when it is full the trace is dropped and counted
//! (`modelgw_traces_dropped_total`, and `TraceBatch.dropped` for the control plane). Pushing
//! never waits. The control-plane client ships the queue (`TraceShipper`) every second or as
//! soon as a batch is full, at most ten batches a second; while the control plane is away the
//! queue keeps what it can hold.

mod queue;
mod recorder;
mod redact;
mod stream;

use std::sync::Arc;

use modelgw_model::traces::TraceSettings;

pub use queue::{
    DEFAULT_TRACE_QUEUE, MAX_QUEUED_PAYLOAD_BYTES, TRACE_BATCH_GAP, TRACE_INTERVAL, TraceQueue,
    TraceShipper, batch_len_bound, encoded_len_bound,
};
pub(crate) use recorder::{ResponseTrace, TraceRecorder, TraceStart};

/// A gateway's trace settings as the request path uses them, compiled once per snapshot.
#[derive(Debug)]
pub struct CompiledTraces {
    /// Copy the bodies (redacted, capped).
    pub capture_payload: bool,
    /// Field names whose values are redacted, matched without regard to ASCII case.
    pub(crate) redact_fields: Vec<Box<str>>,
    /// Cap of each captured body in bytes.
    pub payload_cap: usize,
}

impl CompiledTraces {
    /// `None` when the gateway traces nothing.
    pub fn compile(settings: &TraceSettings) -> Option<Arc<CompiledTraces>> {
        settings.enabled.then(|| {
            Arc::new(CompiledTraces {
                capture_payload: settings.capture_payload,
                redact_fields: settings
                    .redact_fields
                    .iter()
                    .map(|f| f.to_ascii_lowercase().into_boxed_str())
                    .collect(),
                payload_cap: settings.payload_cap(),
            })
        })
    }

    /// Whether `key` names a redacted field.
    pub(crate) fn redacts(&self, key: &str) -> bool {
        self.redact_fields.iter().any(|f| f.eq_ignore_ascii_case(key))
    }
}

/// The queue's Prometheus metrics, read at scrape time: `modelgw_traces_dropped_total`
/// (traces lost because the queue was full) and `modelgw_traces_queued` (waiting to be
/// shipped).
#[derive(Debug)]
pub struct QueueMetrics(pub Arc<TraceQueue>);

impl prometheus_client::collector::Collector for QueueMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let dropped = ConstCounter::new(self.0.dropped_total());
        dropped.encode(encoder.encode_descriptor(
            "modelgw_traces_dropped",
            "Request traces dropped because the trace queue was full",
            None,
            dropped.metric_type(),
        )?)?;
        let queued = ConstGauge::new(i64::try_from(self.0.len()).unwrap_or(i64::MAX));
        queued.encode(encoder.encode_descriptor(
            "modelgw_traces_queued",
            "Request traces waiting to be shipped to the control plane",
            None,
            queued.metric_type(),
        )?)?;
        Ok(())
    }
}
