//! Who may use the admin surface, and the middleware that checks it on every admin route.
//!
//! - The credential is `ADMIN_TOKEN` (at least 32 characters). Automation sends it as `Authorization: Bearer <token>`;
//!   a browser trades it once at `POST /console/login` for a session cookie.
//! - A session is 256 random bits from the OS's RNG (the cookie's value) with its own random CSRF token, held in this
//!   process's memory for [`SESSION_TTL`]: logout ends it, and a restart (a new `ADMIN_TOKEN` is a restart) ends all.
//!   Several API instances each hold their own sessions; operators reach one instance's admin port through a tunnel,
//!   so that costs nothing (docs/operations.md, "Console sessions and login lockout"). At most [`MAX_SESSIONS`] at
//!   once.
//! - Logins are throttled per client address: after [`FREE_FAILURES`] failures, a lockout doubling from
//!   [`FIRST_LOCKOUT`] to [`MAX_LOCKOUT`] (429 with `Retry-After`); every refused login is logged with the address.
//! - State-changing requests authenticated by the cookie (an ambient credential a browser attaches on its own) must
//!   come from this origin (`Origin`, `Sec-Fetch-Site`) and carry the session's CSRF token: `X-CSRF-Token`, or a
//!   `csrfToken` field in a form body. Bearer requests skip that: no browser attaches them.
//! - Every comparison of a secret is constant-time (session and CSRF values are looked up or compared by digest).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use platform::config::{ConfigError, Lookup};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::extract::BODY_LIMIT;
use crate::AppState;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "pedidos_admin";
/// How long a session lasts after login (a working day); then the operator logs in again.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 60 * 60);
/// Most sessions held at once. Only a holder of the token can add one, so reaching it means a script logging in
/// in a loop: the oldest session is then ended to make room (a WARN says so), never the new login refused.
pub const MAX_SESSIONS: usize = 1000;
/// Failed logins an address gets before its first lockout.
pub const FREE_FAILURES: u32 = 5;
/// The first lockout; each further failure doubles it.
pub const FIRST_LOCKOUT: Duration = Duration::from_secs(1);
/// The longest lockout.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// An address's failures are forgotten after this long without one.
pub const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Most addresses whose failures are remembered (a few hundred KiB).
pub const MAX_TRACKED_PEERS: usize = 10_000;
/// Header carrying the CSRF token on cookie-authenticated state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Form field accepted instead of [`CSRF_HEADER`] in an `application/x-www-form-urlencoded` body (plain HTML forms).
pub const CSRF_FORM_FIELD: &str = "csrfToken";
/// Shortest `ADMIN_TOKEN` accepted: it is the whole defence against guessing (32 random characters are ~190 bits).
pub const MIN_TOKEN_LEN: usize = 32;
/// Where a browser without a session is sent.
pub const LOGIN_PATH: &str = "/console/login";
/// `WWW-Authenticate` on a 401 from the admin surface.
pub const CHALLENGE: &str = "Bearer realm=\"pedidos-admin\"";

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
    #[error("has ended (logged out, or the server restarted)")]
    Unknown,
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
    /// 401: a session cookie that is malformed, unknown (ended) or expired.
    #[error("the admin session {0}; log in again")]
    Session(SessionError),
    /// 403: a cookie-authenticated state change without this origin or without the session's CSRF token.
    #[error("{0}")]
    Csrf(&'static str),
    /// 415: the login form was not `application/x-www-form-urlencoded`.
    #[error("the login form must be sent as application/x-www-form-urlencoded")]
    NotAForm,
    /// 429: this address failed to log in too often; `retry_after` seconds until it may try again.
    #[error("too many failed logins")]
    Throttled { retry_after: u64 },
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
            AdminError::Throttled { retry_after } => Self::TooManyRequests { retry_after },
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// `ADMIN_TOKEN`'s digest, the live sessions and the login throttle. Built once at start-up and shared
/// (`AppState::admin`).
pub struct AdminAuth {
    /// SHA-256 of the token: presented tokens are hashed and compared with this in constant time, whatever their length.
    token_digest: [u8; 32],
    /// Live sessions by the SHA-256 of their cookie value: a lookup's timing can say nothing about a valid value.
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    throttle: Mutex<Throttle>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminAuth(<redacted>)")
    }
}

/// One login's session.
#[derive(Clone)]
struct Session {
    csrf_token: String,
    expires_at: u64,
}

/// What a login hands the browser.
#[derive(Clone)]
pub struct NewSession {
    /// The cookie's value: 256 random bits, hex.
    pub value: String,
    /// The session's own CSRF token: 256 other random bits, hex.
    pub csrf_token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewSession(<redacted>, expires_at: {})", self.expires_at)
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

/// 256 bits from the operating system's RNG, as hex.
fn random_hex() -> Result<String, getrandom::Error> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A lock whose data stays consistent if a holder panicked (each update is a single insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AdminAuth {
    pub fn new(token: &AdminToken) -> Self {
        Self { token_digest: sha256(&[token.0.as_bytes()]), sessions: Mutex::default(), throttle: Mutex::default() }
    }

    /// Whether `presented` is `ADMIN_TOKEN` (constant time).
    pub fn token_matches(&self, presented: &str) -> bool {
        bool::from(sha256(&[presented.as_bytes()]).ct_eq(&self.token_digest))
    }

    /// A new session at `now` (Unix seconds), lasting [`SESSION_TTL`]. At [`MAX_SESSIONS`], expired sessions are
    /// dropped first, then the one closest to its end (the oldest login) is ended, with a WARN.
    ///
    /// # Errors
    /// The operating system's RNG failed (the login is refused with a 500; nothing is stored).
    pub fn start_session(&self, now: u64) -> Result<NewSession, getrandom::Error> {
        let session = NewSession {
            value: random_hex()?,
            csrf_token: random_hex()?,
            expires_at: now.saturating_add(SESSION_TTL.as_secs()),
        };
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires_at > now);
        }
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions.iter().min_by_key(|(_, s)| s.expires_at).map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
                tracing::warn!(limit = MAX_SESSIONS, "admin session limit reached: the oldest session was ended");
            }
        }
        sessions.insert(
            sha256(&[session.value.as_bytes()]),
            Session { csrf_token: session.csrf_token.clone(), expires_at: session.expires_at },
        );
        Ok(session)
    }

    /// Checks a session cookie value at `now`; returns the session's CSRF token and expiry.
    ///
    /// # Errors
    /// [`SessionError`]: not of the issued shape, not a live session (logged out, ended at the limit, or from before
    /// a restart), expired.
    pub fn verify_session(&self, value: &str, now: u64) -> Result<(String, u64), SessionError> {
        if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SessionError::Malformed);
        }
        let key = sha256(&[value.as_bytes()]);
        let mut sessions = lock(&self.sessions);
        let session = sessions.get(&key).cloned().ok_or(SessionError::Unknown)?;
        if session.expires_at <= now {
            sessions.remove(&key);
            return Err(SessionError::Expired);
        }
        Ok((session.csrf_token, session.expires_at))
    }

    /// Ends the session whose cookie value is `value` (logout). Returns whether it was live.
    pub fn end_session(&self, value: &str) -> bool {
        lock(&self.sessions).remove(&sha256(&[value.as_bytes()])).is_some()
    }

    /// Live sessions (expired ones not yet dropped included).
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Whether `peer` may try a login now; `Err(wait)` while it is locked out.
    ///
    /// # Errors
    /// How long the lockout still lasts.
    pub fn login_allowed(&self, peer: Option<IpAddr>) -> Result<(), Duration> {
        lock(&self.throttle).allowed(peer, Instant::now())
    }

    /// Counts a failed login from `peer`; returns the lockout it starts, if any.
    pub fn login_failed(&self, peer: Option<IpAddr>) -> Option<Duration> {
        lock(&self.throttle).failed(peer, Instant::now())
    }

    /// A successful login forgets `peer`'s failures.
    pub fn login_succeeded(&self, peer: Option<IpAddr>) {
        lock(&self.throttle).succeeded(peer);
    }
}

/// Failed logins per client address ([`FREE_FAILURES`], then a lockout doubling from [`FIRST_LOCKOUT`] up to
/// [`MAX_LOCKOUT`]), on tokio's clock. IPv6 addresses count by their /64, which one client usually holds whole.
/// Requests that did not come through the server (no peer address) share one entry. At most [`MAX_TRACKED_PEERS`]
/// entries: at the bound, entries quiet for [`FORGET_AFTER`] are dropped, then the longest-quiet one.
#[derive(Default)]
struct Throttle {
    peers: HashMap<IpAddr, Failures>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// The entry an address counts under.
fn throttle_key(peer: Option<IpAddr>) -> IpAddr {
    match peer {
        None => IpAddr::from([0, 0, 0, 0]),
        Some(IpAddr::V4(v4)) => IpAddr::V4(v4),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

impl Throttle {
    fn allowed(&mut self, peer: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let key = throttle_key(peer);
        match self.peers.get(&key) {
            Some(f) if now.saturating_duration_since(f.last) >= FORGET_AFTER => {
                self.peers.remove(&key);
                Ok(())
            }
            Some(Failures { locked_until: Some(until), .. }) if *until > now => Err(*until - now),
            _ => Ok(()),
        }
    }

    fn failed(&mut self, peer: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let key = throttle_key(peer);
        if !self.peers.contains_key(&key) && self.peers.len() >= MAX_TRACKED_PEERS {
            self.peers.retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
            if self.peers.len() >= MAX_TRACKED_PEERS {
                let quietest = self.peers.iter().min_by_key(|(_, f)| f.last).map(|(key, _)| *key);
                if let Some(quietest) = quietest {
                    self.peers.remove(&quietest);
                }
            }
        }
        let entry = self.peers.entry(key).or_insert(Failures { count: 0, last: now, locked_until: None });
        if now.saturating_duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let beyond = entry.count.checked_sub(FREE_FAILURES)?;
        let lockout = FIRST_LOCKOUT.saturating_mul(2_u32.saturating_pow(beyond.min(31))).min(MAX_LOCKOUT);
        entry.locked_until = Some(now + lockout);
        Some(lockout)
    }

    fn succeeded(&mut self, peer: Option<IpAddr>) {
        self.peers.remove(&throttle_key(peer));
    }
}

/// How an admin request proved itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer <ADMIN_TOKEN>`.
    Bearer,
    /// The session cookie, with its value and expiry.
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
            Ok((csrf_token, expires_at)) => {
                return Ok(Admin {
                    csrf_token: Some(csrf_token),
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
async fn check_csrf(expected: &str, request: Request) -> Result<Request, ApiError> {
    same_origin(request.headers(), request.uri())?;
    let missing = AdminError::Csrf("missing or wrong CSRF token: send the session's token in X-CSRF-Token");
    // Compared by digest: equal lengths, so constant time whatever was sent.
    let matches = |presented: &str| bool::from(sha256(&[presented.as_bytes()]).ct_eq(&sha256(&[expected.as_bytes()])));
    if let Some(token) = request.headers().get(CSRF_HEADER) {
        let token = token.to_str().map_err(|_| AdminError::Csrf("X-CSRF-Token is not text"))?;
        return if matches(token) { Ok(request) } else { Err(missing.into()) };
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
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|e| {
        if platform::http::BodyDeadlineElapsed::caused(&e) {
            ApiError::RequestTimeout
        } else {
            ApiError::PayloadTooLarge { limit: BODY_LIMIT }
        }
    })?;
    let found = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .ok()
        .and_then(|fields| fields.into_iter().find(|(name, _)| name == CSRF_FORM_FIELD))
        .is_some_and(|(_, token)| matches(&token));
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
    if let (Credential::Session { .. }, Some(expected)) = (&admin.credential, admin.csrf_token()) {
        if !request.method().is_safe() {
            request = match check_csrf(expected, request).await {
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
        AdminAuth::new(&token("0123456789abcdef-0123456789abcdef-token"))
    }

    fn token(text: &str) -> AdminToken {
        AdminToken::parse("ADMIN_TOKEN", text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn token_rules_name_the_variable_but_not_the_value() {
        let thirty_one = "0123456789abcdef0123456789abcde";
        for bad in
            ["", "short", thirty_one, "has a space in it, thirty-two chars long", "thirty-two-chars-long-but-é!!!!!!"]
        {
            let err = AdminToken::parse("ADMIN_TOKEN", bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("ADMIN_TOKEN=\"(redacted)\" is invalid: needs at least 32"), "{err}");
        }
        let token = token(" 0123456789abcdef0123456789abcdef ");
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
        assert!(AdminAuth::new(&token).token_matches("0123456789abcdef0123456789abcdef"));
    }

    fn start(auth: &AdminAuth, now: u64) -> NewSession {
        auth.start_session(now).unwrap_or_else(|e| panic!("OS RNG: {e}"))
    }

    /// Two logins in the same second get different sessions and CSRF tokens; each verifies until it expires or ends.
    #[test]
    fn sessions_are_random_and_end_on_logout_or_expiry() {
        let auth = auth();
        let (one, two) = (start(&auth, 1_000), start(&auth, 1_000));
        assert_ne!(one.value, two.value);
        assert_ne!(one.csrf_token, two.csrf_token);
        assert_ne!(one.value, one.csrf_token);
        assert_eq!(one.value.len(), 64);
        let expires_at = 1_000 + SESSION_TTL.as_secs();
        assert_eq!(auth.verify_session(&one.value, 1_001), Ok((one.csrf_token.clone(), expires_at)));
        assert_eq!(auth.verify_session(&one.value, expires_at), Err(SessionError::Expired));
        assert_eq!(auth.verify_session(&one.value, 1_001), Err(SessionError::Unknown), "expired sessions are dropped");
        assert!(auth.end_session(&two.value));
        assert_eq!(auth.verify_session(&two.value, 1_001), Err(SessionError::Unknown), "logout ends it");
        for malformed in ["", "1000", &"g".repeat(64), &"a".repeat(63)] {
            assert_eq!(auth.verify_session(malformed, 0), Err(SessionError::Malformed), "{malformed}");
        }
        assert_eq!(auth.verify_session(&"a".repeat(64), 0), Err(SessionError::Unknown), "never issued");
        // Another process (a restart, a new token) knows none of this one's sessions.
        let three = start(&auth, 1_000);
        let restarted = AdminAuth::new(&token("another-admin-token-0123456789abcdef"));
        assert_eq!(restarted.verify_session(&three.value, 1_001), Err(SessionError::Unknown));
    }

    /// At the bound, expired sessions go first, then the oldest login; the store never grows past it.
    #[test]
    fn the_session_store_is_bounded() {
        let auth = auth();
        let first = start(&auth, 1);
        let second = start(&auth, 2);
        for now in 3..=u64::try_from(MAX_SESSIONS).unwrap_or(u64::MAX) {
            start(&auth, now);
        }
        assert_eq!(auth.session_count(), MAX_SESSIONS);
        let newest = start(&auth, 10_000);
        assert_eq!(auth.session_count(), MAX_SESSIONS);
        assert_eq!(auth.verify_session(&first.value, 10_000), Err(SessionError::Unknown), "the oldest was ended");
        assert!(auth.verify_session(&second.value, 10_000).is_ok());
        assert!(auth.verify_session(&newest.value, 10_000).is_ok());
        // Once they have all expired, a new login drops them all.
        start(&auth, 10_000 + SESSION_TTL.as_secs() + 1);
        assert_eq!(auth.session_count(), 1);
    }

    /// [`FREE_FAILURES`] failures, then lockouts doubling up to [`MAX_LOCKOUT`]; other addresses are unaffected,
    /// success forgets, and so does an hour without failures. IPv6 counts by /64.
    #[tokio::test(start_paused = true)]
    async fn login_throttling_backs_off_per_address() {
        let auth = auth();
        let peer: Option<IpAddr> = Some([192, 0, 2, 1].into());
        for _ in 1..FREE_FAILURES {
            assert_eq!(auth.login_failed(peer), None);
            assert_eq!(auth.login_allowed(peer), Ok(()));
        }
        assert_eq!(auth.login_failed(peer), Some(FIRST_LOCKOUT));
        assert_eq!(auth.login_allowed(peer), Err(FIRST_LOCKOUT));
        assert_eq!(auth.login_allowed(Some([192, 0, 2, 2].into())), Ok(()), "another address");
        tokio::time::advance(FIRST_LOCKOUT).await;
        assert_eq!(auth.login_allowed(peer), Ok(()));
        assert_eq!(auth.login_failed(peer), Some(FIRST_LOCKOUT * 2));
        for _ in 0..20 {
            auth.login_failed(peer);
        }
        assert_eq!(auth.login_allowed(peer), Err(MAX_LOCKOUT));
        tokio::time::advance(FORGET_AFTER).await;
        assert_eq!(auth.login_allowed(peer), Ok(()));
        assert_eq!(auth.login_failed(peer), None, "forgotten after an hour without failures");
        auth.login_succeeded(peer);

        let v6 = |text: &str| text.parse::<IpAddr>().ok();
        for _ in 0..FREE_FAILURES {
            auth.login_failed(v6("2001:db8::1"));
        }
        assert!(auth.login_allowed(v6("2001:db8::ffff")).is_err(), "same /64");
        assert!(auth.login_allowed(v6("2001:db8:0:1::1")).is_ok(), "another /64");
    }

    /// The throttle forgets the longest-quiet address at its bound, never grows past it.
    #[tokio::test(start_paused = true)]
    async fn the_throttle_is_bounded() {
        let auth = auth();
        let n = u32::try_from(MAX_TRACKED_PEERS).unwrap_or(u32::MAX);
        for i in 0..=n {
            auth.login_failed(Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(lock(&auth.throttle).peers.len(), MAX_TRACKED_PEERS);
        assert!(!lock(&auth.throttle).peers.contains_key(&IpAddr::from([10, 0, 0, 0])), "the quietest went");
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
