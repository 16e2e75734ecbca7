//! The HTTP edge over a real socket: what hyper enforces before a request reaches the router (header-read timeout,
//! header count and size), the whole-body deadline, the connection limit, the documentation's headers, and that the
//! server still answers well-behaved clients on the same listener.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pedidos_api::admin::AdminToken;
use pedidos_api::bus::{BoxFuture, BusError, EventBus, SubscriptionStatus};
use pedidos_api::http_server::{serve, HttpLimits};
use pedidos_api::{router, AppState};
use store::memory::MemoryOrders;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct NoBus;

impl EventBus for NoBus {
    fn publish<'a>(&'a self, _: &'a domain::OrderEvent, _: &'a str) -> BoxFuture<'a, Result<String, BusError>> {
        Box::pin(async { Err(BusError::Unavailable("no bus in these tests".into())) })
    }
    fn check(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
    fn email_status<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<SubscriptionStatus>, BusError>> {
        Box::pin(async { Ok(None) })
    }
    fn subscribe_email<'a>(
        &'a self,
        _: &'a str,
        _: Option<&'a [domain::EventType]>,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
}

const LIMITS: HttpLimits = HttpLimits {
    header_read_timeout: Duration::from_millis(500),
    max_headers: 16,
    max_head_bytes: 8 * 1024,
    body_deadline: Duration::from_secs(1),
    max_connections: 1024,
    drain_timeout: Duration::from_secs(2),
};

type Server = (std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>);

/// A server on 127.0.0.1 with [`LIMITS`]; stops when the returned token is cancelled.
async fn server() -> Server {
    server_with(LIMITS).await
}

async fn server_with(limits: HttpLimits) -> Server {
    server_of(AppState::new(Arc::new(NoBus), Arc::new(MemoryOrders::new())), limits).await
}

async fn server_of(state: AppState, limits: HttpLimits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, router(state), limits, shutdown.clone()));
    (addr, shutdown, task)
}

/// Everything the server sends until it closes the connection, or `None` if it is still open after `deadline`.
async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut chunk = [0_u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&received).into_owned())
}

async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"))
}

/// A client that never finishes its headers (slowloris) is disconnected after the header-read timeout, while a
/// well-behaved client on the same server is answered.
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let (addr, shutdown, task) = server().await;
    let mut slow = connect(addr).await;
    let started = std::time::Instant::now();
    slow.write_all(b"POST /api/pedidos HTTP/1.1\r\nHost: x\r\nX-Trickle: 1\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mut good = connect(addr).await;
    good.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = read_until_closed(&mut good, Duration::from_secs(5)).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let closed = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert!(closed.is_some(), "the stalled connection is still open after 5 s");
    assert!(waited >= LIMITS.header_read_timeout, "closed after {waited:?}, before the timeout");
    assert!(!closed.unwrap_or_default().contains("HTTP/1.1 2"), "a stalled request must not be served");
    shutdown.cancel();
    assert!(matches!(task.await, Ok(Ok(()))));
}

/// Too many header fields, or a head larger than the limit, is a 431 and never reaches the router.
#[tokio::test]
async fn oversized_heads_are_431() {
    let (addr, shutdown, task) = server().await;
    let many: String = (0..LIMITS.max_headers + 4).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(LIMITS.max_head_bytes * 2));
    for extra in [many, big] {
        let mut client = connect(addr).await;
        let request = format!("GET /health HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        // The server may close while a large head is still being written; what it answered is what counts.
        let _ = client.write_all(request.as_bytes()).await;
        let answer = read_until_closed(&mut client, Duration::from_secs(5)).await.unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 431"), "{}", answer.lines().next().unwrap_or_default());
    }
    shutdown.cancel();
    assert!(matches!(task.await, Ok(Ok(()))));
}

/// On shutdown the listener closes, and an idle keep-alive connection is closed rather than waited for.
#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_accepting() {
    let (addr, shutdown, task) = server().await;
    let mut idle = connect(addr).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    let mut first = [0_u8; 12];
    idle.read_exact(&mut first).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&first, b"HTTP/1.1 200");
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), task).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "server did not stop within 5 s");
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

/// Reads until the end of a response head, or `None` if none came within `deadline`.
async fn read_head<R: AsyncRead + Unpin>(stream: &mut R, deadline: Duration) -> Option<String> {
    let mut received = Vec::new();
    tokio::time::timeout(deadline, async {
        let mut chunk = [0_u8; 1024];
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()?;
    (!received.is_empty()).then(|| String::from_utf8_lossy(&received).into_owned())
}

/// The pace of the trickling client below: one byte every 3 s, each well inside any per-chunk timeout (the attack
/// in issue 17 sent one every 5 s and kept a request open past 45 s against tower-http's 10 s per-chunk timeout).
const TRICKLE: Duration = Duration::from_secs(3);

/// A body trickled a byte every [`TRICKLE`] is cut off with a 408 at the default whole-body deadline (10 s), on an
/// order write and on the unauthenticated login form alike, never served for as long as the client keeps trickling
/// (100 bytes would take 300 s). Paused clock: the deadline passes in no real time; the clock jumps from timer to
/// timer while the sockets are idle, so the answer may come up to one trickle step late, never a deadline late.
#[tokio::test(start_paused = true)]
async fn a_trickled_body_is_cut_off_at_the_deadline() {
    let limits = HttpLimits::default();
    let state = AppState::new(Arc::new(NoBus), Arc::new(MemoryOrders::new())).with_admin(
        &AdminToken::parse("ADMIN_TOKEN", "http-edge-admin-token-0123456789abcdef").unwrap_or_else(|e| panic!("{e}")),
    );
    let (addr, shutdown, task) = server_of(state, limits).await;
    for (path, content_type) in
        [("/api/pedidos", "application/json"), ("/console/login", "application/x-www-form-urlencoded")]
    {
        let mut client = connect(addr).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: 100\r\n\r\n"
        );
        client.write_all(head.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
        let started = tokio::time::Instant::now();
        let (mut reader, mut writer) = client.into_split();
        let trickle = tokio::spawn(async move {
            let mut every = tokio::time::interval(TRICKLE);
            for _ in 0..100 {
                every.tick().await;
                if writer.write_all(b" ").await.is_err() {
                    break;
                }
            }
        });
        let answer = read_head(&mut reader, limits.body_deadline * 3).await;
        let waited = started.elapsed();
        trickle.abort();
        let answer = answer.unwrap_or_else(|| panic!("{path}: no answer within 30 s (the trickle would last 300 s)"));
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(waited >= limits.body_deadline, "{path}: answered after {waited:?}, before the deadline");
        assert!(
            waited <= limits.body_deadline + TRICKLE * 2,
            "{path}: answered after {waited:?}: the deadline restarted per chunk"
        );
    }
    shutdown.cancel();
    assert!(matches!(task.await, Ok(Ok(()))));
}

/// Captured log output of the server (same thread: `#[tokio::test]` runs every task on it).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A kept-alive connection's request: the status line of its answer (or `None` if nothing came within `deadline`).
async fn ask(stream: &mut TcpStream, deadline: Duration) -> Option<String> {
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.ok()?;
    read_head(stream, deadline).await.map(|head| head.lines().next().unwrap_or_default().to_owned())
}

/// With `max_connections` 2, a third and a fourth connection wait (they are not answered) until earlier ones close,
/// and one WARN says the limit was reached for the whole episode.
#[tokio::test]
async fn connections_past_the_limit_wait_and_are_logged_once() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt().with_writer(capture.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let limits = HttpLimits { max_connections: 2, header_read_timeout: Duration::from_secs(10), ..LIMITS };
    let (addr, shutdown, task) = server_with(limits).await;
    let (mut first, mut second) = (connect(addr).await, connect(addr).await);
    for held in [&mut first, &mut second] {
        assert_eq!(ask(held, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 200 OK"));
    }
    let (mut third, mut fourth) = (connect(addr).await, connect(addr).await);
    for waiting in [&mut third, &mut fourth] {
        waiting.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(read_head(&mut third, Duration::from_millis(500)).await, None, "served past the limit");
    drop(first);
    let head = read_head(&mut third, Duration::from_secs(5)).await.unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 200"), "the third connection is served once the first closed: {head}");
    assert_eq!(read_head(&mut fourth, Duration::from_millis(300)).await, None, "still two at most");
    drop(second);
    let head = read_head(&mut fourth, Duration::from_secs(5)).await.unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    shutdown.cancel();
    assert!(matches!(task.await, Ok(Ok(()))));
    drop(_guard);
    let logs = capture.text();
    let warnings = logs.lines().filter(|l| l.contains("WARN") && l.contains("connection limit reached")).count();
    assert_eq!(warnings, 1, "one WARN per episode:\n{logs}");
    assert!(logs.contains("limit=2"), "{logs}");
}

/// Swagger UI's pages carry a CSP that allows only this origin's scripts and styles, no inline script, and no
/// framing; the JSON document and a missing file too.
#[tokio::test]
async fn docs_have_a_strict_csp_and_cannot_be_framed() {
    let (addr, shutdown, task) = server().await;
    for path in ["/docs/", "/docs/swagger-initializer.js", "/docs/nope.js"] {
        let mut client = connect(addr).await;
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
        let answer = read_until_closed(&mut client, Duration::from_secs(5)).await.unwrap_or_default();
        let head = answer.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase();
        let csp = head.lines().find_map(|l| l.strip_prefix("content-security-policy: ")).unwrap_or_default();
        for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"] {
            assert!(csp.contains(directive), "{path}: {directive} missing from {csp:?}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{path}: {csp}");
        assert!(head.contains("x-frame-options: deny"), "{path}: {head}");
        if path == "/docs/" {
            assert!(head.starts_with("http/1.1 200"), "{head}");
            // The page itself must need nothing the CSP forbids: no inline script or style element.
            let page = answer.to_ascii_lowercase();
            assert!(!page.contains("<style") && !page.contains("<script>"), "inline script or style in {page}");
        }
    }
    shutdown.cancel();
    assert!(matches!(task.await, Ok(Ok(()))));
}
