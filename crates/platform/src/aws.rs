//! The AWS SDK configuration both binaries use.

use std::time::Duration;

/// AWS refusing the caller's permissions, said the same way by every binary (defined in the store, the lowest crate
/// that talks to AWS).
pub use store::denied::{iam_action, AccessDenied};

use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// How long one API call may take in total, retries included, before the caller gives up.
#[derive(Debug, Clone, Copy)]
pub struct CallBudget {
    pub connect: Duration,
    pub attempt: Duration,
    pub total: Duration,
    pub max_attempts: u32,
}

impl CallBudget {
    /// For request paths: a client is waiting, so fail fast (a 503 within a few seconds beats a hang).
    pub const INTERACTIVE: Self = Self {
        connect: Duration::from_secs(1),
        attempt: Duration::from_secs(2),
        total: Duration::from_secs(6),
        max_attempts: 3,
    };

    /// For the worker, where nobody waits on a call: generous per-attempt time (on top of any long-poll wait) so a
    /// slow endpoint is not abandoned mid-request. An abandoned `ReceiveMessage` is the costly case: SQS has already
    /// hidden the messages it was about to return, for a whole visibility timeout. The receive loop has its own
    /// backoff, so two attempts are enough.
    pub const BACKGROUND: Self = Self {
        connect: Duration::from_secs(2),
        attempt: Duration::from_secs(20),
        total: Duration::from_secs(40),
        max_attempts: 2,
    };

    /// For waiting at start-up until an endpoint answers ([`crate::startup`]): one attempt per call, long enough for
    /// an emulator holding a request while a service starts to answer it; the wait's own loop retries.
    pub const STARTUP: Self = Self {
        connect: Duration::from_secs(2),
        attempt: crate::startup::ATTEMPT_TIMEOUT,
        total: crate::startup::ATTEMPT_TIMEOUT,
        max_attempts: 1,
    };
}

/// Loads region, credentials and endpoint from the standard sources (`AWS_ENDPOINT_URL` included) and applies `budget`.
///
/// `extra_attempt_time` widens the per-attempt timeout for long polls (`WaitTimeSeconds`).
pub async fn load(region: &str, budget: CallBudget, extra_attempt_time: Duration) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(budget.connect)
                .operation_attempt_timeout(budget.attempt + extra_attempt_time)
                .operation_timeout(budget.total + extra_attempt_time)
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(budget.max_attempts)
                .with_initial_backoff(Duration::from_millis(100)),
        )
        // Stalled-stream protection polls a throughput timer for the whole life of every request, 20 s long polls
        // included: measurable CPU per message for nothing, since `budget` already bounds every attempt.
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .load()
        .await
}
