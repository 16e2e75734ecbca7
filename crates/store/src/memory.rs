//! The store's semantics in memory: the twin the worker's and the API's unit tests run against.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use domain::OrderEvent;
use uuid::Uuid;

use crate::model::{Applied, ChangeMeta, OrderRecord, OrderView, Page, RoleStats, Shipment};
use crate::orders::{OrderReads, OrderWrites, StatsWrites, MAX_PAGE};
use crate::{cursor, BoxFuture, StoreError};

#[derive(Default)]
struct Tables {
    orders: HashMap<Uuid, OrderRecord>,
    shipments: HashMap<Uuid, Shipment>,
    stats: BTreeMap<String, RoleStats>,
    /// Orders whose writes DynamoDB would refuse (e.g. an item grown past 400 KB by hand).
    rejecting: HashSet<Uuid>,
}

/// In-memory [`OrderWrites`] + [`OrderReads`]. [`MemoryOrders::set_unavailable`] simulates an outage,
/// [`MemoryOrders::set_misconfigured`] a missing table, [`MemoryOrders::reject_writes_of`] an item DynamoDB refuses.
#[derive(Default)]
pub struct MemoryOrders {
    tables: Mutex<Tables>,
    unavailable: AtomicBool,
    misconfigured: AtomicBool,
}

impl MemoryOrders {
    pub fn new() -> Self {
        Self::default()
    }

    /// While `true`, every call fails with [`StoreError::Unavailable`] (throttled).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// While `true`, every call fails with [`StoreError::Misconfigured`] (`ResourceNotFoundException`).
    pub fn set_misconfigured(&self, misconfigured: bool) {
        self.misconfigured.store(misconfigured, Ordering::SeqCst);
    }

    /// Every later write to `pedido_id` (order or shipment) fails with [`StoreError::Rejected`]
    /// (`ValidationException`), as DynamoDB answers an update that would grow an item past 400 KB.
    pub fn reject_writes_of(&self, pedido_id: Uuid) {
        self.lock().rejecting.insert(pedido_id);
    }

    /// Stores `record` as is (tests: seed a state, or an order written by another version).
    pub fn put_order(&self, record: OrderRecord) {
        self.lock().orders.insert(record.pedido_id, record);
    }

    pub fn order(&self, pedido_id: Uuid) -> Option<OrderRecord> {
        self.lock().orders.get(&pedido_id).cloned()
    }

    pub fn shipment(&self, pedido_id: Uuid) -> Option<Shipment> {
        self.lock().shipments.get(&pedido_id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn available(&self, operation: &'static str) -> Result<(), StoreError> {
        if self.misconfigured.load(Ordering::SeqCst) {
            return Err(StoreError::Misconfigured {
                operation,
                code: "ResourceNotFoundException".into(),
                detail: "simulated: the table does not exist".into(),
                source: None,
            });
        }
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                operation,
                throttled: true,
                detail: "simulated outage".into(),
                source: "simulated outage".into(),
            });
        }
        Ok(())
    }

    fn writable(&self, operation: &'static str, tables: &Tables, pedido_id: Uuid) -> Result<(), StoreError> {
        if tables.rejecting.contains(&pedido_id) {
            return Err(StoreError::Rejected {
                operation,
                code: "ValidationException".into(),
                detail: "simulated: Item size to update has exceeded the maximum allowed size".into(),
                source: None,
            });
        }
        Ok(())
    }

    fn apply_now(&self, event: &OrderEvent, meta: &ChangeMeta) -> Result<Applied, StoreError> {
        self.available("apply")?;
        let mut tables = self.lock();
        let id = event.order.pedido_id;
        self.writable("apply", &tables, id)?;
        let next = match tables.orders.remove(&id) {
            None => OrderRecord::first(event, meta),
            Some(old) => match old.verdict_for(event) {
                None => old.then(event, meta),
                Some(verdict) => {
                    tables.orders.insert(id, old);
                    return Ok(verdict);
                }
            },
        };
        tables.orders.insert(id, next);
        Ok(Applied::Applied)
    }

    fn list_now(
        &self,
        cliente_id: Uuid,
        owner: Option<&str>,
        limit: u32,
        after: Option<&str>,
    ) -> Result<Page, StoreError> {
        self.available("list")?;
        let after = after.map(cursor::decode).transpose()?;
        let tables = self.lock();
        // Newest first, like the index queried backwards.
        let mine: BTreeMap<String, &OrderRecord> = tables
            .orders
            .values()
            .filter(|o| o.cliente_id == cliente_id && owner.is_none_or(|owner| o.client.as_deref() == Some(owner)))
            .map(|o| (o.fecha_orden(), o))
            .collect();
        let limit = limit.clamp(1, MAX_PAGE) as usize;
        let mut orders = Vec::new();
        let mut last = None;
        for (key, order) in mine.iter().rev() {
            if after.as_ref().is_some_and(|after| key >= after) {
                continue;
            }
            if orders.len() == limit {
                return Ok(Page { orders, next_cursor: last.map(|k: &String| cursor::encode(k)) });
            }
            orders.push((*order).clone());
            last = Some(key);
        }
        Ok(Page { orders, next_cursor: None })
    }
}

impl OrderWrites for MemoryOrders {
    fn apply<'a>(&'a self, event: &'a OrderEvent, meta: &'a ChangeMeta) -> BoxFuture<'a, Result<Applied, StoreError>> {
        let result = self.apply_now(event, meta);
        Box::pin(async move { result })
    }

    fn create_shipment<'a>(&'a self, shipment: &'a Shipment) -> BoxFuture<'a, Result<Applied, StoreError>> {
        let result = self.available("create_shipment").and_then(|()| {
            let mut tables = self.lock();
            self.writable("create_shipment", &tables, shipment.pedido_id)?;
            Ok(match tables.shipments.entry(shipment.pedido_id) {
                std::collections::hash_map::Entry::Occupied(_) => Applied::Duplicate,
                std::collections::hash_map::Entry::Vacant(slot) => {
                    let mut shipment = shipment.clone();
                    shipment.request_id = shipment.request_id.as_deref().map(crate::model::bounded_request_id);
                    slot.insert(shipment);
                    Applied::Applied
                }
            })
        });
        Box::pin(async move { result })
    }
}

impl OrderReads for MemoryOrders {
    fn get(&self, pedido_id: Uuid) -> BoxFuture<'_, Result<Option<OrderView>, StoreError>> {
        let result = self.available("get").map(|()| {
            let tables = self.lock();
            tables
                .orders
                .get(&pedido_id)
                .map(|order| OrderView { order: order.clone(), envio: tables.shipments.get(&pedido_id).cloned() })
        });
        Box::pin(async move { result })
    }

    fn list_by_cliente<'a>(
        &'a self,
        cliente_id: Uuid,
        owner: Option<&'a str>,
        limit: u32,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, StoreError>> {
        let result = self.list_now(cliente_id, owner, limit, cursor);
        Box::pin(async move { result })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let result = self.available("check");
        Box::pin(async move { result })
    }

    fn recent(&self, limit: u32) -> BoxFuture<'_, Result<Vec<OrderView>, StoreError>> {
        let result = self.available("recent").map(|()| {
            let tables = self.lock();
            let mut orders: Vec<&OrderRecord> = tables.orders.values().collect();
            orders.sort_by_key(|o| std::cmp::Reverse((o.actualizado_en, o.pedido_id)));
            orders
                .into_iter()
                .take(limit.clamp(1, MAX_PAGE) as usize)
                .map(|o| OrderView { order: o.clone(), envio: tables.shipments.get(&o.pedido_id).cloned() })
                .collect()
        });
        Box::pin(async move { result })
    }

    fn role_stats<'a>(
        &'a self,
        roles: &'a [&'a str],
    ) -> BoxFuture<'a, Result<BTreeMap<String, RoleStats>, StoreError>> {
        let result = self.available("stats").map(|()| {
            let tables = self.lock();
            roles.iter().filter_map(|r| tables.stats.get(*r).map(|s| ((*r).to_owned(), s.clone()))).collect()
        });
        Box::pin(async move { result })
    }
}

impl StatsWrites for MemoryOrders {
    fn add_stats<'a>(
        &'a self,
        role: &'a str,
        outcomes: &'a [(&'static str, u64)],
        oldest_age_seconds: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self.available("stats").map(|()| {
            let mut tables = self.lock();
            let stats = tables.stats.entry(role.to_owned()).or_default();
            for (outcome, count) in outcomes {
                *stats.outcomes.entry((*outcome).to_owned()).or_default() += count;
            }
            stats.oldest_age_seconds = oldest_age_seconds;
            stats.updated_at = Some(chrono::Utc::now());
        });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ESTADO_ACTUALIZADO;
    use chrono::{TimeZone, Utc};
    use domain::{OrderEvent, OrderState};
    use rust_decimal::Decimal;

    fn event(id: u128, cliente: u128, version: u64, day: u32) -> OrderEvent {
        let order = OrderState {
            pedido_id: Uuid::from_u128(id),
            cliente_id: Uuid::from_u128(cliente),
            fecha: Utc.with_ymd_and_hms(2026, 11, day, 10, 0, 0).single().unwrap_or_default().fixed_offset(),
            total: Decimal::new(5998 + i64::try_from(version).unwrap_or(0), 2),
            items: None,
        };
        if version == 1 {
            OrderEvent::created(order, Utc::now())
        } else {
            OrderEvent::updated(order, version, Utc::now())
        }
    }

    fn meta(request: &str) -> ChangeMeta {
        ChangeMeta { request_id: Some(request.into()), at: Utc::now(), ..Default::default() }
    }

    #[tokio::test]
    async fn versions_apply_once_and_never_go_backwards() {
        let store = MemoryOrders::new();
        assert_eq!(store.apply(&event(1, 9, 1, 1), &meta("a")).await.ok(), Some(Applied::Applied));
        assert_eq!(store.apply(&event(1, 9, 1, 1), &meta("a")).await.ok(), Some(Applied::Duplicate));
        assert_eq!(store.apply(&event(1, 9, 3, 1), &meta("c")).await.ok(), Some(Applied::Applied));
        assert_eq!(store.apply(&event(1, 9, 2, 1), &meta("b")).await.ok(), Some(Applied::Stale { latest: 3 }));
        let order = store.order(Uuid::from_u128(1));
        assert_eq!(order.as_ref().map(|o| (o.version, o.estado.as_str())), Some((3, ESTADO_ACTUALIZADO)));
        let history: Vec<u64> = order.map(|o| o.versiones.iter().map(|v| v.version).collect()).unwrap_or_default();
        assert_eq!(history, [1, 3]);
    }

    #[tokio::test]
    async fn customer_pages_are_newest_first_and_complete() {
        let store = MemoryOrders::new();
        for id in 1..=5u32 {
            let _ = store.apply(&event(u128::from(id), 9, 1, id), &meta("x")).await;
        }
        let _ = store.apply(&event(99, 8, 1, 3), &meta("other customer")).await;
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store.list_by_cliente(Uuid::from_u128(9), None, 2, cursor.as_deref()).await;
            let Ok(page) = page else { panic!("list failed") };
            seen.extend(page.orders.iter().map(|o| o.pedido_id.as_u128()));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, [5, 4, 3, 2, 1]);
    }

    #[tokio::test]
    async fn a_newer_version_cannot_move_the_customer_or_the_owner() {
        let store = MemoryOrders::new();
        let by = |client: &str, cliente: u128, version: u64| {
            event(1, cliente, version, 1).by_client(Some(client.to_owned()))
        };
        assert_eq!(store.apply(&by("shop-a", 9, 1), &meta("a")).await.ok(), Some(Applied::Applied));
        let reason = |verdict: Option<Applied>| match verdict {
            Some(Applied::Refused { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(reason(store.apply(&by("shop-b", 9, 2), &meta("b")).await.ok()), "owner_mismatch");
        assert_eq!(reason(store.apply(&by("shop-a", 8, 2), &meta("c")).await.ok()), "cliente_changed");
        assert_eq!(store.order(Uuid::from_u128(1)).map(|o| o.version), Some(1), "nothing written");
        let _ = store.apply(&event(2, 9, 1, 2).by_client(Some("shop-b".into())), &meta("d")).await;
        let page = store.list_by_cliente(Uuid::from_u128(9), Some("shop-a"), 10, None).await;
        let Ok(page) = page else { panic!("list failed") };
        assert_eq!(page.orders.iter().map(|o| o.pedido_id.as_u128()).collect::<Vec<_>>(), [1]);
    }

    #[tokio::test]
    async fn outage_is_reported_as_unavailable() {
        let store = MemoryOrders::new();
        store.set_unavailable(true);
        let result = store.apply(&event(1, 9, 1, 1), &meta("a")).await;
        assert!(matches!(result, Err(StoreError::Unavailable { throttled: true, .. })));
    }
}
