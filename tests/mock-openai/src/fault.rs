//! Scripted faults and the per-deployment queue that hands them out.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// A misbehaviour the mock applies to the next `times` requests for one deployment.
///
/// `times == u32::MAX` means "until [`crate::MockAzure::reset`]". When sent over the control API
/// (`POST /_mock/faults/{deployment}`), `times` may be omitted and defaults to 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this status and the Azure body for it (429, 500, 503, 401, 404 have their exact
    /// Azure bodies; other statuses get `{"error":{"code":"<status>","message":"<reason>"}}`).
    /// `retry_after` / `retry_after_ms` become the `retry-after` / `retry-after-ms` headers; on a
    /// 429 the message also says "Please retry after N seconds" when either is set.
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u64>,
        #[serde(default)]
        retry_after_ms: Option<u64>,
        #[serde(default = "one")]
        times: u32,
    },
    /// Wait `ms` before the response headers, then answer normally.
    Latency {
        ms: u64,
        #[serde(default = "one")]
        times: u32,
    },
    /// Drop the connection after reading the request, before any response byte.
    Reset {
        #[serde(default = "one")]
        times: u32,
    },
    /// Pause `ms` after `after_chunks` SSE data frames (frames are counted from Azure's first,
    /// annotation-only frame; `[DONE]` counts too; a Responses stream counts its events from
    /// `response.created`, a speech answer its binary chunks). On a non-streaming answer the
    /// body is held back for `ms` after the headers.
    StreamStall {
        after_chunks: u32,
        ms: u64,
        #[serde(default = "one")]
        times: u32,
    },
    /// Abort the connection after `after_chunks` SSE data frames (same counting as
    /// [`Fault::StreamStall`]; a count at or past the end aborts before the body terminates). On a
    /// non-streaming answer the headers and the first half of the body are sent, then the
    /// connection is aborted.
    StreamCut {
        after_chunks: u32,
        #[serde(default = "one")]
        times: u32,
    },
    /// Answer 400 with Azure's prompt content-filter body, byte for byte.
    ContentFilter {
        #[serde(default = "one")]
        times: u32,
    },
    /// Answer 200 `text/event-stream` with Azure's first frame, then one event of `bytes`
    /// bytes that never ends (no blank line), sent in 64 KiB chunks as fast as the client
    /// reads: an upstream a gateway must not buffer without bound.
    UnboundedEvent {
        bytes: u64,
        #[serde(default = "one")]
        times: u32,
    },
    /// Answer 429 whose only retry hint is the sentence "Please retry after N seconds." in
    /// Azure's message (§1.6), with no `retry-after` / `retry-after-ms` header: what a gateway
    /// must still read its throttle window from.
    ThrottledByMessage {
        retry_after_secs: u64,
        #[serde(default = "one")]
        times: u32,
    },
}

impl Fault {
    /// A 429 with `retry-after: {retry_after_secs}` (Azure's throttling answer), `times` times.
    pub fn throttled(retry_after_secs: u64, times: u32) -> Fault {
        Fault::Status {
            status: 429,
            retry_after: Some(retry_after_secs),
            retry_after_ms: None,
            times,
        }
    }
}

fn one() -> u32 {
    1
}

impl Fault {
    /// How many more requests this fault applies to.
    pub fn times(&self) -> u32 {
        match self {
            Fault::Status { times, .. }
            | Fault::Latency { times, .. }
            | Fault::Reset { times }
            | Fault::StreamStall { times, .. }
            | Fault::StreamCut { times, .. }
            | Fault::ContentFilter { times }
            | Fault::UnboundedEvent { times, .. }
            | Fault::ThrottledByMessage { times, .. } => *times,
        }
    }

    fn times_mut(&mut self) -> &mut u32 {
        match self {
            Fault::Status { times, .. }
            | Fault::Latency { times, .. }
            | Fault::Reset { times }
            | Fault::StreamStall { times, .. }
            | Fault::StreamCut { times, .. }
            | Fault::ContentFilter { times }
            | Fault::UnboundedEvent { times, .. }
            | Fault::ThrottledByMessage { times, .. } => times,
        }
    }

    /// Short, low-cardinality name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Status { .. } => "status",
            Fault::Latency { .. } => "latency",
            Fault::Reset { .. } => "reset",
            Fault::StreamStall { .. } => "stream_stall",
            Fault::StreamCut { .. } => "stream_cut",
            Fault::ContentFilter { .. } => "content_filter",
            Fault::UnboundedEvent { .. } => "unbounded_event",
            Fault::ThrottledByMessage { .. } => "throttled_by_message",
        }
    }
}

/// One deployment's scripted faults, applied in order.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    queue: VecDeque<Fault>,
}

impl FaultQueue {
    /// Appends a fault; a fault that applies to zero requests is dropped.
    pub(crate) fn push(&mut self, fault: Fault) {
        if fault.times() > 0 {
            self.queue.push_back(fault);
        }
    }

    /// Takes one application of the head fault: decrements its `times` (never for `u32::MAX`)
    /// and pops it when it reaches zero.
    pub(crate) fn take(&mut self) -> Option<Fault> {
        let head = self.queue.front_mut()?;
        let applied = head.clone();
        let times = head.times_mut();
        if *times != u32::MAX {
            *times -= 1;
            if *times == 0 {
                self.queue.pop_front();
            }
        }
        Some(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_fault_is_consumed_times_then_popped() {
        let mut q = FaultQueue::default();
        q.push(Fault::Reset { times: 2 });
        q.push(Fault::ContentFilter { times: 1 });
        assert_eq!(q.take().map(|f| f.kind()), Some("reset"));
        assert_eq!(q.take().map(|f| f.kind()), Some("reset"));
        assert_eq!(q.take().map(|f| f.kind()), Some("content_filter"));
        assert_eq!(q.take(), None);
    }

    #[test]
    fn max_times_never_runs_out_and_zero_times_is_ignored() {
        let mut q = FaultQueue::default();
        q.push(Fault::Reset { times: 0 });
        q.push(Fault::Latency { ms: 5, times: u32::MAX });
        for _ in 0..1000 {
            assert_eq!(q.take(), Some(Fault::Latency { ms: 5, times: u32::MAX }));
        }
    }

    #[test]
    fn json_shape_is_tagged_snake_case_and_times_defaults_to_one() {
        let f: Fault = serde_json::from_str(r#"{"kind":"stream_cut","after_chunks":3}"#)
            .expect("valid fault JSON");
        assert_eq!(f, Fault::StreamCut { after_chunks: 3, times: 1 });
        let s = serde_json::to_value(Fault::throttled(6, 2)).expect("serializable");
        assert_eq!(
            s,
            serde_json::json!({"kind":"status","status":429,"retry_after":6,"retry_after_ms":null,"times":2})
        );
    }
}
