//! Every metric the worker exports, described in one place: `/metrics` carries `# HELP` text for each family, and the
//! counters an alert divides by exist at zero from start-up instead of appearing with the first failure.

use metrics::Unit;

use crate::handler::Role;

/// The SQS operations the worker makes while running (start-up's `get_queue_url` appears when used).
pub const SQS_OPERATIONS: [&str; 5] = ["receive", "delete", "change_visibility", "send", "get_queue_attributes"];

/// Describes every worker and store metric and creates the counters at zero. Idempotent; [`crate::run`] calls it.
pub fn register() {
    // Descriptions and zero counters reach only an installed recorder.
    let _ = platform::metrics::handle();
    describe();
    for operation in SQS_OPERATIONS {
        metrics::counter!("pedidos_worker_sqs_calls_total", "operation" => operation).increment(0);
        metrics::counter!("pedidos_worker_sqs_errors_total", "operation" => operation).increment(0);
    }
    for operation in ["delete", "change_visibility"] {
        metrics::counter!("pedidos_worker_sqs_entry_failures_total", "operation" => operation).increment(0);
    }
    for outcome in crate::consumer::Outcome::ALL {
        metrics::counter!("pedidos_worker_messages_total", "outcome" => outcome.as_str()).increment(0);
    }
    // Nothing is in flight before the consumer starts.
    metrics::gauge!("pedidos_worker_in_flight").set(0.0);
}

/// Creates the store counters of the operations `role` writes with at zero (`batched`: `STORE_WRITES=batched`).
pub fn register_store(role: Role, batched: bool) {
    use platform::metrics::{zero_store_calls, STORE_WRITE_RESULTS};
    match role {
        Role::Process => zero_store_calls("apply", STORE_WRITE_RESULTS),
        // A shipment is created once or found: never stale.
        Role::Logistics => zero_store_calls(
            "create_shipment",
            &["applied", "duplicate", "throttled", "error", "rejected", "misconfigured"],
        ),
    }
    if batched {
        zero_store_calls("transact_write", &["applied", "cancelled", "throttled", "error"]);
    }
}

fn describe() {
    metrics::describe_counter!(
        "pedidos_worker_messages_total",
        Unit::Count,
        "Messages settled, by outcome: processed, duplicate, stale, ignored (deleted); rejected (copied to the DLQ, \
         then deleted); failed (retried after a visibility delay); released (shutdown, visible again at once)"
    );
    metrics::describe_gauge!(
        "pedidos_worker_in_flight",
        Unit::Count,
        "Messages this worker instance is handling right now (at most WORKER_CONCURRENCY)"
    );
    metrics::describe_counter!(
        "pedidos_worker_sqs_calls_total",
        Unit::Count,
        "SQS API calls this worker made, by operation (a batch call counts once)"
    );
    metrics::describe_counter!(
        "pedidos_worker_sqs_errors_total",
        Unit::Count,
        "SQS API calls that failed (unreachable, throttled, timed out, refused), by operation"
    );
    metrics::describe_counter!(
        "pedidos_worker_sqs_entry_failures_total",
        Unit::Count,
        "Entries of a successful batch call that SQS refused (an expired receipt handle, ...), by operation"
    );
    metrics::describe_gauge!(
        "pedidos_worker_queue_messages",
        Unit::Count,
        "Messages in this worker's queue by state (GetQueueAttributes every 15 s, approximate): visible (waiting), \
         in_flight (received by any worker and not deleted, or waiting out a retry delay), delayed"
    );
    metrics::describe_gauge!(
        "pedidos_worker_oldest_message_age_seconds",
        Unit::Seconds,
        "Age (now minus SentTimestamp) of the oldest message this worker received in the last 15 s window; 0 when it \
         received none. A steady rise means the queue is falling behind"
    );
    metrics::describe_histogram!(
        "pedidos_worker_message_age_seconds",
        Unit::Seconds,
        "Age of each message when this worker started handling it (now minus SentTimestamp)"
    );
    metrics::describe_gauge!(
        "pedidos_worker_dependency_up",
        Unit::Count,
        "1 while the dependency answers, 0 while it fails or cannot work as deployed, by dependency (sqs, store). A \
         0 is for alarms and people: the worker holds its messages and waits, and its liveness (/health) stays ok"
    );
    metrics::describe_histogram!(
        "pedidos_worker_handler_duration_seconds",
        Unit::Seconds,
        "Duration of each handler attempt (the role's store write), including a failed one"
    );
    platform::metrics::describe_store();
    // pedidos_trace_spans_dropped_total{reason} and pedidos_trace_spans_exported_total, at 0 with traces off.
    platform::otel::describe_metrics();
}
