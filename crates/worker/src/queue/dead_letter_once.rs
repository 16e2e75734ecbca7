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
        match self.claims.claim(&key, lease).await {
            // Copied by an earlier attempt whose delete did not happen: deleting is all that is left.
            Ok(Claim::Completed) => Ok(()),
            Ok(Claim::InProgress { .. }) => Err(QueueError::Call {
                operation: "send",
                detail: "another attempt is copying this message to the DLQ; it is left for redelivery".into(),
                source: None,
            }),
            Ok(Claim::Acquired(token)) => match self.inner.dead_letter(message, reason, detail).await {
                Ok(()) => {
                    if let Err(error) = self.claims.complete(&key, &token).await {
                        tracing::warn!(%key, %error, "DLQ copy not recorded; a redelivery may copy it again");
                    }
                    Ok(())
                }
                Err(error) => {
                    if let Err(release) = self.claims.release(&key, &token).await {
                        tracing::debug!(%key, error = %release, "claim not released; it lapses with its lease");
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
        }
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
