//! Strict reading of a rule component's own parameters (`component.params`).
//!
//! Every parameter a rule reads must be in its allowed list; a key in the table that no rule
//! reads is a problem naming it, with the allowed keys and a close spelling when there is one.
//! Problems carry key paths relative to the component (`"limit"`, `"pattern"`).

use rewardfleet_core::ConfigProblem;

/// The parameters of one rule component, read once each, with every problem collected.
pub(crate) struct Params<'a> {
    kind: &'static str,
    table: &'a toml::Table,
    problems: Vec<ConfigProblem>,
}

impl<'a> Params<'a> {
    /// Starts reading `table` for a rule of `kind` that knows the keys in `allowed`; unknown keys
    /// are reported at once.
    pub(crate) fn new(kind: &'static str, table: &'a toml::Table, allowed: &[&str]) -> Self {
        let mut problems = Vec::new();
        for key in table.keys() {
            if !allowed.contains(&key.as_str()) {
                problems.push(unknown_key(kind, key, allowed));
            }
        }
        Self {
            kind,
            table,
            problems,
        }
    }

    /// Records a problem with the parameter `key`.
    pub(crate) fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem::new(key, message));
    }

    /// Whether the parameter is written in the table.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// The raw value, for parameters that accept more than one shape.
    pub(crate) fn raw(&self, key: &str) -> Option<&'a toml::Value> {
        self.table.get(key)
    }

    /// A boolean, `default` when absent.
    pub(crate) fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.table.get(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => {
                self.wrong_type(key, "true or false", other);
                default
            }
        }
    }

    /// A string that must be present.
    pub(crate) fn required_str(&mut self, key: &str, what: &str) -> Option<&'a str> {
        if !self.table.contains_key(key) {
            let kind = self.kind;
            self.problem(key, format!("rule {kind} needs `{key}`: {what}"));
            return None;
        }
        self.optional_str(key, what)
    }

    /// A string, `None` when absent.
    pub(crate) fn optional_str(&mut self, key: &str, what: &str) -> Option<&'a str> {
        match self.table.get(key) {
            None => None,
            Some(toml::Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                self.wrong_type(key, what, other);
                None
            }
        }
    }

    /// One of a fixed set of names, `default` when absent.
    pub(crate) fn choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)], default: T) -> T {
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let expected = format!("one of {}", quoted(&names));
        let Some(given) = self.optional_str(key, &expected) else {
            return default;
        };
        match options.iter().find(|(name, _)| *name == given) {
            Some((_, value)) => *value,
            None => {
                self.problem(key, format!("{given:?} is not allowed; use {expected}"));
                default
            }
        }
    }

    /// A non-negative integer, `None` when absent.
    pub(crate) fn optional_count(&mut self, key: &str) -> Option<u64> {
        match self.table.get(key) {
            None => None,
            Some(toml::Value::Integer(n)) => match u64::try_from(*n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.problem(key, format!("{n} is not allowed; use an integer ≥ 0"));
                    None
                }
            },
            Some(other) => {
                self.wrong_type(key, "an integer ≥ 0", other);
                None
            }
        }
    }

    /// A non-negative integer that must be present.
    pub(crate) fn required_count(&mut self, key: &str, what: &str) -> Option<u64> {
        if !self.table.contains_key(key) {
            let kind = self.kind;
            self.problem(key, format!("rule {kind} needs `{key}`: {what}"));
            return None;
        }
        self.optional_count(key)
    }

    /// A finite number ≥ 0 (an integer is accepted), `None` when absent.
    pub(crate) fn optional_non_negative(&mut self, key: &str) -> Option<f64> {
        let value = match self.table.get(key) {
            None => return None,
            #[allow(clippy::cast_precision_loss)] // a config integer; precision is irrelevant here
            Some(toml::Value::Integer(n)) => *n as f64,
            Some(toml::Value::Float(x)) => *x,
            Some(other) => {
                self.wrong_type(key, "a number ≥ 0", other);
                return None;
            }
        };
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

    /// A list of strings, empty when absent.
    pub(crate) fn string_list(&mut self, key: &str) -> Vec<String> {
        match self.table.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
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
                out
            }
            Some(other) => {
                self.wrong_type(key, "a list of strings", other);
                Vec::new()
            }
        }
    }

    /// The problems found, if any.
    pub(crate) fn finish(self) -> Result<(), Vec<ConfigProblem>> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(self.problems)
        }
    }

    fn wrong_type(&mut self, key: &str, expected: &str, found: &toml::Value) {
        self.problem(
            key,
            format!("expected {expected}, found {}", describe(found)),
        );
    }
}

fn unknown_key(kind: &str, key: &str, allowed: &[&str]) -> ConfigProblem {
    let hint = allowed
        .iter()
        .map(|a| (strsim::levenshtein(key, a), *a))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, a)| format!(" (did you mean `{a}`?)"))
        .unwrap_or_default();
    let allowed = if allowed.is_empty() {
        "none".to_owned()
    } else {
        allowed.join(", ")
    };
    ConfigProblem::new(
        key,
        format!("unknown parameter `{key}` for rule {kind}{hint}; allowed: {allowed}"),
    )
}

/// `"a", "b" or "c"`.
pub(crate) fn quoted(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

fn describe(value: &toml::Value) -> String {
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
        let p = Params::new("max_chars", &t, &["limit", "min"]);
        let problems = p.finish().expect_err("unknown key");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "limt");
        assert!(
            problems[0].message.contains("`limt`"),
            "{}",
            problems[0].message
        );
        assert!(problems[0].message.contains("allowed: limit, min"));
        assert!(problems[0].message.contains("did you mean `limit`"));
    }

    #[test]
    fn wrong_types_say_what_is_expected() {
        let t = table("flag = \"yes\"\nn = -3\nx = \"1\"\nlist = [\"a\", 2]");
        let mut p = Params::new("k", &t, &["flag", "n", "x", "list"]);
        assert!(p.bool("flag", true));
        assert_eq!(p.optional_count("n"), None);
        assert_eq!(p.optional_non_negative("x"), None);
        assert_eq!(p.string_list("list"), vec!["a".to_owned()]);
        let problems = p.finish().expect_err("four problems");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["flag", "n", "x", "list[1]"]);
        assert!(problems[0].message.contains("true or false"));
        assert!(problems[1].message.contains("≥ 0"));
    }

    #[test]
    fn choice_lists_the_options() {
        let t = table("mode = \"fuzzy\"");
        let mut p = Params::new("regex", &t, &["mode"]);
        assert_eq!(p.choice("mode", &[("search", 1), ("full", 2)], 1), 1);
        let problems = p.finish().expect_err("bad choice");
        assert_eq!(problems[0].path, "mode");
        assert!(problems[0].message.contains("\"search\" or \"full\""));
    }

    #[test]
    fn required_missing_is_a_problem() {
        let t = table("");
        let mut p = Params::new("regex", &t, &["pattern"]);
        assert_eq!(p.required_str("pattern", "a regular expression"), None);
        let problems = p.finish().expect_err("missing");
        assert_eq!(problems[0].path, "pattern");
        assert!(problems[0].message.contains("needs `pattern`"));
    }
}
