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
    /// Ask afresh: judges neither read nor write their verdict cache (canary runs, which
    /// watch a judge's answers change over time; a kept verdict would hide the change).
    pub fresh: bool,
    /// Judge tokens spent on the job so far (judges add what each call used; clones share it).
    pub judge_tokens: std::sync::Arc<std::sync::atomic::AtomicU64>,
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

/// Why a scorer produced no value: a code operators can count. Written in snake_case at the
/// edges (reward errors, flags such as `fallback:<component>:<fallback>:<reason>`, the judge
/// cache), an enum inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// the rule or method needs the candidate's `reference`.
    MissingReference,
    /// the candidate's `reference` cannot be read.
    InvalidReference,
    /// nothing to score after the template.
    EmptyInput,
    /// longer than the model's `max_length` with truncation off.
    InputTooLong,
    /// the tokenizer failed on the text.
    TokenizerError,
    /// the judge endpoint refused the request (4xx).
    JudgeRejected,
    /// the judge did not answer in time.
    JudgeTimeout,
    /// the judge endpoint said 429 past every retry.
    JudgeRateLimited,
    /// the judge's local queue (`queue_capacity`) was full.
    JudgeOverloaded,
    /// the judge endpoint failed (5xx, transport).
    JudgeUnavailable,
    /// the judge's circuit breaker is open.
    JudgeCircuitOpen,
    /// the judge's answer held no readable verdict.
    JudgeParseError,
    /// the judge method produced no value (no comparison, no panel value).
    JudgeError,
    /// the session spent its `session_token_budget`.
    JudgeTokenBudgetSpent,
    /// an injection attempt, with `on_injection = "fail"`.
    JudgeInjectionSuspected,
    /// the model is not loaded in this process.
    ModelNotLoaded,
    /// the model's engine is gone or stopping.
    ModelUnavailable,
    /// the model's admission queue (`queue_capacity`) was full.
    ModelOverloaded,
    /// the forward pass failed.
    ModelError,
    /// the model's output has the wrong shape.
    ModelOutputError,
    /// the model gave NaN or infinity.
    NonFiniteOutput,
    /// an embedding is zero: the cosine is undefined.
    ZeroEmbedding,
    /// a scorer gave NaN or infinity.
    NonFinite,
    /// a scorer returned no value for the candidate.
    ScorerError,
}

impl FailureReason {
    /// Every reason.
    pub const ALL: [Self; 24] = [
        Self::MissingReference,
        Self::InvalidReference,
        Self::EmptyInput,
        Self::InputTooLong,
        Self::TokenizerError,
        Self::JudgeRejected,
        Self::JudgeTimeout,
        Self::JudgeRateLimited,
        Self::JudgeOverloaded,
        Self::JudgeUnavailable,
        Self::JudgeCircuitOpen,
        Self::JudgeParseError,
        Self::JudgeError,
        Self::JudgeTokenBudgetSpent,
        Self::JudgeInjectionSuspected,
        Self::ModelNotLoaded,
        Self::ModelUnavailable,
        Self::ModelOverloaded,
        Self::ModelError,
        Self::ModelOutputError,
        Self::NonFiniteOutput,
        Self::ZeroEmbedding,
        Self::NonFinite,
        Self::ScorerError,
    ];

    /// The snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingReference => "missing_reference",
            Self::InvalidReference => "invalid_reference",
            Self::EmptyInput => "empty_input",
            Self::InputTooLong => "input_too_long",
            Self::TokenizerError => "tokenizer_error",
            Self::JudgeRejected => "judge_rejected",
            Self::JudgeTimeout => "judge_timeout",
            Self::JudgeRateLimited => "judge_rate_limited",
            Self::JudgeOverloaded => "judge_overloaded",
            Self::JudgeUnavailable => "judge_unavailable",
            Self::JudgeCircuitOpen => "judge_circuit_open",
            Self::JudgeParseError => "judge_parse_error",
            Self::JudgeError => "judge_error",
            Self::JudgeTokenBudgetSpent => "judge_token_budget_spent",
            Self::JudgeInjectionSuspected => "judge_injection_suspected",
            Self::ModelNotLoaded => "model_not_loaded",
            Self::ModelUnavailable => "model_unavailable",
            Self::ModelOverloaded => "overloaded",
            Self::ModelError => "model_error",
            Self::ModelOutputError => "model_output_error",
            Self::NonFiniteOutput => "non_finite_output",
            Self::ZeroEmbedding => "zero_embedding",
            Self::NonFinite => "non_finite",
            Self::ScorerError => "scorer_error",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FailureReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown failure reason {s:?}"))
    }
}

/// Why a scorer produced no value for a candidate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ScoreError {
    /// Why, as a code operators can count.
    pub reason: FailureReason,
    /// What happened, in words a person can act on.
    pub message: String,
    /// Trying the same candidate again later may succeed (the service was down or overloaded).
    pub retryable: bool,
}

impl ScoreError {
    /// An error that will not go away by retrying (bad input, bad output).
    pub fn permanent(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            retryable: false,
        }
    }

    /// An error that may go away later (timeouts, overload, an endpoint down).
    pub fn transient(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            reason,
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

    /// Whether more work given now would start soon rather than wait in the scorer's queue: a
    /// model while its batcher holds fewer tokens than `admit_tokens`, a judge while fewer
    /// judgements wait than it may have in flight. Workers take jobs while every scorer of
    /// their profiles has room (see `Pipeline::has_room`), so they hold what keeps each scorer
    /// busy, whatever the jobs' sizes. Scorers without a queue (rules) always have room.
    fn has_room(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_back_from_their_codes() {
        for reason in FailureReason::ALL {
            assert_eq!(reason.as_str().parse::<FailureReason>(), Ok(reason));
        }
        assert!("no_such_reason".parse::<FailureReason>().is_err());
    }
}
