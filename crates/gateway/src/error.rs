//! Gateway errors and their one mapping onto gRPC status codes.

use rewardfleet_core::InputError;
use rewardfleet_queue::QueueError;

/// Why a session or a batch could not go on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The caller sent something that breaks the contract; the message names the field and limit.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field, e.g. `batch.candidates[3].id`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The queue is unreachable: the client should retry (resume the session).
    #[error("queue unavailable: {0}")]
    Unavailable(#[from] QueueError),
    /// The gateway is shutting down: resume the session on another gateway.
    #[error("the gateway is shutting down; reopen the session with the same session_id to resume")]
    ShuttingDown,
}

impl GatewayError {
    pub(crate) fn input(prefix: &str, e: InputError) -> Self {
        Self::InvalidArgument {
            field: if prefix.is_empty() {
                e.field
            } else {
                format!("{prefix}.{}", e.field)
            },
            message: e.message,
        }
    }
}

impl From<GatewayError> for tonic::Status {
    fn from(e: GatewayError) -> Self {
        match &e {
            GatewayError::InvalidArgument { .. } => tonic::Status::invalid_argument(e.to_string()),
            GatewayError::Unavailable(_) | GatewayError::ShuttingDown => {
                tonic::Status::unavailable(e.to_string())
            }
        }
    }
}
