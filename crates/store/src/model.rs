//! What the store holds, independent of how DynamoDB spells it.

use chrono::{DateTime, FixedOffset, Utc};
use domain::{Item, OrderEvent};
use rust_decimal::Decimal;
use uuid::Uuid;

/// `estado` of an order at version 1.
pub const ESTADO_CREADO: &str = "CREADO";
/// `estado` of an order at version 2 or more.
pub const ESTADO_ACTUALIZADO: &str = "ACTUALIZADO";
/// `estado` of a new shipment.
pub const ENVIO_PREPARANDO: &str = "PREPARANDO";

/// The `estado` an order has once `version` is applied.
pub fn estado_for(version: u64) -> &'static str {
    if version <= 1 {
        ESTADO_CREADO
    } else {
        ESTADO_ACTUALIZADO
    }
}

/// What a conditional write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The effect happened now.
    Applied,
    /// This exact effect was applied before (same version, or the shipment exists).
    Duplicate,
    /// A higher version of the order is already stored.
    Stale { latest: u64 },
}

/// Who and when, recorded with each applied change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeMeta {
    pub request_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// One applied version in an order's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedVersion {
    pub version: u64,
    pub aplicada_en: DateTime<Utc>,
    pub request_id: Option<String>,
}

/// An order's current state and its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub pedido_id: Uuid,
    pub version: u64,
    pub estado: String,
    pub cliente_id: Uuid,
    pub fecha: DateTime<FixedOffset>,
    pub total: Decimal,
    pub items: Option<Vec<Item>>,
    pub creado_en: DateTime<Utc>,
    pub actualizado_en: DateTime<Utc>,
    pub request_id: Option<String>,
    pub versiones: Vec<AppliedVersion>,
}

impl OrderRecord {
    /// The state after applying `event` to nothing (version 1, or the first version this store sees).
    pub fn first(event: &OrderEvent, meta: &ChangeMeta) -> Self {
        let order = &event.order;
        Self {
            pedido_id: order.pedido_id,
            version: event.version,
            estado: estado_for(event.version).to_owned(),
            cliente_id: order.cliente_id,
            fecha: order.fecha,
            total: order.total,
            items: order.items.clone(),
            creado_en: meta.at,
            actualizado_en: meta.at,
            request_id: meta.request_id.clone(),
            versiones: vec![AppliedVersion {
                version: event.version,
                aplicada_en: meta.at,
                request_id: meta.request_id.clone(),
            }],
        }
    }

    /// The state after applying the newer `event` on top of `self` (the caller checked the version).
    pub fn then(mut self, event: &OrderEvent, meta: &ChangeMeta) -> Self {
        let mut next = Self::first(event, meta);
        next.creado_en = self.creado_en;
        self.versiones.append(&mut next.versiones);
        next.versiones = self.versiones;
        next
    }

    /// Sort key of the customer index: the order date in UTC, then the id so equal dates stay distinct.
    pub fn fecha_orden(&self) -> String {
        fecha_orden(self.fecha, self.pedido_id)
    }
}

/// `<fecha in UTC, RFC 3339 with milliseconds>#<pedidoId>`: sorts by date, unique per order.
pub fn fecha_orden(fecha: DateTime<FixedOffset>, pedido_id: Uuid) -> String {
    format!("{}#{pedido_id}", fecha.with_timezone(&Utc).to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Partition of the recent-changes index: the UTC day of a change, so "the latest orders" is one query on today's
/// partition, and no partition grows without bound.
pub fn dia(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// Sort key of the recent-changes index: when the change was applied, then the id.
pub fn actualizado_orden(at: DateTime<Utc>, pedido_id: Uuid) -> String {
    format!("{}#{pedido_id}", at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// What the workers of one role did, added up across every instance (the console's throughput and queue age).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleStats {
    /// Messages per outcome since the role's stats item was created (`processed`, `duplicate`, ...).
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// Age in seconds of the oldest message an instance received in its last reporting window.
    pub oldest_age_seconds: u64,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The shipment the logistics role creates for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipment {
    pub pedido_id: Uuid,
    pub tracking_code: String,
    pub estado: String,
    pub creado_en: DateTime<Utc>,
    pub request_id: Option<String>,
}

/// An order with its shipment, as `GET /api/pedidos/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    pub order: OrderRecord,
    pub envio: Option<Shipment>,
}

/// One page of a customer's orders, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub orders: Vec<OrderRecord>,
    /// Present when more orders follow.
    pub next_cursor: Option<String>,
}
