//! Builds the scorers of every profile from the configuration: rules, remote judges and local
//! reward models, each model or judge created once and shared by the profiles that use it.
//! [`kv_cache`] keeps the judges' verdicts in the fleet's NATS KV bucket.

pub mod kv_cache;
mod observed;

use observed::Observed;

use rewardfleet_core::FailureReason;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rewardfleet_core::config::{
    ComponentConfig, ComponentSource, Config, ConfigProblem, Params, ProfileConfig,
};
use rewardfleet_core::profile::Profiles;
use rewardfleet_core::{Component, ComponentKind, Pipeline, Profile, Scorer};
use rewardfleet_judge::{JudgeCache, JudgeSet};

/// Why the scorers could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration has problems (each with its key path).
    #[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigProblem>),
}

/// Where the scorers of model and judge components come from.
pub trait ScorerSource {
    /// The scorer of a component that names a model or judge, or the problems (key paths
    /// relative to the component). `None`: this source does not know that name.
    fn component(
        &self,
        component: &ComponentConfig,
        base_dir: &Path,
    ) -> Option<Result<Arc<dyn Scorer>, Vec<ConfigProblem>>>;

    /// The kind of the scorers this source gives.
    fn kind(&self) -> ComponentKind;
}

/// Builds a pipeline for every profile of `config`, taking model and judge scorers from
/// `sources`. Workers and [`check`] both build through here, so a configuration that `check`
/// accepts is one a worker can run.
///
/// # Errors
/// [`BuildError::Config`] with every problem found (key paths from the file's root).
pub fn build_pipeline(
    config: &Config,
    sources: &[&dyn ScorerSource],
) -> Result<Pipeline, BuildError> {
    let mut problems = Vec::new();
    let mut profiles: Profiles = HashMap::new();
    for (name, profile) in &config.profile {
        match build_profile(name, profile, config, sources) {
            Ok(p) => {
                profiles.insert(name.clone(), Arc::new(p));
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    if problems.is_empty() {
        Ok(Pipeline::new(profiles))
    } else {
        Err(BuildError::Config(problems))
    }
}

/// The scorer of one component (a rule, or a model or judge from `sources`); problems carry key
/// paths relative to the component.
fn build_component(
    c: &ComponentConfig,
    config: &Config,
    sources: &[&dyn ScorerSource],
) -> Result<(Arc<dyn Scorer>, ComponentKind), Vec<ConfigProblem>> {
    if let Some(ComponentSource::Rule(_)) = c.source() {
        return rewardfleet_rules::build(c, &config.base_dir).map(|s| (s, ComponentKind::Rule));
    }
    match sources
        .iter()
        .find_map(|src| src.component(c, &config.base_dir).map(|r| (r, src.kind())))
    {
        Some((Ok(s), kind)) => Ok((s, kind)),
        Some((Err(p), _)) => Err(p),
        None => Err(vec![ConfigProblem::new(
            "scorer",
            format!(
                "{:?} is not a model or judge this process can run",
                c.scorer.clone().unwrap_or_default()
            ),
        )]),
    }
}

/// Problems of a component's fallback, with key paths from the file's root (`path` is the
/// component's). A fallback written as a table has keys of its own (`….fallback.method`); one
/// written as a name has only `….fallback`, and says which inherited parameter is wrong.
fn fallback_problems(
    c: &ComponentConfig,
    path: &str,
    config: &Config,
    problems: Vec<ConfigProblem>,
) -> impl Iterator<Item = ConfigProblem> {
    let table = c.fallback_is_table();
    let name = c.fallback.clone().unwrap_or_default();
    let primary_is_judge = matches!(
        c.source(),
        Some(ComponentSource::Scorer(s)) if config.scorer_kind(s) == Some(ComponentKind::Judge)
    );
    let path = format!("{path}.fallback");
    problems.into_iter().map(move |p| {
        if table {
            return prefixed(&path, p);
        }
        if p.path.is_empty() || p.path == "scorer" {
            return ConfigProblem::new(path.clone(), p.message);
        }
        let origin = if primary_is_judge {
            "a parameter it inherits from this component".to_owned()
        } else {
            format!(
                "a fallback given by name inherits parameters only from a judge component; \
                 give its own: fallback = {{ scorer = {name:?}, method = \"…\", rubric = \"…\" }}"
            )
        };
        ConfigProblem::new(
            path.clone(),
            format!("{name:?}: {}: {} ({origin})", p.path, p.message),
        )
    })
}

/// `p` with its key path placed under `path`.
fn prefixed(path: &str, p: ConfigProblem) -> ConfigProblem {
    ConfigProblem::new(
        if p.path.is_empty() {
            path.to_owned()
        } else {
            format!("{path}.{}", p.path)
        },
        p.message,
    )
}

fn build_profile(
    name: &str,
    profile: &ProfileConfig,
    config: &Config,
    sources: &[&dyn ScorerSource],
) -> Result<Profile, Vec<ConfigProblem>> {
    let is_judge = |n: &str| config.scorer_kind(n) == Some(ComponentKind::Judge);
    let mut problems = Vec::new();
    let mut components = Vec::new();
    for (i, c) in profile.components.iter().enumerate() {
        let path = format!("profile.{name}.components[{i}]");
        let built = build_component(c, config, sources);
        // The fallback is built like any component, with the parameters its form gives it.
        let fallback = match c.fallback_component(is_judge) {
            None => None,
            Some(f) => match build_component(&f, config, sources) {
                Ok((scorer, kind)) => {
                    let name = f.scorer.unwrap_or_default();
                    Some((name.clone(), Observed::wrap(name, kind, scorer)))
                }
                Err(ps) => {
                    problems.extend(fallback_problems(c, &path, config, ps));
                    None
                }
            },
        };
        match built {
            Ok((scorer, kind)) => components.push(Component {
                name: c.display_name(),
                kind,
                weight: c.effective_weight(),
                gate: c.gate.then_some(c.gate_threshold),
                scorer: Observed::wrap(c.display_name(), kind, scorer),
                fallback,
            }),
            Err(ps) => problems.extend(ps.into_iter().map(|p| prefixed(&path, p))),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Profile {
        name: name.to_owned(),
        components,
        normalize: profile.normalize,
        clip: profile
            .clip
            .map(|[a, b]| (a, b))
            .unwrap_or((f64::MIN, f64::MAX)),
        on_component_failure: profile.on_component_failure,
        floor: profile.floor,
    })
}

/// Every problem of the configuration's components that only the scorers can see (rule
/// parameters, judge methods, fallbacks), without loading models or calling judges: the profiles
/// are built by [`build_pipeline`], as a worker builds them, with the declared models standing
/// in for loaded ones. Call it inside a Tokio runtime.
pub fn check(config: &Config) -> Vec<ConfigProblem> {
    let judges = match JudgeSet::new(&config.judge, HashMap::new(), JudgeCache::None) {
        Ok(j) => j,
        Err(e) => return vec![ConfigProblem::new("judge", e.to_string())],
    };
    let models = DeclaredModels {
        names: config.model.iter().map(|m| m.name.clone()).collect(),
    };
    match build_pipeline(config, &[&models, &judges]) {
        Ok(_) => Vec::new(),
        Err(BuildError::Config(problems)) => problems,
    }
}

/// The parameters a model component may have: none.
fn model_params(component: &ComponentConfig, name: &str) -> Result<(), Vec<ConfigProblem>> {
    let mut params = Params::new(format!("model component {name:?}"), &component.params);
    params.reject_unknown_with(&[], |_| {
        format!("unknown parameter for model component {name:?}; a model takes none")
    });
    params.finish()
}

/// The `[[model]]`s of a configuration, not loaded: [`check`] builds profiles with them to see
/// every problem a worker would, without reading weights or touching a GPU.
struct DeclaredModels {
    names: Vec<String>,
}

/// A declared model's place in a pipeline that [`check`] builds and never runs.
struct NotLoaded(String);

#[async_trait::async_trait]
impl Scorer for NotLoaded {
    async fn score(
        &self,
        _ctx: &rewardfleet_core::ScoreContext,
        group: &[rewardfleet_core::Candidate],
    ) -> Vec<rewardfleet_core::scorer::Outcome> {
        let e = rewardfleet_core::ScoreError::permanent(
            FailureReason::ModelNotLoaded,
            format!(
                "model {:?} was only checked, not loaded (rewardfleet check)",
                self.0
            ),
        );
        group.iter().map(|_| Err(e.clone())).collect()
    }
}

impl ScorerSource for DeclaredModels {
    fn component(
        &self,
        component: &ComponentConfig,
        _base_dir: &Path,
    ) -> Option<Result<Arc<dyn Scorer>, Vec<ConfigProblem>>> {
        let name = component.scorer.as_deref()?;
        if !self.names.iter().any(|n| n == name) {
            return None;
        }
        Some(model_params(component, name).map(|()| Arc::new(NotLoaded(name.to_owned())) as _))
    }

    fn kind(&self) -> ComponentKind {
        ComponentKind::Model
    }
}

/// Remote judges as a source of scorers.
impl ScorerSource for rewardfleet_judge::JudgeSet {
    fn component(
        &self,
        component: &ComponentConfig,
        base_dir: &Path,
    ) -> Option<Result<Arc<dyn Scorer>, Vec<ConfigProblem>>> {
        let name = component.scorer.as_deref()?;
        if !self.names().iter().any(|n| n == name) {
            return None;
        }
        Some(JudgeSet::component(self, component, base_dir))
    }

    fn kind(&self) -> ComponentKind {
        ComponentKind::Judge
    }
}

/// Local reward models as a source of scorers.
#[cfg(feature = "torch")]
impl ScorerSource for rewardfleet_torch::ModelSet {
    fn component(
        &self,
        component: &ComponentConfig,
        _base_dir: &Path,
    ) -> Option<Result<Arc<dyn Scorer>, Vec<ConfigProblem>>> {
        let name = component.scorer.as_deref()?;
        let scorer = self.scorer(name)?;
        Some(model_params(component, name).map(|()| scorer))
    }

    fn kind(&self) -> ComponentKind {
        ComponentKind::Model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        toml::from_str(text).expect("the test config parses")
    }

    #[test]
    fn rule_profiles_build_in_component_order() {
        let c = config(
            r#"
[profile.p]
components = [
  { rule = "exact_match", weight = 2.0 },
  { rule = "max_chars", limit = 10, gate = true, name = "short" },
]
"#,
        );
        let pipeline = build_pipeline(&c, &[]).expect("builds");
        let p = &pipeline.profiles()["p"];
        let shape: Vec<_> = p
            .components
            .iter()
            .map(|c| (c.name.as_str(), c.weight, c.gate, c.kind))
            .collect();
        assert_eq!(
            shape,
            [
                ("exact_match", 2.0, None, ComponentKind::Rule),
                ("short", 0.0, Some(1.0), ComponentKind::Rule),
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let c = config(
            r#"
[profile.p]
components = [
  { scorer = "rm" },
  { rule = "regex" },
  { rule = "exact_match", fallback = "judge" },
]
"#,
        );
        let Err(BuildError::Config(problems)) = build_pipeline(&c, &[]) else {
            panic!("a profile with unknown scorers built");
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        for want in [
            "profile.p.components[0].scorer: \"rm\" is not a model or judge",
            "profile.p.components[1]",
            "profile.p.components[2].fallback: \"judge\" is not a model or judge",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(problems.len(), 3, "{text}");
    }

    const JUDGES: &str = r#"
[[judge]]
name = "primary"
base_url = "http://127.0.0.1:1/v1"
model = "m"

[[judge]]
name = "backup"
base_url = "http://127.0.0.1:2/v1"
model = "m"
"#;

    fn judge_config(dir: &Path, profiles: &str) -> Config {
        std::fs::write(dir.join("r.md"), "Grade it.").expect("writes the rubric");
        let mut c = Config::from_toml(&format!("{JUDGES}\n{profiles}")).expect("valid config");
        c.base_dir = dir.to_owned();
        c
    }

    #[tokio::test]
    async fn a_judge_fallback_builds_with_the_parameters_its_form_gives_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = judge_config(
            dir.path(),
            r#"
[profile.p]
components = [
  { scorer = "primary", rubric = "r.md", fallback = "backup" },
  { scorer = "primary", rubric = "r.md", fallback = { scorer = "backup", method = "pairwise" }, name = "own" },
  { rule = "exact_match", fallback = { scorer = "backup", rubric = "r.md" } },
]
"#,
        );
        assert_eq!(check(&c), Vec::<ConfigProblem>::new());
        let judges =
            JudgeSet::new(&c.judge, HashMap::new(), JudgeCache::None).expect("judges build");
        let pipeline = build_pipeline(&c, &[&judges]).expect("builds");
        let fallbacks: Vec<Option<&str>> = pipeline.profiles()["p"]
            .components
            .iter()
            .map(|c| c.fallback.as_ref().map(|(n, _)| n.as_str()))
            .collect();
        assert_eq!(fallbacks, [Some("backup"); 3]);
    }

    #[tokio::test]
    async fn check_rejects_a_fallback_a_worker_could_not_build() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = judge_config(
            dir.path(),
            r#"
[profile.p]
components = [
  { rule = "exact_match", fallback = "backup" },
  { scorer = "primary", rubric = "r.md", fallback = { scorer = "backup", method = "vibes" } },
  { scorer = "primary", rubric = "r.md", fallback = { scorer = "backup" }, name = "bare" },
]
"#,
        );
        let problems = check(&c);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        for want in [
            "profile.p.components[0].fallback: \"backup\": rubric: ",
            "inherits parameters only from a judge component",
            "profile.p.components[1].fallback.method: unknown method \"vibes\"",
            "profile.p.components[2].fallback.rubric: ",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(problems.len(), 3, "{text}");
        // A worker refuses the same configuration, with the same words.
        let judges =
            JudgeSet::new(&c.judge, HashMap::new(), JudgeCache::None).expect("judges build");
        let Err(BuildError::Config(built)) = build_pipeline(&c, &[&judges]) else {
            panic!("a worker built a fallback that check rejects");
        };
        assert_eq!(built, problems);
    }
}
