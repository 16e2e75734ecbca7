//! An OTLP/HTTP trace receiver for the end-to-end tests: `POST /v1/traces` on 127.0.0.1, each request decoded with
//! the protocol's own prost types (`opentelemetry-proto`) and kept as [`ReceivedSpan`]s, flattened with their service.
//! Not a tracing backend: a test asks it for the spans of a trace and checks their links.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// One span as a collector received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// Lowercase hex, as W3C writes them.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, String>,
    /// Each event's name and attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn has_event(&self, name: &str) -> bool {
        self.events.iter().any(|(event, _)| event == name)
    }
}

/// The span kinds of OTLP.
pub mod kind {
    pub const INTERNAL: i32 = 1;
    pub const SERVER: i32 = 2;
    pub const CLIENT: i32 = 3;
    pub const PRODUCER: i32 = 4;
    pub const CONSUMER: i32 = 5;
}

/// A receiver on a free port of 127.0.0.1, stopped on drop.
pub struct OtlpReceiver {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl OtlpReceiver {
    /// Starts serving `POST /v1/traces` (protobuf), answering each with an empty `ExportTraceServiceResponse`.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("cannot bind the OTLP receiver: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("no local address: {e}"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let app = Router::new().route(
            "/v1/traces",
            post({
                let spans = Arc::clone(&spans);
                let requests = Arc::clone(&requests);
                move |body: Bytes| {
                    let spans = Arc::clone(&spans);
                    let requests = Arc::clone(&requests);
                    async move {
                        requests.fetch_add(1, Ordering::SeqCst);
                        match ExportTraceServiceRequest::decode(body) {
                            Ok(request) => {
                                let mut all = spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                                all.extend(flatten(request));
                                (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-protobuf")], Bytes::new())
                            }
                            Err(_) => (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain")], Bytes::new()),
                        }
                    }
                }
            }),
        );
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
        });
        Self { addr, spans, requests, stop }
    }

    /// `http://127.0.0.1:<port>`: the value of `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The spans of trace `trace_id`.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans().into_iter().filter(|s| s.trace_id == trace_id).collect()
    }

    /// How many export requests arrived (decodable or not).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Polls until `found` picks something out of the spans received, panicking with what arrived after `timeout`.
    pub async fn wait_for<T>(&self, timeout: Duration, what: &str, found: impl Fn(&[ReceivedSpan]) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if let Some(value) = found(&spans) {
                return value;
            }
            if std::time::Instant::now() >= deadline {
                let seen: Vec<String> =
                    spans.iter().map(|s| format!("{} {} {}", s.service, s.name, s.trace_id)).collect();
                panic!("{what}: not received within {timeout:?}; received:\n  {}", seen.join("\n  "));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs.iter().map(|kv| (kv.key.clone(), text(kv.value.as_ref()))).collect()
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    events: span.events.iter().map(|e| (e.name.clone(), attributes(&e.attributes))).collect(),
                    status_code: span.status.map_or(0, |s| s.code),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}
