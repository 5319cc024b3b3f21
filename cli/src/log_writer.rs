//! Where log lines go: a shared in-memory buffer that a flusher thread writes to stderr.
//!
//! A thread that logs only appends its formatted line to its shard of the buffer (a mutex no
//! other serving thread uses — each thread gets its own shard, round robin — and no system
//! call), so a request never waits on stderr, its lock, a slow pipe or another thread. Lines of
//! one thread stay in order; lines of different threads are ordered by batch (each carries its
//! time). The flusher writes what has gathered in one `write` per batch:
//! - at once for every line except access-log lines (target `modelgw::access`): state changes,
//!   warnings and errors are on stderr within microseconds (tools that follow the log, such as
//!   the benchmark's propagation test, see them when they happen);
//! - for access-log lines, at the next flush or within [`ACCESS_LOG_DELAY`]. Waking the flusher
//!   for each of them cost a context switch per request: on a loaded machine about 30 µs of a
//!   streamed request's time to first byte (BENCHMARKS.md).
//!
//! When more than [`MAX_BUFFERED`] bytes wait (stderr cannot keep up), new lines are dropped,
//! never the request slowed; [`BatchWriter::dropped_lines`] counts them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// Longest an access-log line waits in the buffer.
pub const ACCESS_LOG_DELAY: Duration = Duration::from_millis(50);

/// Bytes buffered before new lines are dropped (a few seconds of access log at full load).
pub const MAX_BUFFERED: usize = 8 * 1024 * 1024;

/// Shards of the buffer; threads take them round robin.
const SHARDS: usize = 8;

/// Bytes one shard may hold before its new lines are dropped.
const SHARD_MAX: usize = MAX_BUFFERED / SHARDS;

/// Bytes in one shard that wake the flusher even for access-log lines.
const FLUSH_BYTES: usize = 64 * 1024;

/// The target of the data plane's access-log line.
const ACCESS_TARGET: &str = "modelgw::access";

struct Shared {
    shards: [Mutex<Vec<u8>>; SHARDS],
    /// Set when a line wants writing now; the flusher sleeps on it.
    pending: Mutex<bool>,
    wake: Condvar,
    /// Longest an access-log line waits: [`ACCESS_LOG_DELAY`] (tests choose another).
    delay: Duration,
    closed: AtomicBool,
    dropped: AtomicU64,
}

impl Shared {
    fn shard(&self, index: usize) -> MutexGuard<'_, Vec<u8>> {
        self.shards[index % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn signal(&self) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
    }
}

/// Hands out shards round robin, one per thread for its lifetime.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// The `MakeWriter` for the fmt layer; clones share one buffer and flusher.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the flusher after writing everything still buffered.
pub struct FlushGuard {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.signal();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

impl BatchWriter {
    /// A writer to `out` and the guard that flushes it at the end.
    pub fn new(
        out: impl std::io::Write + Send + 'static,
    ) -> std::io::Result<(BatchWriter, FlushGuard)> {
        BatchWriter::with_delay(out, ACCESS_LOG_DELAY)
    }

    /// [`BatchWriter::new`] with access-log lines waiting at most `delay`.
    fn with_delay(
        out: impl std::io::Write + Send + 'static,
        delay: Duration,
    ) -> std::io::Result<(BatchWriter, FlushGuard)> {
        let shared = Arc::new(Shared {
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
            pending: Mutex::new(false),
            wake: Condvar::new(),
            delay,
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let flusher = std::thread::Builder::new().name("modelgw-log-writer".to_owned()).spawn({
            let shared = Arc::clone(&shared);
            move || flush_until_closed(&shared, out)
        })?;
        Ok((
            BatchWriter { shared: Arc::clone(&shared) },
            FlushGuard { shared, flusher: Some(flusher) },
        ))
    }

    /// Lines dropped so far because the buffer was full.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

fn flush_until_closed(shared: &Shared, mut out: impl std::io::Write) {
    let mut batch = Vec::with_capacity(FLUSH_BYTES);
    loop {
        let closing = shared.closed.load(Ordering::Acquire);
        if !closing {
            let pending = shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
            // Until a line asks for it or the delay is over (a spurious wake-up waits on).
            let mut pending = shared
                .wake
                .wait_timeout_while(pending, shared.delay, |pending| !*pending)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            *pending = false;
        }
        for index in 0..SHARDS {
            std::mem::swap(&mut *shared.shard(index), &mut batch);
            if !batch.is_empty() {
                // Nowhere to report a failing stderr; the lines are lost either way.
                let _ = out.write_all(&batch).and_then(|()| out.flush());
                batch.clear();
            }
        }
        if closing {
            return;
        }
    }
}

/// One event's writer: appends the formatted line to the shared buffer.
pub struct LineSink<'a> {
    shared: &'a Shared,
    /// Wake the flusher now (every line but the access log's).
    prompt: bool,
}

impl std::io::Write for LineSink<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.shared.shard(SHARD.with(|shard| *shard));
        if buffer.len() + line.len() > SHARD_MAX {
            drop(buffer);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        buffer.extend_from_slice(line);
        let wake = self.prompt || buffer.len() >= FLUSH_BYTES;
        drop(buffer);
        if wake {
            self.shared.signal();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineSink<'a>;

    fn make_writer(&'a self) -> LineSink<'a> {
        LineSink { shared: &self.shared, prompt: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineSink<'a> {
        LineSink { shared: &self.shared, prompt: meta.target() != ACCESS_TARGET }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::test_output::Output as Out;

    fn sink(writer: &BatchWriter, prompt: bool) -> LineSink<'_> {
        LineSink { shared: &writer.shared, prompt }
    }

    #[test]
    fn lines_reach_the_output_in_order_and_all_are_flushed_at_the_end() {
        let out = Out::default();
        let (writer, guard) = BatchWriter::new(out.clone()).expect("flusher starts");
        for i in 0..1000 {
            let prompt = i % 3 == 0;
            sink(&writer, prompt).write_all(format!("line {i}\n").as_bytes()).expect("write");
        }
        drop(guard);
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(out.text(), expected);
        assert_eq!(writer.dropped_lines(), 0);
    }

    /// Longer than any test waits: with it, only a wake-up gets a line written.
    const NEVER: Duration = Duration::from_secs(3600);
    /// How long a loaded machine may take to run a woken thread (it takes microseconds).
    const PATIENCE: Duration = Duration::from_secs(30);

    #[test]
    fn a_prompt_line_wakes_the_flusher_an_access_line_does_not() {
        let out = Out::default();
        let (writer, _guard) = BatchWriter::with_delay(out.clone(), NEVER).expect("flusher starts");
        sink(&writer, false).write_all(b"request answered\n").expect("write");
        // Plenty of time for a flusher woken by the access line to write it.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(out.text(), "", "an access line waits for the delay or the next flush");

        sink(&writer, true).write_all(b"snapshot applied\n").expect("write");
        out.wait_for("snapshot applied", PATIENCE).expect("a prompt line is written, not delayed");
        assert_eq!(out.text(), "request answered\nsnapshot applied\n", "in order, one batch");
    }

    #[test]
    fn an_access_line_alone_is_written_once_its_delay_is_over() {
        let out = Out::default();
        let (writer, _guard) = BatchWriter::new(out.clone()).expect("flusher starts");
        // Nothing wakes the flusher: only the end of its wait (50 ms) writes the line.
        sink(&writer, false).write_all(b"request answered\n").expect("write");
        out.wait_for("request answered", PATIENCE).expect("written without a wake-up");
    }

    #[test]
    fn a_full_buffer_drops_new_lines_and_counts_them() {
        /// An output that never returns, like a pipe nobody reads.
        struct Stuck;
        impl std::io::Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                std::thread::park();
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (writer, guard) = BatchWriter::new(Stuck).expect("flusher starts");
        let line = vec![b'x'; 1024];
        // This thread's shard: at most one shard's worth is taken by the stuck flusher and one
        // more waits; of three shards' worth, at least one is dropped.
        for _ in 0..(3 * SHARD_MAX / line.len()) {
            sink(&writer, true).write_all(&line).expect("a write never blocks or fails");
        }
        assert!(writer.dropped_lines() >= (SHARD_MAX / line.len()) as u64);
        // The flusher is stuck in `Stuck::write`; do not wait for it.
        std::mem::forget(guard);
    }
}
