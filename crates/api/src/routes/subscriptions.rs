//! The seed's email subscriptions to the topic.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::bus::SubscriptionStatus;
use crate::error::{ApiError, Problem};
use crate::extract::{parse_object, RawBody};
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
pub struct EmailQuery {
    /// The address to subscribe (alternative to the JSON body).
    email: Option<String>,
}

/// Body of `POST /api/suscripcion`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Suscripcion {
    #[schema(example = "cliente@example.com")]
    email: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EstadoSuscripcion {
    pub email: String,
    /// `Confirmado` or `Pendiente`.
    pub status: &'static str,
}

fn label(status: SubscriptionStatus) -> &'static str {
    match status {
        SubscriptionStatus::Confirmado => "Confirmado",
        SubscriptionStatus::Pendiente => "Pendiente",
    }
}

/// Subscribe an email address to order notifications (or report its current state).
#[utoipa::path(
    post, path = "/api/suscripcion", tag = "suscripciones",
    params(EmailQuery),
    request_body(content = Option<Suscripcion>, content_type = "application/json"),
    responses(
        (status = 201, description = "Subscription requested; the recipient must confirm it", body = EstadoSuscripcion),
        (status = 200, description = "Already subscribed (pending or confirmed)", body = EstadoSuscripcion),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn subscribe(
    State(state): State<AppState>,
    query: Result<Query<EmailQuery>, QueryRejection>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<EstadoSuscripcion>), ApiError> {
    let Query(query) = query?;
    let email = match query.email {
        Some(email) => email,
        None => email_from_body(&headers, &body)?,
    };
    let email = valid_email(&email)?;
    if let Some(status) = state.bus.email_status(&email).await.map_err(|e| ApiError::Unavailable(e.to_string()))? {
        return Ok((StatusCode::OK, Json(EstadoSuscripcion { email, status: label(status) })));
    }
    state.bus.subscribe_email(&email).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    tracing::info!("email subscription requested");
    Ok((StatusCode::CREATED, Json(EstadoSuscripcion { email, status: label(SubscriptionStatus::Pendiente) })))
}

fn email_from_body(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    let missing = || ApiError::invalid_field("email", "is required (JSON body {\"email\": ...} or ?email=)");
    if body.is_empty() {
        return Err(missing());
    }
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let object = parse_object(body)?;
    match object.iter().find(|(k, _)| k.eq_ignore_ascii_case("email")).map(|(_, v)| v) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::invalid_field("email", "must be a string")),
        None => Err(missing()),
    }
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

/// The state of an email subscription.
#[utoipa::path(
    get, path = "/api/suscripcion/estado/{email}", tag = "suscripciones",
    params(("email" = String, Path)),
    responses(
        (status = 200, body = EstadoSuscripcion),
        (status = 400, description = "Path not valid UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No Encontrado", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    email: Result<Path<String>, PathRejection>,
) -> Result<Json<EstadoSuscripcion>, ApiError> {
    let Path(email) = email?;
    let email = valid_email(&email)?;
    match state.bus.email_status(&email).await.map_err(|e| ApiError::Unavailable(e.to_string()))? {
        Some(status) => Ok(Json(EstadoSuscripcion { email, status: label(status) })),
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
