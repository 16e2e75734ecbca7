//! Every way a request can fail, mapped to an RFC 9457 `application/problem+json` response.
//!
//! Client mistakes are 4xx with a specific message; infrastructure trouble is 503 with `Retry-After`, and a bug or a
//! corrupt stored item is a 500, both with no internal text (that is logged with the request id instead).

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::FieldErrors;
use serde::Serialize;
use store::StoreError;
use utoipa::ToSchema;

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 408: the body did not arrive whole within the server's body deadline.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// 429 with `Retry-After`: too many failed logins from this address.
    #[error("too many failed logins from this address; retry in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error("the request has invalid fields")]
    Validation(FieldErrors),
    /// 401: no credential, or one that is not valid (wrong, expired, tampered). `challenge` is the
    /// `WWW-Authenticate` value, naming the scheme the client should use.
    #[error("{detail}")]
    Unauthorized { challenge: &'static str, detail: String },
    /// 403: the credential is understood but does not allow this (an unknown API key, a missing CSRF token).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// 409: the request contradicts what the store already holds (a version already applied, a pedidoId taken).
    #[error("{0}")]
    Conflict(String),
    /// SNS unreachable, throttling or timing out after bounded retries. The cause is logged, never returned.
    #[error("the message bus is unavailable")]
    Unavailable(String),
    /// 503 for an order write: the bus or the store failed, or the request ran out of its time budget. The body names
    /// the `pedidoId` to retry with, generated or derived ones included, so the retry is the same order.
    #[error("the order could not be accepted right now")]
    OrderUnavailable { pedido_id: uuid::Uuid, cause: String },
    /// 503: the order store is unreachable, throttling or refusing. The cause is logged, never returned.
    #[error("the order store is unavailable")]
    StoreUnavailable(String),
    /// 503 from `/ready`: each dependency's state (`ok` or `unavailable`), which the body names.
    #[error("a dependency is unavailable")]
    NotReady(BTreeMap<&'static str, &'static str>),
    /// 500: a stored item this version cannot decode. Key and reason are logged, never returned.
    #[error("stored item {key} cannot be decoded: {reason}")]
    CorruptRecord { key: String, reason: String },
    /// A bug or unexpected AWS answer. The cause is logged, never returned.
    #[error("internal error")]
    Internal(String),
}

/// The RFC 9457 body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `about:blank`: the status code says it all.
    #[serde(rename = "type")]
    pub problem_type: &'static str,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Field name to the problems with it (validation errors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::BTreeMap<String, Vec<String>>>)]
    pub errors: Option<FieldErrors>,
    /// The order to retry with (503 to an order write only): send the same body with this `pedidoId`.
    #[serde(rename = "pedidoId", skip_serializing_if = "Option::is_none")]
    pub pedido_id: Option<uuid::Uuid>,
    /// Dependency name to `ok` or `unavailable` (`/ready` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    pub dependencies: Option<BTreeMap<&'static str, &'static str>>,
}

impl ApiError {
    /// A 422 about one field.
    pub fn invalid_field(field: &str, message: &str) -> Self {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        Self::Validation(errors)
    }

    /// For an order write: a 503 becomes one that names the `pedidoId` to retry with; anything else is unchanged.
    #[must_use]
    pub fn for_order(self, pedido_id: uuid::Uuid) -> Self {
        match self {
            Self::Unavailable(cause) | Self::StoreUnavailable(cause) => Self::OrderUnavailable { pedido_id, cause },
            other => other,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) | Self::OrderUnavailable { .. } | Self::StoreUnavailable(_) | Self::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::CorruptRecord { .. } | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Unavailable(_) => "The message bus cannot be reached right now. Retry shortly.".into(),
            Self::OrderUnavailable { pedido_id, .. } => format!(
                "The order could not be accepted right now. Retry the same body with pedidoId {pedido_id} (or the same \
                 Idempotency-Key): it is the same order, never a second one."
            ),
            Self::StoreUnavailable(_) => "The order store cannot be reached right now. Retry shortly.".into(),
            Self::NotReady(dependencies) => {
                let down: Vec<&str> =
                    dependencies.iter().filter(|(_, state)| **state != "ok").map(|(name, _)| *name).collect();
                format!("not ready: {} unavailable", down.join(", "))
            }
            Self::CorruptRecord { .. } | Self::Internal(_) => {
                "An unexpected error occurred; it has been logged with the request id.".into()
            }
            other => other.to_string(),
        }
    }
}

/// Store failures as HTTP answers. [`StoreError::BadCursor`] can only come from a listing, so it names `cursor`.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable { .. } => Self::StoreUnavailable(error.to_string()),
            // Not the client's fault and not healed by waiting: logged loudly, answered 503 so clients retry once an
            // operator fixed the deployment.
            StoreError::Misconfigured { .. } => {
                tracing::error!(error = %error, "the order store cannot work as deployed");
                Self::StoreUnavailable(error.to_string())
            }
            // The API built a request DynamoDB refuses: a bug.
            StoreError::Rejected { .. } => Self::Internal(error.to_string()),
            StoreError::Corrupt { key, reason } => Self::CorruptRecord { key, reason },
            StoreError::BadCursor => Self::invalid_field("cursor", "is not a cursor this API handed out"),
        }
    }
}

/// Bus failures other than a publish (subscriptions): 503 either way, a denial logged as the error it is.
impl From<crate::bus::BusError> for ApiError {
    fn from(error: crate::bus::BusError) -> Self {
        if let crate::bus::BusError::Denied(denied) = &error {
            tracing::error!(error = %denied, "the API role's policy lacks this action");
        }
        Self::Unavailable(error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Unavailable(cause) | Self::StoreUnavailable(cause) => tracing::warn!(%cause, "answering 503"),
            Self::OrderUnavailable { pedido_id, cause } => tracing::warn!(%pedido_id, %cause, "answering 503"),
            Self::NotReady(dependencies) => tracing::warn!(?dependencies, "answering 503 (not ready)"),
            Self::CorruptRecord { key, reason } => tracing::error!(%key, %reason, "answering 500: corrupt stored item"),
            Self::Internal(cause) => tracing::error!(%cause, "answering 500"),
            _ => tracing::debug!(error = %self, "client error"),
        }
        let problem = Problem {
            problem_type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.detail(),
            errors: None,
            pedido_id: None,
            dependencies: None,
        };
        let challenge = match &self {
            Self::Unauthorized { challenge, .. } => Some(*challenge),
            _ => None,
        };
        let retry_after = match &self {
            Self::TooManyRequests { retry_after } => Some(*retry_after),
            _ => None,
        };
        let problem = match self {
            Self::Validation(errors) => Problem { errors: Some(errors), ..problem },
            Self::NotReady(dependencies) => Problem { dependencies: Some(dependencies), ..problem },
            Self::OrderUnavailable { pedido_id, .. } => Problem { pedido_id: Some(pedido_id), ..problem },
            _ => problem,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}
