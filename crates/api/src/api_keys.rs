//! API keys for order writes (`POST /api/pedidos`, `PUT /api/pedidos/{pedidoId}`).
//!
//! Off unless `API_KEYS` (or `API_KEYS_FILE`) is set, so local runs and tests need no key. When on, a write carries
//! `X-Api-Key: <key>` (or `Authorization: Bearer <key>`); a missing key is a 401, an unknown one a 403. Keys are held
//! only as SHA-256 digests, so a secret may store `sha256:<hex>` entries instead of the keys themselves, and every
//! presented key is compared against every configured digest in constant time. Nothing here logs a key.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use platform::config::{ConfigError, Lookup};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::error::ApiError;
use crate::AppState;

/// The header a client sends its key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Shortest plain key accepted in `API_KEYS`: shorter ones could be guessed.
pub const MIN_KEY_LEN: usize = 16;

/// Why a write was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiKeyError {
    /// 401: no key at all.
    #[error("this operation needs an API key in the X-Api-Key header")]
    Missing,
    /// 403: a key that matches no configured one. The key itself is never part of the message.
    #[error("the API key is not valid for this operation")]
    Unknown,
}

impl From<ApiKeyError> for ApiError {
    fn from(error: ApiKeyError) -> Self {
        match error {
            ApiKeyError::Missing => Self::Unauthorized { challenge: "ApiKey", detail: error.to_string() },
            ApiKeyError::Unknown => Self::Forbidden(error.to_string()),
        }
    }
}

/// The configured keys, as SHA-256 digests.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

/// Never prints a digest: the count is all a log needs.
impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

impl ApiKeys {
    /// Parses `API_KEYS` text: entries separated by commas or whitespace, each a plain key (at least
    /// [`MIN_KEY_LEN`] visible ASCII characters) or `sha256:` and the 64 hex digits of a key's SHA-256.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `var` and the entry's position, never its text.
    pub fn parse(var: &'static str, text: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { var, value: "(redacted)".into(), reason };
        let mut digests = Vec::new();
        for (n, entry) in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()).enumerate() {
            let position = n + 1;
            let digest = match entry.get(..7) {
                Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => {
                    decode_digest(&entry[7..]).ok_or_else(|| {
                        invalid(format!("entry {position}: `sha256:` must be followed by exactly 64 hex digits"))
                    })?
                }
                _ => {
                    if entry.len() < MIN_KEY_LEN || !entry.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(invalid(format!(
                            "entry {position}: a plain key needs at least {MIN_KEY_LEN} visible ASCII characters"
                        )));
                    }
                    digest(entry)
                }
            };
            digests.push(digest);
        }
        if digests.is_empty() {
            return Err(invalid("no key in it; unset it to leave order writes open".into()));
        }
        Ok(Self { digests })
    }

    /// `API_KEYS`, or the file named by `API_KEYS_FILE` (a mounted secret); `None` when neither is set.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable: both set, an unreadable file, or an invalid entry.
    pub fn from_env(env: Lookup<'_>) -> Result<Option<Self>, ConfigError> {
        match (env("API_KEYS"), env("API_KEYS_FILE")) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(ConfigError::Invalid {
                var: "API_KEYS_FILE",
                value: "(set)".into(),
                reason: "API_KEYS is set too; set only one of them".into(),
            }),
            (Some(text), None) => Self::parse("API_KEYS", &text).map(Some),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                    var: "API_KEYS_FILE",
                    value: path.clone(),
                    reason: format!("cannot be read: {e}"),
                })?;
                Self::parse("API_KEYS_FILE", &text).map(Some)
            }
        }
    }

    /// Whether `presented` is one of the keys. Compares its digest with every configured one, without stopping at a
    /// match, so the time taken says nothing about which key (or which prefix) matched.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented);
        let found = self.digests.iter().fold(Choice::from(0), |found, known| found | known.ct_eq(&presented));
        bool::from(found)
    }

    /// Checks a request's headers and returns the digest of the accepted key, which identifies the client.
    ///
    /// # Errors
    /// [`ApiKeyError::Missing`] without a key, [`ApiKeyError::Unknown`] for a key that is not configured.
    pub fn check(&self, headers: &HeaderMap) -> Result<[u8; 32], ApiKeyError> {
        let presented = presented_key(headers).ok_or(ApiKeyError::Missing)?;
        let text = presented.ok_or(ApiKeyError::Unknown)?;
        if self.accepts(text) {
            Ok(digest(text))
        } else {
            Err(ApiKeyError::Unknown)
        }
    }
}

/// The key a request carries: `X-Api-Key`, else `Authorization: Bearer`. `None` when there is none;
/// `Some(None)` when there is one that cannot be a key (not visible ASCII).
fn presented_key(headers: &HeaderMap) -> Option<Option<&str>> {
    if let Some(value) = headers.get(API_KEY_HEADER) {
        return (!value.is_empty()).then(|| value.to_str().ok().map(str::trim));
    }
    let authorization = headers.get(header::AUTHORIZATION)?;
    let Ok(text) = authorization.to_str() else {
        return Some(None);
    };
    let (scheme, key) = text.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(Some(key.trim()))
}

/// SHA-256 of `text`.
pub fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn decode_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0_u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

/// Extractor for the order-write handlers: passes when no keys are configured or the request carries a configured
/// one, and answers 401/403 problem+json otherwise. Declare it before the body extractor, so a client without a key
/// learns that first.
#[derive(Debug, Clone, Copy)]
pub struct WriteAccess {
    /// The SHA-256 of the client's API key; `None` when no keys are configured (anonymous clients).
    pub client: Option<[u8; 32]>,
}

impl FromRequestParts<AppState> for WriteAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match &state.api_keys {
            None => Ok(Self { client: None }),
            Some(keys) => match keys.check(&parts.headers) {
                Ok(client) => Ok(Self { client: Some(client) }),
                Err(refused) => {
                    tracing::info!(reason = %refused, "order write refused");
                    Err(refused.into())
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const KEY: &str = "k3y-with-enough-characters";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{value}: {e}")));
        }
        map
    }

    #[test]
    fn plain_and_hashed_entries() {
        let hashed = format!("sha256:{}", hex(&digest("another-key-0123456789")));
        let keys = ApiKeys::parse("API_KEYS", &format!(" {KEY} ,\n{hashed}\n")).unwrap_or_else(|e| panic!("{e}"));
        assert!(keys.accepts(KEY));
        assert!(keys.accepts("another-key-0123456789"));
        assert!(!keys.accepts(&hashed), "the digest itself is not a key");
        assert!(!keys.accepts("k3y-with-enough-character"));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 configured)");
    }

    #[test]
    fn invalid_entries_name_the_variable_but_not_the_key() {
        for (text, expected) in [
            ("short", "entry 1: a plain key needs at least 16"),
            (&format!("{KEY},sha256:abc") as &str, "entry 2: `sha256:` must be followed by exactly 64 hex digits"),
            (" , ", "no key in it"),
        ] {
            let err = ApiKeys::parse("API_KEYS", text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("API_KEYS=\"(redacted)\" is invalid"), "{err}");
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("short") && !err.contains(KEY), "{err}");
        }
    }

    #[test]
    fn keys_are_read_from_either_header() {
        let keys = ApiKeys::parse("API_KEYS", KEY).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys.check(&headers(&[])), Err(ApiKeyError::Missing));
        assert_eq!(keys.check(&headers(&[("x-api-key", "")])), Err(ApiKeyError::Missing));
        assert_eq!(keys.check(&headers(&[("x-api-key", KEY)])), Ok(digest(KEY)));
        assert_eq!(keys.check(&headers(&[("authorization", &format!("Bearer {KEY}"))])), Ok(digest(KEY)));
        assert_eq!(keys.check(&headers(&[("authorization", &format!("Basic {KEY}"))])), Err(ApiKeyError::Missing));
        assert_eq!(keys.check(&headers(&[("x-api-key", "nope-nope-nope-nope")])), Err(ApiKeyError::Unknown));
    }

    #[test]
    fn api_keys_file_is_read_and_exclusive() {
        let path = std::env::temp_dir().join(format!("pedidos-api-keys-{}", std::process::id()));
        std::fs::write(&path, format!("{KEY}\n")).unwrap_or_else(|e| panic!("{e}"));
        let file = path.display().to_string();
        let from_file = |name: &str| (name == "API_KEYS_FILE").then(|| file.clone());
        let keys = ApiKeys::from_env(&from_file).unwrap_or_else(|e| panic!("{e}")).map(|k| k.accepts(KEY));
        assert_eq!(keys, Some(true));
        let both = |name: &str| Some(if name == "API_KEYS_FILE" { file.clone() } else { KEY.to_owned() });
        assert!(ApiKeys::from_env(&both).is_err());
        let _ = std::fs::remove_file(&path);
        let missing = ApiKeys::from_env(&from_file).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(missing.starts_with("API_KEYS_FILE="), "{missing}");
        assert!(matches!(ApiKeys::from_env(&|_| None), Ok(None)));
    }
}
