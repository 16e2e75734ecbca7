//! The conditional writes of messages handled together, sent as one `TransactWriteItems`.
//!
//! The worker handles a received batch of up to 10 messages at once, so their writes reach [`BatchedWrites`] within a
//! few milliseconds of each other; one transaction then carries all of them. When DynamoDB cancels it, each item's
//! `CancellationReason` says what happened to it:
//! - `ConditionalCheckFailed` (with the stored item) is that message's `duplicate`, `stale` or `conflict`, decided;
//! - `None` (cancelled because of another item), `TransactionConflict` or throttling mean it would have applied, so
//!   only those go into the next transaction;
//! - any other reason (`ValidationError`, ...) is that write's own permanent error ([`StoreError::Rejected`]).
//!
//! A transaction refused as a whole (a request-level `ValidationException`) cannot say which write was at fault:
//! every write of it then goes alone, so the bad one fails by itself and the others apply in the same round. Each write
//! still applies at most once: the conditions are the single writes' ([`crate::dynamo::DynamoOrders`]).

use std::collections::HashSet;
use std::time::{Duration, Instant as StdInstant};

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update};
use domain::OrderEvent;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::dynamo::{
    apply_names, apply_verdict, classify, count, s, shipment_item, ApplyWrite, Attributes, DynamoOrders, Verdict,
    SHIPMENT_CONDITION,
};
use crate::model::{Applied, ChangeMeta, Shipment};
use crate::orders::OrderWrites;
use crate::schema::attr;
use crate::{BoxFuture, StoreError};

/// How long the first write of a transaction waits for company: the messages of one receive start together.
pub const LINGER: Duration = Duration::from_millis(5);
/// Items per transaction (DynamoDB allows 100; a worker batch is 10 messages, a few batches may overlap).
pub const MAX_ITEMS: usize = 25;
/// Transactions tried for the writes still to apply before falling back to single writes.
const ROUNDS: usize = 3;

enum Write {
    Apply { event: OrderEvent, meta: ChangeMeta },
    Shipment(Shipment),
}

impl Write {
    fn key(&self) -> String {
        match self {
            Self::Apply { event, .. } => crate::dynamo::order_key(event.order.pedido_id),
            Self::Shipment(shipment) => crate::dynamo::shipment_key(shipment.pedido_id),
        }
    }

    fn item(&self, table: &str) -> Result<TransactWriteItem, StoreError> {
        let built = match self {
            Self::Apply { event, meta } => {
                let write = ApplyWrite::new(event, meta);
                Update::builder()
                    .table_name(table)
                    .key(attr::PK, s(write.key))
                    .update_expression(write.expression)
                    .condition_expression(write.condition)
                    .set_expression_attribute_names(Some(apply_names()))
                    .set_expression_attribute_values(Some(write.values))
                    .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                    .build()
                    .map(|update| TransactWriteItem::builder().update(update).build())
            }
            Self::Shipment(shipment) => Put::builder()
                .table_name(table)
                .set_item(Some(shipment_item(shipment)))
                .condition_expression(SHIPMENT_CONDITION)
                .build()
                .map(|put| TransactWriteItem::builder().put(put).build()),
        };
        built.map_err(|e| StoreError::Rejected {
            operation: "transact_write",
            code: "ConstructionFailure".into(),
            detail: e.to_string(),
            source: Some(Box::new(e)),
        })
    }

    /// The outcome of a write whose condition failed, from the stored item.
    fn verdict(&self, old: Option<&Attributes>) -> Result<Verdict, StoreError> {
        match self {
            Self::Apply { event, .. } => apply_verdict(old, event, &self.key()),
            Self::Shipment(_) => Ok(Verdict::Decided(Applied::Duplicate)),
        }
    }

    async fn single(&self, orders: &DynamoOrders) -> Result<Applied, StoreError> {
        match self {
            Self::Apply { event, meta } => orders.apply(event, meta).await,
            Self::Shipment(shipment) => orders.create_shipment(shipment).await,
        }
    }
}

struct Job {
    write: Write,
    reply: oneshot::Sender<Result<Applied, StoreError>>,
}

impl Job {
    fn answer(self, result: Result<Applied, StoreError>) {
        // The asking message task may be gone (shutdown): its message is redelivered and the store answers then.
        let _ = self.reply.send(result);
    }
}

/// [`OrderWrites`] that coalesces concurrent writes into `TransactWriteItems` calls.
#[derive(Clone)]
pub struct BatchedWrites {
    tx: mpsc::Sender<Job>,
}

impl BatchedWrites {
    /// Spawns the batching task on the current runtime; it ends when every clone is dropped.
    pub fn spawn(orders: DynamoOrders) -> Self {
        let (tx, rx) = mpsc::channel(MAX_ITEMS * 4);
        tokio::spawn(run(orders, rx));
        Self { tx }
    }

    async fn submit(&self, write: Write) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::unavailable("transact_write", "the batching task stopped");
        self.tx.send(Job { write, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl OrderWrites for BatchedWrites {
    fn apply<'a>(&'a self, event: &'a OrderEvent, meta: &'a ChangeMeta) -> BoxFuture<'a, Result<Applied, StoreError>> {
        Box::pin(self.submit(Write::Apply { event: event.clone(), meta: meta.clone() }))
    }

    fn create_shipment<'a>(&'a self, shipment: &'a Shipment) -> BoxFuture<'a, Result<Applied, StoreError>> {
        Box::pin(self.submit(Write::Shipment(shipment.clone())))
    }
}

async fn run(orders: DynamoOrders, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let deadline = Instant::now() + LINGER;
        while jobs.len() < MAX_ITEMS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) | Err(_) => break,
            }
        }
        execute(&orders, jobs).await;
    }
}

async fn execute(orders: &DynamoOrders, jobs: Vec<Job>) {
    // A transaction may not touch one item twice: repeats of a key go through single writes after it.
    let mut keys = HashSet::new();
    let (mut pending, repeats): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|job| keys.insert(job.write.key()));
    let mut alone = Vec::new();
    for _ in 0..ROUNDS {
        if pending.len() <= 1 {
            break;
        }
        let round = transact(orders, pending).await;
        pending = round.again;
        alone.extend(round.alone);
    }
    for job in pending.into_iter().chain(alone).chain(repeats) {
        let result = job.write.single(orders).await;
        job.answer(result);
    }
}

/// What a transaction left to do.
#[derive(Default)]
struct Round {
    /// Writes that would have applied but were cancelled with the transaction: the next transaction.
    again: Vec<Job>,
    /// Writes whose outcome only a single write can tell (the transaction was refused as a whole, or an item's
    /// history must be compacted first).
    alone: Vec<Job>,
}

/// `CancellationReason` codes of a write that would have applied: it goes into the next transaction.
const RETRY_REASONS: [&str; 5] =
    ["None", "TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"];

async fn transact(orders: &DynamoOrders, jobs: Vec<Job>) -> Round {
    let mut round = Round::default();
    let mut items = Vec::with_capacity(jobs.len());
    let mut sent = Vec::with_capacity(jobs.len());
    for job in jobs {
        match job.write.item(orders.table()) {
            Ok(item) => {
                items.push(item);
                sent.push(job);
            }
            Err(error) => job.answer(Err(error)),
        }
    }
    if sent.len() <= 1 {
        round.alone = sent;
        return round;
    }
    let started = StdInstant::now();
    let result = orders.client().transact_write_items().set_transact_items(Some(items)).send().await;
    match result {
        Ok(_) => {
            count("transact_write", "applied", started);
            for job in sent {
                job.answer(Ok(Applied::Applied));
            }
        }
        Err(SdkError::ServiceError(failure))
            if matches!(failure.err(), TransactWriteItemsError::TransactionCanceledException(_)) =>
        {
            count("transact_write", "cancelled", started);
            let reasons = match failure.err() {
                TransactWriteItemsError::TransactionCanceledException(e) => e.cancellation_reasons().to_vec(),
                _ => Vec::new(),
            };
            if reasons.len() != sent.len() {
                // Cannot tell which item failed: every write goes on alone.
                round.alone = sent;
                return round;
            }
            for (job, reason) in sent.into_iter().zip(reasons) {
                match reason.code() {
                    Some("ConditionalCheckFailed") => match job.write.verdict(reason.item()) {
                        Ok(Verdict::Decided(applied)) => job.answer(Ok(applied)),
                        Ok(Verdict::HistoryFull(_) | Verdict::Unknown) => round.alone.push(job),
                        Err(error) => job.answer(Err(error)),
                    },
                    None => round.again.push(job),
                    Some(code) if RETRY_REASONS.contains(&code) => round.again.push(job),
                    // This write's own refusal (`ValidationError`, ...): it would be refused again in any transaction.
                    Some(code) => job.answer(Err(StoreError::Rejected {
                        operation: "transact_write",
                        code: code.to_owned(),
                        detail: reason.message().unwrap_or("cancelled").to_owned(),
                        source: None,
                    })),
                }
            }
        }
        Err(error) => {
            let error = classify("transact_write", orders.table(), error);
            count("transact_write", error.kind(), started);
            if matches!(error, StoreError::Rejected { .. }) {
                // Refused as a whole, so one write is at fault and nobody can say which: each goes alone.
                round.alone = sent;
            } else {
                for job in sent {
                    job.answer(Err(error.for_another_caller()));
                }
            }
        }
    }
    round
}
