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
    /// The queue failed: unreachable or closed (the client should resume the session), or
    /// refusing what it was given for good (a job over the server's max_payload, missing
    /// streams: resuming cannot help).
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// The client's request stream could not be read; names what could not be read.
    #[error("cannot read the request: {0}")]
    Unreadable(String),
    /// A configured bound is reached (`limit` is its key); retry later, the status carries a
    /// `retry-after` hint in seconds.
    #[error("{message}; limit {limit} reached, retry later")]
    ResourceExhausted {
        /// The key of the bound, e.g. `gateway.max_sessions`.
        limit: String,
        /// What was refused.
        message: String,
        /// Seconds to wait before trying again (the `retry-after` metadata).
        retry_after_secs: u64,
    },
    /// No valid credentials (tenants are configured).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The tenant may not use this profile.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The session sent nothing and was owed nothing for `gateway.session_idle_timeout`.
    #[error(
        "the session was idle for {} (limit gateway.session_idle_timeout); reopen it with the same session_id to resume",
        humantime::format_duration(*.0)
    )]
    Idle(std::time::Duration),
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

impl GatewayError {
    /// The same error, naming `field` when it is about the caller's input.
    pub(crate) fn in_field(self, field: &str) -> Self {
        match self {
            Self::InvalidArgument { message, .. } => Self::InvalidArgument {
                field: field.into(),
                message,
            },
            other => other,
        }
    }
}

impl From<GatewayError> for tonic::Status {
    fn from(e: GatewayError) -> Self {
        // The message carries the causes too: the client sees why, not just what.
        let message = match &e {
            GatewayError::Queue(q) => format!("queue: {}", q.chain()),
            other => other.to_string(),
        };
        match &e {
            GatewayError::InvalidArgument { .. } | GatewayError::Unreadable(_) => {
                tonic::Status::invalid_argument(message)
            }
            GatewayError::Queue(q) if q.is_retryable() || matches!(q, QueueError::Closed) => {
                tonic::Status::unavailable(message)
            }
            GatewayError::Queue(QueueError::Malformed { .. }) => {
                tonic::Status::failed_precondition(message)
            }
            GatewayError::Queue(_) => tonic::Status::internal(message),
            GatewayError::ShuttingDown => tonic::Status::unavailable(message),
            GatewayError::Idle(_) => tonic::Status::deadline_exceeded(message),
            GatewayError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            GatewayError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            GatewayError::ResourceExhausted {
                retry_after_secs, ..
            } => {
                let mut status = tonic::Status::resource_exhausted(message);
                status.metadata_mut().insert(
                    RETRY_AFTER,
                    tonic::metadata::MetadataValue::from(*retry_after_secs),
                );
                status
            }
        }
    }
}

/// The metadata key of the hint on a `RESOURCE_EXHAUSTED` status: seconds to wait.
pub const RETRY_AFTER: &str = "retry-after";

/// What could not be read, when tonic's `status` is its failure to decode a request message,
/// which is the caller's fault: bytes that are not the message (`INTERNAL`, "failed to decode
/// Protobuf message"), a stream that ends inside a message (`INTERNAL`, "Unexpected EOF"), a
/// unary call without a message, and a message over `gateway.max_message_bytes` (`OUT_OF_RANGE`,
/// or `RESOURCE_EXHAUSTED` once decompressed); the gateway answers each as
/// [`GatewayError::Unreadable`], `INVALID_ARGUMENT`. `None` for any other status: the stream
/// broke (a reset, a closed connection), the client is gone.
pub(crate) fn undecodable(status: &tonic::Status) -> Option<String> {
    let message = status.message();
    match status.code() {
        tonic::Code::OutOfRange => Some(format!("{message} (limit gateway.max_message_bytes)")),
        tonic::Code::ResourceExhausted
            if message.starts_with("Error decompressing: size limit") =>
        {
            Some(format!("{message} (limit gateway.max_message_bytes)"))
        }
        tonic::Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            Some(message.to_owned())
        }
        tonic::Code::Internal if message.starts_with("Unexpected EOF decoding stream") => Some(
            "truncated message: the stream ended before the bytes its length prefix announced"
                .into(),
        ),
        tonic::Code::Internal if message.starts_with("Missing request message") => {
            Some("no request message before the end of the stream".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_maps_to_what_the_client_should_do() {
        let code = |e: GatewayError| tonic::Status::from(e).code();
        assert_eq!(
            code(GatewayError::InvalidArgument {
                field: "f".into(),
                message: "m".into()
            }),
            Code::InvalidArgument
        );
        assert_eq!(
            code(GatewayError::Unreadable("x".into())),
            Code::InvalidArgument
        );
        // Resume: the queue is away or the gateway drains.
        assert_eq!(
            code(GatewayError::Queue(QueueError::unavailable("x"))),
            Code::Unavailable
        );
        assert_eq!(
            code(GatewayError::Queue(QueueError::Closed)),
            Code::Unavailable
        );
        assert_eq!(code(GatewayError::ShuttingDown), Code::Unavailable);
        // Retry later, after the hint; the message names the limit.
        let refused = tonic::Status::from(GatewayError::ResourceExhausted {
            limit: "gateway.max_sessions".into(),
            message: "2 sessions are open".into(),
            retry_after_secs: 1,
        });
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("gateway.max_sessions"));
        assert_eq!(
            refused
                .metadata()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        assert_eq!(
            code(GatewayError::Idle(std::time::Duration::from_secs(5))),
            Code::DeadlineExceeded
        );
        // Resuming cannot help: a job the server refuses for good.
        assert_eq!(
            code(GatewayError::Queue(QueueError::malformed(
                "larger than max_payload"
            ))),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(GatewayError::Queue(QueueError::setup("no stream"))),
            Code::Internal
        );
    }

    #[test]
    fn tonic_decode_failures_are_the_callers_and_other_statuses_are_not() {
        let why = |s: tonic::Status| undecodable(&s);
        let truncated = why(tonic::Status::internal("Unexpected EOF decoding stream.")).unwrap();
        assert!(truncated.starts_with("truncated message"), "{truncated}");
        let large = why(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 104857600 bytes, the limit is: 65536 bytes",
        ))
        .unwrap();
        assert!(
            large.ends_with("(limit gateway.max_message_bytes)"),
            "{large}"
        );
        assert!(
            why(tonic::Status::internal(
                "failed to decode Protobuf message: invalid wire type"
            ))
            .is_some()
        );
        assert!(why(tonic::Status::internal("Missing request message.")).is_some());
        // The gateway's own refusals and a broken stream are not decode failures.
        for other in [
            tonic::Status::resource_exhausted("limit gateway.max_sessions reached"),
            tonic::Status::internal("h2 protocol error"),
            tonic::Status::cancelled("reset"),
            tonic::Status::unknown("connection closed"),
        ] {
            assert_eq!(why(other.clone()), None, "{other:?}");
        }
    }
}
