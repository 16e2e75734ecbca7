//! `pedidos-api`: validates orders and publishes them as versioned events to SNS.
//!
//! # Layout
//! - [`config`]: environment, validated once.
//! - [`bus`]: the `EventBus` port and its SNS adapter. The order store (`store::OrderReads`, DynamoDB behind it) is
//!   the other port: the API only reads what the workers applied.
//! - [`routes`]: handlers; [`order_input`] turns bodies into valid orders; [`extract`] reads JSON bodies.
//! - [`error`]: `ApiError` and its problem+json mapping.
//! - [`openapi`]: the generated OpenAPI document.
//! - [`admin`]: the admin surface (console login, sessions, CSRF, subscriptions), off without `ADMIN_TOKEN`;
//!   [`console`]: the operators' console it serves. [`api_keys`]: the keys order writes need when `API_KEYS` is set.
//! - this file: [`router`] (or [`public_router`] and [`admin_router`] when `ADMIN_PORT` splits them), [`run`] and
//!   [`start`], so tests can drive the real app.

pub mod admin;
pub mod api_keys;
pub mod bus;
pub mod config;
pub mod console;
pub mod error;
pub mod extract;
pub mod idempotency_key;
pub mod metrics_catalog;
pub mod openapi;
pub mod order_input;
pub mod routes;

/// The HTTP edge, shared with the workers' health port (kept under its old name for callers and tests).
pub use platform::http as http_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{header, HeaderName, StatusCode};
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
use tower_http::sensitive_headers::{SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, OnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::bus::{EventBus, SnsBus};
use crate::config::Config;
use crate::error::ApiError;
use crate::http_server::{serve, HttpLimits};

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
    /// Keys derived from `ADMIN_TOKEN`; `None` turns the admin surface off (every admin route answers 404).
    pub admin: Option<Arc<admin::AdminAuth>>,
    /// Keys order writes must carry; `None` leaves writes open.
    pub api_keys: Option<Arc<api_keys::ApiKeys>>,
    /// The operators' console behind the admin surface; `None` serves no console routes (login and subscriptions
    /// still work).
    pub console: Option<Arc<console::Console>>,
    /// `ALLOWED_HOSTS`: the names the console and its login answer to, besides loopback (421 otherwise).
    pub allowed_hosts: Arc<http_server::AllowedHosts>,
}

impl AppState {
    pub fn new(bus: Arc<dyn EventBus>, orders: Arc<dyn OrderReads>) -> Self {
        metrics_catalog::register();
        Self {
            bus,
            orders,
            metrics: platform::metrics::handle(),
            readiness: Arc::new(Mutex::new(None)),
            admin: None,
            api_keys: None,
            console: None,
            allowed_hosts: Arc::new(http_server::AllowedHosts::default()),
        }
    }

    /// Serves `console` behind the admin surface.
    #[must_use]
    pub fn with_console(mut self, console: Arc<console::Console>) -> Self {
        self.console = Some(console);
        self
    }

    /// Turns the admin surface on, authenticated with `token`.
    #[must_use]
    pub fn with_admin(mut self, token: &admin::AdminToken) -> Self {
        self.admin = Some(Arc::new(admin::AdminAuth::new(token)));
        self
    }

    /// Lets the console answer to `hosts` besides loopback.
    #[must_use]
    pub fn with_allowed_hosts(mut self, hosts: http_server::AllowedHosts) -> Self {
        self.allowed_hosts = Arc::new(hosts);
        self
    }

    /// Requires one of `keys` on order writes.
    #[must_use]
    pub fn with_api_keys(mut self, keys: api_keys::ApiKeys) -> Self {
        self.api_keys = Some(Arc::new(keys));
        self
    }
}

/// The whole HTTP surface on one port: the public routes and, when `ADMIN_TOKEN` is set, the admin ones.
pub fn router(state: AppState) -> Router {
    let surface = public_routes().merge(admin::routes(&state));
    finish(surface, state)
}

/// The main port when `ADMIN_PORT` gives the admin surface its own: admin paths answer 404 here.
pub fn public_router(state: AppState) -> Router {
    finish(public_routes(), state)
}

/// The admin port: the admin routes only ([`admin::routes`]); every other path answers 404.
pub fn admin_router(state: AppState) -> Router {
    let surface = admin::routes(&state);
    finish(surface, state)
}

/// Orders, tracking, operations and documentation: what the load balancer forwards.
fn public_routes() -> Router<AppState> {
    Router::new()
        // Writes take `api_keys::WriteAccess`, which asks for a key when `API_KEYS` is set.
        .route("/api/pedidos", post(routes::orders::create))
        // Parameter names as in the OpenAPI document, so the `route` metrics label matches it.
        .route("/api/pedidos/{pedidoId}", get(routes::tracking::get_order).put(routes::orders::update))
        .route("/api/clientes/{clienteId}/pedidos", get(routes::tracking::list_by_cliente))
        .route("/health", get(routes::ops::health))
        .route("/status", get(routes::ops::status))
        .route("/ready", get(routes::ops::ready))
        .route("/metrics", get(routes::ops::metrics))
        .route("/", get(routes::ops::root))
        .merge(
            Router::from(SwaggerUi::new("/docs").url("/openapi.json", openapi::ApiDoc::openapi()))
                .layer(middleware::map_response(docs_not_found)),
        )
}

/// Fallbacks and the layers every port shares: body limits, metrics, request ids, request spans.
fn finish(surface: Router<AppState>, state: AppState) -> Router {
    let x_request_id = axum::http::HeaderName::from_static("x-request-id");
    surface
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        // The body's deadline is the server's (`http_server::DeadlineBody`): one for the whole body, on every port.
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(middleware::from_fn(record_http_metrics))
        // Outermost first: set the id, open a span carrying it, echo it on the response.
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        // The span records method, path (never the query; an email in it redacted) and request id: no header, so no
        // credential, is logged.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let request_id =
                        req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    if platform::otel::enabled() {
                        if untraced(req.uri().path()) {
                            let uri = redact_path(req.uri().path());
                            return tracing::info_span!(target: platform::otel::UNTRACED, "request", method = %req.method(), uri = %uri, request_id);
                        }
                        return traced_request_span(req, request_id);
                    }
                    tracing::info_span!("request", method = %req.method(), uri = %redact_path(req.uri().path()), request_id)
                })
                .on_request(())
                .on_response(|response: &Response, latency: Duration, span: &tracing::Span| {
                    if platform::otel::enabled() {
                        record_status(span, response.status());
                    }
                    DefaultOnResponse::new().level(Level::INFO).on_response(response, latency, span);
                })
                // 503s during an SNS outage are expected; ApiError logs the cause once.
                .on_failure(DefaultOnFailure::new().level(Level::WARN)),
        )
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .layer(middleware::from_fn(drop_unusable_request_id))
        // Credentials print as `Sensitive` should anything ever format a request's headers.
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            HeaderName::from_static(api_keys::API_KEY_HEADER),
            HeaderName::from_static(admin::auth::CSRF_HEADER),
        ]))
        .layer(SetSensitiveResponseHeadersLayer::new([header::SET_COOKIE]))
        .with_state(state)
}

/// Paths whose requests make no trace (they are logged as usual): health checks, metrics scrapes and the console's
/// polling, which would bury the orders' traces (and cost X-Ray segments) without telling anything about an order.
fn untraced(path: &str) -> bool {
    matches!(path, "/health" | "/status" | "/ready" | "/metrics" | "/") || path.starts_with("/console")
}

/// The request span with traces on: the same fields for the logs (`otel.*` never reach a log line), named for the
/// trace after the route (`POST /api/pedidos`), a server span, and the child of the caller's trace when the request
/// carries one (`traceparent`, or `X-Amzn-Trace-Id` with the X-Ray propagator).
fn traced_request_span(req: &Request, request_id: &str) -> tracing::Span {
    use platform::otel::SpanExt as _;
    let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let name = match route {
        Some(route) => format!("{} {route}", req.method()),
        None => req.method().to_string(),
    };
    let path = redact_path(req.uri().path());
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        method = %req.method(),
        uri = %path,
        request_id
    );
    if let Some(parent) = platform::otel::parent_from_headers(req.headers()) {
        platform::otel::set_parent(&span, &parent);
    }
    span.set_attribute("http.request.method", req.method().to_string());
    span.set_attribute("url.path", path.into_owned());
    if let Some(route) = route {
        span.set_attribute("http.route", route.to_owned());
    }
    span
}

/// The response status on the request's span; a 5xx marks it as an error.
fn record_status(span: &tracing::Span, status: StatusCode) {
    use platform::otel::SpanExt as _;
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set_status(platform::otel::Status::error(status.to_string()));
    }
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

/// `path` with every segment that holds an email address (an `@`, or its `%40` encoding) replaced by `{email}`:
/// `GET /api/suscripcion/estado/{email}` carries one, and no log field may.
pub fn redact_path(path: &str) -> std::borrow::Cow<'_, str> {
    let is_email = |segment: &str| segment.contains('@') || segment.to_ascii_lowercase().contains("%40");
    if !path.split('/').any(is_email) {
        return std::borrow::Cow::Borrowed(path);
    }
    let redacted: Vec<&str> =
        path.split('/').map(|segment| if is_email(segment) { "{email}" } else { segment }).collect();
    std::borrow::Cow::Owned(redacted.join("/"))
}

/// What Swagger UI's page needs and no more: its own scripts, styles and the document from this origin, the
/// `data:` images its stylesheet embeds; never framed. Its page has no inline script or style element.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    font-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Swagger UI answers an unknown file under /docs with a bare 404; every error here is problem+json.
/// Every documentation response also gets [`DOCS_CSP`] and is never framed or sniffed.
async fn docs_not_found(response: Response) -> Response {
    let mut response = if response.status() == StatusCode::NOT_FOUND {
        ApiError::NotFound("no such documentation file".into()).into_response()
    } else {
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(DOCS_CSP));
    headers.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    response
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

/// Serves until `shutdown` is cancelled, then lets in-flight requests finish for up to [`DRAIN_TIMEOUT`]. With an
/// `admin_listener` (`ADMIN_PORT`), the admin surface is served there only, under the same shutdown.
///
/// # Errors
/// I/O errors from either listener.
pub async fn run(
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    state: AppState,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    match admin_listener {
        None => serve(listener, router(state), limits, shutdown).await,
        Some(admin_listener) => {
            let public = serve(listener, public_router(state.clone()), limits, shutdown.clone());
            let admin = serve(admin_listener, admin_router(state), limits, shutdown);
            tokio::try_join!(public, admin).map(|_| ())
        }
    }
}

/// Builds the SNS- and DynamoDB-backed state from `config`, binds the port(s) and serves until `shutdown`.
///
/// # Errors
/// Binding a port or serving failed.
pub async fn start(config: Config, shutdown: CancellationToken) -> std::io::Result<()> {
    // One budget for both: a client waits on every call, SNS publish and DynamoDB read alike.
    let sdk = platform::aws::load(&config.common.region, platform::aws::CallBudget::INTERACTIVE, Duration::ZERO).await;
    let bus = Arc::new(SnsBus::new(aws_sdk_sns::Client::new(&sdk), config.topic.clone()));
    // A bare topic name is looked up once, in the background: the API is live at once, whatever SNS does.
    tokio::spawn({
        let bus = Arc::clone(&bus);
        async move { bus.warm_up().await }
    });
    let orders: Arc<dyn OrderReads> =
        Arc::new(DynamoOrders::new(aws_sdk_dynamodb::Client::new(&sdk), config.orders_table.clone()));
    let mut state = AppState::new(bus, Arc::clone(&orders)).with_allowed_hosts(config.allowed_hosts.clone());
    if let Some(token) = &config.admin_token {
        // The console exists only behind the admin surface; it samples nothing until first opened.
        let console = console::Console::new(
            aws_sdk_sqs::Client::new(&sdk),
            aws_sdk_sns::Client::new(&sdk),
            config.topic.clone(),
            orders,
            shutdown.clone(),
        );
        if let Some(url) = config.trace_url.clone() {
            console.link_traces(url);
        }
        state = state.with_admin(token).with_console(console);
    }
    if let Some(keys) = config.api_keys.clone() {
        state = state.with_api_keys(keys);
    }
    let listener = TcpListener::bind((config.common.bind_addr, config.common.port)).await?;
    let admin_listener = match config.admin_port {
        Some(port) => Some(TcpListener::bind((config.common.bind_addr, port)).await?),
        None => None,
    };
    let admin = match (&config.admin_token, &admin_listener) {
        (None, _) => "off".to_owned(),
        (Some(_), None) => "on PORT".to_owned(),
        (Some(_), Some(admin)) => admin.local_addr()?.to_string(),
    };
    tracing::info!(
        addr = %listener.local_addr()?,
        admin = %admin,
        api_keys = if config.api_keys.is_some() { "required" } else { "off" },
        topic = %config.topic,
        orders_table = %config.orders_table,
        endpoint = config.common.endpoint_url.as_deref().unwrap_or("aws"),
        region = %config.common.region,
        "pedidos-api listening"
    );
    run(listener, admin_listener, state, config.http_limits, shutdown).await
}
