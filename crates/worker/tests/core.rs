//! The worker's core with the in-memory queue and store under a paused clock: every outcome, every settle action,
//! leases, shutdown, panics and store outages, without an emulator.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::{OrderEvent, OrderState};
use pedidos_worker::consumer::{Consumer, Decision, Outcome, Settings, Settle};
use pedidos_worker::handler::{BoxFuture, Effect, Handler, HandlerError, MessageContext, Role};
use pedidos_worker::health::{Health, Liveness};
use pedidos_worker::queue::memory::MemoryQueue;
use pedidos_worker::queue::{BatchFailure, MessageQueue, QueueDepth, QueueError, QueueSettings, Received};
use rust_decimal::Decimal;
use store::memory::MemoryOrders;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const VISIBILITY: Duration = Duration::from_secs(30);

fn settings() -> Settings {
    Settings {
        concurrency: 10,
        wait_time: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(5),
        retry_base: Duration::from_secs(5),
        retry_max: Duration::from_secs(300),
    }
}

fn event(pedido: u128, version: u64) -> OrderEvent {
    let order = OrderState {
        pedido_id: Uuid::from_u128(pedido),
        cliente_id: Uuid::from_u128(9),
        // Fixed: two copies of one version carry the same content (a redelivery), so the same digest.
        fecha: chrono::DateTime::parse_from_rfc3339("2026-11-01T10:00:00+01:00").unwrap_or_default(),
        total: Decimal::new(5998, 2),
        items: None,
    };
    if version == 1 {
        OrderEvent::created(order, Utc::now())
    } else {
        OrderEvent::updated(order, version, Utc::now())
    }
}

fn body(pedido: u128, version: u64) -> String {
    event(pedido, version).to_json().unwrap_or_default()
}

fn received(body: &str) -> Received {
    Received {
        message_id: "m1".into(),
        receipt_handle: "h1".into(),
        body: body.to_owned(),
        receive_count: 1,
        sent_at_ms: None,
        attributes: Default::default(),
        group_id: None,
        trace_header: None,
    }
}

fn health() -> Arc<Health> {
    Arc::new(Health::new("process", "memory://queue".into(), pedidos_worker::health::Limits::default()))
}

/// A handler whose behaviour the test scripts.
struct Scripted<F>(F);

impl<F, Fut> Handler for Scripted<F>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Effect, HandlerError>> + Send + 'static,
{
    fn handles(&self, _: domain::EventType) -> bool {
        true
    }
    fn handle<'a>(
        &'a self,
        event: &'a OrderEvent,
        _: &'a MessageContext,
    ) -> BoxFuture<'a, Result<Effect, HandlerError>> {
        Box::pin((self.0)(event.version))
    }
}

fn consumer(queue: Arc<dyn MessageQueue>, handler: Arc<dyn Handler>) -> Consumer {
    Consumer::new(queue, handler, health(), settings())
}

fn process(store: &Arc<MemoryOrders>) -> Arc<dyn Handler> {
    Role::Process.handler(Arc::clone(store) as Arc<dyn store::OrderWrites>)
}

/// Runs a consumer on `queue` in the background; `stop` shuts it down and waits for it.
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// What `/health` and `/ready` report, running (the queue found) from the start.
    health: Arc<Health>,
}

impl Running {
    fn start<Q: MessageQueue>(queue: Arc<Q>, handler: Arc<dyn Handler>) -> Self {
        let shutdown = CancellationToken::new();
        let consumer = consumer(queue, handler);
        let health = Arc::clone(&consumer.health);
        health.running("memory://queue");
        let task = tokio::spawn(consumer.run(shutdown.clone()));
        Self { shutdown, task, health }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Polls `condition` on the paused clock until it holds; panics after `within` (virtual time).
async fn until(within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Deciding: each outcome and the action it calls for

#[tokio::test(start_paused = true)]
async fn applied_duplicate_and_stale_come_from_the_store() {
    let store = Arc::new(MemoryOrders::new());
    let c = consumer(Arc::new(MemoryQueue::new(VISIBILITY, 5)), process(&store));
    let d = c.decision(&received(&body(1, 1))).await;
    assert_eq!((d.outcome, d.settle), (Outcome::Processed, Settle::Delete));
    let d = c.decision(&received(&body(1, 1))).await;
    assert_eq!((d.outcome, d.settle), (Outcome::Duplicate, Settle::Delete));
    assert_eq!(c.decision(&received(&body(1, 3))).await.outcome, Outcome::Processed);
    let d = c.decision(&received(&body(1, 2))).await;
    assert_eq!((d.outcome, d.settle), (Outcome::Stale, Settle::Delete));
    assert!(d.note.contains('3'), "{}", d.note);
    let history: Vec<u64> =
        store.order(Uuid::from_u128(1)).map(|o| o.versiones.iter().map(|v| v.version).collect()).unwrap_or_default();
    assert_eq!(history, [1, 3], "each version once, never backwards");
}

#[tokio::test(start_paused = true)]
async fn logistics_ignores_updates_and_creates_one_shipment() {
    let store = Arc::new(MemoryOrders::new());
    let handler = Role::Logistics.handler(Arc::clone(&store) as Arc<dyn store::OrderWrites>);
    let c = consumer(Arc::new(MemoryQueue::new(VISIBILITY, 5)), handler);
    let d = c.decision(&received(&body(1, 2))).await;
    assert_eq!((d.outcome, d.settle), (Outcome::Ignored, Settle::Delete));
    assert_eq!(c.decision(&received(&body(1, 1))).await.outcome, Outcome::Processed);
    assert_eq!(c.decision(&received(&body(1, 1))).await.outcome, Outcome::Duplicate);
    assert!(store.shipment(Uuid::from_u128(1)).is_some_and(|s| s.tracking_code.starts_with("ECX-")));
}

#[tokio::test(start_paused = true)]
async fn poison_and_unknown_event_types_are_dead_lettered_with_a_reason() {
    let store = Arc::new(MemoryOrders::new());
    let c = consumer(Arc::new(MemoryQueue::new(VISIBILITY, 5)), process(&store));
    let reason = |d: Decision| match d.settle {
        Settle::DeadLetter { reason, .. } if d.outcome == Outcome::Rejected => reason,
        other => panic!("expected a dead letter, got {other:?}"),
    };
    assert_eq!(reason(c.decision(&received("not json")).await), "not_json");
    let unknown = r#"{"type":"PedidoCancelado","version":3,"pedidoId":"6f1c2a9e-4b7d-4c1e-9a3f-2d5e8b7c6a10"}"#;
    assert_eq!(reason(c.decision(&received(unknown)).await), "unknown_event_type");
}

#[tokio::test(start_paused = true)]
async fn transient_errors_retry_with_backoff_and_permanent_ones_dead_letter() {
    let queue: Arc<dyn MessageQueue> = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let transient =
        consumer(Arc::clone(&queue), Arc::new(Scripted(|_| async { Err(HandlerError::transient("gateway 502")) })));
    let mut message = received(&body(1, 1));
    message.receive_count = 3;
    let d = transient.decision(&message).await;
    assert_eq!((d.outcome, d.settle), (Outcome::Failed, Settle::RetryAfter(Duration::from_secs(20))), "5 s * 2^(3-1)");
    let permanent = consumer(
        queue,
        Arc::new(Scripted(|_| async {
            Err(HandlerError::Permanent { reason: "card_declined", detail: "do not retry".into(), source: None })
        })),
    );
    let d = permanent.decision(&received(&body(1, 1))).await;
    assert_eq!(d.settle, Settle::DeadLetter { reason: "card_declined".into(), detail: "do not retry".into() });
}

#[tokio::test(start_paused = true)]
async fn a_store_outage_holds_the_message_and_retries_in_place() {
    let store = Arc::new(MemoryOrders::new());
    store.set_unavailable(true);
    let c = Arc::new(consumer(Arc::new(MemoryQueue::new(VISIBILITY, 5)), process(&store)));
    let deciding = tokio::spawn({
        let c = Arc::clone(&c);
        async move { c.decision(&received(&body(1, 1))).await }
    });
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(!deciding.is_finished(), "still held while the store is down");
    assert!(c.health.store.failing(), "/ready reports the store");
    store.set_unavailable(false);
    let decision = deciding.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decision.outcome, Outcome::Processed);
    assert!(!c.health.store.failing());
}

/// An hour-long store outage under a running consumer: the messages received before it are held (leases extended),
/// nothing more is received, nothing reaches the DLQ, receive counts stay at 1, the worker stays live (an orchestrator
/// would not replace it) while its dependency state says the store is failing; then it all applies by itself.
#[tokio::test(start_paused = true)]
async fn an_hour_long_store_outage_holds_without_churn_and_stays_live() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let store = Arc::new(MemoryOrders::new());
    for id in 1..=15 {
        queue.send(body(id, 1), &[]);
    }
    store.set_unavailable(true);
    let running = Running::start(Arc::clone(&queue), process(&store));
    let health = Arc::clone(&running.health);
    until(Duration::from_secs(10), || health.store.failing()).await;
    let receives_at_start = queue.calls.receive.load(Ordering::SeqCst);
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(health.liveness(), Liveness::Running, "live all along");
    }
    assert!(queue.dead_lettered().is_empty(), "nothing dead-lettered by an outage");
    let counts: Vec<u32> = queue.receive_counts().into_values().collect();
    assert_eq!(counts.iter().filter(|n| **n == 1).count(), 10, "the first batch is held: {counts:?}");
    assert_eq!(counts.iter().filter(|n| **n == 0).count(), 5, "the rest was never received: {counts:?}");
    assert_eq!(queue.calls.receive.load(Ordering::SeqCst), receives_at_start, "no receive while holding");
    assert!(!health.ready(), "/ready says so");
    assert_eq!(health.report()["dependencies"]["store"]["state"], "failing");
    assert!(health.report()["dependencies"]["store"]["secondsFailing"].as_f64().unwrap_or_default() >= 3600.0);
    store.set_unavailable(false);
    until(Duration::from_secs(120), || queue.is_empty()).await;
    assert!(health.ready());
    running.stop().await;
    assert_eq!((1..=15).filter(|id| store.order(Uuid::from_u128(*id)).is_some()).count(), 15);
    assert!(queue.dead_lettered().is_empty());
}

/// Past SQS's 12-hour ceiling a held message's lease cannot be extended: it goes back to the queue and is received
/// again (one more receive per 12 hours of outage), never dead-lettered while maxReceiveCount allows.
#[tokio::test(start_paused = true)]
async fn an_outage_past_the_twelve_hour_ceiling_costs_one_receive_per_twelve_hours() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let store = Arc::new(MemoryOrders::new());
    queue.send(body(1, 1), &[]);
    store.set_unavailable(true);
    let running = Running::start(Arc::clone(&queue), process(&store));
    tokio::time::sleep(Duration::from_secs(13 * 3600)).await;
    assert_eq!(queue.receive_counts().into_values().collect::<Vec<_>>(), [2], "received again once, at 12 h");
    assert!(queue.dead_lettered().is_empty());
    store.set_unavailable(false);
    until(Duration::from_secs(120), || queue.is_empty()).await;
    running.stop().await;
    assert!(store.order(Uuid::from_u128(1)).is_some());
}

/// A store the worker cannot use as deployed (a missing table) holds messages like an outage, never dead-letters
/// them, logs every attempt and makes the worker unready at once; liveness is unaffected.
#[tokio::test(start_paused = true)]
async fn a_misconfigured_store_holds_messages_and_is_reported_not_dead_lettered() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let store = Arc::new(MemoryOrders::new());
    store.set_misconfigured(true);
    queue.send(body(1, 1), &[]);
    let running = Running::start(Arc::clone(&queue), process(&store));
    let health = Arc::clone(&running.health);
    until(Duration::from_secs(10), || health.store.misconfigured()).await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(!health.ready());
    assert_eq!(health.report()["store"], "misconfigured");
    assert_eq!(health.liveness(), Liveness::Running);
    assert!(queue.dead_lettered().is_empty());
    assert_eq!(queue.receive_counts().into_values().collect::<Vec<_>>(), [1]);
    store.set_misconfigured(false);
    until(Duration::from_secs(60), || queue.is_empty()).await;
    running.stop().await;
}

/// A write DynamoDB refuses (`ValidationException`: an item past 400 KB) is dead-lettered at once with
/// `rejectReason=store_rejected` and the AWS code, on its first receive; the other messages apply meanwhile.
#[tokio::test(start_paused = true)]
async fn a_refused_write_is_dead_lettered_at_once_and_the_others_apply() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let store = Arc::new(MemoryOrders::new());
    store.reject_writes_of(Uuid::from_u128(1));
    for id in 1..=6 {
        queue.send(body(id, 1), &[]);
    }
    let running = Running::start(Arc::clone(&queue), process(&store));
    until(Duration::from_secs(10), || queue.is_empty()).await;
    running.stop().await;
    let dlq = queue.dead_lettered();
    assert_eq!(dlq.len(), 1);
    let attribute = |name: &str| dlq[0].attributes.get(name).map(|a| a.value.clone()).unwrap_or_default();
    assert_eq!(attribute("rejectReason"), "store_rejected");
    assert!(attribute("rejectDetail").starts_with("ValidationException: "), "{}", attribute("rejectDetail"));
    assert_eq!((2..=6).filter(|id| store.order(Uuid::from_u128(*id)).is_some()).count(), 5);
}

/// The same version with other content is a conflict: dead-lettered with both digests, the stored order untouched.
#[tokio::test(start_paused = true)]
async fn the_same_version_with_other_content_is_a_conflict() {
    let store = Arc::new(MemoryOrders::new());
    let c = consumer(Arc::new(MemoryQueue::new(VISIBILITY, 5)), process(&store));
    assert_eq!(c.decision(&received(&body(1, 2))).await.outcome, Outcome::Processed);
    assert_eq!(c.decision(&received(&body(1, 2))).await.outcome, Outcome::Duplicate, "same content");
    let mut other = event(1, 2);
    other.order.total = Decimal::new(1, 2);
    let d = c.decision(&received(&other.to_json().unwrap_or_default())).await;
    let Settle::DeadLetter { reason, detail } = &d.settle else { panic!("{d:?}") };
    assert_eq!((d.outcome, reason.as_str()), (Outcome::Rejected, "version_conflict"));
    let stored = domain::ContentDigest::of(&event(1, 2).order).to_string();
    let received_digest = domain::ContentDigest::of(&other.order).to_string();
    assert!(detail.contains(&stored) && detail.contains(&received_digest), "{detail}");
    assert_eq!(store.order(Uuid::from_u128(1)).map(|o| o.total), Some(Decimal::new(5998, 2)), "untouched");
}

/// A newer version from another API client than the order's owner, or one that changes the customer, can never
/// apply: dead-lettered at once with the reason and both names, the stored order untouched.
#[tokio::test(start_paused = true)]
async fn a_version_from_another_client_or_for_another_customer_is_dead_lettered() {
    let store = Arc::new(MemoryOrders::new());
    let c = consumer(Arc::new(MemoryQueue::new(VISIBILITY, 5)), process(&store));
    let by = |client: &str, version: u64| event(1, version).by_client(Some(client.to_owned()));
    let json = |event: OrderEvent| event.to_json().unwrap_or_default();
    assert_eq!(c.decision(&received(&json(by("shop-a", 1)))).await.outcome, Outcome::Processed);
    let mut moved = by("shop-a", 2);
    moved.order.cliente_id = Uuid::from_u128(8);
    for (event, expected, named) in [
        (by("shop-b", 2), "owner_mismatch", "shop-b"),
        (moved, "cliente_changed", "00000000-0000-0000-0000-000000000008"),
    ] {
        let d = c.decision(&received(&json(event))).await;
        let Settle::DeadLetter { reason, detail } = &d.settle else { panic!("{d:?}") };
        assert_eq!((d.outcome, reason.as_str()), (Outcome::Rejected, expected));
        assert!(detail.contains(named), "{detail}");
    }
    let stored = store.order(Uuid::from_u128(1));
    assert_eq!(stored.map(|o| (o.version, o.client)), Some((1, Some("shop-a".to_owned()))));
}

/// However many versions an order takes, its stored history stays bounded, and the count of applied versions is
/// kept.
#[tokio::test(start_paused = true)]
async fn an_order_taking_many_versions_keeps_a_bounded_history() {
    let store = Arc::new(MemoryOrders::new());
    let c = consumer(Arc::new(MemoryQueue::new(VISIBILITY, 5)), process(&store));
    for version in 1..=1000 {
        assert_eq!(c.decision(&received(&body(1, version))).await.outcome, Outcome::Processed);
    }
    let order = store.order(Uuid::from_u128(1)).unwrap_or_else(|| panic!("stored"));
    assert_eq!((order.version, order.versiones_aplicadas), (1000, 1000));
    assert!((store::model::HISTORY_KEPT..=store::model::HISTORY_MAX).contains(&order.versiones.len()));
    assert_eq!(order.versiones.last().map(|v| v.version), Some(1000));
    assert!(order.versiones.windows(2).all(|w| w[0].version < w[1].version));
}

// ---------------------------------------------------------------------------------------------------------------
// Settling: what happens to the message on the queue

#[tokio::test(start_paused = true)]
async fn run_applies_deletes_and_dead_letters_in_one_receive() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let store = Arc::new(MemoryOrders::new());
    queue.send(body(1, 1), &[]);
    queue.send(body(1, 1), &[]);
    queue.send("{not json", &[("requestId", "r-1")]);
    let running = Running::start(Arc::clone(&queue), process(&store));
    until(Duration::from_secs(10), || queue.is_empty()).await;
    running.stop().await;
    assert_eq!(store.order(Uuid::from_u128(1)).map(|o| o.versiones.len()), Some(1));
    let dlq = queue.dead_lettered();
    assert_eq!(dlq.len(), 1);
    let attribute = |name: &str| dlq[0].attributes.get(name).map(|a| a.value.clone());
    assert_eq!(attribute("rejectReason").as_deref(), Some("not_json"));
    assert_eq!(attribute("requestId").as_deref(), Some("r-1"), "original attributes travel to the DLQ");
    assert!(queue.calls.delete.load(Ordering::SeqCst) <= 2, "deletes are batched");
}

#[tokio::test(start_paused = true)]
async fn a_failed_message_comes_back_after_its_delay_and_is_dead_lettered_by_redrive() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 3));
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&attempts);
    let handler = Arc::new(Scripted(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err(HandlerError::transient("downstream 500")) }
    }));
    queue.send(body(1, 1), &[]);
    let started = Instant::now();
    let running = Running::start(Arc::clone(&queue), handler);
    until(Duration::from_secs(120), || !queue.dead_lettered().is_empty()).await;
    running.stop().await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "maxReceiveCount receives, then the redrive policy");
    // 5 s then 10 s of backoff between the three attempts.
    assert!(started.elapsed() >= Duration::from_secs(15), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn copies_of_one_order_wait_in_the_worker_not_in_the_queue() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let store = Arc::new(MemoryOrders::new());
    let slow = {
        let store = Arc::clone(&store);
        Arc::new(Scripted(move |version| {
            let store = Arc::clone(&store);
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let meta = store::ChangeMeta { request_id: None, at: Utc::now(), ..Default::default() };
                Ok(store::OrderWrites::apply(store.as_ref(), &event(1, version), &meta).await?)
            }
        }))
    };
    for version in [1, 1, 2] {
        queue.send(body(1, version), &[]);
    }
    let running = Running::start(Arc::clone(&queue), slow);
    until(Duration::from_secs(30), || queue.is_empty()).await;
    running.stop().await;
    assert_eq!(queue.calls.change_visibility.load(Ordering::SeqCst), 0, "no copy went back to the queue");
    assert_eq!(store.order(Uuid::from_u128(1)).map(|o| o.version), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_long_handler_keeps_its_lease_and_is_not_redelivered() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let handler = Arc::new(Scripted(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(VISIBILITY * 4).await;
            Ok(Effect::Applied)
        }
    }));
    queue.send(body(1, 1), &[]);
    let running = Running::start(Arc::clone(&queue), handler);
    until(Duration::from_secs(300), || queue.is_empty()).await;
    running.stop().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "heartbeats kept the message invisible for 2 minutes");
    assert!(queue.calls.change_visibility.load(Ordering::SeqCst) >= 7);
}

/// A [`MemoryQueue`] with faults injected: calls that never answer (an SDK call without its timeouts), or visibility
/// extensions that fail a number of times first (an SQS blip).
#[derive(Default)]
struct Faults {
    hang_receives: bool,
    denied_receives: bool,
    hang_extensions: bool,
    failing_extensions: AtomicUsize,
}

struct Faulty {
    inner: MemoryQueue,
    faults: Faults,
}

impl Faulty {
    fn new(faults: Faults) -> Self {
        Self { inner: MemoryQueue::new(VISIBILITY, 5), faults }
    }
}

impl MessageQueue for Faulty {
    fn settings(&self) -> &QueueSettings {
        self.inner.settings()
    }
    fn receive(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Received>, QueueError>> {
        if self.faults.hang_receives {
            return Box::pin(std::future::pending());
        }
        if self.faults.denied_receives {
            return Box::pin(async {
                Err(QueueError::Denied(store::AccessDenied {
                    action: "sqs:ReceiveMessage".into(),
                    resource: "queue memory://queue".into(),
                    identity: "arn:aws:sts::123456789012:assumed-role/Worker/task".into(),
                    code: "AccessDenied".into(),
                    message: "not authorized".into(),
                }))
            });
        }
        self.inner.receive(max, wait)
    }
    fn delete_batch<'a>(&'a self, handles: &'a [String]) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>> {
        self.inner.delete_batch(handles)
    }
    fn change_visibility_batch<'a>(
        &'a self,
        entries: &'a [(String, Duration)],
    ) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>> {
        self.inner.change_visibility_batch(entries)
    }
    fn extend_visibility<'a>(&'a self, handle: &'a str, timeout: Duration) -> BoxFuture<'a, Result<(), QueueError>> {
        if self.faults.hang_extensions {
            return Box::pin(std::future::pending());
        }
        let failures = &self.faults.failing_extensions;
        if failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Box::pin(async {
                Err(QueueError::Call { operation: "change_visibility", detail: "blip".into(), source: None })
            });
        }
        self.inner.extend_visibility(handle, timeout)
    }
    fn dead_letter<'a>(&'a self, m: &'a Received, r: &'a str, d: &'a str) -> BoxFuture<'a, Result<(), QueueError>> {
        self.inner.dead_letter(m, r, d)
    }
    fn depth(&self) -> BoxFuture<'_, Result<QueueDepth, QueueError>> {
        self.inner.depth()
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_cannot_be_confirmed_in_time_cancels_the_handler() {
    let queue = Arc::new(Faulty::new(Faults { hang_extensions: true, ..Faults::default() }));
    let c = consumer(queue, Arc::new(Scripted(|_| std::future::pending())));
    let started = Instant::now();
    let d = c.decision_under_lease(&received(&body(1, 1))).await;
    assert_eq!((d.outcome, d.settle.clone()), (Outcome::Failed, Settle::Nothing), "{}", d.note);
    assert!(started.elapsed() < VISIBILITY, "cancelled before the lease ran out, at {:?}", started.elapsed());
}

/// A failed extension with half the lease left is retried, not taken for a lost lease: the handler runs on.
#[tokio::test(start_paused = true)]
async fn a_failed_lease_extension_is_retried_while_the_lease_lasts() {
    let queue = Arc::new(Faulty::new(Faults { failing_extensions: AtomicUsize::new(2), ..Faults::default() }));
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let handler = Arc::new(Scripted(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(VISIBILITY * 2).await;
            Ok(Effect::Applied)
        }
    }));
    queue.inner.send(body(1, 1), &[]);
    let running = Running::start(Arc::clone(&queue), handler);
    until(Duration::from_secs(120), || queue.inner.is_empty()).await;
    running.stop().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "never cancelled, never redelivered");
    assert_eq!(queue.faults.failing_extensions.load(Ordering::SeqCst), 0, "both failures happened");
}

/// Liveness fails only for a worker that stopped making progress: a receive that never returns makes it `stalled`
/// after the bound (an unreachable SQS, which answers with errors, does not: see the outage tests).
#[tokio::test(start_paused = true)]
async fn a_wedged_receive_loop_fails_liveness_after_the_bound() {
    let c = consumer(
        Arc::new(Faulty::new(Faults { hang_receives: true, ..Faults::default() })),
        process(&Arc::new(MemoryOrders::new())),
    );
    let health = Arc::clone(&c.health);
    health.running("memory://queue");
    let task = tokio::spawn(c.run(CancellationToken::new()));
    let stall = pedidos_worker::health::Limits::default().stall_after;
    tokio::time::sleep(stall - Duration::from_secs(1)).await;
    assert_eq!(health.liveness(), Liveness::Running, "not before the bound");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(health.liveness(), Liveness::Stalled);
    task.abort();
}

/// SQS unreachable for ten minutes: receives back off and fail, yet the worker is live the whole time.
#[tokio::test(start_paused = true)]
async fn an_sqs_outage_is_not_a_liveness_failure() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    queue.set_unreachable(true);
    let running = Running::start(Arc::clone(&queue), process(&Arc::new(MemoryOrders::new())));
    let health = Arc::clone(&running.health);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(health.liveness(), Liveness::Running);
    }
    assert!(!health.ready());
    assert_eq!(health.report()["dependencies"]["sqs"]["state"], "failing");
    running.stop().await;
}

/// A receive AWS denies (the role lacks sqs:ReceiveMessage) is a misconfiguration: `/ready` says so at once, not
/// after `HEALTH_FAILURE_SECONDS`, liveness stays green (replacing the task cannot fix a policy), and nothing is lost.
#[tokio::test(start_paused = true)]
async fn a_denied_receive_is_misconfigured_not_stalled() {
    let queue = Arc::new(Faulty::new(Faults { denied_receives: true, ..Faults::default() }));
    queue.inner.send(body(1, 1), &[]);
    let running = Running::start(Arc::clone(&queue), process(&Arc::new(MemoryOrders::new())));
    let health = Arc::clone(&running.health);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!health.ready(), "misconfigured at once");
    assert_eq!(health.report()["dependencies"]["sqs"]["state"], "misconfigured");
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(health.liveness(), Liveness::Running);
    }
    let last = health.report()["dependencies"]["sqs"]["lastError"].as_str().map(str::to_owned).unwrap_or_default();
    assert!(last.starts_with("AWS denied sqs:ReceiveMessage on queue memory://queue to arn:aws:sts::"), "{last}");
    running.stop().await;
    assert_eq!(queue.inner.len(), 1, "the message is still in the queue");
}

/// Under a backlog, with store writes served one at a time (as the test emulator serialises DynamoDB: the messages of
/// one receive finish 3 to 20 ms apart, up to 200 ms for the batch), every receive asks for (and gets) a full batch
/// and deletes go out ten at a time: at most 0.21 receive+delete calls per message, as on the queue-only path.
#[tokio::test(start_paused = true)]
async fn under_a_backlog_receives_and_deletes_stay_full() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    for id in 0..200 {
        queue.send(body(id, 1), &[]);
    }
    let store = Arc::new(tokio::sync::Mutex::new(0u64));
    let handler = Arc::new(Scripted(move |_| {
        let store = Arc::clone(&store);
        async move {
            let mut writes = store.lock().await;
            *writes += 1;
            tokio::time::sleep(Duration::from_millis(3 + (*writes * 7) % 18)).await;
            Ok(Effect::Applied)
        }
    }));
    let running = Running::start(Arc::clone(&queue), handler);
    until(Duration::from_secs(120), || queue.is_empty()).await;
    running.stop().await;
    let receives = queue.calls.receive.load(Ordering::SeqCst);
    let deletes = queue.calls.delete.load(Ordering::SeqCst);
    assert!(receives + deletes <= 42, "{receives} receives and {deletes} delete calls for 200 messages");
}

/// SIGTERM while the store is down: the held messages are released within the grace and the worker stops.
#[tokio::test(start_paused = true)]
async fn shutdown_during_a_store_outage_releases_the_held_messages_in_time() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let store = Arc::new(MemoryOrders::new());
    store.set_unavailable(true);
    for id in 1..=3 {
        queue.send(body(id, 1), &[]);
    }
    let running = Running::start(Arc::clone(&queue), process(&store));
    until(Duration::from_secs(10), || queue.in_flight() == 3).await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    let stopping = Instant::now();
    running.stop().await;
    assert!(stopping.elapsed() <= settings().shutdown_grace + Duration::from_secs(6), "{:?}", stopping.elapsed());
    assert_eq!(queue.in_flight(), 0, "released, not stranded");
    assert!(queue.dead_lettered().is_empty());
    assert_eq!(queue.receive_counts().into_values().collect::<Vec<_>>(), [1, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_what_outlives_the_grace() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let handler = Arc::new(Scripted(|_| async {
        tokio::time::sleep(Duration::from_secs(600)).await;
        Ok(Effect::Applied)
    }));
    queue.send(body(1, 1), &[]);
    let running = Running::start(Arc::clone(&queue), handler);
    until(Duration::from_secs(5), || queue.in_flight() == 1).await;
    let stopping = Instant::now();
    running.stop().await;
    assert!(stopping.elapsed() <= settings().shutdown_grace + Duration::from_secs(2), "{:?}", stopping.elapsed());
    assert_eq!(queue.in_flight(), 0, "released at once, not stranded for a visibility timeout");
    assert_eq!(queue.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_contained_and_the_worker_goes_on() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let store = Arc::new(MemoryOrders::new());
    let inner = process(&store);
    let handler = Arc::new(PanicsOn { version: 2, inner });
    queue.send(body(1, 2), &[]);
    queue.send(body(7, 1), &[]);
    let running = Running::start(Arc::clone(&queue), handler);
    until(Duration::from_secs(10), || store.order(Uuid::from_u128(7)).is_some()).await;
    until(Duration::from_secs(10), || queue.len() == 1).await;
    running.stop().await;
    assert_eq!(queue.receive_counts().values().copied().collect::<Vec<_>>(), [1], "kept for a retry");
}

struct PanicsOn {
    version: u64,
    inner: Arc<dyn Handler>,
}

impl Handler for PanicsOn {
    fn handles(&self, t: domain::EventType) -> bool {
        self.inner.handles(t)
    }
    fn handle<'a>(
        &'a self,
        event: &'a OrderEvent,
        ctx: &'a MessageContext,
    ) -> BoxFuture<'a, Result<Effect, HandlerError>> {
        assert!(event.version != self.version, "handler bug on version {}", self.version);
        self.inner.handle(event, ctx)
    }
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_queue_is_retried_and_health_reports_it() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let store = Arc::new(MemoryOrders::new());
    queue.set_unreachable(true);
    queue.send(body(1, 1), &[]);
    let running = Running::start(Arc::clone(&queue), process(&store));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let failed_receives = queue.calls.receive.load(Ordering::SeqCst);
    assert!((3..=20).contains(&failed_receives), "backs off, never gives up: {failed_receives} calls in 60 s");
    queue.set_unreachable(false);
    until(Duration::from_secs(60), || queue.is_empty()).await;
    running.stop().await;
    assert!(store.order(Uuid::from_u128(1)).is_some());
}

// ---------------------------------------------------------------------------------------------------------------
// What operators see: the live feed, the queue's depth and the oldest message's age

#[tokio::test(start_paused = true)]
async fn every_settled_message_reaches_the_live_feed_once_with_its_outcome() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    let store = Arc::new(MemoryOrders::new());
    queue.send(body(1, 1), &[("requestId", "r-good")]);
    queue.send(body(1, 1), &[]);
    let poison = queue.send("<script>alert(1)</script>", &[("requestId", "\"><img src=x onerror=alert(1)>")]);
    let c = consumer(Arc::clone(&queue) as Arc<dyn MessageQueue>, process(&store));
    let health = Arc::clone(&c.health);
    let (_, mut feed) = health.live.subscribe();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(c.run(shutdown.clone()));
    until(Duration::from_secs(10), || queue.is_empty()).await;
    shutdown.cancel();
    let _ = task.await;

    let mut lines = Vec::new();
    while let Ok(line) = feed.try_recv() {
        lines.push(line);
    }
    let mut outcomes: Vec<Outcome> = lines.iter().map(|l| l.outcome).collect();
    outcomes.sort_by_key(|o| o.as_str());
    assert_eq!(outcomes, [Outcome::Duplicate, Outcome::Processed, Outcome::Rejected], "one line per message");
    let rejected = lines.iter().find(|l| l.outcome == Outcome::Rejected).unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(rejected.message_id, poison);
    assert_eq!((rejected.action, rejected.reason.as_deref()), ("dead_letter", Some("not_json")));
    assert_eq!(rejected.request_id.as_deref(), Some("\"><img src=x onerror=alert(1)>"), "carried as plain text");
    let processed = lines.iter().find(|l| l.outcome == Outcome::Processed).unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!((processed.pedido_id, processed.version), (Some(Uuid::from_u128(1)), Some(1)));
    assert_eq!(processed.event_type, Some("PedidoCreado"));
    let json = serde_json::to_value(&**processed).unwrap_or_default();
    assert_eq!((json["outcome"].as_str(), json["type"].as_str()), (Some("processed"), Some("PedidoCreado")));
    assert!(json["pedidoId"].is_string() && json["receiveCount"] == 1 && json["time"].is_string(), "{json}");
    let counts: Vec<u64> = health.live.counts().iter().take(3).map(|(_, n)| *n).collect();
    assert_eq!(counts, [1, 1, 0], "processed, duplicate, stale since start");
}

#[tokio::test(start_paused = true)]
async fn the_watcher_reports_depth_and_the_oldest_age_of_each_window() {
    let queue = Arc::new(MemoryQueue::new(VISIBILITY, 5));
    queue.send(body(1, 1), &[]);
    queue.send(body(2, 1), &[]);
    let held = queue.receive(1, Duration::ZERO).await.unwrap_or_default();
    assert_eq!(held.len(), 1);
    let health = health();
    let stop = CancellationToken::new();
    let watcher =
        tokio::spawn(pedidos_worker::depth::watch(Arc::clone(&queue) as _, Arc::clone(&health), stop.clone()));
    until(Duration::from_secs(1), || queue.calls.depth.load(Ordering::SeqCst) == 1).await;
    let report = health.report();
    assert_eq!((report["queue"]["visible"].as_u64(), report["queue"]["inFlight"].as_u64()), (Some(1), Some(1)));
    assert_eq!(report["queue"]["delayed"].as_u64(), Some(0));
    assert_eq!(report["queue"]["url"], "memory://queue");

    // A message sent 90 s ago is received during the window: the next poll reports its age, the one after 0.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut old = received(&body(3, 1));
    old.sent_at_ms = Some(now_ms - 90_000);
    let mut recent = received(&body(4, 1));
    recent.sent_at_ms = Some(now_ms - 1_000);
    health.note_ages(&[recent, old]);
    tokio::time::sleep(pedidos_worker::depth::POLL_EVERY).await;
    until(Duration::from_secs(1), || queue.calls.depth.load(Ordering::SeqCst) == 2).await;
    let age = health.report()["queue"]["oldestAgeSeconds"].as_f64().unwrap_or_default();
    assert!((90.0..95.0).contains(&age), "{age}");
    tokio::time::sleep(pedidos_worker::depth::POLL_EVERY).await;
    until(Duration::from_secs(1), || queue.calls.depth.load(Ordering::SeqCst) == 3).await;
    assert_eq!(health.report()["queue"]["oldestAgeSeconds"].as_f64(), Some(0.0), "nothing received: reset");

    // The held message's lease ran out meanwhile: both are visible, but an unreachable queue cannot say so.
    let last = health.report()["queue"].clone();
    queue.set_unreachable(true);
    tokio::time::sleep(pedidos_worker::depth::POLL_EVERY).await;
    until(Duration::from_secs(1), || queue.calls.depth.load(Ordering::SeqCst) == 4).await;
    assert_eq!(health.report()["queue"]["visible"], last["visible"], "a failed poll keeps the last depth");
    stop.cancel();
    let _ = watcher.await;
}

/// A handler that keeps the trace id each message's context carries.
struct TraceIds(std::sync::Mutex<Vec<Option<String>>>);

impl Handler for TraceIds {
    fn handles(&self, _: domain::EventType) -> bool {
        true
    }
    fn handle<'a>(&'a self, _: &'a OrderEvent, ctx: &'a MessageContext) -> BoxFuture<'a, Result<Effect, HandlerError>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(ctx.trace_id.clone());
        Box::pin(async { Ok(Effect::Applied) })
    }
}

/// With traces off, the trace id the store records is still the one the message names: the `traceparent` in the SNS
/// envelope's attributes, in the SQS attributes (raw delivery), or SQS's `AWSTraceHeader` (X-Ray, in W3C form); none
/// when the message names none or a malformed one.
#[tokio::test(start_paused = true)]
async fn the_message_trace_id_is_the_one_it_carries_with_traces_off() {
    let handler = Arc::new(TraceIds(std::sync::Mutex::new(Vec::new())));
    let c = consumer(Arc::new(MemoryQueue::new(VISIBILITY, 5)), Arc::clone(&handler) as Arc<dyn Handler>);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let envelope = serde_json::json!({
        "Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": body(1, 1),
        "MessageAttributes": {"traceparent": {"Type": "String", "Value": traceparent}},
    })
    .to_string();
    c.decision(&received(&envelope)).await;
    let mut raw = received(&body(2, 1));
    raw.attributes.insert("traceparent".into(), pedidos_worker::queue::Attribute::text(traceparent));
    c.decision(&raw).await;
    let mut xray = received(&body(3, 1));
    xray.trace_header = Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1".into());
    c.decision(&xray).await;
    c.decision(&received(&body(4, 1))).await;
    let mut malformed = received(&body(5, 1));
    malformed
        .attributes
        .insert("traceparent".into(), pedidos_worker::queue::Attribute::text("00-zz-00f067aa0ba902b7-01"));
    c.decision(&malformed).await;
    let seen = handler.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let w3c = Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned());
    assert_eq!(seen, [w3c.clone(), w3c, Some("5759e988bd862e3fe1be46a994272793".to_owned()), None, None]);
}
