//! `phrases`: required phrases appear in the response and forbidden ones do not.
//!
//! | parameter | type | default | meaning |
//! |---|---|---|---|
//! | `required` | list of strings | `[]` | phrases that must all appear |
//! | `forbidden` | list of strings | `[]` | phrases that must not appear |
//! | `ignore_case` | bool | `true` | full Unicode case folding on both sides |
//! | `collapse_whitespace` | bool | `true` | any run of whitespace matches any other (`"step by step"` finds `"step\n by  step"`) |
//! | `whole_words` | bool | `false` | a phrase only counts where it is not part of a longer word (`"cat"` is not in `"concatenate"`) |
//! | `partial` | bool | `false` | value = share of satisfied phrases instead of pass/fail |
//!
//! At least one phrase is needed; phrases are trimmed and must not be empty. Value: 1.0 when
//! every required phrase appears and no forbidden one does, else 0.0 — or, with `partial`,
//! (required found + forbidden absent) / (all phrases). The flags `missing_required_phrase` and
//! `forbidden_phrase` say what failed.

use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, ConfigProblem, Score};

use crate::Rule;
use crate::rule_params;
use crate::text::Normalization;

/// The kind as written in a profile.
pub const KIND: &str = "phrases";

const ALLOWED: &[&str] = &[
    "required",
    "forbidden",
    "ignore_case",
    "collapse_whitespace",
    "whole_words",
    "partial",
];

/// Looks for required and forbidden phrases.
#[derive(Debug, Clone)]
pub struct Phrases {
    /// Normalised, non-empty.
    required: Vec<String>,
    /// Normalised, non-empty.
    forbidden: Vec<String>,
    normalization: Normalization,
    whole_words: bool,
    partial: bool,
}

impl Phrases {
    /// Reads the rule's parameters (see the module docs).
    ///
    /// # Errors
    /// Unknown or ill-typed parameters, no phrase at all, an empty phrase.
    pub fn from_params(table: &toml::Table) -> Result<Self, Vec<ConfigProblem>> {
        let mut p = rule_params(KIND, table, ALLOWED);
        let required = p.get_str_list("required").unwrap_or_default();
        let forbidden = p.get_str_list("forbidden").unwrap_or_default();
        let ignore_case = p.get_bool("ignore_case").unwrap_or(true);
        let collapse_whitespace = p.get_bool("collapse_whitespace").unwrap_or(true);
        let whole_words = p.get_bool("whole_words").unwrap_or(false);
        let partial = p.get_bool("partial").unwrap_or(false);
        let normalization = Normalization {
            ignore_case,
            collapse_whitespace,
            strip_punctuation: false,
            trim: true,
        };
        let mut normalize_all = |key: &str, phrases: Vec<String>| -> Vec<String> {
            let mut out = Vec::with_capacity(phrases.len());
            for (i, phrase) in phrases.iter().enumerate() {
                let normalized = normalization.apply(phrase);
                if normalized.is_empty() {
                    p.problem(
                        &format!("{key}[{i}]"),
                        "an empty phrase matches everything; remove it",
                    );
                } else {
                    out.push(normalized);
                }
            }
            out
        };
        let required = normalize_all("required", required);
        let forbidden = normalize_all("forbidden", forbidden);
        if !p.has("required") && !p.has("forbidden") {
            p.problem(
                "required",
                "rule phrases needs `required` or `forbidden` (lists of strings)",
            );
        } else if table.get("required").is_some_and(is_empty_list)
            && table.get("forbidden").is_none_or(is_empty_list)
        {
            p.problem("required", "both lists are empty; give at least one phrase");
        }
        p.finish()?;
        Ok(Self {
            required,
            forbidden,
            normalization: Normalization {
                trim: false,
                ..normalization
            },
            whole_words,
            partial,
        })
    }

    fn contains(&self, text: &str, phrase: &str) -> bool {
        if !self.whole_words {
            return text.contains(phrase);
        }
        text.match_indices(phrase).any(|(start, found)| {
            let before = text[..start].chars().next_back();
            let after = text[start + found.len()..].chars().next();
            let joins = |edge: Option<char>, inner: Option<char>| {
                matches!((edge, inner), (Some(e), Some(i)) if is_word(e) && is_word(i))
            };
            !joins(before, phrase.chars().next()) && !joins(after, phrase.chars().next_back())
        })
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_empty_list(value: &toml::Value) -> bool {
    value.as_array().is_some_and(Vec::is_empty)
}

impl Rule for Phrases {
    fn check(&self, candidate: &Candidate) -> Outcome {
        let text = self.normalization.apply(&candidate.response);
        let found_required = self
            .required
            .iter()
            .filter(|phrase| self.contains(&text, phrase))
            .count();
        let found_forbidden = self
            .forbidden
            .iter()
            .filter(|phrase| self.contains(&text, phrase))
            .count();
        let satisfied = found_required + (self.forbidden.len() - found_forbidden);
        let total = self.required.len() + self.forbidden.len();
        let mut score = if self.partial {
            #[allow(clippy::cast_precision_loss)] // config-sized counts
            Score::new(satisfied as f64 / total.max(1) as f64)
        } else {
            Score::pass_fail(satisfied == total)
        };
        if found_required < self.required.len() {
            score = score.with_flag("missing_required_phrase");
        }
        if found_forbidden > 0 {
            score = score.with_flag("forbidden_phrase");
        }
        Ok(score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{candidate, params};

    fn rule(text: &str) -> Phrases {
        Phrases::from_params(&params(text)).expect("builds")
    }

    fn score(rule: &Phrases, response: &str) -> Score {
        rule.check(&candidate(response, None)).expect("scored")
    }

    #[test]
    fn required_and_forbidden_pass_fail() {
        let r = rule("required = [\"Final answer\"]\nforbidden = [\"as an AI\"]");
        assert_eq!(score(&r, "final ANSWER: 4").value, 1.0);
        let both = score(&r, "As an AI… final answer: 4");
        assert_eq!(both.value, 0.0);
        assert_eq!(both.flags, ["forbidden_phrase"]);
        let neither = score(&r, "");
        assert_eq!(neither.value, 0.0);
        assert_eq!(neither.flags, ["missing_required_phrase"]);
    }

    #[test]
    fn partial_gives_the_share_satisfied() {
        let r = rule("required = [\"a1\", \"b2\", \"c3\"]\nforbidden = [\"zz\"]\npartial = true");
        assert_eq!(score(&r, "a1 b2 c3").value, 1.0);
        assert_eq!(score(&r, "a1 b2 zz").value, 0.5);
        assert_eq!(score(&r, "zz").value, 0.0);
        assert_eq!(score(&r, "c3").value, 0.5);
    }

    #[test]
    fn case_and_whitespace_options() {
        let loose = rule("required = [\"step by step\"]");
        assert_eq!(score(&loose, "Let's go STEP\n by\tstep.").value, 1.0);
        let strict =
            rule("required = [\"step by step\"]\nignore_case = false\ncollapse_whitespace = false");
        assert_eq!(score(&strict, "Step by step").value, 0.0);
        assert_eq!(score(&strict, "step  by step").value, 0.0);
        assert_eq!(score(&strict, "so: step by step").value, 1.0);
        let folded = rule("forbidden = [\"straße\"]");
        assert_eq!(score(&folded, "STRASSE").value, 0.0);
    }

    #[test]
    fn whole_words() {
        let r = rule("forbidden = [\"cat\"]\nwhole_words = true");
        assert_eq!(score(&r, "concatenate").value, 1.0);
        assert_eq!(score(&r, "cat_food").value, 1.0);
        assert_eq!(score(&r, "the cat.").value, 0.0);
        assert_eq!(score(&r, "cat").value, 0.0);
        assert_eq!(score(&r, "concat and cat").value, 0.0);
        let sub = rule("forbidden = [\"cat\"]");
        assert_eq!(score(&sub, "concatenate").value, 0.0);
        let punct = rule("required = [\"$5\"]\nwhole_words = true");
        assert_eq!(
            score(&punct, "costs a$5").value,
            1.0,
            "edges that are not word characters"
        );
    }

    #[test]
    fn parameter_problems() {
        let cases = [
            ("", "required"),
            ("required = []\nforbidden = []", "required"),
            ("required = [\"  \"]", "required[0]"),
            ("forbidden = [\"ok\", \"\"]", "forbidden[1]"),
            ("required = \"one\"", "required"),
            ("required = [\"x\"]\nmust = [\"y\"]", "must"),
        ];
        for (text, path) in cases {
            let problems = Phrases::from_params(&params(text)).expect_err(text);
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert_eq!(problems[0].path, path, "{text}");
        }
    }
}
