//! The seed's email subscriptions to the topic. Admin routes: only operators manage subscriptions
//! ([`crate::admin`] authenticates every request before these handlers run).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use domain::{EventType, FieldErrors};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::admin::Admin;
use crate::bus::SubscriptionStatus;
use crate::error::{ApiError, Problem};
use crate::extract::{parse_object, RawBody};
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
pub struct EmailQuery {
    /// The address to subscribe (alternative to the JSON body). Checked as the body's `email` is (a 422 otherwise);
    /// the document states no constraint here because schemathesis cannot send an optional query parameter it
    /// generated to violate one.
    email: Option<String>,
}

/// Body of `POST /api/suscripcion`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Suscripcion {
    #[schema(
        example = "cliente@example.com",
        max_length = 254,
        pattern = r"^[^@\s,;\x00-\x1f\x7f-\x9f]+@[^@\s,;.\x00-\x1f\x7f-\x9f]+(?:\.[^@\s,;.\x00-\x1f\x7f-\x9f]+)+$"
    )]
    email: String,
    /// Only these events reach the address (an SNS filter policy on `eventType`); every event when absent. Applied
    /// when the subscription is created: an existing subscription keeps its filter.
    #[schema(example = json!(["PedidoCreado"]), min_items = 1, nullable = false)]
    event_types: Option<Vec<TipoEvento>>,
}

/// An event type a subscription can be limited to.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum TipoEvento {
    PedidoCreado,
    PedidoActualizado,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EstadoSuscripcion {
    pub email: String,
    /// `Confirmado` or `Pendiente`.
    pub status: &'static str,
    /// The event types a new subscription was limited to, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<&'static str>>,
}

/// Every event type, for validating a subscription's filter.
const EVENT_TYPES: [EventType; 2] = [EventType::PedidoCreado, EventType::PedidoActualizado];

/// A compile error here when the contract gains an event type: add it to [`EVENT_TYPES`] and [`TipoEvento`].
const _: fn(EventType) = |event_type| match event_type {
    EventType::PedidoCreado | EventType::PedidoActualizado => {}
};

fn label(status: SubscriptionStatus) -> &'static str {
    match status {
        SubscriptionStatus::Confirmado => "Confirmado",
        SubscriptionStatus::Pendiente => "Pendiente",
    }
}

/// Subscribe an email address to order notifications, optionally only some event types (or report its current
/// state). Admin only.
#[utoipa::path(
    post, path = "/api/suscripcion", tag = "suscripciones",
    params(EmailQuery),
    request_body(content = Option<Suscripcion>, content_type = "application/json"),
    security(("adminBearer" = [])),
    responses(
        (status = 201, description = "Subscription requested; the recipient must confirm it", body = EstadoSuscripcion),
        (status = 200, description = "Already subscribed (pending or confirmed)", body = EstadoSuscripcion),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No admin credential, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Session request without this origin or without its CSRF token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin surface off (ADMIN_TOKEN unset) or on its own port (ADMIN_PORT)", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn subscribe(
    _admin: Admin,
    State(state): State<AppState>,
    query: Result<Query<EmailQuery>, QueryRejection>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<EstadoSuscripcion>), ApiError> {
    let Query(query) = query?;
    let request = match query.email {
        Some(email) => SubscriptionRequest { email, event_types: None },
        None => request_from_body(&headers, &body)?,
    };
    let email = valid_email(&request.email)?;
    if let Some(status) = state.bus.email_status(&email).await.map_err(ApiError::from)? {
        return Ok((StatusCode::OK, Json(EstadoSuscripcion { email, status: label(status), event_types: None })));
    }
    let event_types = request.event_types.as_deref();
    state.bus.subscribe_email(&email, event_types).await.map_err(ApiError::from)?;
    let names = event_types.map(|types| types.iter().map(|t| t.as_str()).collect::<Vec<_>>());
    tracing::info!(event_types = ?names, "email subscription requested");
    let answer = EstadoSuscripcion { email, status: label(SubscriptionStatus::Pendiente), event_types: names };
    Ok((StatusCode::CREATED, Json(answer)))
}

/// A subscription request, read from the query or the JSON body.
struct SubscriptionRequest {
    email: String,
    event_types: Option<Vec<EventType>>,
}

fn request_from_body(headers: &HeaderMap, body: &[u8]) -> Result<SubscriptionRequest, ApiError> {
    const MISSING: &str = "is required (JSON body {\"email\": ...} or ?email=)";
    if body.is_empty() {
        return Err(ApiError::invalid_field("email", MISSING));
    }
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let object = parse_object(body)?;
    let field = |name: &str| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    // Every field's problems in one answer; a field the API does not know is one too, not silently ignored.
    let mut errors = FieldErrors::default();
    for key in object.keys().filter(|key| !["email", "eventTypes"].iter().any(|known| key.eq_ignore_ascii_case(known)))
    {
        errors.add(key.chars().take(64).collect::<String>(), "unknown field");
    }
    let email = match field("email") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.add("email", "must be a string");
            None
        }
        None => {
            errors.add("email", MISSING);
            None
        }
    };
    let event_types = match field("eventTypes").map(event_types).transpose() {
        Ok(types) => types,
        Err(problem) => {
            errors.add("eventTypes", problem);
            None
        }
    };
    match email {
        Some(email) if errors.is_empty() => Ok(SubscriptionRequest { email, event_types }),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// `eventTypes`: a non-empty array of event type names (repeats are ignored).
///
/// # Errors
/// The problem with it, for the `eventTypes` field.
fn event_types(value: &serde_json::Value) -> Result<Vec<EventType>, String> {
    let invalid = || {
        let names = EVENT_TYPES.map(EventType::as_str).join(", ");
        format!("must be a non-empty array of event types ({names}); omit it to receive every event")
    };
    let serde_json::Value::Array(items) = value else {
        return Err(invalid());
    };
    let mut types = Vec::new();
    for item in items {
        let found = item.as_str().and_then(|name| EVENT_TYPES.into_iter().find(|t| t.as_str() == name));
        match found {
            Some(event_type) if !types.contains(&event_type) => types.push(event_type),
            Some(_) => {}
            None => return Err(invalid()),
        }
    }
    if types.is_empty() {
        return Err(invalid());
    }
    Ok(types)
}

/// A deliberately simple check: one `@`, a dotted domain, no spaces, at most 254 characters.
fn valid_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim();
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == ';')
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.split('.').count() >= 2
                && domain.split('.').all(|label| !label.is_empty())
        });
    if ok {
        Ok(email.to_owned())
    } else {
        Err(ApiError::invalid_field("email", "must be a valid email address, e.g. cliente@example.com"))
    }
}

/// The state of an email subscription. Admin only.
#[utoipa::path(
    get, path = "/api/suscripcion/estado/{email}", tag = "suscripciones",
    params(("email" = String, Path, max_length = 254, pattern = r"^[^@\s,;\x00-\x1f\x7f-\x9f]+@[^@\s,;.\x00-\x1f\x7f-\x9f]+(?:\.[^@\s,;.\x00-\x1f\x7f-\x9f]+)+$")),
    security(("adminBearer" = [])),
    responses(
        (status = 200, body = EstadoSuscripcion),
        (status = 400, description = "Path not valid UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No admin credential, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No Encontrado; or the admin surface is off (ADMIN_TOKEN unset) or on its own port (ADMIN_PORT)", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn status(
    _admin: Admin,
    State(state): State<AppState>,
    email: Result<Path<String>, PathRejection>,
) -> Result<Json<EstadoSuscripcion>, ApiError> {
    let Path(email) = email?;
    let email = valid_email(&email)?;
    match state.bus.email_status(&email).await.map_err(ApiError::from)? {
        Some(status) => Ok(Json(EstadoSuscripcion { email, status: label(status), event_types: None })),
        None => Err(ApiError::NotFound("No Encontrado: no subscription for this email".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::valid_email;

    #[test]
    fn emails() {
        for ok in ["a@b.co", " x.y+z@example.com "] {
            assert!(valid_email(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "a@b", "@b.co", "a@@b.co", "a b@c.co", "a@b..co", "a@.co"] {
            assert!(valid_email(bad).is_err(), "{bad}");
        }
    }
}
