//! `math_answer`: the final answer of the response equals the candidate's `reference`.
//!
//! | parameter | type | default | meaning |
//! |---|---|---|---|
//! | `tolerance` | number ≥ 0 | `1e-6` | relative tolerance, used when either answer is written as a decimal |
//! | `require_boxed` | bool | `false` | only a `\boxed{…}` answer counts (no fallback to inline math or the last number) |
//!
//! **The answer** of a response is the content of its last complete `\boxed{…}` (braces nest;
//! `\fbox{…}` and `\boxed 5` count too). Without one, it is the last inline math (`$…$`,
//! `$$…$$`, `\(…\)`) when no number follows it, else the last number in the text (`-3`,
//! `1,000`, `16{,}842`, `2.5`, `3/4`, `-\frac{3}{4}`, `12%`); when the last number lies inside
//! that inline math (`$2 + 3 = 5$`), both are tried. **The reference** is its own last
//! `\boxed{…}` if it has one, else what follows its last `####` (GSM8K's solutions end
//! `#### 72`), else the whole reference.
//!
//! Both are normalised (`\dfrac`/`\tfrac` → `\frac`, `\frac12` → `\frac{1}{2}`, `$`, `\left`,
//! `\right`, spacing, `\text{…}` wrappers, degree signs, whitespace and trailing periods dropped,
//! `x = 5` → `5`) and then compared:
//!
//! 1. equal normalised text is a match (`x+1`, `\frac{\sqrt{3}}{2}`, `(1,2)`), also once a
//!    trailing unit (`\text{…}`, `\textrm{…}`, `\mbox{…}`) is dropped from either side
//!    (`2\sqrt{2}\text{ dollars}` = `2\sqrt{2}`);
//! 2. otherwise both are read as numbers: integers, decimals (thousands separators, exponents),
//!    fractions (`a/b`, `\frac{a}{b}`, signed), percentages, with units in `\text{…}` ignored.
//!    Integers and fractions compare exactly (`2/4` = `\frac{1}{2}`); when either side is
//!    written as a decimal, `|a − b| ≤ tolerance · max(|a|, |b|)` (`0.5` = `\frac{1}{2}`).
//!    A percentage also matches its share when only one side has `%` (`50%` = `0.5`).
//!
//! Value: 1.0 on a match, else 0.0. A response without any answer scores 0.0 with the flag
//! `no_answer`. A candidate without `reference` fails with reason `missing_reference`; one whose
//! reference holds no answer (empty, or an empty `\boxed{}`) fails with `invalid_reference`.

mod extract;
mod latex;
mod number;

use rewardfleet_core::FailureReason;
use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, ConfigProblem, Score, ScoreError};

use crate::Rule;
use crate::rule_params;
use latex::TextGroups;

/// The kind as written in a profile.
pub const KIND: &str = "math_answer";

/// The relative tolerance when none is configured.
pub const DEFAULT_TOLERANCE: f64 = 1e-6;

const ALLOWED: &[&str] = &["tolerance", "require_boxed"];

/// Compares the final answer of a math response with the reference.
#[derive(Debug, Clone)]
pub struct MathAnswer {
    tolerance: f64,
    require_boxed: bool,
}

impl MathAnswer {
    /// Reads the rule's parameters (see the module docs).
    ///
    /// # Errors
    /// Unknown or ill-typed parameters, a negative or non-finite tolerance.
    pub fn from_params(table: &toml::Table) -> Result<Self, Vec<ConfigProblem>> {
        let mut p = rule_params(KIND, table, ALLOWED);
        let tolerance = p.get_non_negative("tolerance").unwrap_or(DEFAULT_TOLERANCE);
        let require_boxed = p.get_bool("require_boxed").unwrap_or(false);
        p.finish()?;
        Ok(Self {
            tolerance,
            require_boxed,
        })
    }

    /// The final answers of a response, tried in order (see the module docs).
    fn final_answers<'a>(&self, response: &'a str) -> Vec<&'a str> {
        if let Some(boxed) = extract::last_boxed(response) {
            return vec![boxed];
        }
        if self.require_boxed {
            return Vec::new();
        }
        let number = extract::last_number(response);
        match extract::last_inline_math(response) {
            Some(math) if number.is_none_or(|(at, _)| at < math.end) => {
                let inside = number.filter(|&(at, _)| at >= math.start);
                [Some(math.content), inside.map(|(_, number)| number)]
                    .into_iter()
                    .flatten()
                    .collect()
            }
            _ => number.map(|(_, number)| number).into_iter().collect(),
        }
    }
}

impl Rule for MathAnswer {
    fn check(&self, candidate: &Candidate) -> Outcome {
        let reference = crate::reference(KIND, candidate)?;
        let reference = Answer::read(extract::reference_answer(reference));
        if reference.text.is_empty() {
            return Err(ScoreError::permanent(
                FailureReason::InvalidReference,
                format!(
                    "rule {KIND} found no answer in the reference of candidate {:?}",
                    candidate.id
                ),
            ));
        }
        let answers = self.final_answers(&candidate.response);
        if answers.is_empty() {
            return Ok(Score::new(0.0).with_flag("no_answer"));
        }
        Ok(Score::pass_fail(answers.into_iter().any(|answer| {
            Answer::read(answer).matches(&reference, self.tolerance)
        })))
    }
}

/// An answer in normal form, without its trailing unit when it has one, and its number when it
/// is one.
#[derive(Debug)]
struct Answer {
    text: String,
    without_unit: Option<String>,
    number: Option<number::Number>,
}

impl Answer {
    fn read(raw: &str) -> Self {
        let text = latex::normalize(raw, TextGroups::Unwrap);
        let without_unit = latex::without_unit(raw)
            .map(|rest| latex::normalize(rest, TextGroups::Unwrap))
            .filter(|rest| !rest.is_empty());
        let number = number::parse(&text)
            .or_else(|| number::parse(&latex::normalize(raw, TextGroups::Drop)));
        Self {
            text,
            without_unit,
            number,
        }
    }

    /// The normal forms compared as text: with and without the unit.
    fn texts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.text.as_str()).chain(self.without_unit.as_deref())
    }

    fn matches(&self, reference: &Self, tolerance: f64) -> bool {
        if self.texts().any(|a| reference.texts().any(|b| a == b)) {
            return true;
        }
        match (&self.number, &reference.number) {
            (Some(a), Some(b)) => number::same(a, b, tolerance),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{candidate, params};

    fn rule() -> MathAnswer {
        MathAnswer::from_params(&params("")).expect("builds")
    }

    fn score(rule: &MathAnswer, response: &str, reference: &str) -> Score {
        rule.check(&candidate(response, Some(reference)))
            .expect("scored")
    }

    fn passes(response: &str, reference: &str) -> bool {
        score(&rule(), response, reference).value == 1.0
    }

    #[test]
    fn boxed_fraction_equals_decimal() {
        assert!(passes(r"Thus $\boxed{\frac{1}{2}}$.", "0.5"));
        assert!(passes(r"\boxed{0.5}", r"\frac{1}{2}"));
        assert!(passes(r"\boxed{\dfrac{1}{2}}", r"\boxed{\tfrac12}"));
        assert!(passes(r"\boxed{2/4}", "1/2"));
        assert!(!passes(r"\boxed{\frac{1}{3}}", "0.33"));
    }

    #[test]
    fn gsm8k_style_references() {
        let reference = "She sells 16 - 3 - 4 = 9 eggs, for 9 * 2 = $18.\n#### 18";
        assert!(passes(r"\boxed{18}", reference));
        assert!(!passes(r"\boxed{9}", reference));
        assert!(passes("#### 1,000", "#### 1000"));
    }

    #[test]
    fn nested_boxed_is_read_whole() {
        assert!(passes(r"\boxed{\frac{\sqrt{3}}{2}}", r"\dfrac{\sqrt3}{2}"));
        assert!(!passes(
            r"\boxed{\frac{\sqrt{3}}{2}}",
            r"\frac{\sqrt{2}}{2}"
        ));
        assert!(passes(r"\boxed{\boxed{7}}", "7"));
    }

    #[test]
    fn the_final_number_is_the_answer() {
        assert!(passes("3 + 4 = 7, times 2 gives 14", "14"));
        assert!(!passes("The answer is 14, from 3 and 11", "14"));
        assert!(passes("First 12, then... the answer is 42.", "42"));
        assert!(
            passes(r"\boxed{5} Check: 2 + 3 = 5, and 9 - 4 = 5 too, 11", "5"),
            "a box beats later numbers"
        );
    }

    #[test]
    fn thousands_separators_and_money() {
        assert!(passes("The total is 1,000,000", "1000000"));
        assert!(passes(r"\boxed{\$1{,}250}", "1250"));
        assert!(passes("It costs $1,250.00.", r"\$1,250"));
        assert!(!passes("values 1,2", "12"));
    }

    #[test]
    fn negative_numbers() {
        assert!(passes("so x = -3", "-3"));
        assert!(passes("so x = −3", "-3"), "unicode minus");
        assert!(passes(r"\boxed{-\frac{3}{4}}", "-0.75"));
        assert!(passes(r"\boxed{\frac{-3}{4}}", "-3/4"));
        assert!(!passes("x-3", "-3"), "a hyphen is no sign");
        assert!(!passes(r"\boxed{3}", "-3"));
    }

    #[test]
    fn negative_fractions_without_a_box() {
        assert!(passes(r"So the answer is -\frac{5}{6}.", r"-\frac{5}{6}"));
        assert!(passes(r"The answer is $-\dfrac{1}{7}$.", r"-\frac{1}{7}"));
        assert!(
            passes(r"\boxed{-\frac{5}{6}", r"-\frac{5}{6}"),
            "box cut off"
        );
        assert!(!passes(r"So the answer is -\frac{5}{6}.", r"\frac{5}{6}"));
        assert!(!passes(r"\boxed{-\frac{5}{6}", r"\frac{5}{6}"));
        assert!(
            !passes(r"so 1-\frac{5}{6}", r"-\frac{5}{6}"),
            "a difference"
        );
    }

    #[test]
    fn latex_thousands_separators_without_a_box() {
        assert!(passes(r"The answer is $16{,}842$.", "16842"));
        assert!(passes(r"The answer is 16{,}842.", "16842"));
        assert!(!passes(r"The answer is $16{,}842$.", "16843"));
        assert!(!passes(r"The answer is $16{,}842$.", "842"));
    }

    #[test]
    fn the_last_inline_math_is_the_answer() {
        assert!(passes(r"The answer is $3\sqrt{7}$.", r"3\sqrt{7}"));
        assert!(passes(r"The answer is \(3\sqrt{7}\).", r"3\sqrt{7}"));
        assert!(passes(r"We get $$x + 1$$", "x+1"));
        assert!(!passes(r"The answer is $3\sqrt{7}$.", r"3\sqrt{5}"));
        assert!(
            passes(r"Since $2 + 3 = 5$", "5"),
            "the last number inside it is tried too"
        );
        assert!(
            !passes(r"We had 5 apples, so the answer is $x + 1$.", "5"),
            "a number before the inline math is not the answer"
        );
        assert!(
            passes(r"First $x = 2$, then x doubles to 4", "4"),
            "a number after the inline math is"
        );
        assert!(!passes(r"First $x = 2$, then x doubles to 4", "2"));
        assert!(
            passes(r"It costs \$5, and $3 more", "3"),
            "a price is no delimiter"
        );
        assert!(passes(r"$x = -\frac{1}{2}$", "-0.5"));
    }

    #[test]
    fn units_are_dropped_from_any_answer() {
        assert!(passes(r"\boxed{2\sqrt{2}\text{ dollars}}", r"2\sqrt{2}"));
        assert!(passes(r"\boxed{\pi \mbox{ m}}", r"\pi"));
        assert!(passes(r"The area is $4\pi\text{ cm}$.", r"4\pi"));
        assert!(!passes(r"\boxed{2\sqrt{3}\text{ dollars}}", r"2\sqrt{2}"));
        assert!(
            !passes(r"\boxed{x\text{ and }y}", "x"),
            "not a trailing unit"
        );
    }

    #[test]
    fn trailing_periods_units_degrees_percent() {
        assert!(passes(r"\boxed{12.}", "12"));
        assert!(passes("answer: 12.", "12."));
        assert!(passes(r"\boxed{5\text{ cm}}", "5"));
        assert!(passes(r"\boxed{30^\circ}", "30"));
        assert!(passes(r"\boxed{50\%}", "50"));
        assert!(passes(r"\boxed{50\%}", "0.5"));
        assert!(passes("the share is 25%", r"\frac{1}{4}"));
    }

    #[test]
    fn tolerance_applies_to_decimals_only() {
        let loose = MathAnswer::from_params(&params("tolerance = 0.01")).expect("builds");
        assert_eq!(score(&loose, "about 3.14", r"3.14159").value, 1.0);
        assert_eq!(score(&rule(), "about 3.14", r"3.14159").value, 0.0);
        assert_eq!(
            score(&loose, "100", "101").value,
            0.0,
            "integers compare exactly"
        );
        assert!(passes("2.0", "2"));
    }

    #[test]
    fn symbolic_answers_compare_as_text() {
        assert!(passes(r"\boxed{x + 1}", "x+1"));
        assert!(passes(r"\boxed{ \left( 1, 2 \right) }", "(1,2)"));
        assert!(passes(r"\boxed{y = 2x}", "2x"));
        assert!(passes(r"\boxed{\text{(B)}}", "(B)"));
        assert!(!passes(r"\boxed{x + 2}", "x+1"));
        assert!(!passes(r"\boxed{X+1}", "x+1"), "case matters in math");
    }

    #[test]
    fn no_answer_is_a_flagged_zero() {
        for response in ["", "I do not know.", r"\boxed{}", r"\boxed{", r"\boxed{x"] {
            let s = score(&rule(), response, "12");
            assert_eq!(s.value, 0.0, "{response}");
            assert_eq!(s.flags, ["no_answer"], "{response}");
        }
        // A box cut off by the length limit leaves the last number as the answer.
        assert!(passes(r"\boxed{12", "12"));
    }

    #[test]
    fn require_boxed_ignores_bare_numbers() {
        let strict = MathAnswer::from_params(&params("require_boxed = true")).expect("builds");
        let s = score(&strict, "the answer is 12", "12");
        assert_eq!((s.value, s.flags), (0.0, vec!["no_answer".to_owned()]));
        assert_eq!(score(&strict, r"\boxed{12}", "12").value, 1.0);
    }

    #[test]
    fn reference_problems_are_errors_of_that_candidate() {
        let missing = rule()
            .check(&candidate("12", None))
            .expect_err("no reference");
        assert_eq!(missing.reason.as_str(), "missing_reference");
        for reference in ["", "  ", r"\boxed{}"] {
            let invalid = rule()
                .check(&candidate("12", Some(reference)))
                .expect_err(reference);
            assert_eq!(
                invalid.reason.as_str(),
                "invalid_reference",
                "{reference:?}"
            );
        }
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let r = rule();
        let huge = format!("{}{}", "9".repeat(1_000_000), r"\boxed{".repeat(50_000));
        for response in [
            huge.as_str(),
            r"\boxed{\frac{1}{0}}",
            r"\frac{",
            "}}}{{{\\",
            "١٢٣",
            "😀 -",
            "1e999999",
            &"-".repeat(10_000),
        ] {
            let _ = r.check(&candidate(response, Some("1")));
            let _ = r.check(&candidate("1", Some(response)));
        }
        assert!(
            passes(r"\boxed{\frac{1}{0}}", r"\frac{1}{0}"),
            "same text still matches"
        );
    }

    #[test]
    fn parameter_problems() {
        for (text, path) in [
            ("tolerance = -1.0", "tolerance"),
            ("tolerance = \"small\"", "tolerance"),
            ("tolerance = nan", "tolerance"),
            ("require_boxed = 1", "require_boxed"),
            ("tol = 0.1", "tol"),
        ] {
            let problems = MathAnswer::from_params(&params(text)).expect_err(text);
            assert_eq!(problems.len(), 1, "{text}");
            assert_eq!(problems[0].path, path, "{text}");
        }
    }
}
