//! `pedidos-worker` against a real emulator (SQS, SNS and DynamoDB), through the real SNS fan-out where it matters.
//!
//! Binaries are used where process behaviour is the point (signals, exit codes, health); the consumer runs in-process
//! where a test needs a handler the binary does not have (failing, slow). Effects are asserted from the order store
//! itself (read back with `DynamoOrders`): an order's version, its history `versiones` (each applied version exactly
//! once) and its shipment. Outcome counters and log lines are asserted too, as what an operator sees.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use domain::OrderEvent;
use e2e::{
    api_builder, drain, eventually, history, http, order_event, pipeline, queue_depth, sdk, send, sns_envelope,
    worker_builder, Emulator, Endpoints, FaultProxy, Mode, Service, Topology,
};
use pedidos_worker::consumer::{Consumer, Settings};
use pedidos_worker::handler::{tracking_code, BoxFuture, Effect, Handler, HandlerError, MessageContext};
use pedidos_worker::health::Health;
use pedidos_worker::queue::sqs::{discover, SqsQueue};
use rust_decimal::Decimal;
use store::dynamo::DynamoOrders;
use store::{OrderReads, OrderView};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const START: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(30);
const PROCESS: usize = 0;
const LOGISTICS: usize = 1;

/// A worker binary on `topo.queues[queue]`, with the topology's tables, healthy.
async fn start_worker(emulator: &Emulator, topo: &Topology, queue: usize, extra: &[(&str, &str)]) -> Service {
    let mut builder = worker_builder(&emulator.endpoints(), topo, queue);
    for (k, v) in extra {
        builder = builder.env(*k, *v);
    }
    let mut worker = builder.spawn();
    worker.wait_healthy(START).await;
    worker
}

fn outcome(name: &str) -> String {
    format!("pedidos_worker_messages_total{{outcome=\"{name}\"}}")
}

/// The worker's counter for outcome `name` (0 when it cannot be read).
async fn count(service: &Service, name: &str) -> f64 {
    service.metric(&outcome(name)).await.unwrap_or(0.0)
}

async fn wait_outcome(service: &Service, name: &str, at_least: f64) -> f64 {
    eventually(SETTLE, Duration::from_millis(100), || async {
        let value = count(service, name).await;
        (value >= at_least).then_some(value)
    })
    .await
}

fn event_json(pedido_id: Uuid, version: u64) -> String {
    order_event(pedido_id, version).to_json().unwrap_or_else(|e| panic!("serialising a test event: {e}"))
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

/// Outcome lines (`"outcome"` field) the worker logged for `pedido_id`, in order.
fn outcomes_for(worker: &Service, pedido_id: &str) -> Vec<String> {
    worker
        .log_json()
        .into_iter()
        .filter(|l| l["pedido_id"] == pedido_id && l.get("outcome").is_some())
        .map(|l| l["outcome"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Outcome lines of `worker` with outcome `name`.
fn lines_with(worker: &Service, name: &str) -> Vec<serde_json::Value> {
    worker.log_json().into_iter().filter(|l| l["outcome"] == name).collect()
}

/// The order and its shipment as stored; panics when the read fails.
async fn stored(orders: &DynamoOrders, id: Uuid) -> Option<OrderView> {
    orders.get(id).await.unwrap_or_else(|e| panic!("reading order {id} from the store: {e}"))
}

/// Waits until the store holds order `id` at `version` or later (and, with `shipment`, its shipment too).
async fn wait_stored(orders: &DynamoOrders, id: Uuid, version: u64, shipment: bool) -> OrderView {
    eventually(SETTLE, Duration::from_millis(100), || async {
        orders
            .get(id)
            .await
            .ok()
            .flatten()
            .filter(|view| view.order.version >= version && (!shipment || view.envio.is_some()))
    })
    .await
}

/// Orders posted through the API are applied once by each role: state and shipment in the store, each version once,
/// correlated with the API's request id. An update reaches only the process queue (subscription filter policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_fan_out_to_both_workers_once() {
    let (emulator, topo, sqs, orders) = pipeline("w").await;
    let mut api = api_builder(&emulator.endpoints(), &topo).spawn();
    api.wait_healthy(START).await;
    let process = start_worker(&emulator, &topo, PROCESS, &[]).await;
    let logistics = start_worker(&emulator, &topo, LOGISTICS, &[]).await;
    let client = http();
    let mut posted = Vec::new();
    let cliente = Uuid::new_v4();
    for _ in 0..6 {
        let response = client
            .post(format!("{}/api/pedidos", api.base_url()))
            .json(&serde_json::json!({"clienteId": cliente, "total": "10.00"}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST: {e}"));
        assert_eq!(response.status(), 202);
        let request_id =
            response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let id = body["pedidoId"].as_str().and_then(|id| Uuid::parse_str(id).ok());
        posted.push((id.unwrap_or_else(|| panic!("202 without a pedidoId: {body}")), request_id));
    }
    for (id, request_id) in &posted {
        let view = wait_stored(&orders, *id, 1, true).await;
        assert_eq!((view.order.version, history(&view.order)), (1, vec![1]), "order {id}");
        assert_eq!(view.order.estado, "CREADO");
        assert_eq!(view.order.total, Decimal::new(1000, 2));
        assert_eq!(view.order.request_id.as_deref(), Some(request_id.as_str()), "the API's request id travels along");
        let envio = view.envio.unwrap_or_else(|| panic!("order {id} has no shipment"));
        assert_eq!(envio.tracking_code, tracking_code(*id), "deterministic tracking code");
        assert_eq!(envio.estado, "PREPARANDO");
        assert_eq!(envio.request_id.as_deref(), Some(request_id.as_str()));
        // Where it came from, for the console's order view: the SNS message id both roles saw, and the API's
        // acceptance time, before each role applied it.
        let applied = &view.order.versiones[0];
        let published = applied.origin.message_id.clone().unwrap_or_else(|| panic!("order {id}: no SNS message id"));
        assert_eq!(envio.origin.message_id.as_deref(), Some(published.as_str()), "order {id}");
        let accepted = applied.origin.accepted_at.unwrap_or_else(|| panic!("order {id}: no acceptance time"));
        assert!(accepted <= applied.aplicada_en && accepted <= envio.creado_en, "order {id}");
    }
    // An update: applied by the process role; the logistics queue never receives it (filter policy).
    let (updated, _) = posted[0].clone();
    let response = client
        .put(format!("{}/api/pedidos/{updated}", api.base_url()))
        .json(&serde_json::json!({"clienteId": cliente, "total": "12.50", "version": 2}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT: {e}"));
    assert_eq!(response.status(), 202);
    let view = wait_stored(&orders, updated, 2, true).await;
    assert_eq!(history(&view.order), [1, 2]);
    assert_eq!(view.order.estado, "ACTUALIZADO");
    assert_eq!(view.order.total, Decimal::new(1250, 2));
    for queue in &topo.queues {
        wait_empty(&sqs, &queue.url, SETTLE).await;
    }
    assert_eq!(wait_outcome(&process, "processed", 7.0).await, 7.0);
    assert_eq!(wait_outcome(&logistics, "processed", 6.0).await, 6.0);
    for (name, process_count, logistics_count) in
        [("duplicate", 0.0, 0.0), ("ignored", 0.0, 0.0), ("failed", 0.0, 0.0), ("rejected", 0.0, 0.0)]
    {
        assert_eq!(count(&process, name).await, process_count, "process {name}");
        assert_eq!(count(&logistics, name).await, logistics_count, "logistics {name}: the update was filtered out");
    }
    for (id, request_id) in &posted {
        let expected: &[&str] = if *id == updated { &["processed", "processed"] } else { &["processed"] };
        assert_eq!(outcomes_for(&process, &id.to_string()), expected, "process role, order {id}");
        assert_eq!(outcomes_for(&logistics, &id.to_string()), ["processed"], "logistics role, order {id}");
        // One JSON line per message, with the fields an operator filters on.
        let line = lines_with(&logistics, "processed").into_iter().find(|l| l["pedido_id"] == id.to_string());
        let line = line.unwrap_or_else(|| panic!("no outcome line for {id}"));
        assert_eq!(line["action"], "delete");
        assert_eq!(line["type"], "PedidoCreado");
        assert_eq!(line["version"], 1);
        assert_eq!(line["request_id"], request_id.as_str());
    }
    let receives = process.metric("pedidos_worker_sqs_calls_total{operation=\"receive\"}").await.unwrap_or(0.0);
    assert!(receives >= 1.0, "SQS calls are counted");
}

/// v1, v1 again, v3, then the late v2: the store holds [1, 3]; the worker says processed, duplicate, processed, stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_stale_versions_are_recognised() {
    let (emulator, topo, sqs, orders) = pipeline("w").await;
    let url = topo.queues[PROCESS].url.clone();
    let worker = start_worker(&emulator, &topo, PROCESS, &[]).await;
    // Every outcome's counter exists from start-up at 0.
    for name in ["processed", "duplicate", "stale", "ignored", "rejected", "failed", "released"] {
        assert_eq!(worker.metric(&outcome(name)).await, Some(0.0), "{name} exported at 0");
    }
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
    let view = stored(&orders, id).await.unwrap_or_else(|| panic!("order {id} not stored"));
    assert_eq!(view.order.version, 3);
    assert_eq!(history(&view.order), [1, 3], "each version once, never backwards");
    assert_eq!(outcomes_for(&worker, &id.to_string()), ["processed", "duplicate", "processed", "stale"]);
    assert_eq!(count(&worker, "processed").await, 2.0);
}

/// Poison goes to the DLQ after one receive with its reason attached; a good neighbour is applied normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dlq_after_one_receive() {
    let (emulator, topo, sqs, orders) = pipeline("w").await;
    let queue = topo.queues[PROCESS].clone();
    let good = event_json(Uuid::new_v4(), 1);
    let invalid = good.replace("\"total\":59.98", "\"total\":-1");
    assert_ne!(invalid, good, "the invalid event differs from the good one");
    let poison = ["not json at all", r#"{"hello":"world"}"#, invalid.as_str()];
    for body in poison {
        send(&sqs, &queue.url, body).await;
    }
    let good_id = Uuid::new_v4();
    send(&sqs, &queue.url, &event_json(good_id, 1)).await;
    let worker = start_worker(&emulator, &topo, PROCESS, &[]).await;
    assert_eq!(wait_outcome(&worker, "rejected", 3.0).await, 3.0);
    assert_eq!(wait_outcome(&worker, "processed", 1.0).await, 1.0);
    wait_empty(&sqs, &queue.url, SETTLE).await;
    assert_eq!(stored(&orders, good_id).await.map(|v| history(&v.order)), Some(vec![1]));
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
    assert_eq!(worker.metric("pedidos_worker_sqs_calls_total{operation=\"send\"}").await, Some(3.0));
    let logged: Vec<String> =
        lines_with(&worker, "rejected").iter().map(|l| l["reason"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(logged.len(), 3, "one outcome line per poison message");
}

/// An event type the contract does not know, sent straight to the queue, is dead-lettered (not dropped) with reason
/// `unknown_event_type`, so it can be redriven after an upgrade. Published through SNS, the subscription's filter
/// policy keeps it off the queue altogether.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_event_types_are_dead_lettered() {
    let (emulator, topo, sqs, orders) = pipeline("w").await;
    let (sns, _) = sdk(&emulator.endpoints()).await;
    let queue = topo.queues[PROCESS].clone();
    let id = Uuid::new_v4();
    let unknown = format!(r#"{{"type":"PedidoCancelado","version":3,"pedidoId":"{id}"}}"#);
    send(&sqs, &queue.url, &unknown).await;
    // Through SNS, with its eventType attribute: the filter policies keep it off both queues. SNS may deliver after
    // Publish returns, so a known event published after it is the marker: once the marker is on both queues, the
    // unknown event would have arrived too.
    let publish = |message: String, event_type: &'static str| {
        sns.publish()
            .topic_arn(&topo.topic_arn)
            .message(message)
            .message_attributes(
                "eventType",
                aws_sdk_sns::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(event_type)
                    .build()
                    .unwrap_or_else(|e| panic!("attribute: {e}")),
            )
            .send()
    };
    publish(unknown.clone(), "PedidoCancelado")
        .await
        .unwrap_or_else(|e| panic!("publish: {}", aws_sdk_sns::error::DisplayErrorContext(e)));
    let marker = Uuid::new_v4();
    publish(event_json(marker, 1), "PedidoCreado")
        .await
        .unwrap_or_else(|e| panic!("publish: {}", aws_sdk_sns::error::DisplayErrorContext(e)));
    let visible = |index: usize| {
        let sqs = &sqs;
        let url = topo.queues[index].url.clone();
        async move { queue_depth(sqs, &url).await.0 }
    };
    let depths = eventually(SETTLE, Duration::from_millis(100), || async {
        let depths = (visible(PROCESS).await, visible(LOGISTICS).await);
        (depths.0 >= 2 && depths.1 >= 1).then_some(depths)
    })
    .await;
    assert_eq!(depths, (2, 1), "only the direct send and the marker arrived (process, logistics)");
    let worker = start_worker(&emulator, &topo, PROCESS, &[]).await;
    assert_eq!(wait_outcome(&worker, "rejected", 1.0).await, 1.0);
    assert_eq!(wait_outcome(&worker, "processed", 1.0).await, 1.0, "the marker");
    wait_empty(&sqs, &queue.url, SETTLE).await;
    let dead = drain(&sqs, &queue.dlq_url, 1, SETTLE).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some(unknown.as_str()), "the original body, untouched");
    let reason = dead[0].message_attributes().and_then(|a| a.get("rejectReason")).and_then(|a| a.string_value());
    assert_eq!(reason, Some("unknown_event_type"));
    assert_eq!(count(&worker, "ignored").await, 0.0, "not silently ignored");
    let line = lines_with(&worker, "rejected").pop().unwrap_or_else(|| panic!("no outcome line"));
    assert_eq!((line["reason"].as_str(), line["action"].as_str()), (Some("unknown_event_type"), Some("dead_letter")));
    assert!(stored(&orders, id).await.is_none(), "nothing stored");
}

/// Raw message delivery and the seed's legacy PascalCase payload are both applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_delivery_and_legacy_events_are_processed() {
    let (emulator, topo, sqs, orders) = pipeline("w").await;
    let (sns, _) = sdk(&emulator.endpoints()).await;
    let queue = topo.queues[PROCESS].clone();
    sns.set_subscription_attributes()
        .subscription_arn(&queue.subscription_arn)
        .attribute_name("RawMessageDelivery")
        .attribute_value("true")
        .send()
        .await
        .unwrap_or_else(|e| panic!("raw delivery: {}", aws_sdk_sns::error::DisplayErrorContext(e)));
    let raw_id = Uuid::new_v4();
    let attribute = |value: &str| {
        aws_sdk_sns::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .unwrap_or_else(|e| panic!("attribute: {e}"))
    };
    // The filter policy matches on eventType, so a publisher must set it (the API always does).
    sns.publish()
        .topic_arn(&topo.topic_arn)
        .message(event_json(raw_id, 1))
        .message_attributes("eventType", attribute("PedidoCreado"))
        .message_attributes("requestId", attribute("raw-request-1"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("publish: {}", aws_sdk_sns::error::DisplayErrorContext(e)));
    let legacy_id = Uuid::new_v4();
    let legacy = format!(
        r#"{{"PedidoId":"{legacy_id}","ClienteId":"{}","Fecha":"2024-05-01T10:00:00+00:00","Total":59.98}}"#,
        Uuid::new_v4()
    );
    send(&sqs, &queue.url, &legacy).await;
    let worker = start_worker(&emulator, &topo, PROCESS, &[]).await;
    assert_eq!(wait_outcome(&worker, "processed", 2.0).await, 2.0);
    let raw = stored(&orders, raw_id).await.unwrap_or_else(|| panic!("raw-delivered order not stored"));
    assert_eq!(history(&raw.order), [1]);
    assert_eq!(raw.order.request_id.as_deref(), Some("raw-request-1"), "request id from the SQS message attribute");
    let old = stored(&orders, legacy_id).await.unwrap_or_else(|| panic!("legacy order not stored"));
    assert_eq!(history(&old.order), [1], "legacy payload read as version 1");
    assert_eq!(old.order.total, Decimal::new(5998, 2));
    assert_eq!(old.order.fecha.to_rfc3339(), "2024-05-01T10:00:00+00:00");
    assert_eq!(outcomes_for(&worker, &raw_id.to_string()), ["processed"]);
    assert_eq!(outcomes_for(&worker, &legacy_id.to_string()), ["processed"]);
    assert!(worker.log_json().iter().any(|l| l["pedido_id"] == legacy_id.to_string() && l["legacy"] == true));
}

/// SIGTERM mid-backlog: exit 0 within the grace period; a restarted worker finishes the rest; nothing stays invisible,
/// nothing is seen twice, and the store holds every order once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_strands_nothing() {
    let (emulator, topo, sqs, orders) = pipeline("w").await;
    let url = topo.queues[PROCESS].url.clone();
    let ids: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        send(&sqs, &url, &event_json(*id, 1)).await;
    }
    let mut first =
        start_worker(&emulator, &topo, PROCESS, &[("WORKER_CONCURRENCY", "2"), ("SHUTDOWN_GRACE_SECONDS", "5")]).await;
    wait_outcome(&first, "processed", 1.0).await;
    let stopped_at = Instant::now();
    first.signal_term();
    let status = first.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}");
    assert!(stopped_at.elapsed() < Duration::from_secs(7), "took {:?}", stopped_at.elapsed());
    let done_first = lines_with(&first, "processed").len();
    let second = start_worker(&emulator, &topo, PROCESS, &[]).await;
    // Well within the 30 s visibility timeout: released messages were visible at once.
    let restarted = Instant::now();
    wait_empty(&sqs, &url, Duration::from_secs(20)).await;
    assert!(restarted.elapsed() < Duration::from_secs(25));
    let done_second = lines_with(&second, "processed").len();
    assert_eq!(done_first + done_second, ids.len(), "first {done_first}, second {done_second}");
    assert_eq!(lines_with(&second, "duplicate").len(), 0, "a graceful stop leaves nothing to redeliver");
    for id in &ids {
        assert_eq!(stored(&orders, *id).await.map(|v| history(&v.order)), Some(vec![1]), "order {id}");
    }
}

/// SIGKILL mid-backlog: after the visibility timeout a new worker finishes; nothing is lost, and what the killed one
/// had applied but not deleted comes back as a duplicate and is not applied again (store history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_and_reapplies_nothing() {
    let (emulator, topo, sqs, orders) = pipeline("w").await;
    let url = topo.queues[PROCESS].url.clone();
    set_visibility_timeout(&sqs, &url, 3).await;
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        send(&sqs, &url, &event_json(*id, 1)).await;
    }
    let mut first = start_worker(&emulator, &topo, PROCESS, &[("WORKER_CONCURRENCY", "2")]).await;
    wait_outcome(&first, "processed", 1.0).await;
    first.kill();
    let second = start_worker(&emulator, &topo, PROCESS, &[]).await;
    wait_empty(&sqs, &url, SETTLE).await;
    for id in &ids {
        let view = stored(&orders, *id).await.unwrap_or_else(|| panic!("order {id} lost"));
        assert_eq!(history(&view.order), [1], "order {id} applied exactly once");
    }
    // The store said "already applied" for whatever the killed worker had written but not deleted.
    let applied_by_second = lines_with(&second, "processed").len();
    let duplicates = lines_with(&second, "duplicate").len();
    assert!(applied_by_second < ids.len(), "the first worker applied some before dying");
    assert!(duplicates <= 2 + 20, "at most its slots plus its pending deletes come back: {duplicates}");
    assert_eq!(lines_with(&second, "stale").len(), 0);
}

/// Emulator frozen: the worker backs off (no hot loop) and `/ready` turns 503 naming the failing dependency, while
/// `/health` (liveness, what orchestrators act on) stays 200 all along; after it returns, the worker recovers alone
/// and applies new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_an_emulator_outage() {
    let (emulator, topo, sqs, orders) = pipeline("w").await;
    let url = topo.queues[PROCESS].url.clone();
    let worker = start_worker(&emulator, &topo, PROCESS, &[("HEALTH_FAILURE_SECONDS", "2")]).await;
    emulator.pause();
    let client = http();
    let (health, ready) = (format!("{}/health", worker.base_url()), format!("{}/ready", worker.base_url()));
    let unready = eventually(Duration::from_secs(90), Duration::from_millis(250), || async {
        let response = client.get(&ready).send().await.ok()?;
        (response.status() == 503).then_some(())?;
        let body: serde_json::Value = response.json().await.ok()?;
        (body["dependencies"]["sqs"]["state"] == "failing").then_some(body)
    })
    .await;
    assert_eq!(unready["status"], "ok", "alive while SQS is down: {unready}");
    let live = client.get(&health).send().await.map(|r| r.status().as_u16()).ok();
    assert_eq!(live, Some(200), "liveness does not follow a dependency");
    let receives_during = worker.metric("pedidos_worker_sqs_calls_total{operation=\"receive\"}").await.unwrap_or(0.0);
    emulator.resume();
    eventually(Duration::from_secs(60), Duration::from_millis(250), || async {
        let status = client.get(&ready).send().await.ok()?.status();
        (status == 200).then_some(())
    })
    .await;
    let id = Uuid::new_v4();
    send(&sqs, &url, &event_json(id, 1)).await;
    let view = wait_stored(&orders, id, 1, false).await;
    assert_eq!(history(&view.order), [1]);
    wait_outcome(&worker, "processed", 1.0).await;
    assert_eq!(outcomes_for(&worker, &id.to_string()), ["processed"]);
    // Backing off: a handful of attempts over the outage, not thousands.
    assert!(receives_during < 50.0, "{receives_during} receives while down");
    let log = worker.log_text();
    assert_eq!(log.matches("SQS receive failing").count(), 1, "one line per state change");
    assert!(log.contains("SQS reachable again"));
}

/// Started while SQS refuses every connection (a deploy during an SQS outage): the health endpoint is up at once,
/// live (`/health` 200, `"status": "starting"`, so an orchestrator does not kill it) and not ready (`/ready` 503 naming
/// SQS); once SQS answers the worker finds its queue and runs, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_during_an_sqs_outage_it_is_live_and_starting_until_sqs_answers() {
    let (emulator, topo, sqs, orders) = pipeline("w").await;
    let proxy = FaultProxy::start(&emulator.endpoints().messaging);
    proxy.set(Mode::Refuse);
    let endpoints = Endpoints { messaging: proxy.endpoint(), dynamodb: emulator.endpoints().dynamodb };
    let worker = worker_builder(&endpoints, &topo, PROCESS).spawn();
    let client = http();
    let (health, ready) = (format!("{}/health", worker.base_url()), format!("{}/ready", worker.base_url()));
    let starting = eventually(START, Duration::from_millis(100), || async {
        let response = client.get(&health).send().await.ok()?;
        (response.status() == 200).then_some(())?;
        let body: serde_json::Value = response.json().await.ok()?;
        (body["dependencies"]["sqs"]["state"] == "failing").then_some(body)
    })
    .await;
    assert_eq!(starting["status"], "starting", "{starting}");
    let unready = client.get(&ready).send().await.map(|r| r.status().as_u16()).ok();
    assert_eq!(unready, Some(503));
    proxy.set(Mode::Up);
    eventually(Duration::from_secs(60), Duration::from_millis(250), || async {
        let body: serde_json::Value = client.get(&health).send().await.ok()?.json().await.ok()?;
        (body["status"] == "ok").then_some(())
    })
    .await;
    let id = Uuid::new_v4();
    send(&sqs, &topo.queues[PROCESS].url, &event_json(id, 1)).await;
    assert_eq!(history(&wait_stored(&orders, id, 1, false).await.order), [1]);
}

/// A missing queue fails at start-up, naming it; a missing variable names the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_are_clear() {
    let emulator = Emulator::start().await;
    let missing = Service::builder("pedidos-worker")
        .endpoints(emulator.endpoints())
        .env("SQS_QUEUE_URL", "no-such-queue")
        .run(Duration::from_secs(30))
        .await;
    assert!(missing.status.is_some_and(|s| !s.success()));
    assert!(
        missing.stderr.contains("no-such-queue") && missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );
    let unset = Service::builder("pedidos-worker").endpoints(emulator.endpoints()).run(Duration::from_secs(30)).await;
    assert!(unset.status.is_some_and(|s| !s.success()));
    assert!(unset.stderr.contains("SQS_QUEUE_URL"), "{}", unset.stderr);
}

/// Two worker processes on the same queue, every event delivered three times (two of the copies in a burst, so both
/// workers hold copies of one order at once): each version is applied exactly once, counted once over both workers,
/// and the store's history holds it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_queue_apply_every_version_once() {
    let (emulator, topo, sqs, orders) = pipeline("w").await;
    let url = topo.queues[PROCESS].url.clone();
    let workers =
        [start_worker(&emulator, &topo, PROCESS, &[]).await, start_worker(&emulator, &topo, PROCESS, &[]).await];
    let ids: Vec<Uuid> = (0..15).map(|_| Uuid::new_v4()).collect();
    const COPIES: usize = 3;
    // Phase per version, so the later version never overtakes the earlier one: the history must be exactly [1, 2].
    for version in [1, 2] {
        let bodies: Vec<String> = ids
            .iter()
            .map(|id| sns_envelope(&topo.topic_arn, &order_event(*id, version), Some(&format!("req-{id}-{version}"))))
            .collect();
        for _ in 0..COPIES {
            for body in &bodies {
                send(&sqs, &url, body).await;
            }
        }
        for id in &ids {
            wait_stored(&orders, *id, version, false).await;
        }
        wait_empty(&sqs, &url, SETTLE).await;
    }
    let total = |name: &'static str| {
        let workers = &workers;
        async move {
            let mut sum = 0.0;
            for worker in workers {
                sum += count(worker, name).await;
            }
            sum
        }
    };
    let distinct = (ids.len() * 2) as f64;
    assert_eq!(total("processed").await, distinct, "each pedidoId#version applied once over both workers");
    assert_eq!(total("duplicate").await, distinct * (COPIES as f64 - 1.0), "every other copy is a duplicate");
    assert_eq!(total("stale").await, 0.0);
    assert_eq!(total("failed").await, 0.0);
    assert!(
        count(&workers[0], "processed").await > 0.0 && count(&workers[1], "processed").await > 0.0,
        "both workers took part"
    );
    for id in &ids {
        let view = stored(&orders, *id).await.unwrap_or_else(|| panic!("order {id} lost"));
        assert_eq!(history(&view.order), [1, 2], "order {id}");
        let request_ids: Vec<Option<String>> = view.order.versiones.iter().map(|v| v.request_id.clone()).collect();
        assert_eq!(request_ids, [Some(format!("req-{id}-1")), Some(format!("req-{id}-2"))]);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// In-process consumer with test handlers

/// Fails every time, recording when it was called.
struct AlwaysFails(Arc<Mutex<Vec<Instant>>>);

impl Handler for AlwaysFails {
    fn handles(&self, _: domain::EventType) -> bool {
        true
    }
    fn handle<'a>(&'a self, _: &'a OrderEvent, _: &'a MessageContext) -> BoxFuture<'a, Result<Effect, HandlerError>> {
        if let Ok(mut calls) = self.0.lock() {
            calls.push(Instant::now());
        }
        Box::pin(async { Err(HandlerError::transient("downstream unavailable")) })
    }
}

/// Takes `delay` per message, counting completions.
struct Slow(Duration, Arc<Mutex<Vec<Uuid>>>);

impl Handler for Slow {
    fn handles(&self, _: domain::EventType) -> bool {
        true
    }
    fn handle<'a>(
        &'a self,
        event: &'a OrderEvent,
        _: &'a MessageContext,
    ) -> BoxFuture<'a, Result<Effect, HandlerError>> {
        Box::pin(async move {
            tokio::time::sleep(self.0).await;
            if let Ok(mut done) = self.1.lock() {
                done.push(event.order.pedido_id);
            }
            Ok(Effect::Applied)
        })
    }
}

/// A consumer on `url` with its own SQS client, as `pedidos_worker::start` wires it, around `handler`.
async fn consumer(
    emulator: &Emulator,
    url: &str,
    handler: Arc<dyn Handler>,
    settings: Settings,
) -> (Consumer, Arc<Health>) {
    let (_, sqs) = sdk(&emulator.endpoints()).await;
    let queue_settings = discover(&sqs, url).await.unwrap_or_else(|e| panic!("discover: {e}"));
    let health = Arc::new(Health::new("process", url.to_owned(), pedidos_worker::health::Limits::default()));
    let queue = Arc::new(SqsQueue::new(sqs, queue_settings));
    (Consumer::new(queue, handler, Arc::clone(&health), settings), health)
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
    let (emulator, topo, sqs, _) = pipeline("w").await;
    let queue = topo.queues[PROCESS].clone();
    send(&sqs, &queue.url, &event_json(Uuid::new_v4(), 1)).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (consumer, _) =
        consumer(&emulator, &queue.url, Arc::new(AlwaysFails(Arc::clone(&calls))), settings(Duration::from_secs(1)))
            .await;
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
    let (emulator, topo, sqs, _) = pipeline("w").await;
    let url = topo.queues[PROCESS].url.clone();
    let ids: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        send(&sqs, &url, &event_json(*id, 1)).await;
    }
    let done = Arc::new(Mutex::new(Vec::new()));
    let (slow, health) = consumer(
        &emulator,
        &url,
        Arc::new(Slow(Duration::from_secs(60), Arc::clone(&done))),
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
        consumer(&emulator, &url, Arc::new(Slow(Duration::ZERO, Arc::clone(&done))), settings(Duration::from_secs(5)))
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
    fn handle<'a>(
        &'a self,
        event: &'a OrderEvent,
        _: &'a MessageContext,
    ) -> BoxFuture<'a, Result<Effect, HandlerError>> {
        Box::pin(async move {
            let mut flag = DropFlag(Arc::clone(&self.cancelled), false);
            tokio::time::sleep(self.delay).await;
            flag.1 = true;
            if let Ok(mut done) = self.done.lock() {
                done.push(event.order.pedido_id);
            }
            Ok(Effect::Applied)
        })
    }
}

/// A handler running past half the visibility timeout keeps its message invisible: nobody else receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_long_handlers_invisible() {
    let (emulator, topo, sqs, _) = pipeline("w").await;
    let url = topo.queues[PROCESS].url.clone();
    set_visibility_timeout(&sqs, &url, 2).await;
    let id = Uuid::new_v4();
    send(&sqs, &url, &event_json(id, 1)).await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let cancelled = Arc::new(Mutex::new(None));
    let handler = Watched { delay: Duration::from_secs(5), done: Arc::clone(&done), cancelled: Arc::clone(&cancelled) };
    let (consumer, health) = consumer(&emulator, &url, Arc::new(handler), settings(Duration::from_secs(10))).await;
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
    let (emulator, topo, sqs, _) = pipeline("w").await;
    let url = topo.queues[PROCESS].url.clone();
    set_visibility_timeout(&sqs, &url, 2).await;
    send(&sqs, &url, &event_json(Uuid::new_v4(), 1)).await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let cancelled = Arc::new(Mutex::new(None));
    let handler =
        Watched { delay: Duration::from_secs(120), done: Arc::clone(&done), cancelled: Arc::clone(&cancelled) };
    let (consumer, health) = consumer(&emulator, &url, Arc::new(handler), settings(Duration::from_secs(1))).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    eventually(SETTLE, Duration::from_millis(20), || async { (health.in_flight() == 1).then_some(()) }).await;
    emulator.pause();
    let paused = Instant::now();
    let at = eventually(Duration::from_secs(60), Duration::from_millis(100), || async {
        cancelled.lock().ok().and_then(|c| *c)
    })
    .await;
    emulator.resume();
    stop.cancel();
    let _ = task.await;
    // The lease is 2 s and the extension must be confirmed before it runs out (a local deadline): the cancel comes
    // within about 2 s, well before the SDK's own 10 s attempt timeout would have fired.
    assert!(
        at.duration_since(paused) < Duration::from_secs(8),
        "cancelled {:?} after the outage began",
        at.duration_since(paused)
    );
    assert!(done.lock().map(|d| d.is_empty()).unwrap_or(false), "the handler never completed");
}
