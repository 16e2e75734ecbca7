//! Coalesces deletes and visibility changes into SQS batch calls (up to 10 entries, never lingering long).
//!
//! Handlers finish at slightly different moments; waiting a few milliseconds for neighbours turns ten calls into one,
//! which is most of the worker's SQS cost under backlog.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::queue::{BatchFailure, Queue};

/// SQS batch limit.
pub const MAX_BATCH: usize = 10;
/// How long the first entry of a batch may wait for company.
pub const LINGER: Duration = Duration::from_millis(20);
/// Attempts for an entry whose batch call or entry failed transiently.
const ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
pub enum Action {
    /// The message is done (processed, duplicate, stale, ignored, rejected-and-copied).
    Delete { receipt_handle: String },
    /// Make the message visible again after `after` (0 releases it at once).
    Visibility { receipt_handle: String, after: Duration },
}

/// Handle to the batching task. Dropping every clone flushes what is pending and ends the task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Action>,
}

impl Batcher {
    /// Spawns the task; await the returned handle after dropping every `Batcher` to be sure all was flushed.
    pub fn spawn(queue: Queue) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(run(queue, rx)))
    }

    pub fn submit(&self, action: Action) {
        if let Err(mpsc::error::SendError(action)) = self.tx.send(action) {
            // Only after shutdown finished; the message reappears after its visibility timeout.
            tracing::error!(?action, "batcher already stopped; action dropped, message will be redelivered");
        }
    }
}

async fn run(queue: Queue, mut rx: mpsc::UnboundedReceiver<Action>) {
    let mut deletes: Vec<(String, u32)> = Vec::new();
    let mut changes: Vec<(String, Duration, u32)> = Vec::new();
    let mut open = true;
    while open || !deletes.is_empty() || !changes.is_empty() {
        if deletes.is_empty() && changes.is_empty() {
            match rx.recv().await {
                Some(action) => push(action, &mut deletes, &mut changes),
                None => break,
            }
        }
        // Linger briefly for more entries, but flush as soon as a batch is full.
        let deadline = Instant::now() + LINGER;
        while open && deletes.len() < MAX_BATCH && changes.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(action)) => push(action, &mut deletes, &mut changes),
                Ok(None) => open = false,
                Err(_) => break,
            }
        }
        if !deletes.is_empty() {
            let batch: Vec<(String, u32)> = deletes.drain(..deletes.len().min(MAX_BATCH)).collect();
            flush_deletes(&queue, batch, &mut deletes).await;
        }
        if !changes.is_empty() {
            let batch: Vec<(String, Duration, u32)> = changes.drain(..changes.len().min(MAX_BATCH)).collect();
            flush_changes(&queue, batch, &mut changes).await;
        }
    }
}

fn push(action: Action, deletes: &mut Vec<(String, u32)>, changes: &mut Vec<(String, Duration, u32)>) {
    match action {
        Action::Delete { receipt_handle } => deletes.push((receipt_handle, 1)),
        Action::Visibility { receipt_handle, after } => changes.push((receipt_handle, after, 1)),
    }
}

async fn flush_deletes(queue: &Queue, batch: Vec<(String, u32)>, retry: &mut Vec<(String, u32)>) {
    let handles: Vec<String> = batch.iter().map(|(h, _)| h.clone()).collect();
    let failed = outcome(queue.delete_batch(&handles).await, &handles, "delete");
    for failure in failed {
        let attempt = batch.iter().find(|(h, _)| *h == failure.receipt_handle).map_or(ATTEMPTS, |(_, a)| *a);
        if !failure.permanent && attempt < ATTEMPTS {
            retry.push((failure.receipt_handle, attempt + 1));
        } else {
            // Not silent: the message will be redelivered and then recognised as a duplicate.
            tracing::error!(reason = %failure.reason, attempt, "delete failed; message will be redelivered and deduplicated");
        }
    }
}

async fn flush_changes(queue: &Queue, batch: Vec<(String, Duration, u32)>, retry: &mut Vec<(String, Duration, u32)>) {
    let entries: Vec<(String, Duration)> = batch.iter().map(|(h, d, _)| (h.clone(), *d)).collect();
    let handles: Vec<String> = batch.iter().map(|(h, _, _)| h.clone()).collect();
    let failed = outcome(queue.change_visibility_batch(&entries).await, &handles, "change_visibility");
    for failure in failed {
        let Some((_, after, attempt)) = batch.iter().find(|(h, _, _)| *h == failure.receipt_handle) else { continue };
        if !failure.permanent && *attempt < ATTEMPTS {
            retry.push((failure.receipt_handle, *after, attempt + 1));
        } else {
            tracing::warn!(reason = %failure.reason, "visibility change failed; message reappears after its current timeout");
        }
    }
}

/// A failed call fails every entry (transiently); a backoff keeps a dead endpoint from spinning the retries.
fn outcome(result: Result<Vec<BatchFailure>, crate::queue::SqsError>, handles: &[String], operation: &'static str) -> Vec<BatchFailure> {
    match result {
        Ok(failed) => {
            for f in &failed {
                metrics::counter!("pedidos_worker_sqs_entry_failures_total", "operation" => operation).increment(1);
                tracing::debug!(reason = %f.reason, operation, "batch entry failed");
            }
            failed
        }
        Err(e) => {
            metrics::counter!("pedidos_worker_sqs_errors_total", "operation" => operation).increment(1);
            tracing::warn!(error = %e, operation, entries = handles.len(), "batch call failed");
            handles.iter().map(|h| BatchFailure { receipt_handle: h.clone(), reason: e.to_string(), permanent: false }).collect()
        }
    }
}
