//! The versioned order events published on the SNS topic.

use chrono::{DateTime, FixedOffset, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::dedup::DedupKey;
use crate::validation::{self, FieldErrors};

/// Highest version an order can reach. A bound keeps versions far from `u64` edges in every consumer (DynamoDB
/// numbers, JSON readers that go through f64, `version + 1` in messages) and makes a runaway producer visible: an event
/// above it is invalid, so the workers dead-letter it instead of storing it.
pub const MAX_VERSION: u64 = 1_000_000;

/// Which event a message is. Serialised as the `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A new order, always at version 1.
    PedidoCreado,
    /// A full new state of an existing order, version >= 2.
    PedidoActualizado,
}

impl EventType {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PedidoCreado => "PedidoCreado",
            Self::PedidoActualizado => "PedidoActualizado",
        }
    }

    /// The SNS `Subject` the seed used for this event.
    pub const fn subject(self) -> &'static str {
        match self {
            Self::PedidoCreado => "Nuevo Pedido",
            Self::PedidoActualizado => "Pedido actualizado",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub producto_id: String,
    pub cantidad: u32,
    /// Exact decimal; serialised as a JSON number with exactly its digits.
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub precio_unitario: Decimal,
}

/// The state of an order as both events carry it (the event's wire form is flat; see [`OrderEvent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    pub pedido_id: Uuid,
    pub cliente_id: Uuid,
    /// When the customer placed the order, with the offset they gave.
    pub fecha: DateTime<FixedOffset>,
    /// Exact decimal; serialised as a JSON number with exactly its digits.
    pub total: Decimal,
    pub items: Option<Vec<Item>>,
}

/// The wire event: `{"type","version","occurredAt","pedidoId","clienteId","fecha","total","items"?,"clienteApi"?}`.
///
/// Unknown fields are ignored when decoding so that producers can add fields without breaking older consumers.
/// (De)serialised through a flat mirror struct: `#[serde(flatten)]` would buffer numbers and lose their exact text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireEvent", from = "WireEvent")]
pub struct OrderEvent {
    pub event_type: EventType,
    /// The order's version: 1 at creation, >= 2 for each update.
    pub version: u64,
    pub occurred_at: DateTime<Utc>,
    pub order: OrderState,
    /// The API client (the name its API key is configured under) that sent this change; `None` when the API runs
    /// without keys or for legacy producers. Stored with the order as its owner: only the owner may change it.
    pub client: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEvent {
    #[serde(rename = "type")]
    event_type: EventType,
    version: u64,
    occurred_at: DateTime<Utc>,
    pedido_id: Uuid,
    cliente_id: Uuid,
    fecha: DateTime<FixedOffset>,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    total: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    items: Option<Vec<Item>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cliente_api: Option<String>,
}

impl From<OrderEvent> for WireEvent {
    fn from(e: OrderEvent) -> Self {
        let OrderState { pedido_id, cliente_id, fecha, total, items } = e.order;
        Self {
            event_type: e.event_type,
            version: e.version,
            occurred_at: e.occurred_at,
            pedido_id,
            cliente_id,
            fecha,
            total,
            items,
            cliente_api: e.client,
        }
    }
}

impl From<WireEvent> for OrderEvent {
    fn from(w: WireEvent) -> Self {
        Self {
            event_type: w.event_type,
            version: w.version,
            occurred_at: w.occurred_at,
            order: OrderState {
                pedido_id: w.pedido_id,
                cliente_id: w.cliente_id,
                fecha: w.fecha,
                total: w.total,
                items: w.items,
            },
            client: w.cliente_api,
        }
    }
}

impl OrderEvent {
    /// A `PedidoCreado` (version 1) for a new order.
    pub fn created(order: OrderState, occurred_at: DateTime<Utc>) -> Self {
        Self { event_type: EventType::PedidoCreado, version: 1, occurred_at, order, client: None }
    }

    /// A `PedidoActualizado` carrying the full new state at `version`.
    pub fn updated(order: OrderState, version: u64, occurred_at: DateTime<Utc>) -> Self {
        Self { event_type: EventType::PedidoActualizado, version, occurred_at, order, client: None }
    }

    /// The same event, sent by the API client `client` (its owner; see [`OrderEvent::client`]).
    #[must_use]
    pub fn by_client(mut self, client: Option<String>) -> Self {
        self.client = client;
        self
    }

    pub fn dedup_key(&self) -> DedupKey {
        DedupKey::new(self.order.pedido_id, self.version)
    }

    /// Checks the business rules (version matches the type, money rules, items add up).
    ///
    /// # Errors
    /// Every rule broken, keyed by the wire field name.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::default();
        match self.event_type {
            EventType::PedidoCreado if self.version != 1 => {
                errors.add("version", "must be 1 for PedidoCreado");
            }
            EventType::PedidoActualizado if self.version < 2 => {
                errors.add("version", "must be >= 2 for PedidoActualizado");
            }
            _ => {}
        }
        if self.version > MAX_VERSION {
            errors.add("version", format!("must be at most {MAX_VERSION}"));
        }
        validation::check_order(&self.order, &mut errors);
        errors.into_result()
    }

    /// The JSON text published on the topic.
    ///
    /// # Errors
    /// Only if serde_json fails, which for this type means a bug; callers map it to an internal error.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}
