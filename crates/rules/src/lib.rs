//! Rule-based verifiers: deterministic scorers that check a response against its reference or a fixed rule.
//!
//! A profile names a rule with `{ rule = "<kind>", ...params }`; [`build`] checks the parameters
//! strictly and returns the [`Scorer`]. Each kind lives in its own module, whose docs list its
//! parameters:
//!
//! | kind | module | value |
//! |---|---|---|
//! | `exact_match` | [`exact`] | pass/fail against `reference` after normalisation |
//! | `regex` | [`pattern`] | pass/fail on a regular expression |
//! | `max_chars`, `max_tokens` | [`length`] | 1 within bounds, shaped penalty outside |
//! | `json_valid` | [`json`] | pass/fail: parses as JSON, optionally matches a schema |
//! | `phrases` | [`phrases`] | pass/fail (or fraction) on required and forbidden phrases |
//! | `math_answer` | [`math`] | pass/fail: the final answer equals `reference` |
//!
//! Rules score each candidate on its own and never panic; a candidate a rule cannot evaluate
//! (say `exact_match` without a `reference`) gets a permanent [`ScoreError`] of its own.

use rewardfleet_core::FailureReason;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rewardfleet_core::config::{ComponentConfig, Params};
use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, ConfigProblem, ScoreContext, ScoreError, Scorer};

pub mod exact;
pub mod json;
pub mod length;
pub mod math;
pub mod pattern;
pub mod phrases;
mod text;

/// The rule kinds this crate knows, as written after `rule =`.
pub const KINDS: &[&str] = &[
    exact::KIND,
    pattern::KIND,
    length::MAX_CHARS,
    length::MAX_TOKENS,
    json::KIND,
    phrases::KIND,
    math::KIND,
];

/// A check of one candidate on its own, computed synchronously.
pub trait Rule: std::fmt::Debug + Send + Sync + 'static {
    /// The value of `candidate` under this rule: 1.0 or 0.0 for a pass or a fail, a value in
    /// (0, 1) for a shaped penalty.
    ///
    /// # Errors
    /// A permanent [`ScoreError`] when this candidate cannot be evaluated (a missing reference).
    fn check(&self, candidate: &Candidate) -> Outcome;
}

/// Builds the scorer of one rule component.
///
/// `component.rule` names the kind (one of [`KINDS`]) and `component.params` holds the rule's own
/// parameters; relative file paths among them (a JSON schema file) are resolved against `base_dir`.
///
/// # Errors
/// Every problem found, with key paths relative to the component (`"limit"`, `"pattern"`,
/// `"rule"`): an unknown kind, an unknown parameter, a missing or ill-typed one, an invalid
/// regular expression or schema.
pub fn build(
    component: &ComponentConfig,
    base_dir: &Path,
) -> Result<Arc<dyn Scorer>, Vec<ConfigProblem>> {
    let Some(kind) = component.rule.as_deref() else {
        return Err(vec![ConfigProblem::new(
            "rule",
            format!(
                "this component names no rule; use one of {}",
                KINDS.join(", ")
            ),
        )]);
    };
    let params = &component.params;
    match kind {
        exact::KIND => exact::ExactMatch::from_params(params).map(scorer),
        pattern::KIND => pattern::RegexMatch::from_params(params).map(scorer),
        length::MAX_CHARS => {
            length::LengthLimit::from_params(length::Measure::Chars, params).map(scorer)
        }
        length::MAX_TOKENS => {
            length::LengthLimit::from_params(length::Measure::Tokens, params).map(scorer)
        }
        json::KIND => json::JsonValid::from_params(params, base_dir).map(scorer),
        phrases::KIND => phrases::Phrases::from_params(params).map(scorer),
        math::KIND => math::MathAnswer::from_params(params).map(scorer),
        other => Err(vec![ConfigProblem::new(
            "rule",
            format!("unknown rule {other:?}; known: {}", KINDS.join(", ")),
        )]),
    }
}

/// The reader of a rule's parameters: every key not in `allowed` is a problem at once, and
/// messages name the rule (`rule max_chars needs `limit`: …`).
pub(crate) fn rule_params<'a>(kind: &str, table: &'a toml::Table, allowed: &[&str]) -> Params<'a> {
    let mut params = Params::new(format!("rule {kind}"), table);
    params.reject_unknown(allowed);
    params
}

fn scorer<R: Rule>(rule: R) -> Arc<dyn Scorer> {
    Arc::new(RuleScorer(rule))
}

/// A [`Rule`] as a [`Scorer`]: every candidate of the group is checked on its own.
#[derive(Debug)]
struct RuleScorer<R>(R);

#[async_trait]
impl<R: Rule> Scorer for RuleScorer<R> {
    async fn score(&self, _ctx: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
        group
            .iter()
            .map(|candidate| self.0.check(candidate))
            .collect()
    }
}

/// The candidate's reference, or the error that says the rule needs one.
pub(crate) fn reference<'a>(kind: &str, candidate: &'a Candidate) -> Result<&'a str, ScoreError> {
    candidate.reference.as_deref().ok_or_else(|| {
        ScoreError::permanent(FailureReason::MissingReference,
            format!(
                "rule {kind} compares the response with the candidate's `reference`, and candidate {:?} has none",
                candidate.id
            ),
        )
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers for the rules' unit tests.

    use rewardfleet_core::Candidate;

    /// A candidate with this response and reference.
    pub(crate) fn candidate(response: &str, reference: Option<&str>) -> Candidate {
        Candidate {
            id: "c1".into(),
            response: response.into(),
            reference: reference.map(Into::into),
            ..Default::default()
        }
    }

    /// A parameter table from TOML text.
    pub(crate) fn params(text: &str) -> toml::Table {
        text.parse().expect("valid toml")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::candidate;

    fn component(text: &str) -> ComponentConfig {
        toml::from_str(text).expect("valid component")
    }

    #[tokio::test]
    async fn builds_every_kind_and_scores_a_group_per_candidate() {
        let cases = [
            ("rule = \"exact_match\"", "Paris", Some("paris"), 1.0),
            ("rule = \"regex\"\npattern = \"^a+$\"", "aaa", None, 1.0),
            ("rule = \"max_chars\"\nlimit = 3", "abcd", None, 0.0),
            ("rule = \"max_tokens\"\nlimit = 3", "one two", None, 1.0),
            ("rule = \"json_valid\"", "{\"a\": 1}", None, 1.0),
            (
                "rule = \"phrases\"\nforbidden = [\"sorry\"]",
                "Sorry!",
                None,
                0.0,
            ),
            ("rule = \"math_answer\"", "so \\boxed{4}", Some("4"), 1.0),
        ];
        assert_eq!(cases.len(), KINDS.len());
        for (text, response, reference, expected) in cases {
            let scorer = build(&component(text), Path::new(".")).expect(text);
            let group = [candidate(response, reference), candidate("", None)];
            let outcomes = scorer.score(&ScoreContext::default(), &group).await;
            assert_eq!(outcomes.len(), 2, "{text}");
            let value = outcomes[0].as_ref().expect(text).value;
            assert_eq!(value, expected, "{text}");
        }
    }

    #[tokio::test]
    async fn a_candidate_without_reference_fails_alone() {
        let scorer = build(&component("rule = \"exact_match\""), Path::new(".")).expect("builds");
        let group = [candidate("a", None), candidate("a", Some("A"))];
        let outcomes = scorer.score(&ScoreContext::default(), &group).await;
        let error = outcomes[0].as_ref().expect_err("no reference");
        assert_eq!(error.reason.as_str(), "missing_reference");
        assert!(!error.retryable);
        assert_eq!(outcomes[1].as_ref().expect("scored").value, 1.0);
    }

    #[test]
    fn unknown_kind_lists_the_known_ones() {
        let problems = build(&component("rule = \"max_char\""), Path::new("."))
            .err()
            .expect("unknown kind");
        assert_eq!(problems[0].path, "rule");
        assert!(problems[0].message.contains("\"max_char\""));
        assert!(problems[0].message.contains("max_chars, max_tokens"));
    }

    #[test]
    fn a_component_without_rule_is_a_problem() {
        let problems = build(&component("scorer = \"rm\""), Path::new("."))
            .err()
            .expect("no rule");
        assert_eq!(problems[0].path, "rule");
    }

    #[test]
    fn component_level_keys_are_not_rule_params() {
        let text = "rule = \"max_chars\"\nlimit = 10\ngate = true\nweight = 0.5\nname = \"len\"";
        assert!(build(&component(text), Path::new(".")).is_ok());
    }
}
