//! HTTP handlers, one module per resource.

pub mod ops;
pub mod orders;
pub mod subscriptions;

use axum::http::HeaderMap;

/// The request id `SetRequestIdLayer` put on the request (accepted from the client or generated).
pub fn request_id(headers: &HeaderMap) -> String {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}
