//! The HTTP edge over a real socket: what hyper enforces before a request reaches the router (header-read timeout,
//! header count and size) and that the server still answers well-behaved clients on the same listener.

use std::sync::Arc;
use std::time::Duration;

use pedidos_api::bus::{BoxFuture, BusError, EventBus, SubscriptionStatus};
use pedidos_api::http_server::{serve, HttpLimits};
use pedidos_api::{router, AppState};
use store::memory::MemoryOrders;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    drain_timeout: Duration::from_secs(2),
};

/// A server on 127.0.0.1 with [`LIMITS`]; stops when the returned token is cancelled.
async fn server() -> (std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    let state = AppState::new(Arc::new(NoBus), Arc::new(MemoryOrders::new()));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, router(state), LIMITS, shutdown.clone()));
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
