//! Plumbing both binaries share, so it exists once.
//!
//! # Layout
//! - [`config`]: reading environment variables with errors that name the variable.
//! - [`aws`]: the SDK configuration (region, `AWS_ENDPOINT_URL`, timeouts and retries).
//! - [`telemetry`]: `tracing` subscriber, JSON or pretty (colour only on a terminal, never with `NO_COLOR`); [`otel`]:
//!   OpenTelemetry traces (OTLP/HTTP, propagation), off unless an endpoint is configured.
//! - [`metrics`]: the Prometheus recorder behind `GET /metrics`.
//! - [`shutdown`]: SIGTERM/SIGINT as a `CancellationToken`.
//! - [`topology`]: the SNS topic, SQS queues, DLQs and subscriptions, created idempotently.
//! - [`startup`]: waiting, bounded and logged, for an AWS endpoint that is still starting.
//! - [`probe`]: the `healthcheck` subcommand (distroless images have no curl).
//! - [`http`]: serving a router with the edge limits (header, body and connection bounds) and the `Host` check.

pub mod aws;
pub mod config;
pub mod http;
pub mod metrics;
pub mod otel;
pub mod probe;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod topology;

/// Which tokio runtime a binary runs on.
#[derive(Debug, Clone, Copy)]
pub enum Runtime {
    /// Worker threads per core: for one-off commands (`topology`).
    MultiThread,
    /// One thread: for the serving processes (the API and the SQS workers), whose work is I/O-bound and small per
    /// request or message; cross-thread wake-ups were most of their CPU per unit on a multi-threaded runtime (see
    /// docs/BENCHMARKS.md).
    CurrentThread,
}

/// Runs a binary's async entry point, turning a runtime start-up failure into an exit code.
pub fn block_on(
    runtime: Runtime,
    task: impl std::future::Future<Output = std::process::ExitCode>,
) -> std::process::ExitCode {
    let mut builder = match runtime {
        Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    };
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(task),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
