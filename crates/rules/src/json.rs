//! `json_valid`: the response is JSON, optionally matching a JSON Schema.
//!
//! | parameter | type | default | meaning |
//! |---|---|---|---|
//! | `allow_fenced` | bool | `false` | when the response as a whole is not JSON, use its last fenced block marked ` ```json ` (or unmarked) |
//! | `schema` | table or string | none | an inline JSON Schema: a TOML table, or a string holding JSON |
//! | `schema_file` | string | none | a JSON Schema file; a relative path is resolved against the config file's directory |
//!
//! `schema` and `schema_file` exclude each other. The schema is compiled when the profile is
//! built (drafts 4, 6, 7, 2019-09 and 2020-12, detected from `$schema`, 2020-12 by default);
//! `$ref`s to other files or URLs are not fetched, so a schema that needs them is a configuration
//! problem. `format` is an annotation only, as the 2020-12 draft prescribes.
//!
//! Value: 1.0 when the response parses (and validates); else 0.0 with the flag `invalid_json`
//! or `schema_violation`. Surrounding whitespace is ignored.

use std::path::Path;

use jsonschema::{PatternOptions, Validator};
use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, ConfigProblem, Score};
use serde_json::Value;

use crate::Rule;
use crate::rule_params;

/// The kind as written in a profile.
pub const KIND: &str = "json_valid";

const ALLOWED: &[&str] = &["allow_fenced", "schema", "schema_file"];

/// Backtracking steps a schema `pattern` may take on one string before it counts as a violation.
const PATTERN_BACKTRACK_LIMIT: usize = 1_000_000;
/// The most memory, in bytes, one compiled schema `pattern` may take.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// Checks that the response is JSON and, with a schema, that it matches.
#[derive(Debug)]
pub struct JsonValid {
    allow_fenced: bool,
    schema: Option<Validator>,
}

impl JsonValid {
    /// Reads the rule's parameters (see the module docs), reads and compiles the schema.
    ///
    /// # Errors
    /// Unknown or ill-typed parameters; both `schema` and `schema_file`; a schema file that cannot
    /// be read or is not JSON; a schema that is not a valid JSON Schema.
    pub fn from_params(table: &toml::Table, base_dir: &Path) -> Result<Self, Vec<ConfigProblem>> {
        let mut p = rule_params(KIND, table, ALLOWED);
        let allow_fenced = p.get_bool("allow_fenced").unwrap_or(false);
        let inline = p
            .raw("schema")
            .and_then(|value| match inline_schema(value) {
                Ok(schema) => Some(schema),
                Err(message) => {
                    p.problem("schema", message);
                    None
                }
            });
        let file = p.get_str("schema_file", "a path to a JSON Schema file (string)");
        let (key, schema) = match (inline, file) {
            (Some(_), Some(_)) => {
                p.problem("schema_file", "give `schema` or `schema_file`, not both");
                ("schema", None)
            }
            (Some(schema), None) => ("schema", Some(schema)),
            (None, Some(file)) => match read_schema_file(&base_dir.join(file)) {
                Ok(schema) => ("schema_file", Some(schema)),
                Err(message) => {
                    p.problem("schema_file", message);
                    ("schema_file", None)
                }
            },
            (None, None) => ("schema", None),
        };
        let schema = schema.and_then(|schema| match compile(&schema) {
            Ok(validator) => Some(validator),
            Err(message) => {
                p.problem(key, message);
                None
            }
        });
        p.finish()?;
        Ok(Self {
            allow_fenced,
            schema,
        })
    }

    fn parse(&self, response: &str) -> Option<Value> {
        if let Ok(value) = serde_json::from_str(response) {
            return Some(value);
        }
        if !self.allow_fenced {
            return None;
        }
        let body = last_json_fence(response)?;
        serde_json::from_str(body).ok()
    }
}

impl Rule for JsonValid {
    fn check(&self, candidate: &Candidate) -> Outcome {
        let Some(value) = self.parse(&candidate.response) else {
            return Ok(Score::new(0.0).with_flag("invalid_json"));
        };
        match &self.schema {
            Some(validator) if !validator.is_valid(&value) => {
                Ok(Score::new(0.0).with_flag("schema_violation"))
            }
            _ => Ok(Score::new(1.0)),
        }
    }
}

fn inline_schema(value: &toml::Value) -> Result<Value, String> {
    match value {
        toml::Value::String(text) => serde_json::from_str(text).map_err(|e| {
            format!(
                "the string is not JSON ({e}); give a JSON Schema as a TOML table or a JSON string"
            )
        }),
        toml::Value::Table(_) | toml::Value::Boolean(_) => {
            serde_json::to_value(value).map_err(|e| format!("cannot be turned into JSON: {e}"))
        }
        _ => Err("expected a JSON Schema: a TOML table or a string holding JSON".to_owned()),
    }
}

fn read_schema_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::options()
        .with_pattern_options(
            PatternOptions::fancy_regex()
                .backtrack_limit(PATTERN_BACKTRACK_LIMIT)
                .size_limit(PATTERN_SIZE_LIMIT),
        )
        .build(schema)
        .map_err(|e| format!("not a valid JSON Schema: {e} (at {})", e.schema_path))
}

/// The body of the last fenced code block whose info string is `json` (any case) or empty.
fn last_json_fence(text: &str) -> Option<&str> {
    let mut found = None;
    let mut rest = text;
    while let Some(open) = rest.find("```") {
        let after_open = &rest[open + 3..];
        let Some(line_end) = after_open.find('\n') else {
            break;
        };
        let info = after_open[..line_end].trim();
        let body_and_rest = &after_open[line_end + 1..];
        let Some(close) = body_and_rest.find("```") else {
            break;
        };
        if info.is_empty() || info.eq_ignore_ascii_case("json") {
            found = Some(&body_and_rest[..close]);
        }
        rest = &body_and_rest[close + 3..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{candidate, params};

    fn rule(text: &str) -> JsonValid {
        JsonValid::from_params(&params(text), Path::new(".")).expect("builds")
    }

    fn score(rule: &JsonValid, response: &str) -> Score {
        rule.check(&candidate(response, None)).expect("scored")
    }

    #[test]
    fn plain_json_and_garbage() {
        let r = rule("");
        assert_eq!(score(&r, " {\"a\": [1, 2, {\"b\": null}]}\n").value, 1.0);
        assert_eq!(score(&r, "42").value, 1.0);
        assert_eq!(score(&r, "{\"a\": 1,}").value, 0.0);
        assert_eq!(score(&r, "{\"a\": 1,}").flags, ["invalid_json"]);
        assert_eq!(score(&r, "").value, 0.0);
        assert_eq!(score(&r, "{\"a\": 1} trailing").value, 0.0);
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let r = rule("");
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(score(&r, &deep).value, 0.0);
    }

    #[test]
    fn fenced_blocks_only_when_allowed() {
        let text = "Here you go:\n```json\n{\"answer\": 4}\n```\nHope it helps.";
        assert_eq!(score(&rule(""), text).value, 0.0);
        assert_eq!(score(&rule("allow_fenced = true"), text).value, 1.0);
    }

    #[test]
    fn the_last_json_fence_wins_and_other_languages_are_skipped() {
        let r = rule("allow_fenced = true");
        let text =
            "```json\n{bad}\n```\nfixed:\n```JSON\n{\"ok\": true}\n```\n```python\nprint(1)\n```";
        assert_eq!(score(&r, text).value, 1.0);
        let only_python = "```python\n{\"a\": 1}\n```";
        assert_eq!(score(&r, only_python).value, 0.0);
        assert_eq!(
            score(&r, "```json\n{\"a\": 1}").value,
            0.0,
            "unclosed fence"
        );
        assert_eq!(score(&r, "```").value, 0.0);
    }

    #[test]
    fn inline_toml_schema_validates() {
        let r = rule(
            "schema = { type = \"object\", required = [\"answer\"], properties = { answer = { type = \"integer\" } } }",
        );
        assert_eq!(score(&r, "{\"answer\": 4}").value, 1.0);
        let wrong_type = score(&r, "{\"answer\": \"4\"}");
        assert_eq!(wrong_type.value, 0.0);
        assert_eq!(wrong_type.flags, ["schema_violation"]);
        assert_eq!(score(&r, "{}").value, 0.0);
        assert_eq!(score(&r, "[]").value, 0.0);
    }

    #[test]
    fn json_string_schema_and_schema_file() {
        let r = rule(r#"schema = '{"type": "array", "maxItems": 2}'"#);
        assert_eq!(score(&r, "[1, 2]").value, 1.0);
        assert_eq!(score(&r, "[1, 2, 3]").value, 0.0);

        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("s.json"),
            r#"{"type": "string", "pattern": "^a+$"}"#,
        )
        .expect("write schema");
        let r = JsonValid::from_params(&params("schema_file = \"s.json\""), dir.path())
            .expect("builds");
        assert_eq!(score(&r, "\"aaa\"").value, 1.0);
        assert_eq!(score(&r, "\"aab\"").value, 0.0);
    }

    #[test]
    fn schema_problems() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("bad.json"), "{not json").expect("write");
        let cases = [
            ("schema = { type = \"nonsense\" }", "schema"),
            ("schema = '{oops'", "schema"),
            ("schema = 3", "schema"),
            ("schema_file = \"missing.json\"", "schema_file"),
            ("schema_file = \"bad.json\"", "schema_file"),
            (
                "schema = { type = \"object\" }\nschema_file = \"x.json\"",
                "schema_file",
            ),
            (
                "schema = { \"$ref\" = \"https://example.com/s.json\" }",
                "schema",
            ),
            ("allow_fences = true", "allow_fences"),
        ];
        for (text, path) in cases {
            let problems = JsonValid::from_params(&params(text), dir.path()).expect_err(text);
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert_eq!(problems[0].path, path, "{text}");
        }
    }
}
