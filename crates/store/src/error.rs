//! Store failures, typed so callers decide without reading messages.
//!
//! Each DynamoDB error is classified once, from the SDK's typed error and its error code (`crate::dynamo::classify`),
//! into what the caller can do about it: wait ([`StoreError::Unavailable`]), give this request up
//! ([`StoreError::Rejected`]), or tell an operator that this process cannot use the store at all
//! ([`StoreError::Misconfigured`]).

/// Source errors are boxed: the SDK's error types differ per operation.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, timing out, throttled, a 5xx or a transaction conflict: the same request may work later.
    #[error("store {operation} failed{}: {detail}", if *.throttled { " (throttled)" } else { "" })]
    Unavailable {
        operation: &'static str,
        throttled: bool,
        /// The whole error chain as text (the SDK's own `Display` says only "service error").
        detail: String,
        #[source]
        source: BoxError,
    },
    /// DynamoDB refuses this request and would refuse it again (`ValidationException`: an item over 400 KB, a value
    /// it cannot store...): retrying the same write can never succeed.
    #[error("store {operation} rejected the request ({code}): {detail}")]
    Rejected {
        operation: &'static str,
        /// The AWS error code (`ValidationException`, ...).
        code: String,
        detail: String,
        #[source]
        source: Option<BoxError>,
    },
    /// This process cannot use the store at all (`ResourceNotFoundException`: table or index missing;
    /// `AccessDeniedException`; unusable credentials). Every request will fail alike until an operator fixes the
    /// deployment, so it is nobody's message's fault.
    #[error("store {operation} cannot work as deployed ({code}): {detail}")]
    Misconfigured {
        operation: &'static str,
        code: String,
        detail: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A stored item this version cannot read (written by hand, or by another version). Never a panic.
    #[error("stored item {key} cannot be decoded: {reason}")]
    Corrupt { key: String, reason: String },
    /// A pagination cursor that this store did not hand out.
    #[error("invalid cursor")]
    BadCursor,
}

impl StoreError {
    /// An outage with no SDK error behind it (a stopped task, a simulated outage).
    pub fn unavailable(operation: &'static str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self::Unavailable { operation, throttled: false, source: detail.clone().into(), detail }
    }

    /// The label used in metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { throttled: true, .. } => "throttled",
            Self::Unavailable { .. } => "error",
            Self::Rejected { .. } => "rejected",
            Self::Misconfigured { .. } => "misconfigured",
            Self::Corrupt { .. } => "corrupt",
            Self::BadCursor => "bad_cursor",
        }
    }

    /// The AWS error code, for `Rejected` and `Misconfigured`.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Rejected { code, .. } | Self::Misconfigured { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The same failure for each of the callers one call failed for (the source error cannot be cloned: it stays
    /// with this one, the copies carry its text).
    pub fn for_another_caller(&self) -> Self {
        let detail = self.to_string();
        match self {
            Self::Unavailable { operation, throttled, .. } => {
                Self::Unavailable { operation, throttled: *throttled, source: detail.clone().into(), detail }
            }
            Self::Rejected { operation, code, detail, .. } => {
                Self::Rejected { operation, code: code.clone(), detail: detail.clone(), source: None }
            }
            Self::Misconfigured { operation, code, detail, .. } => {
                Self::Misconfigured { operation, code: code.clone(), detail: detail.clone(), source: None }
            }
            Self::Corrupt { key, reason } => Self::Corrupt { key: key.clone(), reason: reason.clone() },
            Self::BadCursor => Self::BadCursor,
        }
    }
}
