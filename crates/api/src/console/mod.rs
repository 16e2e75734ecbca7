//! The operators' console: `GET /console` and its live data. Served only behind the admin surface
//! ([`crate::admin`]), which authenticates every route returned here and checks CSRF on every POST.
//!
//! - [`sampler`]: every few seconds, the queues' and DLQs' depths, each role's throughput (from the stats items the
//!   workers keep in DynamoDB) and the latest orders, kept for 15 minutes and pushed to every open console over
//!   Server-Sent Events. One sampler per API process, whatever the number of viewers.
//! - [`dlq`]: the DLQ panel's list, redrive and delete (the same copy-then-delete as `pedidos-admin`).
//! - [`order_view`]: find an order by `pedidoId` or customer and show its path through the pipeline.
//! - the page itself (`console.html`, `console.js`, `console.css`), served from the binary: no CDN, no build step, and
//!   every value inserted as text, never as markup.

pub mod dlq;
pub mod order_view;
pub mod sampler;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::extract::JsonObject;
use futures_util::Stream;
use serde::Deserialize;

use crate::error::ApiError;
use crate::AppState;

pub use sampler::Console;

const PAGE: &str = include_str!("console.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// No inline script or style, nothing from elsewhere: a value that slips through as markup still cannot run.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The console's routes (`/console`, `/console/events`, `/console/api/...`), or none when there is no console.
pub fn routes(console: Option<Arc<Console>>) -> Router<AppState> {
    let Some(console) = console else { return Router::new() };
    Router::new()
        .route("/console", get(page))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(style))
        .route("/console/events", get(events))
        .route("/console/api/pedidos/{pedidoId}", get(order))
        .route("/console/api/clientes/{clienteId}/pedidos", get(customer_orders))
        .route("/console/api/dlq/{role}", get(dlq_list))
        .route("/console/api/dlq/{role}/redrive", post(dlq_redrive))
        .route("/console/api/dlq/{role}/delete", post(dlq_delete))
        .with_state(console)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `init` with the last 15 minutes, then a `sample` per tick; the browser's EventSource reconnects by itself.
async fn events(State(console): State<Arc<Console>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    console.ensure_sampling();
    let init = Event::default().event("init").data(console.history_json());
    let updates = console.subscribe();
    let stream = futures_util::stream::unfold((Some(init), updates), |(first, mut updates)| async move {
        if let Some(init) = first {
            return Some((Ok(init), (None, updates)));
        }
        loop {
            match updates.recv().await {
                Ok(sample) => {
                    return Some((Ok(Event::default().event("sample").data(sample.as_ref())), (None, updates)))
                }
                // A slow viewer missed samples: the chart has a gap, the next one still arrives.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// One order's path through the pipeline ([`order_view::timeline`]); every client's orders (operators read all).
async fn order(
    State(console): State<Arc<Console>>,
    pedido_id: Result<Path<String>, PathRejection>,
) -> Result<Json<order_view::Timeline>, ApiError> {
    let Path(pedido_id) = pedido_id?;
    let pedido_id = crate::routes::path_uuid(&pedido_id, "pedidoId")?;
    let view = console.orders().get(pedido_id).await?.ok_or_else(|| {
        ApiError::NotFound(format!("no order {pedido_id} is stored (not applied yet, or no such order)"))
    })?;
    Ok(Json(order_view::timeline(&view, console.trace_url())))
}

/// `cursor` of `GET /console/api/clientes/{clienteId}/pedidos`.
#[derive(Debug, Deserialize)]
pub struct CustomerQuery {
    cursor: Option<String>,
}

/// A customer's orders, newest first, 20 at a time, whichever client created them.
async fn customer_orders(
    State(console): State<Arc<Console>>,
    cliente_id: Result<Path<String>, PathRejection>,
    query: Result<Query<CustomerQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(cliente_id) = cliente_id?;
    let cliente_id = crate::routes::path_uuid(&cliente_id, "clienteId")?;
    let Query(query) = query?;
    let page = console.orders().list_by_cliente(cliente_id, None, 20, query.cursor.as_deref()).await?;
    let orders: Vec<serde_json::Value> = page
        .orders
        .iter()
        .map(|order| {
            serde_json::json!({
                "pedidoId": order.pedido_id,
                "version": order.version,
                "estado": order.estado,
                "total": order.total.to_string(),
                "fecha": order.fecha.to_rfc3339(),
                "clienteApi": order.client,
                "actualizadoEn": order.actualizado_en,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({"pedidos": orders, "nextCursor": page.next_cursor})))
}

/// Message ids chosen in the DLQ panel; empty with `all: true` acts on every message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default, rename = "messageIds")]
    pub message_ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
}

async fn dlq_list(
    State(console): State<Arc<Console>>,
    Path(role): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let queue = console.queue(&role).await?;
    let _turn = console.dlq_turn().await;
    Ok(Json(dlq::list(console.sqs(), &queue).await?))
}

async fn dlq_redrive(
    State(console): State<Arc<Console>>,
    Path(role): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Json<serde_json::Value>, ApiError> {
    dlq_act(&console, &role, body, dlq::Action::Redrive).await
}

async fn dlq_delete(
    State(console): State<Arc<Console>>,
    Path(role): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Json<serde_json::Value>, ApiError> {
    dlq_act(&console, &role, body, dlq::Action::Delete).await
}

async fn dlq_act(
    console: &Console,
    role: &str,
    body: serde_json::Map<String, serde_json::Value>,
    action: dlq::Action,
) -> Result<Json<serde_json::Value>, ApiError> {
    let queue = console.queue(role).await?;
    let selection = selection(body)?;
    let _turn = console.dlq_turn().await;
    Ok(Json(dlq::act(console.sqs(), &queue, &selection, action).await?))
}

fn selection(body: serde_json::Map<String, serde_json::Value>) -> Result<Selection, ApiError> {
    let selection: Selection = serde_json::from_value(serde_json::Value::Object(body))
        .map_err(|e| ApiError::BadRequest(format!("expected {{\"messageIds\": [...]}} or {{\"all\": true}}: {e}")))?;
    if selection.message_ids.is_empty() && !selection.all {
        return Err(ApiError::BadRequest("select messages (messageIds) or all of them (all: true)".into()));
    }
    Ok(selection)
}
