//! The queue seam: what the consumer needs from a queue, over an owned message type.
//!
//! [`sqs::SqsQueue`] is the real thing; [`memory::MemoryQueue`] has SQS's semantics (visibility, receive counts,
//! redrive after `maxReceiveCount`) on tokio's clock, so the consumer is unit-tested under a paused clock.

pub mod dead_letter_once;
pub mod memory;
pub mod sqs;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::handler::BoxFuture;

/// A received message, owned: nothing of the SDK's types leaks past the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    /// Valid until the visibility timeout lapses or the message is received again.
    pub receipt_handle: String,
    pub body: String,
    /// `ApproximateReceiveCount`: 1 on the first delivery.
    pub receive_count: u32,
    /// `SentTimestamp`, Unix milliseconds.
    pub sent_at_ms: Option<u64>,
    /// Message attributes (`String` and `Number` ones; binary attributes are not used by this system).
    pub attributes: BTreeMap<String, Attribute>,
    /// FIFO queues: the message group.
    pub group_id: Option<String>,
    /// SQS's `AWSTraceHeader` system attribute (X-Ray format), when the sender was traced by X-Ray.
    pub trace_header: Option<String>,
}

impl Received {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(|a| a.value.as_str())
    }
}

/// A message attribute's type (`String`, `Number`, `String.custom`) and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub data_type: String,
    pub value: String,
}

impl Attribute {
    pub fn text(value: impl Into<String>) -> Self {
        Self { data_type: "String".into(), value: value.into() }
    }
}

/// Settings of the queue, read once at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSettings {
    pub url: String,
    pub visibility_timeout: Duration,
    /// From the redrive policy; `None` when the queue has no DLQ.
    pub dlq_url: Option<String>,
    pub max_receive_count: Option<u32>,
}

impl QueueSettings {
    pub fn dlq_is_fifo(&self) -> bool {
        self.dlq_url.as_deref().is_some_and(|url| url.ends_with(".fifo"))
    }
}

/// How many messages the queue holds, by state (`GetQueueAttributes`: `ApproximateNumberOfMessages`,
/// `ApproximateNumberOfMessagesNotVisible`, `ApproximateNumberOfMessagesDelayed`). Approximate by nature: SQS
/// answers from a sample, and the numbers lag by up to a minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Waiting to be received.
    pub visible: u64,
    /// Received by some consumer (any worker instance) and not yet deleted, or waiting out a retry delay.
    pub in_flight: u64,
    /// Sent with a delay that has not elapsed yet.
    pub delayed: u64,
}

/// Why a queue call failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue (or its DLQ) does not exist or is not accessible.
    #[error("queue {queue} does not exist or is not accessible: {detail}")]
    NotFound { queue: String, detail: String },
    /// Unreachable, throttled, timing out, or refusing: worth retrying.
    #[error("SQS {operation} failed: {detail}")]
    Call {
        operation: &'static str,
        detail: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// AWS refused the worker's role this call: an operator must fix the policy, no retry heals it.
    #[error("{0}")]
    Denied(store::AccessDenied),
    /// A poison message cannot be dead-lettered: the queue has no redrive policy.
    #[error("the queue has no DLQ")]
    NoDlq,
}

/// One entry of a batch call that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFailure {
    pub receipt_handle: String,
    pub reason: String,
    /// Retrying cannot help (e.g. an expired receipt handle).
    pub permanent: bool,
}

/// What the consumer needs from a queue.
pub trait MessageQueue: Send + Sync + 'static {
    fn settings(&self) -> &QueueSettings;
    /// Long-polls for up to `max` messages (1 to 10).
    fn receive(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Received>, QueueError>>;
    /// Deletes up to 10 messages; returns the entries that failed.
    fn delete_batch<'a>(&'a self, handles: &'a [String]) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>>;
    /// Sets the visibility of up to 10 messages; returns the entries that failed.
    fn change_visibility_batch<'a>(
        &'a self,
        entries: &'a [(String, Duration)],
    ) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>>;
    /// Extends one in-flight message's visibility (heartbeat).
    fn extend_visibility<'a>(&'a self, handle: &'a str, timeout: Duration) -> BoxFuture<'a, Result<(), QueueError>>;
    /// Copies `message` to the DLQ with `rejectReason`/`rejectDetail`; the caller deletes the original afterwards.
    fn dead_letter<'a>(
        &'a self,
        message: &'a Received,
        reason: &'a str,
        detail: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
    /// The queue's message counts by state, for the depth gauges and `/health` (polled, never on the message path).
    fn depth(&self) -> BoxFuture<'_, Result<QueueDepth, QueueError>>;
}

/// The attributes a dead-lettered copy carries: ours (why, from where) first, then the original ones, within SQS's
/// limit of 10.
pub fn dead_letter_attributes(
    message: &Received,
    source_queue: &str,
    reason: &str,
    detail: &str,
) -> BTreeMap<String, Attribute> {
    // An empty string value is invalid in SQS.
    let non_empty = |v: String| if v.is_empty() { "-".to_owned() } else { v };
    let mut attributes = BTreeMap::from([
        ("rejectReason".to_owned(), Attribute::text(non_empty(reason.to_owned()))),
        ("rejectDetail".to_owned(), Attribute::text(non_empty(detail.chars().take(1024).collect()))),
        ("sourceQueue".to_owned(), Attribute::text(non_empty(source_queue.to_owned()))),
        ("originalMessageId".to_owned(), Attribute::text(non_empty(message.message_id.clone()))),
    ]);
    for (name, value) in &message.attributes {
        if attributes.len() >= 10 {
            break;
        }
        attributes.entry(name.clone()).or_insert_with(|| value.clone());
    }
    attributes
}
