//! The worker's view of its queue: settings read at start-up, and every SQS call it makes (each one counted).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName,
};
use aws_sdk_sqs::Client;

/// Why talking to SQS failed. The message is for logs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SqsError(pub String);

fn sqs_error<E: std::error::Error>(e: E) -> SqsError {
    SqsError(DisplayErrorContext(e).to_string())
}

fn count(operation: &'static str) {
    metrics::counter!("pedidos_worker_sqs_calls_total", "operation" => operation).increment(1);
}

/// Settings of the queue, read once at start-up.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub url: String,
    pub visibility_timeout: Duration,
    /// From the redrive policy; `None` when the queue has no DLQ.
    pub dlq_url: Option<String>,
    pub max_receive_count: Option<u32>,
}

/// Start-up failures, each naming the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {queue} does not exist or is not accessible: {cause}")]
    NotFound { queue: String, cause: String },
    #[error("queue {queue}: {cause}")]
    Unreachable { queue: String, cause: String },
}

/// Resolves the queue and reads its visibility timeout and redrive policy.
///
/// # Errors
/// [`QueueError::NotFound`] when SQS says the queue does not exist; [`QueueError::Unreachable`] otherwise.
pub async fn discover(client: &Client, queue: &str) -> Result<QueueSettings, QueueError> {
    let classify = |e: String| {
        if e.contains("NonExistentQueue") || e.contains("QueueDoesNotExist") || e.contains("does not exist") {
            QueueError::NotFound { queue: queue.to_owned(), cause: e }
        } else {
            QueueError::Unreachable { queue: queue.to_owned(), cause: e }
        }
    };
    let url = platform::topology::resolve_queue_url(client, queue).await.map_err(|e| classify(e.to_string()))?;
    let attributes = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| classify(DisplayErrorContext(e).to_string()))?
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
        Some(arn) => Some(dlq_url_from_arn(client, &arn).await.map_err(|e| classify(e.0))?),
        None => None,
    };
    Ok(QueueSettings { url, visibility_timeout, dlq_url, max_receive_count })
}

/// `arn:aws:sqs:REGION:ACCOUNT:NAME` to its URL via `GetQueueUrl` (works on AWS, LocalStack and moto alike).
async fn dlq_url_from_arn(client: &Client, arn: &str) -> Result<String, SqsError> {
    let parts: Vec<&str> = arn.split(':').collect();
    let [_, _, _, _, account, name] = parts.as_slice() else {
        return Err(SqsError(format!("redrive policy names a malformed DLQ ARN {arn:?}")));
    };
    let out = client
        .get_queue_url()
        .queue_name(*name)
        .queue_owner_aws_account_id(*account)
        .send()
        .await
        .map_err(sqs_error)?;
    out.queue_url.ok_or_else(|| SqsError(format!("no URL for DLQ {arn}")))
}

/// One entry of a batch call whose result is reported per entry.
#[derive(Debug, Clone)]
pub struct BatchFailure {
    pub receipt_handle: String,
    pub reason: String,
    /// SQS says retrying cannot help (e.g. an expired receipt handle).
    pub permanent: bool,
}

/// The SQS calls the worker makes, on its own queue and DLQ.
#[derive(Debug, Clone)]
pub struct Queue {
    client: Client,
    pub settings: QueueSettings,
}

impl Queue {
    pub fn new(client: Client, settings: QueueSettings) -> Self {
        Self { client, settings }
    }

    /// Long-polls for up to `max` messages (1 to 10) with every attribute.
    ///
    /// # Errors
    /// Any SQS failure.
    pub async fn receive(&self, max: i32, wait: Duration) -> Result<Vec<Message>, SqsError> {
        count("receive");
        let out = self
            .client
            .receive_message()
            .queue_url(&self.settings.url)
            .max_number_of_messages(max)
            .wait_time_seconds(i32::try_from(wait.as_secs()).unwrap_or(20))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Deletes up to 10 messages in one call; returns the entries that failed.
    ///
    /// # Errors
    /// When the whole call failed.
    pub async fn delete_batch(&self, handles: &[String]) -> Result<Vec<BatchFailure>, SqsError> {
        count("delete");
        let entries = handles
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(handle).build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SqsError(e.to_string()))?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.settings.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(failures(
            |i| handles.get(i),
            out.failed.into_iter().map(|f| (f.id, f.code, f.message.unwrap_or_default(), f.sender_fault)),
        ))
    }

    /// Sets the visibility of up to 10 messages in one call; returns the entries that failed.
    ///
    /// # Errors
    /// When the whole call failed.
    pub async fn change_visibility_batch(&self, entries: &[(String, Duration)]) -> Result<Vec<BatchFailure>, SqsError> {
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
            .map_err(|e| SqsError(e.to_string()))?;
        let out = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.settings.url)
            .set_entries(Some(request))
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(failures(
            |i| entries.get(i).map(|(handle, _)| handle),
            out.failed.into_iter().map(|f| (f.id, f.code, f.message.unwrap_or_default(), f.sender_fault)),
        ))
    }

    /// Extends one in-flight message's visibility (heartbeat).
    ///
    /// # Errors
    /// Any SQS failure, including an expired receipt handle.
    pub async fn extend_visibility(&self, handle: &str, timeout: Duration) -> Result<(), SqsError> {
        count("change_visibility");
        self.client
            .change_message_visibility()
            .queue_url(&self.settings.url)
            .receipt_handle(handle)
            .visibility_timeout(whole_seconds(timeout))
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(())
    }

    /// Copies a poison message to the DLQ with the reason attached. Its original attributes are kept (up to SQS's limit
    /// of 10 in total) so nothing needed for a redrive is lost.
    ///
    /// # Errors
    /// No DLQ configured, or the send failed.
    pub async fn send_to_dlq(&self, message: &Message, code: &str, detail: &str) -> Result<(), SqsError> {
        let Some(dlq) = &self.settings.dlq_url else { return Err(SqsError("queue has no DLQ".into())) };
        let text = |value: &str| MessageAttributeValue::builder().data_type("String").string_value(value).build();
        let mut attributes: HashMap<String, MessageAttributeValue> = HashMap::new();
        let ours = [
            ("rejectReason", code.to_owned()),
            ("rejectDetail", detail.chars().take(1024).collect::<String>()),
            ("sourceQueue", self.settings.url.clone()),
            ("originalMessageId", message.message_id.clone().unwrap_or_default()),
        ];
        for (name, value) in ours {
            // An empty string value is invalid in SQS.
            let value = if value.is_empty() { "-".to_owned() } else { value };
            attributes.insert(name.to_owned(), text(&value).map_err(|e| SqsError(e.to_string()))?);
        }
        for (name, value) in message.message_attributes.clone().unwrap_or_default() {
            if attributes.len() >= 10 {
                break;
            }
            attributes.entry(name).or_insert(value);
        }
        count("send");
        self.client
            .send_message()
            .queue_url(dlq)
            .message_body(message.body.clone().unwrap_or_else(|| "-".into()))
            .set_message_attributes(Some(attributes))
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(())
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
