//! The event contract between `pedidos-api` and the workers.
//!
//! # Layout
//! - [`event`]: `PedidoCreado` / `PedidoActualizado` as one versioned JSON object, and the order state it carries.
//! - [`validation`]: the business rules on that state, reported per field.
//! - [`dedup`]: the `pedidoId#version` key consumers deduplicate on.
//! - [`digest`]: a fingerprint of an order's content, to tell a redelivery from other content under one version.
//! - [`inbound`]: decoding what arrives on a queue (SNS envelope, raw delivery, the seed's legacy payload).
//!
//! This crate has no AWS or HTTP dependency on purpose: it is the one thing both sides must agree on.

pub mod dedup;
pub mod digest;
pub mod event;
pub mod inbound;
pub mod validation;

pub use dedup::DedupKey;
pub use digest::ContentDigest;
pub use event::{EventType, Item, OrderEvent, OrderState, MAX_VERSION};
pub use inbound::{decode, DecodeError, Inbound, Payload, Source};
pub use validation::FieldErrors;
