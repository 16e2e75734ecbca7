//! Store failures, typed so callers decide without reading messages.

/// Source errors are boxed: the SDK's error types differ per operation.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, timing out, throttled, refusing (permissions, missing table) or failing: retrying later may work.
    #[error("store {operation} failed{}: {detail}", if *.throttled { " (throttled)" } else { "" })]
    Unavailable {
        operation: &'static str,
        throttled: bool,
        /// The whole error chain as text (the SDK's own `Display` says only "service error").
        detail: String,
        #[source]
        source: BoxError,
    },
    /// A stored item this version cannot read (written by hand, or by another version). Never a panic.
    #[error("stored item {key} cannot be decoded: {reason}")]
    Corrupt { key: String, reason: String },
    /// A pagination cursor that this store did not hand out.
    #[error("invalid cursor")]
    BadCursor,
}

impl StoreError {
    /// The label used in metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { throttled: true, .. } => "throttled",
            Self::Unavailable { .. } => "error",
            Self::Corrupt { .. } => "corrupt",
            Self::BadCursor => "bad_cursor",
        }
    }
}
