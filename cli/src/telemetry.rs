//! Logging and tracing for every `modelgw` process.
//!
//! Logs go to stderr (stdout carries only the ready line and one-time secrets the operator must
//! see). `RUST_LOG` (or `MODELGW_LOG`) filters; `MODELGW_LOG_FORMAT=json` gives one JSON object
//! per line for log pipelines. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported
//! over OTLP/gRPC (batched; head sampling from `OTEL_TRACES_SAMPLER`, default parent-based
//! always-on); a missing collector never blocks start-up, and the spans still queued are
//! exported when the process exits. Which spans: see [`SpanExport`].
//!
//! Lines are formatted on the thread that logs and written by a flusher thread
//! ([`crate::log_writer`]), so a request never waits on the stderr lock or a slow log pipe. When
//! that pipe cannot keep up the newest lines are dropped rather than the requests slowed, and the
//! count of dropped lines is itself logged every [`DROPPED_REPORT_INTERVAL`].

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use modelgw_data_plane::RequestTracer;
use opentelemetry::InstrumentationScope;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How often the number of log lines dropped since the last report is logged (if any were).
const DROPPED_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The variable that turns trace export on (the OpenTelemetry SDKs' own).
const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Head sampling, as the OpenTelemetry SDK reads it from `OTEL_TRACES_SAMPLER` (and
/// `OTEL_TRACES_SAMPLER_ARG`); unset, the SDK's default applies.
const SAMPLER_ENV: &str = "OTEL_TRACES_SAMPLER";
const DEFAULT_SAMPLER: &str = "parentbased_always_on";

/// Which spans a process exports over OTLP when an endpoint is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanExport {
    /// Its `tracing` spans at `info` and above, whatever the log filter (the control plane:
    /// admin requests, snapshot publishes, the store's operations).
    TracingSpans,
    /// Only the spans it builds with the OpenTelemetry API ([`TelemetryGuard::request_tracer`]:
    /// the data plane's requests and attempts). Its `tracing` spans are log context, and its
    /// subscriber stays as cheap as without export.
    RequestPathOnly,
}

/// Flushes buffered log lines and exported spans on drop.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    reporter: tokio::task::JoinHandle<()>,
    // Dropped last: flushes the lines still buffered for stderr.
    _writer: crate::log_writer::FlushGuard,
}

impl TelemetryGuard {
    /// The tracer of a data plane's request path, when traces are exported.
    pub fn request_tracer(&self) -> Option<RequestTracer> {
        let provider = self.provider.as_ref()?;
        let scope = InstrumentationScope::builder("modelgw-data-plane")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Some(RequestTracer::new(provider.tracer_with_scope(scope)))
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.reporter.abort();
        if let Some(provider) = self.provider.take() {
            // Exports the spans still queued (the batch processor's flush), then stops.
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "exporting the last spans failed");
            }
        }
    }
}

/// Must run inside the Tokio runtime (the OTLP exporter spawns on it).
pub fn init(service: &'static str, export: SpanExport) -> anyhow::Result<TelemetryGuard> {
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

    let provider = if std::env::var_os(OTLP_ENDPOINT_ENV).is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .context("building the OTLP span exporter")?;
        // The sampler comes from OTEL_TRACES_SAMPLER / _ARG (the SDK reads them); the batch
        // processor's settings from OTEL_BSP_*.
        // `service.name` is the process's kind unless the operator names it (OTEL_SERVICE_NAME).
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        // W3C Trace Context for whatever joins a client's trace through the global propagator
        // (the admin API); the data plane reads and writes `traceparent` itself.
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
        Some(provider)
    } else {
        None
    };

    let bridge = match (&provider, export) {
        (Some(provider), SpanExport::TracingSpans) => {
            Some(tracing_opentelemetry::layer().with_tracer(provider.tracer(service)))
        }
        _ => None,
    };
    match bridge {
        // The log filter for the log lines only: spans are exported at `info` whatever the
        // log level (an operator who quiets the logs keeps the traces, and `debug` logs do
        // not flood the collector).
        Some(bridge) => tracing_subscriber::registry()
            .with(fmt_layer(json, writer).with_filter(filter))
            .with(bridge.with_filter(exported_spans()))
            .try_init()?,
        None => {
            tracing_subscriber::registry().with(filter).with(fmt_layer(json, writer)).try_init()?
        }
    }
    if provider.is_some() {
        let sampler = std::env::var(SAMPLER_ENV).unwrap_or_else(|_| DEFAULT_SAMPLER.to_owned());
        tracing::info!(sampler = %sampler, "exporting traces over OTLP");
    }
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

/// Which `tracing` spans (and events, which become span events) are exported: `info` and
/// above, but nothing of the exporter's own stack — a span it made while exporting would be
/// exported in turn.
fn exported_spans() -> Targets {
    Targets::new().with_default(LevelFilter::INFO).with_targets(
        [
            "opentelemetry",
            "opentelemetry_sdk",
            "opentelemetry_otlp",
            "tonic",
            "h2",
            "hyper",
            "tower",
        ]
        .map(|target| (target, LevelFilter::OFF)),
    )
}

/// The log-line layer: JSON, coloured text for a person at a terminal, or plain text.
fn fmt_layer<S>(
    json: bool,
    writer: crate::log_writer::BatchWriter,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if json {
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
    }
}
