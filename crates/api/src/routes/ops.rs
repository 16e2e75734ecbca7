//! Operational endpoints: liveness, readiness, metrics, and fallbacks for unknown routes and methods.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::error::ApiError;
use crate::AppState;

/// How long a readiness answer is reused, so load-balancer probes do not hammer SNS.
pub const READY_CACHE: Duration = Duration::from_secs(5);

/// Liveness: the process serves HTTP. Never depends on SNS, so an SNS outage does not get the task killed.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, description = "Alive")))]
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The seed's liveness route.
#[utoipa::path(get, path = "/status", tag = "ops", responses((status = 200, description = "Alive")))]
pub async fn status() -> Json<serde_json::Value> {
    Json(json!({"message": "API Corriendo"}))
}

/// Readiness: 200 only when the topic answers (cached a few seconds), else 503.
#[utoipa::path(get, path = "/ready", tag = "ops", responses((status = 200, description = "SNS topic reachable"), (status = 503, description = "SNS topic not reachable")))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    // The lock also coalesces concurrent probes into one SNS call.
    let mut cached = state.readiness.lock().await;
    let ok = match *cached {
        Some((at, ok)) if at.elapsed() < READY_CACHE => ok,
        _ => {
            let ok = match state.bus.check().await {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(error = %err, "readiness check failed");
                    false
                }
            };
            *cached = Some((Instant::now(), ok));
            ok
        }
    };
    if ok {
        Ok(Json(json!({"status": "ready"})))
    } else {
        Err(ApiError::Unavailable("topic not reachable".into()))
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// `/` used to serve Swagger UI in the seed; send people to the docs.
pub async fn root() -> impl IntoResponse {
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, "/docs/")])
}
