//! OpenTelemetry traces: configured by the standard `OTEL_*` variables alone, exported over OTLP/HTTP (protobuf) in the
//! background, never in the way of a request or a message.
//!
//! Off unless an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! plus `/v1/traces`): then no tracer, no exporter task and no OpenTelemetry layer exist, and every helper here is a
//! no-op behind one relaxed atomic load ([`enabled`]).
//!
//! When on, finished spans go through [`QueueProcessor`]: `on_end` is one `try_send` into a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`), so a slow or dead collector costs the request or message path nothing: what does not
//! fit is dropped and counted (`pedidos_trace_spans_dropped_total{reason="queue_full"}`). One background task takes
//! batches (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, at most `OTEL_BSP_SCHEDULE_DELAY` apart) and exports them one at a time,
//! each within `OTEL_BSP_EXPORT_TIMEOUT` (a failed or timed-out batch is counted as `export_failed`). At shutdown what
//! is queued gets [`FLUSH_BUDGET`] to leave; the rest is counted as `shutdown`.
//!
//! Context crosses process boundaries through the globally installed propagator (`OTEL_PROPAGATORS`: `tracecontext`,
//! `baggage`, `xray`, `none`; default `tracecontext,baggage`): [`parent_from`] and [`set_parent`] on the way in,
//! [`inject`] on the way out. `xray` also makes new trace ids X-Ray-compatible (their first 32 bits are the start
//! time).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use opentelemetry::trace::Status;
pub use opentelemetry::Value;
pub use tracing_opentelemetry::OpenTelemetrySpanExt as SpanExt;

use crate::config::{ConfigError, Lookup};

/// The `tracing` target of spans meant for the trace only (decode, handle, settle, publish): the log formatter never
/// sees them, so a log line keeps the span it had without tracing (`request`, `message`).
pub const TRACE_ONLY: &str = "pedidos_trace";

/// The `tracing` target of spans that stay out of the trace, for work that would only add noise to it (health
/// checks, metrics scrapes, the console's polling): they are logged as usual.
pub const UNTRACED: &str = "pedidos_untraced";

/// How long the queued spans may take to leave at shutdown, on top of the service's own drain.
pub const FLUSH_BUDGET: Duration = Duration::from_secs(2);

/// Why a span was not exported (the `reason` label of `pedidos_trace_spans_dropped_total`).
pub const DROP_REASONS: [&str; 3] = ["queue_full", "export_failed", "shutdown"];

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether traces are on in this process (an OTLP endpoint was configured and the pipeline started).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------------------------
// Settings

/// Which propagation formats are read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagator {
    /// W3C `traceparent`/`tracestate`.
    TraceContext,
    /// W3C `baggage`.
    Baggage,
    /// AWS X-Ray `X-Amzn-Trace-Id` (and X-Ray-compatible trace ids).
    Xray,
}

/// What `OTEL_TRACES_SAMPLER` (and `_ARG`) asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

impl SamplerChoice {
    fn sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedRatio(r) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r))),
        }
    }
}

/// The trace pipeline's configuration, from the standard variables only.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where spans are POSTed (already ending in `/v1/traces` unless given per signal).
    pub endpoint: String,
    pub service_name: String,
    pub sampler: SamplerChoice,
    pub propagators: Vec<Propagator>,
    pub max_queue: usize,
    pub max_batch: usize,
    pub schedule_delay: Duration,
    /// One batch's export, retries included (`OTEL_BSP_EXPORT_TIMEOUT`).
    pub export_timeout: Duration,
    /// One HTTP attempt's deadline (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub request_timeout: Duration,
}

impl Settings {
    /// `None` when traces are off: no endpoint, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    /// `default_service` names the service unless `OTEL_SERVICE_NAME` (or `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`) does.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable: an endpoint that is not `http://` (this build speaks plain HTTP to a
    /// collector next to it), a protocol other than `http/protobuf`, an unknown sampler or propagator, a bad number.
    pub fn from_env(env: Lookup<'_>, default_service: &str) -> Result<Option<Self>, ConfigError> {
        let invalid = |var: &'static str, value: String, reason: &str| ConfigError::Invalid {
            var,
            value,
            reason: reason.to_owned(),
        };
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match env("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()) {
            None => {}
            Some(v) if v == "otlp" => {}
            Some(v) if v == "none" => return Ok(None),
            Some(v) => return Err(invalid("OTEL_TRACES_EXPORTER", v, "expected `otlp` or `none`")),
        }
        let endpoint = match (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(url), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.trim().to_owned()),
            (None, Some(base)) => {
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{}/v1/traces", base.trim().trim_end_matches('/')))
            }
            (None, None) => return Ok(None),
        };
        let (var, url) = endpoint;
        if !url.starts_with("http://") || url.len() <= "http://".len() {
            return Err(invalid(
                var,
                url,
                "must be an http:// URL: traces go over plain HTTP to a collector beside the service (an ADOT or \
                 OpenTelemetry Collector sidecar or agent), which forwards them wherever they go",
            ));
        }
        for var in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(protocol) = env(var) {
                if protocol.trim() != "http/protobuf" {
                    return Err(invalid(var, protocol, "only `http/protobuf` is built in (no gRPC)"));
                }
                break;
            }
        }
        let service_name = env("OTEL_SERVICE_NAME")
            .or_else(|| resource_attribute(env, "service.name"))
            .unwrap_or_else(|| default_service.to_owned());
        Ok(Some(Self {
            endpoint: url,
            service_name,
            sampler: sampler(env)?,
            propagators: propagators(env)?,
            max_queue: positive(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)?,
            max_batch: positive(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?,
            schedule_delay: millis(env, "OTEL_BSP_SCHEDULE_DELAY", 5000)?,
            export_timeout: millis(env, "OTEL_BSP_EXPORT_TIMEOUT", 30_000)?,
            request_timeout: match env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") {
                Some(_) => millis(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 10_000)?,
                None => millis(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?,
            },
        }))
    }

    /// Whether the X-Ray format is among the propagators (and so X-Ray-compatible trace ids are generated).
    pub fn xray(&self) -> bool {
        self.propagators.contains(&Propagator::Xray)
    }
}

/// One `key=value` of `OTEL_RESOURCE_ATTRIBUTES` (comma-separated, values percent-encoded).
fn resource_attribute(env: Lookup<'_>, key: &str) -> Option<String> {
    let all = env("OTEL_RESOURCE_ATTRIBUTES")?;
    all.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_owned()).filter(|v| !v.is_empty())
    })
}

fn positive(env: Lookup<'_>, var: &'static str, default: usize) -> Result<usize, ConfigError> {
    crate::config::in_range(env, var, default, 1, 1_000_000)
}

fn millis(env: Lookup<'_>, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
    crate::config::in_range(env, var, default, 1, 3_600_000).map(Duration::from_millis)
}

fn sampler(env: Lookup<'_>) -> Result<SamplerChoice, ConfigError> {
    let ratio = || -> Result<f64, ConfigError> {
        let value = crate::config::parsed(env, "OTEL_TRACES_SAMPLER_ARG", 1.0_f64)?;
        if (0.0..=1.0).contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::Invalid {
                var: "OTEL_TRACES_SAMPLER_ARG",
                value: value.to_string(),
                reason: "a ratio between 0 and 1".into(),
            })
        }
    };
    let Some(name) = env("OTEL_TRACES_SAMPLER") else { return Ok(SamplerChoice::ParentBasedAlwaysOn) };
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "always_on" => SamplerChoice::AlwaysOn,
        "always_off" => SamplerChoice::AlwaysOff,
        "traceidratio" => SamplerChoice::Ratio(ratio()?),
        "parentbased_always_on" => SamplerChoice::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerChoice::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => SamplerChoice::ParentBasedRatio(ratio()?),
        _ => {
            return Err(ConfigError::Invalid {
                var: "OTEL_TRACES_SAMPLER",
                value: name,
                reason: "expected always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off or parentbased_traceidratio"
                    .into(),
            })
        }
    })
}

fn propagators(env: Lookup<'_>) -> Result<Vec<Propagator>, ConfigError> {
    let Some(list) = env("OTEL_PROPAGATORS") else { return Ok(vec![Propagator::TraceContext, Propagator::Baggage]) };
    let mut chosen = Vec::new();
    for name in list.split(',').map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()) {
        let propagator = match name.as_str() {
            "tracecontext" => Propagator::TraceContext,
            "baggage" => Propagator::Baggage,
            "xray" => Propagator::Xray,
            "none" => continue,
            _ => {
                return Err(ConfigError::Invalid {
                    var: "OTEL_PROPAGATORS",
                    value: list.clone(),
                    reason: format!("unknown propagator {name:?}: expected tracecontext, baggage, xray or none"),
                })
            }
        };
        if !chosen.contains(&propagator) {
            chosen.push(propagator);
        }
    }
    Ok(chosen)
}

// ---------------------------------------------------------------------------------------------------------------
// The pipeline

/// The running trace pipeline of a process; [`Traces::shutdown`] flushes it within [`FLUSH_BUDGET`]. A no-op when
/// traces are off.
#[derive(Debug, Default)]
pub struct Traces {
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    provider: SdkTracerProvider,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    pending: Arc<AtomicU64>,
}

impl Traces {
    /// Whether an exporter runs.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Exports what is queued, for at most [`FLUSH_BUDGET`]; spans still queued then are counted as dropped
    /// (`reason="shutdown"`).
    pub async fn shutdown(self) {
        self.shutdown_within(FLUSH_BUDGET).await;
    }

    /// [`Traces::shutdown`] with another budget.
    pub async fn shutdown_within(self, budget: Duration) {
        let Some(running) = self.running else { return };
        ENABLED.store(false, Ordering::Relaxed);
        running.stop.cancel();
        let mut task = running.task;
        if tokio::time::timeout(budget, &mut task).await.is_err() {
            task.abort();
            let left = running.pending.swap(0, Ordering::Relaxed);
            metrics::counter!("pedidos_trace_spans_dropped_total", "reason" => "shutdown").increment(left);
            tracing::warn!(spans = left, budget = ?budget, "traces not exported at shutdown: the collector did not take them in time");
        }
        // The processor's own shutdown is a no-op; this ends the provider's other users.
        let _ = running.provider.shutdown();
    }
}

/// The OpenTelemetry tracer for the `tracing` layer, and the handle that flushes it.
pub struct Started {
    pub tracer: SdkTracer,
    pub traces: Traces,
}

/// Builds the exporter, the provider and its export task, installs the propagator; marks traces on.
/// Must run inside a tokio runtime (the export task and the HTTP client live on it).
///
/// # Errors
/// The exporter could not be built from `settings` (a malformed endpoint).
pub fn start(settings: &Settings) -> Result<Started, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let client = opentelemetry_http::hyper::HyperClient::with_default_connector(settings.request_timeout, None);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(settings.request_timeout)
        .build()
        .map_err(|e| format!("OTLP exporter for {}: {e}", settings.endpoint))?;
    Ok(start_with(settings, exporter))
}

/// [`start`] with any exporter (tests use slow, failing and recording ones).
pub fn start_with<E: SpanExporter + 'static>(settings: &Settings, mut exporter: E) -> Started {
    describe_metrics();
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    exporter.set_resource(&resource);
    let (sender, receiver) = mpsc::channel(settings.max_queue);
    let pending = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let processor = QueueProcessor { sender, pending: Arc::clone(&pending) };
    let mut builder = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(settings.sampler.sampler())
        .with_resource(resource);
    if settings.xray() {
        builder = builder.with_id_generator(opentelemetry_aws::trace::XrayIdGenerator::default());
    }
    let provider = builder.build();
    let task =
        tokio::spawn(export_loop(receiver, exporter, Batching::of(settings), Arc::clone(&pending), stop.clone()));
    install_propagator(&settings.propagators);
    let tracer = provider.tracer("pedidos");
    let _ = TRACER.set(tracer.clone());
    ENABLED.store(true, Ordering::Relaxed);
    Started { tracer, traces: Traces { running: Some(Running { provider, stop, task, pending }) } }
}

fn install_propagator(chosen: &[Propagator]) {
    let propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = chosen
        .iter()
        .map(|p| -> Box<dyn TextMapPropagator + Send + Sync> {
            match p {
                Propagator::TraceContext => Box::new(TraceContextPropagator::new()),
                Propagator::Baggage => Box::new(BaggagePropagator::new()),
                Propagator::Xray => Box::new(opentelemetry_aws::trace::XrayPropagator::default()),
            }
        })
        .collect();
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(propagators));
}

/// Describes the trace pipeline's metrics and creates them at zero (both binaries call it at start-up, traces on or
/// off, so dashboards and alerts find the series).
pub fn describe_metrics() {
    let _ = crate::metrics::handle();
    metrics::describe_counter!(
        "pedidos_trace_spans_dropped_total",
        metrics::Unit::Count,
        "Finished spans that were not exported, by reason: queue_full (the bounded export queue, \
         OTEL_BSP_MAX_QUEUE_SIZE, was full: the collector is slow or unreachable; the request or message never \
         waits for it), export_failed (the collector refused the batch or did not answer within \
         OTEL_BSP_EXPORT_TIMEOUT), shutdown (still queued when the flush budget at shutdown ran out). Always 0 with \
         traces off"
    );
    metrics::describe_counter!(
        "pedidos_trace_spans_exported_total",
        metrics::Unit::Count,
        "Spans the OTLP collector accepted (always 0 with traces off)"
    );
    for reason in DROP_REASONS {
        metrics::counter!("pedidos_trace_spans_dropped_total", "reason" => reason).increment(0);
    }
    metrics::counter!("pedidos_trace_spans_exported_total").increment(0);
}

/// The span processor: finished, sampled spans into a bounded queue, without ever waiting.
#[derive(Debug)]
pub struct QueueProcessor {
    sender: mpsc::Sender<SpanData>,
    /// Spans queued or being exported, for the count of what a shutdown abandons.
    pending: Arc<AtomicU64>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.sender.try_send(span) {
            Ok(()) => {
                self.pending.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("pedidos_trace_spans_dropped_total", "reason" => "queue_full").increment(1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics::counter!("pedidos_trace_spans_dropped_total", "reason" => "shutdown").increment(1);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // The export task is stopped and flushed by `Traces::shutdown`, asynchronously and within its budget.
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Batching {
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
}

impl Batching {
    fn of(settings: &Settings) -> Self {
        Self { max_batch: settings.max_batch, delay: settings.schedule_delay, timeout: settings.export_timeout }
    }
}

/// Takes batches off the queue and exports them one at a time, until `stop`; then exports what is left.
async fn export_loop<E: SpanExporter>(
    mut spans: mpsc::Receiver<SpanData>,
    exporter: E,
    batching: Batching,
    pending: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(batching.max_batch);
    let mut warned = false;
    loop {
        let first = tokio::select! {
            span = spans.recv() => span,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + batching.delay;
        while batch.len() < batching.max_batch {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => batch.push(span),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
                () = stop.cancelled() => break,
            }
        }
        export(&exporter, &mut batch, batching.timeout, &pending, &mut warned).await;
        if stop.is_cancelled() {
            break;
        }
    }
    // Shutdown: what is queued leaves in full batches (the caller bounds the time).
    spans.close();
    while let Some(span) = spans.recv().await {
        batch.push(span);
        if batch.len() >= batching.max_batch {
            export(&exporter, &mut batch, batching.timeout, &pending, &mut warned).await;
        }
    }
    if !batch.is_empty() {
        export(&exporter, &mut batch, batching.timeout, &pending, &mut warned).await;
    }
}

async fn export<E: SpanExporter>(
    exporter: &E,
    batch: &mut Vec<SpanData>,
    timeout: Duration,
    pending: &AtomicU64,
    warned: &mut bool,
) {
    let spans = std::mem::take(batch);
    let count = spans.len() as u64;
    let result = match tokio::time::timeout(timeout, exporter.export(spans)).await {
        Ok(result) => result,
        Err(_) => Err(OTelSdkError::Timeout(timeout)),
    };
    pending.fetch_sub(count.min(pending.load(Ordering::Relaxed)), Ordering::Relaxed);
    match result {
        Ok(()) => {
            metrics::counter!("pedidos_trace_spans_exported_total").increment(count);
            if *warned {
                *warned = false;
                tracing::info!("trace export working again");
            }
        }
        Err(error) => {
            metrics::counter!("pedidos_trace_spans_dropped_total", "reason" => "export_failed").increment(count);
            // Once per failing period: a dead collector must not fill the logs.
            if !*warned {
                *warned = true;
                tracing::warn!(%error, spans = count, "trace export failed; spans are dropped (and counted) until the collector answers");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Context in and out

/// A case-insensitive view of a string map for the propagators.
struct MapCarrier<'a, F: Fn(&str) -> Option<&'a str>>(F, std::marker::PhantomData<&'a ()>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for MapCarrier<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// A remote parent found on a request or a message: what a new span becomes the child of.
#[derive(Debug, Clone)]
pub struct Parent(Context);

impl Parent {
    /// `span` itself as a parent (for a span recorded with [`record_span`] under it); `None` when traces are off.
    pub fn of(span: &tracing::Span) -> Option<Self> {
        if !enabled() {
            return None;
        }
        valid(span.context())
    }

    /// The parent's W3C trace id (32 lowercase hex digits).
    pub fn trace_id(&self) -> String {
        self.0.span().span_context().trace_id().to_string()
    }
}

/// The context `lookup` carries (by field name; it should ignore case: the propagators ask for lowercase names),
/// read with the configured propagators. `None` when traces are off or no valid context is there.
pub fn parent_from<'a>(lookup: impl Fn(&str) -> Option<&'a str>) -> Option<Parent> {
    if !enabled() {
        return None;
    }
    let carrier = MapCarrier(lookup, std::marker::PhantomData);
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    valid(cx)
}

/// The context of an X-Ray trace header (`Root=1-…;Parent=…;Sampled=…`, SQS's `AWSTraceHeader`), whatever
/// `OTEL_PROPAGATORS` says. `None` when traces are off or the header is malformed.
pub fn parent_from_xray(header: &str) -> Option<Parent> {
    if !enabled() {
        return None;
    }
    let remote = opentelemetry_aws::trace::xray_propagator::span_context_from_str(header)?;
    valid(Context::new().with_remote_span_context(remote))
}

/// The context in an HTTP request's headers (`traceparent`, `tracestate`, `baggage`, or `X-Amzn-Trace-Id` with the
/// X-Ray propagator).
pub fn parent_from_headers(headers: &axum::http::HeaderMap) -> Option<Parent> {
    parent_from(|name| headers.get(name).and_then(|v| v.to_str().ok()))
}

fn valid(cx: Context) -> Option<Parent> {
    cx.span().span_context().is_valid().then_some(Parent(cx))
}

/// Makes `span` (created, not yet entered) a child of `parent`.
pub fn set_parent(span: &tracing::Span, parent: &Parent) {
    let _ = span.set_parent(parent.0.clone());
}

/// The fields that carry `span`'s context to the next process (`traceparent`, ...), in the order the propagators
/// write them; empty when traces are off.
pub fn inject(span: &tracing::Span) -> Vec<(String, String)> {
    if !enabled() {
        return Vec::new();
    }
    struct Fields(Vec<(String, String)>);
    impl Injector for Fields {
        fn set(&mut self, key: &str, value: String) {
            self.0.push((key.to_owned(), value));
        }
    }
    let cx = span.context();
    let mut fields = Fields(Vec::new());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut fields));
    fields.0
}

/// `span`'s W3C trace id (32 lowercase hex digits) when traces are on and the span has one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let context = cx.span().span_context().clone();
    context.is_valid().then(|| context.trace_id().to_string())
}

/// The trace id and span id of the OpenTelemetry span current on this thread, as 32 and 16 lowercase hex digits.
pub fn current_ids() -> Option<(String, String)> {
    Context::map_current(|cx| {
        let span = cx.span();
        let context: &SpanContext = span.span_context();
        context.is_valid().then(|| (context.trace_id().to_string(), context.span_id().to_string()))
    })
}

/// Writes the current trace and span ids as `,"trace_id":"…","span_id":"…"` (for the JSON log line), without
/// allocating; nothing when no span is current.
pub fn write_current_ids(out: &mut impl std::fmt::Write) -> std::fmt::Result {
    Context::map_current(|cx| {
        let span = cx.span();
        let context: &SpanContext = span.span_context();
        if context.is_valid() {
            write!(out, ",\"trace_id\":\"{}\",\"span_id\":\"{}\"", context.trace_id(), context.span_id())
        } else {
            Ok(())
        }
    })
}

/// The trace id in a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), when well-formed and not all zeros.
pub fn trace_id_of_traceparent(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    ok.then(|| trace.to_owned())
}

/// The W3C form (32 lowercase hex digits) of the root trace id in an X-Ray header (`Root=1-<8 hex>-<24 hex>;…`).
pub fn trace_id_of_xray(header: &str) -> Option<String> {
    let root = header.split(';').find_map(|part| part.trim().strip_prefix("Root="))?;
    let mut parts = root.split('-');
    let (version, time, id) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (version == "1" && hex(time, 8) && hex(id, 24) && parts.next().is_none())
        .then(|| format!("{time}{id}").to_ascii_lowercase())
}

/// Records a finished span `name` with explicit times as a child of `parent` (a message's receive, whose times are
/// known only once the message is in hand). A no-op when traces are off.
pub fn record_span(
    parent: &Parent,
    name: impl Into<std::borrow::Cow<'static, str>>,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) {
    if !enabled() {
        return;
    }
    let Some(tracer) = TRACER.get() else { return };
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Consumer)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent.0);
    opentelemetry::trace::Span::end_with_timestamp(&mut span, end.max(start));
}

/// Attributes as the OpenTelemetry API takes them, re-exported so callers need no OpenTelemetry dependency.
pub fn kv(key: &'static str, value: impl Into<Value>) -> KeyValue {
    KeyValue::new(key, value)
}

/// String fields of a message, case-insensitively, for [`parent_from`].
pub fn lookup_in<'a>(fields: &'a BTreeMap<String, String>) -> impl Fn(&str) -> Option<&'a str> {
    move |name| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests;
