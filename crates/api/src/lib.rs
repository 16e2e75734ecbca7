//! `pedidos-api`: validates orders and publishes them as versioned events to SNS.
//!
//! # Layout
//! - [`config`]: environment, validated once.
//! - [`bus`]: the `EventBus` port and its SNS adapter. The order store (`store::OrderReads`, DynamoDB behind it) is
//!   the other port: the API only reads what the workers applied.
//! - [`routes`]: handlers; [`order_input`] turns bodies into valid orders; [`extract`] reads JSON bodies.
//! - [`error`]: `ApiError` and its problem+json mapping.
//! - [`openapi`]: the generated OpenAPI document.
//! - this file: [`router`], [`run`] and [`start`], so tests can drive the real app.

pub mod bus;
pub mod config;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod order_input;
pub mod routes;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use platform::metrics::PrometheusHandle;
use store::dynamo::DynamoOrders;
use store::OrderReads;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::bus::{EventBus, SnsBus};
use crate::config::Config;
use crate::error::ApiError;

/// How long a client may take to send its request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests may take to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub bus: Arc<dyn EventBus>,
    /// What the workers applied: tracking reads, and the checks before a PUT or a re-POST.
    pub orders: Arc<dyn OrderReads>,
    pub metrics: PrometheusHandle,
    /// Last readiness answer and when it was taken.
    pub readiness: Arc<Mutex<Option<(Instant, routes::ops::Checked)>>>,
}

impl AppState {
    pub fn new(bus: Arc<dyn EventBus>, orders: Arc<dyn OrderReads>) -> Self {
        Self { bus, orders, metrics: platform::metrics::handle(), readiness: Arc::new(Mutex::new(None)) }
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let x_request_id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/api/pedidos", post(routes::orders::create))
        // Parameter names as in the OpenAPI document, so the `route` metrics label matches it.
        .route("/api/pedidos/{pedidoId}", get(routes::tracking::get_order).put(routes::orders::update))
        .route("/api/clientes/{clienteId}/pedidos", get(routes::tracking::list_by_cliente))
        .route("/api/suscripcion", post(routes::subscriptions::subscribe))
        .route("/api/suscripcion/estado/{email}", get(routes::subscriptions::status))
        .route("/health", get(routes::ops::health))
        .route("/status", get(routes::ops::status))
        .route("/ready", get(routes::ops::ready))
        .route("/metrics", get(routes::ops::metrics))
        .route("/", get(routes::ops::root))
        .merge(
            Router::from(SwaggerUi::new("/docs").url("/openapi.json", openapi::ApiDoc::openapi()))
                .layer(middleware::map_response(docs_not_found)),
        )
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        // A client that stalls mid-body must not hold a request (and a drain slot) forever.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(middleware::from_fn(record_http_metrics))
        // Outermost first: set the id, open a span carrying it, echo it on the response.
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let request_id =
                        req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    tracing::info_span!("request", method = %req.method(), uri = %req.uri().path(), request_id)
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                // 503s during an SNS outage are expected; ApiError logs the cause once.
                .on_failure(DefaultOnFailure::new().level(Level::WARN)),
        )
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .layer(middleware::from_fn(drop_unusable_request_id))
        .with_state(state)
}

/// Longest client `x-request-id` kept as is.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Removes a client `x-request-id` that is empty, repeated, longer than [`MAX_REQUEST_ID_LEN`] or not printable ASCII,
/// so a fresh one is generated: the id goes into every log line and into an SNS message attribute, and SNS refuses
/// an empty one (which turned a client's header into a 503).
async fn drop_unusable_request_id(mut request: Request, next: Next) -> Response {
    let mut ids = request.headers().get_all("x-request-id").iter();
    let usable = match (ids.next(), ids.next()) {
        (None, _) => true,
        (Some(id), None) => {
            !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.as_bytes().iter().all(u8::is_ascii_graphic)
        }
        (Some(_), Some(_)) => false,
    };
    if !usable {
        request.headers_mut().remove("x-request-id");
    }
    next.run(request).await
}

/// Swagger UI answers an unknown file under /docs with a bare 404; every error here is problem+json.
async fn docs_not_found(response: Response) -> Response {
    if response.status() == StatusCode::NOT_FOUND {
        ApiError::NotFound("no such documentation file".into()).into_response()
    } else {
        response
    }
}

async fn record_http_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("pedidos_api_http_requests_total", "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("pedidos_api_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The method as a metric label. Clients may send any token as a method, and each distinct label is a new time series
/// kept forever, so anything beyond the standard methods is counted as `OTHER`.
fn method_label(method: &axum::http::Method) -> &'static str {
    const STANDARD: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"];
    STANDARD.into_iter().find(|known| *known == method.as_str()).unwrap_or("OTHER")
}

/// Serves until `shutdown` is cancelled, then lets in-flight requests finish for up to [`DRAIN_TIMEOUT`].
///
/// # Errors
/// I/O errors from the listener.
pub async fn run(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    let stop = shutdown.clone();
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move { stop.cancelled().await });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = &mut server => return result,
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "in-flight requests did not finish in time; exiting anyway");
            Ok(())
        }
    }
}

/// Builds the SNS- and DynamoDB-backed state from `config`, binds the port and serves until `shutdown`.
///
/// # Errors
/// Binding the port or serving failed.
pub async fn start(config: Config, shutdown: CancellationToken) -> std::io::Result<()> {
    // One budget for both: a client waits on every call, SNS publish and DynamoDB read alike.
    let sdk = platform::aws::load(&config.common.region, platform::aws::CallBudget::INTERACTIVE, Duration::ZERO).await;
    let bus = SnsBus::new(aws_sdk_sns::Client::new(&sdk), config.topic.clone());
    let orders = DynamoOrders::new(aws_sdk_dynamodb::Client::new(&sdk), config.orders_table.clone());
    let listener = TcpListener::bind((config.common.bind_addr, config.common.port)).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        topic = %config.topic,
        orders_table = %config.orders_table,
        endpoint = config.common.endpoint_url.as_deref().unwrap_or("aws"),
        region = %config.common.region,
        "pedidos-api listening"
    );
    run(listener, AppState::new(Arc::new(bus), Arc::new(orders)), shutdown).await
}
