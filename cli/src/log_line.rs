//! The text log line: `2026-11-25T08:45:12.123456Z  INFO span{k=v}: message k=v k=v`.
//!
//! The same shape as `tracing-subscriber`'s default `Full` format, written with less work: the
//! data plane logs one access line per request, and the default formatter spent about 13,000
//! instructions on it (a seventh of a proxied request; see BENCHMARKS.md) — mostly a calendar
//! conversion per line, `Debug`-escaping every string and styling calls that write nothing
//! without colours. Here the date and time to the second are formatted once per second per
//! thread, numbers and plain strings are written as they are, and a string is quoted (with
//! `Debug` escapes) only when it holds a space, a quote, an `=` or a control character, so a
//! line always splits back into its fields. No colours: logs go to files and collectors.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats an event: time, level, the span scope from the root, then the event's fields.
#[derive(Clone, Copy, Debug, Default)]
pub struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_timestamp(&mut writer, SystemTime::now())?;
        writer.write_str(match *event.metadata().level() {
            Level::ERROR => " ERROR ",
            Level::WARN => "  WARN ",
            Level::INFO => "  INFO ",
            Level::DEBUG => " DEBUG ",
            Level::TRACE => " TRACE ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut spans = false;
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
                spans = true;
            }
            if spans {
                writer.write_char(' ')?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

thread_local! {
    /// The second last formatted on this thread and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [b'0'; 19])) };
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-25T08:45:12.123456Z`.
fn write_timestamp(writer: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let text = SECOND.with(|cached| {
        let (second, text) = cached.get();
        if second == secs {
            return text;
        }
        let text = format_second(secs);
        cached.set((secs, text));
        text
    });
    // Only ASCII digits and separators are ever written into it.
    writer.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)?;
    let micros = since_epoch.subsec_micros();
    let mut fraction = *b".000000Z";
    let mut rest = micros;
    for digit in fraction[1..7].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    writer.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second (UTC).
fn format_second(secs: u64) -> [u8; 19] {
    let mut out = [b'0'; 19];
    let when = i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::<chrono::Utc>::from_timestamp(s, 0))
        .unwrap_or_default();
    let mut text = String::with_capacity(19);
    let _ = write!(text, "{}", when.format("%Y-%m-%dT%H:%M:%S"));
    if text.len() == out.len() {
        out.copy_from_slice(text.as_bytes());
    }
    out
}

/// Formats fields as `name=value`, space-separated; `message` without its name, first.
#[derive(Clone, Copy, Debug, Default)]
pub struct LineFields;

impl<'w> MakeVisitor<Writer<'w>> for LineFields {
    type Visitor = LineVisitor<'w>;

    fn make_visitor(&self, target: Writer<'w>) -> LineVisitor<'w> {
        LineVisitor { writer: target, first: true, result: Ok(()) }
    }
}

/// Writes one event's or span's fields.
pub struct LineVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl LineVisitor<'_> {
    /// Writes the separator and `name=` (nothing for `message`), then `value`.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // Fields the `log` bridge adds duplicate the event's own metadata; `otel.*` fields
        // name and shape a span for the OpenTelemetry export only.
        if name.starts_with("log.") || name.starts_with("otel.") {
            return;
        }
        self.result = (|| {
            if !self.first {
                self.writer.write_char(' ')?;
            }
            self.first = false;
            if name != "message" {
                self.writer.write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.writer.write_char('=')?;
            }
            value(&mut self.writer)
        })();
    }
}

/// Whether a string holds a character that could end the line or rewrite the terminal (a
/// control character): such text is always written escaped, so no input can forge a line.
fn has_controls(value: &str) -> bool {
    value.chars().any(char::is_control)
}

/// A writer that passes text through with every control character escaped (`\n`,
/// `\u{1b}`, …): messages are written through it as they are formatted, with no copy.
struct EscapeControls<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for EscapeControls<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !has_controls(s) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            if c.is_control() {
                write!(self.0, "{}", c.escape_debug())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Whether a string must be quoted to keep the line splittable into `name=value` pairs.
fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || value.bytes().any(|b| b <= b' ' || b == b'"' || b == b'=' || b == b'\\' || b == 0x7f)
}

impl Visit for LineVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let message = field.name() == "message";
        self.field(field, |w| {
            if message {
                EscapeControls(w).write_str(value)
            } else if !needs_quotes(value) {
                w.write_str(value)
            } else {
                write!(w, "{value:?}")
            }
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here as a `Debug` that writes their `Display`; quoted only
        // when that text needs it, like strings.
        let message = field.name() == "message";
        self.field(field, |w| {
            if message {
                return write!(EscapeControls(w), "{value:?}");
            }
            let mut text = String::new();
            write!(text, "{value:?}")?;
            // Text that is already a quoted `Debug` string has no raw control character; a
            // `Display` value that merely starts with a quote may (a NACK reason, say).
            if needs_quotes(&text) && (!text.starts_with('"') || has_controls(&text)) {
                write!(w, "{text:?}")
            } else {
                w.write_str(&text)
            }
        });
    }
}

impl VisitOutput<fmt::Result> for LineVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for LineVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::test_output::Output;

    fn capture(emit: impl FnOnce()) -> String {
        let buffer = Output::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(LineFormat)
                .fmt_fields(LineFields)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, emit);
        buffer.text()
    }

    #[test]
    fn a_line_has_time_level_spans_message_and_splittable_fields() {
        let out = capture(|| {
            let span = tracing::info_span!("request", request_id = "abc-1", path = "/a b");
            let _entered = span.enter();
            tracing::warn!(
                status = 429u16,
                ms = 12u64,
                ok = false,
                delta = -3i64,
                endpoint = %"eus",
                reason = %"throttled; retry after 2000 ms",
                empty = "",
                quoted = "say \"hi\"",
                "upstream attempt"
            );
        });
        let line = out.strip_suffix('\n').expect("one line");
        let (time, rest) = line.split_once(' ').expect("time first");
        assert_eq!(time.len(), "2026-11-25T08:45:12.123456Z".len(), "{line}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T' && time.as_bytes()[19] == b'.');
        assert_eq!(
            rest,
            concat!(
                " WARN request{request_id=abc-1 path=\"/a b\"}: upstream attempt status=429 ",
                "ms=12 ok=false delta=-3 endpoint=eus reason=\"throttled; retry after 2000 ms\" ",
                "empty=\"\" quoted=\"say \\\"hi\\\"\""
            )
        );
    }

    #[test]
    fn no_value_or_message_can_start_a_new_line() {
        let forged =
            "\"x\n2026-12-06T00:00:00.000000Z  INFO config_stream: data plane applied snapshot";
        let out = capture(|| {
            tracing::warn!(reason = %forged, "data plane rejected snapshot");
            tracing::warn!(reason = forged, node_id = ?forged, "a str and a Debug value");
            tracing::warn!("a message with an input in it: {forged}");
        });
        assert_eq!(out.lines().count(), 3, "one line per event: {out}");
        for line in out.lines() {
            assert!(line.contains("\\n2026-12-06T00:00:00.000000Z"), "escaped: {line}");
        }
        let first = out.lines().next().expect("a line");
        assert!(
            first.ends_with(
                r#"reason="\"x\n2026-12-06T00:00:00.000000Z  INFO config_stream: data plane applied snapshot""#
            ),
            "{first}"
        );
    }

    #[test]
    fn fields_recorded_later_on_a_span_are_appended() {
        let out = capture(|| {
            let span = tracing::info_span!("request", gateway = tracing::field::Empty);
            span.record("gateway", "chat");
            span.in_scope(|| tracing::info!("request answered"));
        });
        assert!(out.ends_with("  INFO request{gateway=chat}: request answered\n"), "{out}");
    }

    #[test]
    fn otel_fields_stay_out_of_the_line() {
        let out = capture(|| {
            let span = tracing::info_span!(
                "admin_request",
                otel.name = "POST /api/v1/gateways",
                otel.kind = "server",
                route = "/api/v1/gateways"
            );
            span.in_scope(|| tracing::info!(otel.status_code = "ok", "admin request"));
        });
        assert!(
            out.ends_with("  INFO admin_request{route=/api/v1/gateways}: admin request\n"),
            "{out}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds_and_follow_the_clock() {
        let mut text = String::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_764_059_112_000_042);
        write_timestamp(&mut text, at).expect("formats");
        assert_eq!(text, "2025-11-25T08:25:12.000042Z");
        text.clear();
        write_timestamp(&mut text, at + Duration::from_secs(1)).expect("formats");
        assert_eq!(text, "2025-11-25T08:25:13.000042Z", "the cached second moves on");
    }
}
