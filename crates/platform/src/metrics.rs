//! The Prometheus recorder behind each binary's `GET /metrics`, and the metrics both binaries share (the store's).
//!
//! Each binary describes its own metrics in one place (`pedidos_worker::metrics_catalog`,
//! `pedidos_api::metrics_catalog`), so every family on `/metrics` carries `# HELP` text an on-call engineer can read.

use std::sync::OnceLock;

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Buckets in seconds, from sub-millisecond API work up to minutes of queue age.
const BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Installs the global recorder on first call and returns its handle (the recorder is process-wide, and tests build
/// several routers in one process).
///
/// Call it before describing or registering any metric: until the recorder is installed, those calls go nowhere.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS) {
                Ok(b) => b,
                // Only fails for an empty bucket list, which BUCKETS is not.
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; metrics then go there and /metrics is empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Store call results that are worth a series from start-up: the outcomes of a conditional write and the ways a call
/// fails. Rarer labels (`corrupt`, `bad_cursor`, `lost`, ...) still appear when they first happen.
pub const STORE_WRITE_RESULTS: &[&str] =
    &["applied", "duplicate", "stale", "conflict", "throttled", "error", "rejected", "misconfigured"];
/// The same for reads, which succeed with `ok`.
pub const STORE_READ_RESULTS: &[&str] = &["ok", "throttled", "error", "misconfigured"];

/// Describes the order store's metrics (`store::dynamo` records them; both binaries use the store).
pub fn describe_store() {
    let _ = handle();
    metrics::describe_counter!(
        "pedidos_store_calls_total",
        metrics::Unit::Count,
        "DynamoDB calls of the order store, by operation (apply, create_shipment, transact_write, get, list, check, \
         claim, compact_history, ...) and result: applied, duplicate, stale or conflict for a conditional write, ok for \
         a read; throttled or error when DynamoDB did not answer usefully (retried; a steady rate of errors is an \
         outage), rejected when it refused the request itself (dead-lettered), misconfigured when the table, an index \
         or a permission is missing (an operator must act)"
    );
    metrics::describe_histogram!(
        "pedidos_store_call_duration_seconds",
        metrics::Unit::Seconds,
        "Latency of each order-store call to DynamoDB, by operation, including the SDK's own retries"
    );
}

/// Creates `pedidos_store_calls_total{operation, result}` at zero for each of `results`, so a rate or an alert on a
/// result works before it first happens.
pub fn zero_store_calls(operation: &'static str, results: &[&'static str]) {
    let _ = handle();
    for result in results {
        metrics::counter!("pedidos_store_calls_total", "operation" => operation, "result" => *result).increment(0);
    }
}
