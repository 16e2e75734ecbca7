//! Liveness state (SQS and the order store) and the worker's HTTP endpoint (`/health`, `/metrics`) for ECS and Elastic Beanstalk checks.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use platform::metrics::PrometheusHandle;
use serde_json::json;

/// Shared between the consumer and the HTTP endpoint.
pub struct Health {
    pub role: &'static str,
    pub queue: String,
    /// Unix millis of the last successful receive (0: none yet).
    last_ok: AtomicU64,
    /// Unix millis since when receives fail (0: they do not).
    failing_since: AtomicU64,
    /// Unix millis since when the order store fails (0: it does not).
    store_failing_since: AtomicU64,
    in_flight: AtomicUsize,
    started: u64,
    /// Receives failing continuously for this long make the worker unhealthy.
    unhealthy_after: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Decrements the in-flight count when dropped, whatever path the task took.
pub struct InFlight<'a>(&'a Health);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let now = self.0.in_flight.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        metrics::gauge!("pedidos_worker_in_flight").set(now as f64);
    }
}

impl Health {
    pub fn new(role: &'static str, queue: String, unhealthy_after: Duration) -> Self {
        Self {
            role,
            queue,
            last_ok: AtomicU64::new(0),
            failing_since: AtomicU64::new(0),
            store_failing_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started: now_ms(),
            unhealthy_after,
        }
    }

    pub fn received_ok(&self) {
        self.last_ok.store(now_ms(), Ordering::Relaxed);
        self.failing_since.store(0, Ordering::Relaxed);
    }

    pub fn receive_failed(&self) {
        let _ = self.failing_since.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn store_ok(&self) {
        self.store_failing_since.store(0, Ordering::Relaxed);
    }

    /// Returns `true` when this starts a failing period (so the caller logs it once).
    pub fn store_failed(&self) -> bool {
        self.store_failing_since.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// The store is failing right now (`/health` turns 503 once that lasts `unhealthy_after`).
    pub fn store_failing(&self) -> bool {
        self.store_failing_since.load(Ordering::Relaxed) != 0
    }

    pub fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("pedidos_worker_in_flight").set(now as f64);
        InFlight(self)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Healthy unless SQS or the store has failed continuously for `unhealthy_after`.
    pub fn healthy(&self) -> bool {
        let now = now_ms();
        [&self.failing_since, &self.store_failing_since].iter().all(|since| {
            let since = since.load(Ordering::Relaxed);
            since == 0 || u128::from(now.saturating_sub(since)) < self.unhealthy_after.as_millis()
        })
    }

    fn report(&self) -> serde_json::Value {
        let now = now_ms();
        let last_ok = self.last_ok.load(Ordering::Relaxed);
        let failing_since = self.failing_since.load(Ordering::Relaxed);
        let store_failing_since = self.store_failing_since.load(Ordering::Relaxed);
        let seconds_since = |at: u64| (at != 0).then(|| now.saturating_sub(at) as f64 / 1000.0);
        json!({
            "status": if self.healthy() { "ok" } else { "unhealthy" },
            "role": self.role,
            "queue": self.queue,
            "secondsSinceLastReceive": seconds_since(last_ok),
            "secondsFailing": seconds_since(failing_since),
            "store": if store_failing_since == 0 { "ok" } else { "failing" },
            "storeSecondsFailing": seconds_since(store_failing_since),
            "inFlight": self.in_flight(),
            "uptimeSeconds": now.saturating_sub(self.started) / 1000,
        })
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// `GET /health` and `GET /metrics`.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { health, metrics: platform::metrics::handle() })
}

async fn health_handler(State(state): State<AppState>) -> impl IntoResponse {
    let status = if state.health.healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(state.health.report()))
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
