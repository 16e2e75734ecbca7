//! The Prometheus recorder behind each binary's `GET /metrics`.

use std::sync::OnceLock;

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Buckets in seconds, from sub-millisecond API work up to minutes of queue age.
const BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Installs the global recorder on first call and returns its handle (the recorder is process-wide, and tests build
/// several routers in one process).
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
