//! The receive loop and each message's fate.
//!
//! Flow: take free handler slots, long-poll for at most that many messages, spawn one task per message. Each task
//! *decides* (decode, route, run the handler under a visibility lease) and gets a [`Decision`]: an [`Outcome`] and a
//! [`Settle`] action. Then one step, [`Consumer::settle`], performs the action, logs one line, counts once, and hands
//! the same line to the live page ([`crate::live`]) when someone is watching.
//!
//! During a store outage the loop holds instead of churning: the messages already held retry in place under their
//! lease, and no new message is received until the store answers again (when nothing is held, one message is
//! received to probe it). A message's receive count therefore grows only when SQS really delivers it again.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domain::{decode, Payload, Source};
use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backoff::{retry_visibility, RetryBackoff};
use crate::batcher::{Action, Batcher, MAX_BATCH};
use crate::handler::{Effect, Handler, HandlerError, MessageContext};
use crate::health::Health;
use crate::live::OutcomeLine;
use crate::locks::OrderLocks;
use crate::queue::{MessageQueue, QueueError, Received};

/// How each message ended. Declared in [`Outcome::ALL`]'s order: the live feed counts by `outcome as usize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Processed,
    Duplicate,
    Stale,
    Ignored,
    Rejected,
    Failed,
    /// Not an end state: released at shutdown, to be received again.
    Released,
}

impl Outcome {
    pub const ALL: [Self; 7] =
        [Self::Processed, Self::Duplicate, Self::Stale, Self::Ignored, Self::Rejected, Self::Failed, Self::Released];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::Ignored => "ignored",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Released => "released",
        }
    }
}

/// As its label (`"processed"`), the same word the log line and the metric use.
impl serde::Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What to do with a message once its outcome is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Done with it: delete (batched).
    Delete,
    /// Make it visible again after the delay (retry with backoff).
    RetryAfter(Duration),
    /// Make it visible again now (shutdown).
    Release,
    /// Copy it to the DLQ with the reason, then delete it.
    DeadLetter { reason: String, detail: String },
    /// Nothing can be done with its receipt handle (the lease was lost): it reappears after its visibility timeout.
    Nothing,
}

impl Settle {
    const fn as_str(&self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::RetryAfter(_) => "retry",
            Self::Release => "release",
            Self::DeadLetter { .. } => "dead_letter",
            Self::Nothing => "none",
        }
    }
}

/// A message's outcome, the action it calls for, and a few words for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub settle: Settle,
    pub note: String,
}

impl Decision {
    fn new(outcome: Outcome, settle: Settle, note: impl Into<String>) -> Self {
        Self { outcome, settle, note: note.into() }
    }

    fn reject(reason: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self::new(Outcome::Rejected, Settle::DeadLetter { reason: reason.to_owned(), detail: detail.clone() }, detail)
    }
}

/// What is known about a message, for its one log line.
#[derive(Debug, Default)]
struct Facts {
    pedido_id: Option<uuid::Uuid>,
    version: Option<u64>,
    event_type: Option<&'static str>,
    request_id: Option<String>,
    legacy: bool,
}

/// Tunables of the consumer (from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    pub concurrency: usize,
    pub wait_time: Duration,
    pub shutdown_grace: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

/// Everything a message task needs.
pub struct Consumer {
    pub queue: Arc<dyn MessageQueue>,
    pub handler: Arc<dyn Handler>,
    pub health: Arc<Health>,
    pub settings: Settings,
    locks: OrderLocks,
    metrics: MessageMetrics,
}

/// The per-message metrics, resolved once: looking a metric up by name and labels on every message was a visible share
/// of the worker's CPU per message.
struct MessageMetrics {
    /// `pedidos_worker_messages_total{outcome}`, indexed by `outcome as usize` (the order of [`Outcome::ALL`]).
    outcomes: [metrics::Counter; Outcome::ALL.len()],
    age: metrics::Histogram,
    handler_duration: metrics::Histogram,
}

impl MessageMetrics {
    fn new() -> Self {
        // The recorder first: a handle taken before it is installed would record nowhere.
        let _ = platform::metrics::handle();
        Self {
            outcomes: Outcome::ALL
                .map(|outcome| metrics::counter!("pedidos_worker_messages_total", "outcome" => outcome.as_str())),
            age: metrics::histogram!("pedidos_worker_message_age_seconds"),
            handler_duration: metrics::histogram!("pedidos_worker_handler_duration_seconds"),
        }
    }
}

impl Consumer {
    pub fn new(
        queue: Arc<dyn MessageQueue>,
        handler: Arc<dyn Handler>,
        health: Arc<Health>,
        settings: Settings,
    ) -> Self {
        Self { queue, handler, health, settings, locks: OrderLocks::default(), metrics: MessageMetrics::new() }
    }

    /// Runs until `shutdown`: then stops receiving, gives in-flight handlers `shutdown_grace`, releases what is left
    /// and flushes pending deletes.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let (batcher, batcher_task) = Batcher::spawn(Arc::clone(&this.queue));
        let slots = Arc::new(Semaphore::new(this.settings.concurrency));
        let tracker = TaskTracker::new();
        // Cancelled when the grace period ends: handlers still running are abandoned and their messages released.
        let abandon = CancellationToken::new();
        let mut backoff = RetryBackoff::default();
        // Messages of the last receive when it got all it asked for (a backlog); 0 otherwise.
        let mut last_full_batch = 0;

        while !shutdown.is_cancelled() {
            let Some(max) = this.receive_size(&shutdown).await else { break };
            let permits = tokio::select! {
                permits = take_slots(&slots, max, last_full_batch) => permits,
                () = shutdown.cancelled() => break,
            };
            this.health.beat();
            // The messages the loop waited for have settled: their deletes need not wait for company any longer.
            batcher.flush();
            // The receive's time span, for each message's `receive` span (traces on only).
            let polled = platform::otel::enabled().then(SystemTime::now);
            let received = this.receive_unless_stuck(permits.len(), &shutdown).await;
            let window = polled.map(|started| (started, SystemTime::now()));
            this.health.beat();
            match received {
                Ok(messages) => {
                    if let Some(down_for) = this.health.succeeded(&this.health.sqs) {
                        tracing::info!(?down_for, "SQS reachable again; receiving");
                    }
                    backoff = RetryBackoff::default();
                    // Got all it asked for: more is probably waiting, so the next receive waits for this batch's slots.
                    last_full_batch = if messages.len() == permits.len() { messages.len() } else { 0 };
                    this.health.received_ok();
                    this.health.note_ages(&messages);
                    let mut permits = permits;
                    for message in messages {
                        match permits.pop() {
                            Some(permit) if !shutdown.is_cancelled() => {
                                let task =
                                    Arc::clone(&this).handle(message, window, batcher.clone(), abandon.clone(), permit);
                                tracker.spawn(task);
                            }
                            // Received but not started (shutdown): visible again at once.
                            _ => {
                                let decision = Decision::new(Outcome::Released, Settle::Release, "shutting down");
                                this.settle(&message, decision, &Facts::default(), &batcher).await;
                            }
                        }
                    }
                }
                Err(error) => {
                    drop(permits);
                    last_full_batch = 0;
                    let delay = backoff.next_delay();
                    if matches!(error, QueueError::Denied(_)) {
                        // Not an outage: no waiting heals it, so it is said on every attempt.
                        this.health.failed(&this.health.sqs, &error, true);
                        tracing::error!(%error, retry_in = ?delay, "SQS receive denied; an operator must fix the worker role's policy");
                    } else if this.health.failed(&this.health.sqs, &error, false) {
                        tracing::warn!(%error, "SQS receive failing; backing off until it answers");
                    } else {
                        tracing::debug!(%error, ?delay, "SQS receive still failing");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => {}
                    }
                    this.health.beat();
                }
            }
        }

        this.health.stopping();
        tracker.close();
        tracing::info!(in_flight = this.health.in_flight(), grace = ?this.settings.shutdown_grace, "draining in-flight messages");
        if tokio::time::timeout(this.settings.shutdown_grace, tracker.wait()).await.is_err() {
            tracing::warn!("grace period over; releasing messages still in flight");
            abandon.cancel();
            tracker.wait().await;
        }
        drop(batcher);
        if batcher_task.await.is_err() {
            tracing::error!("batcher task panicked; unflushed deletes will be redelivered as duplicates");
        }
        tracing::info!("consumer stopped");
    }

    /// How many messages the next receive may ask for; `None` on shutdown. While the store fails, nothing is received
    /// as long as this worker holds a message (the held ones retry, and are the probe); with nothing held, a single
    /// message is received to probe the store with.
    async fn receive_size(&self, shutdown: &CancellationToken) -> Option<usize> {
        let full = self.settings.concurrency.min(MAX_BATCH);
        let mut holding = false;
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            if !self.health.store.failing() {
                if holding {
                    tracing::info!("store answering again; receiving");
                }
                return Some(full);
            }
            if self.health.in_flight() == 0 {
                return Some(1);
            }
            if !holding {
                holding = true;
                tracing::warn!(
                    held = self.health.in_flight(),
                    "store failing: holding the messages received, receiving no more until it answers"
                );
            }
            tokio::select! {
                () = self.health.store_back(HOLD_RECHECK) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// One receive. The long poll is not abandoned on shutdown (messages SQS hands to a dropped request would stay
    /// invisible for a whole visibility timeout, and each would have used a receive), unless it outlives its wait by
    /// [`SHUTDOWN_RECEIVE_SLACK`]: then SQS is not answering anyway, and the shutdown must fit the stop timeout.
    async fn receive_unless_stuck(
        &self,
        max: usize,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Received>, QueueError> {
        let wait = self.settings.wait_time;
        let stuck = async {
            shutdown.cancelled().await;
            tokio::time::sleep(wait + SHUTDOWN_RECEIVE_SLACK).await;
        };
        tokio::select! {
            received = self.queue.receive(max, wait) => received,
            () = stuck => Err(QueueError::Call {
                operation: "receive",
                detail: "abandoned at shutdown: SQS did not answer within the long-poll wait".into(),
                source: None,
            }),
        }
    }

    async fn handle(
        self: Arc<Self>,
        message: Received,
        window: Option<(SystemTime, SystemTime)>,
        batcher: Batcher,
        abandon: CancellationToken,
        permit: OwnedSemaphorePermit,
    ) {
        let _permit = permit;
        let _in_flight = self.health.enter();
        if let Some(sent) = message.sent_at_ms {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            self.metrics.age.record(now.saturating_sub(sent) as f64 / 1000.0);
        }
        let span = if platform::otel::enabled() {
            self.traced_message_span(&message, window)
        } else {
            tracing::info_span!("message", message_id = %message.message_id, receive_count = message.receive_count)
        };
        async {
            let mut facts = Facts::default();
            // A panic in one message's handling is contained here: the message is retried, the worker lives on.
            let decided =
                AssertUnwindSafe(self.decide_under_lease(&message, &mut facts, &abandon)).catch_unwind().await;
            let decision = decided.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(panic = %what, "message handling panicked");
                Decision::new(
                    Outcome::Failed,
                    Settle::RetryAfter(self.retry_delay(&message)),
                    format!("panicked: {what}"),
                )
            });
            if platform::otel::enabled() {
                record_outcome(&tracing::Span::current(), &decision, &facts);
            }
            let settle_span = trace_only_span(|| tracing::info_span!(target: platform::otel::TRACE_ONLY, "settle"));
            self.settle(&message, decision, &facts, &batcher).instrument(settle_span).await;
        }
        .instrument(span)
        .await;
    }

    /// The message's span with traces on: the same fields for the logs, a consumer span named after the queue, the
    /// child of the trace the message carries (the API's `traceparent` in the SNS envelope's attributes or, with raw
    /// delivery, in the SQS message attributes; else SQS's `AWSTraceHeader` from an X-Ray-traced sender). Its
    /// `receive` (from the long poll's start, or the message's sending if later, to the answer) is recorded under
    /// the same parent.
    fn traced_message_span(&self, message: &Received, window: Option<(SystemTime, SystemTime)>) -> tracing::Span {
        use platform::otel::{kv, SpanExt as _};
        let queue = self.queue_name();
        let span = tracing::info_span!(
            "message",
            otel.name = %format_args!("{queue} process"),
            otel.kind = "consumer",
            message_id = %message.message_id,
            receive_count = message.receive_count
        );
        let parent = trace_parent(message);
        if let Some(parent) = &parent {
            platform::otel::set_parent(&span, parent);
        }
        span.set_attribute("messaging.system", "aws_sqs");
        span.set_attribute("messaging.operation.type", "process");
        span.set_attribute("messaging.destination.name", queue.to_owned());
        span.set_attribute("messaging.message.id", message.message_id.clone());
        if message.receive_count > 1 {
            span.add_event("redelivered", vec![kv("receive_count", i64::from(message.receive_count))]);
        }
        if let (Some((polled, answered)), Some(parent)) = (window, parent.or_else(|| platform::otel::Parent::of(&span)))
        {
            let sent = message.sent_at_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
            let start = sent.map_or(polled, |sent| sent.clamp(polled, answered));
            platform::otel::record_span(
                &parent,
                format!("{queue} receive"),
                start,
                answered,
                vec![
                    kv("messaging.system", "aws_sqs"),
                    kv("messaging.operation.type", "receive"),
                    kv("messaging.destination.name", queue.to_owned()),
                    kv("messaging.message.id", message.message_id.clone()),
                    kv("receive_count", i64::from(message.receive_count)),
                ],
            );
        }
        span
    }

    /// The queue's name, the last segment of its URL.
    fn queue_name(&self) -> &str {
        let url = self.queue.settings().url.as_str();
        url.rsplit('/').find(|segment| !segment.is_empty()).unwrap_or(url)
    }

    fn retry_delay(&self, message: &Received) -> Duration {
        retry_visibility(message.receive_count, self.settings.retry_base, self.settings.retry_max)
    }

    /// [`Self::decide`] while holding the message: its visibility is extended every half timeout, and the decision is
    /// abandoned when an extension cannot be confirmed before the lease runs out, or when the shutdown grace is over.
    async fn decide_under_lease(&self, message: &Received, facts: &mut Facts, abandon: &CancellationToken) -> Decision {
        tokio::select! {
            decision = self.decide(message, facts) => decision,
            lost = keep_lease(self.queue.as_ref(), &self.health, &message.receipt_handle, self.queue.settings().visibility_timeout) => {
                Decision::new(Outcome::Failed, Settle::Nothing, format!("{lost}; handler cancelled, the message reappears after its visibility timeout"))
            }
            () = abandon.cancelled() => Decision::new(Outcome::Released, Settle::Release, "shutdown grace over; released for another worker"),
        }
    }

    /// [`Self::decide`] alone, for tests: what would happen to `message`, without performing it.
    pub async fn decision(&self, message: &Received) -> Decision {
        self.decide(message, &mut Facts::default()).await
    }

    /// The same, holding the message's lease like a running consumer does.
    pub async fn decision_under_lease(&self, message: &Received) -> Decision {
        self.decide_under_lease(message, &mut Facts::default(), &CancellationToken::new()).await
    }

    /// Decodes, routes and handles one message. Returns its outcome and the action it calls for; performs nothing.
    async fn decide(&self, message: &Received, facts: &mut Facts) -> Decision {
        // Known before decoding, so even a poison message's line carries the request id it was sent with.
        facts.request_id = message.attribute("requestId").map(str::to_owned);
        let decoded = {
            let _decode =
                trace_only_span(|| tracing::info_span!(target: platform::otel::TRACE_ONLY, "decode")).entered();
            decode(&message.body)
        };
        let inbound = match decoded {
            Ok(inbound) => inbound,
            Err(error) => return Decision::reject(error.code(), error.to_string()),
        };
        facts.legacy = inbound.legacy;
        if let Some(request_id) = inbound.attributes.get("requestId") {
            facts.request_id = Some(request_id.clone());
        }
        let event = match inbound.payload {
            Payload::Order(event) => event,
            // Never deleted silently: after an upgrade that knows the type, it can be redriven.
            Payload::Other { event_type } => {
                return Decision::reject(
                    "unknown_event_type",
                    format!("event type {event_type:?} is unknown to this worker; redrive it after upgrading"),
                )
            }
        };
        facts.pedido_id = Some(event.order.pedido_id);
        facts.version = Some(event.version);
        facts.event_type = Some(event.event_type.as_str());
        if !self.handler.handles(event.event_type) {
            return Decision::new(Outcome::Ignored, Settle::Delete, "event type not handled by this role");
        }
        let _order = self.locks.lock(event.order.pedido_id).await;
        let ctx = MessageContext {
            message_id: message.message_id.clone(),
            receive_count: message.receive_count,
            request_id: facts.request_id.clone(),
            published_id: match &inbound.source {
                Source::SnsEnvelope { message_id, .. } if !message_id.is_empty() => Some(message_id.clone()),
                _ => None,
            },
            trace_id: message_trace_id(message, &inbound.attributes),
            lease: self.queue.settings().visibility_timeout,
        };
        let mut backoff = RetryBackoff::default();
        loop {
            let started = Instant::now();
            let handle_span = trace_only_span(|| {
                tracing::info_span!(
                    target: platform::otel::TRACE_ONLY,
                    "handle",
                    otel.name = %format_args!("handle {}", event.event_type.as_str()),
                    pedido_id = %event.order.pedido_id,
                    version = event.version,
                )
            });
            let result = self.handler.handle(&event, &ctx).instrument(handle_span).await;
            self.metrics.handler_duration.record(started.elapsed().as_secs_f64());
            self.health.beat();
            let error = match result {
                Ok(effect) => {
                    self.store_answered();
                    return effect_decision(effect);
                }
                Err(error) => error,
            };
            match error {
                // Held and retried in place (the lease keeps it ours): an outage never uses up maxReceiveCount.
                HandlerError::Unavailable { dependency, source } => {
                    let delay = backoff.next_delay();
                    if self.health.failed(&self.health.store, &source, false) {
                        tracing::warn!(dependency, error = %source, "dependency failing; holding messages and retrying");
                    } else {
                        tracing::debug!(dependency, error = %source, ?delay, "dependency still failing");
                    }
                    tokio::time::sleep(delay).await;
                }
                // No message is at fault and no waiting heals it: held like an outage, but loud on every attempt.
                HandlerError::Misconfigured { dependency, source } => {
                    let delay = backoff.next_delay();
                    self.health.failed(&self.health.store, &source, true);
                    tracing::error!(dependency, error = %source, retry_in = ?delay, "dependency misconfigured; an operator must fix the deployment (message held)");
                    tokio::time::sleep(delay).await;
                }
                HandlerError::Transient { reason, .. } => {
                    self.store_answered();
                    let delay = self.retry_delay(message);
                    return Decision::new(Outcome::Failed, Settle::RetryAfter(delay), reason);
                }
                HandlerError::Permanent { reason, detail, .. } => {
                    self.store_answered();
                    return Decision::reject(reason, detail);
                }
            }
        }
    }

    /// The handler's dependency answered (whatever the verdict): the end of a failing period is logged once.
    fn store_answered(&self) {
        if let Some(down_for) = self.health.succeeded(&self.health.store) {
            tracing::info!(?down_for, "dependency answering again");
        }
    }

    /// Performs `decision`'s action, logs the message's one line, counts it once.
    async fn settle(&self, message: &Received, decision: Decision, facts: &Facts, batcher: &Batcher) {
        let Decision { outcome, settle, note } = decision;
        let handle = || message.receipt_handle.clone();
        let mut action = settle.as_str();
        let mut retry_in = None;
        match &settle {
            Settle::Delete => batcher.submit(Action::Delete { receipt_handle: handle() }).await,
            Settle::RetryAfter(after) => {
                retry_in = Some(*after);
                batcher.submit(Action::Visibility { receipt_handle: handle(), after: *after }).await;
            }
            Settle::Release => {
                batcher.submit(Action::Visibility { receipt_handle: handle(), after: Duration::ZERO }).await
            }
            Settle::DeadLetter { reason, detail } => match self.queue.dead_letter(message, reason, detail).await {
                Ok(()) => batcher.submit(Action::Delete { receipt_handle: handle() }).await,
                // Not deleted: it comes back, and the redrive policy is the backstop.
                Err(QueueError::NoDlq) => action = "none (the queue has no DLQ; left for redelivery)",
                Err(error) => {
                    tracing::error!(%error, "could not copy the message to the DLQ; left for redelivery");
                    action = "none (DLQ copy failed; left for redelivery)";
                }
            },
            Settle::Nothing => {}
        }
        let reason = match &settle {
            Settle::DeadLetter { reason, .. } => Some(reason.as_str()),
            _ => None,
        };
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    outcome = outcome.as_str(),
                    action,
                    reason,
                    retry_in = retry_in.map(|d| d.as_secs()),
                    pedido_id = facts.pedido_id.as_ref().map(tracing::field::display),
                    version = facts.version,
                    r#type = facts.event_type,
                    request_id = facts.request_id.as_deref().unwrap_or_default(),
                    legacy = facts.legacy,
                    max_receive_count = self.queue.settings().max_receive_count,
                    "{note}"
                )
            };
        }
        match outcome {
            Outcome::Processed | Outcome::Duplicate | Outcome::Stale | Outcome::Ignored => line!(info),
            Outcome::Rejected | Outcome::Failed | Outcome::Released => line!(warn),
        }
        self.metrics.outcomes[outcome as usize].increment(1);
        // The same line for the live page; built only while someone watches it.
        self.health.live.publish(outcome, || OutcomeLine {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            outcome,
            action,
            pedido_id: facts.pedido_id,
            version: facts.version,
            event_type: facts.event_type,
            request_id: facts.request_id.clone(),
            reason: reason.map(str::to_owned),
            retry_in_seconds: retry_in.map(|d| d.as_secs()),
            note,
            message_id: message.message_id.clone(),
            receive_count: message.receive_count,
        });
    }
}

/// A span for the trace alone (never in a log line), or none with traces off.
fn trace_only_span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if platform::otel::enabled() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// The trace context a message carries: a propagated one in the SNS envelope's attributes or, with raw delivery, in
/// the SQS message attributes (`traceparent`, or `X-Amzn-Trace-Id` with the X-Ray propagator); else SQS's
/// `AWSTraceHeader` (a sender traced by X-Ray). Traces on only.
fn trace_parent(message: &Received) -> Option<platform::otel::Parent> {
    let envelope = domain::inbound::envelope_attributes_only(&message.body);
    platform::otel::parent_from(|name| carried(message, &envelope, name))
        .or_else(|| message.trace_header.as_deref().and_then(platform::otel::parent_from_xray))
}

/// The attribute `name` (any case) a message carries: in its SNS envelope's attributes, else in its SQS attributes.
fn carried<'a>(
    message: &'a Received,
    envelope: &'a std::collections::BTreeMap<String, String>,
    name: &str,
) -> Option<&'a str> {
    let named = |k: &String| k.eq_ignore_ascii_case(name);
    envelope
        .iter()
        .find(|(k, _)| named(k))
        .map(|(_, v)| v.as_str())
        .or_else(|| message.attributes.iter().find(|(k, _)| named(k)).map(|(_, a)| a.value.as_str()))
}

/// The W3C trace id of the trace `message` travels in, as the store records it with each effect: its span's with
/// traces on; with traces off, the one its `traceparent` (or X-Ray header, or `AWSTraceHeader`) names.
fn message_trace_id(message: &Received, envelope: &std::collections::BTreeMap<String, String>) -> Option<String> {
    if let Some(id) = platform::otel::trace_id(&tracing::Span::current()) {
        return Some(id);
    }
    carried(message, envelope, "traceparent")
        .and_then(platform::otel::trace_id_of_traceparent)
        .or_else(|| carried(message, envelope, "x-amzn-trace-id").and_then(platform::otel::trace_id_of_xray))
        .or_else(|| message.trace_header.as_deref().and_then(platform::otel::trace_id_of_xray))
}

/// A message's fate on its span: the outcome and the order as attributes; a duplicate, a stale version, a release,
/// a failure or a dead-letter as an event too (failures and dead-letters mark the span as an error).
fn record_outcome(span: &tracing::Span, decision: &Decision, facts: &Facts) {
    use platform::otel::{kv, SpanExt as _, Status};
    span.set_attribute("outcome", decision.outcome.as_str());
    span.set_attribute("action", decision.settle.as_str());
    if let Some(pedido_id) = facts.pedido_id {
        span.set_attribute("pedido_id", pedido_id.to_string());
    }
    if let Some(version) = facts.version {
        span.set_attribute("version", i64::try_from(version).unwrap_or(i64::MAX));
    }
    if let Some(event_type) = facts.event_type {
        span.set_attribute("event_type", event_type);
    }
    if let Some(request_id) = &facts.request_id {
        span.set_attribute("request_id", request_id.clone());
    }
    let mut attributes = vec![kv("outcome", decision.outcome.as_str()), kv("note", decision.note.clone())];
    if let Settle::DeadLetter { reason, .. } = &decision.settle {
        span.set_attribute("reject_reason", reason.clone());
        attributes.push(kv("reason", reason.clone()));
    }
    match decision.outcome {
        Outcome::Processed | Outcome::Ignored => {}
        Outcome::Duplicate | Outcome::Stale | Outcome::Released => {
            span.add_event(decision.outcome.as_str(), attributes)
        }
        Outcome::Rejected => {
            span.add_event("dead_lettered", attributes);
            span.set_status(Status::error(format!("dead-lettered: {}", decision.note)));
        }
        Outcome::Failed => {
            span.add_event("failed", attributes);
            span.set_status(Status::error(decision.note.clone()));
        }
    }
}

/// Keeps the message invisible while it is handled: extends it at each half of the visibility timeout, and returns
/// (so the caller cancels the handler) when an extension cannot be confirmed before the lease ends. A failed extension
/// is retried with backoff while time remains; the deadline is local, so a call that hangs past the lease never lets
/// the handler run on while another worker receives the message.
async fn keep_lease(queue: &dyn MessageQueue, health: &Health, handle: &str, timeout: Duration) -> String {
    // Confirmations must arrive this long before the lease ends, for clock skew and the delete that follows.
    let margin = (timeout / 10).clamp(Duration::from_millis(200), Duration::from_secs(2));
    let mut expires = Instant::now() + timeout;
    loop {
        tokio::time::sleep_until(expires - timeout / 2).await;
        let deadline = expires - margin;
        let mut retry = RetryBackoff::default();
        loop {
            let asked = Instant::now();
            let answer = tokio::time::timeout_at(deadline, queue.extend_visibility(handle, timeout)).await;
            health.beat();
            match answer {
                Ok(Ok(())) => {
                    expires = asked + timeout;
                    tracing::debug!(extended_by = ?timeout, "visibility extended");
                    break;
                }
                Ok(Err(error)) => {
                    let delay = retry.next_delay();
                    if Instant::now() + delay >= deadline {
                        return format!("visibility extension failed until the lease ran out: {error}");
                    }
                    tracing::warn!(%error, retry_in = ?delay, "visibility extension failed; retrying before the lease ends");
                    tokio::time::sleep(delay).await;
                }
                Err(_) => return "visibility extension not confirmed before the lease ran out".to_owned(),
            }
        }
    }
}

/// What a store verdict means for the message.
fn effect_decision(effect: Effect) -> Decision {
    match effect {
        Effect::Applied => Decision::new(Outcome::Processed, Settle::Delete, "applied"),
        Effect::Duplicate => Decision::new(Outcome::Duplicate, Settle::Delete, "already applied"),
        Effect::Stale { latest } => {
            Decision::new(Outcome::Stale, Settle::Delete, format!("older than the applied version {latest}"))
        }
        // Two writes claimed one version with different content: the later one is kept for a person to decide.
        Effect::Conflict { version, stored, received } => Decision::reject(
            "version_conflict",
            format!("version {version} was applied with content digest {stored}; this message carries {received}"),
        ),
        // A change the order may never take (another customer, another client): a person looks at it.
        Effect::Refused { reason, detail } => Decision::reject(reason, detail),
    }
}

/// How long the receive loop waits for the next handler slot to free up before polling with fewer than a full batch,
/// when the last receive was not full (no backlog).
const SLOT_LINGER: Duration = Duration::from_millis(20);
/// After a receive that got all it asked for (a backlog), the longest the loop waits for that batch's slots to come
/// back. The messages of one receive finish one store round trip or a few apart (50 ms each on a busy emulator, far
/// less on DynamoDB); waiting for all of them keeps every receive (and so every delete batch) full, which is what
/// gets SQS calls per message down to 0.2. A message of the batch that takes longer costs the next receive this much,
/// once: the receive after that waits only for its own batch.
const BATCH_LINGER: Duration = Duration::from_secs(1);
/// How often a receive loop holding during a store outage looks again (it is also woken when the store answers).
const HOLD_RECHECK: Duration = Duration::from_secs(1);
/// How long past its wait a receive in flight at shutdown is waited for.
const SHUTDOWN_RECEIVE_SLACK: Duration = Duration::from_secs(5);

/// Waits for one free slot, then takes more, up to `max`: every slot already free; until `batch` are held, the slots
/// of the last full receive as they come back (for at most [`BATCH_LINGER`]); beyond that, slots that come back
/// within [`SLOT_LINGER`] of each other. No prefetched message ever waits for a slot while its visibility timer runs.
async fn take_slots(slots: &Arc<Semaphore>, max: usize, batch: usize) -> Vec<OwnedSemaphorePermit> {
    let mut permits = Vec::with_capacity(max);
    match Arc::clone(slots).acquire_owned().await {
        Ok(permit) => permits.push(permit),
        // The semaphore is never closed.
        Err(_) => return permits,
    }
    let cap = Instant::now() + BATCH_LINGER;
    while permits.len() < max {
        let next = match Arc::clone(slots).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let deadline = if permits.len() < batch { cap } else { Instant::now() + SLOT_LINGER };
                tokio::time::timeout_at(deadline, Arc::clone(slots).acquire_owned()).await.ok().and_then(Result::ok)
            }
        };
        match next {
            Some(permit) => permits.push(permit),
            None => break,
        }
    }
    permits
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots freed within the linger are taken: the next receive asks for a full batch.
    #[tokio::test(start_paused = true)]
    async fn take_slots_waits_briefly_for_a_full_batch() {
        let slots = Arc::new(Semaphore::new(10));
        let busy = take_slots(&slots, 10, 0).await;
        assert_eq!(busy.len(), 10);
        let returning = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(busy);
        });
        let permits = take_slots(&slots, 10, 0).await;
        assert_eq!(permits.len(), 10);
        let _ = returning.await;
    }

    /// Slots still busy after the linger are not waited for: a partial batch goes out.
    #[tokio::test(start_paused = true)]
    async fn take_slots_does_not_wait_past_the_linger() {
        let slots = Arc::new(Semaphore::new(10));
        let _held = Arc::clone(&slots).try_acquire_many_owned(7);
        let started = Instant::now();
        let permits = take_slots(&slots, 10, 0).await;
        assert_eq!(permits.len(), 3);
        assert!(started.elapsed() <= SLOT_LINGER + Duration::from_millis(1));
    }

    /// A slot still held by an older message does not hold up every later receive: once its own batch is back, the
    /// loop takes what is free without waiting for it.
    #[tokio::test(start_paused = true)]
    async fn a_slot_held_long_costs_one_wait_not_one_per_receive() {
        let slots = Arc::new(Semaphore::new(10));
        let _long = Arc::clone(&slots).try_acquire_owned();
        let batch = take_slots(&slots, 10, 0).await;
        assert_eq!(batch.len(), 9);
        drop(batch);
        let started = Instant::now();
        let permits = take_slots(&slots, 10, 9).await;
        assert_eq!(permits.len(), 9);
        assert!(started.elapsed() <= SLOT_LINGER + Duration::from_millis(1), "{:?}", started.elapsed());
    }

    /// After a full batch, slots trickling back one by one (a store write each, 50 ms apart on a busy emulator) are
    /// all waited for, so the next receive is full too; a slot that never comes back costs at most the batch linger.
    #[tokio::test(start_paused = true)]
    async fn after_a_full_batch_slots_trickling_back_fill_the_next_one() {
        let slots = Arc::new(Semaphore::new(10));
        let busy = take_slots(&slots, 10, 10).await;
        let mut busy = busy.into_iter();
        let stuck = busy.next();
        let returning = tokio::spawn(async move {
            for permit in busy {
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(permit);
            }
        });
        let started = Instant::now();
        let permits = take_slots(&slots, 10, 10).await;
        assert_eq!(permits.len(), 9, "every slot that came back, not just the first few");
        // The first slot came back after 50 ms; from there, the stuck one is waited for a batch linger.
        let waited = started.elapsed();
        assert!(waited <= Duration::from_millis(50) + BATCH_LINGER + Duration::from_millis(1), "{waited:?}");
        drop(permits);
        drop(stuck);
        let _ = returning.await;
    }
}
