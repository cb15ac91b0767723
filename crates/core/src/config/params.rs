//! The one reader of a component's own parameters (the keys of a profile component beside
//! `scorer`, `rule`, `weight`, `gate`, `fallback`, …): rules, judge methods and models all read
//! them through [`Params`], which records every problem with its key path instead of stopping at
//! the first.
//!
//! Key paths are relative to the component (`"limit"`, `"panel[1]"`); the caller that knows where
//! the component sits prefixes them.

use super::ConfigProblem;

/// A typed view over a component's parameter table that collects problems as it reads.
///
/// Each getter returns `None` when the key is absent *or* holds the wrong type; in the second
/// case it also records a problem saying what was expected and what was found. `require_*`
/// getters record a problem for an absent key too.
#[derive(Debug)]
pub struct Params<'a> {
    owner: String,
    table: &'a toml::Table,
    problems: Vec<ConfigProblem>,
}

impl<'a> Params<'a> {
    /// Starts reading `table` for `owner`, named in messages (`"rule max_chars"`,
    /// `"judge component"`).
    pub fn new(owner: impl Into<String>, table: &'a toml::Table) -> Self {
        Self {
            owner: owner.into(),
            table,
            problems: Vec::new(),
        }
    }

    /// Records a problem for every key not in `allowed`: it names the key, lists the allowed
    /// ones and suggests a close spelling when there is one.
    pub fn reject_unknown(&mut self, allowed: &[&str]) {
        let owner = self.owner.clone();
        self.reject_unknown_with(allowed, |key| {
            let hint = closest(key, allowed)
                .map(|a| format!(" (did you mean `{a}`?)"))
                .unwrap_or_default();
            let list = if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            };
            format!("unknown parameter `{key}` for {owner}{hint}; allowed: {list}")
        });
    }

    /// Records a problem for every key not in `allowed`, with the message `message(key)`.
    pub fn reject_unknown_with(&mut self, allowed: &[&str], message: impl Fn(&str) -> String) {
        for key in self.table.keys() {
            if !allowed.contains(&key.as_str()) {
                let problem = ConfigProblem::new(key.clone(), message(key));
                self.problems.push(problem);
            }
        }
    }

    /// Records a problem with the parameter at `key` (a key path relative to the component).
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem::new(key, message));
    }

    /// Whether the parameter is written in the table.
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// The raw value, for parameters that accept more than one shape.
    pub fn raw(&self, key: &str) -> Option<&'a toml::Value> {
        self.table.get(key)
    }

    /// A string; `expected` says what it should be (`"a regular expression (string)"`).
    pub fn get_str(&mut self, key: &str, expected: &str) -> Option<&'a str> {
        match self.table.get(key)? {
            toml::Value::String(s) => Some(s.as_str()),
            other => {
                self.wrong_type(key, expected, other);
                None
            }
        }
    }

    /// A string that must be present; `what` says what it is, for the message when it is
    /// missing or of the wrong type.
    pub fn require_str(&mut self, key: &str, what: &str) -> Option<&'a str> {
        if self.missing(key, what) {
            return None;
        }
        self.get_str(key, what)
    }

    /// `true` or `false`.
    pub fn get_bool(&mut self, key: &str) -> Option<bool> {
        match self.table.get(key)? {
            toml::Value::Boolean(b) => Some(*b),
            other => {
                self.wrong_type(key, "true or false", other);
                None
            }
        }
    }

    /// An integer; `expected` says what it should be (`"an integer ≥ 2"`).
    pub fn get_i64(&mut self, key: &str, expected: &str) -> Option<i64> {
        match self.table.get(key)? {
            toml::Value::Integer(n) => Some(*n),
            other => {
                self.wrong_type(key, expected, other);
                None
            }
        }
    }

    /// A non-negative integer; a negative one is a problem.
    pub fn get_count(&mut self, key: &str) -> Option<u64> {
        let n = self.get_i64(key, "an integer ≥ 0")?;
        match u64::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(key, format!("{n} is not allowed; use an integer ≥ 0"));
                None
            }
        }
    }

    /// A non-negative integer that must be present; `what` says what it is.
    pub fn require_count(&mut self, key: &str, what: &str) -> Option<u64> {
        if self.missing(key, what) {
            return None;
        }
        self.get_count(key)
    }

    /// A number (an integer is accepted); `expected` says what it should be.
    pub fn get_f64(&mut self, key: &str, expected: &str) -> Option<f64> {
        match self.table.get(key)? {
            #[allow(clippy::cast_precision_loss)] // a config integer; precision is irrelevant here
            toml::Value::Integer(n) => Some(*n as f64),
            toml::Value::Float(x) => Some(*x),
            other => {
                self.wrong_type(key, expected, other);
                None
            }
        }
    }

    /// A finite number ≥ 0 (an integer is accepted).
    pub fn get_non_negative(&mut self, key: &str) -> Option<f64> {
        let value = self.get_f64(key, "a number ≥ 0")?;
        if value.is_finite() && value >= 0.0 {
            Some(value)
        } else {
            self.problem(
                key,
                format!("{value} is not allowed; use a finite number ≥ 0"),
            );
            None
        }
    }

    /// One of a fixed set of names.
    pub fn get_choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)]) -> Option<T> {
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let expected = format!("one of {}", quoted(&names));
        let given = self.get_str(key, &expected)?;
        match options.iter().find(|(name, _)| *name == given) {
            Some((_, value)) => Some(*value),
            None => {
                self.problem(key, format!("{given:?} is not allowed; use {expected}"));
                None
            }
        }
    }

    /// A list of strings; an item of another type is a problem at `key[i]` and is left out.
    pub fn get_str_list(&mut self, key: &str) -> Option<Vec<String>> {
        match self.table.get(key)? {
            toml::Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push(s.clone()),
                        other => self.problem(
                            &format!("{key}[{i}]"),
                            format!("expected a string, found {}", describe(other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.wrong_type(key, "a list of strings", other);
                None
            }
        }
    }

    /// Whether no problem was recorded so far.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems recorded, consuming the reader.
    pub fn into_problems(self) -> Vec<ConfigProblem> {
        self.problems
    }

    /// `Ok` when no problem was recorded.
    ///
    /// # Errors
    /// Every problem recorded, in the order found.
    pub fn finish(self) -> Result<(), Vec<ConfigProblem>> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(self.problems)
        }
    }

    /// Records "`owner` needs `key`: `what`" when `key` is absent.
    fn missing(&mut self, key: &str, what: &str) -> bool {
        if self.table.contains_key(key) {
            return false;
        }
        let owner = &self.owner;
        let message = format!("{owner} needs `{key}`: {what}");
        self.problem(key, message);
        true
    }

    fn wrong_type(&mut self, key: &str, expected: &str, found: &toml::Value) {
        self.problem(
            key,
            format!("expected {expected}, found {}", describe(found)),
        );
    }
}

/// The allowed name within two edits of `key`, the closest first.
fn closest<'b>(key: &str, allowed: &[&'b str]) -> Option<&'b str> {
    allowed
        .iter()
        .map(|a| (strsim::levenshtein(key, a), *a))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, a)| a)
}

/// `"a", "b" or "c"`.
pub fn quoted(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// A value as a message names it (`the string "x"`, `the integer 3`, `a list`).
pub fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(n) => format!("the integer {n}"),
        toml::Value::Float(x) => format!("the number {x}"),
        toml::Value::Boolean(b) => format!("{b}"),
        toml::Value::Datetime(d) => format!("the date {d}"),
        toml::Value::Array(_) => "a list".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("valid toml")
    }

    #[test]
    fn unknown_key_names_it_lists_allowed_and_suggests() {
        let t = table("limt = 3");
        let mut p = Params::new("rule max_chars", &t);
        p.reject_unknown(&["limit", "min"]);
        let problems = p.finish().expect_err("unknown key");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "limt");
        let m = &problems[0].message;
        assert!(m.contains("`limt` for rule max_chars"), "{m}");
        assert!(m.contains("allowed: limit, min"), "{m}");
        assert!(m.contains("did you mean `limit`"), "{m}");
    }

    #[test]
    fn wrong_types_say_what_is_expected() {
        let t = table("flag = \"yes\"\nn = -3\nx = \"1\"\nlist = [\"a\", 2]\ns = 4");
        let mut p = Params::new("k", &t);
        assert_eq!(p.get_bool("flag"), None);
        assert_eq!(p.get_count("n"), None);
        assert_eq!(p.get_non_negative("x"), None);
        assert_eq!(p.get_str_list("list"), Some(vec!["a".to_owned()]));
        assert_eq!(p.get_str("s", "a path (string)"), None);
        assert_eq!(p.get_bool("absent"), None);
        let problems = p.finish().expect_err("five problems");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["flag", "n", "x", "list[1]", "s"]);
        assert!(problems[0].message.contains("true or false"));
        assert!(problems[1].message.contains("≥ 0"));
        assert_eq!(
            problems[4].message,
            "expected a path (string), found the integer 4"
        );
    }

    #[test]
    fn choice_lists_the_options() {
        let t = table("mode = \"fuzzy\"");
        let mut p = Params::new("rule regex", &t);
        assert_eq!(p.get_choice("mode", &[("search", 1), ("full", 2)]), None);
        let problems = p.finish().expect_err("bad choice");
        assert_eq!(problems[0].path, "mode");
        assert!(problems[0].message.contains("\"search\" or \"full\""));
    }

    #[test]
    fn required_missing_is_a_problem_naming_the_owner() {
        let t = table("");
        let mut p = Params::new("rule regex", &t);
        assert_eq!(p.require_str("pattern", "a regular expression"), None);
        assert_eq!(p.require_count("limit", "an integer ≥ 1"), None);
        let problems = p.finish().expect_err("missing");
        assert_eq!(problems[0].path, "pattern");
        assert_eq!(
            problems[0].message,
            "rule regex needs `pattern`: a regular expression"
        );
        assert_eq!(problems[1].path, "limit");
    }

    #[test]
    fn the_closest_spelling_within_two_edits_is_suggested() {
        assert_eq!(
            closest("ignor_case", &["ignore_case", "trim"]),
            Some("ignore_case")
        );
        assert_eq!(closest("shape", &["ignore_case", "trim"]), None);
    }
}
