//! `pedidos-worker`: consumes one SQS queue (process or logistics role) reliably.
//!
//! # Layout
//! - [`config`]: environment, validated once.
//! - [`queue`]: the queue's settings and every SQS call (counted in metrics).
//! - [`consumer`]: the receive loop and each message's outcome; [`batcher`] coalesces deletes/visibility changes.
//! - [`dedup`]: `pedidoId#version` idempotency behind a store trait.
//! - [`handler`]: the `Handler` trait and the two roles.
//! - [`backoff`]: retry and error delays. [`health`]: `/health` and `/metrics`.

pub mod backoff;
pub mod batcher;
pub mod config;
pub mod consumer;
pub mod dedup;
pub mod handler;
pub mod health;
pub mod queue;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consumer::{Consumer, Settings};
use crate::dedup::MemoryDedup;
use crate::health::Health;
use crate::queue::Queue;

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    #[error("cannot listen on port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
}

/// Reads the queue's settings, serves `/health` and `/metrics`, and consumes until `shutdown`.
///
/// # Errors
/// The queue does not exist or cannot be reached at start-up, or the port is taken.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    // Attempts get the long-poll wait on top of the budget, so a 20 s poll is not cut short.
    let sdk = platform::aws::load(&config.common.region, platform::aws::CallBudget::BACKGROUND, config.wait_time).await;
    let client = aws_sdk_sqs::Client::new(&sdk);
    let settings = queue::discover(&client, &config.queue).await?;
    tracing::info!(
        queue = %settings.url,
        role = config.role.as_str(),
        visibility_timeout = ?settings.visibility_timeout,
        dlq = settings.dlq_url.as_deref().unwrap_or("none"),
        max_receive_count = settings.max_receive_count,
        concurrency = config.concurrency,
        endpoint = config.common.endpoint_url.as_deref().unwrap_or("aws"),
        "pedidos-worker starting"
    );
    if settings.dlq_url.is_none() {
        tracing::warn!("queue has no redrive policy: poison messages will be redelivered forever");
    }
    let port = config.common.port;
    let listener =
        TcpListener::bind((config.common.bind_addr, port)).await.map_err(|source| StartError::Bind { port, source })?;
    let health = Arc::new(Health::new(config.role.as_str(), settings.url.clone(), config.unhealthy_after));
    let consumer = Consumer {
        queue: Queue::new(client, settings),
        handler: config.role.handler(),
        dedup: Box::new(MemoryDedup::new(config.dedup_capacity, config.dedup_ttl)),
        health: Arc::clone(&health),
        settings: Settings {
            concurrency: config.concurrency,
            wait_time: config.wait_time,
            shutdown_grace: config.shutdown_grace,
            retry_base: config.retry_base,
            retry_max: config.retry_max,
        },
    };
    // The HTTP endpoint outlives the consumer's drain so health checks keep answering during shutdown.
    let http_stop = CancellationToken::new();
    let http = tokio::spawn({
        let stop = http_stop.clone();
        async move {
            axum::serve(listener, health::router(health))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    });
    consumer.run(shutdown).await;
    http_stop.cancel();
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "health endpoint stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "health endpoint task failed"),
    }
    Ok(())
}
