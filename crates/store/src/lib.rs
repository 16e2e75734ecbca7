//! The order store: what the workers applied, read back by the API.
//!
//! # Layout
//! - [`model`]: order state, applied versions, shipments, pages: what the store holds, independent of DynamoDB.
//! - [`error`]: [`StoreError`], typed: unavailable (retry), rejected (never retry), misconfigured (tell an
//!   operator), corrupt item (log the key), bad cursor.
//! - [`orders`]: the [`OrderWrites`] (workers) and [`OrderReads`] (API) traits.
//! - [`dynamo`]: both traits on DynamoDB (one conditional write per effect); [`schema`] creates the tables.
//! - [`memory`]: the same semantics in memory, for unit tests of the worker and the API.
//! - [`idempotency`]: claims for generic handlers whose effect lives outside DynamoDB (lease, fencing, TTL).
//! - [`transact`]: the writes of one received batch as one `TransactWriteItems` (fewer store calls per message).
//! - [`cursor`]: the opaque pagination cursor.
//! - [`denied`]: [`AccessDenied`], AWS refusing the caller's permissions, said the same way by every crate.
//!
//! The item layout and every access pattern are described in `docs/data-model.md`.

pub mod cursor;
pub mod denied;
pub mod dynamo;
pub mod error;
pub mod idempotency;
pub mod memory;
pub mod model;
pub mod orders;
pub mod schema;
pub mod transact;

use std::future::Future;
use std::pin::Pin;

pub use denied::AccessDenied;
pub use error::StoreError;
pub use model::{Applied, AppliedVersion, ChangeMeta, OrderRecord, OrderView, Origin, Page, RoleStats, Shipment};
pub use orders::{OrderReads, OrderWrites, StatsWrites};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
