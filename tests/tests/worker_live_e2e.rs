//! The worker binary's own port as an on-call engineer uses it, against a real emulator: the live page's stream
//! (`GET /events`) shows each settled message, hostile text included, and `/metrics` is readable without CloudWatch
//! (queue depth gauges, `# HELP` for every family, counters from start-up).

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::MessageAttributeValue;
use chrono::Utc;
use domain::{OrderEvent, OrderState};
use e2e::{http, sdk, topology, unique, worker_builder, Emulator};
use rust_decimal::Decimal;
use uuid::Uuid;

const START: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(30);
const PROCESS: usize = 0;

const HOSTILE_BODY: &str = "<script>alert(1)</script>";
const HOSTILE_REQUEST_ID: &str = "\"><img src=x onerror=alert(1)>";

async fn send(sqs: &aws_sdk_sqs::Client, queue_url: &str, body: &str, request_id: &str) -> String {
    let request_id = MessageAttributeValue::builder()
        .data_type("String")
        .string_value(request_id)
        .build()
        .unwrap_or_else(|e| panic!("building a message attribute: {e}"));
    let output = sqs
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .message_attributes("requestId", request_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("send to {queue_url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
    output.message_id.unwrap_or_default()
}

/// Reads the SSE response until `done` holds for everything received so far.
async fn read_until(events: &mut reqwest::Response, seen: &mut String, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => panic!("the event stream ended; so far:\n{seen}"),
            Ok(Err(e)) => panic!("reading the event stream: {e}; so far:\n{seen}"),
            Err(_) => panic!("not seen within {SETTLE:?}; so far:\n{seen}"),
        }
    }
}

/// The `data:` of every `outcome` event received so far, parsed.
fn outcome_lines(stream: &str) -> Vec<serde_json::Value> {
    stream
        .split("event: outcome\n")
        .skip(1)
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
        .filter_map(|data| serde_json::from_str(data).ok())
        .collect()
}

/// One good event and one `<script>` poison message reach the live stream as their outcome lines, the page is served
/// with a CSP that forbids inline script, `/metrics` explains every family and shows the queue's depth, and SIGTERM
/// is not held up by the open stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_shows_each_outcome_and_metrics_show_the_queue() {
    let emulator = Emulator::start().await;
    let topo = topology(&emulator, &format!("-{}", unique("live"))).await;
    let (_, sqs) = sdk(&emulator.endpoints()).await;
    let queue_url = topo.queues[PROCESS].url.clone();
    let mut worker = worker_builder(&emulator.endpoints(), &topo, PROCESS).spawn();
    worker.wait_healthy(START).await;

    // A client without a total timeout: the stream stays open for the whole test.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_else(|e| panic!("building the HTTP client: {e}"));
    let mut events = client
        .get(format!("{}/events", worker.base_url()))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /events: {e}"));
    assert_eq!(events.status(), reqwest::StatusCode::OK);
    let content_type = events.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let mut seen = String::new();
    read_until(&mut events, &mut seen, |s| s.contains("event: counters")).await;

    let pedido_id = Uuid::new_v4();
    let order = OrderState {
        pedido_id,
        cliente_id: Uuid::new_v4(),
        fecha: Utc::now().fixed_offset(),
        total: Decimal::new(5998, 2),
        items: None,
    };
    let event = OrderEvent::created(order, Utc::now()).to_json().unwrap_or_else(|e| panic!("serialising: {e}"));
    send(&sqs, &queue_url, &event, "r-live-e2e").await;
    let poison = send(&sqs, &queue_url, HOSTILE_BODY, HOSTILE_REQUEST_ID).await;
    read_until(&mut events, &mut seen, |s| {
        let lines = outcome_lines(s);
        ["processed", "rejected"].iter().all(|o| lines.iter().any(|l| l["outcome"] == *o))
    })
    .await;

    let lines = outcome_lines(&seen);
    let processed = lines.iter().find(|l| l["outcome"] == "processed").unwrap_or_else(|| panic!("{seen}"));
    assert_eq!(processed["pedidoId"], pedido_id.to_string());
    assert_eq!((&processed["version"], &processed["type"]), (&1.into(), &"PedidoCreado".into()));
    assert_eq!((&processed["action"], &processed["requestId"]), (&"delete".into(), &"r-live-e2e".into()));
    let rejected = lines.iter().find(|l| l["outcome"] == "rejected").unwrap_or_else(|| panic!("{seen}"));
    assert_eq!(rejected["messageId"], poison);
    assert_eq!((&rejected["action"], &rejected["reason"]), (&"dead_letter".into(), &"not_json".into()));
    assert_eq!(rejected["requestId"], HOSTILE_REQUEST_ID, "hostile text travels as JSON data, shown with textContent");
    assert_eq!(rejected["receiveCount"], 1);

    // The page itself: no inline script may run, nothing may be sniffed into script.
    let page = http().get(worker.base_url()).send().await.unwrap_or_else(|e| panic!("GET /: {e}"));
    let header = |name: &str| page.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(header("content-security-policy").starts_with("default-src 'self'; script-src 'self'; style-src 'self'"));
    assert_eq!(header("x-content-type-options"), "nosniff");

    // Metrics an alert can be written on, without CloudWatch. The first depth poll runs at start-up.
    let metrics = http()
        .get(format!("{}/metrics", worker.base_url()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
        .text()
        .await
        .unwrap_or_default();
    for state in ["visible", "in_flight", "delayed"] {
        let series = format!("pedidos_worker_queue_messages{{state=\"{state}\"}} ");
        assert!(metrics.lines().any(|l| l.starts_with(&series)), "{series}missing:\n{metrics}");
    }
    for series in [
        "pedidos_worker_oldest_message_age_seconds ",
        "pedidos_worker_sqs_calls_total{operation=\"get_queue_attributes\"} ",
        "pedidos_worker_sqs_errors_total{operation=\"receive\"} ",
        "pedidos_worker_messages_total{outcome=\"stale\"} 0",
        "pedidos_store_calls_total{operation=\"apply\",result=\"throttled\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l.starts_with(series)), "{series} missing:\n{metrics}");
    }
    let families: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pedidos_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name))
        .collect();
    for family in &families {
        assert!(metrics.contains(&format!("# HELP {family} ")), "no # HELP for {family}");
    }
    let health: serde_json::Value = http()
        .get(format!("{}/health", worker.base_url()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /health: {e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(health["queue"]["url"], queue_url.as_str(), "{health}");
    assert!(health["queue"]["visible"].is_u64() && health["queue"]["inFlight"].is_u64(), "{health}");

    // A viewer does not hold up shutdown: the stream ends and the process exits cleanly.
    worker.signal_term();
    let status = worker.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}; log:\n{}", worker.log_text());
    let mut rest = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(chunk)) = events.chunk().await {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the event stream stayed open after the worker exited");
}
