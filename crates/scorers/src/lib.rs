//! Builds the scorers of every profile from the configuration: rules, remote judges and local
//! reward models, each model or judge created once and shared by the profiles that use it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rewardfleet_core::config::{ComponentConfig, Config, ConfigProblem, ProfileConfig};
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

    /// The scorer named as a fallback.
    fn fallback(&self, name: &str) -> Option<Arc<dyn Scorer>>;

    /// The kind of the scorers this source gives.
    fn kind(&self) -> ComponentKind;
}

/// Builds a pipeline for every profile of `config`, taking model and judge scorers from
/// `sources`.
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
        Ok(Pipeline::new(profiles, config.limits.clone()))
    } else {
        Err(BuildError::Config(problems))
    }
}

fn build_profile(
    name: &str,
    profile: &ProfileConfig,
    config: &Config,
    sources: &[&dyn ScorerSource],
) -> Result<Profile, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let mut components = Vec::new();
    for (i, c) in profile.components.iter().enumerate() {
        let path = format!("profile.{name}.components[{i}]");
        let built = if c.rule.is_some() {
            rewardfleet_rules::build(c, &config.base_dir).map(|s| (s, ComponentKind::Rule))
        } else {
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
        };
        let fallback = match &c.fallback {
            None => None,
            Some(f) => match sources.iter().find_map(|src| src.fallback(f)) {
                Some(s) => Some((f.clone(), s)),
                None => {
                    problems.push(ConfigProblem::new(
                        format!("{path}.fallback"),
                        format!("{f:?} is not a model or judge this process can run"),
                    ));
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
                scorer,
                fallback,
            }),
            Err(ps) => problems.extend(ps.into_iter().map(|p| {
                ConfigProblem::new(
                    if p.path.is_empty() {
                        path.clone()
                    } else {
                        format!("{path}.{}", p.path)
                    },
                    p.message,
                )
            })),
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
/// parameters, judge methods), without loading models or calling judges. Call it inside a Tokio
/// runtime.
pub fn check(config: &Config) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let judges = match JudgeSet::new(&config.judge, HashMap::new(), JudgeCache::None) {
        Ok(j) => Some(j),
        Err(e) => {
            problems.push(ConfigProblem::new("judge", e.to_string()));
            None
        }
    };
    let judge_names: Vec<&str> = config.judge.iter().map(|j| j.name.as_str()).collect();
    for (name, profile) in &config.profile {
        for (i, c) in profile.components.iter().enumerate() {
            let outcome = match (&c.rule, &c.scorer, &judges) {
                (Some(_), _, _) => rewardfleet_rules::build(c, &config.base_dir).map(|_| ()),
                (None, Some(s), Some(judges)) if judge_names.contains(&s.as_str()) => {
                    judges.component(c, &config.base_dir).map(|_| ())
                }
                (None, Some(s), _) if !judge_names.contains(&s.as_str()) => {
                    match c.params.keys().next() {
                        Some(key) => Err(vec![ConfigProblem::new(
                            key.clone(),
                            format!(
                                "unknown parameter for model component {s:?}; a model takes none"
                            ),
                        )]),
                        None => Ok(()),
                    }
                }
                _ => Ok(()),
            };
            if let Err(ps) = outcome {
                let path = format!("profile.{name}.components[{i}]");
                problems.extend(ps.into_iter().map(|p| {
                    ConfigProblem::new(
                        if p.path.is_empty() {
                            path.clone()
                        } else {
                            format!("{path}.{}", p.path)
                        },
                        p.message,
                    )
                }));
            }
        }
    }
    problems
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

    fn fallback(&self, name: &str) -> Option<Arc<dyn Scorer>> {
        // A judge as a fallback grades with its default method (a rubric-free pointwise score).
        let component = ComponentConfig {
            name: None,
            scorer: Some(name.to_owned()),
            rule: None,
            weight: None,
            gate: false,
            gate_threshold: 1.0,
            fallback: None,
            params: toml::Table::new(),
        };
        JudgeSet::component(self, &component, Path::new("")).ok()
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
        if let Some(key) = component.params.keys().next() {
            return Some(Err(vec![ConfigProblem::new(
                key.clone(),
                format!("unknown parameter for model component {name:?}; a model takes none"),
            )]));
        }
        Some(Ok(scorer))
    }

    fn fallback(&self, name: &str) -> Option<Arc<dyn Scorer>> {
        self.scorer(name)
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
}
