//! Exactly-once for effects outside DynamoDB (a payment call, an email): a [`SideEffect`] wrapped in [`Idempotent`]
//! runs under a claim in the idempotency store (`store::idempotency`).

use std::sync::Arc;
use std::time::Duration;

use domain::{EventType, OrderEvent};
use store::idempotency::{Claim, ClaimToken, IdempotencyStore};

use crate::backoff::RetryBackoff;
use crate::handler::{BoxFuture, Effect, Handler, HandlerError, MessageContext};

/// An effect that is not idempotent by itself.
pub trait SideEffect: Send + Sync + 'static {
    /// Part of the claim key: two effects on the same event are claimed separately.
    fn name(&self) -> &'static str;
    fn handles(&self, event_type: EventType) -> bool;
    fn run<'a>(&'a self, event: &'a OrderEvent, ctx: &'a MessageContext) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// Runs a [`SideEffect`] at most once per `pedidoId#version` across every worker: claim (a lease as long as the
/// message's visibility, extended while the effect runs), run, then complete only while still holding the claim.
pub struct Idempotent<E> {
    pub effect: E,
    pub claims: Arc<dyn IdempotencyStore>,
}

/// Longest wait before claiming again while another copy holds the claim.
const HELD_RETRY_MAX: Duration = Duration::from_secs(1);

impl<E: SideEffect> Idempotent<E> {
    async fn run_claimed(
        &self,
        key: &str,
        token: &ClaimToken,
        event: &OrderEvent,
        ctx: &MessageContext,
    ) -> Result<Effect, HandlerError> {
        let result = tokio::select! {
            result = self.effect.run(event, ctx) => result,
            () = self.keep_claim(key, token, ctx.lease) => Err(HandlerError::transient("claim lost while the effect ran (another worker took it over)")),
        };
        if let Err(error) = result {
            // Give the claim up so the retry does not wait for the lease to lapse. Failing to is harmless: it lapses.
            if let Err(release) = self.claims.release(key, token).await {
                tracing::warn!(%key, error = %release, "could not release the claim; it lapses with its lease");
            }
            return Err(error);
        }
        // The effect happened: recording it must not give up on a blip, or a retry would run the effect again.
        let mut backoff = RetryBackoff::default();
        loop {
            match self.claims.complete(key, token).await {
                Ok(true) => return Ok(Effect::Applied),
                Ok(false) => return Err(HandlerError::transient(
                    "claim lost before completion (fenced): another worker holds it; the retry will see its outcome",
                )),
                // Refused for good: retrying cannot record it, so a person decides (the effect did run).
                Err(error @ store::StoreError::Rejected { .. }) => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(%key, %error, "completing the claim failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Extends the claim every half lease; returns once it is no longer held.
    async fn keep_claim(&self, key: &str, token: &ClaimToken, lease: Duration) {
        let period = (lease / 2).max(Duration::from_millis(500));
        loop {
            tokio::time::sleep(period).await;
            match self.claims.extend(key, token, lease).await {
                Ok(true) => {}
                Ok(false) => return,
                // Unreachable store: keep trying; if the lease lapses meanwhile, completion is fenced.
                Err(error) => tracing::warn!(%key, %error, "extending the claim failed"),
            }
        }
    }
}

impl<E: SideEffect> Handler for Idempotent<E> {
    fn handles(&self, event_type: EventType) -> bool {
        self.effect.handles(event_type)
    }

    fn handle<'a>(
        &'a self,
        event: &'a OrderEvent,
        ctx: &'a MessageContext,
    ) -> BoxFuture<'a, Result<Effect, HandlerError>> {
        Box::pin(async move {
            let key = format!("{}#{}", self.effect.name(), event.dedup_key());
            loop {
                match self.claims.claim(&key, ctx.lease).await? {
                    Claim::Completed => return Ok(Effect::Duplicate),
                    // A concurrent copy (another worker, or a redelivery) is running it: hold this one and look again.
                    Claim::InProgress { lease_left } => {
                        tokio::time::sleep(lease_left.clamp(Duration::from_millis(50), HELD_RETRY_MAX)).await;
                    }
                    Claim::Acquired(token) => return self.run_claimed(&key, &token, event, ctx).await,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use store::idempotency::MemoryIdempotency;

    /// Counts runs; fails the first `fail_first` of them.
    struct Payment {
        runs: Arc<AtomicUsize>,
        fail_first: usize,
        takes: Duration,
    }

    impl SideEffect for Payment {
        fn name(&self) -> &'static str {
            "payment"
        }
        fn handles(&self, _: EventType) -> bool {
            true
        }
        fn run<'a>(&'a self, _: &'a OrderEvent, _: &'a MessageContext) -> BoxFuture<'a, Result<(), HandlerError>> {
            Box::pin(async move {
                tokio::time::sleep(self.takes).await;
                let run = self.runs.fetch_add(1, Ordering::SeqCst);
                if run < self.fail_first {
                    return Err(HandlerError::transient("gateway said no"));
                }
                Ok(())
            })
        }
    }

    fn ctx() -> MessageContext {
        MessageContext {
            message_id: "m".into(),
            receive_count: 1,
            request_id: None,
            published_id: None,
            trace_id: None,
            lease: Duration::from_secs(30),
        }
    }

    fn event() -> OrderEvent {
        let order = domain::OrderState {
            pedido_id: uuid::Uuid::from_u128(5),
            cliente_id: uuid::Uuid::from_u128(6),
            fecha: chrono::Utc::now().fixed_offset(),
            total: rust_decimal::Decimal::new(100, 2),
            items: None,
        };
        OrderEvent::created(order, chrono::Utc::now())
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_copies_run_the_effect_once_and_a_failure_releases() {
        let runs = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(Idempotent {
            effect: Payment { runs: Arc::clone(&runs), fail_first: 1, takes: Duration::from_secs(3) },
            claims: Arc::new(MemoryIdempotency::new()),
        });
        let event = event();
        // First attempt fails and releases; then two copies race: one runs, the other is held, then sees it done.
        let first = handler.handle(&event, &ctx()).await;
        assert!(matches!(first, Err(HandlerError::Transient { .. })));
        let (ctx_a, ctx_b) = (ctx(), ctx());
        let (a, b) = tokio::join!(handler.handle(&event, &ctx_a), handler.handle(&event, &ctx_b));
        let mut outcomes = [a.ok(), b.ok()];
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(outcomes, [Some(Effect::Applied), Some(Effect::Duplicate)]);
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one failed run, then exactly one successful run");
        assert_eq!(handler.handle(&event, &ctx()).await.ok(), Some(Effect::Duplicate));
    }
}
