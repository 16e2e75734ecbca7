//! The two sides of the order store: the workers write effects, the API reads them.

use domain::OrderEvent;
use uuid::Uuid;

use std::collections::BTreeMap;

use crate::model::{Applied, ChangeMeta, OrderView, Page, RoleStats, Shipment};
use crate::{BoxFuture, StoreError};

/// Largest page of a customer's orders.
pub const MAX_PAGE: u32 = 100;

/// Effects, each one conditional write that is also its own deduplication.
pub trait OrderWrites: Send + Sync + 'static {
    /// Applies `event`'s state when the order is absent or holds a lower version; otherwise reports a duplicate (same
    /// version stored) or a stale event (higher version stored), decided by the store in the same call.
    fn apply<'a>(&'a self, event: &'a OrderEvent, meta: &'a ChangeMeta) -> BoxFuture<'a, Result<Applied, StoreError>>;
    /// Creates the order's shipment unless it exists ([`Applied::Duplicate`]).
    fn create_shipment<'a>(&'a self, shipment: &'a Shipment) -> BoxFuture<'a, Result<Applied, StoreError>>;
}

/// Reads for order tracking.
pub trait OrderReads: Send + Sync + 'static {
    /// The order and its shipment, `None` when no worker has applied it yet.
    fn get(&self, pedido_id: Uuid) -> BoxFuture<'_, Result<Option<OrderView>, StoreError>>;
    /// A customer's orders, newest first; `limit` is clamped to `1..=MAX_PAGE`. With `owner`, only the orders that
    /// API client created (a page may then hold fewer than `limit` even with more to come: follow its cursor).
    fn list_by_cliente<'a>(
        &'a self,
        cliente_id: Uuid,
        owner: Option<&'a str>,
        limit: u32,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, StoreError>>;
    /// Cheap call proving the table answers (readiness).
    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The orders changed most recently (today and yesterday), newest first, with their shipments: the console.
    fn recent(&self, _limit: u32) -> BoxFuture<'_, Result<Vec<OrderView>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// What each role's workers reported ([`StatsWrites`]), by role.
    fn role_stats<'a>(
        &'a self,
        _roles: &'a [&'a str],
    ) -> BoxFuture<'a, Result<BTreeMap<String, RoleStats>, StoreError>> {
        Box::pin(async { Ok(BTreeMap::new()) })
    }
}

/// Workers add up what they did in one item per role, shared by every instance (DynamoDB as the shared memory).
pub trait StatsWrites: Send + Sync + 'static {
    /// Adds `outcomes` (outcome name, count) to the role's totals and records the oldest message age just seen.
    fn add_stats<'a>(
        &'a self,
        role: &'a str,
        outcomes: &'a [(&'static str, u64)],
        oldest_age_seconds: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}
