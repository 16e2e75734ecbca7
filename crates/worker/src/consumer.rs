//! The receive loop and what happens to each message.
//!
//! Flow: take free handler slots, long-poll for at most that many messages, spawn one task per message. Each task
//! ends in exactly one [`Outcome`]. Deletes and visibility changes go through the [`Batcher`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use domain::{decode, DecodeError, Inbound, OrderEvent, Payload};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backoff::{retry_visibility, ReceiveBackoff};
use crate::batcher::{Action, Batcher, MAX_BATCH};
use crate::dedup::{Claim, DedupStore};
use crate::handler::{Handler, MessageContext};
use crate::health::Health;
use crate::queue::Queue;

/// How each message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Processed,
    Duplicate,
    Stale,
    Ignored,
    Rejected,
    Failed,
    /// Not an end state: released (shutdown, or another copy in progress) to be received again.
    Released,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::Ignored => "ignored",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Released => "released",
        }
    }
}

/// Tunables of the consumer (from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    pub concurrency: usize,
    pub wait_time: Duration,
    pub shutdown_grace: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

/// Delay before a message whose order is being handled is seen again; by then the other has usually finished and this
/// one is a duplicate, a stale version or the next version.
const IN_PROGRESS_RETRY: Duration = Duration::from_secs(2);

/// Everything a message task needs.
pub struct Consumer {
    pub queue: Queue,
    pub handler: Box<dyn Handler>,
    pub dedup: Box<dyn DedupStore>,
    pub health: Arc<Health>,
    pub settings: Settings,
}

impl Consumer {
    /// Runs until `shutdown`: then stops receiving, gives in-flight handlers `shutdown_grace`, releases what is left
    /// and flushes pending deletes.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let (batcher, batcher_task) = Batcher::spawn(Arc::new(this.queue.clone()));
        let slots = Arc::new(Semaphore::new(this.settings.concurrency));
        let tracker = TaskTracker::new();
        // Cancelled when the grace period ends: handlers still running are abandoned and their messages released.
        let abandon = CancellationToken::new();
        let mut backoff = ReceiveBackoff::default();
        let mut failing_since: Option<Instant> = None;

        while !shutdown.is_cancelled() {
            let permits = tokio::select! {
                permits = take_slots(&slots, this.settings.concurrency.min(MAX_BATCH)) => permits,
                () = shutdown.cancelled() => break,
            };
            // The long poll is not abandoned on shutdown: messages SQS hands to a dropped request would stay invisible
            // for the whole visibility timeout. It returns within `wait_time` (or fails after the call budget).
            let received = this.queue.receive(i32::try_from(permits.len()).unwrap_or(1), this.settings.wait_time).await;
            match received {
                Ok(messages) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(down_for = ?since.elapsed(), "SQS reachable again; receiving");
                    }
                    backoff = ReceiveBackoff::default();
                    this.health.received_ok();
                    let mut permits = permits;
                    for message in messages {
                        if shutdown.is_cancelled() {
                            // Received but not started: make it visible again at once.
                            release(&batcher, &message);
                            continue;
                        }
                        let Some(permit) = permits.pop() else {
                            release(&batcher, &message);
                            continue;
                        };
                        let task = Arc::clone(&this).handle(message, batcher.clone(), abandon.clone(), permit);
                        tracker.spawn(task);
                    }
                }
                Err(error) => {
                    drop(permits);
                    this.health.receive_failed();
                    let delay = backoff.next_delay();
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::warn!(%error, "SQS receive failing; backing off until it answers");
                    } else {
                        tracing::debug!(%error, ?delay, "SQS receive still failing");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }

        tracker.close();
        tracing::info!(in_flight = this.health.in_flight(), grace = ?this.settings.shutdown_grace, "draining in-flight messages");
        if tokio::time::timeout(this.settings.shutdown_grace, tracker.wait()).await.is_err() {
            tracing::warn!("grace period over; releasing messages still in flight");
            abandon.cancel();
            tracker.wait().await;
        }
        drop(batcher);
        if batcher_task.await.is_err() {
            tracing::error!("batcher task panicked; unflushed deletes will be redelivered as duplicates");
        }
        tracing::info!("consumer stopped");
    }

    async fn handle(
        self: Arc<Self>,
        message: Message,
        batcher: Batcher,
        abandon: CancellationToken,
        permit: OwnedSemaphorePermit,
    ) {
        let _permit = permit;
        let _in_flight = self.health.enter();
        let message_id = message.message_id.clone().unwrap_or_default();
        let receive_count = system_attribute(&message, &MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1);
        if let Some(sent) =
            system_attribute(&message, &MessageSystemAttributeName::SentTimestamp).and_then(|v| v.parse::<u64>().ok())
        {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            metrics::histogram!("pedidos_worker_message_age_seconds").record(now.saturating_sub(sent) as f64 / 1000.0);
        }
        let span = tracing::info_span!("message", message_id = %message_id, receive_count);
        let decoded = decode(message.body.as_deref().unwrap_or_default());
        let outcome = async {
            match decoded {
                Err(error) => self.reject(&message, &batcher, &error).await,
                Ok(inbound) => self.dispatch(&message, inbound, receive_count, &batcher, &abandon).await,
            }
        }
        .instrument(span)
        .await;
        if outcome != Outcome::Released {
            metrics::counter!("pedidos_worker_messages_total", "outcome" => outcome.as_str()).increment(1);
        } else {
            metrics::counter!("pedidos_worker_released_total").increment(1);
        }
    }

    async fn dispatch(
        &self,
        message: &Message,
        inbound: Inbound,
        receive_count: u32,
        batcher: &Batcher,
        abandon: &CancellationToken,
    ) -> Outcome {
        let request_id = inbound
            .attributes
            .get("requestId")
            .cloned()
            .or_else(|| message.message_attributes.as_ref()?.get("requestId")?.string_value.clone());
        let event = match inbound.payload {
            Payload::Other { event_type } => {
                delete(batcher, message);
                tracing::info!(
                    outcome = "ignored",
                    event_type,
                    request_id,
                    "event type unknown to this contract version"
                );
                return Outcome::Ignored;
            }
            Payload::Order(event) => event,
        };
        let fields = LogFields::new(&event, request_id.as_deref(), inbound.legacy);
        if !self.handler.handles(event.event_type) {
            delete(batcher, message);
            fields.log(Outcome::Ignored, "event type not handled by this role");
            return Outcome::Ignored;
        }
        let key = event.dedup_key();
        match self.dedup.claim(key).await {
            Claim::Duplicate => {
                delete(batcher, message);
                fields.log(Outcome::Duplicate, "already applied");
                return Outcome::Duplicate;
            }
            Claim::Stale { latest } => {
                delete(batcher, message);
                tracing::info!(latest, "newer version already applied");
                fields.log(Outcome::Stale, "older than the applied version");
                return Outcome::Stale;
            }
            Claim::InProgress => {
                set_visibility(batcher, message, IN_PROGRESS_RETRY);
                fields.log(Outcome::Released, "this order is being handled; retrying later");
                return Outcome::Released;
            }
            Claim::Acquired => {}
        }
        let ctx = MessageContext {
            message_id: message.message_id.clone().unwrap_or_default(),
            receive_count,
            request_id: request_id.clone(),
        };
        let started = Instant::now();
        let result = self.run_with_heartbeat(&event, &ctx, message, abandon).await;
        metrics::histogram!("pedidos_worker_handler_duration_seconds").record(started.elapsed().as_secs_f64());
        match result {
            HandlerRun::Done => {
                self.dedup.complete(key).await;
                delete(batcher, message);
                fields.log(Outcome::Processed, "handled");
                Outcome::Processed
            }
            HandlerRun::Failed(reason) => {
                self.dedup.release(key).await;
                let delay = retry_visibility(receive_count, self.settings.retry_base, self.settings.retry_max);
                set_visibility(batcher, message, delay);
                tracing::warn!(%reason, retry_in = ?delay, max_receive_count = self.queue.settings.max_receive_count, "handler failed");
                fields.log(Outcome::Failed, "will be retried");
                Outcome::Failed
            }
            HandlerRun::Abandoned => {
                self.dedup.release(key).await;
                release(batcher, message);
                fields.log(Outcome::Released, "shutdown grace over; released for another worker");
                Outcome::Released
            }
        }
    }

    /// Runs the handler, extending the message's visibility every half timeout while it runs.
    async fn run_with_heartbeat(
        &self,
        event: &OrderEvent,
        ctx: &MessageContext,
        message: &Message,
        abandon: &CancellationToken,
    ) -> HandlerRun {
        let timeout = self.queue.settings.visibility_timeout;
        let period = (timeout / 2).max(Duration::from_secs(1));
        let handle = message.receipt_handle.as_deref().unwrap_or_default();
        let heartbeat = async {
            loop {
                tokio::time::sleep(period).await;
                if let Err(error) = self.queue.extend_visibility(handle, timeout).await {
                    return error;
                }
                tracing::debug!(extended_by = ?timeout, "visibility extended");
            }
        };
        tokio::select! {
            result = self.handler.handle(event, ctx) => match result {
                Ok(()) => HandlerRun::Done,
                Err(e) => HandlerRun::Failed(e.to_string()),
            },
            error = heartbeat => HandlerRun::Failed(format!("visibility extension failed, handler cancelled: {error}")),
            () = abandon.cancelled() => HandlerRun::Abandoned,
        }
    }

    async fn reject(&self, message: &Message, batcher: &Batcher, error: &DecodeError) -> Outcome {
        let detail = error.to_string();
        if self.queue.settings.dlq_url.is_none() {
            tracing::error!(outcome = "rejected", reason = error.code(), %detail, "poison message and no DLQ: left for redelivery");
            return Outcome::Rejected;
        }
        match self.queue.send_to_dlq(message, error.code(), &detail).await {
            Ok(()) => {
                delete(batcher, message);
                tracing::warn!(outcome = "rejected", reason = error.code(), %detail, "poison message moved to the DLQ");
            }
            Err(send_error) => {
                // Not deleted: it comes back, and the redrive policy is the backstop.
                tracing::error!(outcome = "rejected", reason = error.code(), %detail, %send_error, "could not copy poison message to the DLQ; left for redelivery");
            }
        }
        Outcome::Rejected
    }
}

enum HandlerRun {
    Done,
    Failed(String),
    Abandoned,
}

/// The fields every outcome line carries.
struct LogFields<'a> {
    event: &'a OrderEvent,
    request_id: Option<&'a str>,
    legacy: bool,
}

impl<'a> LogFields<'a> {
    fn new(event: &'a OrderEvent, request_id: Option<&'a str>, legacy: bool) -> Self {
        Self { event, request_id, legacy }
    }

    fn log(&self, outcome: Outcome, what: &str) {
        tracing::info!(
            outcome = outcome.as_str(),
            pedido_id = %self.event.order.pedido_id,
            version = self.event.version,
            r#type = self.event.event_type.as_str(),
            request_id = self.request_id.unwrap_or_default(),
            legacy = self.legacy,
            "{what}"
        );
    }
}

/// How long the receive loop waits for more handler slots to free up before polling with fewer than a full batch.
/// Under backlog, slots come back within milliseconds of each other; waiting for them makes every receive (and so
/// every delete batch) full, which is what gets SQS calls per message down to 0.2.
const SLOT_LINGER: Duration = Duration::from_millis(20);

/// Waits for one free slot, then for more (up to a full SQS batch) for at most [`SLOT_LINGER`], so no prefetched
/// message ever waits for a slot while its visibility timer runs.
async fn take_slots(slots: &Arc<Semaphore>, max: usize) -> Vec<OwnedSemaphorePermit> {
    let mut permits = Vec::with_capacity(max);
    match Arc::clone(slots).acquire_owned().await {
        Ok(permit) => permits.push(permit),
        // The semaphore is never closed.
        Err(_) => return permits,
    }
    let deadline = Instant::now() + SLOT_LINGER;
    while permits.len() < max {
        let next = match Arc::clone(slots).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                tokio::time::timeout_at(deadline, Arc::clone(slots).acquire_owned()).await.ok().and_then(Result::ok)
            }
        };
        match next {
            Some(permit) => permits.push(permit),
            None => break,
        }
    }
    permits
}

fn system_attribute<'m>(message: &'m Message, name: &MessageSystemAttributeName) -> Option<&'m str> {
    message.attributes.as_ref()?.get(name).map(String::as_str)
}

fn handle_of(message: &Message) -> String {
    message.receipt_handle.clone().unwrap_or_default()
}

fn delete(batcher: &Batcher, message: &Message) {
    batcher.submit(Action::Delete { receipt_handle: handle_of(message) });
}

fn set_visibility(batcher: &Batcher, message: &Message, after: Duration) {
    batcher.submit(Action::Visibility { receipt_handle: handle_of(message), after });
}

fn release(batcher: &Batcher, message: &Message) {
    set_visibility(batcher, message, Duration::ZERO);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots freed within the linger are taken: the next receive asks for a full batch.
    #[tokio::test(start_paused = true)]
    async fn take_slots_waits_briefly_for_a_full_batch() {
        let slots = Arc::new(Semaphore::new(10));
        let busy = take_slots(&slots, 10).await;
        assert_eq!(busy.len(), 10);
        let returning = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(busy);
        });
        let permits = take_slots(&slots, 10).await;
        assert_eq!(permits.len(), 10);
        let _ = returning.await;
    }

    /// Slots still busy after the linger are not waited for: a partial batch goes out.
    #[tokio::test(start_paused = true)]
    async fn take_slots_does_not_wait_past_the_linger() {
        let slots = Arc::new(Semaphore::new(10));
        let _held = Arc::clone(&slots).try_acquire_many_owned(7);
        let started = Instant::now();
        let permits = take_slots(&slots, 10).await;
        assert_eq!(permits.len(), 3);
        assert!(started.elapsed() <= SLOT_LINGER + Duration::from_millis(1));
    }
}
