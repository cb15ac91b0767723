//! What a model counts about its work, written by the batcher and the replicas and read by the
//! benchmark and metrics. Its own module so that the batcher and the engine both depend on it
//! and not on each other (the engine takes batches from the batcher, never the reverse).

use std::sync::atomic::{AtomicU64, AtomicUsize};

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
    /// Tokens of the texts waiting for a batch (not yet handed to a replica); a text not yet
    /// tokenized counts with an estimate from its length ([`estimate_tokens`]) until it is.
    pub waiting_tokens: AtomicUsize,
}

/// Tokens a text is counted as before the batcher has tokenized it: a byte-level BPE makes about
/// one token of four bytes of English; the count is corrected once the text is tokenized.
pub(crate) fn estimate_tokens(text: &str) -> usize {
    text.len() / 4 + 1
}
