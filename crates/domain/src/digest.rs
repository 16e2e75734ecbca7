//! A fingerprint of an order's content, so "the same version with other content" can be told from a redelivery.
//!
//! Two events for one `pedidoId#version` must carry the same order: a redelivery does, a second client write that
//! reused the version does not. The store keeps the digest of each applied version; comparing digests needs no copy of
//! the content.

use std::fmt;
use std::str::FromStr;

use chrono::{SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use crate::event::OrderState;

/// The first 128 bits of SHA-256 over a canonical text of the order (32 hex characters when written): enough to make
/// an accidental collision between two versions of one order impossible in practice, short enough for every entry of
/// the stored history.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentDigest([u8; 16]);

impl ContentDigest {
    /// The digest of `order`'s content. Equal orders give equal digests whatever their JSON spelling: `fecha` as an
    /// instant (the offset written does not matter), amounts without trailing zeros (`59.9` and `59.90` are one
    /// amount), items in their order.
    pub fn of(order: &OrderState) -> Self {
        let mut canonical = format!(
            "v1\n{}\n{}\n{}\n{}\n",
            order.pedido_id,
            order.cliente_id,
            order.fecha.with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::AutoSi, true),
            order.total.normalize(),
        );
        match &order.items {
            None => canonical.push_str("-\n"),
            Some(items) => {
                for item in items {
                    // Tabs and newlines cannot hide in a productoId: validation allows neither.
                    canonical.push_str(&format!(
                        "{}\t{}\t{}\n",
                        item.producto_id,
                        item.cantidad,
                        item.precio_unitario.normalize()
                    ));
                }
            }
        }
        let hash = Sha256::digest(canonical.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash[..16]);
        Self(bytes)
    }
}

impl fmt::Display for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentDigest({self})")
    }
}

/// Why a text is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a content digest (expected 32 lowercase hex characters)")]
pub struct ParseDigestError;

impl FromStr for ContentDigest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.as_bytes();
        if text.len() != 32 {
            return Err(ParseDigestError);
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(ParseDigestError),
        };
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Item;
    use chrono::DateTime;
    use rust_decimal::Decimal;
    use uuid::Uuid;

    fn order() -> OrderState {
        OrderState {
            pedido_id: Uuid::from_u128(1),
            cliente_id: Uuid::from_u128(2),
            fecha: DateTime::parse_from_rfc3339("2024-05-01T10:00:00+02:00").unwrap_or_default(),
            total: Decimal::new(5990, 2),
            items: Some(vec![Item {
                producto_id: "SKU-1".into(),
                cantidad: 1,
                precio_unitario: Decimal::new(5990, 2),
            }]),
        }
    }

    #[test]
    fn equal_content_spelled_differently_has_one_digest() {
        let mut same = order();
        same.total = Decimal::new(599, 1);
        same.fecha = DateTime::parse_from_rfc3339("2024-05-01T08:00:00Z").unwrap_or_default();
        assert_eq!(ContentDigest::of(&order()), ContentDigest::of(&same));
    }

    #[test]
    fn any_change_of_content_changes_the_digest() {
        let base = ContentDigest::of(&order());
        let changes: [fn(&mut OrderState); 5] = [
            |o| o.total = Decimal::new(5991, 2),
            |o| o.cliente_id = Uuid::from_u128(3),
            |o| o.fecha = DateTime::parse_from_rfc3339("2024-05-01T10:00:01+02:00").unwrap_or_default(),
            |o| o.items = None,
            |o| {
                if let Some(items) = o.items.as_mut() {
                    items[0].cantidad = 2;
                }
            },
        ];
        for change in changes {
            let mut other = order();
            change(&mut other);
            assert_ne!(ContentDigest::of(&other), base, "{other:?}");
        }
    }

    #[test]
    fn written_and_read_back() {
        let digest = ContentDigest::of(&order());
        let text = digest.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<ContentDigest>(), Ok(digest));
        for bad in ["", "xyz", &text[..31], &text.to_uppercase()] {
            assert_eq!(bad.parse::<ContentDigest>(), Err(ParseDigestError), "{bad}");
        }
    }
}
