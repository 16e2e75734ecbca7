//! A queue whose dead-lettering happens once per message, whatever the number of attempts and workers.
//!
//! The consumer copies a poison message to the DLQ and then deletes it. If the delete fails (an expired receipt
//! handle, SQS unreachable), the message comes back and would be copied again: two identical entries in the DLQ, and
//! two redrives. Wrapping the queue in [`DeadLetterOnce`] claims `dead-letter#<messageId>` in the idempotency table
//! (the same fenced claims as [`crate::idempotent`]) around the copy: a message already copied is only deleted.

use std::sync::Arc;
use std::time::Duration;

use store::idempotency::{Claim, IdempotencyStore};

use super::{BatchFailure, MessageQueue, QueueDepth, QueueError, QueueSettings, Received};
use crate::handler::BoxFuture;

pub struct DeadLetterOnce<Q> {
    inner: Q,
    claims: Arc<dyn IdempotencyStore>,
}

impl<Q: MessageQueue> DeadLetterOnce<Q> {
    pub fn new(inner: Q, claims: Arc<dyn IdempotencyStore>) -> Self {
        Self { inner, claims }
    }

    async fn dead_letter_once(&self, message: &Received, reason: &str, detail: &str) -> Result<(), QueueError> {
        let key = format!("dead-letter#{}", message.message_id);
        let lease = self.inner.settings().visibility_timeout;
        let mut claim = self.claims.claim(&key, lease).await;
        if let Ok(Claim::InProgress { lease_left }) = claim {
            // Left by a worker that died mid-copy (a live one would hold the message, which this worker now holds):
            // keep the message, let the claim's lease run out, and take the claim over. Leaving the message for
            // redelivery instead would cost it one receive.
            let hold = (lease_left + lease).min(crate::backoff::MAX_VISIBILITY);
            self.inner.extend_visibility(&message.receipt_handle, hold).await?;
            tracing::warn!(%key, ?lease_left, "a DLQ copy claim was left in progress; taking it over once its lease ends");
            tokio::time::sleep(lease_left + TAKEOVER_SLACK).await;
            claim = self.claims.claim(&key, lease).await;
        }
        match claim {
            // Copied by an earlier attempt whose delete did not happen: deleting is all that is left.
            Ok(Claim::Completed) => Ok(()),
            Ok(Claim::InProgress { .. }) => Err(QueueError::Call {
                operation: "send",
                detail: "another attempt is copying this message to the DLQ; it is left for redelivery".into(),
                source: None,
            }),
            Ok(Claim::Acquired(token)) => match self.inner.dead_letter(message, reason, detail).await {
                Ok(()) => {
                    // A failure here (or dying before it) leaves the claim in progress: the next attempt takes it
                    // over and copies again. That second copy is the one case where "once" does not hold (G22).
                    if let Err(error) = self.claims.complete(&key, &token).await {
                        tracing::warn!(%key, %error, "DLQ copy not recorded; a redelivery may copy it again");
                    }
                    Ok(())
                }
                Err(error) => {
                    if let Err(release) = self.claims.release(&key, &token).await {
                        tracing::warn!(%key, error = %release, "claim not released; it lapses with its lease");
                    }
                    Err(error)
                }
            },
            // The store is down: a possible duplicate copy beats holding poison back.
            Err(error) => {
                tracing::warn!(%key, %error, "idempotency store unavailable; copying to the DLQ without the claim");
                self.inner.dead_letter(message, reason, detail).await
            }
        }
    }
}

/// Waited past a claim's lease before taking it over, for clock skew between workers.
const TAKEOVER_SLACK: Duration = Duration::from_millis(500);

impl<Q: MessageQueue> MessageQueue for DeadLetterOnce<Q> {
    fn settings(&self) -> &QueueSettings {
        self.inner.settings()
    }

    fn receive(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Received>, QueueError>> {
        self.inner.receive(max, wait)
    }

    fn delete_batch<'a>(&'a self, handles: &'a [String]) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>> {
        self.inner.delete_batch(handles)
    }

    fn change_visibility_batch<'a>(
        &'a self,
        entries: &'a [(String, Duration)],
    ) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>> {
        self.inner.change_visibility_batch(entries)
    }

    fn extend_visibility<'a>(&'a self, handle: &'a str, timeout: Duration) -> BoxFuture<'a, Result<(), QueueError>> {
        self.inner.extend_visibility(handle, timeout)
    }

    fn dead_letter<'a>(
        &'a self,
        message: &'a Received,
        reason: &'a str,
        detail: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(self.dead_letter_once(message, reason, detail))
    }

    fn depth(&self) -> BoxFuture<'_, Result<QueueDepth, QueueError>> {
        self.inner.depth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::memory::MemoryQueue;
    use store::idempotency::MemoryIdempotency;

    fn poison(id: &str) -> Received {
        Received {
            message_id: id.into(),
            receipt_handle: "h".into(),
            body: "not json".into(),
            receive_count: 1,
            sent_at_ms: None,
            attributes: Default::default(),
            group_id: None,
            trace_header: None,
        }
    }

    /// A claim left in progress by a worker that died mid-copy is taken over once its lease ends: the message is
    /// copied (once) by the worker holding it now, without going back to the queue.
    #[tokio::test(start_paused = true)]
    async fn a_claim_left_by_a_dead_worker_is_taken_over_after_its_lease() {
        let claims = Arc::new(MemoryIdempotency::new());
        let queue = DeadLetterOnce::new(MemoryQueue::new(Duration::from_secs(30), 5), Arc::clone(&claims) as _);
        let id = queue.inner.send("not json", &[]);
        let received = queue.receive(1, Duration::ZERO).await.unwrap_or_default();
        let Some(message) = received.first() else { panic!("the message was not received") };
        // The dead worker's claim, with 20 s of its lease left.
        let left = claims.claim(&format!("dead-letter#{id}"), Duration::from_secs(20)).await;
        assert!(matches!(left, Ok(Claim::Acquired(_))), "{left:?}");
        let started = tokio::time::Instant::now();
        assert!(queue.dead_letter(message, "not_json", "x").await.is_ok());
        assert!(started.elapsed() >= Duration::from_secs(20), "waited for the lease: {:?}", started.elapsed());
        assert_eq!(queue.inner.dead_lettered().len(), 1);
        assert_eq!(queue.inner.in_flight(), 1, "held meanwhile (its visibility extended), not redelivered");
        assert!(queue.dead_letter(message, "not_json", "x").await.is_ok());
        assert_eq!(queue.inner.dead_lettered().len(), 1, "completed: not copied again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_is_copied_to_the_dlq_once_however_often_it_comes_back() {
        let queue =
            DeadLetterOnce::new(MemoryQueue::new(Duration::from_secs(30), 5), Arc::new(MemoryIdempotency::new()));
        for _ in 0..3 {
            assert!(queue.dead_letter(&poison("m1"), "not_json", "x").await.is_ok());
        }
        assert!(queue.dead_letter(&poison("m2"), "not_json", "x").await.is_ok());
        assert_eq!(queue.inner.dead_lettered().len(), 2, "m1 once, m2 once");
    }
}
