//! The admin surface and API keys, driven through the real routers with `oneshot`.
//!
//! - Every admin route (login, logout, session, the console's routes, subscriptions) refuses a missing, wrong,
//!   expired or tampered credential, and does not exist (404) without `ADMIN_TOKEN`.
//! - The session cookie's attributes; sessions random per login, ended by logout and by a restart or a new token;
//!   CSRF on cookie-authenticated POSTs (token and origin), bearer requests exempt; login throttling per address.
//! - The console answers only to allowed `Host` names (421); subscriptions and the public routes to any.
//! - `ADMIN_PORT`: admin routes only on the admin router, 404 on the public one.
//! - API keys on order writes: off by default; 401 without, 403 wrong, 202 right (plain or hashed); never logged.
//!
//! Subscription behaviour itself (filters, validation) is in `router.rs`.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use domain::{EventType, OrderEvent};
use pedidos_api::admin::auth::{unix_now, FIRST_LOCKOUT, FREE_FAILURES, SESSION_COOKIE, SESSION_TTL};
use pedidos_api::admin::AdminToken;
use pedidos_api::api_keys::ApiKeys;
use pedidos_api::bus::{BoxFuture, BusError, EventBus, SubscriptionStatus};
use pedidos_api::console::Console;
use pedidos_api::{admin_router, public_router, router, AppState};
use serde_json::{json, Value};
use sha2::Digest;
use store::memory::MemoryOrders;
use tower::ServiceExt;

const TOKEN: &str = "admin-token-for-tests-0001-0123456789";
const HOST: &str = "127.0.0.1:8080";
const ORIGIN: &str = "http://127.0.0.1:8080";
const API_KEY: &str = "api-key-for-tests-000000001";
const CLIENTE: &str = "6f1c2a0e-9a51-4c1e-8d0b-0c8f4f1a2b3c";
const PEDIDO: &str = "0b9e4a52-3c1d-4f7e-9a2b-5d6c7e8f9a0b";

// ---------------------------------------------------------------------------------------------------------------
// Fakes and helpers

/// A bus that accepts everything and records subscriptions.
#[derive(Default)]
struct FakeBus {
    emails: Mutex<HashMap<String, SubscriptionStatus>>,
    subscribed: Mutex<Vec<(String, Option<Vec<EventType>>)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| panic!("mutex poisoned: {e}"))
}

impl EventBus for FakeBus {
    fn publish<'a>(&'a self, _: &'a OrderEvent, _: &'a str) -> BoxFuture<'a, Result<String, BusError>> {
        Box::pin(async { Ok("fake-message".to_owned()) })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    fn email_status<'a>(&'a self, email: &'a str) -> BoxFuture<'a, Result<Option<SubscriptionStatus>, BusError>> {
        Box::pin(async move { Ok(lock(&self.emails).get(email).copied()) })
    }

    fn subscribe_email<'a>(
        &'a self,
        email: &'a str,
        event_types: Option<&'a [EventType]>,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            lock(&self.subscribed).push((email.to_owned(), event_types.map(<[EventType]>::to_vec)));
            lock(&self.emails).insert(email.to_owned(), SubscriptionStatus::Pendiente);
            Ok(())
        })
    }
}

fn console(orders: Arc<MemoryOrders>) -> Arc<Console> {
    support::offline_console(orders)
}

fn token() -> AdminToken {
    AdminToken::parse("ADMIN_TOKEN", TOKEN).unwrap_or_else(|e| panic!("{e}"))
}

/// A session value of the issued shape that no app ever issued.
const NEVER_ISSUED: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct App {
    router: Router,
    bus: Arc<FakeBus>,
}

/// How the app under test is configured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Surface {
    /// `ADMIN_TOKEN` unset.
    Off,
    /// `ADMIN_TOKEN` set, one port.
    On,
    /// `ADMIN_PORT` set: the main port's router.
    Public,
    /// `ADMIN_PORT` set: the admin port's router.
    AdminPort,
}

impl App {
    fn with(surface: Surface, keys: Option<ApiKeys>) -> Self {
        let bus = Arc::new(FakeBus::default());
        let orders = Arc::new(MemoryOrders::new());
        let mut state = AppState::new(bus.clone(), orders.clone()).with_console(console(orders));
        if surface != Surface::Off {
            state = state.with_admin(&token());
        }
        if let Some(keys) = keys {
            state = state.with_api_keys(keys);
        }
        let router = match surface {
            Surface::Off | Surface::On => router(state),
            Surface::Public => public_router(state),
            Surface::AdminPort => admin_router(state),
        };
        Self { router, bus }
    }

    fn new(surface: Surface) -> Self {
        Self::with(surface, None)
    }

    /// One port, admin surface on with `token` instead of [`TOKEN`].
    fn with_token(token: &str) -> Self {
        let bus = Arc::new(FakeBus::default());
        let orders = Arc::new(MemoryOrders::new());
        let token = AdminToken::parse("ADMIN_TOKEN", token).unwrap_or_else(|e| panic!("{e}"));
        let state = AppState::new(bus.clone(), orders.clone()).with_console(console(orders)).with_admin(&token);
        Self { router: router(state), bus }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response =
            self.router.clone().oneshot(request).await.unwrap_or_else(|e| panic!("router failed (Infallible): {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("reading the response body: {e}"))
            .to_vec();
        Reply { status, headers, body }
    }

    /// Logs in with `TOKEN` and returns the session cookie's value.
    async fn login(&self) -> String {
        let reply = self.send(login_request(TOKEN, &[])).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
        let cookie = reply.header("set-cookie").unwrap_or_else(|| panic!("no Set-Cookie: {:?}", reply.headers));
        let value = cookie.split(';').next().and_then(|pair| pair.strip_prefix("pedidos_admin="));
        value.unwrap_or_else(|| panic!("not the session cookie: {cookie}")).to_owned()
    }

    /// The CSRF token of `session`, as the console page gets it.
    async fn csrf(&self, session: &str) -> String {
        let cookie = format!("{SESSION_COOKIE}={session}");
        let reply =
            self.send(request(Method::GET, "/console/api/session", &[("cookie", &cookie)], Body::empty())).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()["csrfToken"].as_str().unwrap_or_else(|| panic!("no csrfToken: {}", reply.text())).to_owned()
    }
}

/// A request with `Host` set (as every HTTP/1.1 request has) and `headers`.
fn request(method: Method, uri: &str, headers: &[(&str, &str)], body: Body) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri).header(header::HOST, HOST);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body).unwrap_or_else(|e| panic!("building request {uri}: {e}"))
}

/// `request` as if it came from `ip` (the server records the peer's address the same way).
fn from(mut request: Request<Body>, ip: [u8; 4]) -> Request<Body> {
    request.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((ip, 40_000))));
    request
}

fn login_request(token: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let body = serde_urlencoded::to_string([("token", token)]).unwrap_or_else(|e| panic!("{e}"));
    let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    request(Method::POST, "/console/login", &all, Body::from(body))
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with `status`.
    fn problem(&self, status: StatusCode, context: &str) -> Value {
        assert_eq!(self.status, status, "{context}: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{context}: {}", self.text());
        let body = self.json();
        assert_eq!(body["status"], json!(status.as_u16()), "{context}: {body}");
        body
    }
}

/// One admin route as a client would call it once authenticated: a body for the POSTs.
struct Route {
    method: Method,
    uri: &'static str,
    content_type: Option<&'static str>,
    body: &'static str,
}

fn route(method: Method, uri: &'static str) -> Route {
    Route { method, uri, content_type: None, body: "" }
}

fn json_route(uri: &'static str, body: &'static str) -> Route {
    Route { method: Method::POST, uri, content_type: Some("application/json"), body }
}

/// Every admin route but the login: the surface's own, the console's, the subscriptions'.
fn protected_routes() -> Vec<Route> {
    vec![
        route(Method::POST, "/console/logout"),
        route(Method::GET, "/console/api/session"),
        route(Method::GET, "/console"),
        route(Method::GET, "/console/console.js"),
        route(Method::GET, "/console/console.css"),
        route(Method::GET, "/console/events"),
        route(Method::GET, "/console/api/dlq/process"),
        json_route("/console/api/dlq/process/redrive", r#"{"all": true}"#),
        json_route("/console/api/dlq/logistics/delete", r#"{"all": true}"#),
        json_route("/api/suscripcion", r#"{"email": "ops@example.com"}"#),
        route(Method::GET, "/api/suscripcion/estado/ops@example.com"),
    ]
}

impl Route {
    fn request(&self, headers: &[(&str, &str)]) -> Request<Body> {
        let mut all = headers.to_vec();
        if let Some(content_type) = self.content_type {
            all.push(("content-type", content_type));
        }
        request(self.method.clone(), self.uri, &all, Body::from(self.body))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Off, and the port split

/// Without `ADMIN_TOKEN`, every admin route answers 404 problem+json, as if it did not exist, whatever the request
/// carries; the public routes are unaffected.
#[tokio::test]
async fn every_admin_route_is_404_without_admin_token() {
    let app = App::new(Surface::Off);
    let bearer = format!("Bearer {TOKEN}");
    let cookie = format!("{SESSION_COOKIE}={NEVER_ISSUED}");
    let mut routes = protected_routes();
    routes.push(route(Method::GET, "/console/login"));
    routes.push(Route {
        method: Method::POST,
        uri: "/console/login",
        content_type: Some("application/x-www-form-urlencoded"),
        body: "token=admin-token-for-tests-0001-0123456789",
    });
    for route in &routes {
        for headers in [vec![], vec![("authorization", bearer.as_str())], vec![("cookie", cookie.as_str())]] {
            let reply = app.send(route.request(&headers)).await;
            reply.problem(StatusCode::NOT_FOUND, &format!("{} {} {headers:?}", route.method, route.uri));
        }
    }
    let reply = app.send(request(Method::GET, "/health", &[], Body::empty())).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// With `ADMIN_PORT`, the main port's router answers 404 for every admin route (with a valid credential too), and the
/// admin port's router serves them and nothing else.
#[tokio::test]
async fn admin_port_splits_the_surface() {
    let bearer = format!("Bearer {TOKEN}");
    let public = App::new(Surface::Public);
    for route in protected_routes().iter().chain([&route(Method::GET, "/console/login")]) {
        let reply = public.send(route.request(&[("authorization", &bearer)])).await;
        reply.problem(StatusCode::NOT_FOUND, &format!("public {} {}", route.method, route.uri));
    }
    assert_eq!(public.send(request(Method::GET, "/health", &[], Body::empty())).await.status, StatusCode::OK);

    let admin = App::new(Surface::AdminPort);
    let session =
        admin.send(request(Method::GET, "/console/api/session", &[("authorization", &bearer)], Body::empty())).await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.text());
    let page = admin.send(request(Method::GET, "/console/login", &[], Body::empty())).await;
    assert_eq!(page.status, StatusCode::OK);
    let subscribe = json_route("/api/suscripcion", r#"{"email": "ops@example.com"}"#);
    assert_eq!(admin.send(subscribe.request(&[("authorization", &bearer)])).await.status, StatusCode::CREATED);
    // Nothing public on the admin port.
    for (method, uri) in [(Method::GET, "/health"), (Method::GET, "/openapi.json"), (Method::GET, "/metrics")] {
        admin.send(request(method, uri, &[], Body::empty())).await.problem(StatusCode::NOT_FOUND, uri);
    }
    let order = json!({"clienteId": CLIENTE, "total": 1}).to_string();
    let post = request(Method::POST, "/api/pedidos", &[("content-type", "application/json")], Body::from(order));
    admin.send(post).await.problem(StatusCode::NOT_FOUND, "POST /api/pedidos on the admin port");
}

// ---------------------------------------------------------------------------------------------------------------
// Refusing credentials

/// Every protected admin route refuses a request without a credential, with a wrong bearer token, another scheme,
/// a logged-out session, a tampered one, a malformed one, one never issued, or one from another instance (a restart,
/// a new token): 401 problem+json with a Bearer challenge, and the handler never runs (nothing subscribed).
#[tokio::test]
async fn every_admin_route_refuses_missing_wrong_expired_or_tampered_credentials() {
    let app = App::new(Surface::On);
    let valid = app.login().await;
    let logged_out = app.login().await;
    let csrf = app.csrf(&logged_out).await;
    let cookie = format!("{SESSION_COOKIE}={logged_out}");
    let logout =
        request(Method::POST, "/console/logout", &[("cookie", &cookie), ("x-csrf-token", &csrf)], Body::empty());
    assert_eq!(app.send(logout).await.status, StatusCode::SEE_OTHER);
    let mut tampered = valid.clone();
    tampered.replace_range(..1, if valid.starts_with('0') { "1" } else { "0" });
    let foreign = App::new(Surface::On).login().await;
    let wrong_bearer = "Bearer admin-token-for-tests-0002-0123456789".to_owned();
    let credentials: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("none", vec![]),
        ("wrong bearer", vec![("authorization", wrong_bearer.clone())]),
        ("token as Basic", vec![("authorization", format!("Basic {TOKEN}"))]),
        ("bare token", vec![("authorization", TOKEN.to_owned())]),
        ("empty bearer", vec![("authorization", "Bearer ".to_owned())]),
        ("logged-out session", vec![("cookie", format!("{SESSION_COOKIE}={logged_out}"))]),
        ("tampered session", vec![("cookie", format!("{SESSION_COOKIE}={tampered}"))]),
        ("never-issued session", vec![("cookie", format!("{SESSION_COOKIE}={NEVER_ISSUED}"))]),
        ("malformed session", vec![("cookie", format!("{SESSION_COOKIE}=garbage"))]),
        ("session of another instance", vec![("cookie", format!("{SESSION_COOKIE}={foreign}"))]),
        ("token as cookie", vec![("cookie", format!("{SESSION_COOKIE}={TOKEN}"))]),
        // A wrong bearer is not rescued by a valid cookie.
        (
            "wrong bearer, valid cookie",
            vec![("authorization", wrong_bearer), ("cookie", format!("{SESSION_COOKIE}={valid}"))],
        ),
    ];
    for route in protected_routes() {
        for (label, headers) in &credentials {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let reply = app.send(route.request(&headers)).await;
            let context = format!("{} {} with {label}", route.method, route.uri);
            let problem = reply.problem(StatusCode::UNAUTHORIZED, &context);
            assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"pedidos-admin\""), "{context}");
            assert_eq!(reply.header("cache-control"), Some("no-store"), "{context}");
            assert!(problem["detail"].as_str().is_some_and(|d| !d.contains(TOKEN)), "{context}: {problem}");
            // A cookie that was refused is removed; nothing else touches cookies.
            let bad_cookie = headers.iter().any(|(name, _)| *name == "cookie") && !label.starts_with("wrong bearer");
            let cleared = reply.header("set-cookie").is_some_and(|c| c.starts_with("pedidos_admin=;"));
            assert_eq!(cleared, bad_cookie, "{context}: {:?}", reply.header("set-cookie"));
        }
    }
    assert!(lock(&app.bus.subscribed).is_empty());
}

/// A browser navigating to the console without a valid session is sent to the login page (and a bad cookie is
/// removed); an API client gets the 401.
#[tokio::test]
async fn browsers_without_a_session_are_sent_to_the_login_page() {
    let app = App::new(Surface::On);
    let html = ("accept", "text/html,application/xhtml+xml");
    let reply = app.send(request(Method::GET, "/console", &[html], Body::empty())).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.header("location"), Some("/console/login"));
    assert!(reply.header("set-cookie").is_none());

    let expired = format!("{SESSION_COOKIE}={NEVER_ISSUED}");
    let reply = app.send(request(Method::GET, "/console", &[html, ("cookie", &expired)], Body::empty())).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let cleared = reply.header("set-cookie").unwrap_or_default();
    assert!(cleared.starts_with("pedidos_admin=;") && cleared.contains("Max-Age=0"), "{cleared}");

    let api = app.send(request(Method::GET, "/console", &[("accept", "application/json")], Body::empty())).await;
    api.problem(StatusCode::UNAUTHORIZED, "GET /console as JSON");
    // A POST is never a navigation: 401 even from a browser.
    let post = app.send(request(Method::POST, "/console/logout", &[html], Body::empty())).await;
    post.problem(StatusCode::UNAUTHORIZED, "POST /console/logout as HTML");
}

// ---------------------------------------------------------------------------------------------------------------
// Login and the session

/// The login page is served from the binary, with no script and no external asset, under a strict CSP; its error
/// message is fixed text (nothing from the request is echoed).
#[tokio::test]
async fn login_page_is_self_contained_and_echoes_nothing() {
    let app = App::new(Surface::On);
    let reply = app.send(request(Method::GET, "/console/login", &[], Body::empty())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.header("content-type").is_some_and(|c| c.starts_with("text/html")));
    assert!(reply.header("content-security-policy").is_some_and(|c| c.contains("default-src 'none'")));
    assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    let page = reply.text();
    assert!(page.contains(r#"action="/console/login""#) && page.contains(r#"name="token""#), "{page}");
    for forbidden in ["<script", "http://", "https://", "role=\"alert\""] {
        assert!(!page.contains(forbidden), "{forbidden} in {page}");
    }
    let uri = "/console/login?error=%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let failed = app.send(request(Method::GET, uri, &[], Body::empty())).await.text();
    assert!(failed.contains("That token is not valid.") && !failed.contains("alert(1)") && !failed.contains("<script"));
}

/// The right token sets an HttpOnly, Secure, SameSite=Strict session cookie for 8 hours and redirects to the
/// console; the cookie then authenticates, and the login page sends the browser on to the console.
#[tokio::test]
async fn login_sets_a_strict_session_cookie() {
    let app = App::new(Surface::On);
    let reply = app.send(login_request(TOKEN, &[("origin", ORIGIN)])).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    assert_eq!(reply.header("location"), Some("/console"));
    let cookie = reply.header("set-cookie").unwrap_or_default().to_owned();
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(attributes[0].starts_with("pedidos_admin="), "{cookie}");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/", &format!("Max-Age={}", SESSION_TTL.as_secs())]
    {
        assert!(attributes.contains(&attribute), "{attribute} missing from {cookie}");
    }
    assert!(!cookie.contains(TOKEN), "the token itself is never the cookie");

    let session = app.login().await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let reply = app.send(request(Method::GET, "/console/api/session", &[("cookie", &cookie)], Body::empty())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["authenticatedBy"], json!("cookie"));
    let csrf = body["csrfToken"].as_str().unwrap_or_default();
    assert!(csrf.len() == 64 && csrf != session, "{body}");
    let expires_at = body["expiresAt"].as_u64().unwrap_or_default();
    assert!(expires_at > unix_now() + SESSION_TTL.as_secs() - 60, "{body}");
    assert_eq!(reply.header("cache-control"), Some("no-store"));

    let page = app.send(request(Method::GET, "/console/login", &[("cookie", &cookie)], Body::empty())).await;
    assert_eq!((page.status, page.header("location")), (StatusCode::SEE_OTHER, Some("/console")));
    let console = app.send(request(Method::GET, "/console", &[("cookie", &cookie)], Body::empty())).await;
    assert_eq!(console.status, StatusCode::OK);
}

/// A wrong token sets no cookie: a browser goes back to the form with a message, anything else gets a 401. A form
/// from another origin, or a body that is not a form, is refused before the token is looked at.
#[tokio::test]
async fn login_refuses_wrong_tokens_foreign_origins_and_non_forms() {
    let app = App::new(Surface::On);
    let almost = &TOKEN[..TOKEN.len() - 1];
    let longer = format!("{TOKEN}1");
    let upper = TOKEN.to_ascii_uppercase();
    // From distinct addresses: these failures must not add up to a lockout.
    for (n, wrong) in ["", almost, &longer, &upper].into_iter().enumerate() {
        let reply = app.send(from(login_request(wrong, &[]), [198, 51, 100, 1 + u8::try_from(n).unwrap_or(0)])).await;
        reply.problem(StatusCode::UNAUTHORIZED, wrong);
        assert!(reply.header("set-cookie").is_none());
        let browser = app
            .send(from(
                login_request(wrong, &[("accept", "text/html")]),
                [198, 51, 100, 101 + u8::try_from(n).unwrap_or(0)],
            ))
            .await;
        assert_eq!(
            (browser.status, browser.header("location")),
            (StatusCode::SEE_OTHER, Some("/console/login?error=1"))
        );
        assert!(browser.header("set-cookie").is_none());
    }
    let missing = request(
        Method::POST,
        "/console/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        Body::empty(),
    );
    app.send(missing).await.problem(StatusCode::UNAUTHORIZED, "no token field");

    for headers in [[("origin", "https://evil.example")], [("sec-fetch-site", "cross-site")], [("origin", "null")]] {
        let reply = app.send(login_request(TOKEN, &headers)).await;
        reply.problem(StatusCode::FORBIDDEN, &format!("{headers:?}"));
        assert!(reply.header("set-cookie").is_none());
    }
    let json_login = request(
        Method::POST,
        "/console/login",
        &[("content-type", "application/json")],
        Body::from(json!({"token": TOKEN}).to_string()),
    );
    app.send(json_login).await.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "JSON login");
}

/// Logout removes the cookie, goes back to the login page and ends the session: the old cookie is refused from then
/// on (a copy of it included), while another session of the same operator goes on.
#[tokio::test]
async fn logout_ends_the_session() {
    let app = App::new(Surface::On);
    let session = app.login().await;
    let other = app.login().await;
    let csrf = app.csrf(&session).await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let headers = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str()), ("origin", ORIGIN)];
    let reply = app.send(request(Method::POST, "/console/logout", &headers, Body::empty())).await;
    assert_eq!((reply.status, reply.header("location")), (StatusCode::SEE_OTHER, Some("/console/login")));
    let cleared = reply.header("set-cookie").unwrap_or_default();
    assert!(cleared.starts_with("pedidos_admin=;") && cleared.contains("Max-Age=0"), "{cleared}");
    let after = app.send(request(Method::GET, "/console/api/session", &[("cookie", &cookie)], Body::empty())).await;
    after.problem(StatusCode::UNAUTHORIZED, "the logged-out cookie");
    let again = app.send(request(Method::POST, "/console/logout", &headers, Body::empty())).await;
    again.problem(StatusCode::UNAUTHORIZED, "logging out twice");
    assert_eq!(app.csrf(&other).await.len(), 64, "the other session goes on");
}

/// Two logins, even in the same second, get different sessions with different CSRF tokens, and one session's token
/// is refused on the other's POSTs.
#[tokio::test]
async fn every_login_gets_its_own_session_and_csrf_token() {
    let app = App::new(Surface::On);
    let (one, two) = (app.login().await, app.login().await);
    assert_ne!(one, two);
    let (csrf_one, csrf_two) = (app.csrf(&one).await, app.csrf(&two).await);
    assert_ne!(csrf_one, csrf_two);
    let cookie = format!("{SESSION_COOKIE}={one}");
    let crossed = json_route("/api/suscripcion", r#"{"email": "ops@example.com"}"#)
        .request(&[("cookie", &cookie), ("x-csrf-token", &csrf_two)]);
    app.send(crossed).await.problem(StatusCode::FORBIDDEN, "another session's CSRF token");
}

/// A restart (which is how `ADMIN_TOKEN` is rotated) ends every session: a new process, with the same token or
/// another, refuses the old cookies; the new token logs in, the old one does not.
#[tokio::test]
async fn a_restart_or_a_new_token_ends_every_session() {
    let before = App::new(Surface::On);
    let session = before.login().await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let same_token = App::new(Surface::On);
    let reply =
        same_token.send(request(Method::GET, "/console/api/session", &[("cookie", &cookie)], Body::empty())).await;
    reply.problem(StatusCode::UNAUTHORIZED, "after a restart");

    let rotated_token = "rotated-admin-token-0123456789abcdef";
    let rotated = App::with_token(rotated_token);
    let reply = rotated.send(request(Method::GET, "/console/api/session", &[("cookie", &cookie)], Body::empty())).await;
    reply.problem(StatusCode::UNAUTHORIZED, "after a token rotation");
    rotated.send(login_request(TOKEN, &[])).await.problem(StatusCode::UNAUTHORIZED, "the old token");
    assert_eq!(rotated.send(login_request(rotated_token, &[])).await.status, StatusCode::SEE_OTHER);
}

/// After [`FREE_FAILURES`] wrong tokens from one address, that address gets 429 with `Retry-After` (even with the
/// right token) while other addresses log in; every refusal is logged with the client address.
#[tokio::test]
async fn repeated_login_failures_are_throttled_per_address() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt().with_writer(capture.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = App::new(Surface::On);
    let attacker = [203, 0, 113, 7];
    for n in 0..FREE_FAILURES {
        let reply = app.send(from(login_request("wrong-token", &[]), attacker)).await;
        reply.problem(StatusCode::UNAUTHORIZED, &format!("failure {n}"));
    }
    for token in ["wrong-token", TOKEN] {
        let reply = app.send(from(login_request(token, &[]), attacker)).await;
        reply.problem(StatusCode::TOO_MANY_REQUESTS, "locked out");
        let retry_after: u64 = reply.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or_default();
        assert!((1..=FIRST_LOCKOUT.as_secs().max(1)).contains(&retry_after), "Retry-After: {retry_after}");
        assert!(reply.header("set-cookie").is_none());
    }
    let reply = app.send(from(login_request(TOKEN, &[]), [203, 0, 113, 8])).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "another address logs in");
    drop(_guard);
    let logs = String::from_utf8_lossy(&lock(&capture.0)).into_owned();
    let refused: Vec<&str> = logs.lines().filter(|line| line.contains("admin login refused")).collect();
    assert_eq!(refused.len(), usize::try_from(FREE_FAILURES).unwrap_or(0) + 2, "{logs}");
    assert!(refused.iter().all(|line| line.contains("client=203.0.113.7")), "{logs}");
    assert!(refused.iter().any(|line| line.contains("too many failures")), "{logs}");
}

// ---------------------------------------------------------------------------------------------------------------
// CSRF

/// A cookie-authenticated POST needs the session's CSRF token (header, or `csrfToken` in a form body) and, when the
/// browser says where it comes from, this origin: 403 otherwise, and nothing happens.
#[tokio::test]
async fn cookie_posts_need_the_csrf_token_and_this_origin() {
    let app = App::new(Surface::On);
    let session = app.login().await;
    let other_session = app.login().await;
    let csrf = app.csrf(&session).await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let subscribe = json_route("/api/suscripcion", r#"{"email": "ops@example.com"}"#);
    let foreign_token = app.csrf(&other_session).await;
    let refused: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no token", vec![("cookie", &cookie)]),
        ("empty token", vec![("cookie", &cookie), ("x-csrf-token", "")]),
        ("wrong token", vec![("cookie", &cookie), ("x-csrf-token", "0000")]),
        ("another session's token", vec![("cookie", &cookie), ("x-csrf-token", &foreign_token)]),
        ("the session itself as token", vec![("cookie", &cookie), ("x-csrf-token", &session)]),
        ("foreign origin", vec![("cookie", &cookie), ("x-csrf-token", &csrf), ("origin", "https://evil.example")]),
        ("other port", vec![("cookie", &cookie), ("x-csrf-token", &csrf), ("origin", "http://127.0.0.1:9999")]),
        ("null origin", vec![("cookie", &cookie), ("x-csrf-token", &csrf), ("origin", "null")]),
        ("cross-site fetch", vec![("cookie", &cookie), ("x-csrf-token", &csrf), ("sec-fetch-site", "cross-site")]),
        ("same-site fetch", vec![("cookie", &cookie), ("x-csrf-token", &csrf), ("sec-fetch-site", "same-site")]),
    ];
    for route in [
        &subscribe,
        &json_route("/console/api/dlq/process/redrive", r#"{"all": true}"#),
        &route(Method::POST, "/console/logout"),
    ] {
        for (label, headers) in &refused {
            let reply = app.send(route.request(headers)).await;
            reply.problem(StatusCode::FORBIDDEN, &format!("{} {label}", route.uri));
        }
    }
    assert!(lock(&app.bus.subscribed).is_empty());

    let same_origin = [
        ("cookie", cookie.as_str()),
        ("x-csrf-token", csrf.as_str()),
        ("origin", ORIGIN),
        ("sec-fetch-site", "same-origin"),
    ];
    assert_eq!(app.send(subscribe.request(&same_origin)).await.status, StatusCode::CREATED);
    // Without Origin or Sec-Fetch-Site (not a browser), the token alone is enough.
    let bare = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let status = json_route("/api/suscripcion", r#"{"email": "ops2@example.com"}"#);
    assert_eq!(app.send(status.request(&bare)).await.status, StatusCode::CREATED);
    let wrong_form = request(
        Method::POST,
        "/console/logout",
        &[("cookie", &cookie), ("content-type", "application/x-www-form-urlencoded")],
        Body::from("csrfToken=nope"),
    );
    app.send(wrong_form).await.problem(StatusCode::FORBIDDEN, "form with a wrong token");
    // GETs need no token: SameSite=Strict keeps the cookie off cross-site requests.
    let get = app
        .send(request(Method::GET, "/api/suscripcion/estado/ops@example.com", &[("cookie", &cookie)], Body::empty()))
        .await;
    assert_eq!(get.status, StatusCode::OK, "{}", get.text());
    // A plain HTML form carries it as a field.
    let form = format!("csrfToken={csrf}");
    let logout = request(
        Method::POST,
        "/console/logout",
        &[("cookie", &cookie), ("content-type", "application/x-www-form-urlencoded"), ("origin", ORIGIN)],
        Body::from(form),
    );
    assert_eq!(app.send(logout).await.status, StatusCode::SEE_OTHER);
}

/// Bearer requests carry no ambient credential, so they need no CSRF token.
#[tokio::test]
async fn bearer_requests_skip_csrf() {
    let app = App::new(Surface::On);
    let bearer = format!("Bearer {TOKEN}");
    let subscribe = json_route("/api/suscripcion", r#"{"email": "ops@example.com", "eventTypes": ["PedidoCreado"]}"#);
    let reply = app.send(subscribe.request(&[("authorization", &bearer)])).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(*lock(&app.bus.subscribed), [("ops@example.com".to_owned(), Some(vec![EventType::PedidoCreado]))]);
    let session =
        app.send(request(Method::GET, "/console/api/session", &[("authorization", &bearer)], Body::empty())).await;
    assert_eq!(session.json(), json!({"authenticatedBy": "bearer", "csrfToken": null, "expiresAt": null}));
}

// ---------------------------------------------------------------------------------------------------------------
// API keys on order writes

fn order_request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let body = if method == Method::PUT {
        json!({"clienteId": CLIENTE, "total": 10, "version": 2})
    } else {
        json!({"clienteId": CLIENTE, "total": 10})
    };
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request(method, uri, &all, Body::from(body.to_string()))
}

fn hashed(key: &str) -> String {
    let digest = sha2::Sha256::digest(key.as_bytes());
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Without `API_KEYS`, order writes need no key (local runs and tests).
#[tokio::test]
async fn order_writes_are_open_without_api_keys() {
    let app = App::new(Surface::Off);
    let put_uri = format!("/api/pedidos/{PEDIDO}");
    assert_eq!(app.send(order_request(Method::POST, "/api/pedidos", &[])).await.status, StatusCode::ACCEPTED);
    assert_eq!(app.send(order_request(Method::PUT, &put_uri, &[])).await.status, StatusCode::ACCEPTED);
}

/// With `API_KEYS`, POST and PUT need a configured key: 401 (with an `ApiKey` challenge) without one, 403 for a
/// wrong one, and with a plain or a hashed entry, in `X-Api-Key` or as a bearer token, the POST is accepted and the
/// PUT of an order not stored yet is a 404 (its owner is not known). Order reads need a key too; health and the
/// document do not. (Whose orders a key reaches: `clients.rs`.)
#[tokio::test]
async fn order_writes_need_a_configured_api_key() {
    let second = "second-api-key-0123456789";
    let keys = ApiKeys::parse("API_KEYS", &format!("{API_KEY},{}", hashed(second))).unwrap_or_else(|e| panic!("{e}"));
    let app = App::with(Surface::Off, Some(keys));
    let put_uri = format!("/api/pedidos/{PEDIDO}");
    for (method, uri) in [(Method::POST, "/api/pedidos"), (Method::PUT, put_uri.as_str())] {
        let context = format!("{method} {uri}");
        let missing = app.send(order_request(method.clone(), uri, &[])).await;
        missing.problem(StatusCode::UNAUTHORIZED, &context);
        assert_eq!(missing.header("www-authenticate"), Some("ApiKey"), "{context}");
        for wrong in [&format!("{API_KEY}x"), "api-key-for-tests-000000002", &hashed(API_KEY), " "] {
            let reply = app.send(order_request(method.clone(), uri, &[("x-api-key", wrong)])).await;
            let problem = reply.problem(StatusCode::FORBIDDEN, &format!("{context} with {wrong}"));
            assert!(!problem.to_string().contains(wrong.trim()) || wrong.trim().is_empty(), "{problem}");
        }
        let bearer_wrong =
            app.send(order_request(method.clone(), uri, &[("authorization", "Bearer nope-nope-nope-nope")])).await;
        bearer_wrong.problem(StatusCode::FORBIDDEN, &context);
        for good in [
            ("x-api-key", API_KEY.to_owned()),
            ("x-api-key", second.to_owned()),
            ("authorization", format!("Bearer {API_KEY}")),
        ] {
            let reply = app.send(order_request(method.clone(), uri, &[(good.0, &good.1)])).await;
            let expected = if method == Method::POST { StatusCode::ACCEPTED } else { StatusCode::NOT_FOUND };
            assert_eq!(reply.status, expected, "{context} with {}: {}", good.0, reply.text());
        }
    }
    // A missing key is reported before the body is looked at.
    let bad_body = request(Method::POST, "/api/pedidos", &[("content-type", "text/plain")], Body::from("x"));
    app.send(bad_body).await.problem(StatusCode::UNAUTHORIZED, "no key and a bad body");
    for uri in [format!("/api/pedidos/{PEDIDO}"), format!("/api/clientes/{CLIENTE}/pedidos")] {
        app.send(request(Method::GET, &uri, &[], Body::empty())).await.problem(StatusCode::UNAUTHORIZED, &uri);
    }
    for uri in ["/health", "/openapi.json"] {
        assert_eq!(app.send(request(Method::GET, uri, &[], Body::empty())).await.status, StatusCode::OK, "{uri}");
    }
}

/// Captured log output.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Nothing logged at any level, accepted or refused, contains an API key, the admin token, a session cookie or a
/// CSRF token.
#[tokio::test]
async fn credentials_never_reach_the_logs() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let keys = ApiKeys::parse("API_KEYS", API_KEY).unwrap_or_else(|e| panic!("{e}"));
    let app = App::with(Surface::On, Some(keys));
    let wrong_key = "wrong-api-key-that-must-not-be-logged";
    let session = app.login().await;
    let csrf = app.csrf(&session).await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let requests = vec![
        order_request(Method::POST, "/api/pedidos", &[("x-api-key", API_KEY)]),
        order_request(Method::POST, "/api/pedidos", &[("x-api-key", wrong_key)]),
        order_request(Method::POST, "/api/pedidos", &[("authorization", &format!("Bearer {wrong_key}"))]),
        login_request(TOKEN, &[]),
        login_request(wrong_key, &[]),
        request(Method::GET, "/console/api/session", &[("authorization", &format!("Bearer {TOKEN}"))], Body::empty()),
        request(
            Method::GET,
            "/console/api/session",
            &[("authorization", &format!("Bearer {wrong_key}"))],
            Body::empty(),
        ),
        json_route("/api/suscripcion", r#"{"email": "ops@example.com"}"#)
            .request(&[("cookie", &cookie), ("x-csrf-token", &csrf)]),
        json_route("/api/suscripcion", r#"{"email": "ops@example.com"}"#)
            .request(&[("cookie", &cookie), ("x-csrf-token", wrong_key)]),
    ];
    for request in requests {
        let _ = app.send(request).await;
    }
    drop(_guard);
    let logs = String::from_utf8_lossy(&lock(&capture.0)).into_owned();
    assert!(
        logs.contains("order request refused") && logs.contains("admin request refused"),
        "nothing captured: {logs}"
    );
    for secret in [API_KEY, wrong_key, TOKEN, session.as_str(), csrf.as_str()] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The document

/// The OpenAPI document declares both schemes: bearer on the subscription routes, the API key (optional) on writes,
/// and either on order reads (an operator reads every order).
#[tokio::test]
async fn openapi_documents_the_security_schemes() {
    let app = App::new(Surface::Off);
    let doc = app.send(request(Method::GET, "/openapi.json", &[], Body::empty())).await.json();
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["adminBearer"]["scheme"], json!("bearer"), "{schemes}");
    assert_eq!((&schemes["apiKey"]["in"], &schemes["apiKey"]["name"]), (&json!("header"), &json!("X-Api-Key")));
    for (path, method) in [("/api/suscripcion", "post"), ("/api/suscripcion/estado/{email}", "get")] {
        assert_eq!(doc["paths"][path][method]["security"], json!([{"adminBearer": []}]), "{path}");
        assert!(doc["paths"][path][method]["responses"]["401"].is_object(), "{path}");
    }
    for (path, method) in [("/api/pedidos", "post"), ("/api/pedidos/{pedidoId}", "put")] {
        assert_eq!(doc["paths"][path][method]["security"], json!([{}, {"apiKey": []}]), "{path}");
        for status in ["401", "403"] {
            assert!(doc["paths"][path][method]["responses"][status].is_object(), "{path} {status}");
        }
    }
    for path in ["/api/pedidos/{pedidoId}", "/api/clientes/{clienteId}/pedidos"] {
        assert_eq!(doc["paths"][path]["get"]["security"], json!([{}, {"apiKey": []}, {"adminBearer": []}]), "{path}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Host check and logs

/// A request with `host` as its `Host` header.
fn to_host(method: Method, uri: &str, host: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri).header(header::HOST, host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap_or_else(|e| panic!("building request {uri}: {e}"))
}

/// The console and its login answer only to loopback names and `ALLOWED_HOSTS` (421 problem+json otherwise, with a
/// valid credential too: DNS rebinding); the subscription routes, the order API and the health checks answer to any.
#[tokio::test]
async fn the_console_answers_only_to_allowed_host_names() {
    let app = App::new(Surface::On);
    let bearer = format!("Bearer {TOKEN}");
    for host in ["evil.example", "evil.example:8080", "127.0.0.2:8080", "localhost.evil.example"] {
        for (method, uri) in
            [(Method::GET, "/console/login"), (Method::GET, "/console"), (Method::POST, "/console/login")]
        {
            let reply = app.send(to_host(method.clone(), uri, host, &[("authorization", &bearer)])).await;
            let problem = reply.problem(StatusCode::MISDIRECTED_REQUEST, &format!("{method} {uri} as {host}"));
            assert!(problem["detail"].as_str().is_some_and(|d| d.contains("ALLOWED_HOSTS")), "{problem}");
        }
        let status = app
            .send(to_host(Method::GET, "/api/suscripcion/estado/a@example.com", host, &[("authorization", &bearer)]))
            .await;
        // Answered (404: no such subscription), not refused.
        assert_eq!(status.status, StatusCode::NOT_FOUND, "subscriptions as {host}: {}", status.text());
        for uri in ["/health", "/openapi.json", "/api/pedidos/0b9e4a52-3c1d-4f7e-9a2b-5d6c7e8f9a0b"] {
            let reply = app.send(to_host(Method::GET, uri, host, &[])).await;
            assert_ne!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{uri} as {host}");
        }
    }
    for host in ["localhost", "localhost:9090", "127.0.0.1:8080", "[::1]:9090"] {
        let reply = app.send(to_host(Method::GET, "/console/login", host, &[])).await;
        assert_eq!(reply.status, StatusCode::OK, "{host}");
    }
    // Configured names are allowed with any port.
    let bus = Arc::new(FakeBus::default());
    let orders = Arc::new(MemoryOrders::new());
    let hosts = pedidos_api::http_server::AllowedHosts::parse("ALLOWED_HOSTS", "admin.internal")
        .unwrap_or_else(|e| panic!("{e}"));
    let configured = AppState::new(bus, orders).with_admin(&token()).with_allowed_hosts(hosts);
    let app = App { router: router(configured), bus: Arc::new(FakeBus::default()) };
    assert_eq!(
        app.send(to_host(Method::GET, "/console/login", "admin.internal:9090", &[])).await.status,
        StatusCode::OK
    );
    let reply = app.send(to_host(Method::GET, "/console/login", "other.internal:9090", &[])).await;
    reply.problem(StatusCode::MISDIRECTED_REQUEST, "a name not configured");
}

/// An email address in a path (`GET /api/suscripcion/estado/{email}`) never reaches a log field: the request span's
/// `uri` shows `{email}` instead, plain or percent-encoded, answered or refused.
#[tokio::test]
async fn emails_in_paths_never_reach_the_logs() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = App::new(Surface::On);
    let bearer = format!("Bearer {TOKEN}");
    for uri in [
        "/api/suscripcion/estado/ops.secret@example.com",
        "/api/suscripcion/estado/ops.secret%40example.com",
        "/api/suscripcion/estado/OPS.SECRET%40EXAMPLE.COM",
    ] {
        let reply = app.send(request(Method::GET, uri, &[("authorization", &bearer)], Body::empty())).await;
        // Answered (no such subscription: its detail names no email), and refused without a credential.
        reply.problem(StatusCode::NOT_FOUND, uri);
        app.send(request(Method::GET, uri, &[], Body::empty())).await.problem(StatusCode::UNAUTHORIZED, uri);
    }
    drop(_guard);
    let logs = String::from_utf8_lossy(&lock(&capture.0)).into_owned();
    assert!(logs.contains("uri=/api/suscripcion/estado/{email}"), "no redacted span: {logs}");
    assert!(!logs.to_ascii_lowercase().contains("ops.secret"), "an email reached the logs:\n{logs}");
    assert!(!logs.contains("example.com"), "an email's domain reached the logs:\n{logs}");
}
