//! Effect-level idempotency: which `pedidoId#version` keys were completed, and which are being handled right now.
//!
//! Behind a trait so a shared persistent store (e.g. DynamoDB conditional writes) can replace the in-memory one for
//! several worker instances without touching the consumer.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use domain::DedupKey;
use moka::sync::Cache;
use uuid::Uuid;

use crate::handler::BoxFuture;

/// What the consumer should do with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Not seen: handle it, then call `complete` or `release`.
    Acquired,
    /// This exact version was completed already.
    Duplicate,
    /// A higher version of the order was completed already.
    Stale { latest: u64 },
    /// This order (this or another version) is being handled right now; try again later. Serialising per order is
    /// what keeps versions applied in order when a batch holds two of them.
    InProgress,
}

pub trait DedupStore: Send + Sync + 'static {
    fn claim(&self, key: DedupKey) -> BoxFuture<'_, Claim>;
    /// The handler succeeded: remember the key.
    fn complete(&self, key: DedupKey) -> BoxFuture<'_, ()>;
    /// The handler failed or was cancelled: forget the claim so a redelivery can try again.
    fn release(&self, key: DedupKey) -> BoxFuture<'_, ()>;
}

/// Bounded in size and time; lost on restart (the window is documented in docs/RELIABILITY.md).
pub struct MemoryDedup {
    /// Latest completed version per order. Covers duplicates (same version) and stale versions (lower).
    latest: Cache<Uuid, u64>,
    /// Orders being handled now; small (at most the worker's concurrency).
    in_progress: Mutex<HashSet<Uuid>>,
}

impl MemoryDedup {
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            latest: Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            in_progress: Mutex::new(HashSet::new()),
        }
    }

    fn claim_now(&self, key: DedupKey) -> Claim {
        // One lock around check-and-insert so two copies received together cannot both acquire.
        let mut in_progress = self.in_progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.latest.get(&key.pedido_id) {
            Some(latest) if latest == key.version => return Claim::Duplicate,
            Some(latest) if latest > key.version => return Claim::Stale { latest },
            _ => {}
        }
        if in_progress.insert(key.pedido_id) {
            Claim::Acquired
        } else {
            Claim::InProgress
        }
    }

    fn complete_now(&self, key: DedupKey) {
        let mut in_progress = self.in_progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let newer = self.latest.get(&key.pedido_id).is_none_or(|latest| latest < key.version);
        if newer {
            self.latest.insert(key.pedido_id, key.version);
        }
        in_progress.remove(&key.pedido_id);
    }

    fn release_now(&self, key: DedupKey) {
        self.in_progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key.pedido_id);
    }
}

impl DedupStore for MemoryDedup {
    fn claim(&self, key: DedupKey) -> BoxFuture<'_, Claim> {
        let claim = self.claim_now(key);
        Box::pin(async move { claim })
    }

    fn complete(&self, key: DedupKey) -> BoxFuture<'_, ()> {
        self.complete_now(key);
        Box::pin(async {})
    }

    fn release(&self, key: DedupKey) -> BoxFuture<'_, ()> {
        self.release_now(key);
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: u64) -> DedupKey {
        DedupKey::new(Uuid::from_u128(7), v)
    }

    #[test]
    fn lifecycle() {
        let store = MemoryDedup::new(100, Duration::from_secs(60));
        assert_eq!(store.claim_now(key(1)), Claim::Acquired);
        assert_eq!(store.claim_now(key(1)), Claim::InProgress, "a concurrent copy must not be handled");
        assert_eq!(store.claim_now(key(2)), Claim::InProgress, "nor another version of the same order");
        store.release_now(key(1));
        assert_eq!(store.claim_now(key(1)), Claim::Acquired, "released claims can be retried");
        store.complete_now(key(1));
        assert_eq!(store.claim_now(key(1)), Claim::Duplicate);
        assert_eq!(store.claim_now(key(3)), Claim::Acquired);
        store.complete_now(key(3));
        assert_eq!(store.claim_now(key(2)), Claim::Stale { latest: 3 }, "v2 after v3 is stale");
        store.complete_now(key(2));
        assert_eq!(store.claim_now(key(3)), Claim::Duplicate, "completing a lower version never lowers the latest");
    }
}
