//! Scenario suite: the whole pipeline (API, SNS fan-out with filter policies, workers, the DynamoDB order store) under
//! load, crashes, an emulator outage, duplicates and reordering, and poison; and (scenario 7) outages of one dependency
//! at a time and a rolling deploy, with the workers run by an ECS stand-in ([`e2e::Orchestrator`]). Each scenario
//! checks the promises of docs/RELIABILITY.md at the effect level, from the store itself: every accepted order present,
//! at its highest version, each version exactly once and in increasing order in `versiones`, exactly one shipment,
//! nothing written that no client sent. A watcher scans the table during each run and checks that no history is ever
//! rewritten and no version goes backwards.
//!
//! Short form (in `./scripts/test`): small numbers. Long form: `./scripts/scenarios` sets `SCENARIO_SCALE=long`
//! (1,000+ orders) and prints a summary table; results also land in `target/scenarios/*.json`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use domain::{Item, OrderEvent, OrderState};
use e2e::{
    api_builder, drain, eventually, history, http, queue_depth, scan_orders, sdk, sns_envelope, topology, unique,
    worker_builder, EcsService, Emulator, Endpoints, FaultProxy, Mode, Orchestrator, Reason, Service, Snapshot, Timing,
    Topology,
};
use pedidos_worker::handler::tracking_code;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const START: Duration = Duration::from_secs(30);
const PROCESS: usize = 0;
const LOGISTICS: usize = 1;

fn long() -> bool {
    std::env::var("SCENARIO_SCALE").is_ok_and(|s| s == "long")
}

/// The most the long form offers, orders per second over all clients.
const LONG_FORM_RATE_MAX: f64 = 25.0;
/// Orders of the capacity measurement, and the share of the measured capacity the long form offers.
const CALIBRATION_ORDERS: usize = 150;
const CAPACITY_SHARE: f64 = 0.7;

/// The long form's offered load: 70 % of the orders per second this machine's emulator carries through the whole
/// pipeline, at most [`LONG_FORM_RATE_MAX`]; measured once per run, first, on a pipeline of its own (a burst of
/// [`CALIBRATION_ORDERS`] posted unpaced by 16 clients, timed from the first POST until both roles applied them all).
///
/// Why: moto serves SNS, SQS and DynamoDB (serialised, for per-item atomicity) from one Python process, one core.
/// Offered more than it carries, a backlog forms, its SQS slows down as the backlog grows (it rescans the queue on
/// every call), the workers apply less and less, and the API's store reads wait behind everything else until they
/// time out (503). A long-form run at 25 orders/s measured exactly that collapse: the workers' applied rate fell from
/// 17 to 4 orders/s while the API kept publishing, and 2,081 of its answers were 503s, every one a store read that
/// timed out after 2 s (`docs/RELIABILITY.md`, "Latest numbers"). Pacing below capacity measures the pipeline instead.
/// The short form does not pace.
async fn long_form_rate() -> f64 {
    static RATE: tokio::sync::OnceCell<f64> = tokio::sync::OnceCell::const_new();
    *RATE.get_or_init(measure_capacity).await
}

/// The offered load of a scenario that is unpaced in the short form.
async fn paced() -> Option<f64> {
    if long() {
        Some(long_form_rate().await)
    } else {
        None
    }
}

async fn measure_capacity() -> f64 {
    let mut pipeline = Pipeline::start(None, 1).await;
    let ids = new_ids(CALIBRATION_ORDERS);
    let stats = Arc::new(LoadStats::default());
    let started = Instant::now();
    let clients = post_orders(pipeline.base(), &ids, 16, None, &stats);
    eventually(Duration::from_secs(900), Duration::from_millis(250), || async {
        let applied = pipeline.processed(PROCESS).await.min(pipeline.processed(LOGISTICS).await);
        (applied >= CALIBRATION_ORDERS).then_some(())
    })
    .await;
    let capacity = CALIBRATION_ORDERS as f64 / started.elapsed().as_secs_f64();
    clients.await.unwrap_or_else(|e| panic!("calibration clients: {e}"));
    pipeline.watched().await;
    let rate = (capacity * CAPACITY_SHARE).min(LONG_FORM_RATE_MAX);
    record(
        "0-capacity",
        json!({"orders": CALIBRATION_ORDERS, "clients": 16, "capacity_orders_per_second": capacity,
               "share": CAPACITY_SHARE, "offered_rate": rate, "statuses": stats.statuses()}),
    );
    rate
}

/// (orders, concurrent clients) for this scale.
fn scale(short: (usize, usize), long_form: (usize, usize)) -> (usize, usize) {
    if long() {
        long_form
    } else {
        short
    }
}

/// How long a settle may take at this scale.
fn settle_within(short_seconds: u64) -> Duration {
    Duration::from_secs(if long() { 1800 } else { short_seconds })
}

// ---------------------------------------------------------------------------------------------------------------
// Orders: every request body is derived from the pedidoId, so a retry or a copy carries exactly the same order

/// The state of order `id` at `version`: version 1 has items, updates change the total to `version.00`.
fn order_state(id: Uuid, version: u64) -> OrderState {
    let fecha = DateTime::parse_from_rfc3339("2024-05-01T10:00:00+02:00").unwrap_or_else(|e| panic!("fecha: {e}"));
    let (total, items) = if version == 1 {
        let item = Item { producto_id: "SKU-1".into(), cantidad: 2, precio_unitario: Decimal::new(2999, 2) };
        (Decimal::new(5998, 2), Some(vec![item]))
    } else {
        (Decimal::new(i64::try_from(version).unwrap_or(2) * 100, 2), None)
    };
    OrderState { pedido_id: id, cliente_id: Uuid::from_u128(id.as_u128() ^ 0xC1), fecha, total, items }
}

/// The event the API publishes for order `id` at `version` (same stored content).
fn event_of(id: Uuid, version: u64) -> OrderEvent {
    let state = order_state(id, version);
    if version == 1 {
        OrderEvent::created(state, Utc::now())
    } else {
        OrderEvent::updated(state, version, Utc::now())
    }
}

/// One API call: `POST /api/pedidos` (version 1) or `PUT /api/pedidos/{id}`.
#[derive(Clone)]
struct Request {
    pedido_id: Uuid,
    version: u64,
}

impl Request {
    fn key(&self) -> String {
        format!("{}#{}", self.pedido_id, self.version)
    }

    fn body(&self) -> Value {
        let state = order_state(self.pedido_id, self.version);
        let mut body = json!({
            "pedidoId": state.pedido_id,
            "clienteId": state.cliente_id,
            "fecha": state.fecha.to_rfc3339(),
            "total": state.total.to_string(),
        });
        if let Some(items) = &state.items {
            body["items"] = serde_json::to_value(items).unwrap_or_default();
        }
        if self.version > 1 {
            body["version"] = json!(self.version);
        }
        body
    }
}

fn create(pedido_id: Uuid) -> Request {
    Request { pedido_id, version: 1 }
}

fn update(pedido_id: Uuid, version: u64) -> Request {
    Request { pedido_id, version }
}

// ---------------------------------------------------------------------------------------------------------------
// What the store must hold, and the checks

/// What the clients did: versions accepted (202, or sent straight to a queue) and versions tried at all (a 503 may
/// still have been published, so a tried version may be stored).
#[derive(Default)]
struct Expected {
    highest: BTreeMap<Uuid, u64>,
    tried: BTreeMap<Uuid, BTreeSet<u64>>,
}

impl Expected {
    fn tried(&mut self, id: Uuid, version: u64) {
        self.tried.entry(id).or_default().insert(version);
    }

    fn accepted(&mut self, id: Uuid, version: u64) {
        self.tried(id, version);
        let highest = self.highest.entry(id).or_insert(version);
        *highest = (*highest).max(version);
    }

    /// Every accepted order is stored at (at least) its highest accepted version, with its shipment.
    fn complete_in(&self, snapshot: &Snapshot) -> bool {
        self.highest.iter().all(|(id, highest)| {
            snapshot.orders.get(id).is_some_and(|o| o.version >= *highest) && snapshot.shipments.contains_key(id)
        })
    }
}

/// Histories found, by shape (e.g. `[1, 3]` -> 12 orders), for the summary.
type Shapes = BTreeMap<String, usize>;

/// The store's final state against what was sent. Panics naming the first order that breaks a promise.
fn verify(snapshot: &Snapshot, expected: &Expected) -> Shapes {
    assert_eq!(snapshot.other, 0, "nothing but orders, shipments and role stats in the table");
    let mut shapes = Shapes::new();
    for (id, highest) in &expected.highest {
        let order = snapshot.orders.get(id).unwrap_or_else(|| panic!("accepted order {id} lost"));
        let tried = &expected.tried[id];
        let versions = history(order);
        let max_tried = tried.iter().max().copied().unwrap_or(1);
        assert!(
            order.version >= *highest && order.version == max_tried,
            "order {id} at {}, sent {tried:?}",
            order.version
        );
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "order {id}: history {versions:?} not strictly increasing");
        assert_eq!(versions.last(), Some(&order.version), "order {id}: history {versions:?} ends at its version");
        assert!(versions.iter().all(|v| tried.contains(v)), "order {id}: history {versions:?}, sent only {tried:?}");
        if tried.len() == 1 {
            assert_eq!(versions, [1], "order {id}: created once, applied once");
        }
        let expected_state = order_state(*id, order.version);
        assert_eq!((order.total, &order.items), (expected_state.total, &expected_state.items), "order {id} content");
        assert_eq!(order.estado, if order.version == 1 { "CREADO" } else { "ACTUALIZADO" });
        let envio = snapshot.shipments.get(id).unwrap_or_else(|| panic!("order {id} has no shipment"));
        assert_eq!((envio.tracking_code.as_str(), envio.estado.as_str()), (tracking_code(*id).as_str(), "PREPARANDO"));
        *shapes.entry(format!("{versions:?}")).or_insert(0) += 1;
    }
    for id in snapshot.orders.keys() {
        assert!(expected.tried.contains_key(id), "order {id} stored, but no client ever sent it");
    }
    let orders: BTreeSet<&Uuid> = snapshot.orders.keys().collect();
    let shipments: BTreeSet<&Uuid> = snapshot.shipments.keys().collect();
    assert_eq!(orders, shipments, "exactly one shipment per stored order, none without one");
    shapes
}

/// Scans the table while a scenario runs: a history may only grow at its end (never rewritten, never shortened), a
/// stored order never disappears, and each snapshot's history is strictly increasing.
#[derive(Default)]
struct Watch {
    seen: HashMap<Uuid, Vec<u64>>,
    scans: usize,
    violations: Vec<String>,
}

impl Watch {
    fn observe(&mut self, snapshot: &Snapshot) {
        for (id, order) in &snapshot.orders {
            let now = history(order);
            if !now.windows(2).all(|w| w[0] < w[1]) || now.last() != Some(&order.version) {
                self.violations.push(format!("order {id}: history {now:?} at version {}", order.version));
            }
            if let Some(before) = self.seen.get(id) {
                if !now.starts_with(before) {
                    self.violations.push(format!("order {id}: history went from {before:?} to {now:?}"));
                }
            }
            self.seen.insert(*id, now);
        }
        for id in self.seen.keys() {
            if !snapshot.orders.contains_key(id) {
                self.violations.push(format!("order {id} disappeared"));
            }
        }
        self.scans += 1;
    }
}

/// Starts watching `table` every `every` until `stop`; failed scans (an outage) are skipped.
fn watch(
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Watch> {
    tokio::spawn(async move {
        let mut watch = Watch::default();
        while !stop.is_cancelled() {
            if let Ok(snapshot) = scan_orders(&dynamodb, &table).await {
                watch.observe(&snapshot);
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => {}
            }
        }
        watch
    })
}

// ---------------------------------------------------------------------------------------------------------------
// The pipeline

struct Pipeline {
    emulator: Emulator,
    topo: Topology,
    api: Service,
    /// Every worker process of each role (process, logistics), oldest first; killed ones kept for their logs.
    workers: [Vec<Service>; 2],
    sqs: aws_sdk_sqs::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    watcher: Option<(CancellationToken, tokio::task::JoinHandle<Watch>)>,
}

impl Pipeline {
    /// The emulator, the topology, the API and `instances` workers per queue; the table watcher running.
    async fn start(visibility_timeout: Option<u32>, instances: usize) -> Self {
        let emulator = Emulator::start().await;
        let topo = topology(&emulator, &format!("-{}", unique("s"))).await;
        let (_, sqs) = sdk(&emulator.endpoints()).await;
        let dynamodb = e2e::dynamodb(&emulator.endpoints()).await;
        if let Some(seconds) = visibility_timeout {
            for q in &topo.queues {
                sqs.set_queue_attributes()
                    .queue_url(&q.url)
                    .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, seconds.to_string())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("visibility: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
            }
        }
        let mut api = api_builder(&emulator.endpoints(), &topo).spawn();
        api.wait_healthy(START).await;
        let stop = CancellationToken::new();
        // Every scan holds the emulator's DynamoDB lock for the whole table: rarely at scale.
        let every = Duration::from_millis(if long() { 15_000 } else { 1000 });
        let watcher = watch(dynamodb.clone(), topo.orders_table.clone(), every, stop.clone());
        let mut pipeline = Self {
            emulator,
            topo,
            api,
            workers: [Vec::new(), Vec::new()],
            sqs,
            dynamodb,
            watcher: Some((stop, watcher)),
        };
        for _ in 0..instances {
            pipeline.start_worker(PROCESS).await;
            pipeline.start_worker(LOGISTICS).await;
        }
        pipeline
    }

    async fn start_worker(&mut self, role: usize) {
        let mut worker =
            worker_builder(&self.emulator.endpoints(), &self.topo, role).env("SHUTDOWN_GRACE_SECONDS", "10").spawn();
        worker.wait_healthy(START).await;
        self.workers[role].push(worker);
    }

    fn base(&self) -> String {
        self.api.base_url()
    }

    /// Outcome lines of every process of a role.
    fn outcomes(&self, role: usize) -> Vec<Value> {
        self.workers[role].iter().flat_map(Service::log_json).filter(|l| l.get("outcome").is_some()).collect()
    }

    fn count(&self, role: usize, outcome: &str) -> usize {
        self.outcomes(role).iter().filter(|l| l["outcome"] == outcome).count()
    }

    /// Messages the live workers of a role have applied so far, from their `/metrics` (a killed worker counts 0). Used
    /// to time crashes and outages: unlike a scan, it costs the emulator nothing.
    async fn processed(&self, role: usize) -> usize {
        let mut total = 0.0;
        for worker in &self.workers[role] {
            total += worker.metric("pedidos_worker_messages_total{outcome=\"processed\"}").await.unwrap_or(0.0);
        }
        total as usize
    }

    async fn snapshot(&self) -> Result<Snapshot, String> {
        scan_orders(&self.dynamodb, &self.topo.orders_table).await
    }

    /// Waits until the store holds everything `expected` accepted and both queues are empty; returns that state.
    async fn settle(&self, expected: &Expected, timeout: Duration) -> Snapshot {
        eventually(timeout, Duration::from_millis(if long() { 3000 } else { 500 }), || async {
            for q in &self.topo.queues {
                if queue_depth(&self.sqs, &q.url).await != (0, 0) {
                    return None;
                }
            }
            let snapshot = self.snapshot().await.ok()?;
            expected.complete_in(&snapshot).then_some(snapshot)
        })
        .await
    }

    /// Nothing was dead-lettered: every DLQ is empty.
    async fn assert_dlqs_empty(&self) {
        for q in &self.topo.queues {
            assert_eq!(queue_depth(&self.sqs, &q.dlq_url).await, (0, 0), "{}: nothing dead-lettered", q.name);
        }
    }

    /// Stops the watcher and asserts it saw no history rewritten and no version going backwards.
    async fn watched(&mut self) -> usize {
        let Some((stop, task)) = self.watcher.take() else { return 0 };
        stop.cancel();
        let watch = task.await.unwrap_or_else(|e| panic!("watcher: {e}"));
        assert!(watch.violations.is_empty(), "while running: {:?}", watch.violations);
        watch.scans
    }

    /// Direct access to the queues, for copies and reordered events a client cannot make through the API.
    fn direct(&self) -> Direct {
        Direct {
            sqs: self.sqs.clone(),
            topic_arn: self.topo.topic_arn.clone(),
            queues: [self.topo.queues[PROCESS].url.clone(), self.topo.queues[LOGISTICS].url.clone()],
        }
    }
}

#[derive(Clone)]
struct Direct {
    sqs: aws_sdk_sqs::Client,
    topic_arn: String,
    queues: [String; 2],
}

impl Direct {
    /// Sends `event` in its SNS envelope straight to the queue of `role`, retrying through an outage. A retry may
    /// deliver it twice: one more duplicate, which is what the pipeline must absorb anyway.
    async fn send(&self, role: usize, event: &OrderEvent) {
        let body = sns_envelope(&self.topic_arn, event, None);
        let started = Instant::now();
        loop {
            match self.sqs.send_message().queue_url(&self.queues[role]).message_body(&body).send().await {
                Ok(_) => return,
                Err(_) if started.elapsed() < Duration::from_secs(120) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("send to {}: {}", self.queues[role], aws_sdk_sqs::error::DisplayErrorContext(e)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Clients

#[derive(Default)]
struct LoadStats {
    accepted: Mutex<Vec<Accepted>>,
    expected: Mutex<Expected>,
    status_counts: Mutex<BTreeMap<u16, usize>>,
    retries: AtomicUsize,
    slowest_503: Mutex<Duration>,
    creates_accepted: AtomicUsize,
}

struct Accepted {
    key: String,
    /// Unix millis when the client first tried.
    first_try_ms: i64,
    latency: Duration,
}

impl LoadStats {
    fn statuses(&self) -> BTreeMap<u16, usize> {
        self.status_counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn accepted_keys(&self) -> Vec<String> {
        self.accepted.lock().map(|a| a.iter().map(|a| a.key.clone()).collect()).unwrap_or_default()
    }

    fn expected<T>(&self, f: impl FnOnce(&mut Expected) -> T) -> T {
        f(&mut self.expected.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn take_expected(&self) -> Expected {
        self.expected(std::mem::take)
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The final answer to one request.
struct Answer {
    status: u16,
    /// An earlier attempt got a 503 or no answer (so it may have been published anyway).
    retried: bool,
}

/// Sends `request`, retrying 503s and transport errors with the same body (same pedidoId) until another answer or
/// `give_up`. Records statuses, 503 latencies and 202s in `stats`.
async fn submit(
    client: &reqwest::Client,
    base: &str,
    request: &Request,
    stats: &LoadStats,
    give_up: Duration,
) -> Answer {
    let first_try_ms = now_ms();
    let started = Instant::now();
    let url = if request.version == 1 {
        format!("{base}/api/pedidos")
    } else {
        format!("{base}/api/pedidos/{}", request.pedido_id)
    };
    let body = request.body();
    let mut retried = false;
    loop {
        let builder = if request.version == 1 { client.post(&url) } else { client.put(&url) };
        let attempt = Instant::now();
        stats.expected(|e| e.tried(request.pedido_id, request.version));
        let status = match builder.json(&body).timeout(Duration::from_secs(15)).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        };
        if let Ok(mut counts) = stats.status_counts.lock() {
            *counts.entry(status).or_insert(0) += 1;
        }
        if status == 202 {
            if let Ok(mut accepted) = stats.accepted.lock() {
                accepted.push(Accepted { key: request.key(), first_try_ms, latency: started.elapsed() });
            }
            stats.expected(|e| e.accepted(request.pedido_id, request.version));
            if request.version == 1 {
                stats.creates_accepted.fetch_add(1, Ordering::Relaxed);
            }
        }
        if status == 503 {
            if let Ok(mut slowest) = stats.slowest_503.lock() {
                *slowest = (*slowest).max(attempt.elapsed());
            }
        }
        if (status != 503 && status != 0) || started.elapsed() > give_up {
            return Answer { status, retried };
        }
        retried = true;
        stats.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a client does with one order after creating it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Extra {
    Nothing,
    /// A copy of the `PedidoCreado` delivery, straight to both queues.
    DuplicateDelivery,
    /// `PUT` version 3, then at once version 2 (202 or 409: the store may already hold 3).
    ReorderedThroughApi,
    /// Version 3 then version 2 as events straight to the process queue (the filter keeps updates off logistics).
    ReorderedStraight,
}

/// One order's whole story for a client: the create, then its [`Extra`].
#[derive(Clone)]
struct Plan {
    pedido_id: Uuid,
    extra: Extra,
}

/// `clients` concurrent clients work through `plans`, offering at most `rate` orders per second when given. Every
/// create must end in 202 (503s are retried with the same body until `give_up`).
/// Posts one plain order per id (no duplicates, no updates) from `clients` clients in the background, at `rate`
/// orders per second when given.
fn post_orders(
    base: String,
    ids: &[Uuid],
    clients: usize,
    rate: Option<f64>,
    stats: &Arc<LoadStats>,
) -> tokio::task::JoinHandle<()> {
    let plans = ids.iter().map(|id| Plan { pedido_id: *id, extra: Extra::Nothing }).collect();
    tokio::spawn(run_clients(base, plans, clients, rate, None, Arc::clone(stats), Duration::from_secs(120)))
}

async fn run_clients(
    base: String,
    plans: Vec<Plan>,
    clients: usize,
    rate: Option<f64>,
    direct: Option<Direct>,
    stats: Arc<LoadStats>,
    give_up: Duration,
) {
    let queue = Arc::new(Mutex::new(plans.into_iter().rev().collect::<Vec<_>>()));
    let gap = rate.map(|rate| Duration::from_secs_f64(clients as f64 / rate));
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let (stats, queue, base, direct) = (Arc::clone(&stats), Arc::clone(&queue), base.clone(), direct.clone());
        tasks.push(tokio::spawn(async move {
            let client = http();
            // Stagger paced clients so their requests spread evenly instead of arriving in bursts.
            let mut next_start = tokio::time::Instant::now()
                + gap.map_or(Duration::ZERO, |g| g.mul_f64(client_index as f64 / clients as f64));
            while let Some(plan) = queue.lock().ok().and_then(|mut q| q.pop()) {
                if let Some(gap) = gap {
                    tokio::time::sleep_until(next_start).await; // pacing the offered load, not synchronisation
                    next_start += gap;
                }
                let id = plan.pedido_id;
                let created = submit(&client, &base, &create(id), &stats, give_up).await;
                if created.status != 202 {
                    continue;
                }
                match (plan.extra, &direct) {
                    (Extra::Nothing, _) => {}
                    (Extra::DuplicateDelivery, Some(direct)) => {
                        let event = event_of(id, 1);
                        direct.send(PROCESS, &event).await;
                        direct.send(LOGISTICS, &event).await;
                    }
                    (Extra::ReorderedThroughApi, _) => {
                        let v3 = submit(&client, &base, &update(id, 3), &stats, give_up).await;
                        // 409 after a retry: an attempt that got no answer was published after all.
                        let published = v3.status == 202 || (v3.status == 409 && v3.retried);
                        assert!(published, "PUT v3 of {id}: {}", v3.status);
                        stats.expected(|e| e.accepted(id, 3));
                        let v2 = submit(&client, &base, &update(id, 2), &stats, give_up).await;
                        assert!(v2.status == 202 || v2.status == 409, "PUT v2 of {id}: {}", v2.status);
                    }
                    (Extra::ReorderedStraight, Some(direct)) => {
                        stats.expected(|e| e.accepted(id, 3));
                        direct.send(PROCESS, &event_of(id, 3)).await;
                        stats.expected(|e| e.accepted(id, 2));
                        direct.send(PROCESS, &event_of(id, 2)).await;
                    }
                    (extra, None) => panic!("{extra:?} needs direct queue access"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap_or_else(|e| panic!("client task: {e}"));
    }
}

/// Plain creates from `clients` clients, paced in the long form.
async fn load(base: &str, ids: &[Uuid], clients: usize, give_up: Duration) -> Arc<LoadStats> {
    let stats = Arc::new(LoadStats::default());
    let plans = ids.iter().map(|id| Plan { pedido_id: *id, extra: Extra::Nothing }).collect();
    let rate = paced().await;
    run_clients(base.to_owned(), plans, clients, rate, None, Arc::clone(&stats), give_up).await;
    stats
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// End-to-end latency from the store (first POST attempt to the later of "version 1 applied" and "shipment
/// created"), p50 and p99 in ms.
fn end_to_end(snapshot: &Snapshot, stats: &LoadStats) -> (f64, f64) {
    let accepted = stats.accepted.lock().map(|a| a.iter().map(|a| (a.key.clone(), a.first_try_ms)).collect::<Vec<_>>());
    let mut latencies: Vec<f64> = accepted
        .unwrap_or_default()
        .iter()
        .filter_map(|(key, first_try)| {
            let id = Uuid::parse_str(key.strip_suffix("#1")?).ok()?;
            let order = snapshot.orders.get(&id)?;
            let applied = order.versiones.iter().find(|v| v.version == 1)?.aplicada_en;
            let shipped = snapshot.shipments.get(&id)?.creado_en;
            Some(applied.max(shipped).timestamp_millis().saturating_sub(*first_try) as f64)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99))
}

fn record(name: &str, row: Value) {
    let dir = e2e::workspace_root().join("target/scenarios");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.json")), serde_json::to_string_pretty(&row).unwrap_or_default());
    println!("SCENARIO {name}: {row}");
}

fn new_ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::new_v4()).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Scenarios

/// 1. Load: every order answered 202 is in the store with its shipment, applied exactly once; no 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_every_accepted_order_is_processed_by_both_roles() {
    let (orders, clients) = scale((40, 8), (2000, 32));
    let mut pipeline = Pipeline::start(None, 1).await;
    let started = Instant::now();
    let ids = new_ids(orders);
    let stats = load(&pipeline.base(), &ids, clients, Duration::from_secs(60)).await;
    let post_time = started.elapsed();
    let keys = stats.accepted_keys();
    assert_eq!(keys.len(), orders, "statuses {:?}", stats.statuses());
    assert!(stats.statuses().keys().all(|s| *s < 500), "no 5xx: {:?}", stats.statuses());
    let expected = stats.take_expected();
    let snapshot = pipeline.settle(&expected, settle_within(120)).await;
    let total = started.elapsed();
    let shapes = verify(&snapshot, &expected);
    pipeline.assert_dlqs_empty().await;
    let scans = pipeline.watched().await;
    let (p50, p99) = end_to_end(&snapshot, &stats);
    let mut api_latency: Vec<f64> =
        stats.accepted.lock().map(|a| a.iter().map(|a| a.latency.as_secs_f64() * 1000.0).collect()).unwrap_or_default();
    api_latency.sort_by(f64::total_cmp);
    record(
        "1-load",
        json!({"orders": orders, "clients": clients, "offered_rate": paced().await.unwrap_or(0.0), "accepted": keys.len(), "post_seconds": post_time.as_secs_f64(),
               "pipeline_seconds": total.as_secs_f64(), "orders_per_second": orders as f64 / total.as_secs_f64(),
               "api_p50_ms": percentile(&api_latency, 0.5), "api_p99_ms": percentile(&api_latency, 0.99),
               "e2e_p50_ms": p50, "e2e_p99_ms": p99, "statuses": stats.statuses(), "histories": shapes, "watch_scans": scans}),
    );
}

/// 2. Crash: SIGKILL the process worker and SIGTERM the logistics worker mid-load, restart both. Nothing accepted is
/// lost and nothing is applied twice (store); the SIGTERMed worker leaves nothing to redeliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sigkill_and_sigterm_mid_load_lose_nothing() {
    let (orders, clients) = scale((60, 8), (600, 32));
    // A short visibility timeout so the killed worker's in-flight messages come back quickly.
    let mut pipeline = Pipeline::start(Some(5), 1).await;
    let ids = new_ids(orders);
    let stats = Arc::new(LoadStats::default());
    let clients_task = post_orders(pipeline.base(), &ids, clients, paced().await, &stats);
    // Wait until both workers are busy (a quarter of the orders applied by each), then crash one, stop the other.
    eventually(Duration::from_secs(60), Duration::from_millis(100), || async {
        let (process, logistics) = (pipeline.processed(PROCESS).await, pipeline.processed(LOGISTICS).await);
        (process >= orders / 4 && logistics >= orders / 4).then_some(())
    })
    .await;
    pipeline.workers[PROCESS][0].kill();
    let term = &mut pipeline.workers[LOGISTICS][0];
    term.signal_term();
    let exit = term.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.is_some_and(|s| s.success()), "SIGTERM exits 0: {exit:?}");
    pipeline.start_worker(PROCESS).await;
    pipeline.start_worker(LOGISTICS).await;
    clients_task.await.unwrap_or_else(|e| panic!("clients: {e}"));
    assert_eq!(stats.creates_accepted.load(Ordering::Relaxed), orders, "statuses {:?}", stats.statuses());
    let expected = stats.take_expected();
    let snapshot = pipeline.settle(&expected, settle_within(120)).await;
    let shapes = verify(&snapshot, &expected);
    assert_eq!(shapes.get("[1]"), Some(&orders), "every order applied exactly once: {shapes:?}");
    pipeline.assert_dlqs_empty().await;
    let scans = pipeline.watched().await;
    // Deliveries (not effects): the restarted process worker saw what the killed one applied but had not deleted
    // again, and recognised it in the store; the successor of the SIGTERMed worker saw nothing twice.
    let after_kill = pipeline.workers[PROCESS][1].log_json().iter().filter(|l| l["outcome"] == "duplicate").count();
    let after_term = pipeline.workers[LOGISTICS][1].log_json().iter().filter(|l| l["outcome"] == "duplicate").count();
    assert_eq!(after_term, 0, "a graceful stop deletes everything it finished");
    record(
        "2-crash",
        json!({"orders": orders, "redelivered_after_sigkill_recognised_as_duplicates": after_kill,
               "redelivered_after_sigterm": after_term, "applied_twice": 0, "histories": shapes, "watch_scans": scans}),
    );
}

/// 3. Outage: the emulator is frozen for 10 s during load. The API answers 503 + Retry-After within its bound, clients
/// retry with the same pedidoId, workers recover unattended, and the store holds every order exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_emulator_down_for_ten_seconds() {
    let (orders, clients) = scale((60, 8), (600, 32));
    let mut pipeline = Pipeline::start(None, 1).await;
    let base = pipeline.base();
    let ids = new_ids(orders);
    let stats = Arc::new(LoadStats::default());
    // Paced in both forms, so the outage falls mid-load.
    let rate = Some(if long() { long_form_rate().await } else { 6.0 });
    let clients_task = post_orders(base.clone(), &ids, clients, rate, &stats);
    eventually(Duration::from_secs(60), Duration::from_millis(100), || async {
        (pipeline.processed(PROCESS).await >= orders / 6).then_some(())
    })
    .await;
    pipeline.emulator.pause();
    let paused = Instant::now();
    // A probe during the outage (a new order): 503 with Retry-After, promptly.
    let probe_id = Uuid::new_v4();
    stats.expected(|e| e.tried(probe_id, 1));
    let probe = http().post(format!("{base}/api/pedidos")).json(&create(probe_id).body()).send().await;
    let probe_elapsed = paused.elapsed();
    let (probe_status, retry_after) = match probe {
        Ok(r) => (r.status().as_u16(), r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned)),
        Err(e) => panic!("probe failed instead of answering 503: {e}"),
    };
    let remaining = Duration::from_secs(10).saturating_sub(paused.elapsed());
    tokio::time::sleep(remaining).await; // the outage itself: a fixed duration is the point here, not synchronisation
    pipeline.emulator.resume();
    clients_task.await.unwrap_or_else(|e| panic!("clients: {e}"));
    assert_eq!(probe_status, 503);
    assert!(retry_after.is_some(), "Retry-After present");
    assert!(probe_elapsed < Duration::from_secs(10), "503 within 10 s, took {probe_elapsed:?}");
    let slowest_503 = stats.slowest_503.lock().map(|d| *d).unwrap_or_default();
    assert!(slowest_503 < Duration::from_secs(10), "every 503 within 10 s, slowest {slowest_503:?}");
    assert_eq!(stats.creates_accepted.load(Ordering::Relaxed), orders, "all accepted: {:?}", stats.statuses());
    assert!(stats.statuses().iter().all(|(s, _)| *s == 202 || *s == 503), "only 202/503: {:?}", stats.statuses());
    let expected = stats.take_expected();
    let snapshot = pipeline.settle(&expected, settle_within(120)).await;
    let shapes = verify(&snapshot, &expected);
    assert_eq!(shapes.get("[1]"), Some(&orders), "every order applied exactly once: {shapes:?}");
    pipeline.assert_dlqs_empty().await;
    let scans = pipeline.watched().await;
    record(
        "3-outage",
        json!({"orders": orders, "outage_seconds": 10, "client_retries": stats.retries.load(Ordering::Relaxed),
               "slowest_503_ms": slowest_503.as_millis(), "probe_published_anyway": snapshot.orders.contains_key(&probe_id),
               "duplicates_recognised": pipeline.count(PROCESS, "duplicate") + pipeline.count(LOGISTICS, "duplicate"),
               "statuses": stats.statuses(), "histories": shapes, "watch_scans": scans}),
    );
}

/// 4. Duplicates and reordering: 10% of orders re-POSTed with the same pedidoId and content (202 again); a fifth get
/// version 3, then version 2 through the API (409: the store holds 3) and straight to the queue (stale). Each version
/// is stored once, and a late version never lands after a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_out_of_order_versions() {
    let (orders, clients) = scale((50, 8), (1000, 32));
    let mut pipeline = Pipeline::start(None, 1).await;
    let base = pipeline.base();
    let ids = new_ids(orders);
    let stats = load(&base, &ids, clients, Duration::from_secs(60)).await;
    assert_eq!(stats.creates_accepted.load(Ordering::Relaxed), orders, "{:?}", stats.statuses());
    let resent: Vec<Uuid> = ids.iter().step_by(10).copied().collect();
    let again = load(&base, &resent, clients, Duration::from_secs(60)).await;
    assert_eq!(again.statuses(), BTreeMap::from([(202, resent.len())]), "a retry of the same order is accepted");
    let mut expected = stats.take_expected();
    pipeline.settle(&expected, settle_within(120)).await;
    // Version 3 for a fifth of the orders, applied before version 2 is even tried.
    let reordered: Vec<Uuid> = ids.iter().skip(1).step_by(5).copied().collect();
    let client = http();
    for id in &reordered {
        let answer = submit(&client, &base, &update(*id, 3), &stats, Duration::from_secs(60)).await;
        assert_eq!(answer.status, 202, "PUT v3 of {id}");
        expected.accepted(*id, 3);
    }
    pipeline.settle(&expected, settle_within(120)).await;
    let direct = pipeline.direct();
    for id in &reordered {
        let answer = submit(&client, &base, &update(*id, 2), &stats, Duration::from_secs(60)).await;
        assert_eq!(answer.status, 409, "PUT v2 of {id} after v3 is stored");
        // Past the API's check, straight to the queue: the worker's conditional write drops it as stale.
        expected.tried(*id, 2);
        direct.send(PROCESS, &event_of(*id, 2)).await;
    }
    eventually(settle_within(120), Duration::from_millis(500), || async {
        (pipeline.count(PROCESS, "stale") >= reordered.len()).then_some(())
    })
    .await;
    let snapshot = pipeline.settle(&expected, settle_within(120)).await;
    let shapes = verify(&snapshot, &expected);
    for id in &reordered {
        assert_eq!(snapshot.history(*id), [1, 3], "order {id}: the late version 2 never applied");
    }
    assert_eq!(shapes.get("[1]"), Some(&(orders - reordered.len())), "{shapes:?}");
    pipeline.assert_dlqs_empty().await;
    let scans = pipeline.watched().await;
    let stale = pipeline.count(PROCESS, "stale");
    let duplicates = pipeline.count(PROCESS, "duplicate") + pipeline.count(LOGISTICS, "duplicate");
    assert!(duplicates >= 2 * resent.len(), "every re-sent order recognised by both roles: {duplicates}");
    assert_eq!(pipeline.count(LOGISTICS, "ignored"), 0, "updates never reach logistics (filter policy)");
    record(
        "4-duplicates-reordering",
        json!({"orders": orders, "resent": resent.len(), "reordered": reordered.len(), "duplicates": duplicates,
               "stale": stale, "histories": shapes, "watch_scans": scans}),
    );
}

/// 5. Poison under load: malformed messages and an unknown event type injected straight into both queues end up in
/// the DLQs with reasons, while every good order is still stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_under_load_goes_to_the_dlqs() {
    let (orders, clients) = scale((40, 8), (1000, 32));
    let unknown = format!(r#"{{"type":"PedidoCancelado","version":2,"pedidoId":"{}"}}"#, Uuid::new_v4());
    let bodies = [
        "{not json",
        r#"{"hello":"world"}"#,
        r#"{"type":"PedidoCreado","version":1}"#,
        "[]",
        r#"{"Type":"Notification","TopicArn":"x","MessageId":"y"}"#,
        unknown.as_str(),
    ];
    let poison_per_queue = if long() { 60 } else { bodies.len() };
    let mut pipeline = Pipeline::start(None, 1).await;
    let ids = new_ids(orders);
    let stats = Arc::new(LoadStats::default());
    let clients_task = post_orders(pipeline.base(), &ids, clients, paced().await, &stats);
    for queue in &pipeline.topo.queues {
        for i in 0..poison_per_queue {
            pipeline
                .sqs
                .send_message()
                .queue_url(&queue.url)
                .message_body(bodies[i % bodies.len()])
                .send()
                .await
                .unwrap_or_else(|e| panic!("inject: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
        }
    }
    clients_task.await.unwrap_or_else(|e| panic!("clients: {e}"));
    assert_eq!(stats.creates_accepted.load(Ordering::Relaxed), orders);
    let expected = stats.take_expected();
    let snapshot = pipeline.settle(&expected, settle_within(120)).await;
    let shapes = verify(&snapshot, &expected);
    assert_eq!(shapes.get("[1]"), Some(&orders), "{shapes:?}");
    for (role, queue) in pipeline.topo.queues.iter().enumerate() {
        let dead = drain(&pipeline.sqs, &queue.dlq_url, poison_per_queue, Duration::from_secs(30)).await;
        assert_eq!(dead.len(), poison_per_queue, "role {role}");
        let reasons: BTreeSet<String> = dead
            .iter()
            .map(|m| {
                let reason = m.message_attributes().and_then(|a| a.get("rejectReason")).and_then(|a| a.string_value());
                reason.unwrap_or_else(|| panic!("no reason on {:?}", m.body())).to_owned()
            })
            .collect();
        assert!(reasons.contains("unknown_event_type") && reasons.contains("not_json"), "{reasons:?}");
        assert_eq!(pipeline.count(role, "rejected"), poison_per_queue);
    }
    let scans = pipeline.watched().await;
    record(
        "5-poison",
        json!({"orders": orders, "poison_per_queue": poison_per_queue, "all_good_stored_once": true, "watch_scans": scans}),
    );
}

/// 6. The whole story at once (the issue's scenario): three worker instances per queue (six processes), orders posted
/// through the API, 10% of the deliveries duplicated (copies of the SNS envelope straight to both queues), a fifth of
/// the orders updated out of order (version 3 then 2, half through the API, half straight to the queue), one worker
/// SIGKILLed mid-run and restarted, and a 10 s emulator outage. The store ends with every accepted order at its
/// highest version, each version once and in increasing order, one shipment each; nothing is lost, nothing is
/// dead-lettered, and no version ever went backwards while it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_per_queue_with_duplicates_reordering_a_crash_and_an_outage() {
    let (orders, clients) = scale((60, 6), (1000, 24));
    // Killed workers' messages come back within 10 s; a lease is still long enough for an emulator under load.
    let mut pipeline = Pipeline::start(Some(10), 3).await;
    let started = Instant::now();
    let plans: Vec<Plan> = new_ids(orders)
        .into_iter()
        .enumerate()
        .map(|(i, pedido_id)| {
            let extra = match i % 10 {
                0 => Extra::DuplicateDelivery,
                3 => Extra::ReorderedThroughApi,
                7 => Extra::ReorderedStraight,
                _ => Extra::Nothing,
            };
            Plan { pedido_id, extra }
        })
        .collect();
    let count_of = |extra: Extra| plans.iter().filter(|p| p.extra == extra).count();
    let (duplicated, through_api, straight) =
        (count_of(Extra::DuplicateDelivery), count_of(Extra::ReorderedThroughApi), count_of(Extra::ReorderedStraight));
    let stats = Arc::new(LoadStats::default());
    // Paced, so the crash and the outage fall mid-run. Long form: about four DynamoDB calls per order, and the test
    // emulator serialises DynamoDB; 10 orders/s keeps it below saturation (15/s doubles the API's store-read 503s).
    let rate = Some(if long() { long_form_rate().await.min(10.0) } else { 4.0 });
    let clients_task = tokio::spawn(run_clients(
        pipeline.base(),
        plans,
        clients,
        rate,
        Some(pipeline.direct()),
        Arc::clone(&stats),
        Duration::from_secs(180),
    ));
    // A quarter of the orders applied: SIGKILL one process worker, start a replacement.
    eventually(Duration::from_secs(120), Duration::from_millis(250), || async {
        (pipeline.processed(PROCESS).await >= orders / 4).then_some(())
    })
    .await;
    // The busiest process worker, so the crash interrupts real work.
    let processed_by = |worker: &Service| worker.log_json().iter().filter(|l| l["outcome"] == "processed").count();
    let victim = (0..pipeline.workers[PROCESS].len())
        .max_by_key(|i| processed_by(&pipeline.workers[PROCESS][*i]))
        .unwrap_or_default();
    pipeline.workers[PROCESS][victim].kill();
    let killed_at = started.elapsed();
    let victim_processed = processed_by(&pipeline.workers[PROCESS][victim]);
    assert!(victim_processed > 0, "the killed worker was working");
    pipeline.start_worker(PROCESS).await;
    // Half the orders accepted: the emulator goes away for 10 s (API, queues and store at once).
    eventually(Duration::from_secs(120), Duration::from_millis(100), || async {
        (stats.creates_accepted.load(Ordering::Relaxed) >= orders / 2).then_some(())
    })
    .await;
    let outage_at = started.elapsed();
    pipeline.emulator.pause();
    tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself: its length is the point
    pipeline.emulator.resume();
    clients_task.await.unwrap_or_else(|e| panic!("clients: {e}"));
    let load_seconds = started.elapsed().as_secs_f64();
    assert!(outage_at.as_secs_f64() < load_seconds, "the crash and the outage happened while clients were sending");
    assert_eq!(stats.creates_accepted.load(Ordering::Relaxed), orders, "every order accepted: {:?}", stats.statuses());
    let statuses = stats.statuses();
    assert!(statuses.keys().all(|s| [0, 202, 409, 503].contains(s)), "statuses {statuses:?}");
    let expected = stats.take_expected();
    let snapshot = pipeline.settle(&expected, settle_within(180)).await;
    let total = started.elapsed();
    let shapes = verify(&snapshot, &expected);
    pipeline.assert_dlqs_empty().await;
    let scans = pipeline.watched().await;
    assert!(scans >= 3, "the watcher looked during the run ({scans} scans)");
    let reordered_ids: Vec<&Uuid> = expected.tried.iter().filter(|(_, v)| v.contains(&3)).map(|(id, _)| id).collect();
    assert_eq!(reordered_ids.len(), through_api + straight);
    for id in &reordered_ids {
        assert_eq!(snapshot.orders[*id].version, 3, "order {id} at its highest version");
    }
    let plain = orders - through_api - straight;
    assert_eq!(shapes.get("[1]"), Some(&plain), "orders without updates applied exactly once: {shapes:?}");
    assert!(pipeline.workers.iter().all(|role| role.len() >= 3), "three instances per queue");
    let (p50, p99) = end_to_end(&snapshot, &stats);
    record(
        "6-issue-scenario",
        json!({"orders": orders, "clients": clients, "instances_per_queue": 3, "worker_processes": pipeline.workers[0].len() + pipeline.workers[1].len(),
               "duplicated_deliveries": duplicated, "reordered_through_api": through_api, "reordered_straight": straight,
               "sigkill_at_seconds": killed_at.as_secs_f64(), "killed_worker_had_processed": victim_processed, "outage_at_seconds": outage_at.as_secs_f64(), "outage_seconds": 10,
               "load_seconds": load_seconds, "pipeline_seconds": total.as_secs_f64(), "statuses": statuses,
               "client_retries": stats.retries.load(Ordering::Relaxed), "histories": shapes,
               "duplicates_recognised": pipeline.count(PROCESS, "duplicate") + pipeline.count(LOGISTICS, "duplicate"),
               "stale_recognised": pipeline.count(PROCESS, "stale"), "lost": 0, "dead_lettered": 0,
               "e2e_p50_ms": p50, "e2e_p99_ms": p99, "watch_scans": scans}),
    );
}

/// Scenario 7's orchestrator settings: ECS's worker health check and stop timeout (deploy/cloudformation/ecs.yaml:
/// interval 15 s, timeout 5 s, retries 3, start period 15 s, stop timeout 60 s) divided by 15, so the same sequence
/// runs in seconds: interval 1 s, retries 3, start period 1 s, stop timeout 4 s. The check timeout stays at 1 s
/// instead of 333 ms: starting a process on a loaded 2-core machine can take longer than that, and a check killed for
/// it would be a harness failure, not the worker's.
const ECS_SCALE: u32 = 15;

/// The worker's own settings scaled the same way: ecs.yaml's `SHUTDOWN_GRACE_SECONDS` 25 s / 15 = 1.7, rounded up to
/// the variable's whole seconds (still well inside the 4 s stop timeout, like 25 s inside 60 s); the long poll is 1 s
/// (worker_builder; 20 s / 15). `HEALTH_FAILURE_SECONDS` at its minimum, 1 s (60 s / 15 would be 4 s): today's
/// `/health` turns 503 as early as it can, so the outage that shows the problem is as short as it can be.
const WORKER_SHUTDOWN_GRACE_SECONDS: &str = "2";
const WORKER_HEALTH_FAILURE_SECONDS: &str = "1";

/// Outcome lines of every task a service ran, by outcome.
fn outcome_counts(lines: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for outcome in lines.iter().filter_map(|l| l["outcome"].as_str()) {
        *counts.entry(outcome.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// How many outcome lines were about a message on its n-th receive (`ApproximateReceiveCount` when received).
fn receive_counts(lines: &[Value]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for line in lines.iter().filter(|l| l.get("outcome").is_some()) {
        if let Some(n) = line["span"]["receive_count"].as_u64() {
            *counts.entry(n).or_insert(0) += 1;
        }
    }
    counts
}

/// 7. Dependency outages and a deploy under an orchestrator (the ECS case): three workers per queue run as ECS
/// services by [`Orchestrator`], which runs the real container health check (`pedidos-worker healthcheck`) every
/// interval, replaces a task after three failed checks (SIGTERM, SIGKILL after the stop timeout) and performs a
/// rolling deploy (new task healthy first, then SIGTERM to the old one). The workers reach DynamoDB through one
/// [`FaultProxy`] and SNS/SQS through another; the API and the test's own clients use the emulator directly, so orders
/// keep being accepted throughout, paced over the whole run.
///
/// Timeline: some load; DynamoDB refused long enough for today's health-check replacements to dead-letter orders; a
/// rolling deploy starting before DynamoDB is back (each stop releases the messages a worker holds, one more receive
/// each: the case that burns receives); the backlog drains; SQS black-holed (held connections) and then refused;
/// recovery. The workers must ride all of it out: every accepted order applied by both roles exactly once, nothing
/// in either DLQ, no task replaced because its health check failed (only the deploy's replacements), every SIGTERM
/// answered by exit 0 within the stop timeout.
///
/// Why these lengths (short form; the long form stretches them, see below): with the scaled health check, one
/// replacement cycle of today's worker takes about HEALTH_FAILURE_SECONDS (1 s) + 3 failed checks (~3 s, the first
/// within an interval of turning 503) + the shutdown grace before held messages are released (2 s) + a new task's
/// start (~0.5 s), about 6.5 s, and each cycle is one more receive of every message the worker held. A message
/// received at the start of the outage is received a sixth time, and so dead-lettered (maxReceiveCount 5), after
/// five cycles, about 33 s: the outage lasts 40 s. DynamoDB is refused rather than black-holed: clients mostly see a
/// DynamoDB outage as fast errors (5xx, throttling, resets), and today's worker then counts the store as failing at
/// once; held connections would first wait out the SDK's 20 s attempt timeout, twice. SQS gets both shapes: held
/// connections first (6 s: shorter than a 21 s SQS attempt, so calls in flight simply never answer: lost long-poll
/// answers, deletes and lease extensions that hang), then refused (8 s: fast receive errors, on which today's
/// `/health` turns 503 after 1 s and, with three failed checks, tasks are replaced; a replacement cannot even read
/// its queue's settings, so it never opens its port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_ride_out_dependency_outages_and_a_deploy_under_an_orchestrator() {
    let (orders, clients) = scale((48, 4), (600, 16));
    let seconds = |short: u64, long_form: u64| Duration::from_secs(if long() { long_form } else { short });
    let dynamodb_outage = seconds(40, 90);
    let deploy_before_recovery = seconds(6, 20);
    let (sqs_hang, sqs_refused) = (seconds(6, 30), seconds(8, 30));
    // Offered load paced over about the whole timeline: warm-up, DynamoDB outage, drain, SQS outage.
    let planned_load = seconds(10, 20) + dynamodb_outage + seconds(20, 40) + sqs_hang + sqs_refused;
    let rate = orders as f64 / planned_load.as_secs_f64();
    // Messages a SIGKILL or a lost long-poll answer strands come back within 10 s; a lease is still long enough for an
    // emulator under load.
    let visibility_timeout = 10;
    let mut pipeline = Pipeline::start(Some(visibility_timeout), 0).await;
    let endpoints = pipeline.emulator.endpoints();
    let dynamodb_proxy = FaultProxy::start(&endpoints.dynamodb);
    let sqs_proxy = FaultProxy::start(&endpoints.messaging);
    let worker_endpoints = Endpoints { messaging: sqs_proxy.endpoint(), dynamodb: dynamodb_proxy.endpoint() };
    let timing = Timing { timeout: Duration::from_secs(1), ..Timing::ECS_WORKER.scaled_down(ECS_SCALE) };
    let task = |queue: usize| {
        let (endpoints, topo) = (worker_endpoints.clone(), pipeline.topo.clone());
        move || {
            worker_builder(&endpoints, &topo, queue)
                .env("SHUTDOWN_GRACE_SECONDS", WORKER_SHUTDOWN_GRACE_SECONDS)
                .env("HEALTH_FAILURE_SECONDS", WORKER_HEALTH_FAILURE_SECONDS)
        }
    };
    let services = vec![EcsService::new("process", 3, task(PROCESS)), EcsService::new("logistics", 3, task(LOGISTICS))];
    let ecs = Orchestrator::start(timing, services).await;
    let started = Instant::now();
    let at = || started.elapsed().as_secs_f64();
    let ids = new_ids(orders);
    let stats = Arc::new(LoadStats::default());
    let clients_task = post_orders(pipeline.base(), &ids, clients, Some(rate), &stats);

    // Some load first: a few orders applied by both roles through the proxies.
    let warm = orders / 12;
    eventually(Duration::from_secs(90), Duration::from_millis(250), || async {
        let applied = |service| outcome_counts(&ecs.log_json(service)).get("processed").copied().unwrap_or(0);
        (applied("process") >= warm && applied("logistics") >= warm).then_some(())
    })
    .await;

    // Messages in each DLQ (process, logistics), sampled at each step of the timeline for the record.
    let dead_lettered = || async {
        let mut dead = Vec::new();
        for q in &pipeline.topo.queues {
            let (visible, in_flight) = queue_depth(&pipeline.sqs, &q.dlq_url).await;
            dead.push(visible + in_flight);
        }
        dead
    };
    let dynamodb_down_at = at();
    dynamodb_proxy.set(Mode::Refuse);
    tokio::time::sleep(dynamodb_outage - deploy_before_recovery).await; // the outage itself: its length is the point
    let deploy_started_at = at();
    let (deploy, dynamodb_up) = tokio::join!(ecs.rolling_deploy(), async {
        tokio::time::sleep(deploy_before_recovery).await; // the rest of the outage, the deploy under way
        dynamodb_proxy.set(Mode::Up);
        (at(), dead_lettered().await)
    });
    let ((dynamodb_up_at, dlq_at_dynamodb_up), deploy_done_at) = (dynamodb_up, at());
    let dlq_at_deploy_done = dead_lettered().await;

    // The backlog drains before the next outage. Bounded, without failing here: what today's code leaves behind is
    // judged at the end, from the store and the queues.
    let drain_within = seconds(30, 120);
    let drained = tokio::time::timeout(
        drain_within,
        eventually(drain_within * 2, Duration::from_millis(500), || async {
            for q in &pipeline.topo.queues {
                if queue_depth(&pipeline.sqs, &q.url).await.0 != 0 {
                    return None;
                }
            }
            Some(())
        }),
    )
    .await
    .is_ok();

    let sqs_down_at = at();
    sqs_proxy.set(Mode::Hang);
    tokio::time::sleep(sqs_hang).await; // the outage itself, black-holed: its length is the point
    sqs_proxy.set(Mode::Refuse);
    tokio::time::sleep(sqs_refused).await; // the outage itself, refused: its length is the point
    sqs_proxy.set(Mode::Up);
    let sqs_up_at = at();
    let dlq_at_sqs_up = dead_lettered().await;

    clients_task.await.unwrap_or_else(|e| panic!("clients: {e}"));
    let load_seconds = at();
    assert_eq!(stats.creates_accepted.load(Ordering::Relaxed), orders, "every order accepted: {:?}", stats.statuses());
    let expected = stats.take_expected();

    // Settled: both queues empty, and the store complete, unless something was dead-lettered (then it never will be:
    // the record below and the assertions say what happened).
    let snapshot = eventually(settle_within(180), Duration::from_millis(500), || async {
        for q in &pipeline.topo.queues {
            if queue_depth(&pipeline.sqs, &q.url).await != (0, 0) {
                return None;
            }
        }
        let snapshot = pipeline.snapshot().await.ok()?;
        let dead: u64 = dead_lettered().await.iter().sum();
        (expected.complete_in(&snapshot) || dead > 0).then_some(snapshot)
    })
    .await;
    let settled_at = at();
    ecs.shutdown().await;

    let dlq = dead_lettered().await;
    let missing = expected
        .highest
        .keys()
        .filter(|id| !snapshot.orders.contains_key(*id) || !snapshot.shipments.contains_key(*id))
        .count();
    let (process_lines, logistics_lines) = (ecs.log_json("process"), ecs.log_json("logistics"));
    record(
        "7-orchestrator",
        json!({"orders": orders, "clients": clients, "offered_rate": rate, "visibility_timeout_s": visibility_timeout,
               "instances_per_queue": 3, "ecs": ecs.summary(), "deploy": deploy.to_json(),
               "worker_env": {"SHUTDOWN_GRACE_SECONDS": WORKER_SHUTDOWN_GRACE_SECONDS,
                              "HEALTH_FAILURE_SECONDS": WORKER_HEALTH_FAILURE_SECONDS, "WAIT_TIME_SECONDS": 1},
               "outages_s": {"dynamodb_refused": dynamodb_outage.as_secs(),
                             "deploy_before_recovery": deploy_before_recovery.as_secs(),
                             "sqs_held": sqs_hang.as_secs(), "sqs_refused": sqs_refused.as_secs()},
               "timeline_s": {"dynamodb_refused": dynamodb_down_at, "deploy_started": deploy_started_at,
                              "dynamodb_up": dynamodb_up_at, "deploy_done": deploy_done_at,
                              "backlog_drained_before_sqs_outage": drained, "sqs_held": sqs_down_at,
                              "sqs_up": sqs_up_at, "load_done": load_seconds, "settled": settled_at},
               "dead_lettered": {"process": dlq[PROCESS], "logistics": dlq[LOGISTICS]},
               "dead_lettered_by_step": {"dynamodb_up": dlq_at_dynamodb_up, "deploy_done": dlq_at_deploy_done,
                                         "sqs_up": dlq_at_sqs_up, "settled": dlq},
               "orders_incomplete_in_store": missing,
               "outcomes": {"process": outcome_counts(&process_lines),
                            "logistics": outcome_counts(&logistics_lines)},
               "receive_counts": {"process": receive_counts(&process_lines),
                                  "logistics": receive_counts(&logistics_lines)},
               "proxies": {"dynamodb": dynamodb_proxy.stats().to_json(), "sqs": sqs_proxy.stats().to_json()},
               "statuses": stats.statuses(), "client_retries": stats.retries.load(Ordering::Relaxed)}),
    );

    pipeline.assert_dlqs_empty().await;
    let replacements = ecs.replacements();
    let by_health: Vec<_> = replacements.iter().filter(|r| r.reason == Reason::HealthCheckFailed).collect();
    assert!(
        by_health.is_empty(),
        "{} tasks replaced because their health check failed: {by_health:?}",
        by_health.len()
    );
    assert!(
        replacements.iter().all(|r| r.reason == Reason::Deploy),
        "only the deploy replaces tasks: {replacements:?}"
    );
    assert!(deploy.failures.is_empty(), "deploy steps failed: {:?}", deploy.failures);
    assert_eq!(deploy.replaced, 6, "the deploy replaced every task");
    for stop in ecs.stops() {
        assert!(
            stop.clean(timing.stop_timeout),
            "SIGTERM answered by exit 0 within {:?}: {stop:?}",
            timing.stop_timeout
        );
    }
    let shapes = verify(&snapshot, &expected);
    assert_eq!(shapes.get("[1]"), Some(&orders), "every order applied exactly once: {shapes:?}");
    let scans = pipeline.watched().await;
    assert!(scans >= 3, "the watcher looked during the run ({scans} scans)");
}

/// RSS (KiB) and open file descriptors of process `pid`, from `/proc`.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0);
    (rss, fds)
}

/// 8. Soak: a steady rate through the API into three workers per queue for a long while (short form 60 s, long form
/// 30 minutes). Every accepted order is applied by both roles exactly once, nothing is dead-lettered, and every
/// process of ours keeps a flat footprint: resident memory and open file descriptors, read from `/proc` after a
/// warm-up and at the end, may not grow beyond what noise explains (RSS by at most 25 % plus 4 MiB, descriptors by at
/// most 16: connections come and go, a leak grows with time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_at_a_steady_rate_keeps_every_footprint_flat() {
    let duration = Duration::from_secs(if long() { 30 * 60 } else { 60 });
    let rate = if long() { long_form_rate().await.min(8.0) } else { 4.0 };
    let orders = (duration.as_secs_f64() * rate) as usize;
    let mut pipeline = Pipeline::start(None, 3).await;
    let ids = new_ids(orders);
    let stats = Arc::new(LoadStats::default());
    let started = Instant::now();
    let clients_task = post_orders(pipeline.base(), &ids, 4, Some(rate), &stats);
    let ours = || {
        let mut pids = vec![("api".to_owned(), pipeline.api.pid())];
        for (role, workers) in ["process", "logistics"].iter().zip(&pipeline.workers) {
            pids.extend(workers.iter().enumerate().map(|(i, w)| (format!("{role}-{i}"), w.pid())));
        }
        pids
    };
    // After a warm-up: connection pools, buffers and the metrics registry have reached their working size.
    tokio::time::sleep(duration / 10).await; // measuring after a fixed warm-up, not synchronisation
    let at_start: BTreeMap<String, (u64, usize)> = ours().into_iter().map(|(n, pid)| (n, footprint(pid))).collect();
    clients_task.await.unwrap_or_else(|e| panic!("clients: {e}"));
    let at_end: BTreeMap<String, (u64, usize)> = ours().into_iter().map(|(n, pid)| (n, footprint(pid))).collect();
    let load_seconds = started.elapsed().as_secs_f64();
    assert_eq!(stats.creates_accepted.load(Ordering::Relaxed), orders, "statuses {:?}", stats.statuses());
    let expected = stats.take_expected();
    let snapshot = pipeline.settle(&expected, settle_within(120)).await;
    let shapes = verify(&snapshot, &expected);
    assert_eq!(shapes.get("[1]"), Some(&orders), "{shapes:?}");
    pipeline.assert_dlqs_empty().await;
    let scans = pipeline.watched().await;
    let footprints: BTreeMap<&String, Value> = at_start
        .iter()
        .map(|(name, (rss, fds))| {
            let (rss_end, fds_end) = at_end.get(name).copied().unwrap_or_default();
            (name, json!({"rss_kib": [rss, rss_end], "fds": [fds, fds_end]}))
        })
        .collect();
    record(
        "8-soak",
        json!({"orders": orders, "offered_rate": rate, "instances_per_queue": 3, "load_seconds": load_seconds,
               "footprints_start_end": footprints, "statuses": stats.statuses(), "histories": shapes,
               "dead_lettered": 0, "watch_scans": scans}),
    );
    for (name, (rss, fds)) in &at_start {
        let (rss_end, fds_end) = at_end.get(name).copied().unwrap_or_default();
        assert!(*rss > 0 && rss_end > 0, "{name}: RSS readable");
        assert!(rss_end <= rss + rss / 4 + 4096, "{name}: RSS grew from {rss} KiB to {rss_end} KiB");
        assert!(fds_end <= fds + 16, "{name}: open descriptors grew from {fds} to {fds_end}");
    }
}
