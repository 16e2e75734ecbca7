//! [`MessageQueue`] in memory with SQS's semantics on tokio's clock: visibility timeouts, receipt handles that expire
//! when a message is received again, `ApproximateReceiveCount`, the redrive policy moving a message to the DLQ
//! once it was received `maxReceiveCount` times, and the 12-hour ceiling on keeping a received message invisible.
//! Tests pause the clock and every timer becomes instant.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::{
    dead_letter_attributes, Attribute, BatchFailure, MessageQueue, QueueDepth, QueueError, QueueSettings, Received,
};
use crate::backoff::MAX_VISIBILITY;
use crate::handler::BoxFuture;

#[derive(Debug, Clone)]
struct Stored {
    message_id: String,
    body: String,
    attributes: BTreeMap<String, Attribute>,
    receive_count: u32,
    /// `SentTimestamp`: wall-clock Unix milliseconds, like SQS (tokio's paused clock does not move it).
    sent_at_ms: u64,
    visible_at: Instant,
    /// When it was last received: SQS refuses to keep a message invisible past 12 hours after that.
    received_at: Instant,
    /// The handle of the latest receive; older handles are invalid.
    handle: Option<String>,
}

/// A message that reached the DLQ, with the attributes it carries there.
#[derive(Debug, Clone)]
pub struct DeadLettered {
    pub body: String,
    pub attributes: BTreeMap<String, Attribute>,
}

/// Calls made, per operation.
#[derive(Debug, Default)]
pub struct Calls {
    pub receive: AtomicUsize,
    pub delete: AtomicUsize,
    pub change_visibility: AtomicUsize,
    pub dead_letter: AtomicUsize,
    pub depth: AtomicUsize,
}

#[derive(Default)]
struct State {
    messages: Vec<Stored>,
    dlq: Vec<DeadLettered>,
    next_id: u64,
}

pub struct MemoryQueue {
    settings: QueueSettings,
    state: Mutex<State>,
    pub calls: Calls,
    /// While set, every call fails like an unreachable endpoint.
    unreachable: AtomicBool,
}

impl MemoryQueue {
    /// A queue with `visibility_timeout` and a DLQ after `max_receive_count` receives.
    pub fn new(visibility_timeout: Duration, max_receive_count: u32) -> Self {
        Self {
            settings: QueueSettings {
                url: "memory://queue".into(),
                visibility_timeout,
                dlq_url: Some("memory://queue-dlq".into()),
                max_receive_count: Some(max_receive_count),
            },
            state: Mutex::new(State::default()),
            calls: Calls::default(),
            unreachable: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enqueues `body` with `attributes`; returns its message id.
    pub fn send(&self, body: impl Into<String>, attributes: &[(&str, &str)]) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        self.send_at(body, attributes, u64::try_from(now).unwrap_or(u64::MAX))
    }

    /// [`Self::send`] with the `SentTimestamp` given (Unix milliseconds), to test message ages.
    pub fn send_at(&self, body: impl Into<String>, attributes: &[(&str, &str)], sent_at_ms: u64) -> String {
        let mut state = self.lock();
        state.next_id += 1;
        let message_id = format!("m{}", state.next_id);
        state.messages.push(Stored {
            message_id: message_id.clone(),
            body: body.into(),
            attributes: attributes.iter().map(|(k, v)| ((*k).to_owned(), Attribute::text(*v))).collect(),
            receive_count: 0,
            sent_at_ms,
            visible_at: Instant::now(),
            received_at: Instant::now(),
            handle: None,
        });
        message_id
    }

    /// Messages still in the queue (visible or in flight).
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages in flight now.
    pub fn in_flight(&self) -> usize {
        let now = Instant::now();
        self.lock().messages.iter().filter(|m| m.visible_at > now).count()
    }

    /// Receive counts of the messages still queued, by message id.
    pub fn receive_counts(&self) -> BTreeMap<String, u32> {
        self.lock().messages.iter().map(|m| (m.message_id.clone(), m.receive_count)).collect()
    }

    pub fn dead_lettered(&self) -> Vec<DeadLettered> {
        self.lock().dlq.clone()
    }

    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::SeqCst);
    }

    fn reachable(&self, operation: &'static str) -> Result<(), QueueError> {
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(QueueError::Call { operation, detail: "connection refused (simulated)".into(), source: None });
        }
        Ok(())
    }

    fn take_visible(&self, max: usize) -> Vec<Received> {
        let now = Instant::now();
        let mut state = self.lock();
        let max_receives = self.settings.max_receive_count.unwrap_or(u32::MAX);
        let mut taken = Vec::new();
        let mut redriven = Vec::new();
        for (index, stored) in state.messages.iter_mut().enumerate() {
            if taken.len() == max {
                break;
            }
            if stored.visible_at > now {
                continue;
            }
            // SQS moves a message to the DLQ when a receive would exceed maxReceiveCount.
            if stored.receive_count >= max_receives {
                redriven.push(index);
                continue;
            }
            stored.receive_count += 1;
            stored.visible_at = now + self.settings.visibility_timeout;
            stored.received_at = now;
            let handle = format!("{}#{}", stored.message_id, stored.receive_count);
            stored.handle = Some(handle.clone());
            taken.push(Received {
                message_id: stored.message_id.clone(),
                receipt_handle: handle,
                body: stored.body.clone(),
                receive_count: stored.receive_count,
                sent_at_ms: Some(stored.sent_at_ms),
                attributes: stored.attributes.clone(),
                group_id: None,
                trace_header: None,
            });
        }
        for index in redriven.into_iter().rev() {
            let stored = state.messages.remove(index);
            state.dlq.push(DeadLettered { body: stored.body, attributes: stored.attributes });
        }
        taken
    }

    /// Applies `f` to the in-flight message holding `handle`; a failure entry when there is none.
    fn with_handle(&self, handle: &str, f: impl FnOnce(&mut State, usize)) -> Option<BatchFailure> {
        let mut state = self.lock();
        let now = Instant::now();
        let found = state.messages.iter().position(|m| m.handle.as_deref() == Some(handle) && m.visible_at > now);
        match found {
            Some(index) => {
                f(&mut state, index);
                None
            }
            None => Some(BatchFailure {
                receipt_handle: handle.to_owned(),
                reason: "ReceiptHandleIsInvalid: expired or already deleted".into(),
                permanent: true,
            }),
        }
    }
}

impl MessageQueue for MemoryQueue {
    fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    fn receive(&self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Received>, QueueError>> {
        Box::pin(async move {
            self.calls.receive.fetch_add(1, Ordering::SeqCst);
            self.reachable("receive")?;
            let deadline = Instant::now() + wait;
            loop {
                let taken = self.take_visible(max.clamp(1, 10));
                if !taken.is_empty() || Instant::now() >= deadline {
                    return Ok(taken);
                }
                tokio::time::sleep(Duration::from_millis(50).min(deadline - Instant::now())).await;
            }
        })
    }

    fn delete_batch<'a>(&'a self, handles: &'a [String]) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>> {
        Box::pin(async move {
            self.calls.delete.fetch_add(1, Ordering::SeqCst);
            self.reachable("delete")?;
            Ok(handles
                .iter()
                .filter_map(|handle| {
                    self.with_handle(handle, |state, index| {
                        state.messages.remove(index);
                    })
                })
                .collect())
        })
    }

    fn change_visibility_batch<'a>(
        &'a self,
        entries: &'a [(String, Duration)],
    ) -> BoxFuture<'a, Result<Vec<BatchFailure>, QueueError>> {
        Box::pin(async move {
            self.calls.change_visibility.fetch_add(1, Ordering::SeqCst);
            self.reachable("change_visibility")?;
            Ok(entries
                .iter()
                .filter_map(|(handle, after)| {
                    self.with_handle(handle, |state, index| state.messages[index].visible_at = Instant::now() + *after)
                })
                .collect())
        })
    }

    fn extend_visibility<'a>(&'a self, handle: &'a str, timeout: Duration) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            self.calls.change_visibility.fetch_add(1, Ordering::SeqCst);
            self.reachable("change_visibility")?;
            let mut beyond_ceiling = false;
            let failure = self.with_handle(handle, |state, index| {
                let message = &mut state.messages[index];
                let until = Instant::now() + timeout;
                beyond_ceiling = until > message.received_at + MAX_VISIBILITY;
                if !beyond_ceiling {
                    message.visible_at = until;
                }
            });
            match failure {
                None if beyond_ceiling => Err(QueueError::Call {
                    operation: "change_visibility",
                    detail: "InvalidParameterValue: the total visibility timeout cannot exceed 12 hours".into(),
                    source: None,
                }),
                None => Ok(()),
                Some(failure) => {
                    Err(QueueError::Call { operation: "change_visibility", detail: failure.reason, source: None })
                }
            }
        })
    }

    fn dead_letter<'a>(
        &'a self,
        message: &'a Received,
        reason: &'a str,
        detail: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            self.calls.dead_letter.fetch_add(1, Ordering::SeqCst);
            self.reachable("send")?;
            let attributes = dead_letter_attributes(message, &self.settings.url, reason, detail);
            self.lock().dlq.push(DeadLettered { body: message.body.clone(), attributes });
            Ok(())
        })
    }

    fn depth(&self) -> BoxFuture<'_, Result<QueueDepth, QueueError>> {
        Box::pin(async move {
            self.calls.depth.fetch_add(1, Ordering::SeqCst);
            self.reachable("get_queue_attributes")?;
            let now = Instant::now();
            let state = self.lock();
            let in_flight = state.messages.iter().filter(|m| m.visible_at > now).count();
            let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
            // No delayed messages: this queue has no DelaySeconds.
            Ok(QueueDepth { visible: count(state.messages.len() - in_flight), in_flight: count(in_flight), delayed: 0 })
        })
    }
}
