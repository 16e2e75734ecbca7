//! HTTP handlers, one module per resource.

pub mod ops;
pub mod orders;
pub mod subscriptions;
pub mod tracking;

use axum::http::HeaderMap;
use uuid::Uuid;

use crate::error::ApiError;

/// The request id `SetRequestIdLayer` put on the request (accepted from the client or generated).
pub fn request_id(headers: &HeaderMap) -> String {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// A path segment that must be a UUID; otherwise a 422 naming `field` (the parameter's name in the OpenAPI document).
///
/// # Errors
/// [`ApiError::Validation`] on `field`.
pub fn path_uuid(segment: &str, field: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(segment).map_err(|_| ApiError::invalid_field(field, "path segment must be a UUID"))
}
