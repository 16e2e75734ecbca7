//! Start-up that waits for an AWS endpoint still starting, instead of failing for good.
//!
//! `pedidos-api topology` is the first AWS client of `docker compose up`, and it runs once (`restart: "no"`): if its
//! first call fails, the API and both workers, which wait for it to succeed, never start. An emulator that is still
//! starting refuses connections, holds requests, or answers 5xx; LocalStack starts DynamoDB Local (a JVM) on the first
//! DynamoDB request unless it loads its services eagerly, and holds that request meanwhile (up to 30 s per request,
//! then a 500). So before its first real call, a start-up waits until each endpoint it needs *answers*: any HTTP
//! answer below 500 counts (an access denial too: the real call that follows reports it at once), while connection
//! errors, timeouts, unreadable responses and 5xx mean "not ready yet". The wait is bounded ([`DEFAULT_WAIT`], or
//! `STARTUP_WAIT_SECONDS`), logged once when it starts (WARN) and once when it ends (INFO, with how long it took), and
//! fails with one line naming the endpoint, the budget and the last error.
//!
//! The long-running processes do not need this: the worker looks its queue up with an endless backoff behind a live
//! health port (G10), and the API resolves its topic lazily, answering 503 until SNS does (G2).

use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use tokio::time::Instant;

use crate::config::{in_range, ConfigError, Lookup};

/// How long a start-up waits in total for its endpoints, unless `STARTUP_WAIT_SECONDS` says otherwise.
///
/// 180 s: LocalStack starting DynamoDB Local (a JVM) takes a few seconds on a workstation and has been seen to take
/// over a minute on a loaded 2-core machine or under CPU emulation (an amd64 image on arm64); LocalStack holds each
/// request for a starting service up to 30 s. 180 s is also longer than compose's own patience with the emulator's
/// health check (a 10 s start period plus 30 retries 5 s apart), so `topology` never gives up on an emulator that
/// compose still considers starting. A real AWS endpoint answers the first attempt, so the budget costs nothing there.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(180);

/// The variable that overrides [`DEFAULT_WAIT`], in seconds (0 to 3600; 0 means one attempt).
pub const WAIT_VAR: &str = "STARTUP_WAIT_SECONDS";

/// How long one attempt may take: long enough for an emulator holding a request while a service starts to answer it,
/// short enough that a black-holed connection is tried again.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The delay after the first failed attempt; it doubles up to [`MAX_DELAY`].
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest delay between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// While waiting, one INFO line at most this often says it is still waiting (the first failure is a WARN).
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The bounds of one wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// The whole wait: no attempt starts after it, and none runs past it (but the first, which always gets `attempt`).
    pub total: Duration,
    /// One attempt.
    pub attempt: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Self { total: DEFAULT_WAIT, attempt: ATTEMPT_TIMEOUT }
    }
}

impl Patience {
    /// [`Patience::default`] with `STARTUP_WAIT_SECONDS` applied.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the variable when it is not a number of seconds from 0 to 3600.
    pub fn from_env(env: Lookup<'_>) -> Result<Self, ConfigError> {
        let seconds = in_range(env, WAIT_VAR, DEFAULT_WAIT.as_secs(), 0, 3600)?;
        Ok(Self { total: Duration::from_secs(seconds), ..Self::default() })
    }
}

/// How a wait ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waited {
    /// Attempts made, the successful one included (1: it answered at once).
    pub attempts: u32,
    /// From the first attempt's start to the successful one's end.
    pub waited: Duration,
}

/// An endpoint that did not answer within the wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} did not answer within {total_seconds} s ({attempts} attempts; raise {WAIT_VAR} to wait longer); \
     last error: {last_error}"
)]
pub struct NotReady {
    pub what: String,
    pub total_seconds: u64,
    pub attempts: u32,
    pub last_error: String,
}

/// Runs `attempt` until it returns `Ok` or `patience` runs out, with a growing delay between attempts (from
/// [`FIRST_DELAY`], doubling up to [`MAX_DELAY`]). `Err` from an attempt means "not ready yet"; an attempt that takes
/// longer than `patience.attempt` is abandoned and counts as one. `what` names the endpoint in the log and the error.
///
/// # Errors
/// [`NotReady`] with the last attempt's error when the time is up.
pub async fn until_ready<F, Fut>(what: &str, patience: Patience, mut attempt: F) -> Result<Waited, NotReady>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let deadline = started + patience.total;
    let mut delay = FIRST_DELAY;
    let mut attempts = 0u32;
    let mut last_progress = started;
    loop {
        attempts += 1;
        let time_left = deadline.saturating_duration_since(Instant::now());
        let limit = if attempts == 1 { patience.attempt } else { patience.attempt.min(time_left) };
        let error = match tokio::time::timeout(limit, attempt()).await {
            Ok(Ok(())) => {
                let waited = started.elapsed();
                if attempts > 1 {
                    tracing::info!(
                        endpoint = what,
                        attempts,
                        waited_seconds = seconds(waited),
                        "AWS endpoint answered after waiting {:.1} s",
                        waited.as_secs_f64()
                    );
                }
                return Ok(Waited { attempts, waited });
            }
            Ok(Err(error)) => error,
            Err(_) => format!("no answer within {} ms", limit.as_millis()),
        };
        let now = Instant::now();
        if now + delay >= deadline {
            return Err(NotReady {
                what: what.to_owned(),
                total_seconds: patience.total.as_secs(),
                attempts,
                last_error: error,
            });
        }
        if attempts == 1 {
            tracing::warn!(
                endpoint = what,
                %error,
                wait_seconds = patience.total.as_secs(),
                "AWS endpoint not answering yet (still starting?); waiting for it"
            );
        } else if now.duration_since(last_progress) >= PROGRESS_EVERY {
            last_progress = now;
            tracing::info!(endpoint = what, %error, attempts, waited_seconds = seconds(now - started), "still waiting");
        } else {
            tracing::debug!(endpoint = what, %error, attempts, "not answering yet");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// Seconds with one decimal, for log fields.
fn seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10.0).round() / 10.0
}

/// Whether an SDK call reached an endpoint that is up: `Ok` for any answer below 500 (a refusal such as an access
/// denial included) and for a request the SDK could not even build (no wait can fix that; the real call reports it),
/// `Err` with the error's text for connection errors, timeouts, unreadable responses and 5xx.
///
/// # Errors
/// The "not ready yet" cases above.
pub fn endpoint_answered<T, E>(result: &Result<T, SdkError<E, HttpResponse>>) -> Result<(), String>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(_) | Err(SdkError::ConstructionFailure(_)) => Ok(()),
        Err(SdkError::ServiceError(context)) if context.raw().status().as_u16() < 500 => Ok(()),
        Err(error) => Err(DisplayErrorContext(error).to_string()),
    }
}

/// Where the SDK sends one service's calls, for messages: its `AWS_ENDPOINT_URL_<SERVICE>`, else `AWS_ENDPOINT_URL`,
/// else the service's AWS endpoint.
pub fn endpoint_label(env: Lookup<'_>, service: &str, service_var: &str) -> String {
    match env(service_var).or_else(|| env("AWS_ENDPOINT_URL")) {
        Some(url) => format!("{service} at {url}"),
        None => format!("{service} (AWS)"),
    }
}

/// Waits until DynamoDB, SNS and SQS each answer a cheap read (`ListTables`, `ListTopics`, `ListQueues`), all three
/// at once, within `patience`. `sdk` should have [`crate::aws::CallBudget::STARTUP`]: one attempt per call, this
/// loop doing the retrying.
///
/// # Errors
/// The first endpoint (in that order) that did not answer in time.
pub async fn wait_for_endpoints(
    sdk: &aws_config::SdkConfig,
    env: Lookup<'_>,
    patience: Patience,
) -> Result<(), NotReady> {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let sns = aws_sdk_sns::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let (dynamodb_label, sns_label, sqs_label) = (
        endpoint_label(env, "DynamoDB", "AWS_ENDPOINT_URL_DYNAMODB"),
        endpoint_label(env, "SNS", "AWS_ENDPOINT_URL_SNS"),
        endpoint_label(env, "SQS", "AWS_ENDPOINT_URL_SQS"),
    );
    let (dynamodb, sns, sqs) = tokio::join!(
        until_ready(&dynamodb_label, patience, || {
            let client = dynamodb.clone();
            async move { endpoint_answered(&client.list_tables().limit(1).send().await) }
        }),
        until_ready(&sns_label, patience, || {
            let client = sns.clone();
            async move { endpoint_answered(&client.list_topics().send().await) }
        }),
        until_ready(&sqs_label, patience, || {
            let client = sqs.clone();
            async move { endpoint_answered(&client.list_queues().max_results(1).send().await) }
        }),
    );
    dynamodb.and(sns).and(sqs).map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    const PATIENCE: Patience = Patience { total: DEFAULT_WAIT, attempt: ATTEMPT_TIMEOUT };

    /// An endpoint that starts answering `ready_after` from now: what each attempt sees, and how many were made.
    fn endpoint(ready_after: Duration) -> (impl FnMut() -> std::future::Ready<Result<(), String>>, Arc<AtomicU32>) {
        let ready_at = Instant::now() + ready_after;
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let attempt = move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if Instant::now() >= ready_at { Ok(()) } else { Err("connection refused".to_owned()) })
        };
        (attempt, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_that_answers_is_not_waited_for() {
        let (attempt, calls) = endpoint(Duration::ZERO);
        let waited = until_ready("DynamoDB", PATIENCE, attempt).await;
        assert_eq!(waited, Ok(Waited { attempts: 1, waited: Duration::ZERO }));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// The case: DynamoDB unavailable for the first 30 s. The wait ends within one delay of it coming up, with a
    /// bounded number of attempts (the delay grows to 5 s), far inside the budget.
    #[tokio::test(start_paused = true)]
    async fn an_endpoint_starting_for_30_seconds_is_waited_out() {
        let (attempt, calls) = endpoint(Duration::from_secs(30));
        let started = Instant::now();
        let waited = until_ready("DynamoDB", PATIENCE, attempt).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(waited.waited >= Duration::from_secs(30), "{waited:?}");
        assert!(waited.waited <= Duration::from_secs(30) + MAX_DELAY, "{waited:?}");
        assert_eq!(started.elapsed(), waited.waited);
        // 0.25 + 0.5 + 1 + 2 + 4 = 7.75 s in 6 attempts, then one every 5 s: 11 attempts by 32.75 s.
        assert_eq!(waited.attempts, 11);
        assert_eq!(calls.load(Ordering::SeqCst), 11);
    }

    /// Requests held without an answer (an emulator starting a JVM): each attempt is abandoned after `attempt`, and
    /// the wait ends when the endpoint answers.
    #[tokio::test(start_paused = true)]
    async fn held_requests_are_abandoned_and_tried_again() {
        let ready_at = Instant::now() + Duration::from_secs(30);
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let waited = until_ready("DynamoDB", PATIENCE, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                // Held until the endpoint is up, then answered.
                tokio::time::sleep_until(ready_at).await;
                Ok(())
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        // Attempts at 0 (held 10 s), 10.25 (held 10 s), 20.75: the third one is answered at 30 s.
        assert_eq!(waited, Waited { attempts: 3, waited: Duration::from_secs(30) });
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// An endpoint that never comes up fails after the budget, not before and not much after, with the last error;
    /// no attempt outlives the budget.
    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded_and_says_why_it_failed() {
        let (attempt, calls) = endpoint(Duration::from_secs(1_000_000));
        let started = Instant::now();
        let error = until_ready("DynamoDB at http://emulator:4566", PATIENCE, attempt).await.err();
        let elapsed = started.elapsed();
        assert!(elapsed <= DEFAULT_WAIT && elapsed > DEFAULT_WAIT - MAX_DELAY, "{elapsed:?}");
        let error = error.unwrap_or_else(|| panic!("an endpoint that never answers must fail the wait"));
        assert_eq!(error.attempts, calls.load(Ordering::SeqCst));
        assert_eq!(
            error.to_string(),
            format!(
                "DynamoDB at http://emulator:4566 did not answer within 180 s ({} attempts; raise STARTUP_WAIT_SECONDS \
                 to wait longer); last error: connection refused",
                error.attempts
            )
        );

        // Held requests: the last attempt is cut at the deadline.
        let started = Instant::now();
        let error = until_ready("SQS", Patience { total: Duration::from_secs(25), attempt: ATTEMPT_TIMEOUT }, || {
            std::future::pending::<Result<(), String>>()
        })
        .await
        .err();
        assert!(started.elapsed() <= Duration::from_secs(25), "{:?}", started.elapsed());
        // Attempts at 0 and 10.25 s get 10 s each; the third, at 20.75 s, only what is left of the 25 s.
        assert_eq!(error.map(|e| e.last_error).as_deref(), Some("no answer within 4250 ms"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_budget_is_one_attempt() {
        let (attempt, calls) = endpoint(Duration::from_secs(1));
        let error = until_ready("SNS", Patience { total: Duration::ZERO, ..PATIENCE }, attempt).await.err();
        assert_eq!(error.map(|e| e.attempts), Some(1));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_budget_comes_from_the_environment() {
        let env = |value: &'static str| move |name: &str| (name == WAIT_VAR).then(|| value.to_owned());
        assert_eq!(Patience::from_env(&|_: &str| None), Ok(Patience::default()));
        assert_eq!(Patience::from_env(&env("30")).map(|p| p.total), Ok(Duration::from_secs(30)));
        let error = Patience::from_env(&env("soon")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.starts_with("STARTUP_WAIT_SECONDS=\"soon\" is invalid"), "{error}");
        assert!(Patience::from_env(&env("3601")).is_err());
    }

    #[test]
    fn labels_name_the_endpoint_each_service_uses() {
        let env = |name: &str| match name {
            "AWS_ENDPOINT_URL" => Some("http://emulator:4566".to_owned()),
            "AWS_ENDPOINT_URL_DYNAMODB" => Some("http://moto:4567".to_owned()),
            _ => None,
        };
        assert_eq!(endpoint_label(&env, "DynamoDB", "AWS_ENDPOINT_URL_DYNAMODB"), "DynamoDB at http://moto:4567");
        assert_eq!(endpoint_label(&env, "SQS", "AWS_ENDPOINT_URL_SQS"), "SQS at http://emulator:4566");
        assert_eq!(endpoint_label(&|_: &str| None, "SNS", "AWS_ENDPOINT_URL_SNS"), "SNS (AWS)");
    }
}
