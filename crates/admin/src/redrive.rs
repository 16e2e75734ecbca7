//! What makes a redrive end and go only where the DLQ belongs (docs/RELIABILITY.md, G36), shared by `pedidos-admin
//! dlq redrive` and the console's redrive.
//!
//! A message the worker rejects again comes back to the DLQ as a new message with a new id: a walk that deduplicates
//! by DLQ message id alone takes it for a new one and redrives it again, forever. A [`Tracker`] remembers, for one
//! run, what it redrove: the `MessageId` of each copy it sent (which the worker records as `originalMessageId` when it
//! rejects that copy), the identity of each message ([`DlqMessage::identity`]) and its body digest (a copy the redrive
//! policy moves back carries no `originalMessageId`). Every message is judged against that ([`Tracker::judge`]):
//! one of this run's copies that came back is reported as rejected again, never redriven; a message that arrived in
//! the DLQ after the run started is left for the next run. So a run redrives each message at most once.
//!
//! The destination is always the queue whose DLQ this is (resolved by the caller from the redrive policy), never the
//! message's own `sourceQueue` attribute, which anyone able to send to the DLQ can write: a message whose
//! `sourceQueue` names another queue is refused and left in the DLQ.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use tokio::time::Instant;

use crate::error::AdminError;
use crate::message::{body_digest, DlqMessage};
use crate::scan::{DlqReader, Scan};
use crate::sqs;

/// How long a redrive watches the DLQ, after its last copy, for copies the worker rejects again (ending sooner once
/// the destination queue holds no message: the worker is done with them).
pub const WATCH: Duration = Duration::from_secs(30);

/// What a run does with one DLQ message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Copy it to the destination, then delete it.
    Redrive,
    /// A copy this run sent, dead-lettered again: report it, leave it.
    RejectedAgain,
    /// Another DLQ entry of a message this run already redrove (the worker copied it twice, G22): leave it.
    AlreadyRedriven,
    /// It entered the DLQ after the run started: the next run's.
    Arrived,
    /// Its `sourceQueue` attribute names another queue than the destination: shown, refused, left in the DLQ.
    Refused { source_queue: String },
}

/// What one redrive run sent, and where to.
#[derive(Debug, Clone)]
pub struct Tracker {
    started_ms: u64,
    destination: String,
    /// Copy `MessageId` -> the DLQ message id it was redriven from.
    copies: HashMap<String, String>,
    identities: HashSet<String>,
    bodies: HashSet<String>,
    came_back: HashSet<String>,
}

impl Tracker {
    /// A run starting at `started_ms` (Unix ms, compared with the messages' `SentTimestamp`) that redrives to
    /// `destination`.
    pub fn new(destination: &str, started_ms: u64) -> Self {
        Self {
            started_ms,
            destination: destination.to_owned(),
            copies: HashMap::new(),
            identities: HashSet::new(),
            bodies: HashSet::new(),
            came_back: HashSet::new(),
        }
    }

    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// How many copies this run sent.
    pub fn copies(&self) -> usize {
        self.copies.len()
    }

    /// Whether every copy sent has come back rejected (nothing more to watch for).
    pub fn all_came_back(&self) -> bool {
        self.came_back.len() >= self.copies.len()
    }

    fn arrived_during_run(&self, message: &DlqMessage) -> bool {
        // Without a SentTimestamp the message cannot be shown to be new; the identity checks still apply.
        message.sent_at_ms.is_some_and(|sent| sent >= self.started_ms)
    }

    /// Decides what the run does with `message`.
    pub fn judge(&self, message: &DlqMessage) -> Verdict {
        let own_copy = message.original_id().is_some_and(|id| self.copies.contains_key(id));
        // The redrive policy's move keeps the body but carries no originalMessageId (the copy dropped it).
        let same_body_back = message.original_id().is_none()
            && self.arrived_during_run(message)
            && self.bodies.contains(&body_digest(&message.body));
        if own_copy || same_body_back {
            return Verdict::RejectedAgain;
        }
        if self.identities.contains(&message.identity()) {
            return Verdict::AlreadyRedriven;
        }
        if self.arrived_during_run(message) {
            return Verdict::Arrived;
        }
        match message.attribute("sourceQueue") {
            Some(source) if !same_queue(source, &self.destination) => {
                Verdict::Refused { source_queue: source.to_owned() }
            }
            _ => Verdict::Redrive,
        }
    }

    /// `message` was copied to the destination as `copy_id`.
    pub fn redriven(&mut self, message: &DlqMessage, copy_id: &str) {
        self.copies.insert(copy_id.to_owned(), message.message_id.clone());
        self.identities.insert(message.identity());
        self.bodies.insert(body_digest(&message.body));
    }

    /// Records a [`Verdict::RejectedAgain`] message; returns the DLQ message id it was redriven from, when known.
    pub fn came_back(&mut self, message: &DlqMessage) -> Option<String> {
        let from = message.original_id().and_then(|id| self.copies.get(id)).cloned();
        self.came_back.insert(message.original_id().map_or_else(|| message.identity(), str::to_owned));
        from
    }
}

/// Whether two queue references (URLs, or an ARN) name the same queue: the same account and name. Hosts differ
/// between endpoints (`sqs.<region>.amazonaws.com`, the legacy `queue.amazonaws.com`, an emulator's), the queue does
/// not.
pub fn same_queue(a: &str, b: &str) -> bool {
    match (account_and_name(a), account_and_name(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

fn account_and_name(reference: &str) -> Option<(&str, &str)> {
    if let Some((account, name)) = sqs::arn_account_and_name(reference) {
        return Some((account, name));
    }
    let path = reference.split_once("://")?.1.split_once('/')?.1.trim_end_matches('/');
    match path.split('/').collect::<Vec<_>>().as_slice() {
        [account, name] if !account.is_empty() && !name.is_empty() => Some((account, name)),
        _ => None,
    }
}

/// `(visible, in flight, delayed)` message counts of `queue_url`; `None` for a count SQS did not return.
///
/// # Errors
/// The attributes cannot be read.
pub async fn queue_counts(
    client: &Client,
    queue_url: &str,
) -> Result<(Option<u64>, Option<u64>, Option<u64>), AdminError> {
    let output = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(crate::error::aws("get_queue_attributes", queue_url))?;
    let attributes = output.attributes.unwrap_or_default();
    let count = |name: QueueAttributeName| attributes.get(&name).and_then(|v| v.parse::<u64>().ok());
    Ok((
        count(QueueAttributeName::ApproximateNumberOfMessages),
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    ))
}

/// Reads of the destination in a row that end the watch.
const SETTLED_READS: u32 = 2;
/// Reads in a row with messages waiting, none in flight and the waiting ones not fewer: nothing consumes the
/// destination (no worker running), so no copy will come back during this run.
const UNCONSUMED_READS: u32 = 3;

/// How the destination looked on the last reads.
#[derive(Debug, Default)]
struct Destination {
    idle: u32,
    unconsumed: u32,
    last_visible: Option<u64>,
}

impl Destination {
    /// Takes one read; `true` when the watch can end.
    fn settled(&mut self, counts: Option<(Option<u64>, Option<u64>, Option<u64>)>) -> bool {
        // An unreadable count is neither idle nor unconsumed: the watch then lasts until its end.
        let (visible, in_flight, delayed) = counts.unwrap_or((None, None, None));
        let idle = visible == Some(0) && in_flight == Some(0) && delayed == Some(0);
        self.idle = if idle { self.idle + 1 } else { 0 };
        let waiting = visible.filter(|v| *v > 0);
        let unconsumed =
            in_flight == Some(0) && waiting.is_some_and(|v| self.last_visible.is_none_or(|last| v >= last));
        self.unconsumed = if unconsumed { self.unconsumed + 1 } else { 0 };
        self.last_visible = visible;
        self.idle >= SETTLED_READS || self.unconsumed >= UNCONSUMED_READS
    }
}

/// After the run's last copy: keeps receiving from the DLQ (the messages held like the walk's) and hands each new one
/// to `on_message`, until every copy came back, the destination held no message on two reads in a row (the worker is
/// done with the copies, so whatever it rejected is in the DLQ: one more receive collects it), nothing consumes the
/// destination (messages waiting, none in flight, on three reads), or `until`.
///
/// # Errors
/// A receive failed (what is held is still released by the caller).
pub async fn watch<R: DlqReader>(
    client: &Client,
    scan: &mut Scan<R>,
    tracker: &mut Tracker,
    until: Instant,
    mut on_message: impl FnMut(&mut Tracker, DlqMessage),
) -> Result<(), AdminError> {
    if tracker.copies() == 0 {
        return Ok(());
    }
    let mut destination = Destination::default();
    let mut settled = false;
    while !tracker.all_came_back() && Instant::now() < until {
        let round = Instant::now();
        for message in scan.receive_more().await? {
            on_message(tracker, message);
        }
        if settled || tracker.all_came_back() {
            break;
        }
        settled = destination.settled(queue_counts(client, tracker.destination()).await.ok());
        // An endpoint that answers an empty receive at once is not asked in a tight loop.
        tokio::time::sleep_until((round + sqs::RECEIVE_WAIT).min(until)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AttributeData, AttributeValue};
    use std::collections::BTreeMap;

    const PROCESS: &str = "http://127.0.0.1:4566/000000000000/orders-process";

    fn message(id: &str, body: &str, sent_at_ms: u64, attributes: &[(&str, &str)]) -> DlqMessage {
        DlqMessage {
            message_id: id.into(),
            receipt_handle: format!("{id}#1"),
            body: body.into(),
            sent_at_ms: Some(sent_at_ms),
            receive_count: 1,
            attributes: attributes
                .iter()
                .map(|(name, value)| {
                    let value =
                        AttributeValue { data_type: "String".into(), data: AttributeData::Text((*value).into()) };
                    ((*name).to_owned(), value)
                })
                .collect::<BTreeMap<_, _>>(),
            system: BTreeMap::new(),
        }
    }

    #[test]
    fn a_copy_rejected_again_is_recognised_whatever_its_new_id() {
        let mut tracker = Tracker::new(PROCESS, 1_000);
        let first = message("dlq-1", "{not json", 500, &[("originalMessageId", "src-1"), ("sourceQueue", PROCESS)]);
        assert_eq!(tracker.judge(&first), Verdict::Redrive);
        tracker.redriven(&first, "copy-1");
        // The worker rejects the copy: a new DLQ message, a new id, the copy's id as originalMessageId.
        let back = message("dlq-2", "{not json", 2_000, &[("originalMessageId", "copy-1"), ("sourceQueue", PROCESS)]);
        assert_eq!(tracker.judge(&back), Verdict::RejectedAgain);
        assert!(!tracker.all_came_back());
        assert_eq!(tracker.came_back(&back).as_deref(), Some("dlq-1"));
        assert!(tracker.all_came_back());
        // The redrive policy moved the copy back: no originalMessageId, the same body, after the start.
        let moved = message("dlq-3", "{not json", 2_500, &[]);
        assert_eq!(tracker.judge(&moved), Verdict::RejectedAgain);
    }

    #[test]
    fn messages_that_arrived_during_the_run_are_left_for_the_next() {
        let mut tracker = Tracker::new(PROCESS, 1_000);
        let fresh = message("dlq-9", "other", 1_000, &[("originalMessageId", "src-9")]);
        assert_eq!(tracker.judge(&fresh), Verdict::Arrived);
        // Before the start, with the same body as a redriven one but not one of the run's copies: a second entry of
        // the same message is left, one with another identity is redriven.
        let a = message("dlq-1", "same", 10, &[("originalMessageId", "src-1")]);
        tracker.redriven(&a, "copy-1");
        let duplicate = message("dlq-2", "same", 20, &[("originalMessageId", "src-1")]);
        assert_eq!(tracker.judge(&duplicate), Verdict::AlreadyRedriven);
        let other = message("dlq-3", "same", 30, &[("originalMessageId", "src-3")]);
        assert_eq!(tracker.judge(&other), Verdict::Redrive);
    }

    #[test]
    fn the_watch_ends_once_the_destination_is_idle_or_nobody_consumes_it() {
        let read = |v, f, d| Some((Some(v), Some(f), Some(d)));
        let mut idle = Destination::default();
        assert!(!idle.settled(read(1, 0, 0)));
        assert!(!idle.settled(read(0, 1, 0)), "the worker holds a copy");
        assert!(!idle.settled(read(0, 0, 0)));
        assert!(idle.settled(read(0, 0, 0)));

        let mut unconsumed = Destination::default();
        assert!(!unconsumed.settled(read(3, 0, 0)));
        assert!(!unconsumed.settled(read(3, 0, 0)));
        assert!(unconsumed.settled(read(3, 0, 0)), "three reads, nothing received");

        let mut consumed = Destination::default();
        for (visible, in_flight) in [(5, 0), (4, 1), (3, 0), (2, 1), (1, 0)] {
            assert!(!consumed.settled(read(visible, in_flight, 0)), "{visible} {in_flight}");
        }
        let mut unknown = Destination::default();
        for _ in 0..5 {
            assert!(!unknown.settled(None) && !unknown.settled(Some((None, Some(0), Some(0)))));
        }
    }

    #[test]
    fn the_destination_never_comes_from_the_message() {
        let tracker = Tracker::new(PROCESS, 1_000);
        let forged = message("dlq-1", "x", 10, &[("sourceQueue", "http://127.0.0.1:4566/000000000000/elsewhere")]);
        assert_eq!(
            tracker.judge(&forged),
            Verdict::Refused { source_queue: "http://127.0.0.1:4566/000000000000/elsewhere".into() }
        );
        let other_account = message("dlq-2", "x", 10, &[("sourceQueue", "http://h/111111111111/orders-process")]);
        assert!(matches!(tracker.judge(&other_account), Verdict::Refused { .. }));
        // The same queue through another host, or as an ARN, is the destination.
        for same in [
            "https://sqs.us-east-1.amazonaws.com/000000000000/orders-process",
            "arn:aws:sqs:us-east-1:000000000000:orders-process",
        ] {
            assert_eq!(tracker.judge(&message("dlq-3", "x", 10, &[("sourceQueue", same)])), Verdict::Redrive, "{same}");
        }
        assert_eq!(tracker.judge(&message("dlq-4", "x", 10, &[])), Verdict::Redrive);
        assert!(!same_queue("not a url", PROCESS));
    }
}
