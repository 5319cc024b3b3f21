//! Reading `modelgw` JSON logs (`MODELGW_LOG_FORMAT=json`) line by line as they are written,
//! to time configuration changes: each line the benchmark cares about is stamped with the
//! instant it was read, before it is parsed.
//!
//! A line looks like `{"timestamp":…,"level":"INFO","fields":{"message":"snapshot applied",
//! "version":7,…},"target":…}`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::ChildStderr;

/// One log line of interest.
#[derive(Clone, Debug)]
pub struct Event {
    /// When the benchmark read the line.
    pub at: Instant,
    /// Which process wrote it (the caller's index).
    pub source: usize,
    pub message: String,
    /// The line's `fields` object.
    pub fields: Value,
}

impl Event {
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }
}

/// The `fields.message` and `fields` of a JSON log line; `None` for anything else.
pub fn parse_line(line: &str) -> Option<(String, Value)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?.clone();
    let message = fields.get("message")?.as_str()?.to_owned();
    Some((message, fields))
}

/// Events of several processes, appended as their lines are read.
#[derive(Clone, Default)]
pub struct EventLog {
    events: Arc<Mutex<Vec<Event>>>,
}

impl EventLog {
    /// Reads `stderr` until it closes, keeping lines whose message is in `messages`.
    pub fn watch(&self, source: usize, stderr: ChildStderr, messages: &'static [&'static str]) {
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let at = Instant::now();
                if !messages.iter().any(|m| line.contains(m)) {
                    continue;
                }
                if let Some((message, fields)) = parse_line(&line)
                    && messages.contains(&message.as_str())
                {
                    events.lock().unwrap_or_else(PoisonError::into_inner).push(Event {
                        at,
                        source,
                        message,
                        fields,
                    });
                }
            }
        });
    }

    /// Runs `f` over the events so far.
    pub fn with<T>(&self, f: impl FnOnce(&[Event]) -> T) -> T {
        f(&self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Polls (every millisecond) until `f` returns `Some`, at most `within`.
    pub async fn wait_for<T>(
        &self,
        within: Duration,
        what: &str,
        f: impl Fn(&[Event]) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(t) = self.with(&f) {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!("timed out after {within:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The first `message` event of `source` with `key >= version`.
pub fn first_at_least<'a>(
    events: &'a [Event],
    source: usize,
    message: &str,
    key: &str,
    version: u64,
) -> Option<&'a Event> {
    events
        .iter()
        .find(|e| e.source == source && e.message == message && e.u64(key) >= Some(version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_log_lines_give_message_and_fields() {
        let line = r#"{"timestamp":"2026-03-01T10:00:00.123456Z","level":"INFO","fields":{"message":"snapshot applied","version":42,"gateways":1000,"endpoints":10000,"apply_us":18234},"target":"modelgw_data_plane::client"}"#;
        let (message, fields) = parse_line(line).expect("parse");
        assert_eq!(message, "snapshot applied");
        assert_eq!(fields["apply_us"], 18234);
        assert!(parse_line("2026-03-01 INFO snapshot applied version=42").is_none());
        assert!(parse_line(r#"{"level":"INFO"}"#).is_none());
    }

    #[test]
    fn the_first_event_at_or_past_a_version_wins() {
        let at = Instant::now();
        let ev = |source, version| Event {
            at,
            source,
            message: "snapshot applied".into(),
            fields: serde_json::json!({ "version": version }),
        };
        let events = vec![ev(0, 3), ev(1, 4), ev(0, 5), ev(0, 6)];
        let e = first_at_least(&events, 0, "snapshot applied", "version", 4).expect("found");
        assert_eq!(e.u64("version"), Some(5));
        assert!(first_at_least(&events, 1, "snapshot applied", "version", 5).is_none());
        assert!(first_at_least(&events, 0, "snapshot published", "version", 1).is_none());
    }
}
