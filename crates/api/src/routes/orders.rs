//! `POST /api/pedidos` and `PUT /api/pedidos/{pedidoId}`: validate, check the order store, publish, answer 202 only
//! after SNS accepted.
//!
//! The store check is advisory: the workers' conditional write is what keeps versions from going backwards. The
//! check only turns what would be a silent drop in a worker (a version already applied, a reused pedidoId) into a
//! 409 the client can act on. An order accepted but not applied yet is absent, so it is published as before.

use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use domain::{FieldErrors, OrderEvent};
use serde::Serialize;
use store::OrderRecord;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api_keys::WriteAccess;
use crate::bus::BusError;
use crate::error::{ApiError, Problem};
use crate::extract::JsonObject;
use crate::idempotency_key;
use crate::order_input::{self, Mode, OrderInput};
use crate::AppState;

/// How far above the stored version (or 1, for an order not applied yet) a `PUT` may go: no single write can use up
/// more than a thousandth of an order's version space (`MAX_VERSION`), so a mistaken or hostile jump cannot freeze
/// an order (every later version would have to be above it).
pub const MAX_VERSION_STEP: u64 = 1_000;

/// The most an order write may take, store check and publish together: under the 10 s a client is promised
/// (docs/RELIABILITY.md G2), with room for the response.
pub const WRITE_BUDGET: std::time::Duration = std::time::Duration::from_secs(9);

/// Body of `POST /api/pedidos` (documentation only; the handler validates field by field to report every problem).
/// Field names are matched case-insensitively, so the seed's `PedidoId`, `ClienteId`, `Fecha`, `Total` work too.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrearPedido {
    /// Optional; generated when absent. Retrying the same order with its own id is answered 202 again (the workers
    /// drop the repeat); the id of a different stored order, or of one already updated, is a 409.
    #[schema(nullable = false)]
    pedido_id: Option<Uuid>,
    cliente_id: Uuid,
    /// RFC 3339; defaults to now.
    #[schema(nullable = false)]
    fecha: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// A decimal string: > 0, at most 2 decimals, at most 999999999.99. A JSON number with the same digits is
    /// accepted too (read from its text, never through a float).
    #[schema(value_type = String, pattern = r"^(?:[1-9][0-9]{0,8}(?:\.[0-9]{1,2})?|0\.(?:[1-9][0-9]?|0[1-9]))$", example = "59.98")]
    total: String,
    /// When present, `total` must equal the sum of `cantidad * precioUnitario` exactly (a rule between fields,
    /// which JSON Schema cannot state).
    #[schema(min_items = 1, max_items = 500, nullable = false)]
    items: Option<Vec<ItemInput>>,
}

/// Body of `PUT /api/pedidos/{pedidoId}`: the full new state and its version.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActualizarPedido {
    /// Must equal the path's pedidoId when given.
    #[schema(nullable = false)]
    pedido_id: Option<Uuid>,
    cliente_id: Uuid,
    #[schema(nullable = false)]
    fecha: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Same rules as in `CrearPedido`.
    #[schema(value_type = String, pattern = r"^(?:[1-9][0-9]{0,8}(?:\.[0-9]{1,2})?|0\.(?:[1-9][0-9]?|0[1-9]))$", example = "64.50")]
    total: String,
    #[schema(min_items = 1, max_items = 500, nullable = false)]
    items: Option<Vec<ItemInput>>,
    /// The order's new version, from 2 (1 is the creation) to 1000000; it must be above the stored version.
    #[schema(minimum = 2, maximum = 1_000_000)]
    version: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ItemInput {
    #[schema(min_length = 1, max_length = 64)]
    producto_id: String,
    #[schema(minimum = 1, maximum = 4_294_967_295_u64)]
    cantidad: u32,
    /// Same rules as `total`.
    #[schema(value_type = String, pattern = r"^(?:[1-9][0-9]{0,8}(?:\.[0-9]{1,2})?|0\.(?:[1-9][0-9]?|0[1-9]))$", example = "19.99")]
    precio_unitario: String,
}

/// The answer once SNS has accepted the event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Publicado {
    /// Always `publicado`.
    pub status: &'static str,
    pub pedido_id: Uuid,
    pub version: u64,
    /// The SNS MessageId.
    pub message_id: String,
}

/// Publish a new order (PedidoCreado, version 1).
#[utoipa::path(
    post, path = "/api/pedidos", tag = "pedidos",
    request_body(content = CrearPedido, content_type = "application/json"),
    params(
        ("x-request-id" = Option<String>, Header, description = "Correlation id; generated when absent"),
        ("Idempotency-Key" = Option<String>, Header, pattern = r#"^(?:"[!#-\[\]-~](?:[ !#-\[\]-~]{0,253}[!#-\[\]-~])?"|[!#-\[\]-~](?:[ !#-\[\]-~]{0,253}[!#-\[\]-~])?)$"#, description = "For clients that do not choose the pedidoId: a unique key per order (a quoted string, e.g. a UUID). A retry with the same key (same API key, same clienteId) is the same order. A body pedidoId takes precedence."),
    ),
    security((), ("apiKey" = [])),
    responses(
        (status = 202, description = "Published to SNS", body = Publicado),
        (status = 400, description = "Malformed JSON, a repeated key, or a malformed Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API keys are configured and the request has none", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key is not a configured one", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The pedidoId belongs to a different stored order, or to one already updated", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A stored item could not be read; logged with the request id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "SNS or the order store unavailable, or the 9 s budget ran out; the body's pedidoId is the one to retry with", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    access: WriteAccess,
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Publicado>), ApiError> {
    let idempotency_key = idempotency_key::from_headers(&headers)?;
    let now = Utc::now();
    let mut input = order_input::parse(body, Mode::Create, now).map_err(ApiError::Validation)?;
    // A body pedidoId is the client's own idempotency key and wins; without one, the header's key names the order.
    if let (false, Some(key)) = (input.pedido_id_given, &idempotency_key) {
        input.order.pedido_id = idempotency_key::pedido_id(access.client_name(), input.order.cliente_id, key);
    }
    let pedido_id = input.order.pedido_id;
    within_budget(pedido_id, async {
        // A generated id cannot collide with anything: only a chosen or derived id costs a store read.
        if input.pedido_id_given || idempotency_key.is_some() {
            if let Some(stored) = state.orders.get(pedido_id).await? {
                if stored.order.client.as_deref() != access.client_name() {
                    // Another client's order: say nothing about it.
                    return Err(ApiError::Conflict(format!(
                        "pedidoId {pedido_id} is taken; a new order needs a new pedidoId (or Idempotency-Key)"
                    )));
                }
                retry_of(&stored.order, &mut input)?;
            }
        }
        let event = OrderEvent::created(input.order, now).by_client(access.client_name().map(str::to_owned));
        publish(&state, &headers, event).await
    })
    .await
}

/// Runs an order write's store check and publish within [`WRITE_BUDGET`], so a client never waits past the promised
/// 10 s whatever the dependencies do (each call has its own SDK budget; together they could exceed it). Any 503,
/// the budget's included, names the `pedidoId` to retry with.
async fn within_budget<T>(
    pedido_id: Uuid,
    write: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(WRITE_BUDGET, write).await {
        Ok(result) => result.map_err(|e| e.for_order(pedido_id)),
        Err(_) => Err(ApiError::OrderUnavailable {
            pedido_id,
            cause: format!("the order store and the bus took longer than {WRITE_BUDGET:?} together"),
        }),
    }
}

/// A POST whose pedidoId is already stored. The same order still at version 1 is a client retry (its 202 may have
/// been lost): it is answered as the first time and published again, and the workers drop the repeat as a
/// duplicate. Anything else would be dropped silently by the workers, so it is a 409 instead.
///
/// # Errors
/// [`ApiError::Conflict`] naming what differs, or the stored version.
fn retry_of(stored: &OrderRecord, input: &mut OrderInput) -> Result<(), ApiError> {
    let id = stored.pedido_id;
    if stored.version > 1 {
        return Err(ApiError::Conflict(format!(
            "order {id} already exists and is at version {}; change it with PUT /api/pedidos/{id} and version {}",
            stored.version,
            stored.version.saturating_add(1)
        )));
    }
    same_content(stored, input).map_err(|differ| {
        ApiError::Conflict(format!(
            "order {id} already exists with a different {differ}; a new order needs a new pedidoId (or \
             Idempotency-Key)"
        ))
    })
}

/// Whether `input` carries the stored order's content (the fields that differ otherwise, comma-separated). A request
/// without `fecha` takes the stored one (a retry must publish exactly what was stored, so every reader sees one
/// order under one version).
fn same_content(stored: &OrderRecord, input: &mut OrderInput) -> Result<(), String> {
    let order = &input.order;
    let differ: Vec<&str> = [
        ("clienteId", stored.cliente_id != order.cliente_id),
        ("total", stored.total != order.total),
        ("items", stored.items != order.items),
        ("fecha", input.fecha_given && stored.fecha != order.fecha),
    ]
    .into_iter()
    .filter_map(|(field, differs)| differs.then_some(field))
    .collect();
    if !differ.is_empty() {
        return Err(differ.join(", "));
    }
    input.order.fecha = stored.fecha;
    Ok(())
}

/// Publish the full new state of an order (PedidoActualizado, version 2 or later).
#[utoipa::path(
    put, path = "/api/pedidos/{pedidoId}", tag = "pedidos",
    request_body(content = ActualizarPedido, content_type = "application/json"),
    params(("pedidoId" = Uuid, Path), ("x-request-id" = Option<String>, Header, description = "Correlation id")),
    security((), ("apiKey" = [])),
    responses(
        (status = 202, description = "Published to SNS", body = Publicado),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API keys are configured and the request has none", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key is not a configured one", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The store holds a newer version, or this version with other content (a retry of the applied version with the same content is answered 202 again)", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "A stored item could not be read; logged with the request id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "SNS or the order store unavailable, or the 9 s budget ran out; retry with the same body", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    access: WriteAccess,
    State(state): State<AppState>,
    pedido_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Publicado>), ApiError> {
    let Path(pedido_id) = pedido_id?;
    let pedido_id = super::path_uuid(&pedido_id, "pedidoId")?;
    let now = Utc::now();
    let mut input = order_input::parse(body, Mode::Update { pedido_id }, now).map_err(ApiError::Validation)?;
    let version = input.version.unwrap_or(2);
    within_budget(pedido_id, async {
        match state.orders.get(pedido_id).await? {
            Some(stored) if stored.order.client.as_deref() == access.client_name() => {
                update_of(&stored.order, version, &mut input)?;
            }
            // With keys on, an order is changed only once its owner is known: one not applied yet could otherwise
            // be taken by whoever updates it first. Another client's order is absent to this one (404, not 403).
            Some(_) => return Err(not_found(pedido_id)),
            None if access.client.is_some() => return Err(not_found(pedido_id)),
            None => check_step(version, 1)?,
        }
        let event = OrderEvent::updated(input.order, version, now).by_client(access.client_name().map(str::to_owned));
        publish(&state, &headers, event).await
    })
    .await
}

fn not_found(pedido_id: Uuid) -> ApiError {
    ApiError::NotFound(format!(
        "order {pedido_id} not found (an order can be updated once the process worker has applied it, usually within \
         a second of its POST)"
    ))
}

/// A version at most [`MAX_VERSION_STEP`] above `latest`.
///
/// # Errors
/// [`ApiError::Validation`] on `version`.
fn check_step(version: u64, latest: u64) -> Result<(), ApiError> {
    let highest = latest.saturating_add(MAX_VERSION_STEP);
    if version <= highest {
        return Ok(());
    }
    let mut errors = FieldErrors::default();
    errors.add("version", format!("must be at most {highest}: {MAX_VERSION_STEP} above the stored version {latest}"));
    Err(ApiError::Validation(errors))
}

/// A PUT of an order the store holds. A newer version is published; without `fecha` it keeps the stored one (an
/// update does not move the date the customer ordered). The stored version with the same content is a client retry,
/// answered as the first time (the workers drop the repeat as a duplicate); with other content the workers would
/// dead-letter it as a version conflict, so it is a 409. An older version would be dropped as stale: a 409 too.
///
/// # Errors
/// [`ApiError::Conflict`] naming the stored version, or the fields that differ.
fn update_of(stored: &OrderRecord, version: u64, input: &mut OrderInput) -> Result<(), ApiError> {
    let latest = stored.version;
    let next = latest.saturating_add(1);
    if stored.cliente_id != input.order.cliente_id {
        let mut errors = FieldErrors::default();
        errors.add(
            "clienteId",
            format!("cannot change: order {} belongs to customer {}", stored.pedido_id, stored.cliente_id),
        );
        return Err(ApiError::Validation(errors));
    }
    match version.cmp(&latest) {
        std::cmp::Ordering::Greater => {
            check_step(version, latest)?;
            if !input.fecha_given {
                input.order.fecha = stored.fecha;
            }
            Ok(())
        }
        std::cmp::Ordering::Equal => same_content(stored, input).map_err(|differ| {
            ApiError::Conflict(format!(
                "version {version} is already applied with a different {differ}; send version {next} to change the \
                 order"
            ))
        }),
        std::cmp::Ordering::Less => Err(ApiError::Conflict(format!(
            "version {version} is older than the stored version {latest}. Send version {next} to change the order"
        ))),
    }
}

async fn publish(
    state: &AppState,
    headers: &HeaderMap,
    event: OrderEvent,
) -> Result<(StatusCode, Json<Publicado>), ApiError> {
    let request_id = super::request_id(headers);
    if platform::otel::enabled() {
        // The order on the request's span, so a trace is found by its pedidoId.
        use platform::otel::SpanExt as _;
        let span = tracing::Span::current();
        span.set_attribute("pedido_id", event.order.pedido_id.to_string());
        span.set_attribute("version", i64::try_from(event.version).unwrap_or(i64::MAX));
        span.set_attribute("event_type", event.event_type.as_str());
    }
    let started = Instant::now();
    let result = state.bus.publish(&event, &request_id).await;
    metrics::histogram!("pedidos_api_publish_duration_seconds").record(started.elapsed().as_secs_f64());
    let event_type = event.event_type.as_str();
    match result {
        Ok(message_id) => {
            metrics::counter!("pedidos_api_events_published_total", "type" => event_type).increment(1);
            crate::console::sampler::record_accepted();
            tracing::info!(pedido_id = %event.order.pedido_id, version = event.version, %message_id, r#type = event_type, "event published");
            Ok((
                StatusCode::ACCEPTED,
                Json(Publicado {
                    status: "publicado",
                    pedido_id: event.order.pedido_id,
                    version: event.version,
                    message_id,
                }),
            ))
        }
        Err(err) => {
            let reason = match err {
                BusError::Unavailable(_) => "unavailable",
                BusError::Rejected(_) => "rejected",
                BusError::Denied(_) => "denied",
            };
            metrics::counter!("pedidos_api_publish_failures_total", "reason" => reason).increment(1);
            if matches!(err, BusError::Denied(_)) {
                tracing::error!(pedido_id = %event.order.pedido_id, error = %err, "publish denied; the API role's policy lacks this action");
            } else {
                tracing::warn!(pedido_id = %event.order.pedido_id, version = event.version, error = %err, "publish failed");
            }
            // A rejected publish (wrong ARN, missing permission) is still not the client's fault, and retrying may
            // work once operators fix it: 503, never a leak of the cause.
            Err(ApiError::OrderUnavailable { pedido_id: event.order.pedido_id, cause: err.to_string() })
        }
    }
}
