//! Request extraction that answers in problem+json: content type (415), size (413), JSON syntax (400), object shape,
//! and the rejections of axum's own extractors, which would otherwise answer in text/plain.

use std::fmt;
use std::str::FromStr;

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

/// Parses `bytes` as a JSON object in one pass, rejecting any object that repeats a key.
///
/// # Errors
/// 400 for anything that is not a JSON object, or that repeats a key in any object.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<UniqueKeys>(bytes) {
        Ok(UniqueKeys(Value::Object(map))) => Ok(map),
        Ok(_) => Err(ApiError::BadRequest("request body must be a JSON object".into())),
        Err(e) if e.is_data() => Err(ApiError::BadRequest(format!("request body is ambiguous: {e}"))),
        Err(e) => Err(ApiError::MalformedJson(e.to_string())),
    }
}

/// The key serde_json's `arbitrary_precision` feature uses to hand a number's exact text to a visitor as a one-entry
/// map. `serde_json::Value` recognises it the same way; `numbers_keep_their_exact_text` fails if it ever changes.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// A JSON value built while parsing, failing on an object that repeats a key. serde_json keeps the last value
/// silently and other parsers the first, so `{"total": 1, "total": 1000}` would be a different order to different
/// readers.
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(Value::Bool(value)))
    }

    fn visit_i64<E>(self, value: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(value.into()))
    }

    fn visit_str<E>(self, value: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(Value::String(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(Value::String(value)))
    }

    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(UniqueKeys(value)) = seq.next_element()? {
            values.push(value);
        }
        Ok(UniqueKeys(Value::Array(values)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.is_empty() && key == NUMBER_TOKEN {
                let text: String = map.next_value()?;
                return serde_json::Number::from_str(&text)
                    .map(|n| UniqueKeys(Value::Number(n)))
                    .map_err(de::Error::custom);
            }
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key `{}`",
                    key.chars().take(64).collect::<String>()
                )));
            }
            let UniqueKeys(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(UniqueKeys(Value::Object(object)))
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
        if platform::http::BodyDeadlineElapsed::caused(&rejection) {
            return Self::RequestTimeout;
        }
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

    /// One pass builds the same value serde_json would, numbers keeping their exact text (money never goes through
    /// f64), and tells malformed JSON (400 MalformedJson) from a repeated key.
    #[test]
    fn numbers_keep_their_exact_text() {
        let text = br#"{"total": 59.98, "big": 123456789012345678901234567890.10, "n": -0, "e": 1e400, "s": "x", "a": [true, null, {"k": 0.1}]}"#;
        let parsed = parse_object(text).map(Value::Object).map_err(|e| e.to_string());
        let reference = serde_json::from_slice::<Value>(text).map_err(|e| e.to_string());
        assert_eq!(parsed, reference);
        let total = parsed.ok().and_then(|v| v.get("total").map(ToString::to_string));
        assert_eq!(total.as_deref(), Some("59.98"));
        assert!(matches!(parse_object(b"{\"total\": 1,"), Err(ApiError::MalformedJson(_))));
        assert!(matches!(parse_object(b"[1]"), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse_object(br#"{"a": 1, "a": 1}"#), Err(ApiError::BadRequest(_))));
    }
}
