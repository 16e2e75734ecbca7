//! Distributed traces across the real binaries (docs/RELIABILITY.md G38): `pedidos-api` and both `pedidos-worker`
//! roles export OTLP/HTTP to a receiver in this process ([`e2e::otlp::OtlpReceiver`], decoding with the protocol's
//! own types), and the spans of one order link up across the SNS/SQS hop down to the DynamoDB write. A duplicate, a
//! stale version, a redelivery and a dead-letter carry their outcome; without an endpoint nothing is exported at
//! all; and a collector that never answers, or refuses, costs a request or a message nothing but dropped spans.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeNameForSends, MessageSystemAttributeValue};
use chrono::Utc;
use domain::OrderEvent;
use e2e::otlp::{kind, OtlpReceiver, ReceivedSpan};
use e2e::{
    api_builder, eventually, http, order_event, pipeline, send, sns_envelope, worker_builder, Service, ServiceBuilder,
};
use store::dynamo::DynamoOrders;
use store::{OrderReads, OrderView};
use uuid::Uuid;

const START: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(60);
const PROCESS: usize = 0;
const LOGISTICS: usize = 1;

/// Traces on, exported to `receiver` a tenth of a second after they end.
fn traced(builder: ServiceBuilder, receiver: &OtlpReceiver) -> ServiceBuilder {
    builder.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()).env("OTEL_BSP_SCHEDULE_DELAY", "100")
}

async fn healthy(builder: ServiceBuilder) -> Service {
    let mut service = builder.spawn();
    service.wait_healthy(START).await;
    service
}

async fn wait_stored(orders: &DynamoOrders, id: Uuid, version: u64, shipment: bool) -> OrderView {
    eventually(SETTLE, Duration::from_millis(100), || async {
        let view = orders.get(id).await.ok().flatten()?;
        (view.order.version >= version && (!shipment || view.envio.is_some())).then_some(view)
    })
    .await
}

/// 32 random hex digits (a W3C trace id), and 16 (a span id).
fn new_ids() -> (String, String) {
    let id = Uuid::new_v4().simple().to_string();
    (id, Uuid::new_v4().simple().to_string()[..16].to_owned())
}

/// The SNS envelope of `event` carrying `traceparent` among its message attributes, as the API publishes it.
fn traced_envelope(topic_arn: &str, event: &OrderEvent, trace_id: &str, parent: &str) -> String {
    let mut envelope: serde_json::Value =
        serde_json::from_str(&sns_envelope(topic_arn, event, Some("req-trace"))).unwrap_or_default();
    envelope["MessageAttributes"]["traceparent"] =
        serde_json::json!({"Type": "String", "Value": format!("00-{trace_id}-{parent}-01")});
    envelope.to_string()
}

/// The one span of `spans` matching, panicking with the candidates otherwise.
fn one<'a>(spans: &'a [ReceivedSpan], what: &str, matches: impl Fn(&ReceivedSpan) -> bool) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| matches(s)).collect();
    match found.as_slice() {
        [span] => span,
        _ => panic!(
            "expected one {what}, found {}; spans:\n  {}",
            found.len(),
            spans
                .iter()
                .map(|s| format!("{} {} {}<-{}", s.service, s.name, s.span_id, s.parent_span_id))
                .collect::<Vec<_>>()
                .join("\n  ")
        ),
    }
}

/// The worker spans of one message, once its settle span has arrived.
struct MessageSpans {
    message: ReceivedSpan,
    receive: ReceivedSpan,
    handle: Option<ReceivedSpan>,
    settle: ReceivedSpan,
    all: Vec<ReceivedSpan>,
}

fn message_spans(trace: &[ReceivedSpan], service: &str) -> Option<MessageSpans> {
    let mine: Vec<ReceivedSpan> = trace.iter().filter(|s| s.service == service).cloned().collect();
    let message = mine.iter().find(|s| s.kind == kind::CONSUMER && s.name.ends_with(" process"))?.clone();
    let receive = mine.iter().find(|s| s.kind == kind::CONSUMER && s.name.ends_with(" receive"))?.clone();
    let settle = mine.iter().find(|s| s.name == "settle" && s.parent_span_id == message.span_id)?.clone();
    let handle = mine.iter().find(|s| s.name.starts_with("handle ") && s.parent_span_id == message.span_id).cloned();
    Some(MessageSpans { message, receive, handle, settle, all: mine })
}

/// One POST with the client's `traceparent` is one trace: the API's server span (child of the client's), its
/// producer span and the SNS call under it; in each worker a consumer span and its receive, both children of the
/// producer span across the SNS/SQS hop, with decode, handle (the DynamoDB write under it) and settle below. The
/// store records the trace id on the applied version and on the shipment, and the JSON log lines carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_post_is_one_trace_across_the_api_and_both_workers() {
    let receiver = OtlpReceiver::start().await;
    let (emulator, topo, _sqs, orders) = pipeline("t").await;
    let endpoints = emulator.endpoints();
    let api = healthy(traced(api_builder(&endpoints, &topo), &receiver)).await;
    let process = healthy(traced(worker_builder(&endpoints, &topo, PROCESS), &receiver)).await;
    let logistics = healthy(traced(worker_builder(&endpoints, &topo, LOGISTICS), &receiver)).await;

    let (client_trace, client_span) = new_ids();
    let response = http()
        .post(format!("{}/api/pedidos", api.base_url()))
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .header("x-request-id", "trace-e2e-1")
        .json(&serde_json::json!({"clienteId": Uuid::new_v4(), "total": "59.98"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST: {e}"));
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("trace-e2e-1"));
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let id = body["pedidoId"].as_str().and_then(|id| Uuid::parse_str(id).ok()).unwrap_or_else(|| panic!("{body}"));

    let view = wait_stored(&orders, id, 1, true).await;
    assert_eq!(view.order.versiones[0].origin.trace_id.as_deref(), Some(client_trace.as_str()), "applied version");
    let envio = view.envio.unwrap_or_else(|| panic!("no shipment"));
    assert_eq!(envio.origin.trace_id.as_deref(), Some(client_trace.as_str()), "shipment");

    let trace = receiver
        .wait_for(SETTLE, "the whole trace of the order", |spans| {
            let trace: Vec<ReceivedSpan> = spans.iter().filter(|s| s.trace_id == client_trace).cloned().collect();
            let complete = ["pedidos-worker-process", "pedidos-worker-logistics"].iter().all(|service| {
                message_spans(&trace, service).is_some_and(|m| m.all.iter().any(|s| s.name.starts_with("DynamoDB.")))
            }) && trace.iter().any(|s| s.name == "SNS.Publish");
            complete.then_some(trace)
        })
        .await;

    // Health checks (the harness polled /health on each service) make no trace.
    assert!(receiver.spans().iter().all(|s| !s.name.contains("/health")), "a health check was traced");
    let request = one(&trace, "API request span", |s| s.service == "pedidos-api" && s.kind == kind::SERVER);
    assert_eq!(request.name, "POST /api/pedidos");
    assert_eq!(request.parent_span_id, client_span, "the API's span is the client's child");
    assert_eq!(request.attribute("request_id"), Some("trace-e2e-1"), "X-Request-Id is recorded");
    assert_eq!(request.attribute("pedido_id"), Some(id.to_string().as_str()));
    assert_eq!(request.attribute("http.response.status_code"), Some("202"));
    let publish = one(&trace, "producer span", |s| s.kind == kind::PRODUCER);
    assert_eq!((publish.service.as_str(), publish.parent_span_id.as_str()), ("pedidos-api", request.span_id.as_str()));
    let sns = one(&trace, "SNS.Publish", |s| s.name == "SNS.Publish");
    assert_eq!(sns.parent_span_id, publish.span_id, "the AWS SDK call is a child span");

    for (service, write) in
        [("pedidos-worker-process", "DynamoDB.UpdateItem"), ("pedidos-worker-logistics", "DynamoDB.PutItem")]
    {
        let spans = message_spans(&trace, service).unwrap_or_else(|| panic!("{service}: no message spans"));
        assert_eq!(spans.message.parent_span_id, publish.span_id, "{service}: child of the producer across SNS/SQS");
        assert_eq!(spans.receive.parent_span_id, publish.span_id, "{service}: its receive too");
        assert_eq!(spans.message.attribute("outcome"), Some("processed"), "{service}");
        assert_eq!(spans.message.attribute("pedido_id"), Some(id.to_string().as_str()), "{service}");
        assert_eq!(spans.message.attribute("version"), Some("1"), "{service}");
        assert_eq!(spans.message.attribute("receive_count"), Some("1"), "{service}");
        assert_eq!(spans.message.attribute("request_id"), Some("trace-e2e-1"), "{service}");
        let decode = one(&spans.all, "decode", |s| s.name == "decode");
        assert_eq!(decode.parent_span_id, spans.message.span_id, "{service}");
        let handle = spans.handle.as_ref().unwrap_or_else(|| panic!("{service}: no handle span"));
        let dynamo = one(&spans.all, write, |s| s.name == write);
        assert_eq!(dynamo.parent_span_id, handle.span_id, "{service}: the store write is under handle");
        assert_eq!(spans.settle.parent_span_id, spans.message.span_id, "{service}");
        // Nothing of the worker floats outside the trace: every span's parent is in it.
        for span in &spans.all {
            let parent_known = trace.iter().any(|p| p.span_id == span.parent_span_id);
            assert!(parent_known, "{service}: {} has a parent outside the trace", span.name);
        }
    }

    // Logs join traces: the lines of this order carry its trace id, and keep their usual span.
    let published = api.log_json().into_iter().find(|l| l["message"] == "event published");
    let published = published.unwrap_or_else(|| panic!("no `event published` line"));
    assert_eq!(published["trace_id"], client_trace.as_str());
    assert_eq!(published["span"]["name"], "request");
    for worker in [&process, &logistics] {
        let line =
            worker.log_json().into_iter().find(|l| l["outcome"] == "processed" && l["pedido_id"] == id.to_string());
        let line = line.unwrap_or_else(|| panic!("{}: no outcome line", worker.name()));
        assert_eq!(line["trace_id"], client_trace.as_str(), "{}", worker.name());
        assert_eq!(line["span"]["name"], "message", "{}: the log line keeps the message span", worker.name());
        assert!(line["span_id"].as_str().is_some_and(|s| s.len() == 16), "{line}");
    }
}

/// A duplicate, a stale version, a redelivery, an X-Ray-traced sender (`AWSTraceHeader`) and a dead-letter, each in
/// its own trace: the message span says what happened (outcome attribute, an event, an error status for the
/// dead-letter, whose copy to the DLQ is the SDK call under settle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_stale_versions_redeliveries_and_dead_letters_carry_their_outcome() {
    let receiver = OtlpReceiver::start().await;
    let (emulator, topo, sqs, orders) = pipeline("t").await;
    let queue = topo.queues[PROCESS].url.clone();
    let id = Uuid::new_v4();
    let v1 = order_event(id, 1);

    // A message received once already (by someone else, and not deleted): the worker gets its second delivery.
    let (redelivered_trace, parent) = new_ids();
    send(&sqs, &queue, &traced_envelope(&topo.topic_arn, &v1, &redelivered_trace, &parent)).await;
    let taken = sqs
        .receive_message()
        .queue_url(&queue)
        .visibility_timeout(1)
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap_or_else(|e| panic!("receive: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
    assert_eq!(taken.messages.unwrap_or_default().len(), 1);

    let process = healthy(traced(worker_builder(&emulator.endpoints(), &topo, PROCESS), &receiver)).await;
    let outcome_of = |trace_id: String| {
        let receiver = &receiver;
        async move {
            receiver
                .wait_for(SETTLE, &format!("the message span of trace {trace_id}"), |spans| {
                    let trace: Vec<ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect();
                    message_spans(&trace, "pedidos-worker-process")
                })
                .await
        }
    };
    let first = outcome_of(redelivered_trace).await;
    assert_eq!(first.message.attribute("outcome"), Some("processed"));
    assert_eq!(first.message.attribute("receive_count"), Some("2"));
    assert!(first.message.has_event("redelivered"), "a redelivery is an event on the span");

    let (duplicate_trace, parent) = new_ids();
    send(&sqs, &queue, &traced_envelope(&topo.topic_arn, &v1, &duplicate_trace, &parent)).await;
    let duplicate = outcome_of(duplicate_trace).await;
    assert_eq!(duplicate.message.parent_span_id, parent, "the envelope's traceparent is the parent");
    assert_eq!(duplicate.message.attribute("outcome"), Some("duplicate"));
    assert!(duplicate.message.has_event("duplicate"));

    let (v3_trace, parent) = new_ids();
    send(&sqs, &queue, &traced_envelope(&topo.topic_arn, &order_event(id, 3), &v3_trace, &parent)).await;
    assert_eq!(outcome_of(v3_trace).await.message.attribute("outcome"), Some("processed"));
    let (stale_trace, parent) = new_ids();
    send(&sqs, &queue, &traced_envelope(&topo.topic_arn, &order_event(id, 2), &stale_trace, &parent)).await;
    let stale = outcome_of(stale_trace).await;
    assert_eq!(stale.message.attribute("outcome"), Some("stale"));
    assert_eq!(stale.message.attribute("version"), Some("2"));
    assert!(stale.message.has_event("stale"));

    // An X-Ray-traced sender: SQS's AWSTraceHeader makes the message part of that trace (raw delivery, bare event).
    let xray_time = format!("{:08x}", Utc::now().timestamp());
    let xray_id = Uuid::new_v4().simple().to_string()[..24].to_owned();
    let (_, xray_parent) = new_ids();
    let other = Uuid::new_v4();
    sqs.send_message()
        .queue_url(&queue)
        .message_body(order_event(other, 1).to_json().unwrap_or_default())
        .message_system_attributes(
            MessageSystemAttributeNameForSends::AwsTraceHeader,
            MessageSystemAttributeValue::builder()
                .data_type("String")
                .string_value(format!("Root=1-{xray_time}-{xray_id};Parent={xray_parent};Sampled=1"))
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("send: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
    let xray_trace = format!("{xray_time}{xray_id}");
    let xray = outcome_of(xray_trace.clone()).await;
    assert_eq!(xray.message.parent_span_id, xray_parent);
    let stored = wait_stored(&orders, other, 1, false).await;
    assert_eq!(stored.order.versiones[0].origin.trace_id.as_deref(), Some(xray_trace.as_str()));

    // Poison, with the trace context as an SQS message attribute (raw delivery): dead-lettered on its first receive.
    let (poison_trace, parent) = new_ids();
    sqs.send_message()
        .queue_url(&queue)
        .message_body("not json")
        .message_attributes(
            "traceparent",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(format!("00-{poison_trace}-{parent}-01"))
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("send: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
    let poison = receiver
        .wait_for(SETTLE, "the dead-letter's DLQ copy under settle", |spans| {
            let trace: Vec<ReceivedSpan> = spans.iter().filter(|s| s.trace_id == poison_trace).cloned().collect();
            let spans = message_spans(&trace, "pedidos-worker-process")?;
            spans
                .all
                .iter()
                .any(|s| s.name == "SQS.SendMessage" && s.parent_span_id == spans.settle.span_id)
                .then_some(spans)
        })
        .await;
    assert_eq!(poison.message.parent_span_id, parent);
    assert_eq!(poison.message.attribute("outcome"), Some("rejected"));
    assert_eq!(poison.message.attribute("reject_reason"), Some("not_json"));
    assert!(poison.message.has_event("dead_lettered"));
    assert_eq!(poison.message.status_code, 2, "a dead-letter is an error on the trace");
    drop(process);
}

/// Without an endpoint no exporter runs and nothing is sent, whatever else `OTEL_*` says; the API propagates no
/// context (the stored version has no trace id), and the trace metrics exist at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_no_exporter_runs() {
    let receiver = OtlpReceiver::start().await;
    let (emulator, topo, _sqs, orders) = pipeline("t").await;
    let endpoints = emulator.endpoints();
    let untraced = |builder: ServiceBuilder| {
        builder
            .env("OTEL_SERVICE_NAME", "should-not-appear")
            .env("OTEL_TRACES_SAMPLER", "always_on")
            .env("OTEL_BSP_SCHEDULE_DELAY", "10")
    };
    let mut api = healthy(untraced(api_builder(&endpoints, &topo))).await;
    let mut process = healthy(untraced(worker_builder(&endpoints, &topo, PROCESS))).await;
    let (client_trace, client_span) = new_ids();
    let response = http()
        .post(format!("{}/api/pedidos", api.base_url()))
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&serde_json::json!({"clienteId": Uuid::new_v4(), "total": "5.00"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST: {e}"));
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let id = body["pedidoId"].as_str().and_then(|id| Uuid::parse_str(id).ok()).unwrap_or_else(|| panic!("{body}"));
    let view = wait_stored(&orders, id, 1, false).await;
    assert_eq!(view.order.versiones[0].origin.trace_id, None, "no context is propagated with traces off");
    for service in [&api, &process] {
        for sample in [
            "pedidos_trace_spans_exported_total",
            "pedidos_trace_spans_dropped_total{reason=\"queue_full\"}",
            "pedidos_trace_spans_dropped_total{reason=\"export_failed\"}",
        ] {
            assert_eq!(service.metric(sample).await, Some(0.0), "{}: {sample}", service.name());
        }
        assert!(!service.log_text().contains("traces on"), "{}: no exporter started", service.name());
        assert!(service.log_json().iter().all(|l| l.get("trace_id").is_none()), "{}: no trace ids", service.name());
    }
    // A traced process flushes at exit: once both have exited, nothing can still be on its way.
    for service in [&mut api, &mut process] {
        service.signal_term();
        assert!(service.wait_exit(Duration::from_secs(40)).await.is_some_and(|s| s.success()), "{}", service.name());
    }
    assert_eq!(receiver.requests(), 0, "nothing was sent to the collector");
}

/// A collector that accepts connections and never answers, then one that refuses them: every POST is answered
/// within 1 s and every message applied within 10 s of its POST (the exporter's timeouts are 2 and 3 s, so an
/// export in the way would show), the drop counters rise on the API and the worker, and both stop promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_never_slows_a_request_or_a_message() {
    const REQUEST_BOUND: Duration = Duration::from_secs(1);
    const MESSAGE_BOUND: Duration = Duration::from_secs(10);
    let (emulator, topo, _sqs, orders) = pipeline("t").await;
    let endpoints = emulator.endpoints();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let silent_port = silent.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"));
    let refused_port = e2e::free_port();
    for (what, port) in [("never answers", silent_port), ("refuses", refused_port)] {
        let dead = |builder: ServiceBuilder| {
            builder
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"))
                .env("OTEL_BSP_MAX_QUEUE_SIZE", "4")
                .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
                .env("OTEL_BSP_SCHEDULE_DELAY", "20")
                .env("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")
                .env("OTEL_BSP_EXPORT_TIMEOUT", "3000")
        };
        let mut api = healthy(dead(api_builder(&endpoints, &topo))).await;
        let mut process = healthy(dead(worker_builder(&endpoints, &topo, PROCESS))).await;
        let client = http();
        let mut posted = Vec::new();
        for _ in 0..20 {
            let clock = Instant::now();
            let response = client
                .post(format!("{}/api/pedidos", api.base_url()))
                .json(&serde_json::json!({"clienteId": Uuid::new_v4(), "total": "5.00"}))
                .send()
                .await
                .unwrap_or_else(|e| panic!("POST: {e}"));
            let took = clock.elapsed();
            assert_eq!(response.status(), 202, "{what}");
            assert!(took < REQUEST_BOUND, "collector {what}: a POST took {took:?}");
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let id = body["pedidoId"].as_str().and_then(|id| Uuid::parse_str(id).ok());
            posted.push((id.unwrap_or_else(|| panic!("{body}")), Instant::now()));
        }
        for (id, accepted) in &posted {
            wait_stored(&orders, *id, 1, false).await;
            let took = accepted.elapsed();
            assert!(took < MESSAGE_BOUND, "collector {what}: order {id} applied {took:?} after its 202");
        }
        for service in [&api, &process] {
            let dropped = eventually(Duration::from_secs(20), Duration::from_millis(200), || async {
                let full = service.metric("pedidos_trace_spans_dropped_total{reason=\"queue_full\"}").await?;
                let failed = service.metric("pedidos_trace_spans_dropped_total{reason=\"export_failed\"}").await?;
                (full > 0.0 && failed > 0.0).then_some(full + failed)
            })
            .await;
            assert!(dropped > 0.0, "{what}: {}", service.name());
            assert_eq!(service.metric("pedidos_trace_spans_exported_total").await, Some(0.0), "{what}");
        }
        for service in [&mut api, &mut process] {
            let clock = Instant::now();
            service.signal_term();
            let status = service.wait_exit(Duration::from_secs(40)).await;
            assert!(status.is_some_and(|s| s.success()), "{what}: {} did not stop cleanly", service.name());
            // The worker's long poll (1 s here) and the flush budget (2 s) bound it.
            assert!(
                clock.elapsed() < Duration::from_secs(10),
                "{what}: {} took {:?} to stop",
                service.name(),
                clock.elapsed()
            );
        }
    }
    drop(silent);
}
