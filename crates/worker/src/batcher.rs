//! Coalesces deletes and visibility changes into SQS batch calls (up to 10 entries, never lingering long).
//!
//! Handlers finish at slightly different moments; waiting a few milliseconds for neighbours turns ten calls into one,
//! which is most of the worker's SQS cost under backlog.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::queue::{BatchFailure, MessageQueue, QueueError};

/// SQS batch limit.
pub const MAX_BATCH: usize = 10;
/// How long the first entry of a batch may wait for company.
pub const LINGER: Duration = Duration::from_millis(20);
/// Attempts for an entry whose batch call or entry failed transiently.
const ATTEMPTS: u32 = 3;
/// Actions queued but not yet sent. Settling a message waits while this many are pending, so a slow or failing SQS
/// slows receiving down instead of piling up deletes: a SIGKILL strands at most this many settled-but-undeleted
/// messages (plus the ones in flight), and the store recognises each as a duplicate when it comes back.
pub const MAX_PENDING: usize = 2 * MAX_BATCH;

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
    tx: mpsc::Sender<Action>,
}

impl Batcher {
    /// Spawns the task; await the returned handle after dropping every `Batcher` to be sure all was flushed.
    pub fn spawn(queue: Arc<dyn MessageQueue>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(MAX_PENDING);
        (Self { tx }, tokio::spawn(run(queue, rx)))
    }

    /// Queues `action`, waiting while [`MAX_PENDING`] actions are already queued.
    pub async fn submit(&self, action: Action) {
        if let Err(mpsc::error::SendError(action)) = self.tx.send(action).await {
            // Only after shutdown finished; the message reappears after its visibility timeout.
            tracing::error!(?action, "batcher already stopped; action dropped, message will be redelivered");
        }
    }
}

async fn run(queue: Arc<dyn MessageQueue>, mut rx: mpsc::Receiver<Action>) {
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
            flush_deletes(queue.as_ref(), batch, &mut deletes).await;
        }
        if !changes.is_empty() {
            let batch: Vec<(String, Duration, u32)> = changes.drain(..changes.len().min(MAX_BATCH)).collect();
            flush_changes(queue.as_ref(), batch, &mut changes).await;
        }
    }
}

fn push(action: Action, deletes: &mut Vec<(String, u32)>, changes: &mut Vec<(String, Duration, u32)>) {
    match action {
        Action::Delete { receipt_handle } => deletes.push((receipt_handle, 1)),
        Action::Visibility { receipt_handle, after } => changes.push((receipt_handle, after, 1)),
    }
}

async fn flush_deletes(queue: &dyn MessageQueue, batch: Vec<(String, u32)>, retry: &mut Vec<(String, u32)>) {
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

async fn flush_changes(
    queue: &dyn MessageQueue,
    batch: Vec<(String, Duration, u32)>,
    retry: &mut Vec<(String, Duration, u32)>,
) {
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
fn outcome(
    result: Result<Vec<BatchFailure>, QueueError>,
    handles: &[String],
    operation: &'static str,
) -> Vec<BatchFailure> {
    match result {
        Ok(failed) => {
            for f in &failed {
                metrics::counter!("pedidos_worker_sqs_entry_failures_total", "operation" => operation).increment(1);
                tracing::debug!(reason = %f.reason, operation, "batch entry failed");
            }
            failed
        }
        Err(e) => {
            // Counted in `pedidos_worker_sqs_errors_total` by the queue adapter, with every other failed call.
            tracing::warn!(error = %e, operation, entries = handles.len(), "batch call failed");
            handles
                .iter()
                .map(|h| BatchFailure { receipt_handle: h.clone(), reason: e.to_string(), permanent: false })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::BoxFuture;
    use crate::queue::{QueueDepth, QueueSettings, Received};
    use proptest::prelude::*;
    use std::sync::Mutex;

    /// Records every call; fails the first `fail_first` delete calls as a whole.
    #[derive(Default)]
    struct Recorder {
        settings: QueueSettings,
        deletes: Mutex<Vec<Vec<String>>>,
        changes: Mutex<Vec<Vec<(String, Duration)>>>,
        fail_first: Mutex<usize>,
    }

    impl MessageQueue for Recorder {
        fn settings(&self) -> &QueueSettings {
            &self.settings
        }

        fn receive(&self, _: usize, _: Duration) -> BoxFuture<'_, Result<Vec<Received>, QueueError>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn extend_visibility<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<(), QueueError>> {
            Box::pin(async { Ok(()) })
        }

        fn dead_letter<'a>(&'a self, _: &'a Received, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), QueueError>> {
            Box::pin(async { Ok(()) })
        }

        fn depth(&self) -> BoxFuture<'_, Result<QueueDepth, QueueError>> {
            Box::pin(async { Ok(QueueDepth::default()) })
        }

        fn delete_batch<'a>(&'a self, handles: &'a [String]) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>> {
            Box::pin(async move {
                let mut fail = self.fail_first.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if *fail > 0 {
                    *fail -= 1;
                    return Err(QueueError::Call {
                        operation: "delete",
                        detail: "connection refused".into(),
                        source: None,
                    });
                }
                self.deletes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(handles.to_vec());
                Ok(Vec::new())
            })
        }

        fn change_visibility_batch<'a>(
            &'a self,
            entries: &'a [(String, Duration)],
        ) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>> {
            Box::pin(async move {
                self.changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(entries.to_vec());
                Ok(Vec::new())
            })
        }
    }

    fn delete(n: usize) -> Action {
        Action::Delete { receipt_handle: format!("h{n}") }
    }

    /// 25 deletes submitted at once go out as 10 + 10 + 5.
    #[tokio::test(start_paused = true)]
    async fn fills_batches_of_ten() {
        let sink = Arc::new(Recorder::default());
        let (batcher, task) = Batcher::spawn(sink.clone());
        for n in 0..25 {
            batcher.submit(delete(n)).await;
        }
        drop(batcher);
        let _ = task.await;
        let sizes: Vec<usize> = sink.deletes.lock().map(|d| d.iter().map(Vec::len).collect()).unwrap_or_default();
        assert_eq!(sizes, [10, 10, 5]);
    }

    /// A lone delete is not held back longer than the linger time.
    #[tokio::test(start_paused = true)]
    async fn a_lone_entry_waits_at_most_the_linger() {
        let sink = Arc::new(Recorder::default());
        let (batcher, _task) = Batcher::spawn(sink.clone());
        let started = Instant::now();
        batcher.submit(delete(1)).await;
        while sink.deletes.lock().map(|d| d.is_empty()).unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(started.elapsed() <= LINGER + Duration::from_millis(2), "{:?}", started.elapsed());
    }

    /// A failed call is retried, so nothing is silently dropped.
    #[tokio::test(start_paused = true)]
    async fn failed_calls_are_retried() {
        let sink = Arc::new(Recorder { fail_first: Mutex::new(2), ..Recorder::default() });
        let (batcher, task) = Batcher::spawn(sink.clone());
        batcher.submit(delete(1)).await;
        drop(batcher);
        let _ = task.await;
        assert_eq!(sink.deletes.lock().map(|d| d.concat()).unwrap_or_default(), ["h1"]);
    }

    proptest! {
        /// Whatever the mix, every action is sent exactly once, in batches of at most 10.
        #[test]
        fn every_action_sent_once(kinds in proptest::collection::vec(any::<bool>(), 0..60)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let sink = Arc::new(Recorder::default());
            runtime.block_on(async {
                let (batcher, task) = Batcher::spawn(sink.clone());
                for (n, is_delete) in kinds.iter().enumerate() {
                    batcher.submit(if *is_delete { delete(n) } else { Action::Visibility { receipt_handle: format!("h{n}"), after: Duration::ZERO } }).await;
                }
                drop(batcher);
                let _ = task.await;
            });
            let deletes = sink.deletes.lock().map(|d| d.clone()).unwrap_or_default();
            let changes = sink.changes.lock().map(|d| d.clone()).unwrap_or_default();
            prop_assert!(deletes.iter().all(|b| !b.is_empty() && b.len() <= MAX_BATCH));
            prop_assert!(changes.iter().all(|b| !b.is_empty() && b.len() <= MAX_BATCH));
            let mut sent: Vec<String> = deletes.concat();
            sent.extend(changes.concat().into_iter().map(|(h, _)| h));
            sent.sort();
            let mut expected: Vec<String> = (0..kinds.len()).map(|n| format!("h{n}")).collect();
            expected.sort();
            prop_assert_eq!(sent, expected);
        }
    }
}
