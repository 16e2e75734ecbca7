//! Business logic behind one trait, so a role plugs in without touching the consumer.
//!
//! A handler's effect must be idempotent per `pedidoId#version` *by construction*: the two roles make their effect one
//! conditional write in the order store, which is its own deduplication; effects outside DynamoDB go through
//! [`crate::idempotent::Idempotent`].

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::{EventType, OrderEvent};
use store::model::ENVIO_PREPARANDO;
use store::{ChangeMeta, OrderWrites, Origin, Shipment, StoreError};

pub use store::Applied as Effect;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the consumer knows about the message, for logs and handlers that need it.
#[derive(Debug, Clone)]
pub struct MessageContext {
    pub message_id: String,
    pub receive_count: u32,
    pub request_id: Option<String>,
    /// The SNS message id of the envelope (what the API's publish returned); `None` for raw delivery.
    pub published_id: Option<String>,
    /// The W3C trace id this message travels in, when it carries one.
    pub trace_id: Option<String>,
    /// The message's visibility timeout: how long a claim on its effect may be held between heartbeats.
    pub lease: Duration,
}

impl MessageContext {
    /// Where `event` (this message's) came from, as the store records it.
    pub fn origin(&self, event: &OrderEvent) -> Origin {
        Origin::of(event, self.published_id.as_deref(), self.trace_id.as_deref())
    }
}

/// Why a handler did not finish, and so what happens to the message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A dependency (the store) is unreachable or throttling. Not the message's fault: the consumer keeps the message
    /// (extending its visibility), stops receiving more, and retries with backoff, so an outage never uses up
    /// `maxReceiveCount`.
    #[error("{dependency} unavailable: {source}")]
    Unavailable {
        dependency: &'static str,
        #[source]
        source: BoxError,
    },
    /// The dependency cannot work as deployed (a missing table, a denied permission): held and retried like
    /// [`Self::Unavailable`], since no message is at fault, but every attempt is logged as an error naming the
    /// problem, and `/ready` reports it at once.
    #[error("{dependency} misconfigured: {source}")]
    Misconfigured {
        dependency: &'static str,
        #[source]
        source: BoxError,
    },
    /// Failed in a way that may work later: the message goes back to the queue with an exponential visibility delay,
    /// and the redrive policy dead-letters it after `maxReceiveCount` receives.
    #[error("{reason}")]
    Transient {
        reason: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Can never succeed for this message: dead-lettered now, with `reason` as its `rejectReason`.
    #[error("{reason}: {detail}")]
    Permanent {
        reason: &'static str,
        detail: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl HandlerError {
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient { reason: reason.into(), source: None }
    }
}

impl From<StoreError> for HandlerError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Corrupt { ref key, .. } => {
                // Logged with its key; dead-lettered so an operator can fix the item and redrive.
                tracing::error!(key = %key, error = %error, "stored item cannot be decoded");
                Self::Permanent {
                    reason: "store_item_corrupt",
                    detail: error.to_string(),
                    source: Some(Box::new(error)),
                }
            }
            // DynamoDB refuses this write and would refuse it again (an item grown past 400 KB, ...): the message
            // goes to the DLQ with the AWS error code, to be redriven once the item is fixed.
            StoreError::Rejected { ref code, ref detail, .. } => {
                tracing::error!(code = %code, error = %error, "the store refuses this write");
                Self::Permanent {
                    reason: "store_rejected",
                    detail: format!("{code}: {detail}"),
                    source: Some(Box::new(error)),
                }
            }
            StoreError::Misconfigured { .. } => Self::Misconfigured { dependency: "store", source: Box::new(error) },
            other => Self::Unavailable { dependency: "store", source: Box::new(other) },
        }
    }
}

/// One role's business logic.
pub trait Handler: Send + Sync + 'static {
    /// Event types this role acts on; other known types are deleted as `ignored`.
    fn handles(&self, event_type: EventType) -> bool;
    /// Applies the event's effect and says whether it happened now, was already applied, or is stale.
    fn handle<'a>(
        &'a self,
        event: &'a OrderEvent,
        ctx: &'a MessageContext,
    ) -> BoxFuture<'a, Result<Effect, HandlerError>>;
}

/// Which queue this instance serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// "Actualizador de estado": applies each order's new state.
    Process,
    /// "Logística/tracking": creates the shipment for a new order.
    Logistics,
}

impl Role {
    pub fn infer_from_queue(queue: &str) -> Self {
        if platform::topology::is_logistics_queue(queue) {
            Self::Logistics
        } else {
            Self::Process
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Logistics => "logistics",
        }
    }

    pub fn handler(self, store: Arc<dyn OrderWrites>) -> Arc<dyn Handler> {
        match self {
            Self::Process => Arc::new(ProcessHandler { store }),
            Self::Logistics => Arc::new(LogisticsHandler { store }),
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "process" => Ok(Self::Process),
            "logistics" | "logistic" => Ok(Self::Logistics),
            _ => Err("expected `process` or `logistics`".into()),
        }
    }
}

/// Applies the order's new state: one conditional write, which is also the deduplication.
pub struct ProcessHandler {
    pub store: Arc<dyn OrderWrites>,
}

impl Handler for ProcessHandler {
    fn handles(&self, event_type: EventType) -> bool {
        matches!(event_type, EventType::PedidoCreado | EventType::PedidoActualizado)
    }

    fn handle<'a>(
        &'a self,
        event: &'a OrderEvent,
        ctx: &'a MessageContext,
    ) -> BoxFuture<'a, Result<Effect, HandlerError>> {
        Box::pin(async move {
            let meta = ChangeMeta { request_id: ctx.request_id.clone(), at: Utc::now(), origin: ctx.origin(event) };
            Ok(self.store.apply(event, &meta).await?)
        })
    }
}

/// Creates the shipment of a new order: one conditional put. Updates do not create shipments.
pub struct LogisticsHandler {
    pub store: Arc<dyn OrderWrites>,
}

impl Handler for LogisticsHandler {
    fn handles(&self, event_type: EventType) -> bool {
        event_type == EventType::PedidoCreado
    }

    fn handle<'a>(
        &'a self,
        event: &'a OrderEvent,
        ctx: &'a MessageContext,
    ) -> BoxFuture<'a, Result<Effect, HandlerError>> {
        Box::pin(async move {
            let pedido_id = event.order.pedido_id;
            let shipment = Shipment {
                pedido_id,
                tracking_code: tracking_code(pedido_id),
                estado: ENVIO_PREPARANDO.to_owned(),
                creado_en: Utc::now(),
                request_id: ctx.request_id.clone(),
                origin: ctx.origin(event),
            };
            Ok(self.store.create_shipment(&shipment).await?)
        })
    }
}

/// `ECX-` and 12 base-32 characters derived from the order id alone, so a retry yields the same code.
/// FNV-1a, not `DefaultHasher`: its output must never change between Rust versions.
pub fn tracking_code(pedido_id: uuid::Uuid) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in pedido_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let code: String = (0..12).map(|i| ALPHABET[((hash >> (i * 5)) & 31) as usize] as char).collect();
    format!("ECX-{code}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::memory::MemoryOrders;

    #[test]
    fn tracking_codes_are_deterministic_and_distinct() {
        let a = uuid::Uuid::from_u128(1);
        let b = uuid::Uuid::from_u128(2);
        assert_eq!(tracking_code(a), tracking_code(a));
        assert_ne!(tracking_code(a), tracking_code(b));
        assert_eq!(tracking_code(a).len(), 16);
        // Pinned: a change here would give existing shipments new codes.
        assert_eq!(tracking_code(uuid::Uuid::nil()), "ECX-53SYFG5QZ08G");
    }

    #[test]
    fn roles() {
        let store: Arc<dyn OrderWrites> = Arc::new(MemoryOrders::new());
        assert_eq!(Role::infer_from_queue("http://h/1/ecomexpress-sqs-logistics"), Role::Logistics);
        assert_eq!(Role::infer_from_queue("ecomexpress-sqs-orders-process"), Role::Process);
        assert!(!Role::Logistics.handler(Arc::clone(&store)).handles(EventType::PedidoActualizado));
        assert!(Role::Process.handler(store).handles(EventType::PedidoActualizado));
    }

    #[test]
    fn store_errors_map_to_retry_in_place_or_dead_letter() {
        let outage =
            StoreError::Unavailable { operation: "apply", throttled: true, detail: "x".into(), source: "x".into() };
        assert!(matches!(HandlerError::from(outage), HandlerError::Unavailable { dependency: "store", .. }));
        let corrupt = StoreError::Corrupt { key: "PEDIDO#1".into(), reason: "version".into() };
        assert!(matches!(HandlerError::from(corrupt), HandlerError::Permanent { reason: "store_item_corrupt", .. }));
        let too_large = StoreError::Rejected {
            operation: "apply",
            code: "ValidationException".into(),
            detail: "Item size has exceeded the maximum allowed size".into(),
            source: None,
        };
        match HandlerError::from(too_large) {
            HandlerError::Permanent { reason, detail, .. } => {
                assert_eq!(reason, "store_rejected");
                assert!(detail.starts_with("ValidationException: "), "the AWS code leads the detail: {detail}");
            }
            other => panic!("a refused write is permanent, not {other:?}"),
        }
        let missing = StoreError::Misconfigured {
            operation: "apply",
            code: "ResourceNotFoundException".into(),
            detail: "table".into(),
            source: None,
        };
        assert!(matches!(HandlerError::from(missing), HandlerError::Misconfigured { dependency: "store", .. }));
    }
}
