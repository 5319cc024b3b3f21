//! An OTLP trace receiver in the test's own process: the OTLP/gRPC `TraceService` (the
//! generated server of `opentelemetry-proto`) on 127.0.0.1, keeping every span it is sent with
//! the service that sent it. Processes export to it with
//! `OTEL_EXPORTER_OTLP_ENDPOINT=`[`OtlpReceiver::endpoint`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

/// One span as received, with the `service.name` of the process that sent it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub service: String,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The trace id, lowercase hex (as in `traceparent`).
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent's span id, lowercase hex; empty for a root span.
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    /// Whether the span's status is `Error`.
    pub fn is_error(&self) -> bool {
        self.span.status.as_ref().is_some_and(|s| s.code == StatusCode::Error as i32)
    }

    pub fn attribute(&self, key: &str) -> Option<&any_value::Value> {
        attribute(&self.span.attributes, key)
    }

    /// A string attribute (empty when absent or not a string).
    pub fn text(&self, key: &str) -> &str {
        match self.attribute(key) {
            Some(any_value::Value::StringValue(s)) => s,
            _ => "",
        }
    }

    /// An integer attribute.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attribute(key) {
            Some(any_value::Value::IntValue(n)) => Some(*n),
            _ => None,
        }
    }

    /// Every string attribute value, for checks that nothing secret was exported.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        let attributes = self.span.attributes.iter();
        let events = self.span.events.iter().flat_map(|e| e.attributes.iter());
        attributes.chain(events).filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The receiving end: a running OTLP/gRPC trace service.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.spans.lock().expect("span list");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"))
                .and_then(|v| match v {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    kept.push(ReceivedSpan { service: service.clone(), span });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl OtlpReceiver {
    /// Listens on 127.0.0.1 (a free port).
    pub async fn start() -> anyhow::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = TraceServiceServer::new(Collector { spans: Arc::clone(&spans) });
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming);
            if let Err(e) = served.await {
                eprintln!("OTLP receiver stopped: {e}");
            }
        });
        Ok(OtlpReceiver { addr, spans, task })
    }

    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("span list").clone()
    }

    /// Waits until `found` picks something out of the spans received so far.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        found: impl Fn(&[ReceivedSpan]) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if let Some(found) = found(&spans) {
                return Ok(found);
            }
            if Instant::now() > deadline {
                let names: Vec<String> =
                    spans.iter().map(|s| format!("{}: {}", s.service, s.name())).collect();
                bail!("no {what} within {within:?}; received: {names:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The spans of one trace (lowercase hex id).
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans().into_iter().filter(|s| s.trace_id() == trace_id).collect()
    }
}

/// The one span of `spans` named `name`; an error naming what there is otherwise.
pub fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> anyhow::Result<&'a ReceivedSpan> {
    let mut named = spans.iter().filter(|s| s.name() == name);
    let found = named.next().with_context(|| {
        let names: Vec<&str> = spans.iter().map(ReceivedSpan::name).collect();
        format!("no span {name:?} among {names:?}")
    })?;
    anyhow::ensure!(named.next().is_none(), "more than one span {name:?}");
    Ok(found)
}
