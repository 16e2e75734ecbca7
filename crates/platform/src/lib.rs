//! Plumbing both binaries share, so it exists once.
//!
//! # Layout
//! - [`config`]: reading environment variables with errors that name the variable.
//! - [`aws`]: the SDK configuration (region, `AWS_ENDPOINT_URL`, timeouts and retries).
//! - [`telemetry`]: `tracing` subscriber, JSON or pretty.
//! - [`metrics`]: the Prometheus recorder behind `GET /metrics`.
//! - [`shutdown`]: SIGTERM/SIGINT as a `CancellationToken`.
//! - [`topology`]: the SNS topic, SQS queues, DLQs and subscriptions, created idempotently.
//! - [`probe`]: the `healthcheck` subcommand (distroless images have no curl).

pub mod aws;
pub mod config;
pub mod metrics;
pub mod probe;
pub mod shutdown;
pub mod telemetry;
pub mod topology;

/// Runs a binary's async entry point on a multi-threaded runtime, turning a runtime start-up failure into an exit code.
pub fn block_on(task: impl std::future::Future<Output = std::process::ExitCode>) -> std::process::ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(task),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
