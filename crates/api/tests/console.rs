//! The console's order view through the admin port's router: find an order by `pedidoId` (its path through the
//! pipeline, from what the workers recorded) or by customer (every client's orders), operators only.

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use chrono::{TimeZone, Utc};
use domain::{EventType, OrderEvent, OrderState};
use pedidos_api::admin::AdminToken;
use pedidos_api::bus::{BoxFuture, BusError, EventBus, SubscriptionStatus};
use pedidos_api::console::order_view::TraceUrl;
use pedidos_api::{admin_router, AppState};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use store::memory::MemoryOrders;
use store::{ChangeMeta, OrderWrites, Origin, Shipment};
use tower::ServiceExt;
use uuid::Uuid;

const TOKEN: &str = "admin-token-for-console-tests-0001";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

struct Bus;

impl EventBus for Bus {
    fn publish<'a>(&'a self, _: &'a OrderEvent, _: &'a str) -> BoxFuture<'a, Result<String, BusError>> {
        Box::pin(async { Ok("m".to_owned()) })
    }
    fn check(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
    fn email_status<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<SubscriptionStatus>, BusError>> {
        Box::pin(async { Ok(None) })
    }
    fn subscribe_email<'a>(&'a self, _: &'a str, _: Option<&'a [EventType]>) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The admin port's router over `orders`; the console's AWS clients point nowhere (these routes never call them).
fn app(orders: Arc<MemoryOrders>) -> Router {
    let console = support::offline_console(orders.clone());
    let url = TraceUrl::parse("TRACE_URL_TEMPLATE", "http://127.0.0.1:16686/trace/{traceId}");
    console.link_traces(url.unwrap_or_else(|e| panic!("{e}")));
    let token = AdminToken::parse("ADMIN_TOKEN", TOKEN).unwrap_or_else(|e| panic!("{e}"));
    admin_router(AppState::new(Arc::new(Bus), orders).with_console(console).with_admin(&token))
}

async fn get(app: &Router, uri: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    let mut builder = Request::builder().method(Method::GET).uri(uri).header(header::HOST, "127.0.0.1:9090");
    if let Some(token) = bearer {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = builder.body(Body::empty()).unwrap_or_else(|e| panic!("{e}"));
    let response = app.clone().oneshot(request).await.unwrap_or_else(|e| panic!("{e}"));
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_else(|e| panic!("{e}"));
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn event(pedido: Uuid, cliente: Uuid, version: u64, accepted_second: u32, client: &str) -> OrderEvent {
    let accepted = Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, accepted_second).single().unwrap_or_default();
    let order = OrderState {
        pedido_id: pedido,
        cliente_id: cliente,
        fecha: accepted.fixed_offset(),
        total: Decimal::new(1250, 2),
        items: None,
    };
    let event =
        if version == 1 { OrderEvent::created(order, accepted) } else { OrderEvent::updated(order, version, accepted) };
    event.by_client(Some(client.to_owned()))
}

async fn apply(orders: &MemoryOrders, event: &OrderEvent, applied_after_ms: i64) {
    let meta = ChangeMeta {
        request_id: Some(format!("req-{}", event.version)),
        at: event.occurred_at + chrono::Duration::milliseconds(applied_after_ms),
        origin: Origin::of(event, Some(&format!("sns-{}", event.version)), Some(TRACE)),
    };
    assert!(orders.apply(event, &meta).await.is_ok());
}

/// An order's path: accepted (client, SNS id, trace link), applied with its delay, the shipment with its delay; a
/// hostile-looking request id comes back as data, unchanged (the page shows it as text).
#[tokio::test]
async fn an_order_shows_its_path_with_delays_and_trace_links() {
    let orders = Arc::new(MemoryOrders::new());
    let app = app(orders.clone());
    let (pedido, cliente) = (Uuid::new_v4(), Uuid::new_v4());
    let created = event(pedido, cliente, 1, 0, "shop-a");
    apply(&orders, &created, 250).await;
    let shipment = Shipment {
        pedido_id: pedido,
        tracking_code: "ECX-TEST".into(),
        estado: "PREPARANDO".into(),
        creado_en: created.occurred_at + chrono::Duration::milliseconds(400),
        request_id: Some("<img src=x onerror=alert(1)>".into()),
        origin: Origin::of(&created, Some("sns-1"), Some(TRACE)),
    };
    assert!(orders.create_shipment(&shipment).await.is_ok());
    apply(&orders, &event(pedido, cliente, 2, 5, "shop-a"), 1500).await;

    let (status, body) = get(&app, &format!("/console/api/pedidos/{pedido}"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let steps: Vec<(Value, Value, Value)> = body["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {body}"))
        .iter()
        .map(|s| (s["kind"].clone(), s["version"].clone(), s["delayMs"].clone()))
        .collect();
    assert_eq!(
        steps,
        [
            (json!("accepted"), json!(1), Value::Null),
            (json!("applied"), json!(1), json!(250)),
            (json!("shipment"), json!(1), json!(400)),
            (json!("accepted"), json!(2), Value::Null),
            (json!("applied"), json!(2), json!(1500)),
        ]
    );
    let first = &body["steps"][0];
    assert_eq!((&first["client"], &first["messageId"]), (&json!("shop-a"), &json!("sns-1")));
    assert_eq!(first["traceUrl"], json!(format!("http://127.0.0.1:16686/trace/{TRACE}")));
    assert_eq!(body["steps"][2]["requestId"], json!("<img src=x onerror=alert(1)>"));
    assert_eq!((&body["clienteApi"], &body["trackingCode"]), (&json!("shop-a"), &json!("ECX-TEST")));
}

/// Searching by customer lists every client's orders of that customer, newest first; unknown ids and bad input
/// answer 404 and 422; nothing answers without the operator's credentials.
#[tokio::test]
async fn a_customer_search_lists_every_clients_orders_and_needs_an_operator() {
    let orders = Arc::new(MemoryOrders::new());
    let app = app(orders.clone());
    let cliente = Uuid::new_v4();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    apply(&orders, &event(first, cliente, 1, 1, "shop-a"), 10).await;
    apply(&orders, &event(second, cliente, 1, 2, "shop-b"), 10).await;

    let (status, body) = get(&app, &format!("/console/api/clientes/{cliente}/pedidos"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: Vec<(Value, Value)> = body["pedidos"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|o| (o["pedidoId"].clone(), o["clienteApi"].clone()))
        .collect();
    assert_eq!(listed, [(json!(second), json!("shop-b")), (json!(first), json!("shop-a"))]);

    let (status, _) = get(&app, &format!("/console/api/pedidos/{}", Uuid::new_v4()), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(&app, "/console/api/pedidos/not-a-uuid", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = get(&app, &format!("/console/api/clientes/{cliente}/pedidos?cursor=zz"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for uri in [format!("/console/api/pedidos/{first}"), format!("/console/api/clientes/{cliente}/pedidos")] {
        assert_eq!(get(&app, &uri, None).await.0, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(get(&app, &uri, Some("not-the-admin-token-0123456789abcdef")).await.0, StatusCode::UNAUTHORIZED);
    }
}
