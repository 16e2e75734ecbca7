//! Router tests: the whole HTTP surface of `pedidos-api` driven with `oneshot`, the bus replaced by a fake and the
//! order store by its in-memory twin (`store::memory::MemoryOrders`), seeded the way the workers write it.
//!
//! The fake bus records what the router hands it (the event, its exact JSON text, the request id), so these tests
//! check both what the client sees and what would reach SNS. Behaviour that depends on AWS itself (envelopes,
//! attributes on the wire, outages, DynamoDB's encoding) is covered against a real moto server in
//! `tests/tests/api_e2e.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use chrono::{DateTime, TimeZone, Utc};
use domain::{EventType, Item, OrderEvent, OrderState};
use pedidos_api::admin::AdminToken;
use pedidos_api::api_keys::ApiKeys;
use pedidos_api::bus::{BoxFuture, BusError, EventBus, SubscriptionStatus};
use pedidos_api::routes::orders::MAX_VERSION_STEP;
use pedidos_api::{router, AppState};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use store::memory::MemoryOrders;
use store::{Applied, ChangeMeta, OrderReads, OrderView, OrderWrites, Page, Shipment, StoreError};
use tower::ServiceExt;
use uuid::Uuid;

const CLIENTE: &str = "6f1c2a0e-9a51-4c1e-8d0b-0c8f4f1a2b3c";
const PEDIDO: &str = "0b9e4a52-3c1d-4f7e-9a2b-5d6c7e8f9a0b";
/// Text a failing fake puts in its errors; it must never reach a response body.
const INTERNAL: &str = "secret-internal-cause arn:aws:sns:us-east-1:123456789012:x";
/// The apps here have the admin surface on, with this token (the subscription routes are admin routes). Its rules
/// are tested in `tests/admin.rs`.
const ADMIN_TOKEN: &str = "router-tests-admin-token-0123456789";

/// What the fake does when asked to publish.
#[derive(Clone, Copy)]
enum PublishMode {
    Accept,
    Unavailable,
    Rejected,
    /// Never answers: an SNS call stuck past every SDK budget.
    Hang,
}

/// One `publish` call as the fake saw it.
struct Published {
    event: OrderEvent,
    /// The exact JSON text the SNS adapter would send (`OrderEvent::to_json`).
    json: String,
    request_id: String,
}

/// An in-memory [`EventBus`] that records every call.
struct FakeBus {
    mode: PublishMode,
    ready: bool,
    published: Mutex<Vec<Published>>,
    checks: AtomicUsize,
    emails: Mutex<HashMap<String, SubscriptionStatus>>,
    subscribed: Mutex<Vec<String>>,
    /// The event-type filter of each `subscribe_email` call, in order.
    filters: Mutex<Vec<Option<Vec<EventType>>>>,
}

impl FakeBus {
    fn new(mode: PublishMode) -> Self {
        Self {
            mode,
            ready: true,
            published: Mutex::new(Vec::new()),
            checks: AtomicUsize::new(0),
            emails: Mutex::new(HashMap::new()),
            subscribed: Mutex::new(Vec::new()),
            filters: Mutex::new(Vec::new()),
        }
    }

    fn not_ready() -> Self {
        Self { ready: false, ..Self::new(PublishMode::Accept) }
    }

    fn with_email(self, email: &str, status: SubscriptionStatus) -> Self {
        lock(&self.emails).insert(email.to_owned(), status);
        self
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| panic!("fake bus mutex poisoned: {e}"))
}

impl EventBus for FakeBus {
    fn publish<'a>(&'a self, event: &'a OrderEvent, request_id: &'a str) -> BoxFuture<'a, Result<String, BusError>> {
        Box::pin(async move {
            match self.mode {
                PublishMode::Accept => {
                    let json = event.to_json().map_err(|e| BusError::Rejected(e.to_string()))?;
                    let mut published = lock(&self.published);
                    published.push(Published { event: event.clone(), json, request_id: request_id.to_owned() });
                    Ok(format!("fake-message-{}", published.len()))
                }
                PublishMode::Unavailable => Err(BusError::Unavailable(INTERNAL.to_owned())),
                PublishMode::Rejected => Err(BusError::Rejected(INTERNAL.to_owned())),
                PublishMode::Hang => std::future::pending().await,
            }
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            self.checks.fetch_add(1, Ordering::SeqCst);
            if self.ready {
                Ok(())
            } else {
                Err(BusError::Unavailable(INTERNAL.to_owned()))
            }
        })
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
            lock(&self.subscribed).push(email.to_owned());
            lock(&self.filters).push(event_types.map(<[EventType]>::to_vec));
            lock(&self.emails).insert(email.to_owned(), SubscriptionStatus::Pendiente);
            Ok(())
        })
    }
}

/// The app under test and the fakes behind it.
struct App {
    router: Router,
    bus: Arc<FakeBus>,
    /// The store the router reads; tests write to it as the workers would.
    store: Arc<MemoryOrders>,
}

impl App {
    fn new(bus: FakeBus) -> Self {
        let store = Arc::new(MemoryOrders::new());
        let bus = Arc::new(bus);
        let state = AppState::new(bus.clone(), store.clone()).with_admin(&admin_token());
        Self { router: router(state), bus, store }
    }

    /// An app reading from `reads` instead of the in-memory store.
    fn reading_from(reads: Arc<dyn OrderReads>) -> Self {
        let bus = Arc::new(FakeBus::new(PublishMode::Accept));
        let state = AppState::new(bus.clone(), reads).with_admin(&admin_token());
        Self { router: router(state), bus, store: Arc::new(MemoryOrders::new()) }
    }

    /// Applies `event` as the process worker would, with `request_id` as the change's request id.
    async fn apply(&self, event: &OrderEvent, request_id: Option<&str>) {
        let meta = ChangeMeta { request_id: request_id.map(str::to_owned), at: Utc::now(), ..Default::default() };
        let applied = self.store.apply(event, &meta).await;
        assert!(matches!(applied, Ok(Applied::Applied)), "seeding {event:?}: {applied:?}");
    }

    /// Creates the order's shipment as the logistics worker would.
    async fn ship(&self, pedido_id: Uuid) {
        let shipment = Shipment {
            pedido_id,
            tracking_code: "ECX-TEST00000001".into(),
            estado: "PREPARANDO".into(),
            creado_en: Utc::now(),
            request_id: Some("req-ship".into()),
            origin: Default::default(),
        };
        let created = self.store.create_shipment(&shipment).await;
        assert!(matches!(created, Ok(Applied::Applied)), "{created:?}");
    }

    fn accepting() -> Self {
        Self::new(FakeBus::new(PublishMode::Accept))
    }

    /// An app with the API keys of two clients, [`SHOP_A`] and [`SHOP_B`].
    fn with_two_clients() -> Self {
        let store = Arc::new(MemoryOrders::new());
        let bus = Arc::new(FakeBus::new(PublishMode::Accept));
        let keys = format!("{SHOP_A}:{KEY_A},{SHOP_B}:{KEY_B}");
        let keys = ApiKeys::parse("API_KEYS", &keys).unwrap_or_else(|e| panic!("{e}"));
        let state = AppState::new(bus.clone(), store.clone()).with_admin(&admin_token()).with_api_keys(keys);
        Self { router: router(state), bus, store }
    }

    /// `method uri` (with a JSON body when given) carrying `key`.
    async fn as_client(&self, key: &str, method: Method, uri: &str, body: Option<&Value>) -> Reply {
        let content = body.map(|_| "application/json");
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let mut req = request(method, uri, content, body);
        req.headers_mut().insert("x-api-key", key.parse().unwrap_or_else(|e| panic!("{e}")));
        self.send(req).await
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response =
            self.router.clone().oneshot(request).await.unwrap_or_else(|e| panic!("router failed (Infallible): {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("reading the response body: {e}"))
            .to_vec();
        Reply { status, headers, body }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send(request(Method::GET, uri, None, Body::empty())).await
    }

    /// `request` as an operator (bearer `ADMIN_TOKEN`).
    async fn admin_send(&self, mut request: Request<Body>) -> Reply {
        let bearer = format!("Bearer {ADMIN_TOKEN}").parse().unwrap_or_else(|e| panic!("{e}"));
        request.headers_mut().insert(header::AUTHORIZATION, bearer);
        self.send(request).await
    }

    async fn admin_get(&self, uri: &str) -> Reply {
        self.admin_send(request(Method::GET, uri, None, Body::empty())).await
    }

    async fn admin_post_json(&self, uri: &str, body: &Value) -> Reply {
        self.admin_send(request(Method::POST, uri, Some("application/json"), Body::from(body.to_string()))).await
    }

    async fn post_json(&self, uri: &str, body: &Value) -> Reply {
        self.send(request(Method::POST, uri, Some("application/json"), Body::from(body.to_string()))).await
    }

    /// `POST /api/pedidos` with `Idempotency-Key: key`.
    async fn post_with_key(&self, body: &Value, key: &str) -> Reply {
        let mut req = request(Method::POST, "/api/pedidos", Some("application/json"), Body::from(body.to_string()));
        req.headers_mut().insert("idempotency-key", key.parse().unwrap_or_else(|e| panic!("{key}: {e}")));
        self.send(req).await
    }

    async fn put_json(&self, uri: &str, body: &Value) -> Reply {
        self.send(request(Method::PUT, uri, Some("application/json"), Body::from(body.to_string()))).await
    }

    /// `GET uri` with `If-None-Match: tag`.
    async fn get_if_none_match(&self, uri: &str, tag: &str) -> Reply {
        let mut req = request(Method::GET, uri, None, Body::empty());
        req.headers_mut().insert(header::IF_NONE_MATCH, tag.parse().unwrap_or_else(|e| panic!("{tag}: {e}")));
        self.send(req).await
    }

    fn published(&self) -> MutexGuard<'_, Vec<Published>> {
        lock(&self.bus.published)
    }
}

fn admin_token() -> AdminToken {
    AdminToken::parse("ADMIN_TOKEN", ADMIN_TOKEN).unwrap_or_else(|e| panic!("{e}"))
}

fn request(method: Method, uri: &str, content_type: Option<&str>, body: Body) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder.body(body).unwrap_or_else(|e| panic!("building request {uri}: {e}"))
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
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with `status` and returns its body.
    fn problem(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "body: {}", self.text());
        let body = self.json();
        assert_eq!(body["status"], json!(status.as_u16()), "{body}");
        assert_eq!(body["type"], json!("about:blank"), "{body}");
        assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        body
    }

    /// The messages in a problem's `errors` map for `field`.
    fn field_errors(&self, field: &str) -> Vec<String> {
        let body = self.problem(StatusCode::UNPROCESSABLE_ENTITY);
        match body["errors"].get(field) {
            Some(Value::Array(messages)) => messages.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect(),
            _ => panic!("no errors.{field} in {body}"),
        }
    }
}

fn order() -> Value {
    json!({"clienteId": CLIENTE, "total": 59.98})
}

// ---------------------------------------------------------------------------------------------------------------
// POST /api/pedidos: success

/// A valid order is published once and answered 202 with the documented body.
#[tokio::test]
async fn post_valid_order_returns_202_with_publicado_body() {
    let app = App::accepting();
    let reply = app.post_json("/api/pedidos", &json!({"clienteId": CLIENTE, "total": 59.98, "pedidoId": PEDIDO})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body, json!({"status": "publicado", "pedidoId": PEDIDO, "version": 1, "messageId": "fake-message-1"}));
    let published = app.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].event.event_type, EventType::PedidoCreado);
    assert_eq!(published[0].event.version, 1);
    assert_eq!(published[0].event.order.pedido_id.to_string(), PEDIDO);
}

/// Without a pedidoId the server generates one and reports it.
#[tokio::test]
async fn post_without_pedido_id_generates_one() {
    let app = App::accepting();
    let reply = app.post_json("/api/pedidos", &order()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let id = reply.json()["pedidoId"].as_str().map(str::to_owned).unwrap_or_default();
    let parsed = Uuid::parse_str(&id).unwrap_or_else(|e| panic!("pedidoId {id:?} is not a UUID: {e}"));
    assert_eq!(app.published()[0].event.order.pedido_id, parsed);
}

/// The seed's PascalCase field names are accepted, as ASP.NET's binder did.
#[tokio::test]
async fn post_accepts_pascal_case_fields() {
    let app = App::accepting();
    let body = json!({"PedidoId": PEDIDO, "ClienteId": CLIENTE, "Fecha": "2026-11-21T10:30:00-03:00", "Total": 59.98});
    let reply = app.post_json("/api/pedidos", &body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let published = app.published();
    assert_eq!(published[0].event.order.pedido_id.to_string(), PEDIDO);
    assert_eq!(published[0].event.order.fecha.to_rfc3339(), "2026-11-21T10:30:00-03:00");
}

/// Money is exact: 0.30 given as a JSON number is published as the JSON number `0.30`, not via f64.
#[tokio::test]
async fn money_from_a_json_number_is_published_byte_exact() {
    let app = App::accepting();
    let body = r#"{"clienteId":"6f1c2a0e-9a51-4c1e-8d0b-0c8f4f1a2b3c","total":0.30,
        "items":[{"productoId":"SKU-1","cantidad":3,"precioUnitario":0.10}]}"#;
    let reply = app.send(request(Method::POST, "/api/pedidos", Some("application/json"), Body::from(body))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let published = app.published();
    let json = &published[0].json;
    assert!(json.contains(r#""total":0.30"#), "{json}");
    assert!(json.contains(r#""precioUnitario":0.10"#), "{json}");
    assert!(!json.contains("0.30000000000000004"), "{json}");
}

/// Money given as a string is published as a JSON number with exactly its digits.
#[tokio::test]
async fn money_from_a_string_is_published_byte_exact() {
    let app = App::accepting();
    let reply = app.post_json("/api/pedidos", &json!({"clienteId": CLIENTE, "total": "0.30"})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let json = &app.published()[0].json;
    assert!(json.contains(r#""total":0.30"#), "{json}");
    assert!(!json.contains(r#""total":"0.30""#), "{json}");
}

/// Items that add up exactly are published with the order.
#[tokio::test]
async fn items_adding_up_are_published() {
    let app = App::accepting();
    let items = json!([{"productoId": "A", "cantidad": 2, "precioUnitario": "19.99"}, {"productoId": "B", "cantidad": 1, "precioUnitario": 20.00}]);
    let reply = app.post_json("/api/pedidos", &json!({"clienteId": CLIENTE, "total": "59.98", "items": items})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let published = app.published();
    let items = published[0].event.order.items.as_deref().unwrap_or_default();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].precio_unitario.to_string(), "19.99");
}

// ---------------------------------------------------------------------------------------------------------------
// POST /api/pedidos: client errors

/// Broken JSON is a 400 problem, and nothing is published.
#[tokio::test]
async fn malformed_json_is_400() {
    let app = App::accepting();
    let reply = app
        .send(request(Method::POST, "/api/pedidos", Some("application/json"), Body::from(r#"{"clienteId": "#)))
        .await;
    reply.problem(StatusCode::BAD_REQUEST);
    assert!(app.published().is_empty());
}

/// JSON that is not an object (array, string, number, null) is a 400 problem.
#[tokio::test]
async fn non_object_json_is_400() {
    let app = App::accepting();
    for body in ["[]", "\"pedido\"", "42", "null"] {
        let reply = app.send(request(Method::POST, "/api/pedidos", Some("application/json"), Body::from(body))).await;
        let problem = reply.problem(StatusCode::BAD_REQUEST);
        assert!(problem["detail"].as_str().unwrap_or_default().contains("object"), "{body}: {problem}");
    }
    assert!(app.published().is_empty());
}

/// Every invalid field is reported at once in the `errors` map.
#[tokio::test]
async fn invalid_fields_are_422_with_an_errors_map() {
    let app = App::accepting();
    let reply = app
        .post_json(
            "/api/pedidos",
            &json!({"clienteId": "not-a-uuid", "total": "abc", "fecha": "yesterday", "pedidoId": 7}),
        )
        .await;
    let body = reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
    let errors = body["errors"].as_object().unwrap_or_else(|| panic!("no errors map: {body}"));
    let mut fields: Vec<&str> = errors.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["clienteId", "fecha", "pedidoId", "total"], "{body}");
    assert!(app.published().is_empty());
}

/// Missing required fields are named.
#[tokio::test]
async fn missing_fields_are_named() {
    let app = App::accepting();
    let reply = app.post_json("/api/pedidos", &json!({})).await;
    assert_eq!(reply.field_errors("clienteId"), ["is required"]);
    assert_eq!(reply.field_errors("total"), ["is required"]);
}

/// Money rules: more than two decimals, zero, and over the maximum are 422 on `total`.
#[tokio::test]
async fn money_rules_are_422() {
    let app = App::accepting();
    for total in [json!(1.001), json!("0"), json!(1_000_000_000), json!("1e3"), json!("NaN")] {
        let reply = app.post_json("/api/pedidos", &json!({"clienteId": CLIENTE, "total": total})).await;
        assert!(!reply.field_errors("total").is_empty(), "{total}");
    }
    assert!(app.published().is_empty());
}

/// Items that do not add up to the total are a 422 naming the expected sum.
#[tokio::test]
async fn items_not_adding_up_are_422() {
    let app = App::accepting();
    // A raw body: `json!(0.10)` would go through f64 and arrive as `0.1`.
    let body = r#"{"clienteId":"6f1c2a0e-9a51-4c1e-8d0b-0c8f4f1a2b3c","total":0.31,
        "items":[{"productoId":"A","cantidad":3,"precioUnitario":0.10}]}"#;
    let reply = app.send(request(Method::POST, "/api/pedidos", Some("application/json"), Body::from(body))).await;
    let messages = reply.field_errors("total");
    assert!(messages.iter().any(|m| m.contains("(0.30)")), "{messages:?}");
    assert!(app.published().is_empty());
}

/// Unknown fields are rejected by name, top level and inside items.
#[tokio::test]
async fn unknown_fields_are_named() {
    let app = App::accepting();
    let items = json!([{"productoId": "A", "cantidad": 1, "precioUnitario": 1, "color": "red"}]);
    let reply =
        app.post_json("/api/pedidos", &json!({"clienteId": CLIENTE, "total": 1, "descuento": 5, "items": items})).await;
    assert_eq!(reply.field_errors("descuento"), ["unknown field"]);
    assert_eq!(reply.field_errors("items[0].color"), ["unknown field"]);
    assert!(app.published().is_empty());
}

/// `version` is the server's business on creation.
#[tokio::test]
async fn post_with_version_is_422() {
    let app = App::accepting();
    let reply = app.post_json("/api/pedidos", &json!({"clienteId": CLIENTE, "total": 1, "version": 1})).await;
    assert!(!reply.field_errors("version").is_empty());
}

/// A body that is not JSON by content type is a 415, whether the type is wrong or missing.
#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let app = App::accepting();
    let body = order().to_string();
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let reply = app.send(request(Method::POST, "/api/pedidos", content_type, Body::from(body.clone()))).await;
        reply.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let charset = app
        .send(request(Method::POST, "/api/pedidos", Some("application/json; charset=utf-8"), Body::from(body)))
        .await;
    assert_eq!(charset.status, StatusCode::ACCEPTED, "{}", charset.text());
}

/// A body over 64 KiB is a 413 problem.
#[tokio::test]
async fn body_over_64_kib_is_413() {
    let app = App::accepting();
    let padding = "x".repeat(64 * 1024);
    let body = json!({"clienteId": CLIENTE, "total": 1, "padding": padding}).to_string();
    assert!(body.len() > pedidos_api::extract::BODY_LIMIT);
    let reply = app.send(request(Method::POST, "/api/pedidos", Some("application/json"), Body::from(body))).await;
    reply.problem(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(app.published().is_empty());
}

/// A body just under the limit is read (and then judged on its fields).
#[tokio::test]
async fn body_just_under_the_limit_is_read() {
    let app = App::accepting();
    let skeleton = json!({"clienteId": CLIENTE, "total": 1, "padding": ""}).to_string();
    let padding = "x".repeat(pedidos_api::extract::BODY_LIMIT - skeleton.len());
    let body = json!({"clienteId": CLIENTE, "total": 1, "padding": padding}).to_string();
    assert_eq!(body.len(), pedidos_api::extract::BODY_LIMIT);
    let reply = app.send(request(Method::POST, "/api/pedidos", Some("application/json"), Body::from(body))).await;
    assert_eq!(reply.field_errors("padding"), ["unknown field"]);
}

/// Unknown routes are a 404 problem.
#[tokio::test]
async fn unknown_route_is_404() {
    let app = App::accepting();
    app.get("/api/nope").await.problem(StatusCode::NOT_FOUND);
    app.post_json("/api/pedidos/extra/segment", &order()).await.problem(StatusCode::NOT_FOUND);
}

/// A known route with the wrong method is a 405 problem.
#[tokio::test]
async fn wrong_method_is_405() {
    let app = App::accepting();
    app.get("/api/pedidos").await.problem(StatusCode::METHOD_NOT_ALLOWED);
    app.send(request(Method::DELETE, &format!("/api/pedidos/{PEDIDO}"), None, Body::empty()))
        .await
        .problem(StatusCode::METHOD_NOT_ALLOWED);
    app.post_json("/health", &json!({})).await.problem(StatusCode::METHOD_NOT_ALLOWED);
}

// ---------------------------------------------------------------------------------------------------------------
// Bus failures

/// An unavailable bus is a 503 with Retry-After, and the internal cause never reaches the body.
#[tokio::test]
async fn bus_unavailable_is_503_with_retry_after_and_no_internal_text() {
    let app = App::new(FakeBus::new(PublishMode::Unavailable));
    let reply = app.post_json("/api/pedidos", &order()).await;
    reply.problem(StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {:?}", reply.headers));
    assert!((1..=10).contains(&retry_after), "Retry-After {retry_after}");
    let text = reply.text();
    assert!(!text.contains("secret-internal-cause") && !text.contains("arn:aws"), "{text}");
}

/// A bus that rejects the request (bad ARN, permissions) is still not the client's fault: 503, no internal text.
#[tokio::test]
async fn bus_rejection_is_503_without_internal_text() {
    let app = App::new(FakeBus::new(PublishMode::Rejected));
    let reply = app.post_json("/api/pedidos", &order()).await;
    reply.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.header("retry-after").is_some());
    assert!(!reply.text().contains("secret-internal-cause"), "{}", reply.text());
}

/// A 503 to a POST without a client pedidoId names the generated one: retrying with it is the same order.
#[tokio::test]
async fn a_503_names_the_pedido_id_to_retry_with() {
    let app = App::new(FakeBus::new(PublishMode::Unavailable));
    let body = app.post_json("/api/pedidos", &order()).await.problem(StatusCode::SERVICE_UNAVAILABLE);
    let id = body["pedidoId"].as_str().and_then(|id| Uuid::parse_str(id).ok());
    let id = id.unwrap_or_else(|| panic!("no pedidoId in {body}"));
    assert!(body["detail"].as_str().is_some_and(|d| d.contains(&id.to_string())), "{body}");
    // With the client's own id, the 503 names that one.
    let own = app.post_json("/api/pedidos", &json!({"clienteId": CLIENTE, "total": "1.00", "pedidoId": PEDIDO})).await;
    assert_eq!(own.problem(StatusCode::SERVICE_UNAVAILABLE)["pedidoId"], json!(PEDIDO));
    let put = app.put_json(&format!("/api/pedidos/{PEDIDO}"), &update(json!(2))).await;
    assert_eq!(put.problem(StatusCode::SERVICE_UNAVAILABLE)["pedidoId"], json!(PEDIDO));
}

/// A bus that never answers cannot hold a client past the write budget (the promised 10 s): 503 naming the order.
#[tokio::test(start_paused = true)]
async fn a_hanging_bus_is_a_503_within_the_write_budget() {
    let app = App::new(FakeBus::new(PublishMode::Hang));
    let started = tokio::time::Instant::now();
    let reply = app.post_json("/api/pedidos", &order()).await;
    let waited = started.elapsed();
    let body = reply.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["pedidoId"].is_string(), "{body}");
    assert!(reply.header("retry-after").is_some());
    let budget = pedidos_api::routes::orders::WRITE_BUDGET;
    assert!(waited >= budget && waited < std::time::Duration::from_secs(10), "answered after {waited:?}");
}

/// The same Idempotency-Key from the same client is the same order: the same pedidoId on every retry, before and
/// after the workers applied it, and a 409 if the key is reused for a different order.
#[tokio::test]
async fn idempotency_key_makes_a_retry_the_same_order() {
    // The first attempt fails; the retry goes to another API instance (nothing is shared but the derivation).
    let failing = App::new(FakeBus::new(PublishMode::Unavailable));
    let first = failing.post_with_key(&order(), "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"").await;
    let id = first.problem(StatusCode::SERVICE_UNAVAILABLE)["pedidoId"].clone();
    assert!(id.is_string(), "{}", first.text());

    let app = App::accepting();
    let retry = app.post_with_key(&order(), "8e03978e-40d5-43e8-bc93-6894a57f9324").await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text());
    assert_eq!(retry.json()["pedidoId"], id);
    let other = app.post_with_key(&order(), "another-key").await;
    assert_ne!(other.json()["pedidoId"], id);
    let other_customer = json!({"clienteId": "11111111-2222-4333-8444-555555555555", "total": 59.98});
    assert_ne!(app.post_with_key(&other_customer, "8e03978e-40d5-43e8-bc93-6894a57f9324").await.json()["pedidoId"], id);

    // Once applied, a retry is still answered 202 with the same id; the key reused for another order is a 409.
    let event = app.published()[0].event.clone();
    app.apply(&event, None).await;
    let again = app.post_with_key(&order(), "8e03978e-40d5-43e8-bc93-6894a57f9324").await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text());
    assert_eq!(again.json()["pedidoId"], id);
    let reused = app
        .post_with_key(&json!({"clienteId": CLIENTE, "total": "1.00"}), "8e03978e-40d5-43e8-bc93-6894a57f9324")
        .await;
    let detail = reused.problem(StatusCode::CONFLICT)["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("total"), "{detail}");
}

/// A malformed Idempotency-Key is refused before anything is published.
#[tokio::test]
async fn malformed_idempotency_key_is_400() {
    let app = App::accepting();
    for key in ["\"\"", "\"unterminated", &"k".repeat(300)] {
        let reply = app.post_with_key(&order(), key).await;
        let detail = reply.problem(StatusCode::BAD_REQUEST)["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains("Idempotency-Key"), "{key}: {detail}");
    }
    assert!(app.published().is_empty());
}

// ---------------------------------------------------------------------------------------------------------------
// PUT /api/pedidos/{pedidoId}

fn update(version: Value) -> Value {
    json!({"clienteId": CLIENTE, "total": "64.50", "version": version})
}

/// A valid update publishes PedidoActualizado at the given version.
#[tokio::test]
async fn put_publishes_pedido_actualizado() {
    let app = App::accepting();
    let reply = app.put_json(&format!("/api/pedidos/{PEDIDO}"), &update(json!(3))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    assert_eq!(
        reply.json(),
        json!({"status": "publicado", "pedidoId": PEDIDO, "version": 3, "messageId": "fake-message-1"})
    );
    let published = app.published();
    assert_eq!(published[0].event.event_type, EventType::PedidoActualizado);
    assert_eq!(published[0].event.version, 3);
    assert!(published[0].json.contains(r#""type":"PedidoActualizado""#), "{}", published[0].json);
    assert!(published[0].json.contains(r#""total":64.50"#), "{}", published[0].json);
}

/// `version` is required on PUT and must be >= 2.
#[tokio::test]
async fn put_version_rules() {
    let app = App::accepting();
    let uri = format!("/api/pedidos/{PEDIDO}");
    for version in [json!(1), json!(0), json!(-2), json!("2"), json!(2.5)] {
        let reply = app.put_json(&uri, &update(version.clone())).await;
        assert!(!reply.field_errors("version").is_empty(), "version {version}");
    }
    let missing = app.put_json(&uri, &json!({"clienteId": CLIENTE, "total": 1})).await;
    assert_eq!(missing.field_errors("version"), ["is required"]);
    assert!(app.published().is_empty());
}

/// The path segment must be a UUID.
#[tokio::test]
async fn put_path_id_must_be_a_uuid() {
    let app = App::accepting();
    let reply = app.put_json("/api/pedidos/not-a-uuid", &update(json!(2))).await;
    assert!(!reply.field_errors("pedidoId").is_empty());
    assert!(app.published().is_empty());
}

/// A pedidoId in the body must match the path; the same id is fine.
#[tokio::test]
async fn put_body_id_must_match_the_path() {
    let app = App::accepting();
    let uri = format!("/api/pedidos/{PEDIDO}");
    let mut other = update(json!(2));
    other["pedidoId"] = json!(Uuid::new_v4().to_string());
    let messages = app.put_json(&uri, &other).await.field_errors("pedidoId");
    assert!(messages.iter().any(|m| m.contains("match")), "{messages:?}");

    let mut same = update(json!(2));
    same["pedidoId"] = json!(PEDIDO);
    assert_eq!(app.put_json(&uri, &same).await.status, StatusCode::ACCEPTED);
    assert_eq!(app.published().len(), 1);
}

/// PUT shares POST's body handling: 415 and 400.
#[tokio::test]
async fn put_content_type_and_syntax_errors() {
    let app = App::accepting();
    let uri = format!("/api/pedidos/{PEDIDO}");
    app.send(request(Method::PUT, &uri, Some("text/plain"), Body::from(update(json!(2)).to_string())))
        .await
        .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    app.send(request(Method::PUT, &uri, Some("application/json"), Body::from("{")))
        .await
        .problem(StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------------------------------------------
// Request ids

/// A client's X-Request-Id is echoed and handed to the bus (it becomes the `requestId` message attribute).
#[tokio::test]
async fn request_id_is_echoed_and_passed_to_the_bus() {
    let app = App::accepting();
    let mut req = request(Method::POST, "/api/pedidos", Some("application/json"), Body::from(order().to_string()));
    req.headers_mut().insert("x-request-id", "req-abc-123".parse().unwrap_or_else(|e| panic!("{e}")));
    let reply = app.send(req).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.header("x-request-id"), Some("req-abc-123"));
    assert_eq!(app.published()[0].request_id, "req-abc-123");
}

/// Without one, a request id is generated, returned, and the same one reaches the bus.
#[tokio::test]
async fn request_id_is_generated_when_absent() {
    let app = App::accepting();
    let reply = app.post_json("/api/pedidos", &order()).await;
    let id = reply.header("x-request-id").unwrap_or_else(|| panic!("no x-request-id: {:?}", reply.headers)).to_owned();
    assert!(Uuid::parse_str(&id).is_ok(), "{id}");
    assert_eq!(app.published()[0].request_id, id);
    let other = app.get("/health").await;
    assert!(other.header("x-request-id").is_some_and(|o| o != id), "ids must differ per request");
}

/// Error responses carry the request id too, so a client can quote it.
#[tokio::test]
async fn request_id_is_on_error_responses() {
    let app = App::new(FakeBus::new(PublishMode::Unavailable));
    let mut req = request(Method::POST, "/api/pedidos", Some("application/json"), Body::from(order().to_string()));
    req.headers_mut().insert("x-request-id", "req-503".parse().unwrap_or_else(|e| panic!("{e}")));
    let reply = app.send(req).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("x-request-id"), Some("req-503"));
}

// ---------------------------------------------------------------------------------------------------------------
// Operational endpoints

/// Liveness answers without touching the bus, including the seed's /status.
#[tokio::test]
async fn health_and_status_are_200_without_the_bus() {
    let app = App::new(FakeBus::not_ready());
    let health = app.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({"status": "ok"}));
    let status = app.get("/status").await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.json(), json!({"message": "API Corriendo"}));
    assert_eq!(app.bus.checks.load(Ordering::SeqCst), 0);
}

/// Readiness asks the bus once and reuses the answer for the next probes.
#[tokio::test]
async fn ready_is_200_and_cached() {
    let app = App::accepting();
    for _ in 0..3 {
        let reply = app.get("/ready").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(app.bus.checks.load(Ordering::SeqCst), 1);
}

/// Readiness is a 503 problem (with Retry-After, without internals) when the bus does not answer.
#[tokio::test]
async fn ready_is_503_when_the_bus_fails() {
    let app = App::new(FakeBus::not_ready());
    let reply = app.get("/ready").await;
    reply.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.header("retry-after").is_some());
    assert!(!reply.text().contains("secret-internal-cause"));
    app.get("/ready").await.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.bus.checks.load(Ordering::SeqCst), 1, "the failure is cached too");
}

/// /metrics exposes request counts by route and status and the publish histogram once something was published.
#[tokio::test]
async fn metrics_expose_requests_and_publish_latency() {
    let app = App::accepting();
    assert_eq!(app.post_json("/api/pedidos", &order()).await.status, StatusCode::ACCEPTED);
    let reply = app.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.header("content-type").is_some_and(|c| c.starts_with("text/plain")));
    let text = reply.text();
    let request_line = text
        .lines()
        .find(|l| {
            l.starts_with("pedidos_api_http_requests_total{")
                && l.contains(r#"route="/api/pedidos""#)
                && l.contains(r#"status="202""#)
        })
        .unwrap_or_else(|| panic!("no pedidos_api_http_requests_total for POST /api/pedidos 202 in:\n{text}"));
    let count: f64 = request_line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_default();
    assert!(count >= 1.0, "{request_line}");
    assert!(text.contains("pedidos_api_publish_duration_seconds_bucket"), "{text}");
    assert!(text.contains("pedidos_api_publish_duration_seconds_count"), "{text}");
    assert!(text.contains("pedidos_api_http_request_duration_seconds_bucket"), "{text}");
}

/// Publish failures are counted by reason.
#[tokio::test]
async fn metrics_count_publish_failures() {
    let app = App::new(FakeBus::new(PublishMode::Unavailable));
    assert_eq!(app.post_json("/api/pedidos", &order()).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = app.get("/metrics").await.text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("pedidos_api_publish_failures_total{") && l.contains(r#"reason="unavailable""#)),
        "{text}"
    );
}

/// The OpenAPI document is valid JSON, OpenAPI 3, and lists every public path.
#[tokio::test]
async fn openapi_document_lists_the_paths() {
    let app = App::accepting();
    let reply = app.get("/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap_or_else(|| panic!("no paths in {doc}"));
    for path in [
        "/api/pedidos",
        "/api/pedidos/{pedidoId}",
        "/api/suscripcion",
        "/api/suscripcion/estado/{email}",
        "/health",
        "/status",
        "/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} missing from {:?}", paths.keys().collect::<Vec<_>>());
    }
    assert!(doc["paths"]["/api/pedidos"]["post"]["responses"]["202"].is_object());
    assert!(doc["paths"]["/api/pedidos/{pedidoId}"]["put"].is_object());
    // Summaries are plain text in the docs page (only descriptions are Markdown): no literal backticks.
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().into_iter().flatten() {
            let summary = operation["summary"].as_str().unwrap_or_default();
            assert!(!summary.is_empty() && !summary.contains('`'), "{method} {path}: summary {summary:?}");
        }
    }
}

/// The interactive docs page is served from the binary (no CDN).
#[tokio::test]
async fn docs_page_serves_html() {
    let app = App::accepting();
    let reply = app.get("/docs/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.header("content-type").is_some_and(|c| c.starts_with("text/html")), "{:?}", reply.headers);
    assert!(reply.text().to_ascii_lowercase().contains("swagger"), "{}", reply.text());
    let root = app.get("/").await;
    assert!(root.status.is_redirection());
    assert_eq!(root.header("location"), Some("/docs/"));
}

// ---------------------------------------------------------------------------------------------------------------
// Email subscriptions

/// A new email is subscribed (201 Pendiente), via JSON body or `?email=`, for every event (no filter).
#[tokio::test]
async fn subscribe_new_email_is_201_pendiente() {
    let app = App::accepting();
    let reply = app.admin_post_json("/api/suscripcion", &json!({"email": "nuevo@example.com"})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json(), json!({"email": "nuevo@example.com", "status": "Pendiente"}));

    let query =
        app.admin_send(request(Method::POST, "/api/suscripcion?email=otro@example.com", None, Body::empty())).await;
    assert_eq!(query.status, StatusCode::CREATED, "{}", query.text());
    assert_eq!(query.json()["email"], json!("otro@example.com"));
    assert_eq!(*lock(&app.bus.subscribed), ["nuevo@example.com", "otro@example.com"]);
    assert_eq!(*lock(&app.bus.filters), [None, None]);
}

/// `eventTypes` limits a new subscription to those events: the bus gets them as its filter, and the answer echoes
/// them. Repeats are ignored.
#[tokio::test]
async fn subscribe_with_event_types_passes_the_filter_to_the_bus() {
    let app = App::accepting();
    let body = json!({"email": "altas@example.com", "eventTypes": ["PedidoCreado", "PedidoCreado"]});
    let reply = app.admin_post_json("/api/suscripcion", &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(
        reply.json(),
        json!({"email": "altas@example.com", "status": "Pendiente", "eventTypes": ["PedidoCreado"]})
    );
    let both = json!({"email": "todo@example.com", "eventTypes": ["PedidoActualizado", "PedidoCreado"]});
    assert_eq!(app.admin_post_json("/api/suscripcion", &both).await.status, StatusCode::CREATED);
    assert_eq!(
        *lock(&app.bus.filters),
        [Some(vec![EventType::PedidoCreado]), Some(vec![EventType::PedidoActualizado, EventType::PedidoCreado])]
    );
}

/// Anything but a non-empty array of known event types is a 422 on `eventTypes` (with the email's own problems in
/// the same answer), and nothing is subscribed.
#[tokio::test]
async fn subscribe_with_invalid_event_types_is_422() {
    let app = App::accepting();
    for event_types in
        [json!([]), json!(["PedidoBorrado"]), json!("PedidoCreado"), json!([1]), json!(null), json!(["pedidocreado"])]
    {
        let body = json!({"email": "x@example.com", "eventTypes": event_types});
        let reply = app.admin_post_json("/api/suscripcion", &body).await;
        let problems = reply.field_errors("eventTypes");
        assert!(problems.iter().any(|p| p.contains("PedidoCreado, PedidoActualizado")), "{body}: {problems:?}");
    }
    let both = app.admin_post_json("/api/suscripcion", &json!({"email": 5, "eventTypes": []})).await;
    assert!(!both.field_errors("email").is_empty() && !both.field_errors("eventTypes").is_empty());
    assert!(lock(&app.bus.subscribed).is_empty());
}

/// An email already subscribed is reported with its state (200), without subscribing again.
#[tokio::test]
async fn subscribe_existing_email_is_200_with_its_state() {
    let bus = FakeBus::new(PublishMode::Accept)
        .with_email("pend@example.com", SubscriptionStatus::Pendiente)
        .with_email("ok@example.com", SubscriptionStatus::Confirmado);
    let app = App::new(bus);
    let pending = app.admin_post_json("/api/suscripcion", &json!({"email": "pend@example.com"})).await;
    assert_eq!(pending.status, StatusCode::OK);
    assert_eq!(pending.json()["status"], json!("Pendiente"));
    let confirmed =
        app.admin_send(request(Method::POST, "/api/suscripcion?email=ok@example.com", None, Body::empty())).await;
    assert_eq!(confirmed.status, StatusCode::OK);
    assert_eq!(confirmed.json()["status"], json!("Confirmado"));
    assert!(lock(&app.bus.subscribed).is_empty());
}

/// Invalid or missing emails are 422 on `email`, and nothing is subscribed.
#[tokio::test]
async fn subscribe_invalid_email_is_422() {
    let app = App::accepting();
    for body in [json!({"email": "no-at-sign"}), json!({"email": 5}), json!({})] {
        let reply = app.admin_post_json("/api/suscripcion", &body).await;
        assert!(!reply.field_errors("email").is_empty(), "{body}");
    }
    let query = app.admin_send(request(Method::POST, "/api/suscripcion?email=a%40b", None, Body::empty())).await;
    assert!(!query.field_errors("email").is_empty());
    let empty = app.admin_send(request(Method::POST, "/api/suscripcion", None, Body::empty())).await;
    assert!(!empty.field_errors("email").is_empty());
    assert!(lock(&app.bus.subscribed).is_empty());
}

/// A subscription body must be JSON.
#[tokio::test]
async fn subscribe_body_content_type_and_syntax() {
    let app = App::accepting();
    app.admin_send(request(Method::POST, "/api/suscripcion", Some("text/plain"), Body::from("a@b.co")))
        .await
        .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    app.admin_send(request(Method::POST, "/api/suscripcion", Some("application/json"), Body::from("{")))
        .await
        .problem(StatusCode::BAD_REQUEST);
}

/// The state of a known email is reported; an unknown one is a 404 problem; an invalid one a 422.
#[tokio::test]
async fn subscription_status() {
    let bus = FakeBus::new(PublishMode::Accept)
        .with_email("pend@example.com", SubscriptionStatus::Pendiente)
        .with_email("ok@example.com", SubscriptionStatus::Confirmado);
    let app = App::new(bus);
    let pending = app.admin_get("/api/suscripcion/estado/pend@example.com").await;
    assert_eq!(pending.status, StatusCode::OK);
    assert_eq!(pending.json(), json!({"email": "pend@example.com", "status": "Pendiente"}));
    let confirmed = app.admin_get("/api/suscripcion/estado/ok@example.com").await;
    assert_eq!(confirmed.json()["status"], json!("Confirmado"));
    app.admin_get("/api/suscripcion/estado/nadie@example.com").await.problem(StatusCode::NOT_FOUND);
    assert!(!app.admin_get("/api/suscripcion/estado/not-an-email").await.field_errors("email").is_empty());
}

// ---------------------------------------------------------------------------------------------------------------
// Order store: what the workers applied, read back

fn dec(text: &str) -> Decimal {
    text.parse().unwrap_or_else(|e| panic!("bad test decimal {text}: {e}"))
}

fn day(d: u32) -> DateTime<chrono::FixedOffset> {
    Utc.with_ymd_and_hms(2026, 11, d, 10, 30, 0).single().unwrap_or_else(|| panic!("day {d}")).fixed_offset()
}

fn state(pedido_id: Uuid, cliente_id: &str, total: &str, items: Option<Vec<Item>>) -> OrderState {
    OrderState {
        pedido_id,
        cliente_id: Uuid::parse_str(cliente_id).unwrap_or_else(|e| panic!("{cliente_id}: {e}")),
        fecha: day(21),
        total: dec(total),
        items,
    }
}

fn pedido() -> Uuid {
    Uuid::parse_str(PEDIDO).unwrap_or_else(|e| panic!("{e}"))
}

/// A stored order reads back with its state, its history, exact money and its ETag; a missing shipment is null and
/// missing items are left out.
#[tokio::test]
async fn get_returns_the_stored_order_with_exact_money_and_versions() {
    let app = App::accepting();
    let lines = |price: &str, n: u32| {
        Some(vec![Item { producto_id: "SKU-1".into(), cantidad: n, precio_unitario: dec(price) }])
    };
    app.apply(&OrderEvent::created(state(pedido(), CLIENTE, "59.90", lines("29.95", 2)), Utc::now()), Some("req-1"))
        .await;
    app.apply(&OrderEvent::updated(state(pedido(), CLIENTE, "0.30", lines("0.10", 3)), 3, Utc::now()), Some("req-3"))
        .await;

    let reply = app.get(&format!("/api/pedidos/{PEDIDO}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("etag"), Some("\"3-0\""));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let text = reply.text();
    // Exact digits, as JSON numbers: no f64 on the way out either.
    assert!(text.contains(r#""total":0.30"#), "{text}");
    assert!(text.contains(r#""precioUnitario":0.10"#), "{text}");
    let body = reply.json();
    assert_eq!(body["pedidoId"], json!(PEDIDO));
    assert_eq!(body["version"], json!(3));
    assert_eq!(body["estado"], json!("ACTUALIZADO"));
    assert_eq!(body["clienteId"], json!(CLIENTE));
    assert_eq!(body["fecha"], json!("2026-11-21T10:30:00Z"));
    // Parsed from text: `json!(0.10)` would go through f64 and compare as `0.1`.
    let lines: Value = serde_json::from_str(r#"[{"productoId":"SKU-1","cantidad":3,"precioUnitario":0.10}]"#)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["items"], lines);
    assert_eq!(body["requestId"], json!("req-3"));
    assert_eq!(body["envio"], Value::Null);
    for stamp in ["creadoEn", "actualizadoEn"] {
        let text = body[stamp].as_str().unwrap_or_default();
        assert!(DateTime::parse_from_rfc3339(text).is_ok(), "{stamp}: {body}");
    }
    let history: Vec<(Value, Value)> = body["versiones"]
        .as_array()
        .unwrap_or_else(|| panic!("no versiones in {body}"))
        .iter()
        .map(|v| (v["version"].clone(), v["requestId"].clone()))
        .collect();
    assert_eq!(history, [(json!(1), json!("req-1")), (json!(3), json!("req-3"))]);
    assert!(body["versiones"][0]["aplicadaEn"].as_str().is_some(), "{body}");

    // Without items and without a request id (a legacy event): no `items` member, `requestId` null.
    let bare = Uuid::new_v4();
    app.apply(&OrderEvent::created(state(bare, CLIENTE, "12.00", None), Utc::now()), None).await;
    let body = app.get(&format!("/api/pedidos/{bare}")).await.json();
    assert!(body.get("items").is_none(), "{body}");
    assert_eq!(body["requestId"], Value::Null);
    assert_eq!(body["versiones"], json!([{"version": 1, "aplicadaEn": body["creadoEn"], "requestId": null}]));
    assert!(app.published().is_empty(), "reads publish nothing");
}

/// `If-None-Match` with the current ETag (alone, in a list, weak, or `*`) is a 304 without a body; the ETag changes
/// when the shipment appears, although the version does not.
#[tokio::test]
async fn etag_answers_304_and_changes_when_the_shipment_appears() {
    let app = App::accepting();
    app.apply(&OrderEvent::created(state(pedido(), CLIENTE, "10.00", None), Utc::now()), Some("req-1")).await;
    let uri = format!("/api/pedidos/{PEDIDO}");
    let first = app.get(&uri).await;
    assert_eq!(first.header("etag"), Some("\"1-0\""));

    for tag in ["\"1-0\"", "*", "\"0-0\", \"1-0\"", "W/\"1-0\""] {
        let reply = app.get_if_none_match(&uri, tag).await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{tag}: {}", reply.text());
        assert_eq!(reply.header("etag"), Some("\"1-0\""), "{tag}");
        assert!(reply.body.is_empty(), "{tag}: {}", reply.text());
    }
    assert_eq!(app.get_if_none_match(&uri, "\"2-0\"").await.status, StatusCode::OK);

    app.ship(pedido()).await;
    let after = app.get_if_none_match(&uri, "\"1-0\"").await;
    assert_eq!(after.status, StatusCode::OK, "the old tag must not match once the shipment exists");
    assert_eq!(after.header("etag"), Some("\"1-1\""));
    let body = after.json();
    assert_eq!(body["version"], json!(1));
    assert_eq!(body["envio"]["trackingCode"], json!("ECX-TEST00000001"));
    assert_eq!(body["envio"]["estado"], json!("PREPARANDO"));
    assert!(body["envio"]["creadoEn"].as_str().is_some(), "{body}");
    assert_eq!(app.get_if_none_match(&uri, "\"1-1\"").await.status, StatusCode::NOT_MODIFIED);
}

/// An order no worker has applied is a 404 problem that says so; a non-UUID id is a 422 on `pedidoId`.
#[tokio::test]
async fn get_unknown_order_is_404_and_bad_id_is_422() {
    let app = App::accepting();
    let problem = app.get(&format!("/api/pedidos/{}", Uuid::new_v4())).await.problem(StatusCode::NOT_FOUND);
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("once a worker has applied it"), "{detail}");
    assert!(!app.get("/api/pedidos/not-a-uuid").await.field_errors("pedidoId").is_empty());
}

/// A store outage is a 503 with Retry-After on every read, without the cause in the body.
#[tokio::test]
async fn store_outage_is_503_with_retry_after_on_reads() {
    let app = App::accepting();
    app.store.set_unavailable(true);
    for uri in [format!("/api/pedidos/{PEDIDO}"), format!("/api/clientes/{CLIENTE}/pedidos")] {
        let reply = app.get(&uri).await;
        let problem = reply.problem(StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok()), "{uri}: {:?}", reply.headers);
        assert!(!reply.text().contains("simulated outage"), "{uri}: {problem}");
        assert!(problem["detail"].as_str().unwrap_or_default().contains("store"), "{uri}: {problem}");
    }
}

/// Reads that always find a corrupt item, as DynamoDB would report one written by hand.
struct CorruptReads;

const CORRUPT_KEY: &str = "PEDIDO#0b9e4a52-3c1d-4f7e-9a2b-5d6c7e8f9a0b";
const CORRUPT_REASON: &str = "version=\"three\" is out of range";

impl OrderReads for CorruptReads {
    fn get(&self, _: Uuid) -> store::BoxFuture<'_, Result<Option<OrderView>, StoreError>> {
        Box::pin(async { Err(StoreError::Corrupt { key: CORRUPT_KEY.into(), reason: CORRUPT_REASON.into() }) })
    }

    fn list_by_cliente<'a>(
        &'a self,
        _: Uuid,
        _: Option<&'a str>,
        _: u32,
        _: Option<&'a str>,
    ) -> store::BoxFuture<'a, Result<Page, StoreError>> {
        Box::pin(async { Err(StoreError::Corrupt { key: CORRUPT_KEY.into(), reason: CORRUPT_REASON.into() }) })
    }

    fn check(&self) -> store::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A stored item the API cannot decode is a 500 problem whose body names neither the key nor the reason (they are
/// logged), on reads and on the checks before publishing.
#[tokio::test]
async fn corrupt_stored_item_is_500_without_internals() {
    let app = App::reading_from(Arc::new(CorruptReads));
    let replies = [
        app.get(&format!("/api/pedidos/{PEDIDO}")).await,
        app.get(&format!("/api/clientes/{CLIENTE}/pedidos")).await,
        app.put_json(&format!("/api/pedidos/{PEDIDO}"), &json!({"clienteId": CLIENTE, "total": 1, "version": 2})).await,
    ];
    for reply in replies {
        reply.problem(StatusCode::INTERNAL_SERVER_ERROR);
        let text = reply.text();
        assert!(!text.contains("PEDIDO#") && !text.contains("three") && !text.contains("version="), "{text}");
    }
    assert!(app.published().is_empty());
}

/// Reads never touch SNS: they keep working while the bus is down.
#[tokio::test]
async fn reads_work_while_the_bus_is_down() {
    let app = App::new(FakeBus { ready: false, ..FakeBus::new(PublishMode::Unavailable) });
    app.apply(&OrderEvent::created(state(pedido(), CLIENTE, "10.00", None), Utc::now()), None).await;
    assert_eq!(app.get(&format!("/api/pedidos/{PEDIDO}")).await.status, StatusCode::OK);
    assert_eq!(app.get(&format!("/api/clientes/{CLIENTE}/pedidos")).await.status, StatusCode::OK);
    assert_eq!(app.bus.checks.load(Ordering::SeqCst), 0);
}

/// A customer's orders come newest first, a page at a time, until `nextCursor` is null; other customers' orders
/// never appear.
#[tokio::test]
async fn customer_orders_page_newest_first() {
    let app = App::accepting();
    let ids: Vec<Uuid> = (1..=5u32).map(|_| Uuid::new_v4()).collect();
    for (d, id) in (1..=5u32).zip(&ids) {
        let order = OrderState { fecha: day(d), ..state(*id, CLIENTE, "1.00", None) };
        app.apply(&OrderEvent::created(order, Utc::now()), None).await;
    }
    let other =
        OrderState { fecha: day(9), ..state(Uuid::new_v4(), "11111111-2222-4333-8444-555555555555", "1.00", None) };
    app.apply(&OrderEvent::created(other, Utc::now()), None).await;

    let one: Value = serde_json::from_str("1.00").unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut uri = format!("/api/clientes/{CLIENTE}/pedidos?limit=2");
    loop {
        let reply = app.get(&uri).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let body = reply.json();
        let pedidos = body["pedidos"].as_array().unwrap_or_else(|| panic!("no pedidos in {body}"));
        assert!(pedidos.len() <= 2, "{body}");
        assert!(pedidos.iter().all(|p| p["clienteId"] == json!(CLIENTE) && p["total"] == one), "{body}");
        seen.extend(pedidos.iter().map(|p| p["pedidoId"].as_str().unwrap_or_default().to_owned()));
        pages += 1;
        match &body["nextCursor"] {
            Value::String(cursor) => uri = format!("/api/clientes/{CLIENTE}/pedidos?limit=2&cursor={cursor}"),
            Value::Null => break,
            other => panic!("nextCursor {other}"),
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().map(Uuid::to_string).collect();
    assert_eq!(seen, newest_first);
    assert_eq!(pages, 3);

    // Default limit (20): one page with all five.
    let all = app.get(&format!("/api/clientes/{CLIENTE}/pedidos")).await.json();
    assert_eq!(all["pedidos"].as_array().map(Vec::len), Some(5), "{all}");
    assert_eq!(all["nextCursor"], Value::Null);
    // A customer without orders gets an empty page, not a 404.
    let none = app.get(&format!("/api/clientes/{}/pedidos", Uuid::new_v4())).await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.json(), json!({"pedidos": [], "nextCursor": null}));
}

/// `limit` outside 1..=100, a cursor the store did not hand out and a non-UUID clienteId are 422s naming the
/// parameter (together when several are wrong); a query that cannot be read at all is still problem+json.
#[tokio::test]
async fn listing_parameters_are_checked() {
    let app = App::accepting();
    let base = format!("/api/clientes/{CLIENTE}/pedidos");
    for limit in ["0", "101", "abc", "-1", "", "1.5"] {
        let reply = app.get(&format!("{base}?limit={limit}")).await;
        assert!(!reply.field_errors("limit").is_empty(), "limit={limit}");
    }
    for limit in ["1", "100"] {
        assert_eq!(app.get(&format!("{base}?limit={limit}")).await.status, StatusCode::OK, "limit={limit}");
    }
    for cursor in ["zz", "", "abc", "68656c6c6f"] {
        let reply = app.get(&format!("{base}?cursor={cursor}")).await;
        assert!(!reply.field_errors("cursor").is_empty(), "cursor={cursor}");
    }
    let both = app.get("/api/clientes/nope/pedidos?limit=0").await;
    assert!(!both.field_errors("clienteId").is_empty());
    assert!(!both.field_errors("limit").is_empty());
    app.get(&format!("{base}?limit=1&limit=2")).await.problem(StatusCode::BAD_REQUEST);
}

/// A PUT of the version the store holds with other content is a 409 naming what differs (the workers would
/// dead-letter it as a version conflict); an older version is a 409 naming both versions; nothing is published for
/// either. The stored version with the same content is a retry (its 202 may have been lost): 202 again, with the
/// stored content. A newer version is published, keeping the stored `fecha` when the body has none.
#[tokio::test]
async fn put_of_an_applied_version_with_other_content_or_an_older_version_is_409() {
    let app = App::accepting();
    app.apply(&OrderEvent::created(state(pedido(), CLIENTE, "10.00", None), Utc::now()), None).await;
    app.apply(&OrderEvent::updated(state(pedido(), CLIENTE, "64.50", None), 3, Utc::now()), None).await;
    let uri = format!("/api/pedidos/{PEDIDO}");

    let mut other = update(json!(3));
    other["total"] = json!("11.00");
    let conflict = app.put_json(&uri, &other).await.problem(StatusCode::CONFLICT);
    let detail = conflict["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("version 3 is already applied with a different total; send version 4"), "{detail}");
    let older = app.put_json(&uri, &update(json!(2))).await.problem(StatusCode::CONFLICT);
    let detail = older["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("version 2 is older than the stored version 3"), "{detail}");
    assert!(app.published().is_empty());

    let retry = app.put_json(&uri, &update(json!(3))).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text());
    assert_eq!(app.published()[0].event.order.fecha, day(21), "the stored content, fecha included");

    assert_eq!(app.put_json(&uri, &update(json!(4))).await.status, StatusCode::ACCEPTED);
    let published = app.published();
    assert_eq!(published.len(), 2);
    assert_eq!(published[1].event.order.fecha, day(21), "an update without fecha keeps the order's date");
}

/// Versions are bounded by `domain::MAX_VERSION` (one above is a 422 on `version`) and by the step: a PUT goes at
/// most `MAX_VERSION_STEP` above the stored version (above 1 for an order not stored yet), so no write can freeze an
/// order by using up its version space.
#[tokio::test]
async fn put_version_above_the_bound_or_the_step_is_422() {
    let app = App::accepting();
    let uri = format!("/api/pedidos/{PEDIDO}");
    let messages = app.put_json(&uri, &update(json!(domain::MAX_VERSION + 1))).await.field_errors("version");
    assert!(messages.iter().any(|m| m.contains("1000000")), "{messages:?}");
    let step = MAX_VERSION_STEP;
    let messages = app.put_json(&uri, &update(json!(step + 2))).await.field_errors("version");
    assert!(messages.iter().any(|m| m.contains(&format!("at most {}", step + 1))), "{messages:?}");
    assert!(app.published().is_empty());
    assert_eq!(app.put_json(&uri, &update(json!(step + 1))).await.status, StatusCode::ACCEPTED);

    app.apply(&OrderEvent::created(state(pedido(), CLIENTE, "10.00", None), Utc::now()), None).await;
    app.apply(&OrderEvent::updated(state(pedido(), CLIENTE, "11.00", None), 7, Utc::now()), None).await;
    let messages = app.put_json(&uri, &update(json!(7 + step + 1))).await.field_errors("version");
    assert!(messages.iter().any(|m| m.contains("stored version 7")), "{messages:?}");
    assert_eq!(app.put_json(&uri, &update(json!(7 + step))).await.status, StatusCode::ACCEPTED);
    assert_eq!(app.published().len(), 2);
}

/// A PUT cannot move an order to another customer: a different `clienteId` is a 422 naming the field.
#[tokio::test]
async fn put_cannot_change_the_customer() {
    let app = App::accepting();
    app.apply(&OrderEvent::created(state(pedido(), CLIENTE, "10.00", None), Utc::now()), None).await;
    let other = json!({"clienteId": Uuid::new_v4(), "total": "64.50", "version": 2});
    let messages = app.put_json(&format!("/api/pedidos/{PEDIDO}"), &other).await.field_errors("clienteId");
    assert!(messages.iter().any(|m| m.contains("cannot change")), "{messages:?}");
    assert!(app.published().is_empty());
}

/// A PUT while the store is unreachable is a 503: the version cannot be checked, so nothing is published.
#[tokio::test]
async fn put_while_the_store_is_down_is_503() {
    let app = App::accepting();
    app.store.set_unavailable(true);
    let reply = app.put_json(&format!("/api/pedidos/{PEDIDO}"), &update(json!(2))).await;
    reply.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.header("retry-after").is_some());
    assert!(app.published().is_empty());
}

/// Retrying a POST whose order a worker already applied (same content, still version 1) is answered as the first
/// time and published again with the stored fecha; the workers drop the repeat.
#[tokio::test]
async fn post_retry_of_an_applied_order_is_202_again() {
    let app = App::accepting();
    let items = json!([{"productoId": "A", "cantidad": 2, "precioUnitario": "19.99"}]);
    for body in [
        json!({"pedidoId": PEDIDO, "clienteId": CLIENTE, "total": "39.98", "items": items}),
        json!({"pedidoId": PEDIDO, "clienteId": CLIENTE, "total": 39.98, "items": items, "fecha": "2026-11-21T10:30:00-03:00"}),
    ] {
        let app = App::accepting();
        let first = app.post_json("/api/pedidos", &body).await;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text());
        let event = app.published()[0].event.clone();
        app.apply(&event, Some("req-first")).await;

        let again = app.post_json("/api/pedidos", &body).await;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text());
        assert_eq!(
            again.json(),
            json!({"status": "publicado", "pedidoId": PEDIDO, "version": 1, "messageId": "fake-message-2"})
        );
        let published = app.published();
        assert_eq!(published.len(), 2);
        assert_eq!(published[1].event.version, 1);
        assert_eq!(published[1].event.order, event.order, "the repeat carries the stored order, fecha included");
    }
    assert!(app.published().is_empty());
}

/// A POST reusing a stored pedidoId for a different order, or for an order already updated, is a 409 saying why.
#[tokio::test]
async fn post_reusing_a_stored_pedido_id_is_409() {
    let app = App::accepting();
    app.apply(&OrderEvent::created(state(pedido(), CLIENTE, "59.98", None), Utc::now()), None).await;
    let different =
        app.post_json("/api/pedidos", &json!({"pedidoId": PEDIDO, "clienteId": CLIENTE, "total": 10})).await;
    let detail = different.problem(StatusCode::CONFLICT)["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("different total") && detail.contains("new pedidoId"), "{detail}");
    let other_date = json!({"pedidoId": PEDIDO, "clienteId": CLIENTE, "total": 59.98, "fecha": "2020-01-01T00:00:00Z"});
    let detail = app.post_json("/api/pedidos", &other_date).await.problem(StatusCode::CONFLICT)["detail"].to_string();
    assert!(detail.contains("fecha"), "{detail}");

    app.apply(&OrderEvent::updated(state(pedido(), CLIENTE, "59.98", None), 2, Utc::now()), None).await;
    let same_content = json!({"pedidoId": PEDIDO, "clienteId": CLIENTE, "total": 59.98});
    let detail = app.post_json("/api/pedidos", &same_content).await.problem(StatusCode::CONFLICT)["detail"].to_string();
    assert!(detail.contains("version 2") && detail.contains("PUT"), "{detail}");
    assert!(app.published().is_empty());
}

/// Without a client pedidoId there is nothing to collide with, so the store is not read (and its outage does not
/// matter); with one, an outage is a 503.
#[tokio::test]
async fn post_reads_the_store_only_for_a_client_pedido_id() {
    let app = App::accepting();
    app.store.set_unavailable(true);
    assert_eq!(app.post_json("/api/pedidos", &order()).await.status, StatusCode::ACCEPTED);
    let with_id = app.post_json("/api/pedidos", &json!({"pedidoId": PEDIDO, "clienteId": CLIENTE, "total": 1})).await;
    with_id.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(with_id.header("retry-after").is_some());
    assert_eq!(app.published().len(), 1);
}

/// One 422 lists every field's problems: a bad clienteId does not hide an out-of-range total, and a bad line does
/// not hide another line's problem.
#[tokio::test]
async fn validation_reports_every_field_at_once() {
    let app = App::accepting();
    let reply = app.post_json("/api/pedidos", &json!({"clienteId": "not-a-uuid", "total": "1000000000"})).await;
    assert_eq!(reply.field_errors("clienteId"), ["must be a UUID string"]);
    assert!(reply.field_errors("total").iter().any(|m| m.contains("at most 999999999.99")), "{}", reply.text());

    let items = json!([{"productoId": "A", "cantidad": "x", "precioUnitario": 1}, {"productoId": "", "cantidad": 1, "precioUnitario": "0.001"}]);
    let reply = app.post_json("/api/pedidos", &json!({"clienteId": Uuid::nil(), "total": 0, "items": items})).await;
    assert!(!reply.field_errors("clienteId").is_empty(), "nil UUID: {}", reply.text());
    assert!(reply.field_errors("total").iter().any(|m| m.contains("greater than 0")), "{}", reply.text());
    assert!(!reply.field_errors("items[0].cantidad").is_empty());
    assert!(!reply.field_errors("items[1].productoId").is_empty());
    assert!(!reply.field_errors("items[1].precioUnitario").is_empty());
    assert!(app.published().is_empty());
}

/// /ready names each dependency's state, in the 200 and in the 503.
#[tokio::test]
async fn ready_names_each_dependency() {
    let app = App::accepting();
    let reply = app.get("/ready").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"status": "ready", "dependencies": {"sns": "ok", "store": "ok"}}));

    let app = App::accepting();
    app.store.set_unavailable(true);
    let reply = app.get("/ready").await;
    let problem = reply.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem["dependencies"], json!({"sns": "ok", "store": "unavailable"}), "{problem}");
    assert!(reply.header("retry-after").is_some());
    assert!(!reply.text().contains("simulated outage"));

    let problem = App::new(FakeBus::not_ready()).get("/ready").await.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem["dependencies"], json!({"sns": "unavailable", "store": "ok"}), "{problem}");
}

/// The `route` label of the HTTP metrics is the OpenAPI path, parameter names included.
#[tokio::test]
async fn metrics_route_label_is_the_openapi_path() {
    let app = App::accepting();
    app.get(&format!("/api/pedidos/{}", Uuid::new_v4())).await;
    app.get(&format!("/api/clientes/{CLIENTE}/pedidos")).await;
    let text = app.get("/metrics").await.text();
    for route in ["/api/pedidos/{pedidoId}", "/api/clientes/{clienteId}/pedidos"] {
        let label = format!("route=\"{route}\"");
        assert!(
            text.lines().any(|l| l.starts_with("pedidos_api_http_requests_total{") && l.contains(&label)),
            "{label} in:\n{text}"
        );
    }
}

/// The OpenAPI document describes the tracking routes: parameters named as in the paths, every answer documented.
#[tokio::test]
async fn openapi_documents_the_tracking_routes() {
    let doc = App::accepting().get("/openapi.json").await.json();
    let get_order = &doc["paths"]["/api/pedidos/{pedidoId}"]["get"];
    for status in ["200", "304", "404", "422", "500", "503"] {
        assert!(get_order["responses"][status].is_object(), "GET order {status}: {get_order}");
    }
    assert!(get_order["responses"]["200"]["headers"]["ETag"].is_object(), "{get_order}");
    let list = &doc["paths"]["/api/clientes/{clienteId}/pedidos"]["get"];
    for status in ["200", "422", "500", "503"] {
        assert!(list["responses"][status].is_object(), "list {status}: {list}");
    }
    let names = |op: &Value| -> Vec<String> {
        op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(names(get_order).contains(&"pedidoId".to_owned()), "{get_order}");
    let list_names = names(list);
    for name in ["clienteId", "limit", "cursor"] {
        assert!(list_names.contains(&name.to_owned()), "{name}: {list_names:?}");
    }
    for method in ["put", "post"] {
        let path = if method == "put" { "/api/pedidos/{pedidoId}" } else { "/api/pedidos" };
        assert!(doc["paths"][path][method]["responses"]["409"].is_object(), "{method} 409");
    }
    // The bound is a literal in the annotation: it must stay the contract's.
    let version = &doc["components"]["schemas"]["ActualizarPedido"]["properties"]["version"];
    assert_eq!(version["maximum"].as_u64(), Some(domain::MAX_VERSION), "{version}");
    for schema in ["Pedido", "PedidoResumen", "PaginaPedidos", "Envio", "VersionAplicada", "Readiness"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema} missing");
    }
}

/// What the tracking routes answer conforms to the schemas the OpenAPI document gives for them (exact-money numbers,
/// nullable members, the shipment), so clients generated from the document read real answers.
#[tokio::test]
async fn tracking_answers_match_their_openapi_schemas() {
    let app = App::accepting();
    let lines = Some(vec![Item { producto_id: "SKU-1".into(), cantidad: 3, precio_unitario: dec("0.10") }]);
    app.apply(&OrderEvent::created(state(pedido(), CLIENTE, "0.30", lines), Utc::now()), None).await;
    app.apply(&OrderEvent::updated(state(pedido(), CLIENTE, "7.00", None), 2, Utc::now()), Some("req-2")).await;
    let doc = app.get("/openapi.json").await.json();
    let violations = |schema: &str, body: &Value| -> Vec<String> {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/components/schemas/{schema}"),
            "components": doc["components"],
        });
        let validator = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("schema {schema}: {e}"));
        validator.iter_errors(body).map(|e| format!("{e} at {}", e.instance_path())).collect()
    };
    let conforms = |schema: &str, body: &Value| {
        let errors = violations(schema, body);
        assert!(errors.is_empty(), "{schema}: {errors:?} in {body}");
    };
    // The check is not vacuous: money as a string and a missing history are caught.
    let mut wrong = app.get(&format!("/api/pedidos/{PEDIDO}")).await.json();
    wrong["total"] = json!("7.00");
    assert!(!violations("Pedido", &wrong).is_empty(), "{wrong}");
    if let Some(object) = wrong.as_object_mut() {
        object.remove("versiones");
    }
    assert!(violations("Pedido", &wrong).len() >= 2, "{wrong}");
    let uri = format!("/api/pedidos/{PEDIDO}");
    conforms("Pedido", &app.get(&uri).await.json());
    app.ship(pedido()).await;
    conforms("Pedido", &app.get(&uri).await.json());
    conforms("PaginaPedidos", &app.get(&format!("/api/clientes/{CLIENTE}/pedidos?limit=1")).await.json());
    conforms("Readiness", &app.get("/ready").await.json());
    conforms("Problem", &app.get(&format!("/api/pedidos/{}", Uuid::new_v4())).await.json());
    conforms("Problem", &app.get("/api/clientes/x/pedidos?limit=0").await.json());
}

/// The request schemas are as strict as the validation: each body below is valid by the OpenAPI document exactly
/// when the API accepts it (except `items` adding up to `total`, a rule between fields JSON Schema cannot state).
#[tokio::test]
async fn request_schemas_accept_what_the_api_accepts_and_no_more() {
    let app = App::accepting();
    let doc = app.get("/openapi.json").await.json();
    let valid = |schema: &str, body: &Value| -> bool {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/components/schemas/{schema}"),
            "components": doc["components"],
        });
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("schema {schema}: {e}"));
        validator.is_valid(body)
    };
    let item =
        |cantidad: Value, precio: &str| json!({"productoId": "SKU-1", "cantidad": cantidad, "precioUnitario": precio});
    let cases = [
        json!({"clienteId": CLIENTE, "total": "59.98"}),
        json!({"clienteId": CLIENTE, "total": "0.01", "pedidoId": PEDIDO, "fecha": "2026-11-21T10:30:00-03:00"}),
        json!({"clienteId": CLIENTE, "total": "999999999.99"}),
        json!({"clienteId": CLIENTE, "total": "3.00", "items": [item(json!(3), "1.00")]}),
        json!({"clienteId": CLIENTE, "total": "0"}),
        json!({"clienteId": CLIENTE, "total": "1.001"}),
        json!({"clienteId": CLIENTE, "total": "1000000000.00"}),
        json!({"clienteId": CLIENTE, "total": "-1"}),
        json!({"clienteId": CLIENTE, "total": "abc"}),
        json!({"clienteId": "not-a-uuid", "total": "1.00"}),
        json!({"clienteId": CLIENTE}),
        json!({"clienteId": CLIENTE, "total": "1.00", "extra": 1}),
        json!({"clienteId": CLIENTE, "total": "1.00", "fecha": "yesterday"}),
        json!({"clienteId": CLIENTE, "total": "1.00", "items": []}),
        json!({"clienteId": CLIENTE, "total": "1.00", "items": [item(json!(0), "1.00")]}),
        json!({"clienteId": CLIENTE, "total": "1.00", "items": [item(json!(1), "1.00").as_object().map(|o| { let mut o = o.clone(); o.insert("x".into(), json!(1)); o })]}),
        json!({"clienteId": CLIENTE, "total": "1.00", "items": [{"productoId": "", "cantidad": 1, "precioUnitario": "1.00"}]}),
        json!({"clienteId": CLIENTE, "total": "1.00", "version": 2}),
    ];
    for body in &cases {
        let accepted = app.post_json("/api/pedidos", body).await.status == StatusCode::ACCEPTED;
        assert_eq!(valid("CrearPedido", body), accepted, "POST {body}: API accepted = {accepted}");
    }
    for (version, accepted) in
        [(json!(2), true), (json!(MAX_VERSION_STEP + 1), true), (json!(1), false), (json!(1_000_001), false)]
    {
        let body = update(version);
        assert_eq!(valid("ActualizarPedido", &body), accepted, "PUT {body}");
        let status = app.put_json(&format!("/api/pedidos/{}", Uuid::new_v4()), &body).await.status;
        assert_eq!(status == StatusCode::ACCEPTED, accepted, "PUT {body}: {status}");
    }
    for (email, accepted) in [
        ("a@b.co", true),
        ("x.y+z@example.com", true),
        ("a@b", false),
        ("a b@c.co", false),
        ("a@b..co", false),
        ("@b.co", false),
    ] {
        let body = json!({"email": email});
        assert_eq!(valid("Suscripcion", &body), accepted, "{body}");
        let status = app.admin_post_json("/api/suscripcion", &body).await.status;
        assert_eq!(status.is_success(), accepted, "{body}: {status}");
    }
    for body in [json!({"email": "c@d.co", "extra": 1}), json!({"email": "c@d.co", "eventTypes": []})] {
        assert!(!valid("Suscripcion", &body), "{body}");
        let reply = app.admin_post_json("/api/suscripcion", &body).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", reply.text());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Client identity: with API keys, every order has an owner

const SHOP_A: &str = "shop-a";
const SHOP_B: &str = "shop-b";
const KEY_A: &str = "key-of-client-a-000000001";
const KEY_B: &str = "key-of-client-b-000000001";

/// An order of `client` for customer [`CLIENTE`], as the process worker stores it.
async fn owned(app: &App, client: &str, pedido_id: Uuid) {
    let event = OrderEvent::created(state(pedido_id, CLIENTE, "10.00", None), Utc::now());
    app.apply(&event.by_client(Some(client.to_owned())), None).await;
}

/// A client reads, lists and updates only its own orders. Another client's order answers exactly as an order that
/// does not exist (404, same detail), so ids leak nothing; an operator reads every order; no key is a 401.
#[tokio::test]
async fn a_client_reaches_only_its_own_orders() {
    let app = App::with_two_clients();
    let mine = pedido();
    let theirs = Uuid::new_v4();
    owned(&app, SHOP_A, mine).await;
    owned(&app, SHOP_B, theirs).await;
    let uri = format!("/api/pedidos/{mine}");

    let read = app.as_client(KEY_A, Method::GET, &uri, None).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());
    let hidden = app.as_client(KEY_B, Method::GET, &uri, None).await.problem(StatusCode::NOT_FOUND);
    let absent_id = Uuid::new_v4();
    let absent = app
        .as_client(KEY_B, Method::GET, &format!("/api/pedidos/{absent_id}"), None)
        .await
        .problem(StatusCode::NOT_FOUND);
    let detail = |v: &Value, id: Uuid| v["detail"].as_str().unwrap_or_default().replace(&id.to_string(), "<id>");
    assert_eq!(detail(&hidden, mine), detail(&absent, absent_id), "another's order looks absent");

    let foreign_update = app.as_client(KEY_B, Method::PUT, &uri, Some(&update(json!(2)))).await;
    let updated_absent =
        app.as_client(KEY_B, Method::PUT, &format!("/api/pedidos/{absent_id}"), Some(&update(json!(2)))).await;
    assert_eq!(
        detail(&foreign_update.problem(StatusCode::NOT_FOUND), mine),
        detail(&updated_absent.problem(StatusCode::NOT_FOUND), absent_id)
    );
    assert!(app.published().is_empty(), "nothing published for another's order");
    let own_update = app.as_client(KEY_A, Method::PUT, &uri, Some(&update(json!(2)))).await;
    assert_eq!(own_update.status, StatusCode::ACCEPTED, "{}", own_update.text());
    assert_eq!(app.published()[0].event.client.as_deref(), Some(SHOP_A), "the event names its client");

    let listing = format!("/api/clientes/{CLIENTE}/pedidos");
    let ids = |reply: Reply| -> Vec<String> {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let body = reply.json();
        body["pedidos"].as_array().map_or_else(Vec::new, |p| {
            p.iter().map(|o| o["pedidoId"].as_str().unwrap_or_default().to_owned()).collect()
        })
    };
    assert_eq!(ids(app.as_client(KEY_A, Method::GET, &listing, None).await), [mine.to_string()]);
    assert_eq!(ids(app.as_client(KEY_B, Method::GET, &listing, None).await), [theirs.to_string()]);
    let mut everything = ids(app.admin_get(&listing).await);
    everything.sort();
    let mut both = vec![mine.to_string(), theirs.to_string()];
    both.sort();
    assert_eq!(everything, both, "an operator lists every client's orders");
    assert_eq!(app.admin_get(&uri).await.status, StatusCode::OK, "an operator reads every order");

    for (method, path) in [(Method::GET, uri.clone()), (Method::GET, listing.clone()), (Method::PUT, uri.clone())] {
        let body = (method == Method::PUT).then(|| update(json!(3)));
        let content = body.as_ref().map(|_| "application/json");
        let req = request(method.clone(), &path, content, body.map_or_else(Body::empty, |b| Body::from(b.to_string())));
        app.send(req).await.problem(StatusCode::UNAUTHORIZED);
    }
}

/// With keys on, a PUT of an order not stored yet is a 404: its owner is not known, and the first updater must not
/// become it.
#[tokio::test]
async fn with_keys_an_unstored_order_cannot_be_updated() {
    let app = App::with_two_clients();
    let reply = app.as_client(KEY_A, Method::PUT, &format!("/api/pedidos/{PEDIDO}"), Some(&update(json!(2)))).await;
    let body = reply.problem(StatusCode::NOT_FOUND);
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("once the process worker has applied it")), "{body}");
    assert!(app.published().is_empty());
}

/// A client cannot create an order under another client's `pedidoId` (409, saying nothing about the order); its own
/// retry is answered as before. The same `Idempotency-Key` from two clients names two orders.
#[tokio::test]
async fn pedido_ids_and_idempotency_keys_belong_to_a_client() {
    let app = App::with_two_clients();
    owned(&app, SHOP_A, pedido()).await;
    let body = json!({"clienteId": CLIENTE, "total": "10.00", "pedidoId": PEDIDO, "fecha": day(21)});
    let taken = app.as_client(KEY_B, Method::POST, "/api/pedidos", Some(&body)).await.problem(StatusCode::CONFLICT);
    assert!(taken["detail"].as_str().is_some_and(|d| d.contains("is taken") && !d.contains("10.00")), "{taken}");
    assert!(app.published().is_empty());
    let retry = app.as_client(KEY_A, Method::POST, "/api/pedidos", Some(&body)).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text());

    let mut ids = Vec::new();
    for key in [KEY_A, KEY_B] {
        let mut req = request(Method::POST, "/api/pedidos", Some("application/json"), Body::from(order().to_string()));
        req.headers_mut().insert("x-api-key", key.parse().unwrap_or_else(|e| panic!("{e}")));
        req.headers_mut().insert("idempotency-key", "checkout-42".parse().unwrap_or_else(|e| panic!("{e}")));
        let reply = app.send(req).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        ids.push(reply.json()["pedidoId"].clone());
    }
    assert_ne!(ids[0], ids[1], "one key, two clients, two orders");
}
