//! Per-order serialisation inside one worker: a second copy of an order (a duplicate delivery, or its next version in
//! the same batch) waits here for the first instead of going back to SQS, where each return would use up one of its
//! `maxReceiveCount` receives. Across workers, the store's conditional writes keep the order right.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

#[derive(Default)]
pub struct OrderLocks {
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while one message of the order is handled; dropping it lets the next copy in.
pub struct OrderGuard<'a> {
    locks: &'a OrderLocks,
    pedido_id: Uuid,
    guard: Option<OwnedMutexGuard<()>>,
}

impl OrderLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub async fn lock(&self, pedido_id: Uuid) -> OrderGuard<'_> {
        let lock = Arc::clone(self.map().entry(pedido_id).or_default());
        let guard = lock.lock_owned().await;
        OrderGuard { locks: self, pedido_id, guard: Some(guard) }
    }

    /// Orders with a holder or a waiter (bounded by the worker's concurrency).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for OrderGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map();
        // Only the map holds it now: nobody waits, so forget the order.
        if map.get(&self.pedido_id).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            map.remove(&self.pedido_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn copies_of_one_order_take_turns_and_the_map_empties() {
        let locks = Arc::new(OrderLocks::default());
        let order = Uuid::from_u128(1);
        let first = locks.lock(order).await;
        let waiter = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move {
                let _second = locks.lock(order).await;
                tokio::time::Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        let released_at = tokio::time::Instant::now();
        drop(first);
        let acquired_at = waiter.await.unwrap_or_else(|e| panic!("waiter failed: {e}"));
        assert!(acquired_at >= released_at, "the copy waited for the first");
        assert!(locks.is_empty());
        // Other orders never wait.
        let _a = locks.lock(Uuid::from_u128(2)).await;
        let _b = locks.lock(Uuid::from_u128(3)).await;
        assert_eq!(locks.len(), 2);
    }
}
