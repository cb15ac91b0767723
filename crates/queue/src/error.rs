//! Queue errors, classified by what the caller does next, each keeping the error that caused it.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The error underneath a [`QueueError`] (the NATS client's, a decoder's), shared so that an
/// error that fans out to many callers stays `Clone`.
pub type Cause = Arc<dyn Error + Send + Sync>;

/// Why a queue operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The server could not be reached or did not confirm in time: try again later.
    #[error("queue unavailable: {what}")]
    Unavailable {
        /// What was being done.
        what: String,
        /// The error underneath, if any.
        #[source]
        cause: Option<Cause>,
    },
    /// The queue is full (embedded mode): try again when capacity frees up.
    #[error("queue full: {0}")]
    Full(String),
    /// A message could not be decoded, or the server refuses it for good: never retry it.
    #[error("malformed message: {what}")]
    Malformed {
        /// What was refused, and why.
        what: String,
        /// The error underneath, if any.
        #[source]
        cause: Option<Cause>,
    },
    /// The queue was closed (shutdown).
    #[error("queue closed")]
    Closed,
    /// Setting up streams or consumers failed.
    #[error("queue setup failed: {what}")]
    Setup {
        /// What was being set up.
        what: String,
        /// The error underneath, if any.
        #[source]
        cause: Option<Cause>,
    },
}

impl QueueError {
    /// Unavailable, with no error underneath.
    pub fn unavailable(what: impl Into<String>) -> Self {
        Self::Unavailable {
            what: what.into(),
            cause: None,
        }
    }

    /// Malformed, with no error underneath.
    pub fn malformed(what: impl Into<String>) -> Self {
        Self::Malformed {
            what: what.into(),
            cause: None,
        }
    }

    /// A setup failure, with no error underneath.
    pub fn setup(what: impl Into<String>) -> Self {
        Self::Setup {
            what: what.into(),
            cause: None,
        }
    }

    /// The same error, caused by `cause`.
    #[must_use]
    pub fn caused_by(mut self, cause: impl Error + Send + Sync + 'static) -> Self {
        if let Self::Unavailable { cause: c, .. }
        | Self::Malformed { cause: c, .. }
        | Self::Setup { cause: c, .. } = &mut self
        {
            *c = Some(Arc::new(cause));
        }
        self
    }

    /// The same error, caused by a boxed `cause` (as some clients return them).
    #[must_use]
    pub fn caused_by_boxed(mut self, cause: Box<dyn Error + Send + Sync>) -> Self {
        if let Self::Unavailable { cause: c, .. }
        | Self::Malformed { cause: c, .. }
        | Self::Setup { cause: c, .. } = &mut self
        {
            *c = Some(Arc::from(cause));
        }
        self
    }

    /// Whether trying the same thing later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Full(_))
    }

    /// The error and every cause under it, `: `-separated (for logs and status messages).
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

/// Displays an error with its causes; see [`QueueError::chain`].
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_and_shown_in_the_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = QueueError::unavailable("publish job \"j\"").caused_by(io);
        assert_eq!(e.to_string(), "queue unavailable: publish job \"j\"");
        assert_eq!(
            e.chain().to_string(),
            "queue unavailable: publish job \"j\": reset by peer"
        );
        let source = e.source().expect("a source");
        assert_eq!(source.to_string(), "reset by peer");
        assert!(e.is_retryable());
        assert!(!QueueError::malformed("x").is_retryable());
    }
}
