//! Request traces (issue #14, item 3) in domain form: what a gateway that enables them
//! records per request, and the batches data planes ship to the control plane off the
//! request path.

use crate::{EndpointId, GatewayId, GatewayKeyId};

/// Cap of one captured body when the gateway sets none: 64 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u32 = 64 * 1024;
/// The largest cap a gateway may set: 256 KiB, so that one trace with both bodies fits a
/// protocol message (the control plane reads at most 1 MiB per message).
pub const MAX_PAYLOAD_BYTES: u32 = 256 * 1024;
/// At most this many redacted field names per gateway.
pub const MAX_REDACT_FIELDS: usize = 64;
/// At most this many traces in one batch; a data plane also keeps a batch's encoding under
/// [`MAX_TRACE_BATCH_BYTES`].
pub const MAX_TRACES_PER_BATCH: usize = 500;
/// The encoded size a data plane keeps a batch under (a trace alone may exceed it, up to the
/// payload caps).
pub const MAX_TRACE_BATCH_BYTES: usize = 512 * 1024;
/// A client request id longer than this is cut; control characters are dropped.
pub const MAX_CLIENT_REQUEST_ID_CHARS: usize = 128;
/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

/// What a gateway records (the data plane's part; retention is the control plane's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceSettings {
    pub enabled: bool,
    pub capture_payload: bool,
    /// JSON field names whose values are replaced by [`REDACTED`] at any depth.
    pub redact_fields: Vec<String>,
    /// `None` = [`DEFAULT_MAX_PAYLOAD_BYTES`].
    pub max_payload_bytes: Option<u32>,
}

impl TraceSettings {
    pub fn payload_cap(&self) -> usize {
        self.max_payload_bytes.unwrap_or(DEFAULT_MAX_PAYLOAD_BYTES) as usize
    }
}

/// One upstream attempt of a traced request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceAttempt {
    pub endpoint_id: EndpointId,
    /// `None` when no answer was received.
    pub status: Option<u16>,
    /// "ok", "throttled", "error", "timeout", "transport", "client_error", …
    pub outcome: String,
    pub latency_ms: u32,
}

/// One request as a gateway traced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTrace {
    pub request_id: String,
    pub started_unix_ms: i64,
    pub gateway_id: GatewayId,
    pub key_id: GatewayKeyId,
    pub operation: String,
    pub model: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub attempts: Vec<TraceAttempt>,
    pub latency_ms: u32,
    pub ttft_ms: Option<u32>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub client_request_id: Option<String>,
    /// Captured bodies, redacted and capped (payload capture on only).
    pub request_body: Option<String>,
    pub response_body: Option<String>,
    pub payload_truncated: bool,
}

/// Traces one data plane recorded since its previous batch, and how many it had to drop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceBatch {
    pub traces: Vec<RequestTrace>,
    pub dropped: u64,
    /// Entries that could not be read (filled on decode only; never sent).
    pub skipped: Vec<crate::protocol::InvalidMessage>,
}
