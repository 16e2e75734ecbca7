//! Request extraction that answers in problem+json: content type (415), size (413), JSON syntax (400), object shape,
//! and the rejections of axum's own extractors, which would otherwise answer in text/plain.

use std::collections::HashSet;
use std::fmt;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
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
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_object(&bytes).map(Self)
    }
}

/// The body as bytes, at most [`BODY_LIMIT`] of them.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Refuse a declared oversize up front: reading first would wait for bytes a stalled client never sends.
        if declared_length(req.headers()).is_some_and(|length| length > BODY_LIMIT) {
            return Err(ApiError::PayloadTooLarge { limit: BODY_LIMIT });
        }
        Ok(Self(Bytes::from_request(req, state).await?))
    }
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Parses `bytes` as a JSON object.
///
/// # Errors
/// 400 for anything that is not a JSON object, or that repeats a key in any object.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => {
            serde_json::from_slice::<UniqueKeys>(bytes)
                .map_err(|e| ApiError::BadRequest(format!("request body is ambiguous: {e}")))?;
            Ok(map)
        }
        Ok(_) => Err(ApiError::BadRequest("request body must be a JSON object".into())),
        Err(e) => Err(ApiError::MalformedJson(e.to_string())),
    }
}

/// Walks a JSON document and fails on an object that repeats a key. serde_json keeps the last value silently and
/// other parsers the first, so `{"total": 1, "total": 1000}` would be a different order to different readers.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeys)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if let Some(key) = seen.replace(key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key `{}`",
                    key.chars().take(64).collect::<String>()
                )));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(self)
    }
}

/// A rejection from one of axum's extractors, in problem+json. Handlers take `Result<Query<T>, QueryRejection>` (and
/// so on) and apply `?`.
fn from_rejection(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit: BODY_LIMIT }
    } else if status.is_server_error() {
        ApiError::Internal(text)
    } else {
        ApiError::BadRequest(text)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        from_rejection(rejection.status(), format!("could not read the request body: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        from_rejection(rejection.status(), rejection.body_text())
    }
}

fn is_json(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else {
        return false;
    };
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

    #[test]
    fn repeated_keys_are_rejected_at_any_depth() {
        assert!(parse_object(br#"{"total": 1, "items": [{"a": 1, "b": 2.50}], "x": {"y": null}}"#).is_ok());
        for ambiguous in [&br#"{"total": 1, "total": 1000}"#[..], br#"{"items": [{"cantidad": 1, "cantidad": 9}]}"#] {
            let err = parse_object(ambiguous).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("duplicate key"), "{err}");
        }
    }
}
