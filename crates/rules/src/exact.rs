//! `exact_match`: the response equals the candidate's `reference` after normalisation.
//!
//! | parameter | type | default | meaning |
//! |---|---|---|---|
//! | `ignore_case` | bool | `true` | full Unicode case folding (`"STRASSE"` = `"straße"`) |
//! | `collapse_whitespace` | bool | `true` | every run of whitespace (tabs, newlines, no-break spaces) counts as one space |
//! | `strip_punctuation` | bool | `false` | removes Unicode punctuation and ASCII symbols before comparing |
//! | `trim` | bool | `true` | ignores leading and trailing whitespace |
//!
//! Both sides are also brought to Unicode NFC, so composed and decomposed accents are equal.
//! Value: 1.0 when equal, else 0.0. A candidate without `reference` fails with reason
//! `missing_reference`.

use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, ConfigProblem, Score};

use crate::Rule;
use crate::rule_params;
use crate::text::Normalization;

/// The kind as written in a profile.
pub const KIND: &str = "exact_match";

const ALLOWED: &[&str] = &[
    "ignore_case",
    "collapse_whitespace",
    "strip_punctuation",
    "trim",
];

/// Compares the response with the reference after normalisation.
#[derive(Debug, Clone)]
pub struct ExactMatch {
    normalization: Normalization,
}

impl ExactMatch {
    /// Reads the rule's parameters (see the module docs).
    ///
    /// # Errors
    /// Unknown or ill-typed parameters.
    pub fn from_params(table: &toml::Table) -> Result<Self, Vec<ConfigProblem>> {
        let mut p = rule_params(KIND, table, ALLOWED);
        let normalization = Normalization {
            ignore_case: p.get_bool("ignore_case").unwrap_or(true),
            collapse_whitespace: p.get_bool("collapse_whitespace").unwrap_or(true),
            strip_punctuation: p.get_bool("strip_punctuation").unwrap_or(false),
            trim: p.get_bool("trim").unwrap_or(true),
        };
        p.finish()?;
        Ok(Self { normalization })
    }
}

impl Rule for ExactMatch {
    fn check(&self, candidate: &Candidate) -> Outcome {
        let reference = crate::reference(KIND, candidate)?;
        let n = &self.normalization;
        Ok(Score::pass_fail(
            n.apply(&candidate.response) == n.apply(reference),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{candidate, params};

    fn value(rule: &ExactMatch, response: &str, reference: &str) -> f64 {
        rule.check(&candidate(response, Some(reference)))
            .expect("scored")
            .value
    }

    #[test]
    fn defaults_ignore_case_and_whitespace_but_not_punctuation() {
        let rule = ExactMatch::from_params(&params("")).expect("builds");
        assert_eq!(value(&rule, "  New\n\tYORK ", "new york"), 1.0);
        assert_eq!(value(&rule, "New York.", "new york"), 0.0);
        assert_eq!(value(&rule, "NewYork", "new york"), 0.0);
    }

    #[test]
    fn unicode_case_folding() {
        let rule = ExactMatch::from_params(&params("")).expect("builds");
        assert_eq!(value(&rule, "GROSSE STRASSE", "große straße"), 1.0);
        assert_eq!(value(&rule, "ΣΟΦΟΣ", "σοφος"), 1.0);
    }

    #[test]
    fn each_switch_can_be_turned() {
        let strict = ExactMatch::from_params(&params(
            "ignore_case = false\ncollapse_whitespace = false\ntrim = false",
        ))
        .expect("builds");
        assert_eq!(value(&strict, "Paris", "paris"), 0.0);
        assert_eq!(value(&strict, "a  b", "a b"), 0.0);
        assert_eq!(value(&strict, "a ", "a"), 0.0);
        assert_eq!(value(&strict, "Paris", "Paris"), 1.0);

        let loose = ExactMatch::from_params(&params("strip_punctuation = true")).expect("builds");
        assert_eq!(value(&loose, "“Paris!”", "paris"), 1.0);
        assert_eq!(value(&loose, "U.S.A.", "usa"), 1.0);
    }

    #[test]
    fn empty_strings() {
        let rule = ExactMatch::from_params(&params("")).expect("builds");
        assert_eq!(value(&rule, "", ""), 1.0);
        assert_eq!(value(&rule, " \n ", ""), 1.0);
        assert_eq!(value(&rule, "", "x"), 0.0);
    }

    #[test]
    fn missing_reference_is_a_permanent_error() {
        let rule = ExactMatch::from_params(&params("")).expect("builds");
        let error = rule.check(&candidate("x", None)).expect_err("no reference");
        assert_eq!(error.reason.as_str(), "missing_reference");
        assert!(!error.retryable);
    }

    #[test]
    fn unknown_and_ill_typed_params() {
        let problems = ExactMatch::from_params(&params("ignore_cases = true\ntrim = 1"))
            .expect_err("bad params");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["ignore_cases", "trim"]);
        assert!(problems[0].message.contains("did you mean `ignore_case`"));
    }
}
