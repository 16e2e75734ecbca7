//! Body extraction that answers in problem+json: content type (415), size (413), JSON syntax (400), object shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON object body. Fields are validated one by one afterwards so every problem can be reported at once.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: BODY_LIMIT }
            } else {
                ApiError::BadRequest(format!("could not read the request body: {}", rejection.body_text()))
            }
        })?;
        parse_object(&bytes).map(Self)
    }
}

/// Parses `bytes` as a JSON object.
///
/// # Errors
/// 400 for anything that is not a JSON object.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::BadRequest("request body must be a JSON object".into())),
        Err(e) => Err(ApiError::MalformedJson(e.to_string())),
    }
}

fn is_json(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(is_json(Some("application/problem+json")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(Some("application/jsonx")));
        assert!(!is_json(None));
    }
}
