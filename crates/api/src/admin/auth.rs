//! Who may use the admin surface, and the middleware that checks it on every admin route.
//!
//! - The credential is `ADMIN_TOKEN`. Automation sends it as `Authorization: Bearer <token>`; a browser trades it once
//!   at `POST /console/login` for a session cookie.
//! - The session cookie is `<expiry unix seconds>.<hex HMAC-SHA256(key, expiry)>`, the key derived from the token: no
//!   server-side state, so every instance accepts it, and changing the token ends every session.
//! - State-changing requests authenticated by the cookie (an ambient credential a browser attaches on its own) must
//!   come from this origin (`Origin`, `Sec-Fetch-Site`) and carry a CSRF token bound to the session:
//!   `X-CSRF-Token`, or a `csrfToken` field in a form body. Bearer requests skip that: no browser attaches them.
//! - Every comparison of a secret is constant-time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use platform::config::{ConfigError, Lookup};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::extract::BODY_LIMIT;
use crate::AppState;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "pedidos_admin";
/// How long a session lasts after login (a working day); then the operator logs in again.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 60 * 60);
/// Header carrying the CSRF token on cookie-authenticated state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Form field accepted instead of [`CSRF_HEADER`] in an `application/x-www-form-urlencoded` body (plain HTML forms).
pub const CSRF_FORM_FIELD: &str = "csrfToken";
/// Shortest `ADMIN_TOKEN` accepted: it is the whole defence against guessing.
pub const MIN_TOKEN_LEN: usize = 16;
/// Where a browser without a session is sent.
pub const LOGIN_PATH: &str = "/console/login";
/// `WWW-Authenticate` on a 401 from the admin surface.
pub const CHALLENGE: &str = "Bearer realm=\"pedidos-admin\"";

type HmacSha256 = Hmac<Sha256>;

/// `ADMIN_TOKEN` as configured. Its `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// A token of at least [`MIN_TOKEN_LEN`] visible ASCII characters (it travels in a header and a form field).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `var`, never the value.
    pub fn parse(var: &'static str, text: &str) -> Result<Self, ConfigError> {
        let text = text.trim();
        if text.len() < MIN_TOKEN_LEN || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid {
                var,
                value: "(redacted)".into(),
                reason: format!("needs at least {MIN_TOKEN_LEN} visible ASCII characters (no spaces)"),
            });
        }
        Ok(Self(text.to_owned()))
    }

    /// `ADMIN_TOKEN`, or `None` when unset (the admin surface is then off).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a token that is too short.
    pub fn from_env(env: Lookup<'_>) -> Result<Option<Self>, ConfigError> {
        env("ADMIN_TOKEN").map(|text| Self::parse("ADMIN_TOKEN", &text)).transpose()
    }
}

/// Why a session cookie was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("cookie is malformed")]
    Malformed,
    #[error("cookie signature is not valid")]
    BadSignature,
    #[error("has expired")]
    Expired,
}

/// Every way the admin surface refuses a request. Mapped to problem+json through [`ApiError`].
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// 404: `ADMIN_TOKEN` is unset, so the admin surface does not exist.
    #[error("no such route")]
    Disabled,
    /// 401: no credential.
    #[error("admin credentials required: log in at /console/login, or send Authorization: Bearer <ADMIN_TOKEN>")]
    Missing,
    /// 401: a bearer token (or a login form token) that is not `ADMIN_TOKEN`.
    #[error("the admin token is not valid")]
    WrongToken,
    /// 401: a session cookie that is malformed, tampered with or expired.
    #[error("the admin session {0}; log in again")]
    Session(SessionError),
    /// 403: a cookie-authenticated state change without this origin or without the session's CSRF token.
    #[error("{0}")]
    Csrf(&'static str),
    /// 415: the login form was not `application/x-www-form-urlencoded`.
    #[error("the login form must be sent as application/x-www-form-urlencoded")]
    NotAForm,
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::Disabled => Self::NotFound(error.to_string()),
            AdminError::Missing | AdminError::WrongToken | AdminError::Session(_) => {
                Self::Unauthorized { challenge: CHALLENGE, detail: error.to_string() }
            }
            AdminError::Csrf(_) => Self::Forbidden(error.to_string()),
            AdminError::NotAForm => Self::UnsupportedMediaType,
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// The keys derived from `ADMIN_TOKEN`. Built once at start-up and shared (`AppState::admin`).
#[derive(Clone)]
pub struct AdminAuth {
    /// SHA-256 of the token: presented tokens are hashed and compared with this in constant time, whatever their length.
    token_digest: [u8; 32],
    /// HMAC key for session cookies and CSRF tokens (64 bytes: SHA-256's block size, so HMAC uses it as is).
    key: [u8; 64],
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminAuth(<redacted>)")
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [char::from(DIGITS[usize::from(b >> 4)]), char::from(DIGITS[usize::from(b & 15)])])
        .collect()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl AdminAuth {
    pub fn new(token: &AdminToken) -> Self {
        let token = token.0.as_bytes();
        // Domain-separated derivations: the session key reveals nothing about the token digest, nor the reverse.
        let first = sha256(&[b"pedidos-api admin session key v1 (1/2)\0", token]);
        let second = sha256(&[b"pedidos-api admin session key v1 (2/2)\0", token]);
        let mut key = [0_u8; 64];
        key[..32].copy_from_slice(&first);
        key[32..].copy_from_slice(&second);
        Self { token_digest: sha256(&[token]), key }
    }

    fn mac(&self, label: &[u8], message: &[u8]) -> String {
        let mut mac = HmacSha256::new((&self.key).into());
        mac.update(label);
        mac.update(message);
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `presented` is `ADMIN_TOKEN` (constant time).
    pub fn token_matches(&self, presented: &str) -> bool {
        bool::from(sha256(&[presented.as_bytes()]).ct_eq(&self.token_digest))
    }

    /// A session cookie value that expires at `expires_at` (Unix seconds).
    pub fn session_value(&self, expires_at: u64) -> String {
        format!("{expires_at}.{}", self.mac(b"session\0", expires_at.to_string().as_bytes()))
    }

    /// Checks a session cookie value at `now`; returns its expiry.
    ///
    /// # Errors
    /// [`SessionError`]: not of the issued shape, signed with another key (tampered, or the token changed), expired.
    pub fn verify_session(&self, value: &str, now: u64) -> Result<u64, SessionError> {
        let (expiry, tag) = value.split_once('.').ok_or(SessionError::Malformed)?;
        let well_formed = (1..=20).contains(&expiry.len())
            && expiry.bytes().all(|b| b.is_ascii_digit())
            && tag.len() == 64
            && tag.bytes().all(|b| b.is_ascii_hexdigit());
        let expires_at: u64 = match expiry.parse() {
            Ok(at) if well_formed => at,
            _ => return Err(SessionError::Malformed),
        };
        let expected = self.mac(b"session\0", expiry.as_bytes());
        if !bool::from(expected.as_bytes().ct_eq(tag.as_bytes())) {
            return Err(SessionError::BadSignature);
        }
        if expires_at <= now {
            return Err(SessionError::Expired);
        }
        Ok(expires_at)
    }

    /// The CSRF token of the session whose cookie value is `session_value`: it changes with every login.
    pub fn csrf_token(&self, session_value: &str) -> String {
        self.mac(b"csrf\0", session_value.as_bytes())
    }

    /// Whether `presented` is the CSRF token of `session_value` (constant time).
    pub fn csrf_matches(&self, session_value: &str, presented: &str) -> bool {
        bool::from(self.csrf_token(session_value).as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// How an admin request proved itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer <ADMIN_TOKEN>`.
    Bearer,
    /// The session cookie, with its value (the CSRF token is derived from it) and expiry.
    Session { value: String, expires_at: u64 },
}

/// An authenticated admin request. [`require_admin`] puts it in the request's extensions; handlers take it as an
/// extractor, which refuses (401) a request that did not pass through that middleware.
#[derive(Debug, Clone)]
pub struct Admin {
    pub credential: Credential,
    csrf_token: Option<String>,
}

impl Admin {
    /// The CSRF token to embed in a page (a `<meta>` tag or a hidden `csrfToken` form field) for its POSTs. `None`
    /// for bearer requests, which need none.
    pub fn csrf_token(&self) -> Option<&str> {
        self.csrf_token.as_deref()
    }

    /// When the session ends (Unix seconds); `None` for bearer requests.
    pub fn expires_at(&self) -> Option<u64> {
        match &self.credential {
            Credential::Session { expires_at, .. } => Some(*expires_at),
            Credential::Bearer => None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Self>().cloned().ok_or_else(|| AdminError::Missing.into())
    }
}

/// The values of every `name` cookie in the request (HTTP/2 may split `Cookie` into several headers).
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(move |pair| pair.trim().split_once('=').filter(|(n, _)| *n == name).map(|(_, v)| v.trim()))
}

/// Authenticates a request at `now`. A bearer header, when present, is the credential (a wrong one is not rescued
/// by a cookie); otherwise the first valid session cookie.
///
/// # Errors
/// [`AdminError::Missing`], [`AdminError::WrongToken`] or [`AdminError::Session`].
pub fn authenticate(auth: &AdminAuth, headers: &HeaderMap, now: u64) -> Result<Admin, AdminError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        return match token {
            Some(token) if auth.token_matches(token) => Ok(Admin { credential: Credential::Bearer, csrf_token: None }),
            _ => Err(AdminError::WrongToken),
        };
    }
    let mut first_error = None;
    for value in cookies(headers, SESSION_COOKIE) {
        match auth.verify_session(value, now) {
            Ok(expires_at) => {
                return Ok(Admin {
                    csrf_token: Some(auth.csrf_token(value)),
                    credential: Credential::Session { value: value.to_owned(), expires_at },
                })
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    Err(first_error.map_or(AdminError::Missing, AdminError::Session))
}

/// `Set-Cookie` for a new session.
pub fn session_cookie(value: &str) -> String {
    // Path=/: the subscription routes (/api/suscripcion) are admin routes too. SameSite=Strict: never sent on a
    // request another site starts. Secure: browsers still accept it from http://localhost and 127.0.0.1.
    format!("{SESSION_COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict", SESSION_TTL.as_secs())
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_session_cookie() -> &'static str {
    "pedidos_admin=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
}

/// Whether the request is a browser navigating (a page load), which gets a redirect to the login page rather than a
/// 401 body.
pub fn wants_html(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"))
}

/// A 303 to `location`.
pub fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `host` (and port) of `scheme://authority`, without the scheme's default port, lower-cased.
fn normalized_authority(scheme: &str, authority: &str) -> String {
    let authority = authority.to_ascii_lowercase();
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        _ => ":80",
    };
    authority.strip_suffix(default_port).map_or_else(|| authority.clone(), str::to_owned)
}

/// Refuses a request another site started: `Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` whose
/// host and port are not the request's own. Requests carrying neither header (curl, old browsers) pass; the CSRF
/// token still protects them.
///
/// # Errors
/// [`AdminError::Csrf`].
pub fn same_origin(headers: &HeaderMap, uri: &Uri) -> Result<(), AdminError> {
    let fetch_site = headers.get("sec-fetch-site");
    if let Some(site) = fetch_site {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Err(AdminError::Csrf("cross-site request refused (Sec-Fetch-Site)"));
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    // Browsers send `Origin: null` for a form posted from a page whose referrer policy hides it; the browser's own
    // `Sec-Fetch-Site` (checked above) then vouches for the origin. Without it, `null` is refused.
    if origin.as_bytes() == b"null" && fetch_site.is_some() {
        return Ok(());
    }
    let refused = AdminError::Csrf("cross-origin request refused (Origin does not match Host)");
    let (scheme, authority) = origin.to_str().ok().and_then(|o| o.split_once("://")).ok_or(refused)?;
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned));
    match host {
        Some(host) if normalized_authority(scheme, authority) == normalized_authority(scheme, &host) => Ok(()),
        _ => Err(AdminError::Csrf("cross-origin request refused (Origin does not match Host)")),
    }
}

/// The CSRF check for a cookie-authenticated state change. Returns the request, rebuilt when its form body had to
/// be read to find the token.
async fn check_csrf(auth: &AdminAuth, session: &str, request: Request) -> Result<Request, ApiError> {
    same_origin(request.headers(), request.uri())?;
    let missing = AdminError::Csrf("missing or wrong CSRF token: send the session's token in X-CSRF-Token");
    if let Some(token) = request.headers().get(CSRF_HEADER) {
        let token = token.to_str().map_err(|_| AdminError::Csrf("X-CSRF-Token is not text"))?;
        return if auth.csrf_matches(session, token) { Ok(request) } else { Err(missing.into()) };
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(missing.into());
    }
    let (parts, body) = request.into_parts();
    let bytes =
        axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| ApiError::PayloadTooLarge { limit: BODY_LIMIT })?;
    let found = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .ok()
        .and_then(|fields| fields.into_iter().find(|(name, _)| name == CSRF_FORM_FIELD))
        .is_some_and(|(_, token)| auth.csrf_matches(session, &token));
    if found {
        Ok(Request::from_parts(parts, Body::from(bytes)))
    } else {
        Err(missing.into())
    }
}

/// Headers every admin response carries unless its handler chose otherwise: never cached, never framed, no sniffing,
/// no referrer to other sites (`same-origin`, so the browser's own POSTs still carry a real `Origin`).
pub fn harden(headers: &mut HeaderMap) {
    let defaults: [(HeaderName, &'static str); 4] = [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in defaults {
        headers.entry(name).or_insert(HeaderValue::from_static(value));
    }
}

/// Outer layer of every admin route, login included: 404 when `ADMIN_TOKEN` is unset (as if the route did not
/// exist), then the hardening headers.
pub async fn admin_enabled(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.admin.is_none() {
        return AdminError::Disabled.into_response();
    }
    let mut response = next.run(request).await;
    harden(response.headers_mut());
    response
}

/// Layer of every admin route but login: authenticates (401, or a redirect to the login page for a browser
/// navigating), applies the CSRF check to cookie-authenticated state changes (403), and hands [`Admin`] to the
/// handler.
pub async fn require_admin(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(auth) = state.admin.as_deref() else {
        return AdminError::Disabled.into_response();
    };
    let admin = match authenticate(auth, request.headers(), unix_now()) {
        Ok(admin) => admin,
        Err(error) => {
            tracing::info!(reason = %error, "admin request refused");
            let bad_cookie = matches!(error, AdminError::Session(_));
            let mut response = if wants_html(request.method(), request.headers()) {
                see_other(LOGIN_PATH)
            } else {
                error.into_response()
            };
            if bad_cookie {
                response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static(clear_session_cookie()));
            }
            return response;
        }
    };
    if let Credential::Session { value, .. } = &admin.credential {
        if !request.method().is_safe() {
            request = match check_csrf(auth, value, request).await {
                Ok(request) => request,
                Err(error) => {
                    tracing::info!(reason = %error, "admin request refused");
                    return error.into_response();
                }
            };
        }
    }
    request.extensions_mut().insert(admin);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AdminAuth {
        AdminAuth::new(&AdminToken::parse("ADMIN_TOKEN", "0123456789abcdef-token").unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn token_rules_name_the_variable_but_not_the_value() {
        for bad in ["", "short", "has a space in it ok?", "sixteen-chars-é!"] {
            let err = AdminToken::parse("ADMIN_TOKEN", bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("ADMIN_TOKEN=\"(redacted)\" is invalid"), "{err}");
        }
        let token = AdminToken::parse("ADMIN_TOKEN", " 0123456789abcdef ").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
        assert!(AdminAuth::new(&token).token_matches("0123456789abcdef"));
    }

    #[test]
    fn sessions_verify_until_they_expire() {
        let auth = auth();
        let value = auth.session_value(1_000);
        assert_eq!(auth.verify_session(&value, 999), Ok(1_000));
        assert_eq!(auth.verify_session(&value, 1_000), Err(SessionError::Expired));
        // Moving the expiry breaks the signature.
        let (_, tag) = value.split_once('.').unwrap_or_default();
        assert_eq!(auth.verify_session(&format!("9999.{tag}"), 999), Err(SessionError::BadSignature));
        for malformed in ["", "1000", "1000.", "x.abc", "-1.00", &format!("1000.{}", "g".repeat(64))] {
            assert_eq!(auth.verify_session(malformed, 0), Err(SessionError::Malformed), "{malformed}");
        }
        // Another token, another key.
        let other = AdminAuth::new(&AdminToken::parse("T", "another-token-0123456").unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(other.verify_session(&value, 0), Err(SessionError::BadSignature));
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        let auth = auth();
        let (one, two) = (auth.session_value(10), auth.session_value(20));
        assert!(auth.csrf_matches(&one, &auth.csrf_token(&one)));
        assert!(!auth.csrf_matches(&one, &auth.csrf_token(&two)));
        assert!(!auth.csrf_matches(&one, ""));
    }

    #[test]
    fn origins() {
        let uri: Uri = "/console".parse().unwrap_or_else(|e| panic!("{e}"));
        let check = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            same_origin(&headers, &uri).is_ok()
        };
        assert!(check(&[("host", "127.0.0.1:8080")]));
        assert!(check(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")]));
        assert!(check(&[("host", "Admin.Example.com"), ("origin", "https://admin.example.com:443")]));
        assert!(check(&[("host", "a.example"), ("sec-fetch-site", "same-origin")]));
        assert!(!check(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:9090")]));
        assert!(!check(&[("host", "127.0.0.1:8080"), ("origin", "null")]));
        assert!(!check(&[("host", "a.example"), ("origin", "https://evil.example")]));
        assert!(!check(&[("host", "a.example"), ("sec-fetch-site", "cross-site")]));
        assert!(!check(&[("host", "a.example"), ("sec-fetch-site", "same-site")]));
        assert!(check(&[("host", "a.example"), ("origin", "null"), ("sec-fetch-site", "same-origin")]));
        assert!(!check(&[("host", "a.example"), ("origin", "null")]), "a bare null origin proves nothing");
        assert!(!check(&[("origin", "http://a.example")]));
    }
}
