//! Remote LLM judges: OpenAI-compatible chat APIs behind one tower stack, scoring by rubric, logprob, pairwise, reference or panel.
//!
//! A [`JudgeSet`] holds every `[[judge]]` endpoint of a process, each with its own stack (see
//! `stack.rs`); [`JudgeSet::component`] turns a profile component that names a judge into a
//! [`Scorer`]. Component parameters (beside `scorer`, `weight`, `fallback`, …):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `method` | `"rubric"` | `rubric`, `logprob`, `pairwise`, `reference` or `factuality` |
//! | `rubric` | — | rubric file (needed by `rubric` and `logprob`; criteria for the others) |
//! | `score_range` | `[1, 10]` | integer range the judge scores in; values are normalised to [0, 1] |
//! | `panel` | `[]` | further judges; with them the component is a panel |
//! | `aggregate` | `"mean"` | panel aggregate: `mean`, `median` or `min` |
//! | `disagreement_threshold` | `0.3` | panel spread (of normalised values) above which `judge_disagreement` is flagged |
//! | `on_injection` | `"flag"` | `flag`: judge and flag; `zero`: value 0, flagged, no call; `fail`: component fails with `judge_injection_suspected` |
//! | `all_pairs_up_to` | `8` | pairwise: groups up to this size compare all pairs, larger ones compare each with the anchor |
//! | `anchor` | `0` | pairwise: index in the group of the anchor candidate |
//! | `length_penalty` | `false` | factuality: apply FActScore's length penalty, × exp(1 − γ/claims) below γ claims |
//! | `gamma` | `10` | factuality: the penalty's γ |
//! | `abstain_value` | `0` | factuality: the value of a response that abstains (flagged `factuality_abstained`) |
//! | `max_claims` | `32` | factuality: claims verified per response at most (the rest flagged `factuality_claims_truncated`) |

mod attempts;
#[cfg(feature = "bench")]
pub mod bench;
mod breaker;
mod cache;
mod client;
pub mod injection;
mod judge;
mod limits;
mod method;
mod stack;
mod tokens;
pub mod verdict;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rewardfleet_core::config::{ComponentConfig, JudgeConfig};
use rewardfleet_core::{ConfigProblem, Scorer};

pub use cache::{Answer, CacheKey, JudgeCache, MemoryCache, StoredAnswer, VerdictCache, now_ms};
pub use client::{ChatRequest, ChatTurn, Completion, TokenLogprobs, TokenUsage};
pub use injection::{INJECTION_FLAG, INJECTION_JUDGE_FLAG, INJECTION_SCREEN_FLAG};
pub use judge::JudgeUsage;
pub use limits::FleetShare;
pub use method::{
    Aggregate, DISAGREEMENT_FLAG, FACTUALITY_ABSTAINED_FLAG, FACTUALITY_SUPPORTED_FLAG,
    FACTUALITY_TRUNCATED_FLAG, Method, NO_LOGPROBS_FLAG, NO_OPPONENT_FLAG, OnInjection,
    PANEL_PARTIAL_FLAG, POSITION_INCONSISTENT_FLAG, parse_supported_flag,
};

use cache::Cache;
use judge::Judge;
use method::JudgeScorer;

/// Errors of the judge crate (scoring errors are [`rewardfleet_core::ScoreError`]s).
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// A judge's configuration cannot be used.
    #[error("judge {judge:?}: {message}")]
    Config {
        /// The judge.
        judge: String,
        /// What is wrong.
        message: String,
    },
    /// A judge's API key could not be read.
    #[error("judge {judge:?}: cannot read the API key: {message}")]
    ApiKey {
        /// The judge.
        judge: String,
        /// What went wrong (never the key).
        message: String,
    },
    /// A verdict cache could not be opened (a shared store such as the fleet's KV bucket).
    #[error("judge cache: {0}")]
    Cache(String),
    /// No Tokio runtime is running (the judge stacks spawn their queue workers).
    #[error("judges must be built inside a Tokio runtime")]
    NoRuntime,
}

/// All judge endpoints of a process, each with its own tower stack; shared by every profile.
pub struct JudgeSet {
    judges: Vec<Arc<Judge>>,
}

impl std::fmt::Debug for JudgeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.judges.iter().map(|j| j.name()))
            .finish()
    }
}

impl JudgeSet {
    /// Builds every judge's stack. `api_keys`: judge name → key, read by the binary with
    /// [`read_api_key`]. Must run inside a Tokio runtime.
    ///
    /// # Errors
    /// [`JudgeError::NoRuntime`] outside a runtime; [`JudgeError::Config`] if a judge's settings
    /// (headers, key, backoff) cannot be used.
    pub fn new(
        judges: &[JudgeConfig],
        api_keys: HashMap<String, String>,
        cache: JudgeCache,
    ) -> Result<Self, JudgeError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(JudgeError::NoRuntime);
        }
        let cache = Arc::new(Cache::new(cache));
        let judges = judges
            .iter()
            .map(|config| {
                let key = api_keys.get(&config.name).map(String::as_str);
                Judge::new(config, key, cache.clone()).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { judges })
    }

    /// Names of the judges.
    pub fn names(&self) -> Vec<String> {
        self.judges.iter().map(|j| j.name().to_owned()).collect()
    }

    fn get(&self, name: &str) -> Option<Arc<Judge>> {
        self.judges.iter().find(|j| j.name() == name).cloned()
    }

    /// The scorer of one profile component whose `scorer` names a judge. Problems carry key
    /// paths relative to the component (`method`, `rubric`, `panel[1]`, …); the caller prefixes
    /// them. Relative rubric paths are resolved against `base_dir`.
    ///
    /// # Errors
    /// Every problem of the component's judge parameters, at once.
    pub fn component(
        &self,
        component: &ComponentConfig,
        base_dir: &Path,
    ) -> Result<Arc<dyn Scorer>, Vec<ConfigProblem>> {
        let names = self.names();
        let known: Vec<&str> = names.iter().map(String::as_str).collect();
        let primary = match component.scorer.as_deref().and_then(|s| self.get(s)) {
            Some(j) => j,
            None => {
                return Err(vec![ConfigProblem::new(
                    "scorer",
                    format!(
                        "{:?} is not a judge; known judges: {}",
                        component.scorer.as_deref().unwrap_or_default(),
                        known.join(", ")
                    ),
                )]);
            }
        };
        let spec = method::parse_spec(component, base_dir, &known)?;
        let mut judges = vec![primary];
        judges.extend(spec.panel.iter().filter_map(|n| self.get(n)));
        let mut problems = Vec::new();
        if spec.method == Method::Logprob {
            for j in &judges {
                if !j.config.logprobs {
                    problems.push(ConfigProblem::new(
                        "method",
                        format!(
                            "the logprob method needs `logprobs = true` on judge {:?} (the endpoint must return top logprobs)",
                            j.name()
                        ),
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Arc::new(JudgeScorer { spec, judges }))
    }

    /// Takes `share` of judge `name`'s `max_concurrency`, `requests_per_second` and
    /// `tokens_per_minute` (see [`FleetShare`]); logs the new limits when they change. An unknown
    /// name is ignored.
    pub fn set_fleet_share(&self, name: &str, share: FleetShare) {
        let Some(judge) = self.get(name) else {
            return;
        };
        if judge.limits.apply(share) {
            let (concurrency, requests_per_second, tokens_per_minute) = judge.limits.current();
            tracing::info!(
                judge = name,
                workers = share.workers,
                concurrency,
                requests_per_second,
                tokens_per_minute,
                "judge limits shared with the fleet's workers"
            );
        }
    }

    /// Token usage so far, per judge (for the `score` summary and metrics).
    pub fn usage(&self) -> Vec<JudgeUsage> {
        self.judges.iter().map(|j| j.usage()).collect()
    }
}

/// Reads a judge's API key from its `api_key_env` variable, looked up with `env` (the binary
/// passes `|var| std::env::var(var).ok()`: libraries never read the environment themselves), or
/// from its `api_key_file` (relative to `base_dir`); `None` when it names neither.
///
/// # Errors
/// [`JudgeError::ApiKey`] if the variable is unset or empty, or the file cannot be read or is
/// empty. The message never contains the key.
pub fn read_api_key(
    judge: &JudgeConfig,
    base_dir: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, JudgeError> {
    let fail = |message: String| JudgeError::ApiKey {
        judge: judge.name.clone(),
        message,
    };
    if let Some(var) = &judge.api_key_env {
        return match env(var) {
            Some(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
            Some(_) => Err(fail(format!("environment variable {var} is empty"))),
            None => Err(fail(format!("environment variable {var} is not set"))),
        };
    }
    if let Some(file) = &judge.api_key_file {
        let path = if file.is_absolute() {
            file.clone()
        } else {
            base_dir.join(file)
        };
        return match std::fs::read_to_string(&path) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
            Ok(_) => Err(fail(format!("{} is empty", path.display()))),
            Err(e) => Err(fail(format!("{}: {e}", path.display()))),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_come_from_the_lookup_or_the_file_and_never_show_in_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("key"), " sk-file \n").expect("writes the key");
        let env = |var: &str| match var {
            "SET" => Some(" sk-env ".to_owned()),
            "EMPTY" => Some("  ".to_owned()),
            _ => None,
        };
        let judge = |var: Option<&str>, file: Option<&str>| JudgeConfig {
            name: "j".into(),
            api_key_env: var.map(Into::into),
            api_key_file: file.map(Into::into),
            ..JudgeConfig::default()
        };
        let read = |j: JudgeConfig| read_api_key(&j, dir.path(), env);
        assert_eq!(
            read(judge(Some("SET"), None)).ok().flatten().as_deref(),
            Some("sk-env")
        );
        assert_eq!(
            read(judge(None, Some("key"))).ok().flatten().as_deref(),
            Some("sk-file")
        );
        assert_eq!(read(judge(None, None)).ok().flatten(), None);
        for (j, want) in [
            (
                judge(Some("EMPTY"), None),
                "environment variable EMPTY is empty",
            ),
            (
                judge(Some("UNSET"), None),
                "environment variable UNSET is not set",
            ),
            (judge(None, Some("missing")), "missing"),
        ] {
            let err = read(j).expect_err(want).to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
            assert!(!err.contains("sk-"), "{err}");
        }
    }
}
