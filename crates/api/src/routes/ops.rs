//! Operational endpoints: liveness, readiness, metrics, and fallbacks for unknown routes and methods.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::AppState;

/// How long a readiness answer is reused, so load-balancer probes do not hammer SNS and DynamoDB.
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

/// What the last readiness probe found, per dependency.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub sns: bool,
    pub store: bool,
}

impl Checked {
    /// Dependency name to `ok` or `unavailable`, as both answers show it.
    fn dependencies(self) -> BTreeMap<&'static str, &'static str> {
        let state = |ok: bool| if ok { "ok" } else { "unavailable" };
        BTreeMap::from([("sns", state(self.sns)), ("store", state(self.store))])
    }
}

/// Body of a 200 from `/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Always `ready`.
    pub status: &'static str,
    /// Dependency name (`sns`, `store`) to its state (`ok`).
    #[schema(value_type = BTreeMap<String, String>, example = json!({"sns": "ok", "store": "ok"}))]
    pub dependencies: BTreeMap<&'static str, &'static str>,
}

/// Readiness: 200 only when the topic and the order table both answer (cached a few seconds), else 503 naming which
/// dependency is down.
#[utoipa::path(get, path = "/ready", tag = "ops", responses(
    (status = 200, description = "SNS topic and order store reachable", body = Readiness),
    (status = 503, description = "A dependency is unreachable; `dependencies` names each one's state", body = Problem, content_type = "application/problem+json"),
))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    // The lock also coalesces concurrent probes into one round of checks.
    let mut cached = state.readiness.lock().await;
    let checked = match *cached {
        Some((at, checked)) if at.elapsed() < READY_CACHE => checked,
        _ => {
            let (sns, store) = tokio::join!(state.bus.check(), state.orders.check());
            if let Err(err) = &sns {
                tracing::warn!(error = %err, "readiness: SNS check failed");
            }
            if let Err(err) = &store {
                tracing::warn!(error = %err, "readiness: order store check failed");
            }
            let checked = Checked { sns: sns.is_ok(), store: store.is_ok() };
            *cached = Some((Instant::now(), checked));
            checked
        }
    };
    if checked.sns && checked.store {
        Ok(Json(Readiness { status: "ready", dependencies: checked.dependencies() }))
    } else {
        Err(ApiError::NotReady(checked.dependencies()))
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
