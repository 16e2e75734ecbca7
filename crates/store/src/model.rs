//! What the store holds, independent of how DynamoDB spells it.

use chrono::{DateTime, FixedOffset, Utc};
use domain::{ContentDigest, Item, OrderEvent};
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

/// Most entries `versiones` ever holds. An order may take every version up to `domain::MAX_VERSION`; its item must
/// stay far below DynamoDB's 400 KB whatever happens, so the history is bounded (`docs/data-model.md`).
pub const HISTORY_MAX: usize = 40;
/// Entries left after the history was compacted (the most recent ones): compaction then happens once every
/// `HISTORY_MAX - HISTORY_KEPT` versions, not on every write.
pub const HISTORY_KEPT: usize = 20;
/// Longest request id stored (characters). The API keeps client ids to this length; other producers' ids are cut.
pub const REQUEST_ID_MAX: usize = 128;

/// `request_id` cut to [`REQUEST_ID_MAX`] characters: every stored copy of it has a bound.
pub fn bounded_request_id(request_id: &str) -> String {
    request_id.chars().take(REQUEST_ID_MAX).collect()
}

/// What a conditional write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The effect happened now.
    Applied,
    /// This exact effect was applied before (same version and content, or the shipment exists).
    Duplicate,
    /// A higher version of the order is already stored.
    Stale { latest: u64 },
    /// This version was applied with other content: two different writes claimed one version. Nothing is written.
    Conflict { version: u64, stored: ContentDigest, received: ContentDigest },
    /// A newer version that may never be applied to this order: it changes `clienteId` (`cliente_changed`) or
    /// comes from another API client than the order's owner (`owner_mismatch`). Nothing is written.
    Refused { reason: &'static str, detail: String },
}

/// Who and when, recorded with each applied change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeMeta {
    pub request_id: Option<String>,
    pub at: DateTime<Utc>,
    /// Where the change came from, for following the order across the pipeline.
    pub origin: Origin,
}

/// Where an applied change came from: what the console's order timeline shows next to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// When the API accepted the change (the event's `occurredAt`).
    pub accepted_at: Option<DateTime<Utc>>,
    /// The SNS message id the API was given when it published the change.
    pub message_id: Option<String>,
    /// The W3C trace id (32 lowercase hex digits) of the trace the change travelled in.
    pub trace_id: Option<String>,
}

/// Longest SNS message id or trace id stored (SNS ids are 36 characters, trace ids 32): anything longer is not one.
pub const ORIGIN_ID_MAX: usize = 64;

impl Origin {
    /// The origin of `event` delivered as SNS message `message_id` in trace `trace_id`; ids longer than
    /// [`ORIGIN_ID_MAX`] are dropped (a bound on the stored item, not a truncation of something meaningful).
    pub fn of(event: &OrderEvent, message_id: Option<&str>, trace_id: Option<&str>) -> Self {
        let bounded = |id: Option<&str>| id.filter(|id| !id.is_empty() && id.len() <= ORIGIN_ID_MAX).map(str::to_owned);
        Self { accepted_at: Some(event.occurred_at), message_id: bounded(message_id), trace_id: bounded(trace_id) }
    }
}

/// One applied version in an order's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedVersion {
    pub version: u64,
    pub aplicada_en: DateTime<Utc>,
    pub request_id: Option<String>,
    /// The content applied at this version; `None` on entries written before digests were stored.
    pub digest: Option<ContentDigest>,
    /// Where it came from; empty on entries written before origins were stored.
    pub origin: Origin,
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
    /// The most recent applied versions (at most [`HISTORY_MAX`]), in the order applied.
    pub versiones: Vec<AppliedVersion>,
    /// How many versions were applied in all, including those compacted out of `versiones`.
    pub versiones_aplicadas: u64,
    /// The content of the current version; `None` on items written before digests were stored.
    pub digest: Option<ContentDigest>,
    /// The API client that created the order (its owner); `None` for orders created without API keys.
    pub client: Option<String>,
}

impl OrderRecord {
    /// The state after applying `event` to nothing (version 1, or the first version this store sees).
    pub fn first(event: &OrderEvent, meta: &ChangeMeta) -> Self {
        let order = &event.order;
        let digest = ContentDigest::of(order);
        let request_id = meta.request_id.as_deref().map(bounded_request_id);
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
            request_id: request_id.clone(),
            versiones: vec![AppliedVersion {
                version: event.version,
                aplicada_en: meta.at,
                request_id,
                digest: Some(digest),
                origin: meta.origin.clone(),
            }],
            versiones_aplicadas: 1,
            digest: Some(digest),
            client: event.client.clone(),
        }
    }

    /// The state after applying the newer `event` on top of `self` (the caller checked the version), with the history
    /// compacted to its [`HISTORY_KEPT`] most recent entries first when it is full, as the DynamoDB store does.
    pub fn then(mut self, event: &OrderEvent, meta: &ChangeMeta) -> Self {
        let mut next = Self::first(event, meta);
        next.creado_en = self.creado_en;
        next.versiones_aplicadas = self.versiones_aplicadas.max(self.versiones.len() as u64) + 1;
        if self.versiones.len() >= HISTORY_MAX {
            self.versiones.drain(..self.versiones.len() - HISTORY_KEPT);
        }
        self.versiones.append(&mut next.versiones);
        next.versiones = self.versiones;
        next
    }

    /// What storing `event` on top of this record means: for a version that is not newer, a duplicate, a stale
    /// version or a conflict (the same version applied with other content); for a newer one, a refusal when it
    /// changes the customer or comes from another client. `None` when `event` may be applied.
    pub fn verdict_for(&self, event: &OrderEvent) -> Option<Applied> {
        let received = ContentDigest::of(&event.order);
        let stored = if event.version == self.version {
            self.digest
        } else {
            self.versiones.iter().find(|v| v.version == event.version).and_then(|v| v.digest)
        };
        let conflict = stored.filter(|stored| *stored != received);
        match (event.version.cmp(&self.version), conflict) {
            (std::cmp::Ordering::Greater, _) => self.refusal_of(event),
            (_, Some(stored)) => Some(Applied::Conflict { version: event.version, stored, received }),
            (std::cmp::Ordering::Equal, None) => Some(Applied::Duplicate),
            (std::cmp::Ordering::Less, None) => Some(Applied::Stale { latest: self.version }),
        }
    }

    /// Why the newer `event` may not be applied to this order at all, if it may not.
    fn refusal_of(&self, event: &OrderEvent) -> Option<Applied> {
        if event.order.cliente_id != self.cliente_id {
            return Some(Applied::Refused {
                reason: "cliente_changed",
                detail: format!(
                    "version {} moves order {} from clienteId {} to {}; an order's customer never changes",
                    event.version, self.pedido_id, self.cliente_id, event.order.cliente_id
                ),
            });
        }
        (event.client != self.client).then(|| Applied::Refused {
            reason: "owner_mismatch",
            detail: format!(
                "version {} of order {} comes from API client {}, but the order belongs to {}",
                event.version,
                self.pedido_id,
                event.client.as_deref().unwrap_or("(none)"),
                self.client.as_deref().unwrap_or("(none)")
            ),
        })
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shipment {
    pub pedido_id: Uuid,
    pub tracking_code: String,
    pub estado: String,
    pub creado_en: DateTime<Utc>,
    pub request_id: Option<String>,
    /// Where the order that made it came from; empty on shipments written before origins were stored.
    pub origin: Origin,
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
