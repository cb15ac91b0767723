//! Each rule's parameters, then its check: any parameter table either builds the rule or gives
//! problems that name a key; a rule built scores every candidate of a group, with a value in
//! [0, 1] or a permanent error of its own, and never panics.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rewardfleet_core::config::ComponentConfig;
use rewardfleet_core::{Candidate, ScoreContext};

/// Every parameter some rule takes, and the words their choices are spelled with.
const KEYS: &[&str] = &[
    "ignore_case",
    "collapse_whitespace",
    "strip_punctuation",
    "trim",
    "pattern",
    "mode",
    "negate",
    "limit",
    "min",
    "penalty",
    "tolerance",
    "allow_fenced",
    "schema",
    "schema_file",
    "required",
    "forbidden",
    "whole_words",
    "partial",
    "require_boxed",
];
const WORDS: &[&str] = &[
    "hard",
    "linear",
    "search",
    "full",
    "schema.json",
    r#"{"type":"object","required":["answer"]}"#,
    r#"{"type":"array","items":{"type":"integer"}}"#,
    r"^\d+$",
    r"\boxed{",
];

/// A directory with one schema file, the only file `schema_file` may name here.
static BASE_DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("rewardfleet-fuzz-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    std::fs::write(
        dir.join("schema.json"),
        r#"{"type":"object","properties":{"answer":{"type":"string"}}}"#,
    )
    .expect("the schema file");
    dir
});

#[derive(Debug, Arbitrary)]
enum Key {
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Word(u8),
    Text(String),
}

#[derive(Debug, Arbitrary)]
enum Value {
    Scalar(Scalar),
    List(Vec<Scalar>),
    Table(Vec<(String, Scalar)>),
}

#[derive(Debug, Arbitrary)]
struct Sample {
    response: String,
    reference: Option<String>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    kind: u8,
    params: Vec<(Key, Value)>,
    group: Vec<Sample>,
}

fn scalar(s: Scalar) -> toml::Value {
    match s {
        Scalar::Bool(b) => toml::Value::Boolean(b),
        Scalar::Int(i) => toml::Value::Integer(i),
        Scalar::Float(f) => toml::Value::Float(f),
        Scalar::Word(i) => toml::Value::String(WORDS[usize::from(i) % WORDS.len()].to_owned()),
        Scalar::Text(s) => toml::Value::String(s),
    }
}

fn value(v: Value) -> toml::Value {
    match v {
        Value::Scalar(s) => scalar(s),
        Value::List(items) => toml::Value::Array(items.into_iter().map(scalar).collect()),
        Value::Table(entries) => {
            toml::Value::Table(entries.into_iter().map(|(k, v)| (k, scalar(v))).collect())
        }
    }
}

/// A `schema_file` that stays inside [`BASE_DIR`] (no absolute path, no `..`): the fuzzer is
/// not to read the machine's files.
fn stays_inside(v: &toml::Value) -> bool {
    v.as_str().is_none_or(|path| {
        Path::new(path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    })
}

fuzz_target!(|input: Input| {
    let kinds = rewardfleet_rules::KINDS;
    let kind = kinds[usize::from(input.kind) % kinds.len()];
    let mut params = toml::Table::new();
    for (key, v) in input.params {
        let key = match key {
            Key::Known(i) => KEYS[usize::from(i) % KEYS.len()].to_owned(),
            Key::Other(k) => k,
        };
        let v = value(v);
        if key == "schema_file" && !stays_inside(&v) {
            return;
        }
        params.insert(key, v);
    }
    let component = ComponentConfig {
        name: None,
        scorer: None,
        rule: Some(kind.to_owned()),
        weight: None,
        gate: false,
        gate_threshold: 1.0,
        fallback: None,
        fallback_params: None,
        params,
    };
    let scorer = match rewardfleet_rules::build(&component, &BASE_DIR) {
        Ok(scorer) => scorer,
        Err(problems) => {
            assert!(!problems.is_empty(), "a refused rule says why");
            for p in &problems {
                // The path is the key; only an empty key (`"" = …`) gives an empty one.
                assert!(!p.message.is_empty(), "{p:?}");
                assert!(!p.path.is_empty() || p.message.contains("``"), "{p:?}");
            }
            return;
        }
    };
    let group: Vec<Candidate> = input
        .group
        .into_iter()
        .enumerate()
        .map(|(i, s)| Candidate {
            id: format!("c{i}"),
            response: s.response,
            reference: s.reference,
            ..Default::default()
        })
        .collect();
    let outcomes = futures::executor::block_on(scorer.score(&ScoreContext::default(), &group));
    assert_eq!(outcomes.len(), group.len(), "one outcome per candidate");
    for outcome in outcomes {
        match outcome {
            Ok(score) => {
                assert!(
                    (0.0..=1.0).contains(&score.value),
                    "{kind}: value {}",
                    score.value
                );
                assert!(!score.degraded, "a rule has no fallback");
            }
            Err(e) => {
                assert!(!e.retryable, "{kind}: a rule's error is permanent: {e:?}");
                assert!(!e.message.is_empty());
            }
        }
    }
});
