//! The `Scorer` trait: what a rule, a local reward model and a remote judge have in common.

use async_trait::async_trait;

use crate::Candidate;

/// What a scorer knows about the work around the group it scores.
#[derive(Debug, Clone, Default)]
pub struct ScoreContext {
    /// The trainer session the candidates belong to (token budgets are kept per session).
    pub session_id: String,
    /// The job that carries the group.
    pub job_id: String,
    /// The profile being scored.
    pub profile: String,
}

/// One scorer's value for one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// The value; rules give 1.0 for a pass and 0.0 for a fail, judges a value in [0, 1].
    pub value: f64,
    /// Observations that travel to the reward's `flags` (e.g. `judge_injection_suspected`).
    pub flags: Vec<String>,
    /// A fallback produced this value; the reward becomes DEGRADED.
    pub degraded: bool,
}

impl Score {
    /// A plain value with no flags.
    pub fn new(value: f64) -> Self {
        Self {
            value,
            flags: Vec::new(),
            degraded: false,
        }
    }

    /// 1.0 when `pass`, else 0.0.
    pub fn pass_fail(pass: bool) -> Self {
        Self::new(if pass { 1.0 } else { 0.0 })
    }

    /// Adds a flag.
    #[must_use]
    pub fn with_flag(mut self, flag: impl Into<String>) -> Self {
        self.flags.push(flag.into());
        self
    }
}

/// Why a scorer produced no value for a candidate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ScoreError {
    /// A short snake_case code operators can count (`judge_parse_error`, `timeout`, `input_too_long`).
    pub reason: String,
    /// What happened, in words a person can act on.
    pub message: String,
    /// Trying the same candidate again later may succeed (the service was down or overloaded).
    pub retryable: bool,
}

impl ScoreError {
    /// An error that will not go away by retrying (bad input, bad output).
    pub fn permanent(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
            retryable: false,
        }
    }

    /// An error that may go away later (timeouts, overload, an endpoint down).
    pub fn transient(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
            retryable: true,
        }
    }
}

/// The outcome of one scorer for one candidate.
pub type Outcome = Result<Score, ScoreError>;

/// Scores candidates. One instance per profile component (a rule with its parameters, a judge
/// with its method, a handle on a loaded reward model).
#[async_trait]
pub trait Scorer: Send + Sync + 'static {
    /// Scores every candidate of one group (pairwise judges compare within it) and returns one
    /// outcome per candidate, in order. A bad candidate fails alone: its neighbours still get values.
    async fn score(&self, ctx: &ScoreContext, group: &[Candidate]) -> Vec<Outcome>;
}
