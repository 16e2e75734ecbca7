//! API keys and the client identity they carry.
//!
//! Off unless `API_KEYS` (or `API_KEYS_FILE`) is set: then every order route is open and orders have no owner, which
//! is for local runs and tests only. When on, each key belongs to a named API client (`name:key` or
//! `name:sha256:<hex>`; a client may have several keys, e.g. while rotating one). A request carries its key as
//! `X-Api-Key: <key>` (or `Authorization: Bearer <key>`); a missing key is a 401, an unknown one a 403. Writes and
//! reads need a key, and a client sees and changes only the orders it created (another client's order is a 404); an
//! operator (console session or the admin bearer token) reads every order. Keys are held only as SHA-256 digests and
//! every presented key is compared against every configured digest in constant time. Nothing here logs a key.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use std::sync::Arc;

use platform::config::{ConfigError, Lookup};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

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

/// Longest client name; names are lowercase ASCII letters, digits, `-` and `_`, starting with a letter or digit.
pub const MAX_NAME_LEN: usize = 64;

/// An API client: the owner recorded on the orders it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The configured name, or `key-<12 hex digits>` (from the key's digest) for an entry without one.
    pub name: Arc<str>,
}

/// The configured keys, as SHA-256 digests, each with its client.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    clients: Vec<Client>,
}

/// Never prints a digest: the count is all a log needs.
impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The name of a key configured without one: stable per key, and says nothing useful about the key (12 hex digits
/// of a hash of its digest).
fn unnamed(digest: &[u8; 32]) -> String {
    let again: [u8; 32] = Sha256::digest(digest).into();
    format!("key-{}", again[..6].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl ApiKeys {
    /// Parses `API_KEYS` text: entries separated by commas or whitespace, each `name:key`, `name:sha256:<64 hex
    /// digits>`, or (an unnamed client) a plain key or `sha256:<hex>`. A plain key has at least [`MIN_KEY_LEN`]
    /// visible ASCII characters and no `:`; a name is up to [`MAX_NAME_LEN`] lowercase letters, digits, `-`, `_`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `var` and the entry's position, never its text.
    pub fn parse(var: &'static str, text: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { var, value: "(redacted)".into(), reason };
        let mut keys = Self { digests: Vec::new(), clients: Vec::new() };
        for (n, entry) in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()).enumerate() {
            let position = n + 1;
            let hashed = |entry: &str| entry.get(..7).is_some_and(|prefix| prefix.eq_ignore_ascii_case("sha256:"));
            let (name, secret) = match entry.split_once(':') {
                Some((name, secret)) if !hashed(entry) => {
                    if !valid_name(name) {
                        return Err(invalid(format!(
                            "entry {position}: the client name before `:` must be 1 to {MAX_NAME_LEN} lowercase \
                             letters, digits, `-` or `_`"
                        )));
                    }
                    (Some(name), secret)
                }
                _ => (None, entry),
            };
            let digest = if hashed(secret) {
                decode_digest(&secret[7..]).ok_or_else(|| {
                    invalid(format!("entry {position}: `sha256:` must be followed by exactly 64 hex digits"))
                })?
            } else {
                if secret.len() < MIN_KEY_LEN || !secret.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                    return Err(invalid(format!(
                        "entry {position}: a plain key needs at least {MIN_KEY_LEN} visible ASCII characters, \
                         without `:`"
                    )));
                }
                digest(secret)
            };
            if keys.digests.contains(&digest) {
                return Err(invalid(format!("entry {position}: this key is configured twice")));
            }
            let name = name.map_or_else(|| unnamed(&digest), str::to_owned);
            keys.digests.push(digest);
            keys.clients.push(Client { name: name.into() });
        }
        if keys.digests.is_empty() {
            return Err(invalid("no key in it; unset it to leave the order routes open".into()));
        }
        Ok(keys)
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

    /// The client whose key `presented` is, if any. Compares its digest with every configured one, without
    /// stopping at a match, so the time taken says nothing about which key (or which prefix) matched.
    pub fn identify(&self, presented: &str) -> Option<&Client> {
        let presented = digest(presented);
        let mut found = 0_u32;
        for (index, known) in (1_u32..).zip(&self.digests) {
            found.conditional_assign(&index, known.ct_eq(&presented));
        }
        found.checked_sub(1).and_then(|index| self.clients.get(index as usize))
    }

    /// Whether `presented` is one of the keys.
    pub fn accepts(&self, presented: &str) -> bool {
        self.identify(presented).is_some()
    }

    /// Checks a request's headers and returns the client whose key it carries.
    ///
    /// # Errors
    /// [`ApiKeyError::Missing`] without a key, [`ApiKeyError::Unknown`] for a key that is not configured.
    pub fn check(&self, headers: &HeaderMap) -> Result<Client, ApiKeyError> {
        let presented = presented_key(headers).ok_or(ApiKeyError::Missing)?;
        let text = presented.ok_or(ApiKeyError::Unknown)?;
        self.identify(text).cloned().ok_or(ApiKeyError::Unknown)
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

/// Extractor for the order writes: passes when no keys are configured or the request carries a configured one, and
/// answers 401/403 problem+json otherwise. Declare it before the body extractor, so a client without a key learns
/// that first.
#[derive(Debug, Clone)]
pub struct WriteAccess {
    /// The client writing; `None` when no keys are configured (the order gets no owner).
    pub client: Option<Client>,
}

impl WriteAccess {
    pub fn client_name(&self) -> Option<&str> {
        self.client.as_ref().map(|client| &*client.name)
    }
}

impl FromRequestParts<AppState> for WriteAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match &state.api_keys {
            None => Ok(Self { client: None }),
            Some(keys) => keys.check(&parts.headers).map(|client| Self { client: Some(client) }).map_err(|refused| {
                tracing::info!(reason = %refused, "order request refused");
                refused.into()
            }),
        }
    }
}

/// Who may read what: extractor for the tracking routes.
#[derive(Debug, Clone)]
pub enum ReadAccess {
    /// No keys configured: every order is readable (local use only).
    Open,
    /// An operator (console session or the admin bearer token): every order.
    Operator,
    /// An API client: its own orders only.
    Client(Client),
}

impl ReadAccess {
    /// Whether this caller may see an order owned by `owner`.
    pub fn may_read(&self, owner: Option<&str>) -> bool {
        match self {
            Self::Open | Self::Operator => true,
            Self::Client(client) => owner == Some(&*client.name),
        }
    }

    /// The owner a listing is restricted to; `None` lists every owner's orders.
    pub fn owner_filter(&self) -> Option<&str> {
        match self {
            Self::Open | Self::Operator => None,
            Self::Client(client) => Some(&client.name),
        }
    }
}

impl FromRequestParts<AppState> for ReadAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(keys) = &state.api_keys else { return Ok(Self::Open) };
        if crate::admin::is_operator(state, &parts.headers) {
            return Ok(Self::Operator);
        }
        keys.check(&parts.headers).map(Self::Client).map_err(|refused| {
            tracing::info!(reason = %refused, "order read refused");
            refused.into()
        })
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

    fn client(name: &str) -> Result<Client, ApiKeyError> {
        Ok(Client { name: name.into() })
    }

    #[test]
    fn keys_are_read_from_either_header() {
        let keys = ApiKeys::parse("API_KEYS", &format!("shop:{KEY}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys.check(&headers(&[])), Err(ApiKeyError::Missing));
        assert_eq!(keys.check(&headers(&[("x-api-key", "")])), Err(ApiKeyError::Missing));
        assert_eq!(keys.check(&headers(&[("x-api-key", KEY)])), client("shop"));
        assert_eq!(keys.check(&headers(&[("authorization", &format!("Bearer {KEY}"))])), client("shop"));
        assert_eq!(keys.check(&headers(&[("authorization", &format!("Basic {KEY}"))])), Err(ApiKeyError::Missing));
        assert_eq!(keys.check(&headers(&[("x-api-key", "nope-nope-nope-nope")])), Err(ApiKeyError::Unknown));
    }

    #[test]
    fn each_key_identifies_its_client() {
        let other = "another-key-0123456789";
        let rotated = "rotated-key-0123456789";
        let text = format!("shop:{KEY}, market:sha256:{}\nshop:{rotated}\n{other}x", hex(&digest(other)));
        let keys = ApiKeys::parse("API_KEYS", &text).unwrap_or_else(|e| panic!("{e}"));
        let name = |key: &str| keys.identify(key).map(|c| c.name.to_string());
        assert_eq!(name(KEY).as_deref(), Some("shop"));
        assert_eq!(name(rotated).as_deref(), Some("shop"), "a client may have several keys");
        assert_eq!(name(other).as_deref(), Some("market"));
        let unnamed = name(&format!("{other}x")).unwrap_or_default();
        assert!(unnamed.starts_with("key-") && unnamed.len() == 16, "{unnamed}");
        assert!(!unnamed.contains(&hex(&digest(&format!("{other}x")))[..12]), "the name is not the digest's prefix");
        assert_eq!(name("nope-nope-nope-nope"), None);
    }

    #[test]
    fn bad_names_and_repeated_keys_are_refused() {
        for (text, expected) in [
            (format!("Shop:{KEY}"), "entry 1: the client name"),
            (format!("-shop:{KEY}"), "entry 1: the client name"),
            (format!("{}:{KEY}", "a".repeat(MAX_NAME_LEN + 1)), "entry 1: the client name"),
            (format!("shop:{KEY} market:{KEY}"), "entry 2: this key is configured twice"),
            (format!("shop:sha256:{} {KEY}", hex(&digest(KEY))), "entry 2: this key is configured twice"),
        ] {
            let err = ApiKeys::parse("API_KEYS", &text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains(KEY), "{err}");
        }
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
