//! `pedidos-worker` against a real moto server, through the real SNS fan-out where it matters.
//!
//! Binaries are used where process behaviour is the point (signals, exit codes, health); the consumer runs in-process
//! where a test needs a handler the binary does not have (failing, slow).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::Utc;
use domain::{OrderEvent, OrderState};
use e2e::{drain, eventually, http, queue_depth, sdk, topology, unique, Moto, Service, Topology};
use pedidos_worker::consumer::{Consumer, Settings};
use pedidos_worker::dedup::MemoryDedup;
use pedidos_worker::handler::{BoxFuture, Handler, HandlerError, MessageContext};
use pedidos_worker::health::Health;
use pedidos_worker::queue::{discover, Queue};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const START: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(30);

async fn start_worker(moto: &Moto, queue_url: &str, extra: &[(&str, &str)]) -> Service {
    let mut builder = Service::builder("pedidos-worker")
        .name(unique("worker"))
        .endpoint(moto.endpoint())
        .env("SQS_QUEUE_URL", queue_url)
        .env("WAIT_TIME_SECONDS", "1");
    for (k, v) in extra {
        builder = builder.env(*k, *v);
    }
    let mut worker = builder.spawn();
    worker.wait_healthy(START).await;
    worker
}

/// The value of one Prometheus sample, e.g. `pedidos_worker_messages_total{outcome="processed"}`; 0 when absent.
async fn metric(service: &Service, sample: &str) -> f64 {
    let text = match http().get(format!("{}/metrics", service.base_url())).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => return 0.0,
    };
    text.lines()
        .find_map(|line| {
            line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

fn outcome(name: &str) -> String {
    format!("pedidos_worker_messages_total{{outcome=\"{name}\"}}")
}

async fn wait_outcome(service: &Service, name: &str, at_least: f64) -> f64 {
    let sample = outcome(name);
    eventually(SETTLE, Duration::from_millis(100), || async {
        let value = metric(service, &sample).await;
        (value >= at_least).then_some(value)
    })
    .await
}

fn order(pedido_id: Uuid) -> OrderState {
    OrderState {
        pedido_id,
        cliente_id: Uuid::new_v4(),
        fecha: Utc::now().fixed_offset(),
        total: Decimal::new(5998, 2),
        items: None,
    }
}

fn event_json(pedido_id: Uuid, version: u64) -> String {
    let event = if version == 1 {
        OrderEvent::created(order(pedido_id), Utc::now())
    } else {
        OrderEvent::updated(order(pedido_id), version, Utc::now())
    };
    event.to_json().unwrap_or_else(|e| panic!("serialising a test event: {e}"))
}

async fn send(sqs: &aws_sdk_sqs::Client, queue_url: &str, body: &str) {
    sqs.send_message()
        .queue_url(queue_url)
        .message_body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("send to {queue_url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
}

async fn wait_empty(sqs: &aws_sdk_sqs::Client, queue_url: &str, within: Duration) {
    eventually(within, Duration::from_millis(200), || async {
        (queue_depth(sqs, queue_url).await == (0, 0)).then_some(())
    })
    .await;
}

async fn set_visibility_timeout(sqs: &aws_sdk_sqs::Client, queue_url: &str, seconds: u32) {
    sqs.set_queue_attributes()
        .queue_url(queue_url)
        .attributes(QueueAttributeName::VisibilityTimeout, seconds.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("set visibility of {queue_url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
}

/// Outcome lines (`"outcome"` field) the worker logged for `pedido_id`.
fn outcomes_for(worker: &Service, pedido_id: &str) -> Vec<String> {
    worker
        .log_json()
        .into_iter()
        .filter(|l| l["pedido_id"] == pedido_id && l.get("outcome").is_some())
        .map(|l| l["outcome"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn setup() -> (Moto, Topology, aws_sdk_sqs::Client) {
    let moto = Moto::start().await;
    let topo = topology(&moto, &format!("-{}", unique("w"))).await;
    let (_, sqs) = sdk(&moto.endpoint()).await;
    (moto, topo, sqs)
}

/// Orders posted through the API are processed exactly once by each role; the queues drain and counters add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_fan_out_to_both_workers_once() {
    let (moto, topo, sqs) = setup().await;
    let mut api =
        Service::builder("pedidos-api").endpoint(moto.endpoint()).env("SNS_TOPIC_ARN", &topo.topic_arn).spawn();
    api.wait_healthy(START).await;
    let process = start_worker(&moto, &topo.queues[0].url, &[]).await;
    let logistics = start_worker(&moto, &topo.queues[1].url, &[]).await;
    let client = http();
    let mut ids = Vec::new();
    for _ in 0..6 {
        let response = client
            .post(format!("{}/api/pedidos", api.base_url()))
            .json(&serde_json::json!({"clienteId": Uuid::new_v4(), "total": "10.00"}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST: {e}"));
        assert_eq!(response.status(), 202);
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        ids.push(body["pedidoId"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(wait_outcome(&process, "processed", 6.0).await, 6.0);
    assert_eq!(wait_outcome(&logistics, "processed", 6.0).await, 6.0);
    for queue in &topo.queues {
        wait_empty(&sqs, &queue.url, SETTLE).await;
    }
    for id in &ids {
        assert_eq!(outcomes_for(&process, id), ["processed"], "process role, order {id}");
        assert_eq!(outcomes_for(&logistics, id), ["processed"], "logistics role, order {id}");
    }
    // Logistics logs a deterministic tracking code; process logs the applied state.
    assert!(logistics.log_text().contains("ECX-"));
    assert!(process.log_text().contains("order state applied"));
    assert_eq!(metric(&process, &outcome("failed")).await, 0.0);
    let receives = metric(&process, "pedidos_worker_sqs_calls_total{operation=\"receive\"}").await;
    assert!(receives >= 1.0, "SQS calls are counted");
}

/// The same message twice is handled once (`duplicate`); version 3 then version 2: the late one is `stale`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_stale_versions_are_recognised() {
    let (_moto, topo, sqs) = setup().await;
    let url = topo.queues[0].url.clone();
    let worker = start_worker(&_moto, &url, &[]).await;
    let id = Uuid::new_v4();
    let created = event_json(id, 1);
    send(&sqs, &url, &created).await;
    wait_outcome(&worker, "processed", 1.0).await;
    send(&sqs, &url, &created).await;
    assert_eq!(wait_outcome(&worker, "duplicate", 1.0).await, 1.0);
    send(&sqs, &url, &event_json(id, 3)).await;
    wait_outcome(&worker, "processed", 2.0).await;
    send(&sqs, &url, &event_json(id, 2)).await;
    assert_eq!(wait_outcome(&worker, "stale", 1.0).await, 1.0);
    wait_empty(&sqs, &url, SETTLE).await;
    assert_eq!(outcomes_for(&worker, &id.to_string()), ["processed", "duplicate", "processed", "stale"]);
}

/// Poison goes to the DLQ after one receive with its reason attached; a good neighbour is processed normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dlq_after_one_receive() {
    let (moto, topo, sqs) = setup().await;
    let queue = topo.queues[0].clone();
    let invalid = event_json(Uuid::new_v4(), 1).replace("\"total\":59.98", "\"total\":-1");
    let poison = ["not json at all", r#"{"hello":"world"}"#, invalid.as_str()];
    for body in poison {
        send(&sqs, &queue.url, body).await;
    }
    send(&sqs, &queue.url, &event_json(Uuid::new_v4(), 1)).await;
    let worker = start_worker(&moto, &queue.url, &[]).await;
    assert_eq!(wait_outcome(&worker, "rejected", 3.0).await, 3.0);
    assert_eq!(wait_outcome(&worker, "processed", 1.0).await, 1.0);
    wait_empty(&sqs, &queue.url, SETTLE).await;
    let dead = drain(&sqs, &queue.dlq_url, 3, SETTLE).await;
    assert_eq!(dead.len(), 3);
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| {
            let attrs = m.message_attributes().cloned().unwrap_or_default();
            assert!(attrs.get("sourceQueue").and_then(|a| a.string_value()).is_some_and(|q| q == queue.url));
            assert!(attrs.get("originalMessageId").and_then(|a| a.string_value()).is_some_and(|q| !q.is_empty()));
            attrs.get("rejectReason").and_then(|a| a.string_value()).unwrap_or_default().to_owned()
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["invalid_event", "not_an_event", "not_json"]);
    // One receive each: moved by the worker, not by the redrive policy after five.
    assert_eq!(metric(&worker, "pedidos_worker_sqs_calls_total{operation=\"send\"}").await, 3.0);
}

/// Raw message delivery and the seed's legacy PascalCase payload are both processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_delivery_and_legacy_events_are_processed() {
    let (moto, topo, sqs) = setup().await;
    let (sns, _) = sdk(&moto.endpoint()).await;
    let queue = topo.queues[0].clone();
    sns.set_subscription_attributes()
        .subscription_arn(&queue.subscription_arn)
        .attribute_name("RawMessageDelivery")
        .attribute_value("true")
        .send()
        .await
        .unwrap_or_else(|e| panic!("raw delivery: {}", aws_sdk_sns::error::DisplayErrorContext(e)));
    let raw_id = Uuid::new_v4();
    sns.publish()
        .topic_arn(&topo.topic_arn)
        .message(event_json(raw_id, 1))
        .send()
        .await
        .unwrap_or_else(|e| panic!("publish: {}", aws_sdk_sns::error::DisplayErrorContext(e)));
    let legacy_id = Uuid::new_v4();
    let legacy = format!(
        r#"{{"PedidoId":"{legacy_id}","ClienteId":"{}","Fecha":"2024-05-01T10:00:00+00:00","Total":59.98}}"#,
        Uuid::new_v4()
    );
    send(&sqs, &queue.url, &legacy).await;
    let worker = start_worker(&moto, &queue.url, &[]).await;
    assert_eq!(wait_outcome(&worker, "processed", 2.0).await, 2.0);
    assert_eq!(outcomes_for(&worker, &raw_id.to_string()), ["processed"]);
    assert_eq!(outcomes_for(&worker, &legacy_id.to_string()), ["processed"]);
    assert!(worker.log_json().iter().any(|l| l["pedido_id"] == legacy_id.to_string() && l["legacy"] == true));
}

/// SIGTERM mid-backlog: exit 0 within the grace period; a restarted worker finishes the rest; nothing stays invisible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_strands_nothing() {
    let (moto, topo, sqs) = setup().await;
    let url = topo.queues[0].url.clone();
    let ids: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        send(&sqs, &url, &event_json(*id, 1)).await;
    }
    let mut first = start_worker(&moto, &url, &[("WORKER_CONCURRENCY", "2"), ("SHUTDOWN_GRACE_SECONDS", "5")]).await;
    wait_outcome(&first, "processed", 1.0).await;
    let stopped_at = Instant::now();
    first.signal_term();
    let status = first.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}");
    assert!(stopped_at.elapsed() < Duration::from_secs(7), "took {:?}", stopped_at.elapsed());
    let done_first = first.log_json().iter().filter(|l| l["outcome"] == "processed").count();
    let second = start_worker(&moto, &url, &[]).await;
    // Well within the 30 s visibility timeout: released messages were visible at once.
    let restarted = Instant::now();
    wait_empty(&sqs, &url, Duration::from_secs(20)).await;
    assert!(restarted.elapsed() < Duration::from_secs(25));
    let done_second = second.log_json().iter().filter(|l| l["outcome"] == "processed").count();
    assert_eq!(done_first + done_second, ids.len(), "first {done_first}, second {done_second}");
}

/// SIGKILL mid-backlog: after the visibility timeout a new worker processes everything; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing() {
    let (moto, topo, sqs) = setup().await;
    let url = topo.queues[1].url.clone();
    set_visibility_timeout(&sqs, &url, 3).await;
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        send(&sqs, &url, &event_json(*id, 1)).await;
    }
    let mut first = start_worker(&moto, &url, &[("WORKER_CONCURRENCY", "2")]).await;
    wait_outcome(&first, "processed", 1.0).await;
    first.kill();
    let second = start_worker(&moto, &url, &[]).await;
    wait_empty(&sqs, &url, SETTLE).await;
    let mut seen: Vec<String> = first
        .log_json()
        .into_iter()
        .chain(second.log_json())
        .filter(|l| l["outcome"] == "processed")
        .map(|l| l["pedido_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), ids.len(), "every order processed at least once");
}

/// Emulator frozen: the worker backs off (no hot loop), `/health` turns 503; after it returns, the worker recovers alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_an_emulator_outage() {
    let (moto, topo, sqs) = setup().await;
    let url = topo.queues[0].url.clone();
    let worker = start_worker(&moto, &url, &[("HEALTH_FAILURE_SECONDS", "2")]).await;
    moto.pause();
    let client = http();
    let health = format!("{}/health", worker.base_url());
    eventually(Duration::from_secs(60), Duration::from_millis(250), || async {
        let status = client.get(&health).send().await.ok()?.status();
        (status == 503).then_some(())
    })
    .await;
    let receives_during = metric(&worker, "pedidos_worker_sqs_calls_total{operation=\"receive\"}").await;
    moto.resume();
    eventually(Duration::from_secs(60), Duration::from_millis(250), || async {
        let status = client.get(&health).send().await.ok()?.status();
        (status == 200).then_some(())
    })
    .await;
    let id = Uuid::new_v4();
    send(&sqs, &url, &event_json(id, 1)).await;
    wait_outcome(&worker, "processed", 1.0).await;
    assert_eq!(outcomes_for(&worker, &id.to_string()), ["processed"]);
    // Backing off: a handful of attempts over the outage, not thousands.
    assert!(receives_during < 50.0, "{receives_during} receives while down");
    let log = worker.log_text();
    assert_eq!(log.matches("SQS receive failing").count(), 1, "one line per state change");
    assert!(log.contains("SQS reachable again"));
}

/// A missing queue fails at start-up, naming it; a missing variable names the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_are_clear() {
    let moto = Moto::start().await;
    let missing = Service::builder("pedidos-worker")
        .endpoint(moto.endpoint())
        .env("SQS_QUEUE_URL", "no-such-queue")
        .run(Duration::from_secs(30))
        .await;
    assert!(missing.status.is_some_and(|s| !s.success()));
    assert!(
        missing.stderr.contains("no-such-queue") && missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );
    let unset = Service::builder("pedidos-worker").endpoint(moto.endpoint()).run(Duration::from_secs(30)).await;
    assert!(unset.status.is_some_and(|s| !s.success()));
    assert!(unset.stderr.contains("SQS_QUEUE_URL"), "{}", unset.stderr);
}

// ---------------------------------------------------------------------------------------------------------------
// In-process consumer with test handlers

/// Fails every time, recording when it was called.
struct AlwaysFails(Arc<Mutex<Vec<Instant>>>);

impl Handler for AlwaysFails {
    fn handles(&self, _: domain::EventType) -> bool {
        true
    }
    fn handle<'a>(&'a self, _: &'a OrderEvent, _: &'a MessageContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        if let Ok(mut calls) = self.0.lock() {
            calls.push(Instant::now());
        }
        Box::pin(async { Err(HandlerError("downstream unavailable".into())) })
    }
}

/// Takes `delay` per message, counting completions.
struct Slow(Duration, Arc<Mutex<Vec<Uuid>>>);

impl Handler for Slow {
    fn handles(&self, _: domain::EventType) -> bool {
        true
    }
    fn handle<'a>(&'a self, event: &'a OrderEvent, _: &'a MessageContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            tokio::time::sleep(self.0).await;
            if let Ok(mut done) = self.1.lock() {
                done.push(event.order.pedido_id);
            }
            Ok(())
        })
    }
}

async fn consumer(moto: &Moto, url: &str, handler: Box<dyn Handler>, settings: Settings) -> (Consumer, Arc<Health>) {
    let (_, sqs) = sdk(&moto.endpoint()).await;
    let queue_settings = discover(&sqs, url).await.unwrap_or_else(|e| panic!("discover: {e}"));
    let health = Arc::new(Health::new("process", url.to_owned(), Duration::from_secs(60)));
    let consumer = Consumer {
        queue: Queue::new(sqs, queue_settings),
        handler,
        dedup: Box::new(MemoryDedup::new(1000, Duration::from_secs(600))),
        health: Arc::clone(&health),
        settings,
    };
    (consumer, health)
}

fn settings(grace: Duration) -> Settings {
    Settings {
        concurrency: 4,
        wait_time: Duration::from_secs(1),
        shutdown_grace: grace,
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(4),
    }
}

/// A failing handler is retried with growing visibility delays, then the redrive policy moves it to the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handler_backs_off_then_dead_letters() {
    let (moto, topo, sqs) = setup().await;
    let queue = topo.queues[0].clone();
    send(&sqs, &queue.url, &event_json(Uuid::new_v4(), 1)).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (consumer, _) =
        consumer(&moto, &queue.url, Box::new(AlwaysFails(Arc::clone(&calls))), settings(Duration::from_secs(1))).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    let dead = drain(&sqs, &queue.dlq_url, 1, Duration::from_secs(60)).await;
    stop.cancel();
    let _ = task.await;
    assert_eq!(dead.len(), 1, "dead-lettered after maxReceiveCount");
    let receive_count = dead[0]
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(receive_count >= 5, "receive count {receive_count}");
    let calls = calls.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(calls.len(), 5, "handled once per receive up to maxReceiveCount");
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    // Retry delays 1 s, 2 s, 4 s, 4 s (capped): each gap at least its delay.
    for (gap, min) in gaps.iter().zip([1, 2, 4, 4]) {
        assert!(*gap >= Duration::from_millis(min * 1000 - 100), "gaps {gaps:?}");
    }
}

/// When the grace period ends, handlers still running are abandoned and their messages released at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_expiry_releases_in_flight_messages() {
    let (moto, topo, sqs) = setup().await;
    let url = topo.queues[0].url.clone();
    let ids: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        send(&sqs, &url, &event_json(*id, 1)).await;
    }
    let done = Arc::new(Mutex::new(Vec::new()));
    let (slow, health) = consumer(
        &moto,
        &url,
        Box::new(Slow(Duration::from_secs(60), Arc::clone(&done))),
        settings(Duration::from_secs(1)),
    )
    .await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(slow.run(stop.clone()));
    eventually(SETTLE, Duration::from_millis(50), || async { (health.in_flight() > 0).then_some(()) }).await;
    let stopping = Instant::now();
    stop.cancel();
    let _ = task.await;
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopped in {:?}", stopping.elapsed());
    assert!(done.lock().map(|d| d.is_empty()).unwrap_or(false), "nothing completed");
    // Released, not stranded: all visible again long before the 30 s visibility timeout.
    eventually(Duration::from_secs(5), Duration::from_millis(100), || async {
        (queue_depth(&sqs, &url).await == (ids.len() as u64, 0)).then_some(())
    })
    .await;
    let (fast, _) =
        consumer(&moto, &url, Box::new(Slow(Duration::ZERO, Arc::clone(&done))), settings(Duration::from_secs(5)))
            .await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(fast.run(stop.clone()));
    wait_empty(&sqs, &url, SETTLE).await;
    stop.cancel();
    let _ = task.await;
    let mut handled = done.lock().map(|d| d.clone()).unwrap_or_default();
    handled.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(handled, expected);
}

/// Notes when a handler future is dropped before finishing (cancelled).
struct DropFlag(Arc<Mutex<Option<Instant>>>, bool);

impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            if let Ok(mut at) = self.0.lock() {
                *at = Some(Instant::now());
            }
        }
    }
}

/// Takes `delay`, recording completions and cancellations.
struct Watched {
    delay: Duration,
    done: Arc<Mutex<Vec<Uuid>>>,
    cancelled: Arc<Mutex<Option<Instant>>>,
}

impl Handler for Watched {
    fn handles(&self, _: domain::EventType) -> bool {
        true
    }
    fn handle<'a>(&'a self, event: &'a OrderEvent, _: &'a MessageContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let mut flag = DropFlag(Arc::clone(&self.cancelled), false);
            tokio::time::sleep(self.delay).await;
            flag.1 = true;
            if let Ok(mut done) = self.done.lock() {
                done.push(event.order.pedido_id);
            }
            Ok(())
        })
    }
}

/// A handler running past half the visibility timeout keeps its message invisible: nobody else receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_long_handlers_invisible() {
    let (moto, topo, sqs) = setup().await;
    let url = topo.queues[0].url.clone();
    set_visibility_timeout(&sqs, &url, 2).await;
    let id = Uuid::new_v4();
    send(&sqs, &url, &event_json(id, 1)).await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let cancelled = Arc::new(Mutex::new(None));
    let handler = Watched { delay: Duration::from_secs(5), done: Arc::clone(&done), cancelled: Arc::clone(&cancelled) };
    let (consumer, health) = consumer(&moto, &url, Box::new(handler), settings(Duration::from_secs(10))).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    eventually(SETTLE, Duration::from_millis(20), || async { (health.in_flight() == 1).then_some(()) }).await;
    // A competing consumer polls for 4 s (twice the visibility timeout): the heartbeat must keep the message hidden.
    let competitor = drain(&sqs, &url, 1, Duration::from_secs(4)).await;
    assert!(competitor.is_empty(), "message became visible while its handler ran");
    eventually(SETTLE, Duration::from_millis(50), || async { done.lock().ok().filter(|d| d.len() == 1).map(|_| ()) })
        .await;
    wait_empty(&sqs, &url, SETTLE).await;
    stop.cancel();
    let _ = task.await;
    assert_eq!(done.lock().map(|d| d.clone()).unwrap_or_default(), [id]);
    assert!(cancelled.lock().map(|c| c.is_none()).unwrap_or(false));
}

/// When extending visibility fails (SQS unreachable), the handler is cancelled rather than racing a redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_heartbeat_cancels_the_handler() {
    let (moto, topo, sqs) = setup().await;
    let url = topo.queues[0].url.clone();
    set_visibility_timeout(&sqs, &url, 2).await;
    send(&sqs, &url, &event_json(Uuid::new_v4(), 1)).await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let cancelled = Arc::new(Mutex::new(None));
    let handler =
        Watched { delay: Duration::from_secs(120), done: Arc::clone(&done), cancelled: Arc::clone(&cancelled) };
    let (consumer, health) = consumer(&moto, &url, Box::new(handler), settings(Duration::from_secs(1))).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    eventually(SETTLE, Duration::from_millis(20), || async { (health.in_flight() == 1).then_some(()) }).await;
    moto.pause();
    let paused = Instant::now();
    let at = eventually(Duration::from_secs(60), Duration::from_millis(100), || async {
        cancelled.lock().ok().and_then(|c| *c)
    })
    .await;
    moto.resume();
    stop.cancel();
    let _ = task.await;
    assert!(
        at.duration_since(paused) < Duration::from_secs(40),
        "cancelled {:?} after the outage began",
        at.duration_since(paused)
    );
    assert!(done.lock().map(|d| d.is_empty()).unwrap_or(false), "the handler never completed");
}
