//! [`MessageQueue`] on SQS: settings read at start-up, and every call the worker makes (each one counted, and each
//! failure counted again by operation, so an error ratio per operation can be alerted on).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName,
};
use aws_sdk_sqs::Client;

use super::{
    dead_letter_attributes, Attribute, BatchFailure, MessageQueue, QueueDepth, QueueError, QueueSettings, Received,
};
use crate::handler::BoxFuture;

fn count(operation: &'static str) {
    metrics::counter!("pedidos_worker_sqs_calls_total", "operation" => operation).increment(1);
}

fn count_error(operation: &'static str) {
    metrics::counter!("pedidos_worker_sqs_errors_total", "operation" => operation).increment(1);
}

/// A failed call on `queue`: [`QueueError::Denied`] when AWS refused the permission, [`QueueError::Call`] otherwise.
fn call_error<E>(operation: &'static str, queue: &str) -> impl FnOnce(SdkError<E, HttpResponse>) -> QueueError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let queue = queue.to_owned();
    move |e| {
        count_error(operation);
        if let Some(denied) = store::AccessDenied::from_sdk(&e, iam_action(operation), &format!("queue {queue}")) {
            return QueueError::Denied(denied);
        }
        QueueError::Call { operation, detail: DisplayErrorContext(&e).to_string(), source: Some(Box::new(e)) }
    }
}

/// The IAM action behind each counted operation (batch calls are authorised as their single action).
fn iam_action(operation: &str) -> &'static str {
    match operation {
        "receive" => "sqs:ReceiveMessage",
        "delete" => "sqs:DeleteMessage",
        "change_visibility" => "sqs:ChangeMessageVisibility",
        "send" => "sqs:SendMessage",
        "get_queue_url" => "sqs:GetQueueUrl",
        _ => "sqs:GetQueueAttributes",
    }
}

fn build_error(operation: &'static str, e: impl std::fmt::Display) -> QueueError {
    count_error(operation);
    QueueError::Call { operation, detail: e.to_string(), source: None }
}

/// Resolves the queue and reads its visibility timeout and redrive policy.
///
/// # Errors
/// [`QueueError::NotFound`] when SQS says the queue (or its DLQ) does not exist; [`QueueError::Call`] otherwise.
pub async fn discover(client: &Client, queue: &str) -> Result<QueueSettings, QueueError> {
    let url = if queue.starts_with("http://") || queue.starts_with("https://") {
        queue.to_owned()
    } else {
        queue_url(client, queue, None).await?
    };
    count("get_queue_attributes");
    let attributes = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| match e.as_service_error() {
            Some(service) if service.is_queue_does_not_exist() => {
                QueueError::NotFound { queue: queue.to_owned(), detail: DisplayErrorContext(&e).to_string() }
            }
            _ => call_error("get_queue_attributes", &url)(e),
        })?
        .attributes
        .unwrap_or_default();
    let visibility_timeout = attributes
        .get(&QueueAttributeName::VisibilityTimeout)
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs);
    let redrive: Option<serde_json::Value> =
        attributes.get(&QueueAttributeName::RedrivePolicy).and_then(|policy| serde_json::from_str(policy).ok());
    let max_receive_count = redrive.as_ref().and_then(|r| {
        let v = r.get("maxReceiveCount")?;
        v.as_u64().or_else(|| v.as_str()?.parse().ok()).and_then(|n| u32::try_from(n).ok())
    });
    let dlq_arn = redrive.as_ref().and_then(|r| r.get("deadLetterTargetArn")?.as_str().map(str::to_owned));
    let dlq_url = match dlq_arn {
        Some(arn) => {
            // `arn:aws:sqs:REGION:ACCOUNT:NAME`: works on AWS, LocalStack and moto alike, whatever the account id.
            let parts: Vec<&str> = arn.split(':').collect();
            let [_, _, _, _, account, name] = parts.as_slice() else {
                return Err(build_error(
                    "get_queue_attributes",
                    format!("redrive policy names a malformed DLQ ARN {arn:?}"),
                ));
            };
            Some(queue_url(client, name, Some(account)).await?)
        }
        None => None,
    };
    Ok(QueueSettings { url, visibility_timeout, dlq_url, max_receive_count })
}

async fn queue_url(client: &Client, name: &str, account: Option<&str>) -> Result<String, QueueError> {
    count("get_queue_url");
    let output = client
        .get_queue_url()
        .queue_name(name)
        .set_queue_owner_aws_account_id(account.map(str::to_owned))
        .send()
        .await
        .map_err(|e| match e.as_service_error() {
            Some(service) if service.is_queue_does_not_exist() => {
                QueueError::NotFound { queue: name.to_owned(), detail: DisplayErrorContext(&e).to_string() }
            }
            _ => call_error("get_queue_url", name)(e),
        })?;
    output.queue_url.ok_or_else(|| QueueError::NotFound { queue: name.to_owned(), detail: "no URL returned".into() })
}

/// The SQS calls the worker makes, on its own queue and DLQ.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    settings: QueueSettings,
}

impl SqsQueue {
    pub fn new(client: Client, settings: QueueSettings) -> Self {
        Self { client, settings }
    }

    async fn receive_now(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        count("receive");
        let out = self
            .client
            .receive_message()
            .queue_url(&self.settings.url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .wait_time_seconds(i32::try_from(wait.as_secs()).unwrap_or(20))
            // Only the system attributes `owned` reads: `All` adds sender ids, first-receive times, sequence numbers and
            // trace headers to every message, which the SDK then parses for nothing (a profile showed it).
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            // Present only when the sender was traced by X-Ray: the message then joins that trace.
            .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(call_error("receive", &self.settings.url))?;
        Ok(out.messages.unwrap_or_default().into_iter().map(owned).collect())
    }

    async fn delete_now(&self, handles: &[String]) -> Result<Vec<BatchFailure>, QueueError> {
        count("delete");
        let entries = handles
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(handle).build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| build_error("delete", e))?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.settings.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(call_error("delete", &self.settings.url))?;
        Ok(failures(
            |i| handles.get(i),
            out.failed.into_iter().map(|f| (f.id, f.code, f.message.unwrap_or_default(), f.sender_fault)),
        ))
    }

    async fn change_visibility_now(&self, entries: &[(String, Duration)]) -> Result<Vec<BatchFailure>, QueueError> {
        count("change_visibility");
        let request = entries
            .iter()
            .enumerate()
            .map(|(i, (handle, timeout))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .visibility_timeout(whole_seconds(*timeout))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| build_error("change_visibility", e))?;
        let out = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.settings.url)
            .set_entries(Some(request))
            .send()
            .await
            .map_err(call_error("change_visibility", &self.settings.url))?;
        Ok(failures(
            |i| entries.get(i).map(|(handle, _)| handle),
            out.failed.into_iter().map(|f| (f.id, f.code, f.message.unwrap_or_default(), f.sender_fault)),
        ))
    }

    async fn dead_letter_now(&self, message: &Received, reason: &str, detail: &str) -> Result<(), QueueError> {
        let Some(dlq) = &self.settings.dlq_url else { return Err(QueueError::NoDlq) };
        let mut attributes = HashMap::new();
        for (name, attribute) in dead_letter_attributes(message, &self.settings.url, reason, detail) {
            let value = MessageAttributeValue::builder()
                .data_type(attribute.data_type)
                .string_value(attribute.value)
                .build()
                .map_err(|e| build_error("send", e))?;
            attributes.insert(name, value);
        }
        let mut request = self
            .client
            .send_message()
            .queue_url(dlq)
            .message_body(if message.body.is_empty() { "-".to_owned() } else { message.body.clone() })
            .set_message_attributes(Some(attributes));
        if self.settings.dlq_is_fifo() {
            // A FIFO DLQ needs a group; the message id as dedup id makes a repeated copy (delete failed, message
            // redelivered, copied again within 5 minutes) a no-op.
            request = request
                .message_group_id(message.group_id.clone().unwrap_or_else(|| "dead-letter".into()))
                .message_deduplication_id(message.message_id.clone());
        }
        count("send");
        request.send().await.map_err(call_error("send", dlq))?;
        Ok(())
    }

    async fn depth_now(&self) -> Result<QueueDepth, QueueError> {
        count("get_queue_attributes");
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.settings.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(call_error("get_queue_attributes", &self.settings.url))?;
        let attributes = out.attributes.unwrap_or_default();
        // SQS always returns the attributes asked for; a missing or unreadable one would be a broken emulator, and a
        // wrong call error would hide the rest of the answer, so it reads as 0.
        let number = |name: &QueueAttributeName| attributes.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(QueueDepth {
            visible: number(&QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: number(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: number(&QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

impl MessageQueue for SqsQueue {
    fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    fn receive(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Received>, QueueError>> {
        Box::pin(self.receive_now(max, wait))
    }

    fn delete_batch<'a>(&'a self, handles: &'a [String]) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>> {
        Box::pin(self.delete_now(handles))
    }

    fn change_visibility_batch<'a>(
        &'a self,
        entries: &'a [(String, Duration)],
    ) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>> {
        Box::pin(self.change_visibility_now(entries))
    }

    fn extend_visibility<'a>(&'a self, handle: &'a str, timeout: Duration) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            count("change_visibility");
            self.client
                .change_message_visibility()
                .queue_url(&self.settings.url)
                .receipt_handle(handle)
                .visibility_timeout(whole_seconds(timeout))
                .send()
                .await
                .map_err(call_error("change_visibility", &self.settings.url))?;
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        message: &'a Received,
        reason: &'a str,
        detail: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(self.dead_letter_now(message, reason, detail))
    }

    fn depth(&self) -> BoxFuture<'_, Result<QueueDepth, QueueError>> {
        Box::pin(self.depth_now())
    }
}

/// The SDK's message as an owned [`Received`].
fn owned(message: Message) -> Received {
    let system = message.attributes.unwrap_or_default();
    let receive_count =
        system.get(&MessageSystemAttributeName::ApproximateReceiveCount).and_then(|v| v.parse().ok()).unwrap_or(1);
    let sent_at_ms = system.get(&MessageSystemAttributeName::SentTimestamp).and_then(|v| v.parse().ok());
    let group_id = system.get(&MessageSystemAttributeName::MessageGroupId).cloned();
    let trace_header = system.get(&MessageSystemAttributeName::AwsTraceHeader).cloned();
    let attributes = message
        .message_attributes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, value)| {
            let text = value.string_value?;
            Some((name, Attribute { data_type: value.data_type, value: text }))
        })
        .collect();
    Received {
        message_id: message.message_id.unwrap_or_default(),
        receipt_handle: message.receipt_handle.unwrap_or_default(),
        body: message.body.unwrap_or_default(),
        receive_count,
        sent_at_ms,
        attributes,
        group_id,
        trace_header,
    }
}

/// Maps a batch call's failed entries (identified by their index as `Id`) back to receipt handles.
fn failures<'a>(
    handle_at: impl Fn(usize) -> Option<&'a String>,
    failed: impl Iterator<Item = (String, String, String, bool)>,
) -> Vec<BatchFailure> {
    failed
        .filter_map(|(id, code, message, sender_fault)| {
            let handle = handle_at(id.parse::<usize>().ok()?)?.clone();
            // ReceiptHandleIsInvalid and friends: the message was already deleted or its handle expired.
            let permanent = sender_fault && code != "InternalError";
            Some(BatchFailure { receipt_handle: handle, reason: format!("{code}: {message}"), permanent })
        })
        .collect()
}

/// SQS takes visibility timeouts as whole seconds in an `i32`.
fn whole_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}
