//! Claims for generic handlers whose effect lives outside DynamoDB (a payment call, an email).
//!
//! In the spirit of Powertools' idempotency utility, with its known gaps closed:
//! - a claim is an in-progress *lease* as long as the message's visibility, extended by the same heartbeat;
//! - `complete` is conditional on still holding the claim (fencing): a worker whose lease lapsed and was taken over
//!   learns it instead of overwriting the other's record;
//! - a failed handler releases its claim, so a retry can run at once;
//! - completed claims carry an expiry attribute the table's TTL deletes;
//! - a concurrent copy sees [`Claim::InProgress`] and is held and retried by the caller, not failed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use tokio::time::Instant;

use crate::dynamo::{classify, count, n, number, s};
use crate::schema::attr;
use crate::{BoxFuture, StoreError};

/// How long a completed claim is remembered (then the table's TTL removes it).
pub const COMPLETED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

const IN_PROGRESS: &str = "IN_PROGRESS";
const COMPLETED: &str = "COMPLETED";

/// Proof of holding a claim: a random token only the claimer knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(String);

impl ClaimToken {
    fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Run the effect, then `complete` (or `release` on failure).
    Acquired(ClaimToken),
    /// The effect already ran to completion: a duplicate.
    Completed,
    /// Another copy holds a live lease for about `lease_left`: wait and claim again.
    InProgress { lease_left: Duration },
}

pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for `lease` (the message's visibility timeout).
    fn claim<'a>(&'a self, key: &'a str, lease: Duration) -> BoxFuture<'a, Result<Claim, StoreError>>;
    /// Extends a held claim; `false` when it is no longer held.
    fn extend<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Marks the effect done; `false` when the claim was lost meanwhile (fenced: the caller must not report success).
    fn complete<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Gives the claim up after a failure, so a retry can claim at once.
    fn release<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> BoxFuture<'a, Result<(), StoreError>>;
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// [`IdempotencyStore`] on the DynamoDB idempotency table (`docs/data-model.md`).
#[derive(Clone)]
pub struct DynamoIdempotency {
    client: Client,
    table: String,
}

impl DynamoIdempotency {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    async fn claim_now(&self, key: &str, lease: Duration) -> Result<Claim, StoreError> {
        let now = now_ms();
        let token = ClaimToken::new();
        let until = now.saturating_add(millis(lease));
        let started = StdInstant::now();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(attr::ID, s(key))
            .item("status", s(IN_PROGRESS))
            .item("owner", s(token.0.clone()))
            .item("leaseUntil", n(until))
            .item(attr::EXPIRES_AT, n(until / 1000 + COMPLETED_RETENTION.as_secs()))
            .condition_expression("attribute_not_exists(id) OR (#status = :in_progress AND leaseUntil < :now)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .expression_attribute_values(":now", n(now))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let claim = match result {
            Ok(_) => Ok(Claim::Acquired(token)),
            Err(SdkError::ServiceError(failure)) if failure.err().is_conditional_check_failed_exception() => {
                let old = match failure.err() {
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(e) => e.item(),
                    _ => None,
                };
                match old {
                    Some(item) if matches!(item.get("status"), Some(AttributeValue::S(v)) if v == COMPLETED) => {
                        Ok(Claim::Completed)
                    }
                    Some(item) => {
                        let lease_until: u64 =
                            item.get("leaseUntil").map_or(Ok(now), |v| number(v, key, "leaseUntil"))?;
                        Ok(Claim::InProgress { lease_left: Duration::from_millis(lease_until.saturating_sub(now)) })
                    }
                    None => Ok(Claim::InProgress { lease_left: lease }),
                }
            }
            Err(e) => Err(classify("claim", &self.table, e)),
        };
        count("claim", claim.as_ref().map_or_else(StoreError::kind, claim_label), started);
        claim
    }

    /// An `UpdateItem` that only applies while `token` holds an in-progress claim; `false` when it does not.
    async fn update_held(
        &self,
        operation: &'static str,
        key: &str,
        token: &ClaimToken,
        expression: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, StoreError> {
        let started = StdInstant::now();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::ID, s(key))
            .update_expression(expression)
            .condition_expression("#owner = :token AND #status = :in_progress")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":token", s(token.0.clone()))
            .expression_attribute_values(":in_progress", s(IN_PROGRESS));
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        let result = match request.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(failure)) if failure.err().is_conditional_check_failed_exception() => Ok(false),
            Err(e) => Err(classify(operation, &self.table, e)),
        };
        count(
            operation,
            result.as_ref().map_or_else(StoreError::kind, |held| if *held { "ok" } else { "lost" }),
            started,
        );
        result
    }
}

fn claim_label(claim: &Claim) -> &'static str {
    match claim {
        Claim::Acquired(_) => "applied",
        Claim::Completed => "duplicate",
        Claim::InProgress { .. } => "in_progress",
    }
}

impl IdempotencyStore for DynamoIdempotency {
    fn claim<'a>(&'a self, key: &'a str, lease: Duration) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(self.claim_now(key, lease))
    }

    fn extend<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let until = now_ms().saturating_add(millis(lease));
            self.update_held("extend_claim", key, token, "SET leaseUntil = :until", vec![(":until", n(until))]).await
        })
    }

    fn complete<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let expires = now_ms() / 1000 + COMPLETED_RETENTION.as_secs();
            self.update_held(
                "complete_claim",
                key,
                token,
                "SET #status = :completed, expiresAt = :expires REMOVE leaseUntil",
                vec![(":completed", s(COMPLETED)), (":expires", n(expires))],
            )
            .await
        })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let started = StdInstant::now();
            let result = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key(attr::ID, s(key))
                .condition_expression("#owner = :token AND #status = :in_progress")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":token", s(token.0.clone()))
                .expression_attribute_values(":in_progress", s(IN_PROGRESS))
                .send()
                .await;
            let result = match result {
                // Not held any more: nothing to give up.
                Err(SdkError::ServiceError(failure)) if failure.err().is_conditional_check_failed_exception() => Ok(()),
                Err(e) => Err(classify("release_claim", &self.table, e)),
                Ok(_) => Ok(()),
            };
            count("release_claim", result.as_ref().map_or_else(StoreError::kind, |()| "ok"), started);
            result
        })
    }
}

/// The same semantics in memory, on tokio's clock (so tests can pause it).
#[derive(Default)]
pub struct MemoryIdempotency {
    claims: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    completed: bool,
    owner: ClaimToken,
    lease_until: Instant,
}

impl MemoryIdempotency {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> T) -> T {
        f(&mut self.claims.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn held<'m>(claims: &'m mut HashMap<String, Entry>, key: &str, token: &ClaimToken) -> Option<&'m mut Entry> {
        claims.get_mut(key).filter(|e| !e.completed && e.owner == *token)
    }
}

impl IdempotencyStore for MemoryIdempotency {
    fn claim<'a>(&'a self, key: &'a str, lease: Duration) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let now = Instant::now();
        let claim = self.with(|claims| match claims.get(key) {
            Some(e) if e.completed => Claim::Completed,
            Some(e) if e.lease_until >= now => Claim::InProgress { lease_left: e.lease_until - now },
            _ => {
                let token = ClaimToken::new();
                claims
                    .insert(key.to_owned(), Entry { completed: false, owner: token.clone(), lease_until: now + lease });
                Claim::Acquired(token)
            }
        });
        Box::pin(async move { Ok(claim) })
    }

    fn extend<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let held = self
            .with(|claims| Self::held(claims, key, token).map(|e| e.lease_until = Instant::now() + lease).is_some());
        Box::pin(async move { Ok(held) })
    }

    fn complete<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> BoxFuture<'a, Result<bool, StoreError>> {
        let held = self.with(|claims| Self::held(claims, key, token).map(|e| e.completed = true).is_some());
        Box::pin(async move { Ok(held) })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|claims| {
            if Self::held(claims, key, token).is_some() {
                claims.remove(key);
            }
        });
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lease_fencing_release_and_completion() {
        let store = MemoryIdempotency::new();
        let lease = Duration::from_secs(30);
        let Ok(Claim::Acquired(first)) = store.claim("k", lease).await else { panic!("first claim must acquire") };
        assert!(matches!(store.claim("k", lease).await, Ok(Claim::InProgress { .. })), "a live lease holds copies off");
        tokio::time::advance(lease + Duration::from_secs(1)).await;
        let Ok(Claim::Acquired(second)) = store.claim("k", lease).await else { panic!("a lapsed lease is taken over") };
        assert_eq!(store.complete("k", &first).await.ok(), Some(false), "the lapsed holder is fenced off");
        assert_eq!(store.extend("k", &first, lease).await.ok(), Some(false));
        assert!(store.release("k", &first).await.is_ok());
        assert!(
            matches!(store.claim("k", lease).await, Ok(Claim::InProgress { .. })),
            "a fenced release frees nothing"
        );
        assert_eq!(store.complete("k", &second).await.ok(), Some(true));
        assert_eq!(store.claim("k", lease).await.ok(), Some(Claim::Completed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_claim_can_be_taken_at_once() {
        let store = MemoryIdempotency::new();
        let Ok(Claim::Acquired(token)) = store.claim("k", Duration::from_secs(30)).await else { panic!("claim") };
        assert!(store.release("k", &token).await.is_ok());
        assert!(matches!(store.claim("k", Duration::from_secs(30)).await, Ok(Claim::Acquired(_))));
    }
}
