//! What a model counts about its work, written by the batcher and the replicas and read by the
//! benchmark and metrics. Its own module so that the batcher and the engine both depend on it
//! and not on each other (the engine takes batches from the batcher, never the reverse).

use std::sync::atomic::AtomicU64;

/// Counters a model keeps about its forward passes (read by the benchmark and metrics).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Batches run.
    pub batches: AtomicU64,
    /// Sequences run.
    pub sequences: AtomicU64,
    /// Real tokens run.
    pub tokens: AtomicU64,
    /// Padded tokens run (batch × width).
    pub padded_tokens: AtomicU64,
    /// Sequences skipped because their requester had gone.
    pub skipped: AtomicU64,
    /// Nanoseconds spent in forward passes.
    pub forward_nanos: AtomicU64,
}
