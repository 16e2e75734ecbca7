//! What the worker says about itself, and its HTTP endpoint (`/health`, `/ready`, `/metrics`, the live page). The port
//! is internal: it is not behind the load balancer.
//!
//! Two questions are kept apart, because an orchestrator acts on one of them
//! (`docs/operations.md`, "Health endpoints"):
//! - **Liveness**, `GET /health` (the `healthcheck` subcommand, ECS container health checks, Elastic Beanstalk and
//!   compose): is this process making progress? It fails only when the worker itself is stuck: nothing moved (a
//!   receive returning, a handler attempt ending, a lease extension answered, a start-up attempt) for
//!   `LIVENESS_STALL_SECONDS`, or the runtime does not answer at all (the probe then times out). A dependency outage
//!   never fails it: a replacement task would not bring DynamoDB back, and every replacement costs each message the
//!   worker held one of its `maxReceiveCount` receives.
//! - **Dependency state**, `GET /ready` and the body of both: SQS and the handler's store, each `ok`, `failing` (since
//!   when, the last error) or `misconfigured`; `/ready` answers 503 while starting, while a dependency is
//!   misconfigured, or once one has failed for `HEALTH_FAILURE_SECONDS`. For people, alarms and dashboards: no
//!   orchestrator is pointed at it.
//!
//! Times are read from tokio's clock, so tests under a paused clock see an hour-long outage as an hour.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use platform::http::AllowedHosts;
use platform::metrics::PrometheusHandle;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::live::Feed;
use crate::queue::{QueueDepth, Received};

/// Bounds of the two answers (from `LIVENESS_STALL_SECONDS` and `HEALTH_FAILURE_SECONDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `/health` fails once nothing has moved for this long.
    pub stall_after: Duration,
    /// `/ready` fails once a dependency has failed continuously for this long.
    pub unready_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { stall_after: Duration::from_secs(180), unready_after: Duration::from_secs(60) }
    }
}

const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const STOPPING: u8 = 2;

/// Shared between the consumer, the queue-depth watcher and the HTTP endpoint.
pub struct Health {
    pub role: &'static str,
    /// The configured queue until discovery resolves its URL.
    queue: Mutex<String>,
    limits: Limits,
    /// Every time below is milliseconds since this instant (tokio's clock).
    epoch: Instant,
    phase: AtomicU8,
    /// The last time the worker made progress.
    progress: AtomicU64,
    /// The last successful receive (`u64::MAX`: none yet).
    last_receive: AtomicU64,
    pub sqs: Dependency,
    /// The handler's dependency: the order store for the two roles.
    pub store: Dependency,
    /// Signalled when the store answers again, so the receive loop resumes at once.
    store_back: Notify,
    in_flight: AtomicUsize,
    /// `pedidos_worker_in_flight`, resolved once: set twice per message, so not looked up by name each time.
    in_flight_gauge: metrics::Gauge,
    /// Age in milliseconds of the oldest message received since the watcher last looked (0: none received).
    oldest_in_window: AtomicU64,
    /// The watcher's latest view of the queue, for `/health`.
    queue_view: Mutex<QueueView>,
    /// Settled messages, for the live page.
    pub live: Feed,
}

/// One dependency's state: since when it fails (if it does), whether it is misconfigured, and its last error.
pub struct Dependency {
    name: &'static str,
    /// Milliseconds since [`Health`]'s epoch when the current failing period began, plus one (0: not failing).
    failing_since: AtomicU64,
    misconfigured: AtomicBool,
    last_error: Mutex<String>,
    /// `pedidos_worker_dependency_up{dependency}`: 1 answering, 0 failing or misconfigured.
    up: metrics::Gauge,
}

impl Dependency {
    fn new(name: &'static str) -> Self {
        let up = metrics::gauge!("pedidos_worker_dependency_up", "dependency" => name);
        up.set(1.0);
        Self {
            name,
            failing_since: AtomicU64::new(0),
            misconfigured: AtomicBool::new(false),
            last_error: Mutex::default(),
            up,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Is it failing (or misconfigured) right now?
    pub fn failing(&self) -> bool {
        self.failing_since.load(Ordering::Relaxed) != 0
    }

    pub fn misconfigured(&self) -> bool {
        self.misconfigured.load(Ordering::Relaxed)
    }

    fn state(&self) -> &'static str {
        match (self.failing(), self.misconfigured()) {
            (false, _) => "ok",
            (true, false) => "failing",
            (true, true) => "misconfigured",
        }
    }

    fn error(&self) -> String {
        self.last_error.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// What the HTTP endpoint answers, decided from the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Starting,
    Running,
    Stopping,
    /// Nothing moved for `stall_after`: the process is wedged, replace it.
    Stalled,
}

impl Liveness {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "ok",
            Self::Stopping => "stopping",
            Self::Stalled => "stalled",
        }
    }
}

/// What `/health` says about the queue: its depth from the latest poll and the oldest message age of the latest window.
#[derive(Debug, Clone, Copy, Default)]
struct QueueView {
    /// `None` until the first poll answered.
    depth: Option<QueueDepth>,
    oldest_age: Duration,
}

fn wall_ms() -> u64 {
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
    /// A worker on `queue` (its name or URL until discovery), starting.
    pub fn new(role: &'static str, queue: String, limits: Limits) -> Self {
        // The recorder first: a handle taken before it is installed would record nowhere.
        let _ = platform::metrics::handle();
        Self {
            role,
            queue: Mutex::new(queue),
            limits,
            epoch: Instant::now(),
            phase: AtomicU8::new(STARTING),
            progress: AtomicU64::new(0),
            last_receive: AtomicU64::new(u64::MAX),
            sqs: Dependency::new("sqs"),
            store: Dependency::new("store"),
            store_back: Notify::new(),
            in_flight: AtomicUsize::new(0),
            in_flight_gauge: metrics::gauge!("pedidos_worker_in_flight"),
            oldest_in_window: AtomicU64::new(0),
            queue_view: Mutex::new(QueueView::default()),
            live: Feed::new(),
        }
    }

    /// Milliseconds since the epoch, on tokio's clock.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The queue was found: its URL replaces the configured name, and the consumer starts.
    pub fn running(&self, queue_url: &str) {
        if let Ok(mut queue) = self.queue.lock() {
            queue_url.clone_into(&mut queue);
        }
        self.phase.store(RUNNING, Ordering::Relaxed);
        self.beat();
    }

    /// Shutdown began: still alive (draining), no longer ready.
    pub fn stopping(&self) {
        self.phase.store(STOPPING, Ordering::Relaxed);
    }

    /// The worker made progress (see the module's documentation for what counts).
    pub fn beat(&self) {
        self.progress.store(self.now(), Ordering::Relaxed);
    }

    pub fn liveness(&self) -> Liveness {
        let quiet = Duration::from_millis(self.now().saturating_sub(self.progress.load(Ordering::Relaxed)));
        match self.phase.load(Ordering::Relaxed) {
            _ if quiet >= self.limits.stall_after => Liveness::Stalled,
            STARTING => Liveness::Starting,
            STOPPING => Liveness::Stopping,
            _ => Liveness::Running,
        }
    }

    /// Running, and no dependency misconfigured or failing for `unready_after`.
    pub fn ready(&self) -> bool {
        let now = self.now();
        let healthy = |dependency: &Dependency| {
            let since = dependency.failing_since.load(Ordering::Relaxed);
            since == 0
                || (!dependency.misconfigured()
                    && Duration::from_millis(now.saturating_sub(since - 1)) < self.limits.unready_after)
        };
        self.liveness() == Liveness::Running && healthy(&self.sqs) && healthy(&self.store)
    }

    /// Records a success of `dependency`. Returns how long it had been failing when this ends a failing period, so
    /// the caller logs the recovery once.
    pub fn succeeded(&self, dependency: &Dependency) -> Option<Duration> {
        dependency.misconfigured.store(false, Ordering::Relaxed);
        let since = dependency.failing_since.swap(0, Ordering::Relaxed);
        (since != 0).then(|| {
            dependency.up.set(1.0);
            if std::ptr::eq(dependency, &self.store) {
                self.store_back.notify_waiters();
            }
            Duration::from_millis(self.now().saturating_sub(since - 1))
        })
    }

    /// Records a failure of `dependency`. Returns `true` when this starts a failing period (the caller logs it once).
    pub fn failed(&self, dependency: &Dependency, error: &dyn std::fmt::Display, misconfigured: bool) -> bool {
        if let Ok(mut last) = dependency.last_error.lock() {
            *last = error.to_string();
        }
        dependency.misconfigured.store(misconfigured, Ordering::Relaxed);
        let started =
            dependency.failing_since.compare_exchange(0, self.now() + 1, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        if started {
            dependency.up.set(0.0);
        }
        started
    }

    /// Waits until the store answers again (or up to `at_most`).
    pub async fn store_back(&self, at_most: Duration) {
        let back = self.store_back.notified();
        if self.store.failing() {
            let _ = tokio::time::timeout(at_most, back).await;
        }
    }

    pub fn received_ok(&self) {
        self.last_receive.store(self.now(), Ordering::Relaxed);
    }

    /// Notes the age of the oldest of `messages` (now minus `SentTimestamp`) for the current window. One clock read
    /// and one atomic per receive: it runs on the receive loop.
    pub fn note_ages(&self, messages: &[Received]) {
        let Some(oldest_sent) = messages.iter().filter_map(|m| m.sent_at_ms).min() else { return };
        self.oldest_in_window.fetch_max(wall_ms().saturating_sub(oldest_sent), Ordering::Relaxed);
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

    pub fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.in_flight_gauge.set(now as f64);
        InFlight(self)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The body of `/health` and `/ready` (also the live page's `counters` event, with the outcome counts added).
    pub fn report(&self) -> serde_json::Value {
        let now = self.now();
        let view = *self.view();
        let seconds_since = |at: u64| now.saturating_sub(at) as f64 / 1000.0;
        let dependency = |d: &Dependency| {
            let since = d.failing_since.load(Ordering::Relaxed);
            json!({
                "state": d.state(),
                "secondsFailing": (since != 0).then(|| seconds_since(since - 1)),
                "lastError": (since != 0).then(|| d.error()),
            })
        };
        let last_receive = self.last_receive.load(Ordering::Relaxed);
        let queue = self.queue.lock().map(|q| q.clone()).unwrap_or_default();
        json!({
            "status": self.liveness().as_str(),
            "ready": self.ready(),
            "role": self.role,
            "queue": {
                "url": queue,
                "visible": view.depth.map(|d| d.visible),
                "inFlight": view.depth.map(|d| d.in_flight),
                "delayed": view.depth.map(|d| d.delayed),
                "oldestAgeSeconds": view.oldest_age.as_secs_f64(),
            },
            "dependencies": {"sqs": dependency(&self.sqs), "store": dependency(&self.store)},
            "store": self.store.state(),
            "secondsSinceProgress": seconds_since(self.progress.load(Ordering::Relaxed)),
            "secondsSinceLastReceive": (last_receive != u64::MAX).then(|| seconds_since(last_receive)),
            "inFlight": self.in_flight(),
            "uptimeSeconds": now / 1000,
        })
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// `GET /health`, `GET /ready`, `GET /metrics`, and the live page (`GET /`, `/events`, its script and style), which
/// alone answers only to `hosts` (health checks reach the port under any name).
pub fn router(health: Arc<Health>, hosts: Arc<AllowedHosts>) -> Router {
    Router::new()
        .route("/health", get(health_handler))
        .route("/ready", get(ready_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { health: Arc::clone(&health), metrics: platform::metrics::handle() })
        .merge(crate::live::router(health, hosts))
}

/// Liveness: 200 unless stalled.
async fn health_handler(State(state): State<AppState>) -> impl IntoResponse {
    let status = match state.health.liveness() {
        Liveness::Stalled => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (status, Json(state.health.report()))
}

/// Dependency state: 200 when ready.
async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    let status = if state.health.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(state.health.report()))
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new("process", "q".into(), Limits::default())
    }

    /// Starting and stopping are alive; only a lack of progress for the bound is not.
    #[tokio::test(start_paused = true)]
    async fn liveness_follows_progress_not_dependencies() {
        let health = health();
        health.beat();
        assert_eq!(health.liveness(), Liveness::Starting);
        assert!(!health.ready(), "not ready while starting");
        health.running("http://q");
        assert_eq!((health.liveness(), health.ready()), (Liveness::Running, true));
        assert!(health.failed(&health.store, &"down", false), "the first failure starts a failing period");
        assert!(!health.failed(&health.store, &"down", false));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        health.beat();
        assert_eq!(health.liveness(), Liveness::Running, "an hour-long outage with progress is alive");
        assert!(!health.ready(), "but not ready");
        assert_eq!(health.report()["dependencies"]["store"]["state"], "failing");
        assert!(health.succeeded(&health.store).is_some_and(|d| d >= Duration::from_secs(3600)));
        assert!(health.ready());
        tokio::time::sleep(Limits::default().stall_after).await;
        assert_eq!(health.liveness(), Liveness::Stalled, "nothing moved for the bound");
        health.stopping();
        health.beat();
        assert_eq!(health.liveness(), Liveness::Stopping);
    }

    /// A misconfigured dependency makes the worker unready at once (no waiting for `unready_after`).
    #[tokio::test(start_paused = true)]
    async fn misconfiguration_is_unready_at_once() {
        let health = health();
        health.running("http://q");
        health.failed(&health.store, &"ResourceNotFoundException", true);
        assert!(!health.ready());
        assert_eq!(health.report()["store"], "misconfigured");
        assert_eq!(health.report()["dependencies"]["store"]["lastError"], "ResourceNotFoundException");
        assert_eq!(health.liveness(), Liveness::Running);
    }
}
