//! Walking a DLQ without consuming it.
//!
//! SQS has no "peek": the only way to read a message is to receive it, which hides it. The scan receives with a
//! short visibility timeout, hands each message to the command once (deduplicated by message id), holds every
//! message it received until the command says it deleted it, and makes all the others visible again at the end:
//! whatever path a command takes out of its loop (done, `--max`, an error, Ctrl-C, a closed stdout), nothing it
//! received stays hidden.
//!
//! # When the walk ends
//! A receive is a sample: it may come back empty, or with only messages already seen, while messages the scan has
//! not seen are still visible. So a receive that brings nothing new proves nothing; only SQS's own count can. The
//! scan keeps what it holds hidden for the whole walk (extending the visibility before it lapses, and holding again,
//! with its new receipt handle, any seen message that reappears), so once every message has been received, held or
//! deleted, `ApproximateNumberOfMessages` (visible messages only) reads 0. When a receive brings nothing new the scan
//! asks for that count:
//! - 0 ends the walk: [`WalkEnd::Exhausted`];
//! - more keeps it receiving, for at most [`Scan::patience`] (default [`PATIENCE`]) of such fruitless rounds in a
//!   row, then the walk ends as [`WalkEnd::StoppedEarly`] with the count last read, which the commands report
//!   instead of success.
//!
//! The count is approximate: SQS documents that it may take a minute to settle, and on a FIFO DLQ the messages of a
//! group the scan holds are counted but not returned until the scan lets go. Trusting it only when it reads 0 means a
//! count that lags behind makes a walk that saw everything end as "stopped early" (a second run finds nothing left),
//! never the reverse; a message that arrives after the count read 0 is for the next walk.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use aws_sdk_sqs::Client;
use tokio::time::Instant;

use crate::error::AdminError;
use crate::message::DlqMessage;
use crate::sqs;

/// How long the walk keeps receiving while SQS still counts visible messages and receives bring nothing new. SQS
/// documents that `ApproximateNumberOfMessages` may need about a minute to settle after a change; 75 s covers that
/// minute plus the rounds' own calls (one receive with a 1 s wait and one count per round, about 60 rounds).
pub const PATIENCE: Duration = Duration::from_secs(75);

/// Held messages are hidden again for [`sqs::SCAN_VISIBILITY`] once they have been hidden this long, so a long walk
/// does not find its own messages visible again (and counted) halfway through.
const EXTEND_AFTER: Duration = Duration::from_secs(sqs::SCAN_VISIBILITY.as_secs() / 2);

/// The shortest fruitless round: an endpoint that answers an empty receive at once (no long poll) is asked about
/// once a second while the patience lasts, not in a tight loop.
const FRUITLESS_ROUND: Duration = sqs::RECEIVE_WAIT;

/// The three SQS calls a scan makes on its DLQ; a seam so the walk can be tested against a fake queue.
pub trait DlqReader {
    /// Up to 10 messages, each hidden for [`sqs::SCAN_VISIBILITY`].
    fn receive(&self) -> impl Future<Output = Result<Vec<DlqMessage>, AdminError>> + Send;
    /// `ApproximateNumberOfMessages`: the visible messages (neither in flight nor delayed).
    fn visible(&self) -> impl Future<Output = Result<u64, AdminError>> + Send;
    /// Sets the visibility timeout of `(message id, receipt handle)` pairs (0: visible again). Returns a line per
    /// message whose visibility could not be changed.
    fn change_visibility(
        &self,
        handles: &[(String, String)],
        timeout: Duration,
    ) -> impl Future<Output = Vec<String>> + Send;
}

/// A DLQ on SQS.
#[derive(Debug, Clone)]
pub struct SqsDlq {
    client: Client,
    url: String,
}

impl DlqReader for SqsDlq {
    fn receive(&self) -> impl Future<Output = Result<Vec<DlqMessage>, AdminError>> + Send {
        sqs::receive(&self.client, &self.url)
    }

    async fn visible(&self) -> Result<u64, AdminError> {
        // Without a number the walk cannot know it is complete; failing says so, guessing 0 would not.
        sqs::visible_count(&self.client, &self.url)
            .await?
            .ok_or_else(|| AdminError::State(format!("SQS returned no ApproximateNumberOfMessages for {}", self.url)))
    }

    fn change_visibility(
        &self,
        handles: &[(String, String)],
        timeout: Duration,
    ) -> impl Future<Output = Vec<String>> + Send {
        sqs::change_visibility(&self.client, &self.url, handles, timeout)
    }
}

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkEnd {
    /// SQS counted no visible message left: every message was received (and is held or was deleted).
    Exhausted,
    /// The patience ran out while SQS still counted `visible_left` visible messages the walk did not receive.
    StoppedEarly { visible_left: u64 },
}

/// A walk over one DLQ.
pub struct Scan<R = SqsDlq> {
    reader: R,
    patience: Duration,
    seen: HashSet<String>,
    /// Message id -> latest receipt handle, for every message received and not deleted.
    held: HashMap<String, String>,
    /// Ids in the order they were first seen, so extensions and releases follow the queue's order.
    order: Vec<String>,
    /// When the held messages were last hidden all together (first receive or last extension).
    hidden_since: Option<Instant>,
    end: Option<WalkEnd>,
    /// Past it, fruitless rounds end the walk at once (the console answers a person within a bound).
    deadline: Option<Instant>,
}

impl Scan<SqsDlq> {
    pub fn new(client: &Client, dlq_url: &str) -> Self {
        Self::over(SqsDlq { client: client.clone(), url: dlq_url.to_owned() })
    }
}

impl<R: DlqReader> Scan<R> {
    /// A walk over `reader`, with the default [`PATIENCE`].
    pub fn over(reader: R) -> Self {
        Self {
            reader,
            patience: PATIENCE,
            seen: HashSet::new(),
            held: HashMap::new(),
            order: Vec::new(),
            hidden_since: None,
            end: None,
            deadline: None,
        }
    }

    /// Ends the walk at the first fruitless round after `deadline`, as [`WalkEnd::StoppedEarly`] when SQS still counts
    /// visible messages.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// How long to keep receiving while SQS counts visible messages that receives do not return.
    #[must_use]
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// How the walk ended; `None` while it goes on (or when the caller stopped before its end, e.g. `--max`).
    pub fn end(&self) -> Option<WalkEnd> {
        self.end
    }

    /// Whether the walk reached the point where SQS counted no visible message left.
    pub fn complete(&self) -> bool {
        self.end == Some(WalkEnd::Exhausted)
    }

    /// The visible messages SQS still counted when the walk stopped early; `None` otherwise.
    pub fn stopped_early(&self) -> Option<u64> {
        match self.end {
            Some(WalkEnd::StoppedEarly { visible_left }) => Some(visible_left),
            _ => None,
        }
    }

    /// The next messages not seen before, held until [`Scan::deleted`] or [`Scan::release`]; empty when the walk is
    /// over ([`Scan::end`] says how).
    ///
    /// # Errors
    /// [`AdminError::Aws`] when a receive or the count fails (what is held is still released by [`Scan::release`]).
    pub async fn next_batch(&mut self) -> Result<Vec<DlqMessage>, AdminError> {
        let mut fruitless_since: Option<Instant> = None;
        while self.end.is_none() {
            self.extend_if_due().await;
            let round = Instant::now();
            let received = self.reader.receive().await?;
            let fresh = self.hold(received);
            if !fresh.is_empty() {
                return Ok(fresh);
            }
            let visible = self.reader.visible().await?;
            if visible == 0 {
                self.end = Some(WalkEnd::Exhausted);
            } else if fruitless_since.get_or_insert(round).elapsed() >= self.patience
                || self.deadline.is_some_and(|deadline| round >= deadline)
            {
                self.end = Some(WalkEnd::StoppedEarly { visible_left: visible });
            } else {
                tokio::time::sleep_until(round + FRUITLESS_ROUND).await;
            }
        }
        Ok(Vec::new())
    }

    /// One more receive, whether or not the walk has ended: the messages not seen before, held like the others (a
    /// redrive watching for its copies coming back).
    ///
    /// # Errors
    /// [`AdminError::Aws`] when the receive fails.
    pub async fn receive_more(&mut self) -> Result<Vec<DlqMessage>, AdminError> {
        self.extend_if_due().await;
        let received = self.reader.receive().await?;
        Ok(self.hold(received))
    }

    /// Holds what a receive returned (hidden by it, under its newest receipt handle) and returns the messages not
    /// seen before.
    fn hold(&mut self, received: Vec<DlqMessage>) -> Vec<DlqMessage> {
        if !received.is_empty() {
            self.hidden_since.get_or_insert_with(Instant::now);
        }
        let mut fresh = Vec::new();
        for message in received {
            // A seen message is held again too: it reappeared (its visibility lapsed, or SQS delivered a deleted
            // message again), this receive hid it, and only this handle can make it visible at the end.
            self.held.insert(message.message_id.clone(), message.receipt_handle.clone());
            if self.seen.insert(message.message_id.clone()) {
                self.order.push(message.message_id.clone());
                fresh.push(message);
            }
        }
        fresh
    }

    /// Hides every held message for another [`sqs::SCAN_VISIBILITY`] once [`EXTEND_AFTER`] has passed.
    async fn extend_if_due(&mut self) {
        if self.hidden_since.is_none_or(|since| since.elapsed() < EXTEND_AFTER) {
            return;
        }
        let handles = self.held_handles();
        // A message whose extension failed becomes visible when its timeout lapses; the receive that returns it
        // holds it again (see `hold`), so a failure costs a round, never a hidden or a repeated message.
        let _failures = self.reader.change_visibility(&handles, sqs::SCAN_VISIBILITY).await;
        self.hidden_since = (!handles.is_empty()).then(Instant::now);
    }

    /// `(id, receipt handle)` of every held message, in the order first seen.
    fn held_handles(&self) -> Vec<(String, String)> {
        self.order.iter().filter_map(|id| Some((id.clone(), self.held.get(id)?.clone()))).collect()
    }

    /// The command deleted `message`: nothing to release.
    pub fn deleted(&mut self, message: &DlqMessage) {
        self.held.remove(&message.message_id);
    }

    /// Makes every held message visible again. Returns a line per message that could not be (it becomes visible
    /// by itself when the scan's visibility timeout ends).
    pub async fn release(&mut self) -> Vec<String> {
        let handles = self.held_handles();
        self.held.clear();
        self.hidden_since = None;
        self.reader.change_visibility(&handles, Duration::ZERO).await
    }
}

/// Releases what `scan` holds and reports on stderr what could not be released.
pub async fn release_and_report<R: DlqReader>(scan: &mut Scan<R>) {
    let failures = scan.release().await;
    if !failures.is_empty() {
        eprintln!(
            "warning: {} message(s) could not be made visible again; they reappear within {} s by themselves:",
            failures.len(),
            sqs::SCAN_VISIBILITY.as_secs()
        );
        for failure in failures {
            eprintln!("  {failure}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::{Mutex, MutexGuard};

    /// One message of the fake queue.
    struct Stored {
        id: String,
        /// Receives so far; the receipt handle is `id#receives`, so only the newest one is valid.
        receives: u32,
        visible_at: Instant,
        deleted: bool,
    }

    impl Stored {
        fn handle(&self) -> String {
            format!("{}#{}", self.id, self.receives)
        }
    }

    /// A DLQ that behaves like SQS where it matters to the walk: receives hide messages for the given visibility and
    /// only the newest receipt handle changes visibility. Knobs make it sample, lag and fail.
    #[derive(Default)]
    struct Fake {
        messages: Vec<Stored>,
        /// Receives that come back empty whatever is visible (a sampled receive), used up first.
        empty_receives: u32,
        /// The most messages a receive returns (10 when 0).
        per_receive: usize,
        /// Counts answered instead of the true one, first to last (a count lagging behind).
        stale_counts: VecDeque<u64>,
        /// Visible messages the count includes but receives never return (a FIFO group held elsewhere).
        unreachable: u64,
        /// The receive with this number (1-based) fails.
        failing_receive: Option<u32>,
        receive_calls: u32,
        count_calls: u32,
        /// `(ids, timeout)` of each visibility change.
        changes: Vec<(Vec<String>, Duration)>,
    }

    struct FakeDlq(Mutex<Fake>);

    impl FakeDlq {
        fn with(n: usize, configure: impl FnOnce(&mut Fake)) -> Self {
            let now = Instant::now();
            let messages = (0..n)
                .map(|i| Stored { id: format!("m{i:02}"), receives: 0, visible_at: now, deleted: false })
                .collect();
            let mut fake = Fake { messages, ..Fake::default() };
            configure(&mut fake);
            Self(Mutex::new(fake))
        }

        fn state(&self) -> MutexGuard<'_, Fake> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// What a command's `DeleteMessage` does.
        fn delete(&self, id: &str) {
            if let Some(stored) = self.state().messages.iter_mut().find(|m| m.id == id) {
                stored.deleted = true;
            }
        }

        /// Ids visible now (not deleted, not hidden).
        fn visible_ids(&self) -> Vec<String> {
            let now = Instant::now();
            let state = self.state();
            state.messages.iter().filter(|m| !m.deleted && m.visible_at <= now).map(|m| m.id.clone()).collect()
        }
    }

    impl DlqReader for &FakeDlq {
        async fn receive(&self) -> Result<Vec<DlqMessage>, AdminError> {
            let received = {
                let mut state = self.state();
                state.receive_calls += 1;
                if state.failing_receive == Some(state.receive_calls) {
                    return Err(AdminError::Aws { operation: "receive_message", detail: "boom".into(), source: None });
                }
                if state.empty_receives > 0 {
                    state.empty_receives -= 1;
                    Vec::new()
                } else {
                    let now = Instant::now();
                    let limit = if state.per_receive == 0 { 10 } else { state.per_receive };
                    let mut received = Vec::new();
                    for stored in state.messages.iter_mut().filter(|m| !m.deleted && m.visible_at <= now).take(limit) {
                        stored.receives += 1;
                        stored.visible_at = now + sqs::SCAN_VISIBILITY;
                        received.push(message(&stored.id, &stored.handle()));
                    }
                    received
                }
            };
            if received.is_empty() {
                // A long poll that found nothing.
                tokio::time::sleep(sqs::RECEIVE_WAIT).await;
            }
            Ok(received)
        }

        async fn visible(&self) -> Result<u64, AdminError> {
            let now = Instant::now();
            let mut state = self.state();
            state.count_calls += 1;
            if let Some(stale) = state.stale_counts.pop_front() {
                return Ok(stale);
            }
            let visible = state.messages.iter().filter(|m| !m.deleted && m.visible_at <= now).count();
            Ok(visible as u64 + state.unreachable)
        }

        async fn change_visibility(&self, handles: &[(String, String)], timeout: Duration) -> Vec<String> {
            let now = Instant::now();
            let mut state = self.state();
            state.changes.push((handles.iter().map(|(id, _)| id.clone()).collect(), timeout));
            let mut failures = Vec::new();
            for (id, handle) in handles {
                match state.messages.iter_mut().find(|m| &m.id == id && !m.deleted && &m.handle() == handle) {
                    Some(stored) => stored.visible_at = now + timeout,
                    None => failures.push(format!("{id}: ReceiptHandleIsInvalid")),
                }
            }
            failures
        }
    }

    fn message(id: &str, handle: &str) -> DlqMessage {
        DlqMessage {
            message_id: id.into(),
            receipt_handle: handle.into(),
            body: format!("body of {id}"),
            sent_at_ms: None,
            receive_count: 1,
            attributes: BTreeMap::new(),
            system: BTreeMap::new(),
        }
    }

    /// Walks to the end, returning the ids handed out (in order).
    async fn walk(scan: &mut Scan<&FakeDlq>) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let batch = scan.next_batch().await.unwrap_or_else(|e| panic!("next_batch: {e}"));
            if batch.is_empty() {
                return ids;
            }
            ids.extend(batch.into_iter().map(|m| m.message_id));
        }
    }

    fn all_ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i:02}")).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn empty_receives_while_sqs_counts_messages_do_not_end_the_walk() {
        // Each receive returns at most 3 of the 30, and the first five come back empty: the old walk stopped at
        // the first empty receive and saw none.
        let dlq = FakeDlq::with(30, |fake| {
            fake.empty_receives = 5;
            fake.per_receive = 3;
        });
        let mut scan = Scan::over(&dlq);
        let ids = walk(&mut scan).await;
        assert_eq!(ids, all_ids(30), "each message once, in the queue's order");
        assert_eq!(scan.end(), Some(WalkEnd::Exhausted));
        assert!(scan.complete());
        assert_eq!(scan.stopped_early(), None);
        // Everything held is made visible again.
        assert!(dlq.visible_ids().is_empty(), "held while the scan runs");
        assert!(scan.release().await.is_empty());
        assert_eq!(dlq.visible_ids(), all_ids(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_count_keeps_the_walk_going_until_it_reads_zero() {
        // All 12 are received in two receives; the count then still says 12, 12, 5 before it reads 0.
        let dlq = FakeDlq::with(12, |fake| fake.stale_counts = VecDeque::from([12, 12, 5]));
        let mut scan = Scan::over(&dlq);
        let started = Instant::now();
        let ids = walk(&mut scan).await;
        assert_eq!(ids, all_ids(12));
        assert_eq!(scan.end(), Some(WalkEnd::Exhausted));
        assert_eq!(dlq.state().count_calls, 4, "three lagging counts, then 0");
        assert!(started.elapsed() < PATIENCE, "ended when the count read 0, not at the patience");
        scan.release().await;
        assert_eq!(dlq.visible_ids(), all_ids(12));
    }

    #[tokio::test(start_paused = true)]
    async fn messages_counted_but_never_returned_stop_the_walk_early_after_the_patience() {
        let dlq = FakeDlq::with(4, |fake| fake.unreachable = 2);
        let patience = Duration::from_secs(10);
        let mut scan = Scan::over(&dlq).with_patience(patience);
        let started = Instant::now();
        let ids = walk(&mut scan).await;
        assert_eq!(ids, all_ids(4), "what could be received was handed out");
        assert_eq!(scan.end(), Some(WalkEnd::StoppedEarly { visible_left: 2 }));
        assert!(!scan.complete());
        assert_eq!(scan.stopped_early(), Some(2));
        let elapsed = started.elapsed();
        assert!(elapsed >= patience && elapsed < patience * 2, "stopped after the patience: {elapsed:?}");
        // The fruitless rounds are paced: at most about one per second.
        assert!(dlq.state().count_calls <= 12, "{} counts", dlq.state().count_calls);
        // The walk stays over.
        assert!(scan.next_batch().await.map(|b| b.is_empty()).unwrap_or(false));
        scan.release().await;
        assert_eq!(dlq.visible_ids(), all_ids(4));
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_patience_covers_a_count_lagging_a_minute() {
        // The count reads 1 for 60 fruitless rounds (about a minute), then 0.
        let dlq = FakeDlq::with(3, |fake| fake.stale_counts = std::iter::repeat_n(1, 60).collect());
        let mut scan = Scan::over(&dlq);
        let started = Instant::now();
        assert_eq!(walk(&mut scan).await, all_ids(3));
        assert_eq!(scan.end(), Some(WalkEnd::Exhausted));
        assert_eq!(dlq.state().count_calls, 61, "waited through the lagging counts");
        assert!(started.elapsed() >= Duration::from_secs(60), "{:?}", started.elapsed());
        assert_eq!(scan.patience(), PATIENCE);
        scan.release().await;
    }

    #[tokio::test(start_paused = true)]
    async fn held_messages_stay_hidden_however_long_the_walk_takes() {
        // Ten messages, one per receive, and the caller spends 50 s on each: the walk lasts over 7 minutes, far past
        // the 120 s a receive hides a message for.
        let dlq = FakeDlq::with(10, |fake| fake.per_receive = 1);
        let mut scan = Scan::over(&dlq);
        let mut ids = Vec::new();
        loop {
            let batch = scan.next_batch().await.unwrap_or_else(|e| panic!("next_batch: {e}"));
            if batch.is_empty() {
                break;
            }
            // What the scan received is never visible while it runs, so it is never counted as left to find.
            let visible = dlq.visible_ids();
            assert!(ids.iter().all(|id| !visible.contains(id)), "{visible:?} reappeared");
            ids.extend(batch.into_iter().map(|m| m.message_id));
            tokio::time::sleep(Duration::from_secs(50)).await;
        }
        assert_eq!(ids, all_ids(10));
        assert_eq!(scan.end(), Some(WalkEnd::Exhausted));
        let extensions: Vec<_> =
            dlq.state().changes.iter().filter(|(_, timeout)| *timeout == sqs::SCAN_VISIBILITY).cloned().collect();
        assert!(extensions.len() >= 4, "{extensions:?}");
        scan.release().await;
        assert_eq!(dlq.visible_ids(), all_ids(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_seen_message_that_reappears_is_not_handed_out_again_and_is_released_with_its_new_handle() {
        let dlq = FakeDlq::with(3, |_| {});
        let mut scan = Scan::over(&dlq);
        let first = scan.next_batch().await.unwrap_or_default();
        assert_eq!(first.len(), 3);
        // Its visibility lapsed (a failed extension, say): m01 is visible again with its old handle now invalid.
        dlq.state().messages[1].visible_at = Instant::now();
        assert_eq!(walk(&mut scan).await, Vec::<String>::new(), "nothing new: m01 is not handed out twice");
        assert_eq!(scan.end(), Some(WalkEnd::Exhausted), "held again, so the count reads 0");
        assert_eq!(dlq.state().messages[1].receives, 2);
        assert!(scan.release().await.is_empty(), "released with the newest handle");
        assert_eq!(dlq.visible_ids(), all_ids(3));
    }

    #[tokio::test(start_paused = true)]
    async fn deleted_messages_are_not_released_unless_sqs_delivers_them_again() {
        let dlq = FakeDlq::with(3, |_| {});
        let mut scan = Scan::over(&dlq);
        let batch = scan.next_batch().await.unwrap_or_default();
        for message in batch.iter().filter(|m| m.message_id != "m02") {
            dlq.delete(&message.message_id);
            scan.deleted(message);
        }
        assert!(walk(&mut scan).await.is_empty());
        assert!(scan.complete());
        assert!(scan.release().await.is_empty(), "no release of a deleted message");
        assert_eq!(dlq.visible_ids(), ["m02"]);

        // At-least-once: SQS may hand out a deleted message again. The walk holds it, so it must release it.
        let dlq = FakeDlq::with(2, |_| {});
        let mut scan = Scan::over(&dlq);
        let batch = scan.next_batch().await.unwrap_or_default();
        scan.deleted(&batch[0]);
        dlq.state().messages[0].visible_at = Instant::now();
        assert!(walk(&mut scan).await.is_empty());
        assert!(scan.release().await.is_empty());
        assert_eq!(dlq.visible_ids(), all_ids(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_receive_is_an_error_and_what_was_held_is_still_released() {
        let dlq = FakeDlq::with(25, |fake| fake.failing_receive = Some(2));
        let mut scan = Scan::over(&dlq);
        assert_eq!(scan.next_batch().await.unwrap_or_default().len(), 10);
        assert!(matches!(scan.next_batch().await, Err(AdminError::Aws { .. })));
        assert_eq!(scan.end(), None, "neither exhausted nor stopped early");
        assert!(!scan.complete());
        release_and_report(&mut scan).await;
        assert_eq!(dlq.visible_ids(), all_ids(25));
    }
}
