//! What can go wrong in a command, and the exit code each kind maps to.

use std::process::ExitCode;

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use platform::config::ConfigError;

/// The exit codes, documented in `--help` and `docs/operations.md`; scripts depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done, including "nothing to do".
    Success = 0,
    /// An AWS call failed, or the queues are not in a state the command can work with.
    Failure = 1,
    /// The command line or the environment is wrong; nothing was changed.
    Usage = 2,
    /// Some messages could not be moved or deleted (they are still in the DLQ), or the run was interrupted.
    Partial = 3,
    /// The walk over the DLQ stopped while SQS still counted visible messages it had not received: they were not
    /// listed, moved or deleted. Running the command again picks them up.
    Incomplete = 4,
}

impl Exit {
    /// The exit of a run that reached its end: `partial` (failures, an interruption) outranks `incomplete`, because
    /// failed messages need a look, and a second run retries them as well as the unreached ones.
    pub fn of(partial: bool, incomplete: bool) -> Self {
        match (partial, incomplete) {
            (true, _) => Self::Partial,
            (false, true) => Self::Incomplete,
            (false, false) => Self::Success,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Why a command stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The environment (`AWS_REGION`, `AWS_ENDPOINT_URL`) is invalid.
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    /// A command line the tool refuses after parsing (e.g. an unfiltered purge without `--yes`).
    #[error("{0}")]
    Usage(String),
    /// An SQS call failed (unreachable, denied, throttled past the retries, or refused).
    #[error("SQS {operation} failed: {detail}")]
    Aws {
        operation: &'static str,
        detail: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// AWS refused the operator's identity this call: the policy lacks the action (docs/deploy.md, "Identities").
    #[error("{0}")]
    Denied(platform::aws::AccessDenied),
    /// The queues answered, but not as the command needs: no such queue, no DLQ, no such message, a failed move task.
    #[error("{0}")]
    State(String),
}

impl AdminError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Config(_) | Self::Usage(_) => Exit::Usage,
            Self::Aws { .. } | Self::Denied(_) | Self::State(_) => Exit::Failure,
        }
    }
}

/// Maps an SDK failure of `operation` on `queue` to [`AdminError::Denied`] when AWS refused the permission, else to
/// [`AdminError::Aws`], keeping the source.
pub fn aws<E>(operation: &'static str, queue: &str) -> impl FnOnce(SdkError<E, HttpResponse>) -> AdminError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let queue = queue.to_owned();
    move |e| {
        let action = platform::aws::iam_action("sqs", operation);
        match platform::aws::AccessDenied::from_sdk(&e, &action, &format!("queue {queue}")) {
            Some(denied) => AdminError::Denied(denied),
            None => {
                AdminError::Aws { operation, detail: DisplayErrorContext(&e).to_string(), source: Some(Box::new(e)) }
            }
        }
    }
}

/// A request the SDK could not even build (a missing required field): a bug here, reported like a failed call.
pub fn build(operation: &'static str, e: impl std::fmt::Display) -> AdminError {
    AdminError::Aws { operation, detail: e.to_string(), source: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_exit_code() {
        let config = ConfigError::Invalid { var: "AWS_REGION", value: "x".into(), reason: "r".into() };
        assert_eq!(AdminError::from(config).exit() as u8, 2);
        assert_eq!(AdminError::Usage("needs --yes".into()).exit() as u8, 2);
        assert_eq!(build("send", "missing body").exit() as u8, 1);
        assert_eq!(AdminError::State("no DLQ".into()).exit() as u8, 1);
        assert_eq!(Exit::Partial as u8, 3);
        assert_eq!(Exit::Incomplete as u8, 4);
        assert_eq!(Exit::Success as u8, 0);
    }

    #[test]
    fn a_run_that_stopped_early_never_exits_0() {
        assert_eq!(Exit::of(false, false), Exit::Success);
        assert_eq!(Exit::of(false, true), Exit::Incomplete);
        assert_eq!(Exit::of(true, false), Exit::Partial);
        assert_eq!(Exit::of(true, true), Exit::Partial);
    }
}
