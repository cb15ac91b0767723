//! `regex`: the response matches (or, negated, does not match) a regular expression.
//!
//! | parameter | type | default | meaning |
//! |---|---|---|---|
//! | `pattern` | string | required | a regular expression in the [`regex`] crate's syntax (linear time: no look-around, no back-references) |
//! | `mode` | `"search"` \| `"full"` | `"search"` | `search`: the pattern matches somewhere in the response; `full`: it matches the whole response |
//! | `negate` | bool | `false` | pass when the pattern does *not* match |
//! | `ignore_case` | bool | `false` | case-insensitive matching (Unicode-aware); `(?i)` inside the pattern works too |
//!
//! The response is matched as is (not trimmed). A pattern that does not compile, or compiles to
//! more than [`SIZE_LIMIT`] bytes, is a configuration problem at `pattern`. Value: 1.0 or 0.0.

use regex::{Regex, RegexBuilder};
use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, ConfigProblem, Score};

use crate::Rule;
use crate::rule_params;

/// The kind as written in a profile.
pub const KIND: &str = "regex";

/// The most memory, in bytes, one compiled pattern may take (and its lazy DFA cache).
pub const SIZE_LIMIT: usize = 1 << 20;

const ALLOWED: &[&str] = &["pattern", "mode", "negate", "ignore_case"];

/// Where the pattern must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Anywhere in the response.
    Search,
    /// The whole response, from its first to its last character.
    Full,
}

/// Checks the response against a regular expression.
#[derive(Debug, Clone)]
pub struct RegexMatch {
    regex: Regex,
    negate: bool,
}

impl RegexMatch {
    /// Reads the rule's parameters (see the module docs) and compiles the pattern.
    ///
    /// # Errors
    /// Unknown or ill-typed parameters; a pattern that is invalid or too big, at `pattern`.
    pub fn from_params(table: &toml::Table) -> Result<Self, Vec<ConfigProblem>> {
        let mut p = rule_params(KIND, table, ALLOWED);
        let pattern = p.require_str("pattern", "a regular expression (string)");
        let mode = p
            .get_choice("mode", &[("search", Mode::Search), ("full", Mode::Full)])
            .unwrap_or(Mode::Search);
        let negate = p.get_bool("negate").unwrap_or(false);
        let ignore_case = p.get_bool("ignore_case").unwrap_or(false);
        let regex = pattern.and_then(|pattern| match compile(pattern, mode, ignore_case) {
            Ok(regex) => Some(regex),
            Err(message) => {
                p.problem("pattern", message);
                None
            }
        });
        p.finish()?;
        match regex {
            Some(regex) => Ok(Self { regex, negate }),
            None => Err(vec![ConfigProblem::new(
                "pattern",
                "rule regex needs `pattern`: a regular expression (string)",
            )]),
        }
    }
}

fn compile(pattern: &str, mode: Mode, ignore_case: bool) -> Result<Regex, String> {
    let build = |source: &str| {
        RegexBuilder::new(source)
            .case_insensitive(ignore_case)
            .size_limit(SIZE_LIMIT)
            .dfa_size_limit(SIZE_LIMIT)
            .build()
    };
    let explain = |e: regex::Error| match e {
        regex::Error::CompiledTooBig(limit) => format!(
            "the pattern compiles to more than {limit} bytes; simplify it (large repetitions such as `\\w{{1000}}` are the usual cause)"
        ),
        other => format!("not a valid regular expression: {other}"),
    };
    // Compiled alone first: a pattern that does not stand on its own (say `a)|(b`) must not
    // change meaning once wrapped in anchors.
    let regex = build(pattern).map_err(explain)?;
    match mode {
        Mode::Search => Ok(regex),
        Mode::Full => build(&format!(r"\A(?:{pattern})\z")).map_err(explain),
    }
}

impl Rule for RegexMatch {
    fn check(&self, candidate: &Candidate) -> Outcome {
        let matched = self.regex.is_match(&candidate.response);
        Ok(Score::pass_fail(matched != self.negate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{candidate, params};

    fn rule(text: &str) -> RegexMatch {
        RegexMatch::from_params(&params(text)).expect("builds")
    }

    fn value(rule: &RegexMatch, response: &str) -> f64 {
        rule.check(&candidate(response, None))
            .expect("scored")
            .value
    }

    #[test]
    fn search_versus_full() {
        let search = rule(r#"pattern = "\\d+""#);
        let full = rule("pattern = '\\d+'\nmode = \"full\"");
        assert_eq!(value(&search, "answer: 42"), 1.0);
        assert_eq!(value(&full, "answer: 42"), 0.0);
        assert_eq!(value(&full, "42"), 1.0);
        assert_eq!(value(&full, "42\n"), 0.0);
    }

    #[test]
    fn full_mode_requires_the_whole_alternation() {
        // Leftmost-first search would stop at "a"; full mode must still accept "ab".
        let full = rule("pattern = 'a|ab'\nmode = \"full\"");
        assert_eq!(value(&full, "ab"), 1.0);
        assert_eq!(value(&full, "abc"), 0.0);
        let lines = rule("pattern = '(?m)^x$'\nmode = \"full\"");
        assert_eq!(value(&lines, "x\nx"), 0.0);
    }

    #[test]
    fn negate_and_ignore_case() {
        let forbid = rule("pattern = 'as an ai'\nnegate = true\nignore_case = true");
        assert_eq!(value(&forbid, "As An AI, I cannot"), 0.0);
        assert_eq!(value(&forbid, "Sure."), 1.0);
        assert_eq!(value(&forbid, ""), 1.0);
    }

    #[test]
    fn unicode_and_empty_inputs() {
        let r = rule(r"pattern = '^\p{Greek}+$'");
        assert_eq!(value(&r, "αβγ"), 1.0);
        assert_eq!(value(&r, ""), 0.0);
        let empty = rule("pattern = ''\nmode = \"full\"");
        assert_eq!(value(&empty, ""), 1.0);
        assert_eq!(value(&empty, " "), 0.0);
    }

    #[test]
    fn invalid_pattern_is_a_problem_at_pattern() {
        for bad in ["'(unclosed'", "'a)|(b'", r"'(?<=x)y'", "'[z-a]'"] {
            let problems =
                RegexMatch::from_params(&params(&format!("pattern = {bad}"))).expect_err(bad);
            assert_eq!(problems.len(), 1, "{bad}");
            assert_eq!(problems[0].path, "pattern");
            assert!(
                problems[0]
                    .message
                    .contains("not a valid regular expression")
            );
        }
    }

    #[test]
    fn oversized_pattern_is_a_problem() {
        let problems =
            RegexMatch::from_params(&params(r"pattern = '\w{1000}\w{1000}'")).expect_err("too big");
        assert_eq!(problems[0].path, "pattern");
        assert!(
            problems[0].message.contains("more than"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn missing_pattern_and_bad_mode() {
        let problems =
            RegexMatch::from_params(&params("mode = \"exact\"")).expect_err("bad params");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["pattern", "mode"]);
        let problems =
            RegexMatch::from_params(&params("pattern = 'x'\nflags = 'i'")).expect_err("unknown");
        assert_eq!(problems[0].path, "flags");
        assert!(
            problems[0]
                .message
                .contains("allowed: pattern, mode, negate, ignore_case")
        );
    }
}
