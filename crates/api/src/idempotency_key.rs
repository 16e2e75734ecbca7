//! The `Idempotency-Key` request header (IETF httpapi draft `draft-ietf-httpapi-idempotency-key-header`): a client
//! that cannot choose its own `pedidoId` sends a unique key instead, and a retry with the same key is the same order.
//!
//! The key is not stored anywhere: the `pedidoId` is derived from it, so every API instance maps the same key to the
//! same order with no shared state, and the existing retry rules of `POST /api/pedidos` (same order at version 1:
//! 202 again; anything else: 409) apply unchanged.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;

pub const HEADER: &str = "idempotency-key";

/// Longest accepted key. The draft sets no limit; UUIDs and ULIDs are far shorter.
pub const MAX_LEN: usize = 255;

/// The request's idempotency key, if it has one. The draft makes it a Structured Field string (`"…"`); a bare token,
/// as many clients send, is accepted too.
///
/// # Errors
/// 400 when the header is repeated, empty, longer than [`MAX_LEN`] or not visible ASCII.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |why: &str| {
        ApiError::BadRequest(format!(
            "Idempotency-Key {why}; send one key of 1 to {MAX_LEN} visible ASCII characters, e.g. a quoted UUID"
        ))
    };
    if values.next().is_some() {
        return Err(invalid("is repeated"));
    }
    let text = value.to_str().map_err(|_| invalid("is not visible ASCII"))?.trim();
    let key = match text.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').ok_or_else(|| invalid("has an unterminated quote"))?,
        None => text,
    };
    if key.is_empty() {
        return Err(invalid("is empty"));
    }
    if key.len() > MAX_LEN {
        return Err(invalid("is too long"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') || key.contains(['"', '\\']) {
        return Err(invalid("has characters outside a plain string"));
    }
    Ok(Some(key.to_owned()))
}

/// The `pedidoId` that `key` stands for. Keys are scoped to the API client (its name, when keys are configured; so a
/// rotated key keeps its orders) and to the customer (`clienteId`), so two clients that happen to pick the same key
/// get different orders.
pub fn pedido_id(client: Option<&str>, cliente_id: Uuid, key: &str) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(b"pedidos-api idempotency-key v2\0");
    hash.update(client.unwrap_or_default().as_bytes());
    hash.update(b"\0");
    hash.update(cliente_id.as_bytes());
    hash.update(key.as_bytes());
    let digest: [u8; 32] = hash.finalize().into();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // Version 8 ("custom") marks the id as derived, not random.
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(HEADER, HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{value}: {e}")));
        }
        map
    }

    #[test]
    fn quoted_and_bare_keys_are_the_same_key() {
        assert_eq!(from_headers(&headers(&[])).ok(), Some(None));
        let quoted = from_headers(&headers(&["\"8e03978e-40d5-43e8-bc93-6894a57f9324\""])).ok().flatten();
        let bare = from_headers(&headers(&["8e03978e-40d5-43e8-bc93-6894a57f9324"])).ok().flatten();
        assert_eq!(quoted.as_deref(), Some("8e03978e-40d5-43e8-bc93-6894a57f9324"));
        assert_eq!(quoted, bare);
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        let long = "k".repeat(MAX_LEN + 1);
        for (values, why) in [
            (&["a", "b"][..], "repeated"),
            (&["\"\""], "empty"),
            (&["\"abc"], "unterminated"),
            (&[long.as_str()], "too long"),
            (&["\"a\\\"b\""], "plain string"),
        ] {
            let err = from_headers(&headers(values)).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(why), "{values:?}: {err}");
        }
    }

    #[test]
    fn the_same_key_from_the_same_client_is_the_same_order() {
        let cliente = Uuid::from_u128(7);
        let a = pedido_id(None, cliente, "k-1");
        assert_eq!(a, pedido_id(None, cliente, "k-1"));
        assert_eq!(a.get_version_num(), 8);
        assert_ne!(a, pedido_id(None, cliente, "k-2"));
        assert_ne!(a, pedido_id(None, Uuid::from_u128(8), "k-1"));
        assert_ne!(a, pedido_id(Some("a"), cliente, "k-1"));
        assert_ne!(pedido_id(Some("a"), cliente, "k-1"), pedido_id(Some("b"), cliente, "k-1"));
    }
}
