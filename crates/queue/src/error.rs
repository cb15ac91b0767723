//! Queue errors, classified by what the caller does next.

/// Why a queue operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The server could not be reached or did not confirm in time: try again later.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The queue is full (embedded mode): try again when capacity frees up.
    #[error("queue full: {0}")]
    Full(String),
    /// A message could not be decoded: never retry it.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The queue was closed (shutdown).
    #[error("queue closed")]
    Closed,
    /// Setting up streams or consumers failed.
    #[error("queue setup failed: {0}")]
    Setup(String),
}

impl QueueError {
    /// Whether trying the same thing later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Full(_))
    }
}
