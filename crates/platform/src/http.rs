//! Serving a router over HTTP/1.1 with the limits `axum::serve` cannot set, on every listener of both binaries (the
//! API's port, its admin port, the workers' health port):
//! - a client must finish its headers within [`HttpLimits::header_read_timeout`] (hyper applies the same timeout to
//!   an idle keep-alive connection), and a request head is bounded in header count and bytes (431 beyond);
//! - a request body must arrive whole within [`HttpLimits::body_deadline`] of the request reaching the router
//!   ([`DeadlineBody`]): one deadline per request, not per chunk, so trickling a byte at a time holds nothing longer;
//! - at most [`HttpLimits::max_connections`] connections are served at once; beyond that new ones wait in the
//!   kernel's accept queue, and a WARN says so once per episode;
//! - the peer's address is in every request's extensions as `ConnectInfo<SocketAddr>`.
//!
//! Connections are tracked, so a shutdown lets in-flight requests finish for up to the drain timeout. [`AllowedHosts`]
//! is the `Host` check of the browser-facing pages (the console, the workers' live page).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{in_range, ConfigError, Lookup};

/// What a client may send before and while its request reaches the router, and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// From the first byte of a request (or a new connection, or the end of the previous response on a keep-alive
    /// connection) to the end of its headers. A client that trickles its headers (slowloris) or idles is
    /// disconnected after this.
    pub header_read_timeout: Duration,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Largest request head (request line and headers) in bytes; hyper's floor is 8 KiB.
    pub max_head_bytes: usize,
    /// The whole request body must have arrived this long after the request reached the router.
    pub body_deadline: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish after shutdown.
    pub drain_timeout: Duration,
}

/// Default of `HTTP_MAX_CONNECTIONS`: far above what one instance serves (a load balancer keeps tens open), and at
/// or below the usual open-file limit of a container (Fargate's 65,535; Docker's soft limit can be as low as 1,024,
/// where accepting pauses on `EMFILE` instead, with an ERROR).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 64,
            max_head_bytes: 16 * 1024,
            body_deadline: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpLimits {
    /// `HTTP_HEADER_READ_TIMEOUT_SECONDS` (10) and `HTTP_MAX_CONNECTIONS` (1024) over the defaults.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable.
    pub fn from_env(env: Lookup<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            header_read_timeout: Duration::from_secs(in_range(
                env,
                "HTTP_HEADER_READ_TIMEOUT_SECONDS",
                10_u64,
                1,
                3600,
            )?),
            max_connections: in_range(env, "HTTP_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, 1, 1_000_000)?,
            ..Self::default()
        })
    }
}

/// Serves `app` on `listener` until `shutdown`, then asks every connection to finish its current request and waits
/// for them for up to `limits.drain_timeout`.
///
/// # Errors
/// None today: accept errors are logged and retried, per-connection errors end only that connection. The signature
/// keeps room for a fatal listener error.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_head_bytes.max(8192));
    let local = listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let max_connections = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max_connections));
    // Set when the limit is hit, cleared once a tenth of the slots are free again: one WARN per episode.
    let mut saturated = false;
    let connections = TaskTracker::new();
    loop {
        // A slot before accepting: past the limit, connections wait in the kernel's queue, costing this process
        // nothing.
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                if saturated && slots.available_permits() >= max_connections.div_ceil(10) {
                    saturated = false;
                    tracing::info!(listener = %local, limit = max_connections, "connections below the limit again");
                }
                slot
            }
            Err(_) => {
                if !saturated {
                    saturated = true;
                    tracing::warn!(
                        listener = %local,
                        limit = max_connections,
                        "connection limit reached (HTTP_MAX_CONNECTIONS): new connections wait until one closes"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // Never closed; were it, serving would be over.
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Small responses go out at once instead of waiting for Nagle's algorithm.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let body_deadline = limits.body_deadline;
        let service = tower::util::MapRequest::new(app.clone(), move |request: Request<hyper::body::Incoming>| {
            let mut request = request.map(|body| DeadlineBody::new(body, body_deadline));
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    // Finish the request in flight (if any), then close instead of waiting for the next one.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain_timeout, connections.wait()).await.is_err() {
        tracing::warn!(timeout = ?limits.drain_timeout, "in-flight requests did not finish in time; exiting anyway");
    }
    Ok(())
}

/// Accept errors on a connection that is already gone are routine; anything else (out of file descriptors) gets a
/// short pause so the loop does not spin while the condition lasts.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; pausing 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The error a [`DeadlineBody`] ends with when its deadline passes first. Handlers find it in the source chain of a
/// body-reading error and answer 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyDeadlineElapsed(pub Duration);

impl BodyDeadlineElapsed {
    /// Whether `error` or one of its sources is a passed body deadline.
    pub fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut current = Some(error);
        while let Some(error) = current {
            if error.is::<Self>() {
                return true;
            }
            current = error.source();
        }
        false
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that fails with [`BodyDeadlineElapsed`] once `deadline` has passed since it was created, however
/// steadily its chunks arrive (tower-http's `RequestBodyTimeout` restarts on every chunk).
pub struct DeadlineBody<B> {
    inner: B,
    ends_at: Instant,
    limit: Duration,
    /// Made on the first wait only: most bodies are empty or already buffered.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, deadline: Duration) -> Self {
        Self { inner, ends_at: Instant::now() + deadline, limit: deadline, timer: None }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.ends_at)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyDeadlineElapsed(this.limit)))));
        }
        Pin::new(&mut this.inner).poll_frame(cx).map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The host names a browser-facing page answers to (`ALLOWED_HOSTS`), besides the loopback names, which it always
/// answers to. A page reached under another name was reached by DNS rebinding (a site whose name now points at this
/// port) or a misrouted proxy: it is refused, so a foreign page cannot read it as same-origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Lower-cased names or addresses, without port (IPv6 in brackets).
    names: Vec<String>,
}

/// Always allowed, with any port.
const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl AllowedHosts {
    /// Comma-separated host names or IP addresses (IPv6 in brackets), without port: each is allowed with any port.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `var` for an entry with a port, a scheme, a path or spaces.
    pub fn parse(var: &'static str, text: &str) -> Result<Self, ConfigError> {
        let mut names = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let valid = match entry.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
                Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
                None => entry.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
            };
            if !valid {
                return Err(ConfigError::Invalid {
                    var,
                    value: text.to_owned(),
                    reason: format!("{entry:?} is not a host name or address (no scheme, port or path)"),
                });
            }
            names.push(entry.to_ascii_lowercase());
        }
        Ok(Self { names })
    }

    /// `ALLOWED_HOSTS`; only the loopback names when unset.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a malformed entry.
    pub fn from_env(env: Lookup<'_>) -> Result<Self, ConfigError> {
        env("ALLOWED_HOSTS").map_or_else(|| Ok(Self::default()), |text| Self::parse("ALLOWED_HOSTS", &text))
    }

    /// Whether a `Host` header value (`name`, `name:port`, `[v6]:port`) names this server.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = match host.rfind(':') {
            // A port follows the last colon unless that colon is inside an IPv6 address's brackets.
            Some(colon) if !host[colon..].contains(']') => &host[..colon],
            _ => host.as_str(),
        };
        !name.is_empty() && (LOOPBACK.contains(&name) || self.names.iter().any(|allowed| allowed == name))
    }

    /// Whether `headers` carry exactly one `Host` this server answers to.
    pub fn allows_request(&self, headers: &HeaderMap) -> bool {
        let mut hosts = headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(host), None) => host.to_str().is_ok_and(|host| self.allows(host)),
            _ => false,
        }
    }
}

/// Middleware (`axum::middleware::from_fn_with_state`) refusing a request whose `Host` is not allowed: 421 with a
/// problem+json body, before any handler or credential check runs.
pub async fn require_allowed_host(
    axum::extract::State(hosts): axum::extract::State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    if hosts.allows_request(request.headers()) {
        return next.run(request).await;
    }
    // The refused name is not logged: it is client-controlled text, and says nothing an operator needs.
    tracing::info!("request refused: Host is not an allowed name (ALLOWED_HOSTS)");
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Misdirected Request",
        "status": 421,
        "detail": "this page answers only to its configured host names (ALLOWED_HOSTS) and loopback",
    });
    let mut response = (StatusCode::MISDIRECTED_REQUEST, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

/// The peer's address, as [`serve`] recorded it (`None` for requests that did not come through it, as in tests
/// that call a router directly).
pub fn peer(request: &axum::http::Extensions) -> Option<SocketAddr> {
    request.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that sends one byte every 100 ms, forever.
    struct Trickle(tokio::time::Interval);

    impl Body for Trickle {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_tick(cx).map(|_| Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    /// The deadline holds however steadily chunks arrive: a body trickled at 10 bytes a second ends with
    /// [`BodyDeadlineElapsed`] at the deadline, not later.
    #[tokio::test(start_paused = true)]
    async fn the_body_deadline_is_for_the_whole_body_not_per_chunk() {
        use http_body::Body as _;
        let started = Instant::now();
        let mut body = std::pin::pin!(DeadlineBody::new(
            Trickle(tokio::time::interval(Duration::from_millis(100))),
            Duration::from_secs(1)
        ));
        let mut chunks = 0;
        let error = loop {
            match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                Some(Ok(_)) => chunks += 1,
                Some(Err(error)) => break error,
                None => panic!("a trickle never ends"),
            }
        };
        assert!(BodyDeadlineElapsed::caused(error.as_ref()), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!((9..=11).contains(&chunks), "{chunks} chunks before the deadline");
    }

    #[test]
    fn hosts_are_loopback_or_configured() {
        let default = AllowedHosts::default();
        for ok in ["localhost", "LOCALHOST:8081", "127.0.0.1", "127.0.0.1:9090", "[::1]", "[::1]:8081"] {
            assert!(default.allows(ok), "{ok}");
        }
        for refused in
            ["", ":80", "evil.example", "evil.example:8081", "127.0.0.2", "localhost.evil.example", "[::2]:80"]
        {
            assert!(!default.allows(refused), "{refused}");
        }
        let configured = AllowedHosts::parse("ALLOWED_HOSTS", " Admin.Internal , 10.0.0.5,[fd00::1]")
            .unwrap_or_else(|e| panic!("{e}"));
        for ok in ["admin.internal", "admin.internal:9090", "10.0.0.5:9090", "[fd00::1]:9090", "localhost:1"] {
            assert!(configured.allows(ok), "{ok}");
        }
        assert!(!configured.allows("internal"));
        for bad in ["http://a.example", "a.example:9090", "a b", "a/b", "[a b]", "[fd00::1]:9090", "fd00::1"] {
            let err = AllowedHosts::parse("ALLOWED_HOSTS", bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("ALLOWED_HOSTS="), "{bad}: {err}");
        }
        let mut headers = HeaderMap::new();
        assert!(!default.allows_request(&headers), "no Host");
        headers.append(header::HOST, HeaderValue::from_static("localhost"));
        assert!(default.allows_request(&headers));
        headers.append(header::HOST, HeaderValue::from_static("localhost"));
        assert!(!default.allows_request(&headers), "two Hosts");
    }
}
