//! The worker's HTTP port as an on-call engineer uses it, served by [`pedidos_worker::run`] on 127.0.0.1 with the
//! in-memory queue: `/metrics` (every family described, counters at zero from start-up, queue gauges), `/health`'s
//! queue view, the live page's headers, and `/events` streaming outcome lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pedidos_worker::consumer::Settings;
use pedidos_worker::handler::{Handler, Role};
use pedidos_worker::health::Health;
use pedidos_worker::queue::memory::MemoryQueue;
use store::memory::MemoryOrders;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// A worker (`run`) on a free port, consuming `queue` with the process role on an in-memory store.
struct Worker {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    async fn start(queue: Arc<MemoryQueue>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("local address: {e}"));
        let store = Arc::new(MemoryOrders::new());
        let handler: Arc<dyn Handler> = Role::Process.handler(store);
        let health =
            Arc::new(Health::new("process", "memory://queue".into(), pedidos_worker::health::Limits::default()));
        let settings = Settings {
            concurrency: 4,
            wait_time: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(4),
        };
        let shutdown = CancellationToken::new();
        let task =
            tokio::spawn(pedidos_worker::run(listener, queue, handler, health, settings, None, shutdown.clone()));
        Self { addr, shutdown, task }
    }

    /// Stops the worker; it must be gone within a few seconds even with viewers connected.
    async fn stop(self) {
        self.shutdown.cancel();
        let stopped = timeout(Duration::from_secs(5), self.task).await;
        assert!(stopped.is_ok(), "the worker did not stop within 5 s");
    }
}

/// `GET path` over HTTP/1.1: the response head (status line and headers, lower-cased names) and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    get_with(addr, path, "").await
}

/// [`get`] with extra header lines (each ending in `\r\n`).
async fn get_with(addr: SocketAddr, path: &str, headers: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("write: {e}"));
    let mut response = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .unwrap_or_else(|_| panic!("GET {path} did not finish"))
        .unwrap_or_else(|e| panic!("read: {e}"));
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    (head.to_ascii_lowercase(), body.to_owned())
}

fn metric_families(text: &str) -> Vec<String> {
    let mut families: Vec<String> = text
        .lines()
        .filter(|line| line.starts_with("pedidos_"))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(|name| {
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix));
            family.unwrap_or(name).to_owned()
        })
        .collect();
    families.sort();
    families.dedup();
    families
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_describe_every_family_and_counters_exist_from_start_up() {
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(30), 5));
    let worker = Worker::start(Arc::clone(&queue)).await;
    // What `start` adds for the process role with batched writes.
    pedidos_worker::metrics_catalog::register_store(Role::Process, true);
    // The first depth poll happens at once.
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let (_, body) = get(worker.addr, "/metrics").await;
        if body.contains("pedidos_worker_queue_messages{") || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    for series in [
        r#"pedidos_worker_messages_total{outcome="processed"}"#,
        r#"pedidos_worker_messages_total{outcome="rejected"}"#,
        r#"pedidos_worker_messages_total{outcome="released"}"#,
        r#"pedidos_worker_sqs_calls_total{operation="get_queue_attributes"}"#,
        r#"pedidos_worker_sqs_errors_total{operation="receive"}"#,
        r#"pedidos_worker_sqs_errors_total{operation="send"}"#,
        r#"pedidos_worker_sqs_entry_failures_total{operation="delete"}"#,
        r#"pedidos_store_calls_total{operation="apply",result="throttled"}"#,
        r#"pedidos_store_calls_total{operation="transact_write",result="error"}"#,
        r#"pedidos_worker_queue_messages{state="visible"}"#,
        r#"pedidos_worker_queue_messages{state="in_flight"}"#,
        r#"pedidos_worker_queue_messages{state="delayed"}"#,
        "pedidos_worker_oldest_message_age_seconds",
        "pedidos_worker_in_flight",
    ] {
        assert!(metrics.lines().any(|line| line.starts_with(series)), "{series} missing from /metrics:\n{metrics}");
    }
    let families = metric_families(&metrics);
    assert!(families.len() >= 8, "{families:?}");
    for family in families {
        assert!(metrics.contains(&format!("# HELP {family} ")), "no # HELP for {family}:\n{metrics}");
    }

    let (head, health) = get(worker.addr, "/health").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap_or_default();
    assert_eq!(health["queue"]["url"], "memory://queue", "{health}");
    assert_eq!(health["queue"]["visible"], 0, "{health}");
    assert!(health["queue"]["oldestAgeSeconds"].is_number(), "{health}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_forbids_inline_script_and_sniffing_and_is_not_served_through_a_proxy() {
    let worker = Worker::start(Arc::new(MemoryQueue::new(Duration::from_secs(30), 5))).await;
    for (path, content_type, marker) in [
        ("/", "text/html", "<script src=\"live.js\" defer></script>"),
        ("/live.js", "text/javascript", "new EventSource('events')"),
        ("/live.css", "text/css", "tbody"),
    ] {
        let (head, body) = get(worker.addr, path).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(head.contains(&format!("content-type: {content_type}")), "{path}: {head}");
        assert!(
            head.contains("content-security-policy: default-src 'self'; script-src 'self'; style-src 'self'"),
            "{path}: {head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{path}: {head}");
        assert!(body.contains(marker), "{path} is not the expected file");
        // Through a proxy or load balancer, the page does not exist; /health still answers there.
        for proxied in
            ["X-Forwarded-For: 203.0.113.7\r\n", "Forwarded: for=203.0.113.7\r\n", "X-Real-IP: 203.0.113.7\r\n"]
        {
            let (head, _) = get_with(worker.addr, path, proxied).await;
            assert!(head.starts_with("http/1.1 404"), "{path} via a proxy: {head}");
        }
    }
    let (head, _) = get_with(worker.addr, "/events", "X-Forwarded-For: 203.0.113.7\r\n").await;
    assert!(head.starts_with("http/1.1 404"), "/events via a proxy: {head}");
    let (head, _) = get_with(worker.addr, "/health", "X-Forwarded-For: 203.0.113.7\r\n").await;
    assert!(head.starts_with("http/1.1 200"), "/health via a proxy: {head}");
    worker.stop().await;
}

/// Reads the SSE stream until `done` holds for what arrived so far; returns it.
async fn read_until(stream: &mut TcpStream, seen: &mut String, done: impl Fn(&str) -> bool) {
    let mut buffer = [0_u8; 8192];
    let deadline = Instant::now() + WAIT;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let read = timeout(left, stream.read(&mut buffer)).await;
        match read {
            Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buffer[..n])),
            Ok(Ok(_)) => panic!("the stream ended; so far:\n{seen}"),
            Ok(Err(e)) => panic!("read: {e}; so far:\n{seen}"),
            Err(_) => panic!("not seen within {WAIT:?}; so far:\n{seen}"),
        }
    }
}

/// The `data:` of every `outcome` event in an SSE text, parsed.
fn outcome_lines(stream: &str) -> Vec<serde_json::Value> {
    stream
        .split("event: outcome\n")
        .skip(1)
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
        .filter_map(|data| serde_json::from_str(data).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_each_outcome_line_and_the_counters_and_end_at_shutdown() {
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(30), 5));
    let worker = Worker::start(Arc::clone(&queue)).await;
    let mut stream = TcpStream::connect(worker.addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let request = "GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("write: {e}"));
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, |s| s.contains("event: counters")).await;
    assert!(seen.to_ascii_lowercase().contains("content-type: text/event-stream"), "{seen}");
    assert!(seen.contains(r#""outcomes":{"#), "counters carry the outcome counts: {seen}");

    let good = uuid::Uuid::new_v4();
    let event = domain::OrderEvent::created(
        domain::OrderState {
            pedido_id: good,
            cliente_id: uuid::Uuid::new_v4(),
            fecha: chrono::Utc::now().fixed_offset(),
            total: rust_decimal::Decimal::new(1999, 2),
            items: None,
        },
        chrono::Utc::now(),
    );
    queue.send(event.to_json().unwrap_or_default(), &[("requestId", "r-live")]);
    let poison = queue.send("<script>alert(1)</script>", &[("requestId", "\"><img src=x onerror=alert(1)>")]);
    read_until(&mut stream, &mut seen, |s| outcome_lines(s).len() >= 2).await;

    let lines = outcome_lines(&seen);
    let processed = lines.iter().find(|l| l["outcome"] == "processed").unwrap_or_else(|| panic!("{seen}"));
    assert_eq!(processed["pedidoId"], good.to_string());
    assert_eq!(processed["requestId"], "r-live");
    let rejected = lines.iter().find(|l| l["outcome"] == "rejected").unwrap_or_else(|| panic!("{seen}"));
    assert_eq!(rejected["messageId"], poison);
    assert_eq!(rejected["reason"], "not_json");
    assert_eq!(rejected["requestId"], "\"><img src=x onerror=alert(1)>", "data, for the page to show as text");

    // Shutdown ends the open stream instead of waiting for the viewer to leave.
    worker.stop().await;
    let mut rest = Vec::new();
    let ended = timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the stream stayed open after shutdown");
}
