//! Logging and tracing for every `modelgw` process.
//!
//! Logs go to stderr (stdout carries only the ready line and one-time secrets the operator must
//! see). `RUST_LOG` (or `MODELGW_LOG`) filters; `MODELGW_LOG_FORMAT=json` gives one JSON object
//! per line for log pipelines. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported
//! over OTLP/gRPC; a missing collector never blocks start-up.
//!
//! Lines are formatted on the thread that logs and written by a flusher thread
//! ([`crate::log_writer`]), so a request never waits on the stderr lock or a slow log pipe. When
//! that pipe cannot keep up the newest lines are dropped rather than the requests slowed, and the
//! count of dropped lines is itself logged every [`DROPPED_REPORT_INTERVAL`].

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How often the number of log lines dropped since the last report is logged (if any were).
const DROPPED_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Flushes buffered log lines and exported spans on drop.
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    reporter: tokio::task::JoinHandle<()>,
    // Dropped last: flushes the lines still buffered for stderr.
    _writer: crate::log_writer::FlushGuard,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.reporter.abort();
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Must run inside the Tokio runtime (the OTLP exporter spawns on it).
pub fn init(service: &'static str) -> anyhow::Result<TelemetryGuard> {
    let filter = std::env::var("MODELGW_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter =
        EnvFilter::try_new(&filter).context("invalid log filter in MODELGW_LOG/RUST_LOG")?;
    let json = std::env::var("MODELGW_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let (writer, writer_guard) = crate::log_writer::BatchWriter::new(std::io::stderr())
        .context("starting the log writer thread")?;
    let dropped = writer.clone();

    let fmt = if json {
        tracing_subscriber::fmt::layer().json().with_current_span(true).with_writer(writer).boxed()
    } else if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        // A person at a terminal: tracing-subscriber's coloured format.
        tracing_subscriber::fmt::layer().with_target(false).with_writer(writer).boxed()
    } else {
        // Log files and collectors: the same shape in plain text, written cheaply (one line
        // per proxied request at `info`).
        tracing_subscriber::fmt::layer()
            .event_format(crate::log_line::LineFormat)
            .fmt_fields(crate::log_line::LineFields)
            .with_writer(writer)
            .boxed()
    };

    let (otel, provider) = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .context("building the OTLP span exporter")?;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder().with_service_name(service).build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
        (Some(layer), Some(provider))
    } else {
        (None, None)
    };

    tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init()?;
    let reporter = tokio::spawn(async move {
        let mut reported = 0;
        let mut tick = tokio::time::interval(DROPPED_REPORT_INTERVAL);
        loop {
            tick.tick().await;
            let total = dropped.dropped_lines();
            if total > reported {
                tracing::warn!(
                    dropped = total - reported,
                    total,
                    "log lines dropped: stderr could not keep up"
                );
                reported = total;
            }
        }
    });
    Ok(TelemetryGuard { provider, reporter, _writer: writer_guard })
}
