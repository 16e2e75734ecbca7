//! The queue as an operator sees it, without CloudWatch: every [`POLL_EVERY`], `GetQueueAttributes` into the
//! `pedidos_worker_queue_messages{state}` gauges and `/health`, and the end of an oldest-message-age window
//! (`pedidos_worker_oldest_message_age_seconds`: the oldest message the receive loop saw since the last poll).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::queue::{MessageQueue, QueueDepth};

/// How often the depth is read. CloudWatch's own SQS metrics have a 1-minute resolution; 15 s costs 4 calls a minute
/// per worker instance, next to the receives' 3 or more.
pub const POLL_EVERY: Duration = Duration::from_secs(15);

/// Polls until `stop`. A failing poll keeps the last values (the receive loop reports SQS failures in `/health`).
pub async fn watch(queue: Arc<dyn MessageQueue>, health: Arc<Health>, stop: CancellationToken) {
    let mut every = tokio::time::interval(POLL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        let age = health.take_oldest_age();
        metrics::gauge!("pedidos_worker_oldest_message_age_seconds").set(age.as_secs_f64());
        let polled = tokio::select! {
            polled = queue.depth() => polled,
            () = stop.cancelled() => return,
        };
        match polled {
            Ok(depth) => {
                if failing {
                    tracing::info!("queue depth readable again");
                    failing = false;
                }
                export(depth);
                health.set_depth(depth);
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "cannot read the queue's depth; the gauges keep their last values");
            }
            Err(error) => tracing::debug!(%error, "queue depth still unreadable"),
        }
    }
}

fn export(depth: QueueDepth) {
    let gauge = |state: &'static str, n: u64| {
        metrics::gauge!("pedidos_worker_queue_messages", "state" => state).set(n as f64);
    };
    gauge("visible", depth.visible);
    gauge("in_flight", depth.in_flight);
    gauge("delayed", depth.delayed);
}
