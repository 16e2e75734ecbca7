//! Coalesces deletes and visibility changes into SQS batch calls (up to 10 entries, never lingering long).
//!
//! Handlers finish at different moments, one store round trip or several apart; holding their deletes together turns
//! ten calls into one, which is most of the worker's SQS cost under backlog. A batch goes out when it is full, when
//! the receive loop is about to receive again ([`Batcher::flush`]: the messages it waited for have all settled), when
//! the worker stops, or after [`LINGER_MAX`]. A failed entry is retried with backoff while its receipt handle can still
//! be useful, and for at most [`FINAL_FLUSH`] once the worker is stopping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::queue::{BatchFailure, MessageQueue, QueueError};

/// SQS batch limit.
pub const MAX_BATCH: usize = 10;
/// The longest a batch stays open for company when nothing else sends it: a delete waits at most this long (the
/// message stays invisible meanwhile; only a SIGKILL could make it come back, as a duplicate).
pub const LINGER_MAX: Duration = Duration::from_secs(1);
/// Actions queued but not yet sent, and entries waiting to be retried. Settling a message waits while this many are
/// pending, so a slow or failing SQS slows receiving down instead of piling up deletes: a SIGKILL strands at most
/// this many settled-but-undeleted messages (plus the ones in flight), and the store recognises each as a duplicate
/// when it comes back.
pub const MAX_PENDING: usize = 2 * MAX_BATCH;
/// How long what is still pending may take to go out once the worker stops (the stop timeout must hold it).
pub const FINAL_FLUSH: Duration = Duration::from_secs(5);
/// First and longest delay before a failed entry is sent again.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub enum Action {
    /// The message is done (processed, duplicate, stale, ignored, rejected-and-copied).
    Delete { receipt_handle: String },
    /// Make the message visible again after `after` (0 releases it at once).
    Visibility { receipt_handle: String, after: Duration },
}

impl Action {
    fn handle(&self) -> &str {
        match self {
            Self::Delete { receipt_handle } | Self::Visibility { receipt_handle, .. } => receipt_handle,
        }
    }
}

/// Handle to the batching task. Dropping every clone flushes what is pending and ends the task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Action>,
    flush: Arc<FlushRequests>,
}

/// "Send everything submitted so far": a count of submitted actions, and the count a flush was asked up to. Counts,
/// not a flag, so a request that arrives when everything was already sent is not applied to the next batch.
#[derive(Default)]
struct FlushRequests {
    submitted: AtomicU64,
    up_to: AtomicU64,
    asked: Notify,
}

impl Batcher {
    /// Spawns the task; await the returned handle after dropping every `Batcher` to be sure all was flushed.
    pub fn spawn(queue: Arc<dyn MessageQueue>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(MAX_PENDING);
        let flush = Arc::new(FlushRequests::default());
        (Self { tx, flush: Arc::clone(&flush) }, tokio::spawn(run(queue, rx, flush)))
    }

    /// Sends what was submitted so far without waiting for a full batch: everything the caller waited for has settled.
    pub fn flush(&self) {
        self.flush.up_to.fetch_max(self.flush.submitted.load(Ordering::SeqCst), Ordering::SeqCst);
        self.flush.asked.notify_waiters();
    }

    /// Queues `action`, waiting while [`MAX_PENDING`] actions are already queued.
    pub async fn submit(&self, action: Action) {
        self.flush.submitted.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::error::SendError(action)) = self.tx.send(action).await {
            // Only after shutdown finished; the message reappears after its visibility timeout.
            tracing::error!(?action, "batcher already stopped; action dropped, message will be redelivered");
        }
    }
}

/// An action with its sending history.
struct Entry {
    action: Action,
    attempt: u32,
    not_before: Instant,
    /// After this, sending is pointless (the message may be with another worker) or the worker must exit.
    give_up_at: Instant,
}

/// The actions waiting to go out.
struct Pending {
    entries: Vec<Entry>,
    /// How long a receipt handle is worth retrying: half the visibility timeout, about what a settled message's lease
    /// has left.
    window: Duration,
}

impl Pending {
    fn push(&mut self, action: Action) {
        let now = Instant::now();
        self.entries.push(Entry { action, attempt: 1, not_before: now, give_up_at: now + self.window });
    }

    /// Stopping: everything must go out within [`FINAL_FLUSH`].
    fn closing(&mut self) {
        let last = Instant::now() + FINAL_FLUSH;
        for entry in &mut self.entries {
            entry.give_up_at = entry.give_up_at.min(last);
        }
    }

    fn ready(&self, delete: bool) -> usize {
        let now = Instant::now();
        self.entries
            .iter()
            .filter(|e| e.not_before <= now && matches!(e.action, Action::Delete { .. }) == delete)
            .count()
    }

    fn full(&self) -> bool {
        self.ready(true) >= MAX_BATCH || self.ready(false) >= MAX_BATCH
    }

    fn next_retry(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.not_before).min()
    }

    /// Takes up to a batch of ready deletes (`delete`) or visibility changes.
    fn take(&mut self, delete: bool) -> Vec<Entry> {
        let now = Instant::now();
        let mut batch = Vec::new();
        let mut kept = Vec::with_capacity(self.entries.len());
        for entry in self.entries.drain(..) {
            let wanted = entry.not_before <= now && matches!(entry.action, Action::Delete { .. }) == delete;
            if wanted && batch.len() < MAX_BATCH {
                batch.push(entry);
            } else {
                kept.push(entry);
            }
        }
        self.entries = kept;
        batch
    }
}

async fn run(queue: Arc<dyn MessageQueue>, mut rx: mpsc::Receiver<Action>, flush: Arc<FlushRequests>) {
    let window = (queue.settings().visibility_timeout / 2).max(Duration::from_secs(1));
    let mut pending = Pending { entries: Vec::new(), window };
    let mut open = true;
    // Actions taken from the channel, and how many of them had been when the last batches went out.
    let (mut received, mut sent_through) = (0u64, 0u64);
    while open || !pending.entries.is_empty() {
        // Wait for an action, or for the next retry to be due.
        if pending.ready(true) + pending.ready(false) == 0 {
            let retry_at = pending.next_retry();
            let room = open && pending.entries.len() < MAX_PENDING;
            tokio::select! {
                action = rx.recv(), if room => match action {
                    Some(action) => {
                        received += 1;
                        pending.push(action);
                    }
                    None => {
                        open = false;
                        pending.closing();
                    }
                },
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
            }
        }
        // Keep the batch open for company until it is full, everything a flush was asked for is here, or LINGER_MAX.
        let cap = Instant::now() + LINGER_MAX;
        while open && pending.entries.len() < MAX_PENDING && !pending.full() {
            let asked = flush.asked.notified();
            tokio::pin!(asked);
            // Registered before the request is read, so one made from here on wakes this loop.
            asked.as_mut().enable();
            let up_to = flush.up_to.load(Ordering::SeqCst);
            if up_to > sent_through && received >= up_to {
                break;
            }
            let wanted_more = up_to > sent_through;
            tokio::select! {
                next = tokio::time::timeout_at(cap, rx.recv()) => match next {
                    Ok(Some(action)) => {
                        received += 1;
                        pending.push(action);
                    }
                    Ok(None) => {
                        open = false;
                        pending.closing();
                    }
                    Err(_) => break,
                },
                () = &mut asked, if !wanted_more => {}
            }
        }
        sent_through = received;
        for delete in [true, false] {
            let batch = pending.take(delete);
            if !batch.is_empty() {
                flush_batch(queue.as_ref(), batch, &mut pending).await;
            }
        }
    }
}

/// Sends one batch; entries that failed transiently go back to `pending` with a delay while worth retrying.
async fn flush_batch(queue: &dyn MessageQueue, batch: Vec<Entry>, pending: &mut Pending) {
    let delete = matches!(batch.first().map(|e| &e.action), Some(Action::Delete { .. }));
    let handles: Vec<String> = batch.iter().map(|e| e.action.handle().to_owned()).collect();
    let (operation, result) = if delete {
        ("delete", queue.delete_batch(&handles).await)
    } else {
        let entries: Vec<(String, Duration)> = batch
            .iter()
            .filter_map(|e| match &e.action {
                Action::Visibility { receipt_handle, after } => Some((receipt_handle.clone(), *after)),
                Action::Delete { .. } => None,
            })
            .collect();
        ("change_visibility", queue.change_visibility_batch(&entries).await)
    };
    let failed = outcome(result, &handles, operation);
    let mut batch = batch;
    for failure in failed {
        let Some(at) = batch.iter().position(|e| e.action.handle() == failure.receipt_handle) else { continue };
        let mut entry = batch.swap_remove(at);
        let delay = RETRY_FIRST.saturating_mul(1 << entry.attempt.min(8).saturating_sub(1)).min(RETRY_MAX);
        let now = Instant::now();
        if !failure.permanent && now + delay < entry.give_up_at {
            entry.attempt += 1;
            entry.not_before = now + delay;
            pending.entries.push(entry);
        } else if delete {
            // Not silent: the message will be redelivered and then recognised as a duplicate.
            tracing::error!(reason = %failure.reason, attempts = entry.attempt, "delete failed; message will be redelivered and deduplicated");
        } else {
            tracing::warn!(reason = %failure.reason, attempts = entry.attempt, "visibility change failed; message reappears after its current timeout");
        }
    }
}

/// A failed call fails every entry (transiently).
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
            if matches!(e, QueueError::Denied(_)) {
                tracing::error!(error = %e, operation, entries = handles.len(), "batch call denied; an operator must fix the worker role's policy");
            } else {
                tracing::warn!(error = %e, operation, entries = handles.len(), "batch call failed");
            }
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
        assert!(started.elapsed() <= LINGER_MAX + Duration::from_millis(2), "{:?}", started.elapsed());
    }

    /// A flush sends what is pending at once, including what was still in the channel.
    #[tokio::test(start_paused = true)]
    async fn a_flush_sends_what_is_pending_at_once() {
        let sink = Arc::new(Recorder::default());
        let (batcher, _task) = Batcher::spawn(sink.clone());
        for n in 0..4 {
            batcher.submit(delete(n)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(sink.deletes.lock().map(|d| d.is_empty()).unwrap_or(false), "still open for company");
        let started = Instant::now();
        batcher.flush();
        while sink.deletes.lock().map(|d| d.is_empty()).unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(started.elapsed() <= Duration::from_millis(2), "{:?}", started.elapsed());
        assert_eq!(sink.deletes.lock().map(|d| d.iter().map(Vec::len).collect::<Vec<_>>()).unwrap_or_default(), [4]);
    }

    /// A failed call is retried with backoff (not in a tight loop), so nothing is silently dropped.
    #[tokio::test(start_paused = true)]
    async fn failed_calls_are_retried_with_backoff() {
        let sink = Arc::new(Recorder { fail_first: Mutex::new(2), ..Recorder::default() });
        let (batcher, task) = Batcher::spawn(sink.clone());
        let started = Instant::now();
        batcher.submit(delete(1)).await;
        drop(batcher);
        let _ = task.await;
        assert_eq!(sink.deletes.lock().map(|d| d.concat()).unwrap_or_default(), ["h1"]);
        assert!(started.elapsed() >= RETRY_FIRST * 3, "200 ms then 400 ms between attempts: {:?}", started.elapsed());
    }

    /// An SQS that never answers does not hold the worker's exit: what is pending is given up after the final flush.
    #[tokio::test(start_paused = true)]
    async fn a_dead_sqs_holds_the_stop_for_at_most_the_final_flush() {
        let sink = Arc::new(Recorder { fail_first: Mutex::new(usize::MAX), ..Recorder::default() });
        let (batcher, task) = Batcher::spawn(sink.clone());
        batcher.submit(delete(1)).await;
        let stopping = Instant::now();
        drop(batcher);
        let _ = task.await;
        assert!(stopping.elapsed() <= FINAL_FLUSH + Duration::from_millis(100), "{:?}", stopping.elapsed());
        assert!(sink.deletes.lock().map(|d| d.is_empty()).unwrap_or(false));
    }

    /// Entries arriving far apart (handlers finishing one store write after another, 50 ms each on a busy emulator)
    /// still share a batch.
    #[tokio::test(start_paused = true)]
    async fn entries_trickling_in_share_one_batch() {
        let sink = Arc::new(Recorder::default());
        let (batcher, task) = Batcher::spawn(sink.clone());
        for n in 0..10 {
            batcher.submit(delete(n)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(batcher);
        let _ = task.await;
        let sizes: Vec<usize> = sink.deletes.lock().map(|d| d.iter().map(Vec::len).collect()).unwrap_or_default();
        assert_eq!(sizes, [10]);
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
