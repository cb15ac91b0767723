//! A judge component's parameters, read into the [`Spec`] its scorer runs with.

use std::path::Path;
use std::sync::Arc;

use rewardfleet_core::ConfigProblem;
use rewardfleet_core::config::{ComponentConfig, Params};

use super::{Aggregate, Method, OnInjection};

/// The parsed parameters of one judge component.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// How the judge grades.
    pub(crate) method: Method,
    /// The rubric text (criteria or guidance for pairwise and reference).
    pub(super) rubric: Option<Arc<str>>,
    /// Lowest score of the judge's scale.
    pub(super) min: i64,
    /// Highest score of the judge's scale.
    pub(super) max: i64,
    /// Further judges of a panel (the component's `scorer` is the first).
    pub(crate) panel: Vec<String>,
    /// How a panel's values become one.
    pub(super) aggregate: Aggregate,
    /// Spread of a panel's values above which it is flagged.
    pub(super) disagreement_threshold: f64,
    /// What a suspected injection does.
    pub(super) on_injection: OnInjection,
    /// Pairwise: groups up to this size compare all pairs.
    pub(super) all_pairs_up_to: usize,
    /// Pairwise: the anchor of larger groups.
    pub(super) anchor: usize,
    /// Factuality: its own parameters.
    pub(super) factuality: FactualitySpec,
}

/// The parameters of the factuality method.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FactualitySpec {
    /// FActScore's length penalty γ when `length_penalty = true` (`gamma`, default 10).
    pub(super) gamma: Option<f64>,
    /// The value of a response that abstains (has no claims).
    pub(super) abstain_value: f64,
    /// Claims verified per response at most (the rest are left out, flagged).
    pub(super) max_claims: usize,
}

impl Default for FactualitySpec {
    fn default() -> Self {
        Self {
            gamma: None,
            abstain_value: 0.0,
            max_claims: 32,
        }
    }
}

impl Spec {
    /// A rubric spec with the rubric given inline (benchmarks).
    #[cfg(feature = "bench")]
    pub(crate) fn inline_rubric(rubric: &str, min: i64, max: i64) -> Self {
        Self {
            method: Method::Rubric,
            rubric: Some(Arc::from(rubric)),
            min,
            max,
            panel: Vec::new(),
            aggregate: Aggregate::Mean,
            disagreement_threshold: 0.3,
            on_injection: OnInjection::Flag,
            all_pairs_up_to: 8,
            anchor: 0,
            factuality: FactualitySpec::default(),
        }
    }
}

/// The judge parameters a component may have.
const KNOWN_PARAMS: &[&str] = &[
    "method",
    "rubric",
    "score_range",
    "panel",
    "aggregate",
    "disagreement_threshold",
    "on_injection",
    "all_pairs_up_to",
    "anchor",
    "length_penalty",
    "gamma",
    "abstain_value",
    "max_claims",
];

/// Reads a component's judge parameters; problems carry keys relative to the component. A
/// relative rubric path is resolved against `base_dir`; `known_judges` are the names a panel may
/// use.
///
/// # Errors
/// Every problem found, at once.
pub(crate) fn parse_spec(
    component: &ComponentConfig,
    base_dir: &Path,
    known_judges: &[&str],
) -> Result<Spec, Vec<ConfigProblem>> {
    let mut p = Params::new("judge component", &component.params);
    p.reject_unknown_with(KNOWN_PARAMS, |_| {
        format!(
            "unknown judge parameter; known: {}",
            KNOWN_PARAMS.join(", ")
        )
    });
    let method = match p.get_str("method", "a string") {
        None => Some(Method::Rubric),
        Some(m) => Method::parse(m).or_else(|| {
            p.problem(
                "method",
                format!(
                    "unknown method {m:?}; known: rubric, logprob, pairwise, reference, factuality"
                ),
            );
            None
        }),
    };
    let rubric = match p.get_str("rubric", "a path to the rubric file (string)") {
        Some(path) => {
            let full = if Path::new(path).is_absolute() {
                Path::new(path).to_owned()
            } else {
                base_dir.join(path)
            };
            match std::fs::read_to_string(&full) {
                Ok(text) if text.trim().is_empty() => {
                    p.problem("rubric", format!("{} is empty", full.display()));
                    None
                }
                Ok(text) => Some(Arc::from(text.trim())),
                Err(e) => {
                    p.problem("rubric", format!("cannot read {}: {e}", full.display()));
                    None
                }
            }
        }
        None => {
            if matches!(method, Some(Method::Rubric | Method::Logprob)) {
                p.problem(
                    "rubric",
                    "the rubric and logprob methods need `rubric = \"path/to/rubric.md\"`",
                );
            }
            None
        }
    };
    let (min, max) = match p.raw("score_range") {
        None => (1, 10),
        Some(toml::Value::Array(a)) => match a.as_slice() {
            [toml::Value::Integer(lo), toml::Value::Integer(hi)] if lo < hi => (*lo, *hi),
            _ => {
                p.problem(
                    "score_range",
                    "must be [min, max], two integers with min < max",
                );
                (1, 10)
            }
        },
        Some(_) => {
            p.problem("score_range", "must be [min, max]");
            (1, 10)
        }
    };
    if method == Some(Method::Logprob) && (min < 0 || max > 20) {
        p.problem(
            "score_range",
            "the logprob method needs scores that are single tokens: a range within 0 to 20",
        );
    }
    let mut panel = Vec::new();
    match p.raw("panel") {
        None => {}
        Some(toml::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                match v.as_str() {
                    Some(name) if known_judges.contains(&name) => panel.push(name.to_owned()),
                    Some(name) => p.problem(
                        &format!("panel[{i}]"),
                        format!("unknown judge {name:?}; known: {}", known_judges.join(", ")),
                    ),
                    None => p.problem(&format!("panel[{i}]"), "must be a judge name"),
                }
            }
        }
        Some(_) => p.problem("panel", "must be a list of judge names"),
    }
    let aggregate = match p.get_str("aggregate", "a string") {
        None | Some("mean") => Aggregate::Mean,
        Some("median") => Aggregate::Median,
        Some("min") => Aggregate::Min,
        Some(other) => {
            p.problem(
                "aggregate",
                format!("unknown aggregate {other:?}; known: mean, median, min"),
            );
            Aggregate::Mean
        }
    };
    const THRESHOLD: &str = "a number from 0 to 1 (a spread of normalised values)";
    let disagreement_threshold = match p.get_f64("disagreement_threshold", THRESHOLD) {
        Some(t) if (0.0..=1.0).contains(&t) => t,
        Some(_) => {
            p.problem("disagreement_threshold", format!("must be {THRESHOLD}"));
            0.3
        }
        None => 0.3,
    };
    let on_injection = match p.get_str("on_injection", "a string") {
        None | Some("flag") => OnInjection::Flag,
        Some("zero") => OnInjection::Zero,
        Some("fail") => OnInjection::Fail,
        Some(other) => {
            p.problem(
                "on_injection",
                format!("unknown policy {other:?}; known: flag, zero, fail"),
            );
            OnInjection::Flag
        }
    };
    let mut count = |key: &str, default: usize, least: usize| {
        let expected = format!("an integer ≥ {least}");
        match p.get_i64(key, &expected).map(usize::try_from) {
            None => default,
            Some(Ok(n)) if n >= least => n,
            Some(_) => {
                p.problem(key, format!("must be {expected}"));
                default
            }
        }
    };
    let all_pairs_up_to = count("all_pairs_up_to", 8, 2);
    let anchor = count("anchor", 0, 0);
    let max_claims = count("max_claims", 32, 1);
    let length_penalty = p.get_bool("length_penalty").unwrap_or(false);
    let gamma = match p.get_f64("gamma", "a positive number") {
        Some(g) if g > 0.0 && g.is_finite() => g,
        Some(_) => {
            p.problem("gamma", "must be a positive number");
            10.0
        }
        None => 10.0,
    };
    let abstain_value = match p.get_f64("abstain_value", "a number from 0 to 1") {
        Some(v) if (0.0..=1.0).contains(&v) => v,
        Some(_) => {
            p.problem("abstain_value", "must be a number from 0 to 1");
            0.0
        }
        None => 0.0,
    };
    if method.is_some_and(|m| m != Method::Factuality) {
        for key in ["length_penalty", "gamma", "abstain_value", "max_claims"] {
            if p.has(key) {
                p.problem(key, "only used with method = \"factuality\"");
            }
        }
    }
    let factuality = FactualitySpec {
        gamma: length_penalty.then_some(gamma),
        abstain_value,
        max_claims,
    };
    if method.is_some_and(|m| m != Method::Pairwise) {
        for key in ["all_pairs_up_to", "anchor"] {
            if p.has(key) {
                p.problem(key, "only used with method = \"pairwise\"");
            }
        }
    }
    match method {
        Some(method) if p.is_clean() => Ok(Spec {
            method,
            rubric,
            min,
            max,
            panel,
            aggregate,
            disagreement_threshold,
            on_injection,
            all_pairs_up_to,
            anchor,
            factuality,
        }),
        _ => Err(p.into_problems()),
    }
}
