//! Every metric the API exports, described in one place: `/metrics` carries `# HELP` text for each family, and the
//! counters an alert divides by exist at zero from start-up instead of appearing with the first failure.

use domain::EventType;
use metrics::Unit;

/// Why a publish failed (`routes::orders::publish`): SNS unreachable or throttling, or SNS refusing the call.
pub const PUBLISH_FAILURE_REASONS: [&str; 3] = ["unavailable", "rejected", "denied"];

/// The order-store reads the API makes (tracking routes and `/ready`).
pub const STORE_READS: [&str; 5] = ["get", "list", "check", "recent", "stats"];

/// Describes every API and store metric and creates the counters at zero. Idempotent: call it once at start-up
/// (router tests may call it again).
pub fn register() {
    // Descriptions and zero counters reach only an installed recorder.
    let _ = platform::metrics::handle();
    describe();
    for event_type in [EventType::PedidoCreado, EventType::PedidoActualizado] {
        metrics::counter!("pedidos_api_events_published_total", "type" => event_type.as_str()).increment(0);
    }
    for reason in PUBLISH_FAILURE_REASONS {
        metrics::counter!("pedidos_api_publish_failures_total", "reason" => reason).increment(0);
    }
    for operation in STORE_READS {
        platform::metrics::zero_store_calls(operation, platform::metrics::STORE_READ_RESULTS);
    }
}

fn describe() {
    metrics::describe_counter!(
        "pedidos_api_http_requests_total",
        Unit::Count,
        "HTTP requests answered, by method, route (as the OpenAPI document names it, or `unmatched`) and status"
    );
    metrics::describe_histogram!(
        "pedidos_api_http_request_duration_seconds",
        Unit::Seconds,
        "Time from receiving a request to its response, by route"
    );
    metrics::describe_histogram!(
        "pedidos_api_publish_duration_seconds",
        Unit::Seconds,
        "Duration of each SNS Publish, including the SDK's retries (a 503 is answered within about 6 s)"
    );
    metrics::describe_counter!(
        "pedidos_api_events_published_total",
        Unit::Count,
        "Events SNS accepted (each answered 202), by type: PedidoCreado or PedidoActualizado"
    );
    metrics::describe_counter!(
        "pedidos_api_publish_failures_total",
        Unit::Count,
        "Publishes that failed (each answered 503), by reason: unavailable (SNS unreachable, throttling or timing \
         out), rejected (SNS refused the call: wrong topic, invalid attribute) or denied (the API role's policy lacks \
         sns:Publish)"
    );
    platform::metrics::describe_store();
    // pedidos_trace_spans_dropped_total{reason} and pedidos_trace_spans_exported_total, at 0 with traces off.
    platform::otel::describe_metrics();
}
