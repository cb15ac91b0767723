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
#[serde(from = "ComponentFile", into = "ComponentFile")]
pub struct ComponentConfig {
    /// The key of this component in `Reward.components`; defaults to the scorer's or rule's name.
    pub name: Option<String>,
    /// A `[[model]]` or `[[judge]]` by name.
    pub scorer: Option<String>,
    /// A rule by kind (`exact_match`, `regex`, `max_chars`, `json_valid`, `phrases`, `math_answer` …).
    pub rule: Option<String>,
    /// Weight in the combination; defaults to 1.0, and to 0.0 for a gate.
    pub weight: Option<f64>,
    /// A gate: a value below `gate_threshold` sets the reward to the profile's floor.
    pub gate: bool,
    /// The value a gate needs to pass (1.0: a rule's pass).
    pub gate_threshold: f64,
    /// A model or judge used where this component fails; the reward is then DEGRADED. Written
    /// `fallback = "NAME"` or `fallback = { scorer = "NAME", … }`; see
    /// [`ComponentConfig::fallback_component`] for the parameters each form gives it.
    pub fallback: Option<String>,
    /// The fallback's own parameters when it is written as a table (`None` for the name form,
    /// `Some` — possibly empty — for the table form).
    pub fallback_params: Option<toml::Table>,
    /// Everything else: the rule's or the judge method's own parameters, checked by that scorer.
    pub params: toml::Table,
}

/// What kind of scorer a component uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentKind {
    /// A rule-based verifier.
    Rule,
    /// A local reward model.
    Model,
    /// A remote LLM judge.
    Judge,
}

impl ComponentKind {
    /// The name used by `ListProfiles`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rule => "rule",
            Self::Model => "model",
            Self::Judge => "judge",
        }
    }
}

/// What a component names as its scorer, as written: `rule = "<kind>"` or
/// `scorer = "<model or judge>"`. Whether a scorer is a model or a judge is the configuration's
/// to say ([`super::Config::component_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentSource<'a> {
    /// A rule by kind (`exact_match`, `max_chars`, …).
    Rule(&'a str),
    /// A `[[model]]` or `[[judge]]` by name.
    Scorer(&'a str),
}

/// Judge parameters that make a component a panel; a fallback given by name is one judge and
/// does not inherit them.
pub const PANEL_PARAMS: &[&str] = &["panel", "aggregate", "disagreement_threshold"];

/// A component as written in the file (`fallback` as a name or a table).
#[derive(Serialize, Deserialize)]
struct ComponentFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scorer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<f64>,
    #[serde(default)]
    gate: bool,
    #[serde(default = "default_gate_threshold")]
    gate_threshold: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fallback: Option<FallbackFile>,
    #[serde(flatten)]
    params: toml::Table,
}

/// `fallback = "NAME"` or `fallback = { scorer = "NAME", … }`.
#[derive(Serialize)]
#[serde(untagged)]
enum FallbackFile {
    Name(String),
    Table(FallbackTable),
}

#[derive(Serialize, Deserialize)]
struct FallbackTable {
    /// The fallback model or judge.
    scorer: String,
    /// Its own parameters (a judge's method, rubric, …).
    #[serde(flatten)]
    params: toml::Table,
}

impl<'de> Deserialize<'de> for FallbackFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FallbackFile;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a model or judge name, or a table such as { scorer = \"backup\", rubric = \"rubrics/x.md\" }",
                )
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FallbackFile, E> {
                Ok(FallbackFile::Name(v.to_owned()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FallbackFile, A::Error> {
                FallbackTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(FallbackFile::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl From<ComponentFile> for ComponentConfig {
    fn from(f: ComponentFile) -> Self {
        let (fallback, fallback_params) = match f.fallback {
            None => (None, None),
            Some(FallbackFile::Name(name)) => (Some(name), None),
            Some(FallbackFile::Table(t)) => (Some(t.scorer), Some(t.params)),
        };
        Self {
            name: f.name,
            scorer: f.scorer,
            rule: f.rule,
            weight: f.weight,
            gate: f.gate,
            gate_threshold: f.gate_threshold,
            fallback,
            fallback_params,
            params: f.params,
        }
    }
}

impl From<ComponentConfig> for ComponentFile {
    fn from(c: ComponentConfig) -> Self {
        let fallback = c.fallback.map(|scorer| match c.fallback_params {
            None => FallbackFile::Name(scorer),
            Some(params) => FallbackFile::Table(FallbackTable { scorer, params }),
        });
        Self {
            name: c.name,
            scorer: c.scorer,
            rule: c.rule,
            weight: c.weight,
            gate: c.gate,
            gate_threshold: c.gate_threshold,
            fallback,
            params: c.params,
        }
    }
}

fn default_gate_threshold() -> f64 {
    1.0
}

impl ComponentConfig {
    /// A component that names `scorer` with these parameters (weight 1, no gate, no fallback).
    pub fn scorer(scorer: impl Into<String>, params: toml::Table) -> Self {
        Self {
            name: None,
            scorer: Some(scorer.into()),
            rule: None,
            weight: None,
            gate: false,
            gate_threshold: default_gate_threshold(),
            fallback: None,
            fallback_params: None,
            params,
        }
    }

    /// What this component names as its scorer: its `rule` when it has one, else its `scorer`;
    /// `None` when it names neither. (A component that names both is reported by the profile's
    /// checks; it is built as the rule.)
    pub fn source(&self) -> Option<ComponentSource<'_>> {
        match (self.rule.as_deref(), self.scorer.as_deref()) {
            (Some(rule), _) => Some(ComponentSource::Rule(rule)),
            (None, Some(scorer)) => Some(ComponentSource::Scorer(scorer)),
            (None, None) => None,
        }
    }

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

    /// Whether the fallback is written as a table (`fallback = { scorer = …, … }`).
    pub fn fallback_is_table(&self) -> bool {
        self.fallback.is_some() && self.fallback_params.is_some()
    }

    /// The fallback as a component of its own: what workers and `rewardfleet check` build (both
    /// through the same code), `None` without a fallback. `is_judge` says which names are
    /// `[[judge]]`s.
    ///
    /// - `fallback = { scorer = "backup", method = "rubric", rubric = "…" }`: the table's own
    ///   parameters, nothing inherited.
    /// - `fallback = "backup"` where both this component's scorer and `backup` are judges: the
    ///   same judgement asked of another judge, so `backup` inherits this component's judge
    ///   parameters (`method`, `rubric`, `score_range`, …) except the panel ones
    ///   ([`PANEL_PARAMS`]): a fallback given by name is one judge.
    /// - `fallback = "backup"` otherwise (a model, or a judge behind a rule or a model): no
    ///   parameters. A judge then needs the table form to get its method's parameters.
    pub fn fallback_component(&self, is_judge: impl Fn(&str) -> bool) -> Option<ComponentConfig> {
        let name = self.fallback.as_deref()?;
        let params = match &self.fallback_params {
            Some(own) => own.clone(),
            None if is_judge(name) && self.scorer.as_deref().is_some_and(&is_judge) => self
                .params
                .iter()
                .filter(|(k, _)| !PANEL_PARAMS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => toml::Table::new(),
        };
        Some(Self::scorer(name, params))
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
                let key = if c.fallback_is_table() {
                    format!("{cpath}.fallback.scorer")
                } else {
                    format!("{cpath}.fallback")
                };
                p.push(ConfigProblem::new(
                    key,
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
