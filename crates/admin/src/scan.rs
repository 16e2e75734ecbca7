//! Walking a DLQ without consuming it.
//!
//! SQS has no "peek": the only way to read a message is to receive it, which hides it. The scan receives with a
//! short visibility timeout, hands each message to the command once (deduplicated by message id), holds every
//! message it received until the command says it deleted it, and makes all the others visible again at the end:
//! whatever path a command takes out of its loop (done, `--max`, an error, Ctrl-C, a closed stdout), nothing it
//! received stays hidden. The walk ends when a receive returns nothing, or returns only messages already seen
//! several times in a row (they came back because the run outlasted the visibility timeout: nothing new is left to
//! find).

use std::collections::{HashMap, HashSet};

use aws_sdk_sqs::Client;

use crate::error::AdminError;
use crate::message::DlqMessage;
use crate::sqs;

/// Receives in a row that brought nothing new before the walk ends.
const STALE_RECEIVES: u32 = 3;

/// A walk over one DLQ.
pub struct Scan<'a> {
    client: &'a Client,
    dlq_url: &'a str,
    seen: HashSet<String>,
    /// Message id -> latest receipt handle, for every message received and not deleted.
    held: HashMap<String, String>,
    /// Held ids in the order they were seen, so releases follow the queue's order.
    order: Vec<String>,
    done: bool,
}

impl<'a> Scan<'a> {
    pub fn new(client: &'a Client, dlq_url: &'a str) -> Self {
        Self { client, dlq_url, seen: HashSet::new(), held: HashMap::new(), order: Vec::new(), done: false }
    }

    /// The next messages not seen before, held until [`Scan::deleted`] or [`Scan::release`]; empty when the walk is
    /// over.
    ///
    /// # Errors
    /// [`AdminError::Aws`] when a receive fails (what is held is still released by [`Scan::release`]).
    pub async fn next_batch(&mut self) -> Result<Vec<DlqMessage>, AdminError> {
        let mut stale = 0;
        while !self.done {
            let received = sqs::receive(self.client, self.dlq_url).await?;
            if received.is_empty() {
                self.done = true;
                break;
            }
            let mut fresh = Vec::new();
            for message in received {
                if self.seen.insert(message.message_id.clone()) {
                    self.held.insert(message.message_id.clone(), message.receipt_handle.clone());
                    self.order.push(message.message_id.clone());
                    fresh.push(message);
                } else if let Some(handle) = self.held.get_mut(&message.message_id) {
                    // Received again: only the newest receipt handle can change its visibility.
                    *handle = message.receipt_handle;
                }
            }
            if !fresh.is_empty() {
                return Ok(fresh);
            }
            stale += 1;
            if stale >= STALE_RECEIVES {
                self.done = true;
            }
        }
        Ok(Vec::new())
    }

    /// The command deleted `message`: nothing to release.
    pub fn deleted(&mut self, message: &DlqMessage) {
        self.held.remove(&message.message_id);
    }

    /// Makes every held message visible again. Returns a line per message that could not be (it becomes visible
    /// by itself when the scan's visibility timeout ends).
    pub async fn release(&mut self) -> Vec<String> {
        let handles: Vec<(String, String)> = self
            .order
            .drain(..)
            .filter_map(|id| {
                let handle = self.held.remove(&id)?;
                Some((id, handle))
            })
            .collect();
        sqs::release(self.client, self.dlq_url, &handles).await
    }
}

/// Releases what `scan` holds and reports on stderr what could not be released.
pub async fn release_and_report(scan: &mut Scan<'_>) {
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
