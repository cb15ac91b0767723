//! The fleet's instruments, shared by every crate that records something: the metric names,
//! units and buckets ([`metrics`]), and the trace context that follows a candidate across hops
//! ([`TraceContext`]).
//!
//! This crate only *records*. Exporting (OTLP, the Prometheus endpoint, log formats) is set up
//! once per process by the binary. Until then, and in processes that never set it up, spans go
//! nowhere and [`metrics()`] is `None`, so instrumented code pays for nothing it does not use.

mod context;
pub mod metrics;

pub use context::{SpanLink, TraceContext, trace_id};
pub use metrics::{Metrics, metrics};

/// Attribute keys from the OpenTelemetry semantic conventions, and the fleet's own.
pub mod keys {
    /// `rpc.system`: `grpc`.
    pub const RPC_SYSTEM: &str = "rpc.system";
    /// `rpc.service`: the full gRPC service name.
    pub const RPC_SERVICE: &str = "rpc.service";
    /// `rpc.method`: the gRPC method.
    pub const RPC_METHOD: &str = "rpc.method";
    /// `messaging.system`: `nats`.
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    /// `messaging.operation.type`: `publish`, `process`.
    pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
    /// `messaging.destination.name`: the subject.
    pub const MESSAGING_DESTINATION: &str = "messaging.destination.name";
    /// `messaging.message.id`: the JetStream dedup id (the job id).
    pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
    /// `messaging.consumer.group.name`: the durable consumer.
    pub const MESSAGING_CONSUMER_GROUP: &str = "messaging.consumer.group.name";
    /// `gen_ai.operation.name`: `chat`.
    pub const GEN_AI_OPERATION: &str = "gen_ai.operation.name";
    /// `gen_ai.request.model`.
    pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
    /// `gen_ai.response.model`.
    pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// `gen_ai.usage.input_tokens`.
    pub const GEN_AI_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    /// `gen_ai.usage.output_tokens`.
    pub const GEN_AI_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// `error.type`: a low-cardinality failure class.
    pub const ERROR_TYPE: &str = "error.type";
    /// The candidate ids of a job (an array attribute on the job span).
    pub const CANDIDATE_IDS: &str = "rewardfleet.candidate_ids";
}
