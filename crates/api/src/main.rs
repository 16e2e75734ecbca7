//! `pedidos-api` entry point: `serve` (default), `healthcheck` or `topology`.

use std::process::ExitCode;

use platform::config::{process_env, Common};

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    match command.as_deref() {
        // One thread, as for the workers: a request is a few hundred microseconds of CPU around one AWS call, and
        // handing its wake-ups between worker threads cost about a fifth of the CPU per order (740 -> 600 us,
        // docs/BENCHMARKS.md). One core serves over a thousand orders a second; scale out with tasks.
        None | Some("serve") => platform::block_on(platform::Runtime::CurrentThread, serve()),
        Some("healthcheck") => health_check(),
        Some("topology") => platform::block_on(platform::Runtime::MultiThread, topology()),
        Some(other) => {
            eprintln!("unknown command {other:?}; usage: pedidos-api [serve|healthcheck|topology]");
            ExitCode::from(2)
        }
    }
}

async fn serve() -> ExitCode {
    let config = match pedidos_api::config::Config::from_env(&process_env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let traces =
        platform::telemetry::init_traced(config.common.log_format, "info,pedidos_api=info", config.traces.as_ref());
    let shutdown = platform::shutdown::on_signal();
    let code = match pedidos_api::start(config, shutdown).await {
        Ok(()) => {
            tracing::info!("pedidos-api stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "pedidos-api failed");
            ExitCode::FAILURE
        }
    };
    // The spans of the last requests, within platform::otel::FLUSH_BUDGET.
    traces.shutdown().await;
    code
}

fn health_check() -> ExitCode {
    let port = Common::from_env(&process_env, pedidos_api::config::DEFAULT_PORT)
        .map_or(pedidos_api::config::DEFAULT_PORT, |c| c.port);
    ExitCode::from(u8::try_from(platform::probe::run(port)).unwrap_or(1))
}

/// Creates the tables, topic, queues, DLQs and subscriptions (idempotent) and prints their ids as `KEY=value` lines.
///
/// First it waits, bounded and logged, until DynamoDB, SNS and SQS answer (`platform::startup`): an emulator still
/// starting must not make this one-shot fail for good, since everything else in compose waits for it to succeed. Its
/// log goes to stderr (stdout is the `KEY=value` lines); a failure is one line.
async fn topology() -> ExitCode {
    let (common, patience) = match Common::from_env(&process_env, 0)
        .and_then(|common| Ok((common, platform::startup::Patience::from_env(&process_env)?)))
    {
        Ok(config) => config,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut names = platform::topology::Names::default();
    let tables = platform::config::orders_table(&process_env)
        .and_then(|orders| Ok((orders, platform::config::idempotency_table(&process_env)?)));
    match tables {
        Ok((orders, idempotency)) => (names.orders_table, names.idempotency_table) = (orders, idempotency),
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::FAILURE;
        }
    }
    platform::telemetry::init_stderr(common.log_format, "info");
    let probe_sdk =
        platform::aws::load(&common.region, platform::aws::CallBudget::STARTUP, std::time::Duration::ZERO).await;
    if let Err(e) = platform::startup::wait_for_endpoints(&probe_sdk, &process_env, patience).await {
        tracing::error!("topology failed: {e}");
        return ExitCode::FAILURE;
    }
    let sdk =
        platform::aws::load(&common.region, platform::aws::CallBudget::INTERACTIVE, std::time::Duration::ZERO).await;
    let (sns, sqs, dynamodb) =
        (aws_sdk_sns::Client::new(&sdk), aws_sdk_sqs::Client::new(&sdk), aws_sdk_dynamodb::Client::new(&sdk));
    match platform::topology::ensure(&sns, &sqs, &dynamodb, &names).await {
        Ok(topology) => {
            print!("{}", topology.env_lines());
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("topology failed at {e}");
            ExitCode::FAILURE
        }
    }
}
