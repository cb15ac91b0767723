//! Judging methods (rubric, logprob-expected, pairwise, reference-guided) and panels of judges:
//! how a group of candidates becomes values. The component parameters that choose them are read
//! in [`parse`], what the judges are asked is written in [`prompt`].

mod factuality;
mod parse;
mod prompt;

use rewardfleet_core::FailureReason;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::join_all;
use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, Score, ScoreContext, ScoreError, Scorer};

use crate::client::Completion;
use crate::injection::{
    INJECTION_FLAG, INJECTION_JUDGE_FLAG, INJECTION_SCREEN_FLAG, Screened, screen,
};
use crate::judge::Judge;
use crate::verdict::{
    Preference, parse_correct, parse_manipulation_attempt, parse_preference, parse_score,
};

pub use factuality::{
    ABSTAINED_FLAG as FACTUALITY_ABSTAINED_FLAG,
    SUPPORTED_FLAG_PREFIX as FACTUALITY_SUPPORTED_FLAG,
    TRUNCATED_FLAG as FACTUALITY_TRUNCATED_FLAG, parse_supported_flag,
};
pub(crate) use parse::{Spec, parse_spec};

/// Flag: a pairwise verdict followed the position of the candidates, not their content.
pub const POSITION_INCONSISTENT_FLAG: &str = "position_inconsistent";
/// Flag: the judges of a panel disagree by more than the component's threshold.
pub const DISAGREEMENT_FLAG: &str = "judge_disagreement";
/// Flag: some judges of a panel gave no value; the others were aggregated.
pub const PANEL_PARTIAL_FLAG: &str = "judge_panel_partial";
/// Flag: the endpoint returned no logprobs; the parsed score was used.
pub const NO_LOGPROBS_FLAG: &str = "judge_logprobs_unavailable";
/// Flag: a pairwise group of one candidate (nothing to compare with; value 0.5).
pub const NO_OPPONENT_FLAG: &str = "pairwise_no_opponent";

/// How a judge grades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Pointwise score against a rubric, normalised to [0, 1].
    Rubric,
    /// Expected score Σ s·p(s) over the score token's top logprobs (G-Eval style).
    Logprob,
    /// Win rate within the group, both orders, neutral labels.
    Pairwise,
    /// Correct (1) or incorrect (0) against the candidate's `reference`.
    Reference,
    /// The supported fraction of the response's atomic claims, verified against the candidate's
    /// `reference` (FActScore style).
    Factuality,
}

impl Method {
    /// The method named `s` (with its aliases), if any.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "rubric" => Some(Self::Rubric),
            "logprob" | "logprob_expected" | "logprob-expected" => Some(Self::Logprob),
            "pairwise" => Some(Self::Pairwise),
            "reference" | "reference_guided" | "reference-guided" => Some(Self::Reference),
            "factuality" | "factscore" => Some(Self::Factuality),
            _ => None,
        }
    }

    /// The version of the method's prompt (part of the cache key): bump it with the prompt.
    pub(crate) fn template(self, strict: bool) -> &'static str {
        match (self, strict) {
            (Self::Rubric, false) => "rubric/v2",
            (Self::Rubric, true) => "rubric/v2/strict",
            (Self::Logprob, false) => "logprob/v1",
            (Self::Logprob, true) => "logprob/v1/strict",
            (Self::Pairwise, false) => "pairwise/v1",
            (Self::Pairwise, true) => "pairwise/v1/strict",
            (Self::Reference, false) => "reference/v2",
            (Self::Reference, true) => "reference/v2/strict",
            // The factuality method's two calls name their own templates (factuality.rs).
            (Self::Factuality, false) => "factuality/v1",
            (Self::Factuality, true) => "factuality/v1/strict",
        }
    }
}

/// How the values of a panel's judges become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Arithmetic mean.
    Mean,
    /// Median (mean of the middle two for an even count).
    Median,
    /// The lowest value (the strictest judge).
    Min,
}

impl Aggregate {
    fn apply(self, values: &mut [f64]) -> f64 {
        match self {
            Self::Mean => values.iter().sum::<f64>() / values.len() as f64,
            Self::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
            Self::Median => {
                values.sort_by(f64::total_cmp);
                let n = values.len();
                if n % 2 == 1 {
                    values[n / 2]
                } else {
                    (values[n / 2 - 1] + values[n / 2]) / 2.0
                }
            }
        }
    }
}

/// What a suspected injection does to the component's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInjection {
    /// Judge as usual, flag `judge_injection_suspected`.
    Flag,
    /// No call; value 0 with the flag (with `gate = true` the reward drops to the floor).
    Zero,
    /// No call; the component fails with reason `judge_injection_suspected` (the component's
    /// `fallback`, or the profile's `on_component_failure`, decides the rest).
    Fail,
}

/// Scores one profile component with one judge or a panel.
pub(crate) struct JudgeScorer {
    pub(crate) spec: Spec,
    pub(crate) judges: Vec<Arc<Judge>>,
}

/// A score on the scale `min..=max` as a value in [0, 1].
fn normalise(score: f64, min: i64, max: i64) -> f64 {
    ((score - min as f64) / (max - min) as f64).clamp(0.0, 1.0)
}

impl JudgeScorer {
    /// Reads a pointwise answer as a normalised score.
    fn read(&self, c: &Completion) -> Result<Score, String> {
        let (min, max) = (self.spec.min, self.spec.max);
        match self.spec.method {
            Method::Rubric => parse_score(&c.content, min as f64, max as f64)
                .map(|s| Score::new(normalise(s, min, max)))
                .map_err(|e| e.0),
            Method::Logprob => match expected_from_logprobs(c, min, max) {
                Some(s) => Ok(Score::new(normalise(s, min, max))),
                None => parse_score(&c.content, min as f64, max as f64)
                    .map(|s| Score::new(normalise(s, min, max)).with_flag(NO_LOGPROBS_FLAG))
                    .map_err(|e| e.0),
            },
            Method::Reference => parse_correct(&c.content)
                .map(Score::pass_fail)
                .map_err(|e| e.0),
            Method::Pairwise | Method::Factuality => Err("not a one-call method".into()),
        }
    }

    /// One candidate, one judge; a parse failure is retried once with a stricter instruction.
    async fn pointwise(
        &self,
        judge: &Judge,
        ctx: &ScoreContext,
        c: &Candidate,
        response: &Screened,
    ) -> Outcome {
        let user = prompt::pointwise(&self.spec, c, response)?;
        let (logprobs, format) = match self.spec.method {
            Method::Logprob => (true, None),
            Method::Reference => (false, Some(prompt::correct_schema())),
            _ => (
                false,
                Some(prompt::score_schema(self.spec.min, self.spec.max)),
            ),
        };
        let mut last = String::new();
        for strict in [false, true] {
            let req = prompt::request(judge, user.clone(), strict, format.clone(), logprobs);
            let template = self.spec.method.template(strict);
            let completion = judge
                .ask(ctx, template, req, |c| self.read(c).is_ok())
                .await?;
            match self.read(&completion) {
                // The judge layer of the injection defence (rubric and reference verdicts).
                Ok(score) if parse_manipulation_attempt(&completion.content) => {
                    return Ok(score.with_flag(INJECTION_JUDGE_FLAG));
                }
                Ok(score) => return Ok(score),
                Err(e) => last = e,
            }
        }
        Err(ScoreError::permanent(
            FailureReason::JudgeParseError,
            format!(
                "judge {:?} gave no readable verdict twice: {last}",
                judge.name()
            ),
        ))
    }

    /// One ordered comparison: `first` shown as A, `second` as B.
    async fn compare(
        &self,
        judge: &Judge,
        ctx: &ScoreContext,
        first: (&Candidate, &Screened),
        second: (&Candidate, &Screened),
    ) -> Result<Preference, ScoreError> {
        let user = prompt::pairwise(&self.spec, first, second);
        let mut last = String::new();
        for strict in [false, true] {
            let req = prompt::request(
                judge,
                user.clone(),
                strict,
                Some(prompt::winner_schema()),
                false,
            );
            let template = self.spec.method.template(strict);
            let completion = judge
                .ask(ctx, template, req, |c| parse_preference(&c.content).is_ok())
                .await?;
            match parse_preference(&completion.content) {
                Ok(p) => return Ok(p),
                Err(e) => last = e.0,
            }
        }
        Err(ScoreError::permanent(
            FailureReason::JudgeParseError,
            format!(
                "judge {:?} gave no readable verdict twice: {last}",
                judge.name()
            ),
        ))
    }

    /// Win rates of a group with one judge.
    async fn pairwise(
        &self,
        judge: &Judge,
        ctx: &ScoreContext,
        group: &[Candidate],
        screened: &[Screened],
    ) -> Vec<Outcome> {
        let n = group.len();
        if n == 1 {
            return vec![Ok(Score::new(0.5).with_flag(NO_OPPONENT_FLAG))];
        }
        let pairs: Vec<(usize, usize)> = if n <= self.spec.all_pairs_up_to {
            (0..n)
                .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                .collect()
        } else {
            let a = self.spec.anchor.min(n - 1);
            (0..n).filter(|&j| j != a).map(|j| (a, j)).collect()
        };
        let verdicts = join_all(pairs.iter().map(|&(i, j)| async move {
            let (forward, backward) = futures::join!(
                self.compare(
                    judge,
                    ctx,
                    (&group[i], &screened[i]),
                    (&group[j], &screened[j])
                ),
                self.compare(
                    judge,
                    ctx,
                    (&group[j], &screened[j]),
                    (&group[i], &screened[i])
                ),
            );
            (i, j, forward, backward)
        }))
        .await;
        let mut points = vec![0.0; n];
        let mut comparisons = vec![0u32; n];
        let mut inconsistent = vec![false; n];
        let mut errors: Vec<Option<ScoreError>> = vec![None; n];
        for (i, j, forward, backward) in verdicts {
            // forward: i shown as A; backward: j shown as A.
            for (shown_first, shown_second, verdict) in [(i, j, &forward), (j, i, &backward)] {
                match verdict {
                    Ok(Preference::First) => points[shown_first] += 1.0,
                    Ok(Preference::Second) => points[shown_second] += 1.0,
                    Ok(Preference::Tie) => {
                        points[shown_first] += 0.5;
                        points[shown_second] += 0.5;
                    }
                    Err(e) => {
                        for k in [i, j] {
                            errors[k].get_or_insert_with(|| e.clone());
                        }
                        continue;
                    }
                }
                comparisons[i] += 1;
                comparisons[j] += 1;
            }
            // The same label won in both orders: the verdict followed the position.
            if let (Ok(f), Ok(b)) = (&forward, &backward)
                && f == b
                && *f != Preference::Tie
            {
                inconsistent[i] = true;
                inconsistent[j] = true;
            }
        }
        (0..n)
            .map(|k| {
                if comparisons[k] == 0 {
                    return Err(errors[k].take().unwrap_or_else(|| {
                        ScoreError::permanent(
                            FailureReason::JudgeError,
                            "no comparison could be made",
                        )
                    }));
                }
                let mut score = Score::new(points[k] / f64::from(comparisons[k]));
                if inconsistent[k] {
                    score = score.with_flag(POSITION_INCONSISTENT_FLAG);
                }
                Ok(score)
            })
            .collect()
    }

    /// Every candidate of the group with one judge.
    async fn with_judge(
        &self,
        judge: &Judge,
        ctx: &ScoreContext,
        group: &[Candidate],
        screened: &[Screened],
    ) -> Vec<Outcome> {
        if self.spec.method == Method::Pairwise {
            return self.pairwise(judge, ctx, group, screened).await;
        }
        join_all(group.iter().zip(screened).map(|(c, s)| async move {
            if s.suspected() && self.spec.on_injection != OnInjection::Flag {
                // Decided below without spending a call.
                return Ok(Score::new(0.0));
            }
            if self.spec.method == Method::Factuality {
                return self.factuality(judge, ctx, c, s).await;
            }
            self.pointwise(judge, ctx, c, s).await
        }))
        .await
    }

    fn aggregate(&self, per_judge: Vec<Vec<Outcome>>, n: usize) -> Vec<Outcome> {
        if per_judge.len() == 1 {
            return per_judge.into_iter().next().unwrap_or_default();
        }
        (0..n)
            .map(|k| {
                let mut values = Vec::new();
                let mut flags: Vec<String> = Vec::new();
                let mut first_error = None;
                for outcomes in &per_judge {
                    match outcomes.get(k) {
                        Some(Ok(s)) => {
                            values.push(s.value);
                            for f in &s.flags {
                                if !flags.contains(f) {
                                    flags.push(f.clone());
                                }
                            }
                        }
                        Some(Err(e)) => {
                            first_error.get_or_insert_with(|| e.clone());
                        }
                        None => {}
                    }
                }
                if values.is_empty() {
                    return Err(first_error.unwrap_or_else(|| {
                        ScoreError::permanent(
                            FailureReason::JudgeError,
                            "no judge of the panel gave a value",
                        )
                    }));
                }
                let spread = values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    - values.iter().copied().fold(f64::INFINITY, f64::min);
                let mut score = Score::new(self.spec.aggregate.apply(&mut values));
                score.flags = flags;
                if spread > self.spec.disagreement_threshold {
                    score = score.with_flag(DISAGREEMENT_FLAG);
                }
                if first_error.is_some() {
                    score = score.with_flag(PANEL_PARTIAL_FLAG);
                }
                Ok(score)
            })
            .collect()
    }
}

/// Σ s·p(s) over the valid score tokens of the first output token that is a score.
fn expected_from_logprobs(c: &Completion, min: i64, max: i64) -> Option<f64> {
    let tokens = c.logprobs.as_ref()?;
    let valid = |t: &str| {
        t.trim()
            .parse::<i64>()
            .ok()
            .filter(|s| (min..=max).contains(s))
    };
    let token = tokens.iter().find(|t| valid(&t.token).is_some())?;
    let mut by_score = std::collections::BTreeMap::<i64, f64>::new();
    for (t, lp) in &token.top {
        if let Some(s) = valid(t)
            && lp.is_finite()
        {
            // " 7" and "7" are the same score.
            *by_score.entry(s).or_default() += lp.exp();
        }
    }
    let total: f64 = by_score.values().sum();
    (total > 0.0).then(|| by_score.iter().map(|(s, p)| *s as f64 * p).sum::<f64>() / total)
}

#[async_trait]
impl Scorer for JudgeScorer {
    async fn score(&self, ctx: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
        if group.is_empty() {
            return Vec::new();
        }
        let screened: Vec<Screened> = group.iter().map(|c| screen(&c.response)).collect();
        for (c, s) in group.iter().zip(&screened) {
            if s.suspected() {
                tracing::info!(candidate = %c.id, reasons = ?s.reasons, "judge injection suspected");
            }
        }
        let per_judge = join_all(
            self.judges
                .iter()
                .map(|j| self.with_judge(j, ctx, group, &screened)),
        )
        .await;
        let mut outcomes = self.aggregate(per_judge, group.len());
        for (outcome, s) in outcomes.iter_mut().zip(&screened) {
            // Which layers saw an injection: the screen before the call, the judge in its verdict.
            let mut layers = Vec::new();
            if s.suspected() {
                layers.push(INJECTION_SCREEN_FLAG);
            }
            if outcome
                .as_ref()
                .is_ok_and(|o| o.flags.iter().any(|f| f == INJECTION_JUDGE_FLAG))
            {
                layers.push(INJECTION_JUDGE_FLAG);
            }
            if layers.is_empty() {
                continue;
            }
            let mut why: Vec<&str> = s.reasons.clone();
            if layers.contains(&INJECTION_JUDGE_FLAG) {
                why.push("the judge reported a manipulation attempt");
            }
            let flagged = |mut score: Score| {
                score.flags.retain(|f| f != INJECTION_JUDGE_FLAG);
                score = score.with_flag(INJECTION_FLAG);
                for layer in &layers {
                    score = score.with_flag(*layer);
                }
                score
            };
            *outcome = match (self.spec.on_injection, outcome.clone()) {
                (OnInjection::Fail, _) => Err(ScoreError::permanent(
                    FailureReason::JudgeInjectionSuspected,
                    format!(
                        "the response addresses the judge ({}); on_injection = \"fail\"",
                        why.join(", ")
                    ),
                )),
                (OnInjection::Zero, Ok(score)) => Ok(flagged(Score {
                    value: 0.0,
                    ..score
                })),
                (OnInjection::Zero, Err(_)) => Ok(flagged(Score::new(0.0))),
                (OnInjection::Flag, Ok(score)) => Ok(flagged(score)),
                (OnInjection::Flag, Err(e)) => Err(e),
            };
        }
        outcomes
    }

    fn has_room(&self) -> bool {
        self.judges.iter().all(|j| j.limits.has_room())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::TokenLogprobs;

    #[test]
    fn aggregates() {
        assert_eq!(Aggregate::Median.apply(&mut [0.9, 0.1, 0.5]), 0.5);
        assert_eq!(Aggregate::Median.apply(&mut [0.9, 0.1, 0.5, 0.7]), 0.6);
        assert_eq!(Aggregate::Min.apply(&mut [0.9, 0.1, 0.5]), 0.1);
        assert!((Aggregate::Mean.apply(&mut [0.9, 0.1, 0.5]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn expected_score_ignores_tokens_that_are_not_scores() {
        let c = Completion {
            content: "7".into(),
            logprobs: Some(vec![TokenLogprobs {
                token: "7".into(),
                top: vec![
                    ("7".into(), 0.5f64.ln()),
                    (" 8".into(), 0.25f64.ln()),
                    ("8".into(), 0.05f64.ln()),
                    ("The".into(), 0.1f64.ln()),
                    ("11".into(), 0.1f64.ln()),
                ],
            }]),
            usage: Default::default(),
            model: None,
        };
        let e = expected_from_logprobs(&c, 1, 10).unwrap_or_default();
        assert!((e - (7.0 * 0.5 + 8.0 * 0.3) / 0.8).abs() < 1e-12, "{e}");
    }
}
