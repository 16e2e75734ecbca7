//! Order tracking: `GET /api/pedidos/{pedidoId}` and `GET /api/clientes/{clienteId}/pedidos`, read from the order
//! store the workers fill. Reads never touch SNS, so they keep working while the bus is down.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, FixedOffset, Utc};
use domain::FieldErrors;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use store::orders::MAX_PAGE;
use store::{AppliedVersion, OrderRecord, OrderView, Shipment};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api_keys::ReadAccess;
use crate::error::{ApiError, Problem};
use crate::AppState;

/// Page size when the client gives no `limit`.
pub const DEFAULT_LIMIT: u32 = 20;

/// An order as a worker last applied it, without its history and shipment (one entry of a customer's list).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PedidoResumen {
    pub pedido_id: Uuid,
    /// Highest version applied.
    pub version: u64,
    /// `CREADO` (version 1) or `ACTUALIZADO`.
    #[schema(example = "CREADO")]
    pub estado: String,
    pub cliente_id: Uuid,
    /// When the customer placed the order, with the offset they gave.
    pub fecha: DateTime<FixedOffset>,
    /// Exact decimal: a JSON number with exactly its stored digits (never through f64).
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    #[schema(value_type = f64, example = 59.98)]
    pub total: Decimal,
    /// Absent when the order has no lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Linea>>,
    /// When the first version was applied (UTC).
    pub creado_en: DateTime<Utc>,
    /// When the latest version was applied (UTC).
    pub actualizado_en: DateTime<Utc>,
    /// Request id of the API call behind the latest version; null for events that carried none.
    #[schema(required = true)]
    pub request_id: Option<String>,
    /// The API client that created the order (its owner); absent for orders created without API keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cliente_api: Option<String>,
}

/// An order with its applied versions and its shipment.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pedido {
    #[serde(flatten)]
    pub resumen: PedidoResumen,
    /// The most recent applied versions (at most 40; the store keeps between 20 and 40 once an order has had that
    /// many), in the order applied.
    pub versiones: Vec<VersionAplicada>,
    /// How many versions were applied in all, including those no longer listed in `versiones`.
    pub versiones_aplicadas: u64,
    /// Null until the logistics worker has created the shipment.
    #[schema(required = true)]
    pub envio: Option<Envio>,
}

/// One order line.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Linea {
    pub producto_id: String,
    pub cantidad: u32,
    /// Exact decimal, like `total`.
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    #[schema(value_type = f64, example = 19.99)]
    pub precio_unitario: Decimal,
}

/// One applied version of an order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionAplicada {
    pub version: u64,
    pub aplicada_en: DateTime<Utc>,
    #[schema(required = true)]
    pub request_id: Option<String>,
}

/// An order's shipment.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envio {
    #[schema(example = "ECX-3F9A1C0B7D2E")]
    pub tracking_code: String,
    /// `PREPARANDO` once created.
    #[schema(example = "PREPARANDO")]
    pub estado: String,
    pub creado_en: DateTime<Utc>,
}

/// One page of a customer's orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaginaPedidos {
    pub pedidos: Vec<PedidoResumen>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

impl From<OrderRecord> for PedidoResumen {
    fn from(order: OrderRecord) -> Self {
        Self {
            pedido_id: order.pedido_id,
            version: order.version,
            estado: order.estado,
            cliente_id: order.cliente_id,
            fecha: order.fecha,
            total: order.total,
            items: order.items.map(|items| {
                items
                    .into_iter()
                    .map(|item| Linea {
                        producto_id: item.producto_id,
                        cantidad: item.cantidad,
                        precio_unitario: item.precio_unitario,
                    })
                    .collect()
            }),
            creado_en: order.creado_en,
            actualizado_en: order.actualizado_en,
            request_id: order.request_id,
            cliente_api: order.client,
        }
    }
}

impl From<OrderView> for Pedido {
    fn from(OrderView { mut order, envio }: OrderView) -> Self {
        let versiones = std::mem::take(&mut order.versiones).into_iter().map(VersionAplicada::from).collect();
        let versiones_aplicadas = order.versiones_aplicadas;
        Self { resumen: order.into(), versiones, versiones_aplicadas, envio: envio.map(Envio::from) }
    }
}

impl From<AppliedVersion> for VersionAplicada {
    fn from(applied: AppliedVersion) -> Self {
        Self { version: applied.version, aplicada_en: applied.aplicada_en, request_id: applied.request_id }
    }
}

impl From<Shipment> for Envio {
    fn from(shipment: Shipment) -> Self {
        Self { tracking_code: shipment.tracking_code, estado: shipment.estado, creado_en: shipment.creado_en }
    }
}

/// Strong entity tag of an order view. The shipment appears later without a version change, so the tag covers both:
/// a client revalidating after the shipment was created must get the new body, not a 304.
pub fn etag(view: &OrderView) -> String {
    format!("\"{}-{}\"", view.order.version, u8::from(view.envio.is_some()))
}

/// Whether `If-None-Match` (any number of headers, each a list) names `etag` or is `*`. The comparison is the weak one
/// RFC 9110 prescribes for `If-None-Match`, so `W/"3-1"` matches `"3-1"`. Unreadable values match nothing.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// One order with its versions and shipment, as the workers applied them.
#[utoipa::path(
    get, path = "/api/pedidos/{pedidoId}", tag = "pedidos",
    params(
        ("pedidoId" = Uuid, Path),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer (or `*`): 304 when the order has not changed"),
        ("x-request-id" = Option<String>, Header, description = "Correlation id; generated when absent"),
    ),
    security((), ("apiKey" = []), ("adminBearer" = [])),
    responses(
        (status = 200, description = "The order", body = Pedido, headers(
            ("ETag" = String, description = "Changes with the version and when the shipment appears"),
            ("Cache-Control" = String, description = "`no-cache`: revalidate with If-None-Match"),
        )),
        (status = 304, description = "Unchanged since the ETag given in If-None-Match", headers(("ETag" = String))),
        (status = 400, description = "Path not valid UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API keys are configured and the request has none", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key is not a configured one", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order stored (yet), or another client's order: accepted orders appear once a worker has applied them", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "pedidoId is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A stored item could not be read; logged with the request id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Order store unavailable; retry after Retry-After seconds", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_order(
    access: ReadAccess,
    State(state): State<AppState>,
    pedido_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(pedido_id) = pedido_id?;
    let pedido_id = super::path_uuid(&pedido_id, "pedidoId")?;
    // Another client's order answers exactly like one that does not exist, so ids leak nothing.
    let Some(view) = state.orders.get(pedido_id).await?.filter(|view| access.may_read(view.order.client.as_deref()))
    else {
        return Err(ApiError::NotFound(format!(
            "No order {pedido_id} is stored. An accepted order (202) appears here once a worker has applied it, \
             usually within seconds; retry shortly."
        )));
    };
    let tag = etag(&view);
    // The tag is ASCII digits and quotes, always a valid header value; the fallback only keeps this path panic-free.
    let tag_value = HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"0-0\""));
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if none_match(&headers, &tag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag_value), cache]).into_response());
    }
    Ok(([(header::ETAG, tag_value), cache], Json(Pedido::from(view))).into_response())
}

/// Query of `GET /api/clientes/{clienteId}/pedidos`. Both are read as text and checked here, so a bad value is a 422
/// naming the parameter rather than a generic 400.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PaginaQuery {
    /// Orders per page.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    limit: Option<String>,
    /// `nextCursor` of the previous page (opaque).
    cursor: Option<String>,
}

/// A customer's orders, newest first by fecha, a page at a time.
#[utoipa::path(
    get, path = "/api/clientes/{clienteId}/pedidos", tag = "pedidos",
    params(("clienteId" = Uuid, Path), PaginaQuery, ("x-request-id" = Option<String>, Header, description = "Correlation id; generated when absent")),
    security((), ("apiKey" = []), ("adminBearer" = [])),
    responses(
        (status = 200, description = "One page of orders (empty when the customer has none)", body = PaginaPedidos),
        (status = 400, description = "Path or query not readable", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API keys are configured and the request has none", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key is not a configured one", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such route (e.g. an empty clienteId)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "clienteId not a UUID, limit outside 1..=100, or a cursor this API did not hand out", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A stored item could not be read; logged with the request id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Order store unavailable; retry after Retry-After seconds", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_by_cliente(
    access: ReadAccess,
    State(state): State<AppState>,
    cliente_id: Result<Path<String>, PathRejection>,
    query: Result<Query<PaginaQuery>, QueryRejection>,
) -> Result<Json<PaginaPedidos>, ApiError> {
    let Path(cliente_id) = cliente_id?;
    let Query(query) = query?;
    // Both checked before answering, so a bad id and a bad limit are reported together.
    let mut errors = FieldErrors::default();
    let cliente_id = match Uuid::parse_str(&cliente_id) {
        Ok(id) => Some(id),
        Err(_) => {
            errors.add("clienteId", "path segment must be a UUID");
            None
        }
    };
    let limit = limit(query.limit.as_deref(), &mut errors);
    let (Some(cliente_id), Some(limit)) = (cliente_id, limit) else {
        return Err(ApiError::Validation(errors));
    };
    // A client sees the customer's orders it created; an operator (or an API without keys) sees all of them.
    let page = state.orders.list_by_cliente(cliente_id, access.owner_filter(), limit, query.cursor.as_deref()).await?;
    Ok(Json(PaginaPedidos {
        pedidos: page.orders.into_iter().map(PedidoResumen::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// `limit` as given: absent is [`DEFAULT_LIMIT`]; anything but a whole number in `1..=MAX_PAGE` is reported.
fn limit(raw: Option<&str>, errors: &mut FieldErrors) -> Option<u32> {
    let Some(raw) = raw else { return Some(DEFAULT_LIMIT) };
    match raw.parse::<u32>() {
        Ok(n) if (1..=MAX_PAGE).contains(&n) => Some(n),
        _ => {
            errors.add("limit", format!("must be a whole number from 1 to {MAX_PAGE}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.append(header::IF_NONE_MATCH, value);
            }
        }
        headers
    }

    #[test]
    fn if_none_match_lists_star_and_weak_tags() {
        let tag = "\"3-1\"";
        for matching in [&["\"3-1\""][..], &["*"], &["\"2-0\", \"3-1\""], &["W/\"3-1\""], &["\"1-0\"", "\"3-1\""]] {
            assert!(none_match(&headers(matching), tag), "{matching:?}");
        }
        for other in [&[][..], &["\"3-0\""], &["3-1"], &["\"3-1"], &[""], &["W/\"4-1\", \"3-10\""]] {
            assert!(!none_match(&headers(other), tag), "{other:?}");
        }
    }

    #[test]
    fn limits() {
        let mut errors = FieldErrors::default();
        assert_eq!(limit(None, &mut errors), Some(DEFAULT_LIMIT));
        assert_eq!(limit(Some("1"), &mut errors), Some(1));
        assert_eq!(limit(Some("100"), &mut errors), Some(100));
        assert!(errors.is_empty());
        for bad in ["0", "101", "-1", "", "abc", "1.5", "99999999999999999999"] {
            let mut errors = FieldErrors::default();
            assert_eq!(limit(Some(bad), &mut errors), None, "{bad}");
            assert!(errors.get("limit").is_some(), "{bad}");
        }
    }
}
