//! The worker's health port over a real socket: the same HTTP edge as the API (header-read timeout, idle timeout,
//! header count and size limits), and the live page's `Host` check, which `/health`, `/ready` and `/metrics` skip.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pedidos_worker::health::{Health, Limits};
use pedidos_worker::Endpoint;
use platform::http::{AllowedHosts, HttpLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMITS: HttpLimits = HttpLimits {
    header_read_timeout: Duration::from_millis(500),
    max_headers: 16,
    max_head_bytes: 8 * 1024,
    body_deadline: Duration::from_secs(1),
    max_connections: 64,
    drain_timeout: Duration::from_secs(2),
};

/// The endpoint alone (no consumer) on 127.0.0.1 with [`LIMITS`], the live page also answering to `hosts`.
async fn endpoint(hosts: &str) -> (SocketAddr, Endpoint) {
    endpoint_with(hosts, LIMITS).await
}

async fn endpoint_with(hosts: &str, limits: HttpLimits) -> (SocketAddr, Endpoint) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local address: {e}"));
    let health = Arc::new(Health::new("process", "memory://queue".into(), Limits::default()));
    health.running("memory://queue");
    let hosts = AllowedHosts::parse("ALLOWED_HOSTS", hosts).unwrap_or_else(|e| panic!("{e}"));
    (addr, Endpoint::serve_with(listener, health, limits, hosts))
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"))
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

/// `GET path` with `Host: host`: the whole answer (the connection closes after it).
async fn get(addr: SocketAddr, path: &str, host: &str) -> String {
    let mut stream = connect(addr).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("write: {e}"));
    read_until_closed(&mut stream, Duration::from_secs(5)).await.unwrap_or_else(|| panic!("GET {path} never ended"))
}

/// A client that never finishes its headers is disconnected after the header-read timeout, and so is one that
/// stays idle on a kept-alive connection; a well-behaved client is answered meanwhile.
#[tokio::test]
async fn slow_and_idle_clients_are_disconnected() {
    let (addr, endpoint) = endpoint("").await;
    let mut slow = connect(addr).await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Trickle: 1\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut idle = connect(addr).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let answer = get(addr, "/health", "localhost").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let closed = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the stalled connection is still open after 5 s");
    assert!(started.elapsed() >= LIMITS.header_read_timeout / 2, "closed before the timeout");
    assert!(!closed.unwrap_or_default().contains("HTTP/1.1 2"), "a stalled request must not be served");
    let kept_alive = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(
        kept_alive.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "the idle keep-alive connection was answered, then closed within 5 s: {kept_alive:?}"
    );
    endpoint.stop().await;
}

/// Too many header fields, or a head larger than the limit, is a 431 on the health port too.
#[tokio::test]
async fn oversized_heads_are_431() {
    let (addr, endpoint) = endpoint("").await;
    let many: String = (0..LIMITS.max_headers + 4).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(LIMITS.max_head_bytes * 2));
    for extra in [many, big] {
        let mut client = connect(addr).await;
        let request = format!("GET /health HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n");
        // The server may close while a large head is still being written; what it answered is what counts.
        let _ = client.write_all(request.as_bytes()).await;
        let answer = read_until_closed(&mut client, Duration::from_secs(5)).await.unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 431"), "{}", answer.lines().next().unwrap_or_default());
    }
    endpoint.stop().await;
}

/// The live page and its stream answer only under loopback names and `ALLOWED_HOSTS` (421 problem+json under any
/// other: DNS rebinding); `/health`, `/ready` and `/metrics` answer under any name, as load balancers and ECS probe
/// them.
#[tokio::test]
async fn the_live_page_answers_only_to_allowed_host_names() {
    let (addr, endpoint) = endpoint("worker.internal").await;
    let port = addr.port();
    for path in ["/", "/live.js", "/live.css", "/events"] {
        for host in ["evil.example", &format!("evil.example:{port}"), "127.0.0.2", "worker.internal.evil.example"] {
            let answer = get(addr, path, host).await;
            assert!(answer.starts_with("HTTP/1.1 421"), "{path} as {host}: {answer}");
            assert!(answer.to_ascii_lowercase().contains("content-type: application/problem+json"), "{answer}");
            assert!(answer.contains(r#""status":421"#), "{answer}");
        }
    }
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("worker.internal:{port}")] {
        let answer = get(addr, "/live.css", &host).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "as {host}: {answer}");
    }
    for path in ["/health", "/ready", "/metrics"] {
        let answer = get(addr, path, "10.0.3.17:8081").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path} under an internal address: {answer}");
    }
    endpoint.stop().await;
}

/// Reads until the end of a response head: its status line, or `None` if none came within `deadline`.
async fn status_line(stream: &mut TcpStream, deadline: Duration) -> Option<String> {
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
    String::from_utf8_lossy(&received).lines().next().map(str::to_owned).filter(|line| !line.is_empty())
}

/// `HTTP_MAX_CONNECTIONS` holds on the health port too: with 2, live-page viewers holding both connections make a
/// third (a health check) wait, not fail, and it is answered as soon as one of them closes.
#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    let limits = HttpLimits { max_connections: 2, header_read_timeout: Duration::from_secs(10), ..LIMITS };
    let (addr, endpoint) = endpoint_with("", limits).await;
    let ask = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let (mut first, mut second) = (connect(addr).await, connect(addr).await);
    for held in [&mut first, &mut second] {
        held.write_all(ask).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status_line(held, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 200 OK"));
    }
    let mut third = connect(addr).await;
    third.write_all(ask).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status_line(&mut third, Duration::from_millis(500)).await, None, "served past the limit");
    drop(first);
    let answer = status_line(&mut third, Duration::from_secs(5)).await;
    assert_eq!(answer.as_deref(), Some("HTTP/1.1 200 OK"), "the waiting connection is served once one closed");
    drop(second);
    endpoint.stop().await;
}
