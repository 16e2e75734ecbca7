//! `pedidos-admin dlq` against a real SQS emulator: the real binary, the project's topology, and DLQ messages put there
//! the way the worker dead-letters poison (`rejectReason`, `rejectDetail`, `sourceQueue`, `originalMessageId`, then
//! the original attributes). Every outcome is asserted from the queues' real state: depths (visible and in flight)
//! and the messages themselves, received back.
//!
//! An unfiltered redrive takes whichever path the endpoint offers: `StartMessageMoveTask` where it exists (LocalStack,
//! AWS), otherwise the fallback (copy, then delete; moto has no move tasks). The moto lane exercises the fallback and
//! the decision to fall back, the LocalStack lane the move task (docs/emulators.md).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use e2e::{
    api_builder, drain, eventually, http, queue_depth, sdk, topology, unique, worker_builder, Completed, Emulator,
    QueueInfo, Service,
};
use serde_json::{json, Value};

const RUN: Duration = Duration::from_secs(60);
/// A redrive of one message, its watch for the copy coming back included, ends well within this.
const QUICK: Duration = Duration::from_secs(25);
const DRAIN: Duration = Duration::from_secs(5);
const HEALTHY: Duration = Duration::from_secs(20);
const PROCESS: usize = 0;
/// `ADMIN_TOKEN` of the API whose console is tested.
const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdefghij";
/// What the walk prints on stderr when it stopped while SQS still counted messages it had not received.
const INCOMPLETE: &str = "incomplete: SQS still counts about";

/// The emulator with the topology under a fresh suffix, and an SQS client for it.
async fn setup() -> (Emulator, e2e::Topology, aws_sdk_sqs::Client) {
    let emulator = Emulator::start().await;
    let topo = topology(&emulator, &unique("-admin")).await;
    let (_, sqs) = sdk(&emulator.endpoints()).await;
    (emulator, topo, sqs)
}

/// The attributes the API publishes for an order, as the queue received them.
fn original_attributes(pedido_id: &str) -> BTreeMap<String, (String, String)> {
    BTreeMap::from([
        ("eventType".to_owned(), ("String".to_owned(), "PedidoCreado".to_owned())),
        ("version".to_owned(), ("Number".to_owned(), "1".to_owned())),
        ("pedidoId".to_owned(), ("String".to_owned(), pedido_id.to_owned())),
        ("requestId".to_owned(), ("String".to_owned(), format!("req-{pedido_id}"))),
    ])
}

/// A message in `queue`'s DLQ as the worker puts it there: its own attributes first, then the original ones.
/// Returns the DLQ message id.
async fn dead_letter(
    sqs: &aws_sdk_sqs::Client,
    queue: &QueueInfo,
    source_queue: Option<&str>,
    reason: &str,
    body: &str,
    pedido_id: &str,
) -> String {
    dead_letter_to(sqs, &queue.dlq_url, source_queue, reason, body, pedido_id, None).await
}

/// [`dead_letter`] into the queue at `dlq_url`; a FIFO one needs the message `group` (the deduplication id is
/// unique per call).
async fn dead_letter_to(
    sqs: &aws_sdk_sqs::Client,
    dlq_url: &str,
    source_queue: Option<&str>,
    reason: &str,
    body: &str,
    pedido_id: &str,
    group: Option<&str>,
) -> String {
    let text = |value: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .unwrap_or_else(|e| panic!("attribute: {e}"))
    };
    let mut request = sqs
        .send_message()
        .queue_url(dlq_url)
        .message_body(body)
        .message_attributes("rejectReason", text(reason))
        .message_attributes("rejectDetail", text(&format!("the worker said {reason}")))
        .message_attributes("originalMessageId", text(&uuid::Uuid::new_v4().to_string()));
    if let Some(source_queue) = source_queue {
        request = request.message_attributes("sourceQueue", text(source_queue));
    }
    if let Some(group) = group {
        request = request.message_group_id(group).message_deduplication_id(uuid::Uuid::new_v4().to_string());
    }
    for (name, (data_type, value)) in original_attributes(pedido_id) {
        let value = MessageAttributeValue::builder()
            .data_type(data_type)
            .string_value(value)
            .build()
            .unwrap_or_else(|e| panic!("attribute: {e}"));
        request = request.message_attributes(name, value);
    }
    let output = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("send to {dlq_url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
    output.message_id.unwrap_or_else(|| panic!("no MessageId from the DLQ send"))
}

/// An SNS envelope around `message`, as a subscription without raw delivery writes it.
fn envelope(message: &str) -> String {
    serde_json::json!({"Type": "Notification", "MessageId": uuid::Uuid::new_v4().to_string(), "Message": message})
        .to_string()
}

/// One message of each kind the worker dead-letters, in the process queue's DLQ: two `not_json` (one with terminal
/// control characters in its body), one `unknown_event_type`. Returns `(id, reason, body, pedidoId)`.
async fn seed(sqs: &aws_sdk_sqs::Client, queue: &QueueInfo) -> Vec<(String, String, String, String)> {
    let bodies = [
        ("not_json", "{not json".to_owned()),
        // The 8-bit CSI (a terminal escape) and a bidirectional override: control characters SQS accepts. It refuses
        // ESC and the other C0 controls but tab, newline and carriage return (InvalidMessageContents), so a body
        // with those never reaches a DLQ. moto accepts them anyway, LocalStack refuses them (docs/emulators.md).
        ("not_json", "\u{9b}31mred\u{202e}\nalert".to_owned()),
        ("unknown_event_type", envelope(r#"{"type":"PedidoBorrado","pedidoId":"p-3","total":0.30}"#)),
    ];
    let mut seeded = Vec::new();
    for (i, (reason, body)) in bodies.into_iter().enumerate() {
        let pedido_id = format!("p-{i}-{}", unique("order"));
        let id = dead_letter(sqs, queue, Some(&queue.url), reason, &body, &pedido_id).await;
        seeded.push((id, reason.to_owned(), body, pedido_id));
    }
    seeded
}

/// `n` messages in the process queue's DLQ, all `not_json`, each with its own body. Returns the bodies, sorted.
async fn seed_many(sqs: &aws_sdk_sqs::Client, queue: &QueueInfo, n: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for i in 0..n {
        let body = format!("poison {i:02}");
        dead_letter(sqs, queue, Some(&queue.url), "not_json", &body, &format!("p-{i}-{}", unique("order"))).await;
        bodies.push(body);
    }
    bodies.sort_unstable();
    bodies
}

/// The bodies of `messages`, sorted.
fn bodies(messages: &[Message]) -> Vec<String> {
    let mut bodies: Vec<String> = messages.iter().filter_map(Message::body).map(str::to_owned).collect();
    bodies.sort_unstable();
    bodies
}

/// A FIFO queue named after `prefix`; returns its URL.
async fn fifo_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> String {
    sqs.create_queue()
        .queue_name(format!("{}.fifo", unique(prefix)))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap_or_else(|e| panic!("create FIFO queue: {}", aws_sdk_sqs::error::DisplayErrorContext(e)))
        .queue_url
        .unwrap_or_else(|| panic!("no URL for the FIFO queue"))
}

/// Makes `dlq_url` the dead-letter queue of `source_url` (its redrive policy), as the topology does for its queues.
async fn dead_letter_target(sqs: &aws_sdk_sqs::Client, source_url: &str, dlq_url: &str) {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap_or_else(|e| panic!("attributes of {dlq_url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
    let arn = attributes.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn));
    let arn = arn.unwrap_or_else(|| panic!("no QueueArn for {dlq_url}"));
    let policy = json!({"deadLetterTargetArn": arn, "maxReceiveCount": "5"}).to_string();
    sqs.set_queue_attributes()
        .queue_url(source_url)
        .attributes(QueueAttributeName::RedrivePolicy, policy)
        .send()
        .await
        .unwrap_or_else(|e| panic!("redrive policy of {source_url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
}

/// `pedidos-admin` with `args`, its SDK pointed at `emulator`, run to completion.
async fn admin(emulator: &Emulator, args: &[&str]) -> Completed {
    let mut builder = Service::builder("pedidos-admin").name(unique("admin")).endpoints(emulator.endpoints());
    for arg in args {
        builder = builder.arg(*arg);
    }
    builder.run(RUN).await
}

fn code(run: &Completed) -> Option<i32> {
    run.status.and_then(|status| status.code())
}

fn explain(run: &Completed) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", run.status, run.stdout, run.stderr)
}

/// The message's attributes as `name -> (type, value)`.
fn attributes(message: &Message) -> BTreeMap<String, (String, String)> {
    message
        .message_attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| {
                    (name.clone(), (value.data_type().to_owned(), value.string_value().unwrap_or_default().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn list_shows_every_message_with_its_reason_and_leaves_them_all_visible() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let seeded = seed(&sqs, queue).await;

    let run = admin(&emulator, &["dlq", "list", "--queue", &queue.url]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "one line per message; {}", explain(&run));
    for (id, reason, _, _) in &seeded {
        let line = lines.iter().find(|line| line.starts_with(id.as_str()));
        let line = line.unwrap_or_else(|| panic!("no line for {id}; {}", explain(&run)));
        assert!(line.contains(&format!(" reason={reason} ")), "{line}");
        assert!(line.contains(" receives=") && line.contains(" age="), "{line}");
    }
    // Control characters are escaped; an SNS envelope is previewed by its inner message.
    assert!(run.stdout.contains(r"body=\u{9b}31mred\u{202e}\nalert"), "{}", explain(&run));
    assert!(!run.stdout.contains(['\u{9b}', '\u{202e}']), "a raw control character reached stdout");
    assert!(run.stdout.contains(r#"body={"type":"PedidoBorrado""#), "{}", explain(&run));
    // Listing consumed nothing and hid nothing.
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (3, 0));

    let run = admin(&emulator, &["dlq", "list", "--queue", &queue.url, "--json"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    let objects: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert_eq!(objects.len(), 3);
    for (id, reason, body, pedido_id) in &seeded {
        let object = objects.iter().find(|o| o["messageId"] == id.as_str());
        let object = object.unwrap_or_else(|| panic!("{id} missing from {objects:?}"));
        assert_eq!(object["rejectReason"], reason.as_str());
        assert_eq!(object["sourceQueue"], queue.url.as_str());
        assert_eq!(object["body"], body.as_str());
        assert_eq!(object["attributes"]["pedidoId"]["value"], pedido_id.as_str());
    }
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (3, 0));
}

#[tokio::test]
async fn list_filters_by_reason_age_and_max_and_finds_the_dlq_either_way() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let seeded = seed(&sqs, queue).await;

    let run = admin(&emulator, &["dlq", "list", "--queue", &queue.url, "--reason", "unknown_event_type"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert_eq!(run.stdout.lines().count(), 1, "{}", explain(&run));
    assert!(run.stdout.starts_with(&seeded[2].0), "{}", explain(&run));

    // Exact match only.
    let run = admin(&emulator, &["dlq", "list", "--queue", &queue.url, "--reason", "not_jso"]).await;
    assert_eq!((code(&run), run.stdout.as_str()), (Some(0), ""), "{}", explain(&run));

    // Nothing is a day old yet; everything is at least 0 s old.
    let run = admin(&emulator, &["dlq", "list", "--queue", &queue.url, "--older-than", "1d"]).await;
    assert_eq!((code(&run), run.stdout.as_str()), (Some(0), ""), "{}", explain(&run));
    let run = admin(&emulator, &["dlq", "list", "--queue", &queue.url, "--older-than", "0s"]).await;
    assert_eq!(run.stdout.lines().count(), 3, "{}", explain(&run));

    let run = admin(&emulator, &["dlq", "list", "--queue", &queue.url, "--max", "2"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert_eq!(run.stdout.lines().count(), 2, "{}", explain(&run));

    // The DLQ directly, by URL and by name.
    let dlq_name = queue.dlq_url.rsplit('/').next().unwrap_or_default();
    for dlq in [queue.dlq_url.as_str(), dlq_name] {
        let run = admin(&emulator, &["dlq", "list", "--dlq", dlq, "--reason", "not_json"]).await;
        assert_eq!(code(&run), Some(0), "{}", explain(&run));
        assert_eq!(run.stdout.lines().count(), 2, "{}", explain(&run));
    }
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (3, 0));
}

#[tokio::test]
async fn show_prints_the_full_body_and_every_attribute() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let seeded = seed(&sqs, queue).await;
    let (id, _, _, pedido_id) = &seeded[2];

    let run = admin(&emulator, &["dlq", "show", "--queue", &queue.url, id]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    for expected in [
        format!("message id:    {id}"),
        "rejectReason (String): unknown_event_type".to_owned(),
        "rejectDetail (String): the worker said unknown_event_type".to_owned(),
        format!("sourceQueue (String): {}", queue.url),
        format!("pedidoId (String): {pedido_id}"),
        "version (Number): 1".to_owned(),
        // The SNS Message is parsed and pretty-printed too; money keeps its digits.
        "\"type\": \"PedidoBorrado\"".to_owned(),
        "\"total\": 0.30".to_owned(),
    ] {
        assert!(run.stdout.contains(&expected), "missing {expected:?}; {}", explain(&run));
    }

    let run = admin(&emulator, &["dlq", "show", "--queue", &queue.url, "no-such-id"]).await;
    assert_eq!(code(&run), Some(1), "{}", explain(&run));
    assert!(run.stderr.contains("no-such-id"), "{}", explain(&run));
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (3, 0));
}

#[tokio::test]
async fn a_dry_run_redrive_or_purge_changes_nothing() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    seed(&sqs, queue).await;

    let run = admin(&emulator, &["dlq", "redrive", "--queue", &queue.url, "--dry-run"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert_eq!(run.stdout.lines().filter(|line| line.starts_with("would redrive ")).count(), 3, "{}", explain(&run));
    assert!(run.stdout.contains(&format!(" to={}", queue.url)), "{}", explain(&run));
    assert!(run.stdout.contains("would-redrive=3 skipped=0 failed=0"), "{}", explain(&run));

    let run = admin(&emulator, &["dlq", "purge", "--queue", &queue.url, "--dry-run", "--reason", "not_json"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert!(run.stdout.contains("would-purge=2 skipped=1 failed=0"), "{}", explain(&run));

    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (3, 0));
    assert_eq!(queue_depth(&sqs, &queue.url).await, (0, 0));
}

#[tokio::test]
async fn redrive_moves_the_selected_messages_with_their_body_and_original_attributes() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let seeded = seed(&sqs, queue).await;

    let run =
        admin(&emulator, &["dlq", "redrive", "--queue", &queue.url, "--reason", "not_json", "--rate", "20"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert!(run.stdout.contains("redriven=2 skipped=1 failed=0"), "{}", explain(&run));

    // The unselected message is still in the DLQ, visible.
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (1, 0));
    let left = drain(&sqs, &queue.dlq_url, 1, DRAIN).await;
    assert_eq!(left.iter().map(|m| m.message_id().unwrap_or_default()).collect::<Vec<_>>(), [seeded[2].0.as_str()]);

    // The source queue got each selected message once: same body, the original attributes, no reject* ones.
    let moved = drain(&sqs, &queue.url, 3, DRAIN).await;
    assert_eq!(moved.len(), 2, "{moved:?}");
    for (_, _, body, pedido_id) in seeded.iter().filter(|(_, reason, _, _)| reason == "not_json") {
        let copy = moved.iter().find(|m| m.body() == Some(body.as_str()));
        let copy = copy.unwrap_or_else(|| panic!("no copy of {body:?} in {moved:?}"));
        assert_eq!(attributes(copy), original_attributes(pedido_id));
    }
}

/// An unfiltered redrive moves the whole DLQ back to its queue, by a move task where the endpoint has one, otherwise
/// message by message after one line saying why. Either way every message arrives once and the DLQ ends empty.
#[tokio::test]
async fn an_unfiltered_redrive_moves_everything_by_move_task_or_by_copy_then_delete() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let seeded = seed(&sqs, queue).await;

    let run = admin(&emulator, &["dlq", "redrive", "--queue", &unique("no-such-queue")]).await;
    assert_eq!(code(&run), Some(1), "an unknown queue is a runtime failure; {}", explain(&run));

    let run = admin(&emulator, &["dlq", "redrive", "--queue", &queue.url]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    // Exactly one path, announced once. The fallback's reason comes from the endpoint's answer (moto: HTTP 500 without
    // an AWS error code), not from its message text.
    let lines = |needle: &str| run.stderr.lines().filter(|line| line.contains(needle)).count();
    let paths = (lines("started move task"), lines("StartMessageMoveTask is not supported"));
    assert!(paths == (1, 0) || paths == (0, 1), "(move task, fallback) = {paths:?}; {}", explain(&run));
    assert!(run.stdout.contains("redriven=3 skipped=0 failed=0"), "{}", explain(&run));
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (0, 0));
    let moved = drain(&sqs, &queue.url, 4, DRAIN).await;
    let mut bodies: Vec<&str> = moved.iter().filter_map(Message::body).collect();
    let mut expected: Vec<&str> = seeded.iter().map(|(_, _, body, _)| body.as_str()).collect();
    bodies.sort_unstable();
    expected.sort_unstable();
    assert_eq!(bodies, expected);

    // Nothing left: success, nothing to do.
    let run = admin(&emulator, &["dlq", "redrive", "--queue", &queue.url, "--reason", "not_json"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert!(run.stdout.contains("redriven=0 skipped=0 failed=0"), "{}", explain(&run));
}

#[tokio::test]
async fn redrive_by_dlq_sends_messages_without_a_source_attribute_to_the_queue_sqs_names() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    // Dead-lettered by the redrive policy rather than the worker: no sourceQueue attribute.
    dead_letter(&sqs, queue, None, "not_json", "orphan", "p-orphan").await;

    let run = admin(&emulator, &["dlq", "redrive", "--dlq", &queue.dlq_url, "--max", "5"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert!(run.stdout.contains("redriven=1 skipped=0 failed=0"), "{}", explain(&run));
    let moved = drain(&sqs, &queue.url, 1, DRAIN).await;
    assert_eq!(moved.iter().filter_map(Message::body).collect::<Vec<_>>(), ["orphan"]);
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (0, 0));
}

#[tokio::test]
async fn a_redrive_whose_copy_fails_leaves_the_message_in_the_dlq_and_exits_3() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    // The source queue takes at most 1 KiB, the DLQ more: the copy of a larger message is refused by SQS.
    sqs.set_queue_attributes()
        .queue_url(&queue.url)
        .attributes(QueueAttributeName::MaximumMessageSize, "1024")
        .send()
        .await
        .unwrap_or_else(|e| panic!("set MaximumMessageSize: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
    let stuck = dead_letter(&sqs, queue, Some(&queue.url), "not_json", &"x".repeat(2000), "p-big").await;
    dead_letter(&sqs, queue, Some(&queue.url), "not_json", "for the queue", "p-ok").await;

    let run = admin(&emulator, &["dlq", "redrive", "--queue", &queue.url, "--reason", "not_json"]).await;
    assert_eq!(code(&run), Some(3), "{}", explain(&run));
    assert!(run.stdout.contains("redriven=1 skipped=0 failed=1"), "{}", explain(&run));
    assert!(run.stderr.contains(&format!("failed {stuck}")), "{}", explain(&run));
    // Never deleted before the copy was confirmed: still there, visible again.
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (1, 0));
    let left = drain(&sqs, &queue.dlq_url, 1, DRAIN).await;
    assert_eq!(left.iter().filter_map(Message::message_id).collect::<Vec<_>>(), [stuck.as_str()]);
    assert_eq!(drain(&sqs, &queue.url, 2, DRAIN).await.len(), 1);
}

#[tokio::test]
async fn purge_with_a_filter_deletes_only_those_and_everything_needs_yes() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let seeded = seed(&sqs, queue).await;

    let run = admin(&emulator, &["dlq", "purge", "--queue", &queue.url, "--reason", "not_json"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert!(run.stdout.contains("purged=2 skipped=1 failed=0"), "{}", explain(&run));
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (1, 0));

    // Everything, without --yes and without a terminal to ask on: refused, nothing deleted.
    let run = admin(&emulator, &["dlq", "purge", "--queue", &queue.url]).await;
    assert_eq!(code(&run), Some(2), "{}", explain(&run));
    assert!(run.stderr.contains("--yes"), "{}", explain(&run));
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (1, 0));
    let left = admin(&emulator, &["dlq", "list", "--queue", &queue.url]).await;
    assert!(left.stdout.starts_with(&seeded[2].0), "{}", explain(&left));

    let run = admin(&emulator, &["dlq", "purge", "--queue", &queue.url, "--yes"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (0, 0));
    // The source queue was never touched.
    assert_eq!(queue_depth(&sqs, &queue.url).await, (0, 0));
}

#[tokio::test]
async fn usage_and_configuration_errors_exit_2_before_touching_anything() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    seed(&sqs, queue).await;

    for args in [
        vec!["dlq", "list"],
        vec!["dlq", "list", "--queue", &queue.url, "--dlq", &queue.dlq_url],
        vec!["dlq", "list", "--queue", &queue.url, "--older-than", "10parsecs"],
        vec!["dlq", "redrive", "--queue", &queue.url, "--rate", "0"],
        vec!["dlq", "purge", "--queue", &queue.url, "--max", "-1"],
        vec!["dlq", "frobnicate"],
    ] {
        let run = admin(&emulator, &args).await;
        assert_eq!(code(&run), Some(2), "{args:?}: {}", explain(&run));
    }
    let mut builder = Service::builder("pedidos-admin").name(unique("admin")).env("AWS_ENDPOINT_URL", "127.0.0.1:4566");
    for arg in ["dlq", "purge", "--queue", &queue.url, "--yes"] {
        builder = builder.arg(arg);
    }
    let run = builder.run(RUN).await;
    assert_eq!(code(&run), Some(2), "{}", explain(&run));
    assert!(run.stderr.contains("AWS_ENDPOINT_URL"), "the error names the variable; {}", explain(&run));

    let run = admin(&emulator, &["dlq", "list", "--help"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert!(run.stdout.contains("Exit codes:"), "{}", explain(&run));

    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (3, 0));
}

/// More messages than three receives return (10 each): `list` shows every one and a redrive moves every one, with
/// exit 0 and the DLQ empty. The redrive is filtered so it walks the DLQ message by message on every emulator (an
/// unfiltered one may be a move task, which SQS runs without the scan).
#[tokio::test]
async fn a_dlq_of_30_is_listed_and_redriven_in_full() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let seeded = seed_many(&sqs, queue, 30).await;

    let run = admin(&emulator, &["dlq", "list", "--queue", &queue.url]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    let ids: std::collections::BTreeSet<&str> = run.stdout.lines().filter_map(|line| line.split(' ').next()).collect();
    assert_eq!((run.stdout.lines().count(), ids.len()), (30, 30), "each message once; {}", explain(&run));
    assert!(run.stderr.contains("listed=30 skipped=0"), "{}", explain(&run));
    assert!(!run.stderr.contains(INCOMPLETE), "{}", explain(&run));
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (30, 0));

    let run =
        admin(&emulator, &["dlq", "redrive", "--queue", &queue.url, "--reason", "not_json", "--rate", "500"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert!(run.stdout.contains("redriven=30 skipped=0 failed=0"), "{}", explain(&run));
    assert!(!run.stderr.contains(INCOMPLETE), "{}", explain(&run));
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (0, 0));
    assert_eq!(bodies(&drain(&sqs, &queue.url, 31, DRAIN).await), seeded);
}

/// A FIFO DLQ whose message group another reader holds: SQS counts the group's other messages as visible but no
/// receive returns them until the group is free. The walk does not take "nothing new" for "nothing left": it keeps
/// trying for `--scan-patience`, then says how many messages SQS still counts and exits 4, never 0, having touched
/// only what it reached. Once the group is free, the same redrive moves the rest and exits 0.
#[tokio::test]
async fn a_walk_that_cannot_reach_every_message_says_so_and_exits_4() {
    let (emulator, _topo, sqs) = setup().await;
    let dlq = fifo_queue(&sqs, "admin-dlq").await;
    let source = fifo_queue(&sqs, "admin-src").await;
    // The redrive's destination is the queue whose DLQ this is (never the messages' sourceQueue): SQS names it.
    dead_letter_target(&sqs, &source, &dlq).await;
    let mut held = Vec::new();
    for i in 1..=3 {
        let body = format!("held {i}");
        held.push(dead_letter_to(&sqs, &dlq, Some(&source), "not_json", &body, "p-held", Some("held")).await);
    }
    let free = dead_letter_to(&sqs, &dlq, Some(&source), "not_json", "free 1", "p-free", Some("free")).await;

    // Another reader holds the first message of group "held": the two after it cannot be received meanwhile.
    let taken = sqs
        .receive_message()
        .queue_url(&dlq)
        .max_number_of_messages(1)
        .visibility_timeout(300)
        .send()
        .await
        .unwrap_or_else(|e| panic!("receive: {}", aws_sdk_sqs::error::DisplayErrorContext(e)))
        .messages
        .unwrap_or_default();
    let [taken] = taken.as_slice() else { panic!("expected one message, got {taken:?}") };
    assert_eq!(taken.message_id(), Some(held[0].as_str()), "the first message sent is received first");
    assert_eq!(queue_depth(&sqs, &dlq).await, (3, 1));

    let run = admin(&emulator, &["dlq", "list", "--dlq", &dlq, "--scan-patience", "2s"]).await;
    assert_eq!(code(&run), Some(4), "{}", explain(&run));
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines.len() == 1 && lines[0].starts_with(&free), "only the free group's message; {}", explain(&run));
    assert!(run.stderr.contains(&format!("{INCOMPLETE} 2 visible message(s) in {dlq}")), "{}", explain(&run));
    assert!(run.stderr.contains("Run the command again"), "{}", explain(&run));

    let run = admin(&emulator, &["dlq", "show", "--dlq", &dlq, &held[1], "--scan-patience", "1s"]).await;
    assert_eq!(code(&run), Some(4), "not reached is not \"does not exist\"; {}", explain(&run));
    assert!(run.stderr.contains(INCOMPLETE), "{}", explain(&run));

    // Filtered (every message is `not_json`), so every emulator walks message by message: an unfiltered redrive may
    // be a move task, which does not walk.
    let run =
        admin(&emulator, &["dlq", "redrive", "--dlq", &dlq, "--reason", "not_json", "--scan-patience", "2s"]).await;
    assert_eq!(code(&run), Some(4), "a redrive that stopped early never exits 0; {}", explain(&run));
    assert!(run.stdout.contains("redriven=1 skipped=0 failed=0"), "{}", explain(&run));
    assert!(run.stderr.contains(&format!("{INCOMPLETE} 2 visible message(s)")), "{}", explain(&run));
    // Nothing lost, nothing left hidden by the tool: the two it could not reach are visible, the reader's is its own.
    assert_eq!(queue_depth(&sqs, &dlq).await, (2, 1));
    assert_eq!(bodies(&drain(&sqs, &source, 2, DRAIN).await), ["free 1"]);

    // The reader lets go: the same redrive now reaches the whole group and completes.
    let handle = taken.receipt_handle().unwrap_or_else(|| panic!("no receipt handle"));
    sqs.change_message_visibility()
        .queue_url(&dlq)
        .receipt_handle(handle)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap_or_else(|e| panic!("release: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
    let run = admin(&emulator, &["dlq", "redrive", "--dlq", &dlq, "--reason", "not_json"]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert!(run.stdout.contains("redriven=3 skipped=0 failed=0"), "{}", explain(&run));
    assert!(!run.stderr.contains(INCOMPLETE), "{}", explain(&run));
    assert_eq!(queue_depth(&sqs, &dlq).await, (0, 0));
    let moved = drain(&sqs, &source, 4, DRAIN).await;
    assert_eq!(bodies(&moved), ["held 1", "held 2", "held 3"]);
    let groups: Vec<&str> = moved
        .iter()
        .filter_map(|m| m.attributes()?.get(&MessageSystemAttributeName::MessageGroupId).map(String::as_str))
        .collect();
    assert_eq!(groups, ["held", "held", "held"], "the copies keep their group");
}

/// The console's DLQ panel walks the same way: its list holds all 30 messages and says `complete: true`, and
/// "Redrive all" moves all 30 and says `complete: true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_and_redrives_a_dlq_of_30_in_full_and_says_it_is_complete() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let seeded = seed_many(&sqs, queue, 30).await;
    let mut api = api_builder(&emulator.endpoints(), &topo).env("ADMIN_TOKEN", ADMIN_TOKEN).spawn();
    api.wait_healthy(HEALTHY).await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let url = format!("{}/console/api/dlq/process", api.base_url());
    let answer = |response: Result<reqwest::Response, reqwest::Error>| async move {
        let response = response.unwrap_or_else(|e| panic!("console request: {e}"));
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_else(|e| panic!("console answer is not JSON: {e}"));
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        body
    };

    let list = answer(http().get(&url).header("authorization", &bearer).send().await).await;
    let listed = list["messages"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, 30, "{list}");
    assert_eq!(
        (&list["complete"], &list["visibleLeft"], &list["truncated"]),
        (&json!(true), &Value::Null, &json!(false))
    );
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (30, 0), "listing left every message visible");

    let redrive = http()
        .post(format!("{url}/redrive"))
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .body(json!({"all": true}).to_string())
        .send()
        .await;
    let redrive = answer(redrive).await;
    assert_eq!((&redrive["done"], &redrive["failed"], &redrive["complete"]), (&json!(30), &json!([]), &json!(true)));
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (0, 0));
    assert_eq!(bodies(&drain(&sqs, &queue.url, 31, DRAIN).await), seeded);
}

/// The console's DLQ `action` (`redrive` or `delete`) with `body`, through `api`; the answer, asserted 200.
async fn console_action(api: &Service, action: &str, body: Value) -> Value {
    let response = http()
        .post(format!("{}/console/api/dlq/process/{action}", api.base_url()))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("console {action}: {e}"));
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or_else(|e| panic!("console answer is not JSON: {e}"));
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    answer
}

/// A queue of its own, outside the topology; returns its URL.
async fn plain_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> String {
    sqs.create_queue()
        .queue_name(unique(prefix))
        .send()
        .await
        .unwrap_or_else(|e| panic!("create queue: {}", aws_sdk_sqs::error::DisplayErrorContext(e)))
        .queue_url
        .unwrap_or_else(|| panic!("no URL for the queue"))
}

/// The worker's count of messages it dead-lettered (`pedidos_worker_messages_total{outcome="rejected"}`).
async fn rejections(worker: &Service) -> f64 {
    worker.metric("pedidos_worker_messages_total{outcome=\"rejected\"}").await.unwrap_or(0.0)
}

/// Polls (within [`QUICK`]) until the worker has rejected `times` messages in all, its queue is empty and the DLQ
/// holds exactly one visible message; then asserts the worker rejected exactly `times`. Whatever redrove is done
/// (the CLI exited, the console answered), so a copy the worker has not yet seen would show as a message in the queue
/// or a higher count: none is left, the message went round exactly once per run.
async fn dlq_holds_it_once(sqs: &aws_sdk_sqs::Client, queue: &QueueInfo, worker: &Service, times: f64) {
    let seen = eventually(QUICK, Duration::from_millis(200), || async {
        let rejected = rejections(worker).await;
        let settled = rejected >= times
            && queue_depth(sqs, &queue.url).await == (0, 0)
            && queue_depth(sqs, &queue.dlq_url).await == (1, 0);
        settled.then_some(rejected)
    })
    .await;
    assert_eq!(seen, times, "the worker received more copies than the runs redrove");
}

/// issue 17: a message the worker rejects every time (here an event type it does not know, redriven before the worker
/// that knows it is deployed) used to be redriven, rejected, dead-lettered under a new id and redriven again, for as
/// long as the run lasted (17,200 times in 10 minutes). Now one run redrives it once, sees it come back, reports
/// "rejected again" with the worker's reason, and ends within seconds; the DLQ holds it once and the worker received
/// exactly one copy. The same through the console's "Redrive all", which answers with what it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_worker_keeps_rejecting_is_redriven_once_and_reported_rejected_again() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let mut worker = worker_builder(&emulator.endpoints(), &topo, PROCESS).spawn();
    worker.wait_healthy(HEALTHY).await;
    // Raw delivery, as a subscription with RawMessageDelivery (or a producer sending to the queue) puts it there.
    let body = format!(r#"{{"type":"PedidoBorrado","version":1,"pedidoId":"{}"}}"#, uuid::Uuid::new_v4());
    let first = dead_letter(&sqs, queue, Some(&queue.url), "unknown_event_type", &body, "p-loop").await;

    // The command of the issue. Filtered, so every emulator walks message by message (an unfiltered one may be a
    // move task, which reads no message and reports no rejection).
    let started = tokio::time::Instant::now();
    let run = admin(&emulator, &["dlq", "redrive", "--queue", &queue.url, "--reason", "unknown_event_type"]).await;
    let took = started.elapsed();
    assert!(took < QUICK, "the redrive took {took:?}; {}", explain(&run));
    assert_eq!(code(&run), Some(3), "a message back in the DLQ is a partial redrive; {}", explain(&run));
    assert!(run.stdout.contains("redriven=1 skipped=0 failed=0 rejected-again=1 refused=0"), "{}", explain(&run));
    let back: Vec<&str> = run.stdout.lines().filter(|line| line.starts_with("rejected again: ")).collect();
    assert_eq!(back.len(), 1, "{}", explain(&run));
    assert!(back[0].starts_with("rejected again: unknown_event_type id="), "{}", back[0]);
    assert!(back[0].contains(&format!(" redriven-from={first} ")), "{}", back[0]);
    assert!(!back[0].contains(&format!(" id={first} ")), "the message back has a new id: {}", back[0]);
    dlq_holds_it_once(&sqs, queue, &worker, 1.0).await;

    let mut api = api_builder(&emulator.endpoints(), &topo).env("ADMIN_TOKEN", ADMIN_TOKEN).spawn();
    api.wait_healthy(HEALTHY).await;
    let started = tokio::time::Instant::now();
    let answer = console_action(&api, "redrive", json!({"all": true})).await;
    let took = started.elapsed();
    assert!(took < QUICK, "the console's redrive took {took:?}: {answer}");
    assert_eq!((&answer["done"], &answer["failed"], &answer["refused"]), (&json!(1), &json!([]), &json!([])));
    let back = answer["rejectedAgain"].as_array().cloned().unwrap_or_default();
    assert_eq!(back.len(), 1, "{answer}");
    assert_eq!(back[0]["reason"], "unknown_event_type", "{answer}");
    assert_eq!(answer["deadlineReached"], json!(false), "{answer}");
    assert_eq!(answer["destination"], json!(queue.url), "{answer}");
    dlq_holds_it_once(&sqs, queue, &worker, 2.0).await;
}

/// issue 17: the destination is the queue whose DLQ this is, never the message's own `sourceQueue`, which anyone who
/// can send to the DLQ can write. A message naming another queue is shown, refused and left in the DLQ, by the CLI
/// (through --queue and through --dlq) and by the console (all, or picked by id); nothing reaches either queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_source_queue_is_refused_and_nothing_reaches_the_queue_it_names() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let elsewhere = plain_queue(&sqs, "elsewhere").await;
    let forged = dead_letter(&sqs, queue, Some(&elsewhere), "unknown_event_type", "{\"forged\":1}", "p-forged").await;

    // Filtered, so every emulator walks message by message (an unfiltered one may be a move task, which goes to the
    // same destination but reads no attribute).
    for selection in [["--queue", queue.url.as_str()], ["--dlq", queue.dlq_url.as_str()]] {
        let mut args = vec!["dlq", "redrive", "--reason", "unknown_event_type"];
        args.extend(selection);
        let run = admin(&emulator, &args).await;
        assert_eq!(code(&run), Some(3), "{args:?}: {}", explain(&run));
        assert!(run.stdout.contains("redriven=0 skipped=0 failed=0 rejected-again=0 refused=1"), "{}", explain(&run));
        let refused = run.stdout.lines().find(|line| line.starts_with(&format!("refused {forged} ")));
        let refused = refused.unwrap_or_else(|| panic!("no refused line; {}", explain(&run)));
        assert!(refused.contains(&format!("its sourceQueue {elsewhere} is not {}", queue.url)), "{refused}");
    }

    let mut api = api_builder(&emulator.endpoints(), &topo).env("ADMIN_TOKEN", ADMIN_TOKEN).spawn();
    api.wait_healthy(HEALTHY).await;
    for selection in [json!({"all": true}), json!({"messageIds": [forged]})] {
        let answer = console_action(&api, "redrive", selection).await;
        assert_eq!((&answer["done"], &answer["failed"]), (&json!(0), &json!([])), "{answer}");
        assert_eq!(
            answer["refused"],
            json!([{"messageId": forged, "sourceQueue": elsewhere, "destination": queue.url}]),
            "{answer}"
        );
    }

    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (1, 0), "left in the DLQ, visible");
    assert_eq!(queue_depth(&sqs, &elsewhere).await, (0, 0), "nothing was steered to the queue the message names");
    assert_eq!(queue_depth(&sqs, &queue.url).await, (0, 0));
    let left = drain(&sqs, &queue.dlq_url, 1, DRAIN).await;
    assert_eq!(left.iter().filter_map(Message::message_id).collect::<Vec<_>>(), [forged.as_str()]);
}

/// issue 17: the console's background sampling reads queue attributes only. It used to receive DLQ messages (with
/// visibility 0) to estimate their age, adding to their receive counts (1 to 4 in 53 s). Over several samples that
/// each saw the message, its receive count stays 0: the test's own single receive at the end reads 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_sampling_never_receives_a_dlq_message() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let id = dead_letter(&sqs, queue, Some(&queue.url), "not_json", "{not json", "p-sampled").await;
    let mut api = api_builder(&emulator.endpoints(), &topo).env("ADMIN_TOKEN", ADMIN_TOKEN).spawn();
    api.wait_healthy(HEALTHY).await;

    let mut events = http()
        .get(format!("{}/console/events", api.base_url()))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("console events: {e}"));
    assert_eq!(events.status(), reqwest::StatusCode::OK);
    // Three samples that saw the message in the DLQ: the first sample after start is when the old code peeked.
    let mut stream = String::new();
    // The process DLQ's entry of each sample that saw the message.
    let dlq_entries = |stream: &str| -> Vec<Value> {
        stream
            .split("event: sample\n")
            .skip(1)
            .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .filter_map(|sample| {
                let queues = sample["queues"].as_array()?.clone();
                queues.into_iter().find(|q| q["role"] == "process").map(|q| q["dlq"].clone())
            })
            .filter(|dlq| dlq["visible"] == json!(1))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while dlq_entries(&stream).len() < 3 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, events.chunk()).await {
            Ok(Ok(Some(chunk))) => stream.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("three samples seeing the DLQ message not received ({other:?}); so far:\n{stream}"),
        }
    }
    for dlq in dlq_entries(&stream) {
        // The depth comes from queue attributes; an age would need a receive (SQS has no age attribute).
        assert!(dlq.get("oldestAgeSeconds").is_none(), "a DLQ age in a sample: {dlq}");
    }

    let received = sqs
        .receive_message()
        .queue_url(&queue.dlq_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .unwrap_or_else(|e| panic!("receive: {}", aws_sdk_sqs::error::DisplayErrorContext(e)))
        .messages
        .unwrap_or_default();
    let [message] = received.as_slice() else { panic!("expected the one DLQ message, got {received:?}") };
    assert_eq!(message.message_id(), Some(id.as_str()));
    let count = message.attributes().and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount));
    assert_eq!(count.map(String::as_str), Some("1"), "only this receive counts: sampling received nothing");
}

/// issue 17: `show` used to print a body's C1 controls and bidi overrides raw. Every command and output mode escapes
/// them (text: `\u{9b}`; JSON: `\u009b`), and the JSON still parses back to the exact body.
#[tokio::test]
async fn show_and_list_print_hostile_characters_only_escaped_in_text_and_json() {
    let (emulator, topo, sqs) = setup().await;
    let queue = &topo.queues[PROCESS];
    let seeded = seed(&sqs, queue).await;
    let (id, _, body, _) = &seeded[1];
    let hostile = ['\u{9b}', '\u{202e}'];

    let run = admin(&emulator, &["dlq", "show", "--queue", &queue.url, id]).await;
    assert_eq!(code(&run), Some(0), "{}", explain(&run));
    assert!(!run.stdout.contains(hostile), "a raw control character reached stdout; {}", explain(&run));
    assert!(run.stdout.contains(r"\u{9b}31mred\u{202e}\nalert"), "{}", explain(&run));

    for args in
        [vec!["dlq", "show", "--queue", &queue.url, id, "--json"], vec!["dlq", "list", "--queue", &queue.url, "--json"]]
    {
        let run = admin(&emulator, &args).await;
        assert_eq!(code(&run), Some(0), "{}", explain(&run));
        assert!(!run.stdout.contains(hostile), "{args:?}: a raw control character reached stdout");
        assert!(run.stdout.contains(r"\u009b31mred\u202e\nalert"), "{args:?}: {}", explain(&run));
        let parsed: Vec<Value> = run
            .stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
            .collect();
        assert!(parsed.iter().any(|o| o["messageId"] == id.as_str() && o["body"] == body.as_str()), "{parsed:?}");
    }
    assert_eq!(queue_depth(&sqs, &queue.dlq_url).await, (3, 0));
}
