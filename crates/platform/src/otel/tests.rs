use std::collections::HashMap;
use std::sync::Mutex;

use opentelemetry::trace::{Span as _, Tracer as _};
use tracing_subscriber::layer::SubscriberExt;

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    move |k| map.get(k).cloned()
}

fn settings(max_queue: usize, max_batch: usize) -> Settings {
    Settings {
        endpoint: "http://127.0.0.1:4318/v1/traces".into(),
        service_name: "test".into(),
        sampler: SamplerChoice::AlwaysOn,
        propagators: vec![Propagator::TraceContext],
        max_queue,
        max_batch,
        schedule_delay: Duration::from_millis(100),
        export_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_millis(300),
    }
}

/// A sample of this process's `pedidos_trace_*` counters.
fn counter(sample: &str) -> u64 {
    crate::metrics::handle()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn dropped(reason: &str) -> u64 {
    counter(&format!("pedidos_trace_spans_dropped_total{{reason=\"{reason}\"}}"))
}

/// An exporter whose collector never answers.
#[derive(Debug)]
struct Hanging;

impl SpanExporter for Hanging {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        std::future::pending().await
    }
}

/// An exporter that keeps what it is given.
#[derive(Debug, Default, Clone)]
struct Recording(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Recording {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(batch);
        Ok(())
    }
}

#[test]
fn no_endpoint_means_no_traces() {
    assert_eq!(Settings::from_env(&env(&[]), "svc"), Ok(None));
    let disabled = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"), ("OTEL_SDK_DISABLED", "true")]);
    assert_eq!(Settings::from_env(&disabled, "svc"), Ok(None));
    let none = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"), ("OTEL_TRACES_EXPORTER", "none")]);
    assert_eq!(Settings::from_env(&none, "svc"), Ok(None));
}

#[test]
fn the_standard_variables_configure_everything() {
    let base = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")]);
    let s = Settings::from_env(&base, "pedidos-api").ok().flatten().unwrap_or_else(|| panic!("traces on"));
    assert_eq!(s.endpoint, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(s.service_name, "pedidos-api");
    assert_eq!(s.sampler, SamplerChoice::ParentBasedAlwaysOn);
    assert_eq!(s.propagators, vec![Propagator::TraceContext, Propagator::Baggage]);
    assert_eq!((s.max_queue, s.max_batch, s.schedule_delay), (2048, 512, Duration::from_secs(5)));

    let full = env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/custom"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.name=from-resource"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ("OTEL_PROPAGATORS", "tracecontext,xray"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
    ]);
    let s = Settings::from_env(&full, "pedidos-api").ok().flatten().unwrap_or_else(|| panic!("traces on"));
    assert_eq!(s.endpoint, "http://collector:4318/custom", "the per-signal endpoint is used as it is");
    assert_eq!(s.service_name, "from-resource");
    assert_eq!(s.sampler, SamplerChoice::ParentBasedRatio(0.1));
    assert!(s.xray());
    assert_eq!((s.max_queue, s.request_timeout), (64, Duration::from_millis(2500)));
    let named = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SERVICE_NAME", "checkout")]);
    assert_eq!(Settings::from_env(&named, "x").ok().flatten().map(|s| s.service_name).as_deref(), Some("checkout"));
}

#[test]
fn what_this_build_cannot_do_is_refused_naming_the_variable() {
    let refused = |pairs: &[(&str, &str)]| {
        let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        all.extend_from_slice(pairs);
        Settings::from_env(&env(&all), "svc").err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(refused(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://x")])
        .starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="));
    assert!(refused(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).starts_with("OTEL_EXPORTER_OTLP_PROTOCOL="));
    assert!(refused(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]).starts_with("OTEL_TRACES_SAMPLER="));
    assert!(refused(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")])
        .starts_with("OTEL_TRACES_SAMPLER_ARG="));
    assert!(refused(&[("OTEL_PROPAGATORS", "b3")]).starts_with("OTEL_PROPAGATORS="));
    assert!(refused(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]).starts_with("OTEL_BSP_MAX_QUEUE_SIZE="));
}

#[test]
fn trace_ids_are_read_from_w3c_and_x_ray_headers() {
    assert_eq!(
        trace_id_of_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    for bad in [
        "",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
    ] {
        assert_eq!(trace_id_of_traceparent(bad), None, "{bad}");
    }
    assert_eq!(
        trace_id_of_xray("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1").as_deref(),
        Some("5759e988bd862e3fe1be46a994272793")
    );
    assert_eq!(
        trace_id_of_xray("Parent=53995c3f42cd8ad8;Root=1-5759E988-BD862E3FE1BE46A994272793").as_deref(),
        Some("5759e988bd862e3fe1be46a994272793")
    );
    assert_eq!(trace_id_of_xray("Root=2-5759e988-bd862e3fe1be46a994272793"), None);
    assert_eq!(trace_id_of_xray("Sampled=1"), None);
}

/// A collector that never answers: ending a span never waits (each well under a millisecond), what does not fit the
/// queue is counted as `queue_full`, the batch that hangs is given up after the export timeout and counted as
/// `export_failed`, and the shutdown flush returns at its budget.
#[tokio::test(start_paused = true)]
async fn a_collector_that_never_answers_costs_the_caller_nothing_and_every_drop_is_counted() {
    let settings = settings(8, 4);
    let (full0, failed0, shutdown0) = (dropped("queue_full"), dropped("export_failed"), dropped("shutdown"));
    let started = start_with(&settings, Hanging);
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let clock = std::time::Instant::now();
        let mut span = started.tracer.start("work");
        span.end();
        slowest = slowest.max(clock.elapsed());
    }
    assert!(slowest < Duration::from_millis(5), "ending a span took {slowest:?}");
    // Nothing yielded yet: the queue holds 8, the other 92 were dropped on the spot.
    assert!(dropped("queue_full") - full0 >= 92, "{}", dropped("queue_full") - full0);
    // The export task takes a batch of 4 and gives up on it after the export timeout.
    tokio::time::sleep(settings.export_timeout * 3).await;
    assert!(dropped("export_failed") - failed0 >= 4, "{}", dropped("export_failed") - failed0);
    for _ in 0..8 {
        let mut span = started.tracer.start("late");
        span.end();
    }
    let clock = tokio::time::Instant::now();
    started.traces.shutdown_within(Duration::from_secs(2)).await;
    assert!(clock.elapsed() <= Duration::from_secs(2) + Duration::from_millis(10), "{:?}", clock.elapsed());
    assert!(dropped("shutdown") > shutdown0, "what the flush could not send is counted");
}

/// Batches leave within the schedule delay; at shutdown everything queued is exported.
#[tokio::test(start_paused = true)]
async fn spans_leave_in_batches_and_the_shutdown_flushes_them() {
    let recording = Recording::default();
    let started = start_with(&settings(64, 4), recording.clone());
    for _ in 0..6 {
        let mut span = started.tracer.start("work");
        span.end();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let exported = || recording.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
    assert_eq!(exported(), 6, "a full batch at once, the rest after the schedule delay");
    for _ in 0..3 {
        let mut span = started.tracer.start("late");
        span.end();
    }
    started.traces.shutdown().await;
    assert_eq!(exported(), 9);
}

/// The real OTLP/HTTP exporter against a port that accepts connections and never answers, and one that refuses
/// them: ending spans stays instant however long the exports wait, failures are counted, the flush is bounded.
#[tokio::test]
async fn an_unreachable_collector_never_slows_the_caller() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let refusing = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"))
    };
    let silent_addr = silent.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
    for (what, addr) in [("silent", silent_addr), ("refusing", refusing)] {
        let mut settings = settings(16, 8);
        settings.endpoint = format!("http://{addr}/v1/traces");
        settings.schedule_delay = Duration::from_millis(10);
        settings.export_timeout = Duration::from_millis(500);
        let (full0, failed0) = (dropped("queue_full"), dropped("export_failed"));
        let started = start(&settings).unwrap_or_else(|e| panic!("{e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut slowest = Duration::ZERO;
        let mut ended = 0;
        while dropped("export_failed") == failed0 || dropped("queue_full") == full0 {
            assert!(std::time::Instant::now() < deadline, "{what}: no failed export or full queue within 10 s");
            for _ in 0..10 {
                let clock = std::time::Instant::now();
                let mut span = started.tracer.start("request");
                span.end();
                slowest = slowest.max(clock.elapsed());
                ended += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Generous for a shared 2-core machine; the work is a try_send.
        assert!(slowest < Duration::from_millis(20), "{what}: ending a span took {slowest:?} ({ended} spans)");
        let clock = std::time::Instant::now();
        started.traces.shutdown().await;
        assert!(
            clock.elapsed() < FLUSH_BUDGET + Duration::from_millis(500),
            "{what}: flush took {:?}",
            clock.elapsed()
        );
    }
    drop(silent);
}

/// With traces on, a JSON line logged inside a span carries its W3C ids; one outside any span does not, and
/// `otel.*` fields never appear in a line.
#[tokio::test]
async fn json_lines_inside_a_traced_span_carry_its_ids() {
    use crate::telemetry::tests::Buffer;

    let recording = Recording::default();
    let started = start_with(&settings(64, 64), recording.clone());
    let buffer = Buffer::default();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(started.tracer.clone())).with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(crate::telemetry::JsonFragment)
                .event_format(crate::telemetry::JsonLine::with_trace_ids())
                .with_writer(buffer.clone()),
        );
    let span_trace_id = tracing::subscriber::with_default(subscriber, || {
        tracing::info!("outside");
        let span = tracing::info_span!("request", otel.name = "POST /api/pedidos", request_id = "r-1");
        let _entered = span.enter();
        tracing::info!("inside");
        trace_id(&span)
    });
    let (text, lines) = (buffer.text(), buffer.lines());
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].get("trace_id").is_none(), "{text}");
    let trace = lines[1]["trace_id"].as_str().unwrap_or_default();
    let span = lines[1]["span_id"].as_str().unwrap_or_default();
    assert!(trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{text}");
    assert!(span.len() == 16 && span.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
    assert_eq!(span_trace_id.as_deref(), Some(trace), "the span's id is the line's");
    assert_eq!(lines[1]["span"]["request_id"], "r-1");
    assert!(!text.contains("otel."), "{text}");
    started.traces.shutdown().await;
    let exported = recording.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert_eq!(exported.iter().map(|s| s.name.as_ref()).collect::<Vec<_>>(), ["POST /api/pedidos"]);
}
