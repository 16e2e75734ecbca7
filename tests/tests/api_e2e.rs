//! `pedidos-api` end to end: the real binary, a real emulator, the real SNS -> SQS fan-out.
//!
//! Each test starts its own emulator (so pausing one affects no other test) and its own API process.
//! Needs the binaries built: `./scripts/test` (or `cargo build --workspace --bins`) does that first.

use std::time::{Duration, Instant};

use domain::{EventType, Payload};
use e2e::{
    api_builder, drain, envelope, eventually, free_port, http, sdk, topology, unique, worker_builder, Emulator,
    Service, Topology,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

const CLIENTE: &str = "6f1c2a0e-9a51-4c1e-8d0b-0c8f4f1a2b3c";
const HEALTHY: Duration = Duration::from_secs(20);
const DELIVERY: Duration = Duration::from_secs(15);
/// `ADMIN_TOKEN` of the APIs that need the admin surface (subscriptions are admin routes).
const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdefghij";

/// Starts `pedidos-api` against `emulator` with the topic given as `var=value`, reading `topology`'s orders table.
async fn start_api(emulator: &Emulator, topology: &Topology, name: &str, var: &str, value: &str) -> Service {
    let mut api = Service::builder("pedidos-api")
        .name(unique(name))
        .endpoints(emulator.endpoints())
        .env(var, value)
        .env("ORDERS_TABLE", &topology.orders_table)
        .spawn();
    api.wait_healthy(HEALTHY).await;
    api
}

async fn post_raw(
    api: &Service,
    path: &str,
    body: &str,
    request_id: &str,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    send_json(http().post(format!("{}{path}", api.base_url())), body, request_id).await
}

async fn put_raw(
    api: &Service,
    path: &str,
    body: &str,
    request_id: &str,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    send_json(http().put(format!("{}{path}", api.base_url())), body, request_id).await
}

/// Sends `body` as JSON with `request_id`, returning status, parsed body and headers.
async fn send_json(
    request: reqwest::RequestBuilder,
    body: &str,
    request_id: &str,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let response = request
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .body(body.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("sending a JSON request: {e}"));
    read(response).await
}

async fn get(api: &Service, path: &str) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let response =
        http().get(format!("{}{path}", api.base_url())).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    read(response).await
}

async fn read(response: reqwest::Response) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_else(|e| panic!("reading the body: {e}"));
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, headers)
}

/// Reads exactly one message from each of the topology's queues and returns their SNS envelopes.
async fn one_from_each_queue(topology: &Topology, endpoints: &e2e::Endpoints) -> Vec<Value> {
    let (_, sqs) = sdk(endpoints).await;
    let mut envelopes = Vec::new();
    for queue in &topology.queues {
        let messages = drain(&sqs, &queue.url, 1, DELIVERY).await;
        assert_eq!(messages.len(), 1, "expected one message on {}", queue.name);
        envelopes.push(envelope(&messages[0]));
    }
    envelopes
}

/// Asserts an SNS envelope's string attribute `name` is `value` (with its SNS data type).
fn assert_attribute(envelope: &Value, name: &str, data_type: &str, value: &str) {
    let attribute = &envelope["MessageAttributes"][name];
    assert_eq!(attribute["Type"], json!(data_type), "attribute {name} in {envelope}");
    assert_eq!(attribute["Value"], json!(value), "attribute {name} in {envelope}");
}

/// A POST reaches both queues through SNS: envelope, subject, topic, attributes, and money byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reaches_both_queues_with_envelope_attributes_and_exact_money() {
    let emulator = Emulator::start().await;
    let suffix = unique("post");
    let topology = topology(&emulator, &suffix).await;
    let api = start_api(&emulator, &topology, "api-post", "SNS_TOPIC_ARN", &topology.topic_arn).await;

    let pedido_id = uuid::Uuid::new_v4().to_string();
    let request_id = unique("req");
    let body = format!(
        r#"{{"pedidoId":"{pedido_id}","clienteId":"{CLIENTE}","fecha":"2026-11-21T10:30:00-03:00","total":0.30,
            "items":[{{"productoId":"SKU-1","cantidad":3,"precioUnitario":0.10}}]}}"#
    );
    let (status, answer, headers) = post_raw(&api, "/api/pedidos", &body, &request_id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["status"], json!("publicado"));
    assert_eq!(answer["pedidoId"], json!(pedido_id));
    assert_eq!(answer["version"], json!(1));
    let message_id = answer["messageId"].as_str().unwrap_or_else(|| panic!("no messageId in {answer}")).to_owned();
    assert_eq!(headers.get("x-request-id").and_then(|v| v.to_str().ok()), Some(request_id.as_str()));

    for envelope in one_from_each_queue(&topology, &emulator.endpoints()).await {
        assert_eq!(envelope["Type"], json!("Notification"), "{envelope}");
        assert_eq!(envelope["Subject"], json!("Nuevo Pedido"), "{envelope}");
        assert_eq!(envelope["TopicArn"], json!(topology.topic_arn), "{envelope}");
        assert_eq!(envelope["MessageId"], json!(message_id), "{envelope}");
        let message = envelope["Message"].as_str().unwrap_or_else(|| panic!("no Message in {envelope}"));
        // Byte-exact money: the digits the client sent, as JSON numbers.
        assert!(message.contains(r#""total":0.30"#), "{message}");
        assert!(message.contains(r#""precioUnitario":0.10"#), "{message}");
        assert!(message.contains(r#""type":"PedidoCreado""#), "{message}");
        assert!(message.contains(r#""version":1"#), "{message}");
        assert!(message.contains(r#""fecha":"2026-11-21T10:30:00-03:00""#), "{message}");
        assert_attribute(&envelope, "eventType", "String", "PedidoCreado");
        assert_attribute(&envelope, "version", "Number", "1");
        assert_attribute(&envelope, "pedidoId", "String", &pedido_id);
        assert_attribute(&envelope, "requestId", "String", &request_id);

        // What the workers will do with it: decode the envelope into the event.
        let body = envelope.to_string();
        let inbound = domain::decode(&body).unwrap_or_else(|e| panic!("decode failed ({e}): {body}"));
        match inbound.payload {
            Payload::Order(event) => {
                assert_eq!(event.event_type, EventType::PedidoCreado);
                assert_eq!(event.order.total.to_string(), "0.30");
                assert_eq!(event.order.pedido_id.to_string(), pedido_id);
            }
            Payload::Other { event_type } => panic!("decoded as unknown type {event_type}"),
        }
    }
    // The request id is on the API's log lines for this request.
    assert!(api.log_text().contains(&request_id), "request id missing from the log:\n{}", api.log_text());
}

/// PUT publishes PedidoActualizado with its own subject and version attribute. It reaches the process queue only:
/// the logistics subscription's filter policy takes `PedidoCreado` alone (a shipment is created once per order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_publishes_pedido_actualizado_to_the_process_queue_only() {
    let emulator = Emulator::start().await;
    let topology = topology(&emulator, &unique("put")).await;
    let api = start_api(&emulator, &topology, "api-put", "SNS_TOPIC_ARN", &topology.topic_arn).await;

    let pedido_id = uuid::Uuid::new_v4().to_string();
    let body = format!(r#"{{"clienteId":"{CLIENTE}","total":"64.50","version":2}}"#);
    let (status, answer, _) = put_raw(&api, &format!("/api/pedidos/{pedido_id}"), &body, "req-put").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["version"], json!(2));

    let (_, sqs) = sdk(&emulator.endpoints()).await;
    let is_process = |q: &&e2e::QueueInfo| q.name.starts_with(platform::topology::PROCESS_QUEUE_NAME);
    let process = topology.queues.iter().find(is_process).unwrap_or_else(|| panic!("no process queue"));
    let messages = drain(&sqs, &process.url, 1, DELIVERY).await;
    assert_eq!(messages.len(), 1, "expected one message on {}", process.name);
    let envelope = envelope(&messages[0]);
    assert_eq!(envelope["Subject"], json!("Pedido actualizado"), "{envelope}");
    let message = envelope["Message"].as_str().unwrap_or_default();
    assert!(message.contains(r#""type":"PedidoActualizado""#), "{message}");
    assert!(message.contains(r#""total":64.50"#), "{message}");
    assert!(message.contains(&format!(r#""pedidoId":"{pedido_id}""#)), "{message}");
    assert_attribute(&envelope, "eventType", "String", "PedidoActualizado");
    assert_attribute(&envelope, "version", "Number", "2");
    assert_attribute(&envelope, "requestId", "String", "req-put");

    // SNS delivered to the process queue already, so a filtered-out copy would have arrived by now too.
    for queue in topology.queues.iter().filter(|q| !is_process(q)) {
        let stray = drain(&sqs, &queue.url, 1, Duration::from_secs(2)).await;
        assert!(stray.is_empty(), "{} received a PedidoActualizado", queue.name);
    }
}

/// A bare topic name (as compose files give it) is resolved to the ARN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_topic_name_is_resolved() {
    let emulator = Emulator::start().await;
    let suffix = unique("bare");
    let topology = topology(&emulator, &suffix).await;
    let name = format!("{}{suffix}", platform::topology::TOPIC_NAME);
    let api = start_api(&emulator, &topology, "api-bare", "SNS_TOPIC_ARN", &name).await;

    let (status, _, _) = get(&api, "/ready").await;
    assert_eq!(status, StatusCode::OK);
    let body = format!(r#"{{"clienteId":"{CLIENTE}","total":12.34}}"#);
    let (status, answer, _) = post_raw(&api, "/api/pedidos", &body, "req-bare").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    for envelope in one_from_each_queue(&topology, &emulator.endpoints()).await {
        assert_eq!(envelope["TopicArn"], json!(topology.topic_arn));
        assert!(envelope["Message"].as_str().unwrap_or_default().contains(r#""total":12.34"#), "{envelope}");
    }
}

/// The seed's variable name TOPIC_ARN works as an alias of SNS_TOPIC_ARN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_arn_alias_is_accepted() {
    let emulator = Emulator::start().await;
    let topology = topology(&emulator, &unique("alias")).await;
    let api = start_api(&emulator, &topology, "api-alias", "TOPIC_ARN", &topology.topic_arn).await;

    let body = format!(r#"{{"ClienteId":"{CLIENTE}","Total":1.50}}"#);
    let (status, answer, _) = post_raw(&api, "/api/pedidos", &body, "req-alias").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let envelopes = one_from_each_queue(&topology, &emulator.endpoints()).await;
    assert_eq!(envelopes.len(), 2);
    assert!(envelopes.iter().all(|e| e["Message"].as_str().unwrap_or_default().contains(r#""total":1.50"#)));
}

/// A frozen emulator yields 503 with Retry-After within 10 s (not a hang), readiness says 503, liveness stays 200,
/// and publishing works again once the emulator is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_emulator_yields_503_not_hangs() {
    let emulator = Emulator::start().await;
    let topology = topology(&emulator, &unique("pause")).await;
    let api = start_api(&emulator, &topology, "api-pause", "SNS_TOPIC_ARN", &topology.topic_arn).await;
    let body = format!(r#"{{"clienteId":"{CLIENTE}","total":9.99}}"#);

    let (status, _, _) = get(&api, "/ready").await;
    assert_eq!(status, StatusCode::OK, "ready while the emulator is up");

    emulator.pause();
    let started = Instant::now();
    let (status, problem, headers) = post_raw(&api, "/api/pedidos", &body, "req-paused").await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert!(elapsed < Duration::from_secs(10), "503 took {elapsed:?}");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"));
    let text = problem.to_string();
    assert!(!text.contains("127.0.0.1") && !text.contains("timeout") && !text.contains("dispatch"), "{text}");

    // Liveness never depends on SNS.
    let started = Instant::now();
    let (status, _, _) = get(&api, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2), "/health took {:?}", started.elapsed());

    // Readiness turns 503 once its cached answer (a few seconds) expires.
    eventually(Duration::from_secs(40), Duration::from_millis(250), || async {
        let (status, _, headers) = get(&api, "/ready").await;
        (status == StatusCode::SERVICE_UNAVAILABLE && headers.get("retry-after").is_some()).then_some(())
    })
    .await;

    emulator.resume();
    let after = format!(r#"{{"clienteId":"{CLIENTE}","total":7.77}}"#);
    eventually(Duration::from_secs(30), Duration::from_millis(250), || async {
        let (status, _, _) = post_raw(&api, "/api/pedidos", &after, "req-resumed").await;
        (status == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), Duration::from_millis(250), || async {
        (get(&api, "/ready").await.0 == StatusCode::OK).then_some(())
    })
    .await;

    // The order accepted after the outage is delivered. (The one answered 503 may also appear: the frozen server
    // had already received its request and processes it once resumed. That is why a 503 says "retry with the same
    // pedidoId" and the workers deduplicate on pedidoId#version.)
    let (_, sqs) = sdk(&emulator.endpoints()).await;
    let messages = drain(&sqs, &topology.queues[0].url, 2, DELIVERY).await;
    assert!(
        messages.iter().any(|m| envelope(m)["Message"].as_str().unwrap_or_default().contains(r#""total":7.77"#)),
        "order published after resume not delivered; got {} message(s)",
        messages.len()
    );
}

/// Without SNS_TOPIC_ARN (or TOPIC_ARN) the API refuses to start and names the variable.
#[tokio::test]
async fn missing_topic_config_exits_non_zero_naming_the_variable() {
    let completed = Service::builder("pedidos-api")
        .name(unique("api-no-topic"))
        .endpoints("http://127.0.0.1:9")
        .run(Duration::from_secs(15))
        .await;
    let status = completed.status.unwrap_or_else(|| panic!("still running after 15 s:\n{}", completed.stderr));
    assert!(!status.success(), "exited with {status}");
    assert!(completed.stderr.contains("SNS_TOPIC_ARN"), "stderr does not name SNS_TOPIC_ARN:\n{}", completed.stderr);
}

/// An invalid ARN is refused at start-up too, naming the variable it came from.
#[tokio::test]
async fn invalid_topic_arn_exits_non_zero_naming_the_variable() {
    let completed = Service::builder("pedidos-api")
        .name(unique("api-bad-arn"))
        .env("TOPIC_ARN", "arn:aws:sns:nope")
        .run(Duration::from_secs(15))
        .await;
    let status = completed.status.unwrap_or_else(|| panic!("still running after 15 s:\n{}", completed.stderr));
    assert!(!status.success(), "exited with {status}");
    assert!(completed.stderr.contains("TOPIC_ARN"), "{}", completed.stderr);
}

/// SIGTERM makes the API stop promptly with exit code 0, also while SNS is unreachable.
#[tokio::test]
async fn sigterm_exits_zero_promptly() {
    // Nothing listens on the endpoint: the API must start and stop regardless. A bare topic name (resolved lazily)
    // rather than an ARN, so no emulator's account id is baked in (moto and LocalStack use different ones).
    let mut api = Service::builder("pedidos-api")
        .name(unique("api-sigterm"))
        .endpoints(format!("http://127.0.0.1:{}", e2e::free_port()))
        .env("SNS_TOPIC_ARN", platform::topology::TOPIC_NAME)
        .spawn();
    api.wait_healthy(HEALTHY).await;
    let started = Instant::now();
    api.signal_term();
    let status = api.wait_exit(Duration::from_secs(5)).await;
    let status = status.unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", api.log_text()));
    assert!(status.success(), "exit status {status}; log:\n{}", api.log_text());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(api.log_text().contains("shutdown requested"), "{}", api.log_text());
}

/// `pedidos-api topology` is idempotent: a second run prints the same ids and adds no subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_subcommand_is_idempotent() {
    let emulator = Emulator::start().await;
    let run = |name: &str| {
        Service::builder("pedidos-api")
            .name(unique(name))
            .endpoints(emulator.endpoints())
            .arg("topology")
            .run(Duration::from_secs(60))
    };
    let first = run("topology-1").await;
    let second = run("topology-2").await;
    for completed in [&first, &second] {
        assert!(completed.status.is_some_and(|s| s.success()), "topology failed: {completed:?}");
    }
    assert_eq!(first.stdout, second.stdout, "a second run must find the same resources");
    let values: std::collections::BTreeMap<&str, &str> =
        first.stdout.lines().filter_map(|l| l.split_once('=')).collect();
    for key in ["SNS_TOPIC_ARN", "PROCESS_QUEUE_URL", "PROCESS_DLQ_URL", "LOGISTICS_QUEUE_URL", "LOGISTICS_DLQ_URL"] {
        assert!(values.get(key).is_some_and(|v| !v.is_empty()), "{key} missing from:\n{}", first.stdout);
    }
    let topic_arn = values["SNS_TOPIC_ARN"];
    assert!(topic_arn.ends_with(":ecomexpress-sns-orders-events"), "{topic_arn}");
    assert!(values["PROCESS_QUEUE_URL"].ends_with("/ecomexpress-sqs-orders-process"), "{}", first.stdout);
    assert!(values["LOGISTICS_DLQ_URL"].ends_with("/ecomexpress-sqs-logistics-dlq"), "{}", first.stdout);

    let (sns, sqs) = sdk(&emulator.endpoints()).await;
    let subscriptions = sns
        .list_subscriptions_by_topic()
        .topic_arn(topic_arn)
        .send()
        .await
        .unwrap_or_else(|e| panic!("list subscriptions: {e}"))
        .subscriptions
        .unwrap_or_default();
    let mut endpoints: Vec<String> = subscriptions
        .iter()
        .filter(|s| s.protocol() == Some("sqs"))
        .filter_map(|s| s.endpoint().map(str::to_owned))
        .collect();
    endpoints.sort();
    assert_eq!(endpoints.len(), 2, "one subscription per queue, got {endpoints:?}");
    assert!(
        endpoints[0].ends_with(":ecomexpress-sqs-logistics")
            && endpoints[1].ends_with(":ecomexpress-sqs-orders-process")
    );

    // Redrive to the DLQ after 5 receives, on both queues.
    for key in ["PROCESS_QUEUE_URL", "LOGISTICS_QUEUE_URL"] {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(values[key])
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .unwrap_or_else(|e| panic!("attributes: {e}"))
            .attributes
            .unwrap_or_default();
        let redrive: Value = attributes
            .get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_else(|| panic!("no RedrivePolicy on {key}: {attributes:?}"));
        assert!(redrive["deadLetterTargetArn"].as_str().is_some_and(|a| a.ends_with("-dlq")), "{redrive}");
        assert_eq!(redrive["maxReceiveCount"].to_string().trim_matches('"'), "5", "{redrive}");
    }
}

/// Email subscriptions through the API, as an operator (bearer `ADMIN_TOKEN`): subscriptions are admin routes,
/// refused (401) without it. A new subscription answers 201 `Pendiente`; its state afterwards is what SNS lists for it
/// (`Pendiente` while `ListSubscriptionsByTopic` shows `PendingConfirmation` instead of an ARN, as AWS does until the
/// recipient clicks the link; `Confirmado` once it shows an ARN). Neither emulator lists one as pending: moto records
/// email subscriptions as confirmed at once, LocalStack lists the ARN of a pending one (docs/emulators.md), so the
/// `Pendiente` state of an existing subscription is covered by the router tests. A subscription limited to some event
/// types carries them as its SNS filter policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_subscription_through_the_api() {
    let emulator = Emulator::start().await;
    let topology = topology(&emulator, &unique("email")).await;
    let mut api = Service::builder("pedidos-api")
        .name(unique("api-email"))
        .endpoints(emulator.endpoints())
        .env("SNS_TOPIC_ARN", &topology.topic_arn)
        .env("ORDERS_TABLE", &topology.orders_table)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .spawn();
    api.wait_healthy(HEALTHY).await;
    let (sns, _) = sdk(&emulator.endpoints()).await;
    let email = format!("{}@example.com", unique("cliente"));
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let subscribe = |body: Value| {
        http()
            .post(format!("{}/api/suscripcion", api.base_url()))
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let as_admin = |path: &str| http().get(format!("{}{path}", api.base_url())).header("authorization", &bearer);
    let list = || async {
        sns.list_subscriptions_by_topic()
            .topic_arn(&topology.topic_arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("list subscriptions: {e}"))
            .subscriptions
            .unwrap_or_default()
    };

    let (status, problem, _) =
        post_raw(&api, "/api/suscripcion", &json!({"email": email}).to_string(), "req-anon").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");

    let (status, answer, _) = send(subscribe(json!({"email": email}))).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer, json!({"email": email, "status": "Pendiente"}));

    let (status, state, _) = send(as_admin(&format!("/api/suscripcion/estado/{email}"))).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let listed = list().await;
    let arn = listed.iter().find(|s| s.endpoint() == Some(email.as_str())).and_then(|s| s.subscription_arn());
    let expected = if arn.is_some_and(|arn| arn.starts_with("arn:")) { "Confirmado" } else { "Pendiente" };
    assert_eq!(state["status"], json!(expected), "SNS lists {arn:?}: {state}");
    let (status, _, _) = get(&api, &format!("/api/suscripcion/estado/{email}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Subscribing again reports the existing subscription instead of creating a second one (`?email=` form).
    let response = http()
        .post(format!("{}/api/suscripcion?email={email}", api.base_url()))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST ?email=: {e}"));
    assert_eq!(response.status(), StatusCode::OK);

    // Only new orders, for the operator in charge of them.
    let altas = format!("{}@example.com", unique("altas"));
    let (status, answer, _) = send(subscribe(json!({"email": altas, "eventTypes": ["PedidoCreado"]}))).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["eventTypes"], json!(["PedidoCreado"]));

    let subscriptions = list().await;
    let emails: Vec<_> = subscriptions.iter().filter(|s| s.protocol() == Some("email")).collect();
    assert_eq!(emails.len(), 2, "{subscriptions:?}");
    for subscription in emails {
        let arn = subscription.subscription_arn().unwrap_or_default();
        let attributes = sns
            .get_subscription_attributes()
            .subscription_arn(arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("subscription attributes of {arn}: {e}"))
            .attributes
            .unwrap_or_default();
        let policy = attributes.get("FilterPolicy").map(|p| serde_json::from_str::<Value>(p).unwrap_or_default());
        if subscription.endpoint() == Some(altas.as_str()) {
            assert_eq!(policy, Some(json!({"eventType": ["PedidoCreado"]})), "{attributes:?}");
        } else {
            assert_eq!(subscription.endpoint(), Some(email.as_str()));
            assert_eq!(policy, None, "no filter: every event: {attributes:?}");
        }
    }

    let (status, problem, _) = send(as_admin("/api/suscripcion/estado/nadie@example.com")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    read(request.send().await.unwrap_or_else(|e| panic!("sending a request: {e}"))).await
}

/// The real binary with `ADMIN_PORT` and `API_KEYS`: two listeners, admin routes only on the admin one, order writes
/// and reads only with a key, and neither credential in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_and_api_keys_on_the_real_binary() {
    let emulator = Emulator::start().await;
    let topology = topology(&emulator, &unique("admin")).await;
    let key = "e2e-api-key-0123456789abcdef";
    let admin_port = free_port();
    let mut api = Service::builder("pedidos-api")
        .name(unique("api-admin"))
        .endpoints(emulator.endpoints())
        .env("SNS_TOPIC_ARN", &topology.topic_arn)
        .env("ORDERS_TABLE", &topology.orders_table)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("ADMIN_PORT", admin_port.to_string())
        .env("API_KEYS", key)
        .spawn();
    api.wait_healthy(HEALTHY).await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let order = json!({"clienteId": CLIENTE, "total": "12.50"}).to_string();

    let (status, problem, headers) = post_raw(&api, "/api/pedidos", &order, "req-nokey").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    assert_eq!(headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("ApiKey"));
    let wrong = http().post(format!("{}/api/pedidos", api.base_url())).header("x-api-key", "not-the-key-0123456789");
    assert_eq!(send_json(wrong, &order, "req-wrong").await.0, StatusCode::FORBIDDEN);
    let right = http().post(format!("{}/api/pedidos", api.base_url())).header("x-api-key", key);
    let (status, answer, _) = send_json(right, &order, "req-key").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let pedido = answer["pedidoId"].as_str().unwrap_or_default().to_owned();
    // Reads need a key too (then 404: no worker applied it here).
    assert_eq!(get(&api, &format!("/api/pedidos/{pedido}")).await.0, StatusCode::UNAUTHORIZED);
    let keyed = http().get(format!("{}/api/pedidos/{pedido}", api.base_url())).header("x-api-key", key);
    assert_eq!(send(keyed).await.0, StatusCode::NOT_FOUND);

    // The main port has no admin route, even for the right token; the admin port has nothing else.
    for path in ["/console/login", "/console/api/session", "/api/suscripcion/estado/x@example.com"] {
        let main = http().get(format!("{}{path}", api.base_url())).header("authorization", &bearer);
        assert_eq!(send(main).await.0, StatusCode::NOT_FOUND, "{path} on the main port");
    }
    assert_eq!(send(http().get(format!("{admin}/health"))).await.0, StatusCode::NOT_FOUND);
    let (status, session, _) =
        send(http().get(format!("{admin}/console/api/session")).header("authorization", &bearer)).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(send(http().get(format!("{admin}/console/api/session"))).await.0, StatusCode::UNAUTHORIZED);
    let login = send(http().get(format!("{admin}/console/login"))).await;
    assert_eq!(login.0, StatusCode::OK);

    // One SIGTERM stops both listeners, gracefully.
    api.signal_term();
    let status = api.wait_exit(Duration::from_secs(5)).await;
    let status = status.unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", api.log_text()));
    assert!(status.success(), "exit status {status}; log:\n{}", api.log_text());

    let log = api.log_text();
    assert!(log.contains("pedidos-api listening") && log.contains(&admin_port.to_string()), "{log}");
    assert!(!log.contains(key) && !log.contains(ADMIN_TOKEN), "a credential reached the log:\n{log}");
}

/// Two API clients on the real API and process worker, replaying the attacks of issue 17: client B cannot read,
/// list, update, re-price, freeze (a huge version) or move (another `clienteId`) client A's order; each of those is
/// a 404 exactly like an unknown order, and A's order stays as A left it. A's own update without `fecha` keeps the
/// date, a version jump past the step is a 422, and the operator reads the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_cannot_reach_each_others_orders() {
    let emulator = Emulator::start().await;
    let topo = topology(&emulator, &unique("owners")).await;
    let (key_a, key_b) = ("key-of-shop-a-0123456789", "key-of-shop-b-0123456789");
    let mut api = api_builder(&emulator.endpoints(), &topo)
        .env("API_KEYS", format!("shop-a:{key_a},shop-b:{key_b}"))
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .spawn();
    let mut worker = worker_builder(&emulator.endpoints(), &topo, 0).spawn();
    api.wait_healthy(HEALTHY).await;
    worker.wait_healthy(HEALTHY).await;
    let call = |method: reqwest::Method, path: &str, key: &str| {
        http().request(method, format!("{}{path}", api.base_url())).header("x-api-key", key.to_owned())
    };
    let fecha = "2026-11-21T10:30:00-03:00";
    let order = json!({"clienteId": CLIENTE, "total": "12.50", "fecha": fecha}).to_string();
    let (status, answer, _) = send_json(call(reqwest::Method::POST, "/api/pedidos", key_a), &order, "req-a1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let pedido = answer["pedidoId"].as_str().unwrap_or_default().to_owned();
    let path = format!("/api/pedidos/{pedido}");
    let applied = eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
        let (status, body, _) = send(call(reqwest::Method::GET, &path, key_a)).await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(applied["total"].to_string(), "12.50");

    let unknown = format!("/api/pedidos/{}", uuid::Uuid::new_v4());
    let (_, absent, _) = send(call(reqwest::Method::GET, &unknown, key_b)).await;
    let shape = |body: &Value, path: &str| {
        let id = path.rsplit('/').next().unwrap_or_default();
        (body["status"].clone(), body["detail"].as_str().unwrap_or_default().replace(id, "<id>"))
    };
    let (status, hidden, _) = send(call(reqwest::Method::GET, &path, key_b)).await;
    assert_eq!((status, shape(&hidden, &path)), (StatusCode::NOT_FOUND, shape(&absent, &unknown)));
    let other_customer = uuid::Uuid::new_v4().to_string();
    for (body, what) in [
        (json!({"clienteId": CLIENTE, "total": "0.01", "version": 2}), "re-price"),
        (json!({"clienteId": CLIENTE, "total": "12.50", "version": 1_000_000}), "freeze"),
        (json!({"clienteId": other_customer, "total": "12.50", "version": 2}), "move"),
    ] {
        let (status, problem, _) = send_json(call(reqwest::Method::PUT, &path, key_b), &body.to_string(), what).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "B's {what}: {problem}");
    }
    let listing = format!("/api/clientes/{CLIENTE}/pedidos");
    let (_, b_list, _) = send(call(reqwest::Method::GET, &listing, key_b)).await;
    assert_eq!(b_list["pedidos"], json!([]), "B lists none of A's orders");
    let (_, a_list, _) = send(call(reqwest::Method::GET, &listing, key_a)).await;
    assert_eq!(a_list["pedidos"][0]["pedidoId"], json!(pedido));

    let (status, problem, _) = send_json(
        call(reqwest::Method::PUT, &path, key_a),
        &json!({"clienteId": CLIENTE, "total": "12.50", "version": 1_000_000}).to_string(),
        "req-a-jump",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["errors"]["version"].is_array(), "{problem}");
    let (status, problem, _) = send_json(
        call(reqwest::Method::PUT, &path, key_a),
        &json!({"clienteId": other_customer, "total": "12.50", "version": 2}).to_string(),
        "req-a-move",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["errors"]["clienteId"].is_array(), "{problem}");
    let update = json!({"clienteId": CLIENTE, "total": "13.00", "version": 2}).to_string();
    let (status, answer, _) = send_json(call(reqwest::Method::PUT, &path, key_a), &update, "req-a2").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let updated = eventually(Duration::from_secs(30), Duration::from_millis(200), || async {
        let (_, body, _) = send(call(reqwest::Method::GET, &path, key_a)).await;
        (body["version"] == json!(2)).then_some(body)
    })
    .await;
    assert_eq!((updated["total"].to_string(), updated["fecha"].clone()), ("13.00".into(), json!(fecha)), "{updated}");
    let operator =
        http().get(format!("{}{path}", api.base_url())).header("authorization", format!("Bearer {ADMIN_TOKEN}"));
    assert_eq!(send(operator).await.0, StatusCode::OK);
    let log = worker.log_text();
    assert!(!log.contains("owner_mismatch"), "nothing of B's reached the worker:\n{log}");
}

// ---------------------------------------------------------------------------------------------------------------
// Order tracking: state a worker applied to DynamoDB, read back through the real binary

/// `GET uri` with optional `If-None-Match`, returning status, headers and the raw body text.
async fn get_text(
    api: &Service,
    path: &str,
    if_none_match: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let mut request = http().get(format!("{}{path}", api.base_url()));
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap_or_else(|e| panic!("reading the body: {e}")))
}

/// The orders table of `topology` on `emulator`, as the workers write it.
async fn orders_store(emulator: &Emulator, topology: &Topology) -> store::dynamo::DynamoOrders {
    store::dynamo::DynamoOrders::new(e2e::dynamodb(&emulator.endpoints()).await, topology.orders_table.clone())
}

fn order_state(
    pedido_id: uuid::Uuid,
    cliente_id: uuid::Uuid,
    fecha: &str,
    total: &str,
    items: Option<Vec<domain::Item>>,
) -> domain::OrderState {
    domain::OrderState {
        pedido_id,
        cliente_id,
        fecha: chrono::DateTime::parse_from_rfc3339(fecha).unwrap_or_else(|e| panic!("{fecha}: {e}")),
        total: total.parse().unwrap_or_else(|e| panic!("{total}: {e}")),
        items,
    }
}

async fn apply(orders: &store::dynamo::DynamoOrders, event: &domain::OrderEvent, request_id: &str) {
    use store::OrderWrites;
    let meta =
        store::ChangeMeta { request_id: Some(request_id.to_owned()), at: chrono::Utc::now(), ..Default::default() };
    let applied = orders.apply(event, &meta).await.unwrap_or_else(|e| panic!("apply: {e}"));
    assert_eq!(applied, store::Applied::Applied);
}

/// What a worker applied to DynamoDB reads back over HTTP: exact money digits, versions, the shipment, an ETag that
/// changes when the shipment appears, 304 on revalidation; a PUT of a stored version is a 409; an unknown order 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_reads_what_a_worker_applied_to_dynamodb() {
    use store::OrderWrites;
    let emulator = Emulator::start().await;
    let topology = topology(&emulator, &unique("track")).await;
    let api = start_api(&emulator, &topology, "api-track", "SNS_TOPIC_ARN", &topology.topic_arn).await;
    let orders = orders_store(&emulator, &topology).await;

    let pedido_id = uuid::Uuid::new_v4();
    let cliente_id = uuid::Uuid::new_v4();
    let line = |price: &str, n: u32| {
        Some(vec![domain::Item {
            producto_id: "SKU-1".into(),
            cantidad: n,
            precio_unitario: price.parse().unwrap_or_default(),
        }])
    };
    let v1 = domain::OrderEvent::created(
        order_state(pedido_id, cliente_id, "2026-11-21T10:30:00-03:00", "59.90", line("29.95", 2)),
        chrono::Utc::now(),
    );
    let v2 = domain::OrderEvent::updated(
        order_state(pedido_id, cliente_id, "2026-11-21T10:30:00-03:00", "0.30", line("0.10", 3)),
        2,
        chrono::Utc::now(),
    );
    apply(&orders, &v1, "req-v1").await;
    apply(&orders, &v2, "req-v2").await;

    let path = format!("/api/pedidos/{pedido_id}");
    let (status, headers, text) = get_text(&api, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let etag = headers.get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(etag, "\"2-0\"");
    // Exact digits through DynamoDB's decimal numbers and back, as JSON numbers.
    assert!(text.contains(r#""total":0.30"#), "{text}");
    assert!(text.contains(r#""precioUnitario":0.10"#), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body["estado"], json!("ACTUALIZADO"));
    assert_eq!(body["clienteId"], json!(cliente_id.to_string()));
    assert_eq!(body["fecha"], json!("2026-11-21T10:30:00-03:00"));
    assert_eq!(body["requestId"], json!("req-v2"));
    assert_eq!(body["envio"], Value::Null);
    let versions: Vec<(Value, Value)> = body["versiones"]
        .as_array()
        .unwrap_or_else(|| panic!("no versiones: {body}"))
        .iter()
        .map(|v| (v["version"].clone(), v["requestId"].clone()))
        .collect();
    assert_eq!(versions, [(json!(1), json!("req-v1")), (json!(2), json!("req-v2"))]);

    let (status, headers, text) = get_text(&api, &path, Some(&etag)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED, "{text}");
    assert!(text.is_empty(), "{text}");
    assert_eq!(headers.get("etag").and_then(|v| v.to_str().ok()), Some(etag.as_str()));

    let shipment = store::Shipment {
        pedido_id,
        tracking_code: "ECX-E2E000000001".into(),
        estado: "PREPARANDO".into(),
        creado_en: chrono::Utc::now(),
        request_id: Some("req-v1".into()),
        origin: Default::default(),
    };
    assert_eq!(orders.create_shipment(&shipment).await.ok(), Some(store::Applied::Applied));
    let (status, headers, text) = get_text(&api, &path, Some(&etag)).await;
    assert_eq!(status, StatusCode::OK, "the shipment changes the ETag: {text}");
    assert_eq!(headers.get("etag").and_then(|v| v.to_str().ok()), Some("\"2-1\""));
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body["envio"]["trackingCode"], json!("ECX-E2E000000001"));

    // The store decides the PUT: version 2 is stored, so it is a 409; version 3 is published.
    let put = |version: u64| format!(r#"{{"clienteId":"{cliente_id}","total":"1.00","version":{version}}}"#);
    let (status, problem, _) = put_raw(&api, &path, &put(2), "req-put-2").await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("version 2 is already applied with a different total"), "{problem}");
    let (status, answer, _) = put_raw(&api, &path, &put(3), "req-put-3").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");

    let (status, problem, _) = get(&api, &format!("/api/pedidos/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("worker"), "{problem}");

    let (status, ready, _) = get(&api, "/ready").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["dependencies"], json!({"sns": "ok", "store": "ok"}));
}

/// An order taken past 5,000 versions (128-character request ids, the longest the API keeps) stays applicable end to
/// end: a PUT of the next version through the API is applied by a real worker, the item stays under 40 KB on
/// DynamoDB, and `GET` returns the documented fields with a bounded history and the count of every version applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_past_five_thousand_versions_stays_applicable_and_small() {
    const SEEDED: u64 = 5_000;
    // Two minutes of DynamoDB writes, and DynamoDB is the same moto in both lanes: once is enough.
    if e2e::Lane::current() == e2e::Lane::LocalStack {
        println!("an_order_past_five_thousand_versions_stays_applicable_and_small: run in the moto lane only");
        return;
    }
    let emulator = Emulator::start().await;
    let topology = topology(&emulator, &unique("long")).await;
    let api = start_api(&emulator, &topology, "api-long", "SNS_TOPIC_ARN", &topology.topic_arn).await;
    let mut worker = e2e::worker_builder(&emulator.endpoints(), &topology, 0).spawn();
    worker.wait_healthy(HEALTHY).await;
    let orders = orders_store(&emulator, &topology).await;
    let (pedido_id, cliente_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let long_id = |version: u64| format!("{version:0>128}");
    // The first 5,000 versions straight through the store (the worker's own write), so the test takes seconds.
    for version in 1..=SEEDED {
        let state = order_state(pedido_id, cliente_id, "2026-11-21T10:30:00-03:00", &format!("{version}.00"), None);
        let event = if version == 1 {
            domain::OrderEvent::created(state, chrono::Utc::now())
        } else {
            domain::OrderEvent::updated(state, version, chrono::Utc::now())
        };
        apply(&orders, &event, &long_id(version)).await;
    }
    let next = SEEDED + 1;
    let body = format!(r#"{{"clienteId":"{cliente_id}","total":"{next}.00","version":{next}}}"#);
    let path = format!("/api/pedidos/{pedido_id}");
    let (status, answer, _) = put_raw(&api, &path, &body, &long_id(next)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let body = eventually(DELIVERY * 4, Duration::from_millis(200), || async {
        let (status, body, _) = get(&api, &path).await;
        (status == StatusCode::OK && body["version"] == json!(next)).then_some(body)
    })
    .await;
    for field in ["pedidoId", "version", "estado", "clienteId", "fecha", "total", "creadoEn", "actualizadoEn"] {
        assert!(!body[field].is_null(), "{field} missing: {body}");
    }
    assert_eq!((body["estado"].clone(), body["requestId"].clone()), (json!("ACTUALIZADO"), json!(long_id(next))));
    assert_eq!(body["versionesAplicadas"], json!(next));
    let history: Vec<u64> = body["versiones"]
        .as_array()
        .map(|v| v.iter().filter_map(|e| e["version"].as_u64()).collect())
        .unwrap_or_default();
    assert!((20..=40).contains(&history.len()), "bounded history: {history:?}");
    assert_eq!(history.last(), Some(&next));
    let size =
        e2e::order_item_size(&e2e::dynamodb(&emulator.endpoints()).await, &topology.orders_table, pedido_id).await;
    assert!(size < 40_000, "the item is {size} bytes");
    println!("order at version {next}: item {size} bytes, {} history entries", history.len());
}

/// An item the API cannot decode (written by hand: `version` as the string "three") is a 500 whose body names
/// neither the key, the attribute, nor the table; the log names the key and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_stored_item_is_500_without_internals() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let emulator = Emulator::start().await;
    let topology = topology(&emulator, &unique("corrupt")).await;
    let api = start_api(&emulator, &topology, "api-corrupt", "SNS_TOPIC_ARN", &topology.topic_arn).await;

    let pedido_id = uuid::Uuid::new_v4();
    let key = store::dynamo::order_key(pedido_id);
    let s = |v: &str| AttributeValue::S(v.to_owned());
    e2e::dynamodb(&emulator.endpoints())
        .await
        .put_item()
        .table_name(&topology.orders_table)
        .item("pk", s(&key))
        .item("tipo", s("PEDIDO"))
        .item("pedidoId", s(&pedido_id.to_string()))
        .item("version", s("three"))
        .item("estado", s("CREADO"))
        .item("clienteId", s(CLIENTE))
        .item("fecha", s("2026-11-21T10:30:00Z"))
        .item("fechaOrden", s(&format!("2026-11-21T10:30:00.000Z#{pedido_id}")))
        .item("total", AttributeValue::N("1.00".into()))
        .item("creadoEn", s("2026-11-21T10:30:01.000Z"))
        .item("actualizadoEn", s("2026-11-21T10:30:01.000Z"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put_item: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)));

    let (status, headers, text) = get_text(&api, &format!("/api/pedidos/{pedido_id}"), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"));
    for internal in ["PEDIDO#", "three", "version", &topology.orders_table, "dynamo", "Dynamo"] {
        assert!(!text.contains(internal), "{internal:?} in {text}");
    }
    // The same item breaks its customer's listing the same way.
    let (status, _, text) = get_text(&api, &format!("/api/clientes/{CLIENTE}/pedidos"), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    assert!(!text.contains("PEDIDO#") && !text.contains("three"), "{text}");

    let log = api.log_text();
    assert!(log.contains(&key) && log.contains("version is not a number"), "key and reason not logged:\n{log}");
}

/// A customer's orders on DynamoDB, newest first across two pages: the cursor of page one leads to the rest, and
/// the last page has no cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_orders_page_across_two_pages_on_dynamodb() {
    let emulator = Emulator::start().await;
    let topology = topology(&emulator, &unique("pages")).await;
    let api = start_api(&emulator, &topology, "api-pages", "SNS_TOPIC_ARN", &topology.topic_arn).await;
    let orders = orders_store(&emulator, &topology).await;

    let cliente_id = uuid::Uuid::new_v4();
    let mut ids = Vec::new();
    for (i, fecha) in
        ["2026-11-01T09:00:00Z", "2026-11-02T09:00:00-03:00", "2026-11-03T09:00:00+01:00"].iter().enumerate()
    {
        let id = uuid::Uuid::new_v4();
        let event = domain::OrderEvent::created(order_state(id, cliente_id, fecha, "10.50", None), chrono::Utc::now());
        apply(&orders, &event, &format!("req-{i}")).await;
        ids.push(id.to_string());
    }
    // Another customer's order never shows up.
    let other = domain::OrderEvent::created(
        order_state(uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), "2026-11-02T12:00:00Z", "1.00", None),
        chrono::Utc::now(),
    );
    apply(&orders, &other, "req-other").await;

    let base = format!("/api/clientes/{cliente_id}/pedidos");
    let (status, first, _) = get(&api, &format!("{base}?limit=2")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let cursor = first["nextCursor"].as_str().unwrap_or_else(|| panic!("no cursor on page one: {first}")).to_owned();
    let (status, second, _) = get(&api, &format!("{base}?limit=2&cursor={cursor}")).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["nextCursor"], Value::Null, "{second}");

    let seen: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|page| page["pedidos"].as_array().cloned().unwrap_or_default())
        .map(|p| p["pedidoId"].as_str().unwrap_or_default().to_owned())
        .collect();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    assert_eq!(first["pedidos"][0]["total"].to_string(), "10.50", "{first}");

    let (status, problem, _) = get(&api, &format!("{base}?cursor=zz")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["errors"]["cursor"].is_array(), "{problem}");
}
