//! Liveness state (SQS and the order store), the queue's depth, and the worker's HTTP endpoint: `/health` and
//! `/metrics` for ECS and Elastic Beanstalk checks and Prometheus, and the live page ([`crate::live`]). The port is
//! internal: it is not behind the load balancer.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use platform::metrics::PrometheusHandle;
use serde_json::json;

use crate::live::Feed;
use crate::queue::{QueueDepth, Received};

/// Shared between the consumer, the queue-depth watcher and the HTTP endpoint.
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
    /// `pedidos_worker_in_flight`, resolved once: set twice per message, so not looked up by name each time.
    in_flight_gauge: metrics::Gauge,
    started: u64,
    /// Receives failing continuously for this long make the worker unhealthy.
    unhealthy_after: Duration,
    /// Age in milliseconds of the oldest message received since the watcher last looked (0: none received).
    oldest_in_window: AtomicU64,
    /// The watcher's latest view of the queue, for `/health`.
    queue_view: Mutex<QueueView>,
    /// Settled messages, for the live page.
    pub live: Feed,
}

/// What `/health` says about the queue: its depth from the latest poll and the oldest message age of the latest window.
#[derive(Debug, Clone, Copy, Default)]
struct QueueView {
    /// `None` until the first poll answered.
    depth: Option<QueueDepth>,
    oldest_age: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Decrements the in-flight count when dropped, whatever path the task took.
pub struct InFlight<'a>(&'a Health);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let now = self.0.in_flight.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.0.in_flight_gauge.set(now as f64);
    }
}

impl Health {
    pub fn new(role: &'static str, queue: String, unhealthy_after: Duration) -> Self {
        // The recorder first: a handle taken before it is installed would record nowhere.
        let _ = platform::metrics::handle();
        Self {
            role,
            queue,
            last_ok: AtomicU64::new(0),
            failing_since: AtomicU64::new(0),
            store_failing_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            in_flight_gauge: metrics::gauge!("pedidos_worker_in_flight"),
            started: now_ms(),
            unhealthy_after,
            oldest_in_window: AtomicU64::new(0),
            queue_view: Mutex::new(QueueView::default()),
            live: Feed::new(),
        }
    }

    /// Notes the age of the oldest of `messages` (now minus `SentTimestamp`) for the current window. One clock read
    /// and one atomic per receive: it runs on the receive loop.
    pub fn note_ages(&self, messages: &[Received]) {
        let Some(oldest_sent) = messages.iter().filter_map(|m| m.sent_at_ms).min() else { return };
        self.oldest_in_window.fetch_max(now_ms().saturating_sub(oldest_sent), Ordering::Relaxed);
    }

    /// Ends the current window: returns the age of the oldest message received in it (zero when nothing was), and
    /// starts the next one.
    pub fn take_oldest_age(&self) -> Duration {
        let age = Duration::from_millis(self.oldest_in_window.swap(0, Ordering::Relaxed));
        self.view().oldest_age = age;
        age
    }

    /// The age of the oldest message received in the last finished window.
    pub fn oldest_age(&self) -> Duration {
        self.view().oldest_age
    }

    /// Records the queue's depth from the latest poll.
    pub fn set_depth(&self, depth: QueueDepth) {
        self.view().depth = Some(depth);
    }

    fn view(&self) -> std::sync::MutexGuard<'_, QueueView> {
        // A panic while holding this lock cannot leave a half-written Copy value: the data is still good.
        self.queue_view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        self.in_flight_gauge.set(now as f64);
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

    /// The `/health` body (also the live page's `counters` event, with the outcome counts added).
    pub fn report(&self) -> serde_json::Value {
        let now = now_ms();
        let view = *self.view();
        let last_ok = self.last_ok.load(Ordering::Relaxed);
        let failing_since = self.failing_since.load(Ordering::Relaxed);
        let store_failing_since = self.store_failing_since.load(Ordering::Relaxed);
        let seconds_since = |at: u64| (at != 0).then(|| now.saturating_sub(at) as f64 / 1000.0);
        json!({
            "status": if self.healthy() { "ok" } else { "unhealthy" },
            "role": self.role,
            "queue": {
                "url": self.queue,
                "visible": view.depth.map(|d| d.visible),
                "inFlight": view.depth.map(|d| d.in_flight),
                "delayed": view.depth.map(|d| d.delayed),
                "oldestAgeSeconds": view.oldest_age.as_secs_f64(),
            },
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

/// `GET /health`, `GET /metrics`, and the live page (`GET /`, `/events`, its script and style).
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { health: Arc::clone(&health), metrics: platform::metrics::handle() })
        .merge(crate::live::router(health))
}

async fn health_handler(State(state): State<AppState>) -> impl IntoResponse {
    let status = if state.health.healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(state.health.report()))
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
