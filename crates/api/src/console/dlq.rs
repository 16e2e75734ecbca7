//! The DLQ panel: list, redrive and delete, with `pedidos-admin`'s scan (listing never consumes; a message is
//! deleted only after its copy was confirmed; everything else is made visible again).

use std::collections::HashSet;

use pedidos_admin::error::AdminError;
use pedidos_admin::message::{now_ms, DlqMessage};
use pedidos_admin::scan::Scan;
use pedidos_admin::sqs;
use serde_json::{json, Value};

use super::sampler::QueueRef;
use super::Selection;
use crate::error::ApiError;

/// Most messages the panel lists (the CLI is there for more).
const LIST_MAX: usize = 200;
/// Characters of the body the panel previews.
const PREVIEW: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Redrive,
    Delete,
}

fn unavailable(error: AdminError) -> ApiError {
    ApiError::Unavailable(format!("console DLQ: {error}"))
}

fn dlq_url(queue: &QueueRef) -> Result<&str, ApiError> {
    queue.dlq_url.as_deref().ok_or_else(|| ApiError::NotFound(format!("queue {} has no DLQ", queue.name)))
}

fn entry(message: &DlqMessage, now: u64) -> Value {
    json!({
        "messageId": message.message_id,
        "rejectReason": message.reason(),
        "rejectDetail": message.attribute("rejectDetail"),
        "receiveCount": message.receive_count,
        "ageSeconds": message.age(now).map(|age| age.as_secs()),
        // Raw text: the page inserts it as text, never as markup.
        "bodyPreview": message.body.chars().take(PREVIEW).collect::<String>(),
    })
}

/// `{"queue", "dlq", "messages": [...], "truncated"}`.
///
/// # Errors
/// 404 without a DLQ, 503 when SQS fails.
pub async fn list(client: &aws_sdk_sqs::Client, queue: &QueueRef) -> Result<Value, ApiError> {
    let url = dlq_url(queue)?;
    let mut scan = Scan::new(client, url);
    let now = now_ms();
    let mut messages = Vec::new();
    let result = async {
        while messages.len() < LIST_MAX {
            let batch = scan.next_batch().await?;
            if batch.is_empty() {
                break;
            }
            messages.extend(batch.iter().map(|m| entry(m, now)));
        }
        Ok::<_, AdminError>(())
    }
    .await;
    // Whatever happened, nothing stays hidden.
    let failures = scan.release().await;
    if !failures.is_empty() {
        tracing::warn!(
            count = failures.len(),
            "console: DLQ messages not made visible again; they reappear by themselves"
        );
    }
    result.map_err(unavailable)?;
    let truncated = messages.len() >= LIST_MAX;
    Ok(json!({"queue": queue.name, "dlq": queue.dlq_name, "messages": messages, "truncated": truncated}))
}

/// Redrives (copy to the source queue, then delete) or deletes the selected messages.
/// `{"done": n, "failed": [{"messageId", "error"}], "notFound": [ids]}`.
///
/// # Errors
/// 404 without a DLQ, 503 when listing fails.
pub async fn act(
    client: &aws_sdk_sqs::Client,
    queue: &QueueRef,
    selection: &Selection,
    action: Action,
) -> Result<Value, ApiError> {
    let url = dlq_url(queue)?;
    let wanted: HashSet<&str> = selection.message_ids.iter().map(String::as_str).collect();
    let mut scan = Scan::new(client, url);
    let mut done = 0usize;
    let mut failed = Vec::new();
    let mut found = HashSet::new();
    let result = async {
        loop {
            let batch = scan.next_batch().await?;
            if batch.is_empty() {
                break;
            }
            for message in batch {
                if !selection.all && !wanted.contains(message.message_id.as_str()) {
                    continue;
                }
                found.insert(message.message_id.clone());
                let outcome = match action {
                    Action::Redrive => {
                        let destination = message.attribute("sourceQueue").unwrap_or(&queue.url).to_owned();
                        match sqs::send_copy(client, &destination, &message).await {
                            // Deleted only once the copy exists.
                            Ok(_) => sqs::delete(client, url, &message.receipt_handle).await,
                            Err(error) => Err(error),
                        }
                    }
                    Action::Delete => sqs::delete(client, url, &message.receipt_handle).await,
                };
                match outcome {
                    Ok(()) => {
                        scan.deleted(&message);
                        done += 1;
                    }
                    Err(error) => failed.push(json!({"messageId": message.message_id, "error": error.to_string()})),
                }
            }
            if !selection.all && found.len() == wanted.len() {
                break;
            }
        }
        Ok::<_, AdminError>(())
    }
    .await;
    let _ = scan.release().await;
    result.map_err(unavailable)?;
    let not_found: Vec<&str> = wanted.iter().filter(|id| !found.contains(**id)).copied().collect();
    tracing::info!(queue = %queue.name, ?action, done, failed = failed.len(), "console DLQ action");
    Ok(json!({"done": done, "failed": failed, "notFound": not_found}))
}
