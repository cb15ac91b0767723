//! `[profile.NAME]`: which scorers grade a candidate and how their values combine.

use serde::{Deserialize, Serialize};

use super::{Config, ConfigProblem};

/// A named profile, as a trainer asks for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileConfig {
    /// What this profile is for (shown by `ListProfiles`).
    #[serde(default)]
    pub description: Option<String>,
    /// The scorers and rules, in order; their values are combined by weight.
    pub components: Vec<ComponentConfig>,
    /// How final values are normalised within a group.
    #[serde(default)]
    pub normalize: NormalizeKind,
    /// `[min, max]` bounds for `normalize = "clip"`.
    #[serde(default)]
    pub clip: Option<[f64; 2]>,
    /// What a component that produced no value does to the reward.
    #[serde(default)]
    pub on_component_failure: OnFailure,
    /// The reward of a candidate that fails a gate.
    #[serde(default)]
    pub floor: f64,
}

/// One component of a profile: a model or judge by name, or a rule with its parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentConfig {
    /// The key of this component in `Reward.components`; defaults to the scorer's or rule's name.
    #[serde(default)]
    pub name: Option<String>,
    /// A `[[model]]` or `[[judge]]` by name.
    #[serde(default)]
    pub scorer: Option<String>,
    /// A rule by kind (`exact_match`, `regex`, `max_chars`, `json_valid`, `phrases`, `math_answer` …).
    #[serde(default)]
    pub rule: Option<String>,
    /// Weight in the combination; defaults to 1.0, and to 0.0 for a gate.
    #[serde(default)]
    pub weight: Option<f64>,
    /// A gate: a value below `gate_threshold` sets the reward to the profile's floor.
    #[serde(default)]
    pub gate: bool,
    /// The value a gate needs to pass (1.0: a rule's pass).
    #[serde(default = "default_gate_threshold")]
    pub gate_threshold: f64,
    /// A model or judge used when this component fails; the reward is then DEGRADED.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Everything else: the rule's or the judge method's own parameters, checked by that scorer.
    #[serde(flatten)]
    pub params: toml::Table,
}

fn default_gate_threshold() -> f64 {
    1.0
}

impl ComponentConfig {
    /// The component's key in `Reward.components`.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.scorer.clone())
            .or_else(|| self.rule.clone())
            .unwrap_or_default()
    }

    /// The weight in the combination (0.0 for a gate unless set).
    pub fn effective_weight(&self) -> f64 {
        self.weight.unwrap_or(if self.gate { 0.0 } else { 1.0 })
    }
}

/// How final values are normalised within a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalizeKind {
    /// The weighted value as is.
    #[default]
    None,
    /// (value − group mean) / group standard deviation; 0 when the group has no spread.
    GroupZscore,
    /// Rank within the group scaled to [0, 1] (ties share their mean rank).
    GroupRank,
    /// Clamped to the profile's `clip = [min, max]`.
    Clip,
}

impl NormalizeKind {
    /// The name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::GroupZscore => "group_zscore",
            Self::GroupRank => "group_rank",
            Self::Clip => "clip",
        }
    }
}

/// What a component that produced no value does to the reward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Leave the component out, scale the others' weights up to the same total; DEGRADED.
    #[default]
    Renormalize,
    /// The reward is FAILED, naming the component.
    Fail,
}

impl OnFailure {
    /// The name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Renormalize => "renormalize",
            Self::Fail => "fail",
        }
    }
}

impl ProfileConfig {
    pub(crate) fn problems(&self, path: &str, config: &Config, p: &mut Vec<ConfigProblem>) {
        if self.components.is_empty() {
            p.push(ConfigProblem::new(
                format!("{path}.components"),
                "a profile needs at least one component",
            ));
        }
        let known: Vec<&str> = config
            .model
            .iter()
            .map(|m| m.name.as_str())
            .chain(config.judge.iter().map(|j| j.name.as_str()))
            .collect();
        let mut names = std::collections::BTreeSet::new();
        let mut total_weight = 0.0;
        for (i, c) in self.components.iter().enumerate() {
            let cpath = format!("{path}.components[{i}]");
            match (&c.scorer, &c.rule) {
                (Some(_), Some(_)) => p.push(ConfigProblem::new(
                    &cpath,
                    "give either `scorer` (a model or judge) or `rule`, not both",
                )),
                (None, None) => p.push(ConfigProblem::new(
                    &cpath,
                    "give `scorer` (a model or judge by name) or `rule`",
                )),
                (Some(s), None) if !known.contains(&s.as_str()) => p.push(ConfigProblem::new(
                    format!("{cpath}.scorer"),
                    format!("unknown scorer {s:?}; known: {}", list(&known)),
                )),
                _ => {}
            }
            if let Some(f) = &c.fallback
                && !known.contains(&f.as_str())
            {
                p.push(ConfigProblem::new(
                    format!("{cpath}.fallback"),
                    format!("unknown scorer {f:?}; known: {}", list(&known)),
                ));
            }
            let weight = c.effective_weight();
            if !weight.is_finite() || weight < 0.0 {
                p.push(ConfigProblem::new(
                    format!("{cpath}.weight"),
                    format!("{weight} is not allowed; use a finite number ≥ 0"),
                ));
            } else {
                total_weight += weight;
            }
            if !c.gate_threshold.is_finite() {
                p.push(ConfigProblem::new(
                    format!("{cpath}.gate_threshold"),
                    "must be a finite number",
                ));
            }
            let name = c.display_name();
            if !name.is_empty() && !names.insert(name.clone()) {
                p.push(ConfigProblem::new(
                    format!("{cpath}.name"),
                    format!("component name {name:?} is used twice in this profile; set `name` to tell them apart"),
                ));
            }
        }
        if !self.components.is_empty() && total_weight <= 0.0 {
            p.push(ConfigProblem::new(
                format!("{path}.components"),
                "the weights of the non-gate components add up to 0; give at least one a weight > 0",
            ));
        }
        match (self.normalize, self.clip) {
            (NormalizeKind::Clip, None) => p.push(ConfigProblem::new(
                format!("{path}.clip"),
                "normalize = \"clip\" needs clip = [min, max]",
            )),
            (NormalizeKind::Clip, Some([lo, hi]))
                if !(lo.is_finite() && hi.is_finite() && lo < hi) =>
            {
                p.push(ConfigProblem::new(
                    format!("{path}.clip"),
                    format!("[{lo}, {hi}] is not allowed; use finite bounds with min < max"),
                ))
            }
            (NormalizeKind::Clip, Some(_)) => {}
            (_, Some(_)) => p.push(ConfigProblem::new(
                format!("{path}.clip"),
                "only used with normalize = \"clip\"",
            )),
            (_, None) => {}
        }
        if !self.floor.is_finite() {
            p.push(ConfigProblem::new(
                format!("{path}.floor"),
                "must be a finite number",
            ));
        }
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none (add a [[model]] or [[judge]])".into()
    } else {
        names.join(", ")
    }
}
