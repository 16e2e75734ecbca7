//! The idempotency key consumers deduplicate on.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// `pedidoId#version`: one order at one version. Applying the same key twice must have no further effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupKey {
    pub pedido_id: Uuid,
    pub version: u64,
}

impl DedupKey {
    pub fn new(pedido_id: Uuid, version: u64) -> Self {
        Self { pedido_id, version }
    }
}

impl fmt::Display for DedupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.pedido_id, self.version)
    }
}

/// Why a string is not a `pedidoId#version` key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a dedup key (expected `pedidoId#version`): {0}")]
pub struct ParseDedupKeyError(String);

impl FromStr for DedupKey {
    type Err = ParseDedupKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDedupKeyError(s.chars().take(80).collect());
        let (id, version) = s.split_once('#').ok_or_else(err)?;
        Ok(Self { pedido_id: Uuid::parse_str(id).map_err(|_| err())?, version: version.parse().map_err(|_| err())? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_and_parses_back() {
        let key = DedupKey::new(Uuid::nil(), 7);
        assert_eq!(key.to_string(), "00000000-0000-0000-0000-000000000000#7");
        assert_eq!(key.to_string().parse::<DedupKey>(), Ok(key));
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in ["", "#1", "abc#1", "00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000000#x"]
        {
            assert!(bad.parse::<DedupKey>().is_err(), "{bad}");
        }
    }
}
