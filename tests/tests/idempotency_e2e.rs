//! The generic idempotency store (`store::idempotency::DynamoIdempotency`) on the emulator: effects outside DynamoDB run
//! exactly once across workers.
//!
//! The effect is a call to a small HTTP "payment gateway" on 127.0.0.1 that lives outside the workers and counts what
//! it receives; it takes ~300 ms, so copies of one event handled by different workers overlap. Three in-process
//! consumers, each with its own SQS and DynamoDB clients (as three worker processes would have), share one queue and
//! one idempotency table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use domain::{EventType, OrderEvent, OrderState};
use e2e::{dynamodb, eventually, http, queue_depth, sdk, sns_envelope, topology, unique, Emulator, Topology};
use pedidos_worker::consumer::{Consumer, Settings};
use pedidos_worker::handler::{BoxFuture, HandlerError, MessageContext};
use pedidos_worker::health::Health;
use pedidos_worker::idempotent::{Idempotent, SideEffect};
use pedidos_worker::queue::sqs::{discover, SqsQueue};
use rust_decimal::Decimal;
use store::idempotency::{Claim, ClaimToken, DynamoIdempotency, IdempotencyStore};
use store::StoreError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WORKERS: usize = 3;
const COPIES: usize = 3;
const EFFECT_TAKES: Duration = Duration::from_millis(300);
const SETTLE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------------------
// The gateway: outside the workers, counts every call per key

#[derive(Default)]
struct Calls {
    /// Key -> when each call arrived.
    attempts: BTreeMap<String, Vec<Instant>>,
    /// Key -> calls answered 200.
    successes: BTreeMap<String, usize>,
    /// Calls running right now, per key, and the most seen at once.
    running: BTreeMap<String, usize>,
    max_overlap: usize,
}

#[derive(Clone)]
struct Gateway {
    calls: Arc<Mutex<Calls>>,
    /// Keys whose first call is answered 502.
    fail_first: Arc<BTreeSet<String>>,
}

impl Gateway {
    fn with<T>(&self, f: impl FnOnce(&mut Calls) -> T) -> T {
        f(&mut self.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn attempts(&self, key: &str) -> usize {
        self.with(|c| c.attempts.get(key).map_or(0, Vec::len))
    }

    fn successes(&self, key: &str) -> usize {
        self.with(|c| c.successes.get(key).copied().unwrap_or(0))
    }
}

async fn charge(State(gateway): State<Gateway>, Json(body): Json<serde_json::Value>) -> StatusCode {
    let key = body["key"].as_str().unwrap_or_default().to_owned();
    let attempt = gateway.with(|c| {
        let attempts = c.attempts.entry(key.clone()).or_default();
        attempts.push(Instant::now());
        let running = c.running.entry(key.clone()).or_insert(0);
        *running += 1;
        c.max_overlap = c.max_overlap.max(*running);
        attempts.len()
    });
    tokio::time::sleep(EFFECT_TAKES).await;
    let failed = attempt == 1 && gateway.fail_first.contains(&key);
    gateway.with(|c| {
        if let Some(running) = c.running.get_mut(&key) {
            *running -= 1;
        }
        if !failed {
            *c.successes.entry(key.clone()).or_insert(0) += 1;
        }
    });
    if failed {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    }
}

/// Serves the gateway on 127.0.0.1 until `stop`; returns its URL.
async fn serve(gateway: Gateway, stop: CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let url = format!("http://{}/charges", listener.local_addr().unwrap_or_else(|e| panic!("address: {e}")));
    let app = Router::new().route("/charges", post(charge)).with_state(gateway);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
    });
    url
}

// ---------------------------------------------------------------------------------------------------------------
// The side effect and the claims, as a worker would wire them

/// "Charge the order": one call to the gateway per `pedidoId#version`; any answer but 200 is a transient failure.
struct ChargeOrder {
    client: reqwest::Client,
    url: String,
}

impl SideEffect for ChargeOrder {
    fn name(&self) -> &'static str {
        "charge"
    }

    fn handles(&self, event_type: EventType) -> bool {
        event_type == EventType::PedidoCreado
    }

    fn run<'a>(&'a self, event: &'a OrderEvent, _: &'a MessageContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let key = event.dedup_key().to_string();
            let response = self
                .client
                .post(&self.url)
                .json(&serde_json::json!({"key": key}))
                .send()
                .await
                .map_err(|e| HandlerError::transient(format!("gateway unreachable: {e}")))?;
            match response.status() {
                StatusCode::OK => Ok(()),
                status => Err(HandlerError::transient(format!("gateway answered {status}"))),
            }
        })
    }
}

/// How claims were answered, over every worker.
#[derive(Default)]
struct ClaimCounts {
    acquired: AtomicUsize,
    completed: AtomicUsize,
    in_progress: AtomicUsize,
    released: AtomicUsize,
}

/// The real DynamoDB claims, counted.
struct Counted {
    inner: DynamoIdempotency,
    counts: Arc<ClaimCounts>,
}

impl IdempotencyStore for Counted {
    fn claim<'a>(&'a self, key: &'a str, lease: Duration) -> store::BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let claim = self.inner.claim(key, lease).await;
            let counter = match &claim {
                Ok(Claim::Acquired(_)) => &self.counts.acquired,
                Ok(Claim::Completed) => &self.counts.completed,
                Ok(Claim::InProgress { .. }) => &self.counts.in_progress,
                Err(_) => return claim,
            };
            counter.fetch_add(1, Ordering::SeqCst);
            claim
        })
    }

    fn extend<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> store::BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.extend(key, token, lease)
    }

    fn complete<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> store::BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.complete(key, token)
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> store::BoxFuture<'a, Result<(), StoreError>> {
        self.counts.released.fetch_add(1, Ordering::SeqCst);
        self.inner.release(key, token)
    }
}

/// `WORKERS` consumers on the process queue, each with its own SQS client, DynamoDB client and idempotency store.
struct Workers {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    counts: Arc<ClaimCounts>,
}

impl Workers {
    async fn start(emulator: &Emulator, topo: &Topology, gateway_url: &str) -> Self {
        let stop = CancellationToken::new();
        let counts = Arc::new(ClaimCounts::default());
        let url = &topo.queues[0].url;
        let mut tasks = Vec::new();
        for _ in 0..WORKERS {
            let (_, sqs) = sdk(&emulator.endpoints()).await;
            let queue_settings = discover(&sqs, url).await.unwrap_or_else(|e| panic!("discover: {e}"));
            let claims = Counted {
                inner: DynamoIdempotency::new(dynamodb(&emulator.endpoints()).await, &topo.idempotency_table),
                counts: Arc::clone(&counts),
            };
            let handler = Idempotent {
                effect: ChargeOrder { client: http(), url: gateway_url.to_owned() },
                claims: Arc::new(claims),
            };
            let health = Arc::new(Health::new("charge", url.clone(), pedidos_worker::health::Limits::default()));
            let settings = Settings {
                concurrency: 4,
                wait_time: Duration::from_secs(1),
                shutdown_grace: Duration::from_secs(5),
                retry_base: Duration::from_secs(1),
                retry_max: Duration::from_secs(4),
            };
            let consumer =
                Consumer::new(Arc::new(SqsQueue::new(sqs, queue_settings)), Arc::new(handler), health, settings);
            tasks.push(tokio::spawn(consumer.run(stop.clone())));
        }
        Self { stop, tasks, counts }
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap_or_else(|e| panic!("consumer task: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn created(pedido_id: Uuid) -> OrderEvent {
    let order = OrderState {
        pedido_id,
        cliente_id: Uuid::new_v4(),
        fecha: Utc::now().fixed_offset(),
        total: Decimal::new(1999, 2),
        items: None,
    };
    OrderEvent::created(order, Utc::now())
}

/// Sends each event `COPIES` times straight to the queue, the copies of one event back to back so that different
/// workers receive them at about the same time.
async fn deliver(sqs: &aws_sdk_sqs::Client, topo: &Topology, events: &[OrderEvent]) {
    for event in events {
        let body = sns_envelope(&topo.topic_arn, event, None);
        for _ in 0..COPIES {
            sqs.send_message()
                .queue_url(&topo.queues[0].url)
                .message_body(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("send: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
        }
    }
}

async fn wait_empty(sqs: &aws_sdk_sqs::Client, url: &str) {
    eventually(SETTLE, Duration::from_millis(200), || async { (queue_depth(sqs, url).await == (0, 0)).then_some(()) })
        .await;
}

/// Every item of the idempotency table, by `id`.
async fn claims_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> BTreeMap<String, BTreeMap<String, AttributeValue>> {
    let output = client
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("scan {table}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)));
    output
        .items
        .unwrap_or_default()
        .into_iter()
        .map(|item| {
            let id = match item.get("id") {
                Some(AttributeValue::S(id)) => id.clone(),
                other => panic!("claim without a string id: {other:?}"),
            };
            (id, item.into_iter().collect())
        })
        .collect()
}

/// The claim of `key` is `COMPLETED`, holds no lease any more, and expires (TTL) about 7 days from now.
fn assert_completed(key: &str, item: &BTreeMap<String, AttributeValue>) {
    assert_eq!(item.get("status"), Some(&AttributeValue::S("COMPLETED".into())), "{key}: {item:?}");
    assert!(item.get("leaseUntil").is_none(), "{key}: a completed claim holds no lease: {item:?}");
    assert!(matches!(item.get("owner"), Some(AttributeValue::S(owner)) if !owner.is_empty()), "{key}: {item:?}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expires_at = match item.get("expiresAt") {
        Some(AttributeValue::N(n)) => n.parse::<u64>().unwrap_or_else(|e| panic!("{key}: expiresAt {n}: {e}")),
        other => panic!("{key}: expiresAt must be a number (the table's TTL attribute), got {other:?}"),
    };
    let days = expires_at.saturating_sub(now) as f64 / 86_400.0;
    assert!((6.9..=7.1).contains(&days), "{key}: expires in {days:.2} days");
}

async fn setup() -> (Emulator, Topology, aws_sdk_sqs::Client, aws_sdk_dynamodb::Client) {
    let emulator = Emulator::start().await;
    let topo = topology(&emulator, &format!("-{}", unique("i"))).await;
    let (_, sqs) = sdk(&emulator.endpoints()).await;
    let dynamo = dynamodb(&emulator.endpoints()).await;
    (emulator, topo, sqs, dynamo)
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

/// Ten events, each delivered three times, handled by three workers at once: the gateway sees exactly one call per
/// `pedidoId#version`, never two at once; the queue drains; every claim is `COMPLETED` with its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_run_each_side_effect_exactly_once() {
    let (emulator, topo, sqs, dynamo) = setup().await;
    let stop_gateway = CancellationToken::new();
    let gateway = Gateway { calls: Arc::default(), fail_first: Arc::default() };
    let gateway_url = serve(gateway.clone(), stop_gateway.clone()).await;
    let workers = Workers::start(&emulator, &topo, &gateway_url).await;
    let events: Vec<OrderEvent> = (0..10).map(|_| created(Uuid::new_v4())).collect();
    let keys: Vec<String> = events.iter().map(|e| e.dedup_key().to_string()).collect();
    deliver(&sqs, &topo, &events).await;
    wait_empty(&sqs, &topo.queues[0].url).await;
    let counts = Arc::clone(&workers.counts);
    workers.stop().await;
    stop_gateway.cancel();
    for key in &keys {
        assert_eq!((gateway.attempts(key), gateway.successes(key)), (1, 1), "{key}: one call, and it succeeded");
    }
    assert_eq!(gateway.with(|c| c.max_overlap), 1, "never two calls for one key at once");
    assert_eq!(gateway.with(|c| c.attempts.len()), keys.len(), "no calls for anything else");
    let acquired = counts.acquired.load(Ordering::SeqCst);
    let completed = counts.completed.load(Ordering::SeqCst);
    let in_progress = counts.in_progress.load(Ordering::SeqCst);
    println!("claims: {acquired} acquired, {completed} found completed, {in_progress} found in progress");
    assert_eq!(acquired, keys.len(), "one claim acquired per key");
    assert_eq!(completed, keys.len() * (COPIES - 1), "every other copy found the claim completed");
    // Copies received by different workers while the first one ran: the claim held them off (not luck).
    assert!(in_progress >= 1, "copies overlapped across workers: {in_progress} claims found in progress");
    assert_eq!(counts.released.load(Ordering::SeqCst), 0);
    let table = claims_table(&dynamo, &topo.idempotency_table).await;
    let expected_ids: BTreeSet<String> = keys.iter().map(|k| format!("charge#{k}")).collect();
    assert_eq!(table.keys().cloned().collect::<BTreeSet<_>>(), expected_ids);
    for (id, item) in &table {
        assert_completed(id, item);
    }
    assert_eq!(queue_depth(&sqs, &topo.queues[0].dlq_url).await, (0, 0), "nothing dead-lettered");
}

/// An effect that fails releases its claim, so the retry runs it at once instead of waiting for the 30 s lease to
/// lapse: two calls for that key, one success; copies of it are still run at most once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_effect_releases_its_claim_and_the_retry_runs_it() {
    let (emulator, topo, sqs, dynamo) = setup().await;
    let flaky = created(Uuid::new_v4());
    let steady = created(Uuid::new_v4());
    let (flaky_key, steady_key) = (flaky.dedup_key().to_string(), steady.dedup_key().to_string());
    let stop_gateway = CancellationToken::new();
    let gateway = Gateway { calls: Arc::default(), fail_first: Arc::new(BTreeSet::from([flaky_key.clone()])) };
    let gateway_url = serve(gateway.clone(), stop_gateway.clone()).await;
    let workers = Workers::start(&emulator, &topo, &gateway_url).await;
    deliver(&sqs, &topo, &[flaky.clone(), steady.clone()]).await;
    eventually(SETTLE, Duration::from_millis(100), || async { (gateway.successes(&flaky_key) == 1).then_some(()) })
        .await;
    wait_empty(&sqs, &topo.queues[0].url).await;
    let counts = Arc::clone(&workers.counts);
    workers.stop().await;
    stop_gateway.cancel();
    assert_eq!((gateway.attempts(&flaky_key), gateway.successes(&flaky_key)), (2, 1), "failed once, then ran once");
    assert_eq!((gateway.attempts(&steady_key), gateway.successes(&steady_key)), (1, 1));
    assert_eq!(counts.released.load(Ordering::SeqCst), 1, "the failed run gave its claim up");
    let calls = gateway.with(|c| c.attempts.get(&flaky_key).cloned().unwrap_or_default());
    let gap = calls[1].duration_since(calls[0]);
    assert!(gap < Duration::from_secs(10), "retried after {gap:?}: the claim was released, not left to lapse (30 s)");
    let table = claims_table(&dynamo, &topo.idempotency_table).await;
    assert_eq!(table.len(), 2);
    for (id, item) in &table {
        assert_completed(id, item);
    }
    assert_eq!(queue_depth(&sqs, &topo.queues[0].dlq_url).await, (0, 0), "nothing dead-lettered");
}
