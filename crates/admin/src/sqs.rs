//! The SQS calls the commands make: finding the DLQ, receiving, releasing, copying, deleting, and move tasks.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::operation::start_message_move_task::StartMessageMoveTaskError;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use aws_sdk_sqs::Client;
use platform::aws::CallBudget;
use platform::topology::{LOGISTICS_QUEUE_NAME, PROCESS_QUEUE_NAME};

use crate::cli::Selection;
use crate::error::{aws, build, AdminError};
use crate::message::{AttributeData, DlqMessage};

/// A person is waiting, but a DLQ run is no HTTP request: a few seconds per attempt, three attempts.
pub const CALL_BUDGET: CallBudget = CallBudget {
    connect: Duration::from_secs(2),
    attempt: Duration::from_secs(10),
    total: Duration::from_secs(30),
    max_attempts: 3,
};

/// Long-poll wait per receive. Any wait above zero makes SQS ask all its servers, so an empty answer means the
/// queue has nothing visible (a zero wait may answer empty while messages exist); one second keeps the end quick.
pub const RECEIVE_WAIT: Duration = Duration::from_secs(1);

/// How long a scanned message stays hidden. Long enough for a run to finish with it (the scan releases it at the
/// end); short enough that a crashed run hides nothing for long.
pub const SCAN_VISIBILITY: Duration = Duration::from_secs(120);

/// The DLQ a command works on, and where its messages go back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub dlq_url: String,
    /// The queue whose redrive policy targets the DLQ: the `--queue` given, or the only one SQS lists for `--dlq`.
    /// `None` when that is not one queue: a redrive then needs `--queue` (see [`Target::destination`]).
    pub source_url: Option<String>,
    /// For `--dlq`: every queue SQS lists with `ListDeadLetterSourceQueues` (to say which, when not one).
    pub sources: Vec<String>,
}

impl Target {
    /// Where a redrive of this DLQ goes: the queue whose DLQ it is, never a message's own `sourceQueue` attribute.
    ///
    /// # Errors
    /// [`AdminError::Usage`] when `--dlq` was given and SQS lists no source queue, or several.
    pub fn destination(&self) -> Result<&str, AdminError> {
        match (&self.source_url, self.sources.as_slice()) {
            (Some(url), _) => Ok(url),
            (None, []) => Err(AdminError::Usage(format!(
                "no queue has {} as its DLQ (ListDeadLetterSourceQueues lists none), so a redrive has nowhere to go; \
                 pass the queue with --queue",
                self.dlq_url
            ))),
            (None, several) => Err(AdminError::Usage(format!(
                "{} is the DLQ of {} queues ({}); pass the one to redrive to with --queue",
                self.dlq_url,
                several.len(),
                several.join(", ")
            ))),
        }
    }
}

/// `process` and `logistics` stand for the topology's queue names.
pub fn queue_alias(queue: &str) -> &str {
    match queue {
        "process" => PROCESS_QUEUE_NAME,
        "logistics" => LOGISTICS_QUEUE_NAME,
        other => other,
    }
}

/// Resolves `--queue` (through its redrive policy) or `--dlq` (and its source queues).
///
/// # Errors
/// A queue that does not exist, a source queue without a redrive policy, or a failed call.
pub async fn resolve(client: &Client, selection: &Selection) -> Result<Target, AdminError> {
    match (&selection.queue, &selection.dlq) {
        (Some(queue), _) => {
            let source_url = queue_url(client, queue_alias(queue), None).await?;
            let policy = queue_attribute(client, &source_url, QueueAttributeName::RedrivePolicy).await?;
            let Some(dlq_arn) = policy.as_deref().and_then(dead_letter_target) else {
                return Err(AdminError::State(format!(
                    "queue {source_url} has no redrive policy, so no DLQ to work on (pass the DLQ with --dlq)"
                )));
            };
            let Some((account, name)) = arn_account_and_name(&dlq_arn) else {
                return Err(AdminError::State(format!(
                    "the redrive policy of {source_url} names a malformed ARN {dlq_arn:?}"
                )));
            };
            // The ARN's account, not a configured one: the same code works on AWS, LocalStack and moto.
            let dlq_url = queue_url(client, name, Some(account)).await?;
            Ok(Target { dlq_url, source_url: Some(source_url), sources: Vec::new() })
        }
        (None, Some(dlq)) => {
            let dlq_url = queue_url(client, dlq, None).await?;
            let sources = client
                .list_dead_letter_source_queues()
                .queue_url(&dlq_url)
                .send()
                .await
                .map_err(aws("list_dead_letter_source_queues", &dlq_url))?
                .queue_urls;
            let source_url = match sources.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            };
            Ok(Target { dlq_url, source_url, sources })
        }
        (None, None) => Err(AdminError::Usage("pass --queue or --dlq".into())),
    }
}

/// `deadLetterTargetArn` of a redrive policy document.
pub fn dead_letter_target(policy: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(policy).ok()?;
    value.get("deadLetterTargetArn")?.as_str().map(str::to_owned)
}

/// `arn:aws:sqs:REGION:ACCOUNT:NAME` -> `(ACCOUNT, NAME)`.
pub fn arn_account_and_name(arn: &str) -> Option<(&str, &str)> {
    match arn.split(':').collect::<Vec<_>>().as_slice() {
        ["arn", _, "sqs", _, account, name] if !name.is_empty() => Some((account, name)),
        _ => None,
    }
}

/// A URL stays a URL; a name is resolved with `GetQueueUrl` (in `account` when given).
///
/// # Errors
/// [`AdminError::State`] when the queue does not exist, [`AdminError::Aws`] when the call fails.
pub async fn queue_url(client: &Client, queue: &str, account: Option<&str>) -> Result<String, AdminError> {
    if queue.starts_with("http://") || queue.starts_with("https://") {
        return Ok(queue.to_owned());
    }
    let output = client
        .get_queue_url()
        .queue_name(queue)
        .set_queue_owner_aws_account_id(account.map(str::to_owned))
        .send()
        .await
        .map_err(|e| match e.as_service_error() {
            Some(service) if service.is_queue_does_not_exist() => {
                AdminError::State(format!("queue {queue} does not exist"))
            }
            _ => aws("get_queue_url", queue)(e),
        })?;
    output.queue_url.ok_or_else(|| AdminError::State(format!("SQS returned no URL for queue {queue}")))
}

/// One attribute of a queue (`None` when the queue does not have it).
///
/// # Errors
/// [`AdminError::State`] when the queue does not exist, [`AdminError::Aws`] when the call fails.
pub async fn queue_attribute(
    client: &Client,
    url: &str,
    name: QueueAttributeName,
) -> Result<Option<String>, AdminError> {
    let output =
        client.get_queue_attributes().queue_url(url).attribute_names(name.clone()).send().await.map_err(|e| match e
            .as_service_error()
        {
            Some(service) if service.is_queue_does_not_exist() => {
                AdminError::State(format!("queue {url} does not exist"))
            }
            _ => aws("get_queue_attributes", url)(e),
        })?;
    Ok(output.attributes.and_then(|mut attributes| attributes.remove(&name)))
}

/// `QueueArn` of a queue.
///
/// # Errors
/// As [`queue_attribute`], and when SQS returns no ARN.
pub async fn queue_arn(client: &Client, url: &str) -> Result<String, AdminError> {
    queue_attribute(client, url, QueueAttributeName::QueueArn)
        .await?
        .ok_or_else(|| AdminError::State(format!("SQS returned no ARN for {url}")))
}

/// `ApproximateNumberOfMessages` (visible: neither in flight nor delayed); `None` when SQS returns no number.
///
/// # Errors
/// As [`queue_attribute`].
pub async fn visible_count(client: &Client, url: &str) -> Result<Option<u64>, AdminError> {
    Ok(queue_attribute(client, url, QueueAttributeName::ApproximateNumberOfMessages)
        .await?
        .and_then(|n| n.parse().ok()))
}

/// [`visible_count`] for progress bars and the purge summary, where an unknown count is shown as 0.
///
/// # Errors
/// As [`queue_attribute`].
pub async fn visible_messages(client: &Client, url: &str) -> Result<u64, AdminError> {
    Ok(visible_count(client, url).await?.unwrap_or(0))
}

/// Up to 10 messages, hidden for [`SCAN_VISIBILITY`], with every attribute.
///
/// # Errors
/// [`AdminError::Aws`] when the receive fails.
pub async fn receive(client: &Client, dlq_url: &str) -> Result<Vec<DlqMessage>, AdminError> {
    let output = client
        .receive_message()
        .queue_url(dlq_url)
        .max_number_of_messages(10)
        .visibility_timeout(seconds(SCAN_VISIBILITY))
        .wait_time_seconds(seconds(RECEIVE_WAIT))
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .map_err(aws("receive_message", dlq_url))?;
    Ok(output.messages.unwrap_or_default().into_iter().map(DlqMessage::from_sdk).collect())
}

/// Sets the visibility timeout of `(message id, receipt handle)` pairs, 10 per call: 0 makes them visible again, more
/// keeps them hidden that long from now. Returns a line per message whose visibility could not be changed.
pub async fn change_visibility(
    client: &Client,
    dlq_url: &str,
    handles: &[(String, String)],
    timeout: Duration,
) -> Vec<String> {
    let timeout = seconds(timeout);
    let mut failures = Vec::new();
    for chunk in handles.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (_, handle))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .visibility_timeout(timeout)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>();
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                failures.extend(chunk.iter().map(|(id, _)| format!("{id}: {e}")));
                continue;
            }
        };
        match client.change_message_visibility_batch().queue_url(dlq_url).set_entries(Some(entries)).send().await {
            Ok(output) => failures.extend(output.failed.into_iter().map(|failed| {
                let id = failed.id.parse::<usize>().ok().and_then(|i| chunk.get(i)).map_or("?", |(id, _)| id.as_str());
                format!("{id}: {} {}", failed.code, failed.message.unwrap_or_default())
            })),
            Err(e) => {
                let detail = DisplayErrorContext(&e).to_string();
                failures.extend(chunk.iter().map(|(id, _)| format!("{id}: {detail}")));
            }
        }
    }
    failures
}

/// Deletes one message from the DLQ.
///
/// # Errors
/// [`AdminError::Aws`] when the delete fails.
pub async fn delete(client: &Client, dlq_url: &str, receipt_handle: &str) -> Result<(), AdminError> {
    client
        .delete_message()
        .queue_url(dlq_url)
        .receipt_handle(receipt_handle)
        .send()
        .await
        .map_err(aws("delete_message", dlq_url))?;
    Ok(())
}

/// Sends a copy of `message` to `queue_url`: same body, the original attributes (without the worker's `reject*`,
/// `sourceQueue`, `originalMessageId`). Returns the copy's `MessageId`: only then may the original be deleted.
///
/// # Errors
/// [`AdminError::Aws`] when the send fails or SQS returns no `MessageId`.
pub async fn send_copy(client: &Client, queue_url: &str, message: &DlqMessage) -> Result<String, AdminError> {
    let mut attributes = HashMap::new();
    for (name, value) in message.forwarded_attributes() {
        let builder = MessageAttributeValue::builder().data_type(value.data_type);
        let builder = match value.data {
            AttributeData::Text(text) => builder.string_value(text),
            AttributeData::Binary(bytes) => builder.binary_value(aws_smithy_types::Blob::new(bytes)),
        };
        attributes.insert(name, builder.build().map_err(|e| build("send_message", e))?);
    }
    let mut request = client
        .send_message()
        .queue_url(queue_url)
        .message_body(&message.body)
        .set_message_attributes(Some(attributes).filter(|a| !a.is_empty()));
    if let Some((group, dedup)) = fifo_ids(queue_url, message) {
        request = request.message_group_id(group).message_deduplication_id(dedup);
    }
    let output = request.send().await.map_err(aws("send_message", queue_url))?;
    output.message_id.ok_or_else(|| build("send_message", "SQS accepted the copy but returned no MessageId"))
}

/// For a `.fifo` destination: the message group and deduplication id of the copy.
///
/// The group is the message's own (a FIFO DLQ keeps it), else its `pedidoId` (the API's group for FIFO topics), so
/// one order's messages keep their order. The deduplication id is the DLQ message's id, not the original one: the
/// original id (`pedidoId#version`) may still be inside SQS's 5-minute window, where the copy would be dropped
/// silently after the DLQ copy was deleted; the DLQ message id still makes a repeated redrive of the same message
/// (delete failed, run again) a no-op.
pub fn fifo_ids(queue_url: &str, message: &DlqMessage) -> Option<(String, String)> {
    if !queue_url.ends_with(".fifo") {
        return None;
    }
    let group = message
        .system_attribute(MessageSystemAttributeName::MessageGroupId)
        .or_else(|| message.attribute("pedidoId"))
        .unwrap_or("redrive")
        .to_owned();
    Some((group, message.message_id.clone()))
}

/// Why `StartMessageMoveTask` could not be used.
#[derive(Debug)]
pub enum MoveTaskStart {
    /// The endpoint does not implement the move-task API; the text says how it answered.
    Unsupported(String),
    Failed(AdminError),
}

/// Starts a move task from the DLQ to `destination_arn` at `rate` messages per second; returns its handle.
///
/// # Errors
/// [`MoveTaskStart::Unsupported`] when the endpoint lacks the API (see [`move_task_unsupported`]), else the failure.
pub async fn start_move_task(
    client: &Client,
    dlq_arn: &str,
    destination_arn: &str,
    rate: u32,
) -> Result<String, MoveTaskStart> {
    let result = client
        .start_message_move_task()
        .source_arn(dlq_arn)
        .destination_arn(destination_arn)
        .max_number_of_messages_per_second(i32::try_from(rate).unwrap_or(500))
        .send()
        .await;
    match result {
        Ok(output) => Ok(output.task_handle.unwrap_or_default()),
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let service = e.as_service_error();
            let typed_unsupported = service.is_some_and(StartMessageMoveTaskError::is_unsupported_operation);
            let code = service.and_then(ProvideErrorMetadata::code);
            if move_task_unsupported(typed_unsupported, code, status) {
                let how = match (code, status) {
                    (Some(code), _) => format!("error code {code}"),
                    (None, Some(status)) => format!("HTTP {status} without an AWS error code"),
                    (None, None) => "no AWS error code".to_owned(),
                };
                Err(MoveTaskStart::Unsupported(how))
            } else {
                Err(MoveTaskStart::Failed(aws("start_message_move_task", dlq_arn)(e)))
            }
        }
    }
}

/// Does this answer to `StartMessageMoveTask` mean "this endpoint has no move-task API"?
///
/// Decided from the typed error and its exact code, never from message text:
/// - `UnsupportedOperation` (typed) or the codes an endpoint uses for an action it does not know
///   (`UnknownOperationException` for JSON, `InvalidAction` for the query protocol, `NotImplemented`), or HTTP 501;
/// - an answer with a server status and no AWS error code at all: not an AWS error document, but an emulator that
///   does not implement the action (moto answers HTTP 500 with an HTML page).
///
/// Falling back is always correct (copy, then delete), only slower, so an ambiguous answer falls back; errors that
/// ask the operator to act (access denied, no such queue, throttling, a task already running) do not.
pub fn move_task_unsupported(typed_unsupported: bool, code: Option<&str>, status: Option<u16>) -> bool {
    const UNSUPPORTED_CODES: [&str; 5] = [
        "UnsupportedOperation",
        "AWS.SimpleQueueService.UnsupportedOperation",
        "UnknownOperationException",
        "InvalidAction",
        "NotImplemented",
    ];
    typed_unsupported
        || code.is_some_and(|code| UNSUPPORTED_CODES.contains(&code))
        || status == Some(501)
        || (code.is_none() && status.is_some_and(|status| status >= 500))
}

/// A move task's state, from `ListMessageMoveTasks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveTaskState {
    /// `RUNNING`, `COMPLETED`, `CANCELLING`, `CANCELLED` or `FAILED`.
    pub status: String,
    pub moved: u64,
    pub to_move: Option<u64>,
    pub failure_reason: Option<String>,
}

/// The state of the task with `handle` (the DLQ's most recent task once it stopped running: SQS returns the handle
/// only while a task runs, and one DLQ runs at most one task at a time).
///
/// # Errors
/// [`AdminError::Aws`] when the call fails, [`AdminError::State`] when SQS lists no task.
pub async fn move_task_state(client: &Client, dlq_arn: &str, handle: &str) -> Result<MoveTaskState, AdminError> {
    let results = client
        .list_message_move_tasks()
        .source_arn(dlq_arn)
        .max_results(10)
        .send()
        .await
        .map_err(aws("list_message_move_tasks", dlq_arn))?
        .results
        .unwrap_or_default();
    let entry = results
        .iter()
        .find(|entry| entry.task_handle() == Some(handle))
        .or_else(|| results.iter().max_by_key(|entry| entry.started_timestamp()))
        .ok_or_else(|| AdminError::State(format!("SQS lists no move task for {dlq_arn}")))?;
    Ok(MoveTaskState {
        status: entry.status().unwrap_or("UNKNOWN").to_owned(),
        moved: u64::try_from(entry.approximate_number_of_messages_moved()).unwrap_or(0),
        to_move: entry.approximate_number_of_messages_to_move().and_then(|n| u64::try_from(n).ok()),
        failure_reason: entry.failure_reason().map(str::to_owned),
    })
}

/// Cancels a running move task (Ctrl-C during a redrive). Messages already moved stay moved.
///
/// # Errors
/// [`AdminError::Aws`] when the call fails.
pub async fn cancel_move_task(client: &Client, handle: &str) -> Result<(), AdminError> {
    client
        .cancel_message_move_task()
        .task_handle(handle)
        .send()
        .await
        .map_err(aws("cancel_message_move_task", handle))?;
    Ok(())
}

/// Deletes every message of the DLQ at once.
///
/// # Errors
/// [`AdminError::Aws`] when the call fails (including a purge already in progress: one per 60 s).
pub async fn purge_queue(client: &Client, dlq_url: &str) -> Result<(), AdminError> {
    client.purge_queue().queue_url(dlq_url).send().await.map_err(aws("purge_queue", dlq_url))?;
    Ok(())
}

/// SQS takes seconds as `i32`.
fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::AttributeValue;
    use std::collections::BTreeMap;

    #[test]
    fn the_dlq_is_found_from_the_redrive_policy_arn_with_its_account() {
        let policy = r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:q-dlq","maxReceiveCount":5}"#;
        let arn = dead_letter_target(policy);
        assert_eq!(arn.as_deref(), Some("arn:aws:sqs:us-east-1:000000000000:q-dlq"));
        assert_eq!(arn_account_and_name(arn.as_deref().unwrap_or_default()), Some(("000000000000", "q-dlq")));
        assert_eq!(arn_account_and_name("arn:aws:sns:us-east-1:1:topic"), None);
        assert_eq!(arn_account_and_name("q-dlq"), None);
        assert_eq!(dead_letter_target("{}"), None);
        assert_eq!(queue_alias("process"), PROCESS_QUEUE_NAME);
        assert_eq!(queue_alias("logistics"), LOGISTICS_QUEUE_NAME);
        assert_eq!(queue_alias("other"), "other");
    }

    #[test]
    fn only_an_endpoint_without_the_api_falls_back() {
        // moto: HTTP 500, an HTML page, no code.
        assert!(move_task_unsupported(false, None, Some(500)));
        assert!(move_task_unsupported(true, Some("UnsupportedOperation"), Some(400)));
        assert!(move_task_unsupported(false, Some("AWS.SimpleQueueService.UnsupportedOperation"), Some(400)));
        assert!(move_task_unsupported(false, Some("UnknownOperationException"), Some(400)));
        assert!(move_task_unsupported(false, Some("InvalidAction"), Some(400)));
        assert!(move_task_unsupported(false, Some("InternalFailure"), Some(501)));
        // Errors the operator must see.
        assert!(!move_task_unsupported(false, Some("AccessDenied"), Some(403)));
        assert!(!move_task_unsupported(false, Some("ResourceNotFoundException"), Some(400)));
        assert!(!move_task_unsupported(false, Some("RequestThrottled"), Some(400)));
        assert!(!move_task_unsupported(false, Some("InternalError"), Some(500)));
        assert!(!move_task_unsupported(false, None, Some(403)));
        assert!(!move_task_unsupported(false, None, None));
    }

    #[test]
    fn fifo_copies_keep_the_group_and_dedupe_on_the_dlq_message() {
        let mut message = DlqMessage {
            message_id: "dlq-id".into(),
            receipt_handle: "h".into(),
            body: "{}".into(),
            sent_at_ms: None,
            receive_count: 1,
            attributes: BTreeMap::from([(
                "pedidoId".to_owned(),
                AttributeValue { data_type: "String".into(), data: AttributeData::Text("p-1".into()) },
            )]),
            system: BTreeMap::new(),
        };
        assert_eq!(fifo_ids("http://h/1/q", &message), None);
        assert_eq!(fifo_ids("http://h/1/q.fifo", &message), Some(("p-1".into(), "dlq-id".into())));
        message.system.insert("MessageGroupId".into(), "g-7".into());
        assert_eq!(fifo_ids("http://h/1/q.fifo", &message), Some(("g-7".into(), "dlq-id".into())));
        message.system.clear();
        message.attributes.clear();
        assert_eq!(fifo_ids("http://h/1/q.fifo", &message), Some(("redrive".into(), "dlq-id".into())));
    }
}
