//! `max_chars` and `max_tokens`: the response's length stays within bounds, with a penalty shape.
//!
//! `{ rule = "max_chars", limit = 8000, gate = true }`
//!
//! | parameter | type | default | meaning |
//! |---|---|---|---|
//! | `limit` | integer ≥ 1 | required | the most characters (`max_chars`) or approximate tokens (`max_tokens`) allowed |
//! | `min` | integer ≥ 0 | `0` | the fewest allowed (must not exceed `limit`) |
//! | `penalty` | `"hard"` \| `"linear"` | `"hard"` | `hard`: 0.0 outside the bounds; `linear`: the value falls from 1.0 at the bound to 0.0 at `tolerance` beyond it |
//! | `tolerance` | integer ≥ 1 | required with `linear` | how far past a bound the linear penalty reaches 0.0 |
//!
//! Within bounds the value is 1.0. With `penalty = "linear"` and `limit = 100, tolerance = 50`,
//! 125 units score 0.5 and 150 or more score 0.0 (the same shape applies below `min`).
//! Outside the bounds the score carries the flag `too_long` or `too_short`.
//!
//! Characters are Unicode scalar values, not bytes. Tokens are approximated without a tokenizer
//! (see [`approximate_tokens`]): for exact counts use a reward model's tokenizer.

use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, ConfigProblem, Score};

use crate::Rule;
use crate::rule_params;

/// The kind that counts characters.
pub const MAX_CHARS: &str = "max_chars";
/// The kind that counts approximate tokens.
pub const MAX_TOKENS: &str = "max_tokens";

const ALLOWED: &[&str] = &["limit", "min", "penalty", "tolerance"];

/// Longest run of letters or digits counted as one token; longer runs count one token per
/// started run of this many characters (BPE vocabularies split long words and numbers).
const CHARS_PER_WORD_PIECE: usize = 6;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Unicode scalar values.
    Chars,
    /// Approximate tokens (see [`approximate_tokens`]).
    Tokens,
}

/// How the value falls outside the bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Penalty {
    /// 0.0 as soon as a bound is crossed.
    Hard,
    /// Falls linearly from 1.0 at the bound to 0.0 at `tolerance` units beyond it.
    Linear {
        /// Units past the bound where the value reaches 0.0 (> 0).
        tolerance: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PenaltyKind {
    Hard,
    Linear,
}

/// Bounds on the length of the response.
#[derive(Debug, Clone)]
pub struct LengthLimit {
    measure: Measure,
    min: u64,
    limit: u64,
    penalty: Penalty,
}

impl LengthLimit {
    /// Reads the parameters (see the module docs) of a `max_chars` ([`Measure::Chars`]) or
    /// `max_tokens` ([`Measure::Tokens`]) rule.
    ///
    /// # Errors
    /// Unknown or ill-typed parameters, a missing `limit`, `min` above `limit`, a `tolerance`
    /// missing for (or given without) `penalty = "linear"`.
    pub fn from_params(measure: Measure, table: &toml::Table) -> Result<Self, Vec<ConfigProblem>> {
        let kind = match measure {
            Measure::Chars => MAX_CHARS,
            Measure::Tokens => MAX_TOKENS,
        };
        let mut p = rule_params(kind, table, ALLOWED);
        let limit = p.require_count("limit", "the most units allowed (an integer ≥ 1)");
        if limit == Some(0) {
            p.problem("limit", "0 is not allowed; use an integer ≥ 1");
        }
        let min = p.get_count("min").unwrap_or(0);
        if let Some(limit) = limit
            && min > limit
        {
            p.problem("min", format!("{min} is above limit = {limit}"));
        }
        let shape = p
            .get_choice(
                "penalty",
                &[("hard", PenaltyKind::Hard), ("linear", PenaltyKind::Linear)],
            )
            .unwrap_or(PenaltyKind::Hard);
        let tolerance = p.get_count("tolerance");
        let penalty = match (shape, tolerance) {
            (PenaltyKind::Hard, None) => Penalty::Hard,
            (PenaltyKind::Hard, Some(_)) => {
                p.problem("tolerance", "only used with penalty = \"linear\"");
                Penalty::Hard
            }
            (PenaltyKind::Linear, Some(t)) if t > 0 => Penalty::Linear {
                #[allow(clippy::cast_precision_loss)] // config-sized integers
                tolerance: t as f64,
            },
            (PenaltyKind::Linear, Some(_)) => {
                p.problem("tolerance", "0 is not allowed; use an integer ≥ 1");
                Penalty::Hard
            }
            (PenaltyKind::Linear, None) => {
                if !p.has("tolerance") {
                    p.problem(
                        "tolerance",
                        "penalty = \"linear\" needs `tolerance`: how far past a bound the value reaches 0 (an integer ≥ 1)",
                    );
                }
                Penalty::Hard
            }
        };
        p.finish()?;
        Ok(Self {
            measure,
            min,
            limit: limit.unwrap_or(u64::MAX),
            penalty,
        })
    }

    fn length(&self, text: &str) -> u64 {
        let n = match self.measure {
            Measure::Chars => text.chars().count(),
            Measure::Tokens => approximate_tokens(text),
        };
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

impl Rule for LengthLimit {
    fn check(&self, candidate: &Candidate) -> Outcome {
        let length = self.length(&candidate.response);
        let (excess, flag) = if length > self.limit {
            (length - self.limit, "too_long")
        } else if length < self.min {
            (self.min - length, "too_short")
        } else {
            return Ok(Score::new(1.0));
        };
        let value = match self.penalty {
            Penalty::Hard => 0.0,
            #[allow(clippy::cast_precision_loss)] // lengths far below 2^52
            Penalty::Linear { tolerance } => (1.0 - excess as f64 / tolerance).max(0.0),
        };
        Ok(Score::new(value).with_flag(flag))
    }
}

/// An approximate token count, close to what BPE tokenizers of current LLMs give for prose and
/// code (within about a third for English), computed without a vocabulary:
///
/// - whitespace is free;
/// - a run of letters and digits from alphabetic scripts counts one token per started
///   6 characters (`"the"` → 1, `"internationalization"` → 4);
/// - every other character counts one: punctuation, symbols, emoji, and characters of scripts
///   written without spaces (CJK, Thai …; anything outside the first 2,048 code points).
pub fn approximate_tokens(text: &str) -> usize {
    let mut tokens = 0;
    let mut run: usize = 0;
    for c in text.chars() {
        if c.is_alphanumeric() && c.len_utf8() <= 2 {
            run += 1;
            continue;
        }
        tokens += run.div_ceil(CHARS_PER_WORD_PIECE);
        run = 0;
        if !c.is_whitespace() {
            tokens += 1;
        }
    }
    tokens + run.div_ceil(CHARS_PER_WORD_PIECE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{candidate, params};

    fn rule(measure: Measure, text: &str) -> LengthLimit {
        LengthLimit::from_params(measure, &params(text)).expect("builds")
    }

    fn score(rule: &LengthLimit, response: &str) -> Score {
        rule.check(&candidate(response, None)).expect("scored")
    }

    #[test]
    fn hard_limit_counts_chars_not_bytes() {
        let r = rule(Measure::Chars, "limit = 3");
        assert_eq!(score(&r, "héé").value, 1.0);
        assert_eq!(score(&r, "日本語").value, 1.0);
        assert_eq!(score(&r, "abcd").value, 0.0);
        assert_eq!(score(&r, "abcd").flags, ["too_long"]);
        assert_eq!(score(&r, "").value, 1.0);
    }

    #[test]
    fn linear_penalty_shape() {
        let r = rule(
            Measure::Chars,
            "limit = 10\npenalty = \"linear\"\ntolerance = 4",
        );
        assert_eq!(score(&r, &"x".repeat(10)).value, 1.0);
        assert_eq!(score(&r, &"x".repeat(11)).value, 0.75);
        assert_eq!(score(&r, &"x".repeat(12)).value, 0.5);
        assert_eq!(score(&r, &"x".repeat(14)).value, 0.0);
        assert_eq!(score(&r, &"x".repeat(1000)).value, 0.0);
    }

    #[test]
    fn min_bound_with_both_shapes() {
        let hard = rule(Measure::Chars, "limit = 10\nmin = 2");
        assert_eq!(score(&hard, "a").value, 0.0);
        assert_eq!(score(&hard, "a").flags, ["too_short"]);
        assert_eq!(score(&hard, "ab").value, 1.0);
        let linear = rule(
            Measure::Chars,
            "limit = 10\nmin = 4\npenalty = \"linear\"\ntolerance = 4",
        );
        assert_eq!(score(&linear, "ab").value, 0.5);
        assert_eq!(score(&linear, "").value, 0.0);
    }

    #[test]
    fn huge_response_is_fine() {
        let r = rule(Measure::Tokens, "limit = 5");
        let huge = "word ".repeat(1_000_000);
        assert_eq!(score(&r, &huge).value, 0.0);
    }

    #[test]
    fn token_approximation() {
        assert_eq!(approximate_tokens(""), 0);
        assert_eq!(approximate_tokens("   \n\t"), 0);
        assert_eq!(approximate_tokens("the cat sat"), 3);
        assert_eq!(approximate_tokens("internationalization"), 4);
        assert_eq!(approximate_tokens("Hello, world!"), 4);
        assert_eq!(approximate_tokens("f(x) = 2x"), 6);
        assert_eq!(approximate_tokens("東京タワー"), 5);
        assert_eq!(approximate_tokens("café 🙂"), 2);
    }

    #[test]
    fn max_tokens_uses_the_approximation() {
        let r = rule(Measure::Tokens, "limit = 3");
        assert_eq!(score(&r, "one two three").value, 1.0);
        assert_eq!(score(&r, "one two three.").value, 0.0);
    }

    #[test]
    fn parameter_problems() {
        let cases = [
            ("", "limit"),
            ("limit = 0", "limit"),
            ("limit = -5", "limit"),
            ("limit = \"8000\"", "limit"),
            ("limit = 5\nmin = 6", "min"),
            ("limit = 5\ntolerance = 3", "tolerance"),
            ("limit = 5\npenalty = \"linear\"", "tolerance"),
            (
                "limit = 5\npenalty = \"linear\"\ntolerance = 0",
                "tolerance",
            ),
            ("limit = 5\npenalty = \"exponential\"", "penalty"),
            ("limit = 5\nmax = 3", "max"),
        ];
        for (text, path) in cases {
            let problems = LengthLimit::from_params(Measure::Chars, &params(text)).expect_err(text);
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert_eq!(problems[0].path, path, "{text}");
        }
    }
}
