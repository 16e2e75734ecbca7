//! `pedidos-worker`: consumes one SQS queue (process or logistics role) and applies each event's effect exactly once
//! in the order store.
//!
//! # Layout
//! - [`config`]: environment, validated once.
//! - [`queue`]: the [`queue::MessageQueue`] seam over an owned message type; SQS and in-memory implementations.
//! - [`consumer`]: the receive loop; each message is *decided* (outcome + action) and then *settled* in one place.
//!   [`batcher`] coalesces deletes and visibility changes; [`locks`] serialises copies of one order in this process.
//! - [`handler`]: the `Handler` trait, `HandlerError`, and the two roles (one conditional store write each).
//! - [`idempotent`]: exactly-once for effects outside DynamoDB, on the idempotency store.
//! - [`stats`]: this instance's counts added to its role's stats item (the console's throughput).
//! - [`backoff`]: retry and error delays. [`health`]: liveness (`/health`) apart from dependency state (`/ready`),
//!   and `/metrics`. [`live`]: the live page and its stream of outcome lines. [`depth`]: the queue's depth and oldest
//!   message age, polled for operators. [`metrics_catalog`]: every metric described, counters at zero from start-up.
//! - this file: [`run`] (composed by tests with any queue and handler), [`start`] (the real wiring: the health
//!   endpoint first, then the queue, then the consumer) and [`Endpoint`].

pub mod backoff;
pub mod batcher;
pub mod config;
pub mod consumer;
pub mod depth;
pub mod handler;
pub mod health;
pub mod idempotent;
pub mod live;
pub mod locks;
pub mod metrics_catalog;
pub mod queue;
pub mod stats;

use std::sync::Arc;

use platform::http::{AllowedHosts, HttpLimits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backoff::RetryBackoff;
use crate::config::Config;
use crate::consumer::{Consumer, Settings};
use crate::handler::Handler;
use crate::health::Health;
use crate::queue::sqs::SqsQueue;
use crate::queue::{MessageQueue, QueueError};

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("cannot listen on port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
}

/// The worker's HTTP endpoint (`/health`, `/ready`, `/metrics`, the live page), served from before the queue is
/// known until the consumer has drained.
pub struct Endpoint {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    health: Arc<Health>,
}

impl Endpoint {
    /// Serves `health` on `listener` in the background, with the default limits and only loopback names for the
    /// live page.
    pub fn serve(listener: TcpListener, health: Arc<Health>) -> Self {
        Self::serve_with(listener, health, HttpLimits::default(), AllowedHosts::default())
    }

    /// Serves `health` on `listener` in the background through the same HTTP edge as the API (header-read and idle
    /// timeout, head limits, body deadline, connection limit), the live page answering to `hosts` and loopback.
    pub fn serve_with(listener: TcpListener, health: Arc<Health>, limits: HttpLimits, hosts: AllowedHosts) -> Self {
        metrics_catalog::register();
        let stop = CancellationToken::new();
        let router = health::router(Arc::clone(&health), Arc::new(hosts));
        let task = tokio::spawn(platform::http::serve(listener, router, limits, stop.clone()));
        Self { stop, task, health }
    }

    /// Ends open live pages (they would hold the graceful shutdown forever), then the server.
    pub async fn stop(self) {
        self.health.live.close();
        self.stop.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "health endpoint stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "health endpoint task failed"),
        }
    }
}

/// Serves the endpoint on `listener`, watches the queue's depth, and consumes `queue` with `handler` until
/// `shutdown`; the endpoint keeps answering until the consumer has drained.
pub async fn run(
    listener: TcpListener,
    queue: Arc<dyn MessageQueue>,
    handler: Arc<dyn Handler>,
    health: Arc<Health>,
    settings: Settings,
    stats: Option<Arc<dyn store::StatsWrites>>,
    shutdown: CancellationToken,
) {
    let endpoint = Endpoint::serve(listener, Arc::clone(&health));
    health.running(&queue.settings().url);
    consume(queue, handler, health, settings, stats, shutdown).await;
    endpoint.stop().await;
}

/// The consumer with its companions: the queue-depth watcher and the stats reporter.
async fn consume(
    queue: Arc<dyn MessageQueue>,
    handler: Arc<dyn Handler>,
    health: Arc<Health>,
    settings: Settings,
    stats: Option<Arc<dyn store::StatsWrites>>,
    shutdown: CancellationToken,
) {
    let watch_stop = CancellationToken::new();
    let watcher = tokio::spawn(depth::watch(Arc::clone(&queue), Arc::clone(&health), watch_stop.clone()));
    let reporter = stats.map(|stats| tokio::spawn(stats::report(stats, Arc::clone(&health), watch_stop.clone())));
    Consumer::new(queue, handler, health, settings).run(shutdown).await;
    watch_stop.cancel();
    if let Err(e) = watcher.await {
        tracing::warn!(error = %e, "queue depth watcher failed");
    }
    if let Some(reporter) = reporter {
        if let Err(e) = reporter.await {
            tracing::warn!(error = %e, "stats reporter failed");
        }
    }
}

/// The `serve` command of a worker process: configuration from the environment (errors name the variable), telemetry,
/// SIGTERM/SIGINT, then [`start_with`] on a single-threaded runtime.
pub fn serve_process(
    handler: impl FnOnce(&aws_config::SdkConfig, &Config) -> Arc<dyn Handler>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = match Config::from_env(&platform::config::process_env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    platform::block_on(platform::Runtime::CurrentThread, async {
        // Inside the runtime: the trace exporter, when configured, runs on it.
        let traces = platform::telemetry::init_traced(config.common.log_format, "info", config.traces.as_ref());
        let shutdown = platform::shutdown::on_signal();
        let code = match start_with(config, shutdown, handler).await {
            Ok(()) => {
                tracing::info!("pedidos-worker stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "pedidos-worker failed to start");
                eprintln!("pedidos-worker: {e}");
                ExitCode::FAILURE
            }
        };
        // The spans of the last messages, within platform::otel::FLUSH_BUDGET.
        traces.shutdown().await;
        code
    })
}

/// `pedidos-worker serve`: the configured role on the order store.
pub fn serve() -> std::process::ExitCode {
    serve_process(role_handler)
}

/// Serves the health endpoint, reads the queue's settings (retrying while SQS is unreachable), wires the role's
/// handler to the order store, and runs until `shutdown`.
///
/// # Errors
/// The queue does not exist, or the port is taken.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    start_with(config, shutdown, role_handler).await
}

/// The configured role's handler on the orders table (single or batched writes).
fn role_handler(sdk: &aws_config::SdkConfig, config: &Config) -> Arc<dyn Handler> {
    let orders = orders_table(sdk, config);
    let store: Arc<dyn store::OrderWrites> =
        if config.batched_writes { Arc::new(store::transact::BatchedWrites::spawn(orders)) } else { Arc::new(orders) };
    config.role.handler(store)
}

fn orders_table(sdk: &aws_config::SdkConfig, config: &Config) -> store::dynamo::DynamoOrders {
    store::dynamo::DynamoOrders::new(aws_sdk_dynamodb::Client::new(sdk), &config.orders_table)
}

/// [`start`] with another handler (benchmarks measure the queue path alone with a no-op one).
///
/// The health endpoint is bound first, so an orchestrator sees a live process (`"status": "starting"`) while the queue
/// is still being found: an SQS outage at deploy time is waited out, never a crash loop.
///
/// # Errors
/// The queue does not exist, or the port is taken.
pub async fn start_with(
    config: Config,
    shutdown: CancellationToken,
    handler: impl FnOnce(&aws_config::SdkConfig, &Config) -> Arc<dyn Handler>,
) -> Result<(), StartError> {
    let port = config.common.port;
    let listener =
        TcpListener::bind((config.common.bind_addr, port)).await.map_err(|source| StartError::Bind { port, source })?;
    let health = Arc::new(Health::new(config.role.as_str(), config.queue.clone(), config.health));
    let endpoint =
        Endpoint::serve_with(listener, Arc::clone(&health), config.http_limits, config.allowed_hosts.clone());
    let started = start_consumer(config, &health, shutdown, handler).await;
    endpoint.stop().await;
    started
}

async fn start_consumer(
    config: Config,
    health: &Arc<Health>,
    shutdown: CancellationToken,
    handler: impl FnOnce(&aws_config::SdkConfig, &Config) -> Arc<dyn Handler>,
) -> Result<(), StartError> {
    // Attempts get the long-poll wait on top of the budget, so a 20 s poll is not cut short.
    let sdk = platform::aws::load(&config.common.region, platform::aws::CallBudget::BACKGROUND, config.wait_time).await;
    let client = aws_sdk_sqs::Client::new(&sdk);
    let Some(settings) = discover_with_retry(&client, &config.queue, health, &shutdown).await? else { return Ok(()) };
    tracing::info!(
        queue = %settings.url,
        role = config.role.as_str(),
        visibility_timeout = ?settings.visibility_timeout,
        dlq = settings.dlq_url.as_deref().unwrap_or("none"),
        max_receive_count = settings.max_receive_count,
        concurrency = config.concurrency,
        orders_table = %config.orders_table,
        store_writes = if config.batched_writes { "batched" } else { "single" },
        endpoint = config.common.endpoint_url.as_deref().unwrap_or("aws"),
        "pedidos-worker starting"
    );
    if settings.dlq_url.is_none() {
        tracing::warn!("queue has no redrive policy: poison messages will be redelivered forever");
    }
    health.running(&settings.url);
    let handler = handler(&sdk, &config);
    metrics_catalog::register_store(config.role, config.batched_writes);
    let tunables = Settings {
        concurrency: config.concurrency,
        wait_time: config.wait_time,
        shutdown_grace: config.shutdown_grace,
        retry_base: config.retry_base,
        retry_max: config.retry_max,
    };
    let claims =
        store::idempotency::DynamoIdempotency::new(aws_sdk_dynamodb::Client::new(&sdk), &config.idempotency_table);
    let queue =
        Arc::new(queue::dead_letter_once::DeadLetterOnce::new(SqsQueue::new(client, settings), Arc::new(claims)));
    let stats: Arc<dyn store::StatsWrites> = Arc::new(orders_table(&sdk, &config));
    consume(queue, handler, Arc::clone(health), tunables, Some(stats), shutdown).await;
    Ok(())
}

/// A missing queue is a configuration error (exit); an unreachable one is retried with backoff, so an SQS outage at
/// deploy time does not become a crash loop. `None` when shutdown came first.
async fn discover_with_retry(
    client: &aws_sdk_sqs::Client,
    queue: &str,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<Option<queue::QueueSettings>, StartError> {
    let mut backoff = RetryBackoff::default();
    loop {
        let found = tokio::select! {
            found = queue::sqs::discover(client, queue) => found,
            () = shutdown.cancelled() => return Ok(None),
        };
        health.beat();
        match found {
            Ok(settings) => {
                if health.succeeded(&health.sqs).is_some() {
                    tracing::info!("SQS reachable; queue found");
                }
                return Ok(Some(settings));
            }
            Err(error @ QueueError::NotFound { .. }) => return Err(error.into()),
            Err(error) => {
                let delay = backoff.next_delay();
                if matches!(error, QueueError::Denied(_)) {
                    health.failed(&health.sqs, &error, true);
                    tracing::error!(%error, retry_in = ?delay, "SQS denied the queue's settings; an operator must fix the worker role's policy");
                } else if health.failed(&health.sqs, &error, false) {
                    tracing::warn!(%error, "cannot read the queue's settings yet; retrying with backoff");
                } else {
                    tracing::debug!(%error, retry_in = ?delay, "queue's settings still unreadable");
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
            }
        }
    }
}
