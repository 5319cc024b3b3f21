//! Bounded SSE framing of a relayed stream: whole events only go to the client (so that an
//! error event after a cut never lands inside a half-sent one), each byte is scanned once
//! (the blank-line search resumes where it stopped, no rescans of the pending bytes), and one
//! event may hold at most `max_event` bytes: an upstream that sends more without a boundary
//! ends the stream with the SSE error event instead of growing a buffer without limit (64 MiB
//! with no blank line once cost ~11 s of CPU and stalled every request on its thread).
//!
//! Event boundaries are blank lines with any of SSE's line ends (LF, CRLF, CR; the WHATWG
//! `text/event-stream` grammar). Chunks that end on a boundary pass through without a copy.

use bytes::{Bytes, BytesMut};

/// The framing state of one stream.
#[derive(Debug)]
pub(crate) struct SseFramer {
    /// Bytes received but not yet forwarded: the event in progress.
    pending: BytesMut,
    /// The scan is at the start of a line (the previous byte ended one, or nothing came yet).
    at_line_start: bool,
    /// The previous byte was a CR (and whether it ended an event): an LF now completes the
    /// same line end.
    after_cr: Option<bool>,
    max_event: usize,
}

/// An event larger than the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EventTooLarge {
    pub max_event: usize,
}

impl SseFramer {
    pub(crate) fn new(max_event: usize) -> Self {
        Self { pending: BytesMut::new(), at_line_start: true, after_cr: None, max_event }
    }

    /// Feeds one chunk; returns the complete events it finishes (possibly empty), or an error
    /// when the event in progress exceeds the cap.
    pub(crate) fn push(&mut self, chunk: Bytes) -> Result<Bytes, EventTooLarge> {
        let end = self.scan(&chunk);
        let out = if self.pending.is_empty() {
            // No event in progress: forward the chunk's complete events without copying.
            match end {
                Some(end) => {
                    let events = chunk.slice(..end);
                    self.pending.extend_from_slice(&chunk[end..]);
                    events
                }
                None => {
                    self.pending.extend_from_slice(&chunk);
                    Bytes::new()
                }
            }
        } else {
            let before = self.pending.len();
            self.pending.extend_from_slice(&chunk);
            match end {
                Some(end) => self.pending.split_to(before + end).freeze(),
                None => Bytes::new(),
            }
        };
        if self.pending.len() > self.max_event {
            self.pending = BytesMut::new();
            return Err(EventTooLarge { max_event: self.max_event });
        }
        Ok(out)
    }

    /// What is left when the upstream ends: an event without its final blank line.
    pub(crate) fn finish(&mut self) -> Option<Bytes> {
        let rest = std::mem::take(&mut self.pending);
        (!rest.is_empty()).then(|| rest.freeze())
    }

    /// Scans `chunk` once, carrying the line state across chunks; the end of the last event
    /// boundary in it, if any.
    #[inline]
    fn scan(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut last = None;
        let mut i = 0;
        // Only line ends matter: jump from one CR/LF byte to the next.
        while let Some(offset) = memchr::memchr2(b'\n', b'\r', &chunk[i..]) {
            if offset > 0 {
                self.at_line_start = false;
                self.after_cr = None;
            }
            let at = i + offset;
            match (chunk[at], self.after_cr.take()) {
                // The LF of a CRLF: the same line end; a boundary that ended at the CR now
                // ends after the LF.
                (b'\n', Some(was_boundary)) => {
                    if was_boundary {
                        last = Some(at + 1);
                    }
                }
                (byte, _) => {
                    // A line end right after a line end: a blank line ends the event.
                    let boundary = self.at_line_start;
                    if boundary {
                        last = Some(at + 1);
                    }
                    self.at_line_start = true;
                    if byte == b'\r' {
                        self.after_cr = Some(boundary);
                    }
                }
            }
            i = at + 1;
        }
        if i < chunk.len() {
            // The chunk ends inside a line.
            self.at_line_start = false;
            self.after_cr = None;
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_all(chunks: &[&[u8]], max: usize) -> Result<Vec<u8>, EventTooLarge> {
        let mut framer = SseFramer::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&framer.push(Bytes::copy_from_slice(chunk))?);
        }
        Ok(out)
    }

    #[test]
    fn whole_events_only_with_any_line_end() {
        assert_eq!(frame_all(&[b"data: {}\n\ndata: {\"a\""], 1024).expect("ok"), b"data: {}\n\n");
        assert_eq!(frame_all(&[b"data: {}\r\n\r\n"], 1024).expect("ok"), b"data: {}\r\n\r\n");
        assert_eq!(frame_all(&[b"data: {}\r\rdata"], 1024).expect("ok"), b"data: {}\r\r");
        assert_eq!(frame_all(&[b"data: {\"partial"], 1024).expect("ok"), b"");
        // Boundaries split across chunks.
        assert_eq!(
            frame_all(&[b"data: 1\n", b"\ndata: 2\r\n\r", b"\n"], 1024).expect("ok"),
            b"data: 1\n\ndata: 2\r\n\r\n"
        );
        assert_eq!(frame_all(&[b"data: 1\r\n", b"\r\n"], 1024).expect("ok"), b"data: 1\r\n\r\n");
        assert_eq!(
            frame_all(&[b"data: 1\r", b"\ndata: 2"], 1024).expect("ok"),
            b"",
            "CRLF across chunks is one line end"
        );
        // A chunk that ends exactly on a boundary passes through as is.
        let mut framer = SseFramer::new(1024);
        let chunk = Bytes::from_static(b"data: {}\n\n");
        let out = framer.push(chunk.clone()).expect("ok");
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "no copy");
    }

    #[test]
    fn an_event_over_the_cap_is_an_error_and_frees_its_bytes() {
        let mut framer = SseFramer::new(16);
        assert_eq!(framer.push(Bytes::from_static(b"data: 0123456789")), Ok(Bytes::new()));
        assert_eq!(
            framer.push(Bytes::from_static(b"abcdef")),
            Err(EventTooLarge { max_event: 16 })
        );
        assert!(framer.pending.is_empty());
        // Complete events never count against the cap, however many.
        let mut framer = SseFramer::new(16);
        for _ in 0..100 {
            assert_eq!(
                &framer.push(Bytes::from_static(b"data: 1\n\n")).expect("ok")[..],
                b"data: 1\n\n"
            );
        }
    }

    #[test]
    fn finish_returns_a_trailing_event_without_its_blank_line() {
        let mut framer = SseFramer::new(1024);
        assert_eq!(framer.push(Bytes::from_static(b"data: [DONE]\n")), Ok(Bytes::new()));
        assert_eq!(framer.finish().as_deref(), Some(&b"data: [DONE]\n"[..]));
        assert_eq!(framer.finish(), None);
    }
}
