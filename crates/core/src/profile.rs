//! A profile at run time: its components' scorers, and how their values become one reward.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{NormalizeKind, OnFailure};
use crate::scorer::Outcome;
use crate::{
    Candidate, FailureReason, JobOutcome, Reward, RewardStatus, ScoreContext, ScoreError, Scorer,
};

pub use crate::config::ComponentKind;
pub use crate::config::NormalizeKind as Normalize;
pub use crate::config::OnFailure as OnComponentFailure;

/// One component, ready to score.
#[derive(Clone)]
pub struct Component {
    /// Key in `Reward.components`.
    pub name: String,
    /// What scores it.
    pub kind: ComponentKind,
    /// Weight in the combination.
    pub weight: f64,
    /// `Some(threshold)` for a gate.
    pub gate: Option<f64>,
    /// The scorer.
    pub scorer: Arc<dyn Scorer>,
    /// Used for the candidates the scorer failed on; the reward is then DEGRADED.
    pub fallback: Option<(String, Arc<dyn Scorer>)>,
}

/// A profile, ready to score groups.
#[derive(Clone)]
pub struct Profile {
    /// Its name.
    pub name: String,
    /// Its components, in order (the order of the weighted sum).
    pub components: Vec<Component>,
    /// Normalisation within a group.
    pub normalize: NormalizeKind,
    /// Bounds for [`NormalizeKind::Clip`].
    pub clip: (f64, f64),
    /// What a failed component does.
    pub on_component_failure: OnFailure,
    /// Reward of a candidate that fails a gate.
    pub floor: f64,
}

impl Profile {
    /// Scores one group: every component runs concurrently, then values are combined. The
    /// outcome says whether a FAILED reward came from an error that may go away if the job is
    /// tried again later (a judge down, a timeout).
    pub async fn score_group(&self, ctx: &ScoreContext, group: &[Candidate]) -> JobOutcome {
        self.score_group_in(ctx, group, &self.component_spans(group.len()))
            .await
    }

    /// One span per component (`score <component>`), for `candidates` candidates: a job makes
    /// them once and scores each of its groups in them ([`Profile::score_group_in`]), so a
    /// trace shows each scorer once per job, not once per group.
    pub fn component_spans(&self, candidates: usize) -> Vec<tracing::Span> {
        self.components
            .iter()
            .map(|c| {
                tracing::info_span!(
                    "score",
                    otel.name = %format_args!("score {}", c.name),
                    rewardfleet.component = %c.name,
                    rewardfleet.scorer.kind = c.kind.as_str(),
                    rewardfleet.candidates = candidates,
                    error.type = tracing::field::Empty,
                )
            })
            .collect()
    }

    /// As [`Profile::score_group`], each component's scorer running in its span of `spans`
    /// (from [`Profile::component_spans`]).
    pub async fn score_group_in(
        &self,
        ctx: &ScoreContext,
        group: &[Candidate],
        spans: &[tracing::Span],
    ) -> JobOutcome {
        use tracing::Instrument;
        let outcomes =
            futures::future::join_all(self.components.iter().enumerate().map(|(i, c)| {
                let span = spans.get(i).cloned().unwrap_or_else(tracing::Span::none);
                score_component(c, ctx, group).instrument(span)
            }))
            .await;
        let rewards = self.combine(group, &outcomes);
        let retry = rewards.iter().enumerate().any(|(i, r)| {
            r.status() == RewardStatus::Failed
                && outcomes
                    .iter()
                    .any(|o| matches!(o.get(i), Some(Err(e)) if e.retryable))
        });
        JobOutcome {
            rewards,
            retry,
            judge_tokens: ctx.judge_tokens.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Combines per-component outcomes (`outcomes[component][candidate]`) into rewards. Pure and
    /// deterministic: the same outcomes give the same rewards, bit for bit.
    pub fn combine(&self, group: &[Candidate], outcomes: &[Vec<Outcome>]) -> Vec<Reward> {
        let mut rewards: Vec<Reward> = Vec::with_capacity(group.len());
        // `true` for a candidate that takes part in normalisation.
        let mut normalized: Vec<bool> = Vec::with_capacity(group.len());
        let total_weight: f64 = self.components.iter().map(|c| c.weight).sum();
        for (i, candidate) in group.iter().enumerate() {
            let mut reward = Reward {
                candidate_id: candidate.id.clone(),
                status: RewardStatus::Ok as i32,
                ..Default::default()
            };
            let mut weighted = 0.0;
            let mut present_weight = 0.0;
            let mut gated: Option<String> = None;
            let mut failure: Option<String> = None;
            for (component, outcome) in self.components.iter().zip(outcomes) {
                let outcome = outcome.get(i).cloned().unwrap_or_else(|| {
                    Err(ScoreError::permanent(
                        FailureReason::ScorerError,
                        "the scorer returned fewer values than candidates",
                    ))
                });
                match outcome {
                    Ok(score) if score.value.is_finite() => {
                        reward
                            .components
                            .insert(component.name.clone(), score.value);
                        for flag in score.flags {
                            push_flag(&mut reward.flags, flag);
                        }
                        if score.degraded {
                            reward.status = RewardStatus::Degraded as i32;
                        }
                        match component.gate {
                            Some(threshold) => {
                                if score.value < threshold && gated.is_none() {
                                    gated = Some(component.name.clone());
                                }
                                if component.weight > 0.0 {
                                    weighted += component.weight * score.value;
                                    present_weight += component.weight;
                                }
                            }
                            None => {
                                weighted += component.weight * score.value;
                                present_weight += component.weight;
                            }
                        }
                    }
                    Ok(score) => {
                        let e = ScoreError::permanent(
                            FailureReason::NonFinite,
                            format!("the scorer gave {}", score.value),
                        );
                        self.component_failed(component, &e, &mut reward, &mut failure);
                    }
                    Err(e) => self.component_failed(component, &e, &mut reward, &mut failure),
                }
            }
            if let Some(error) = failure {
                reward.status = RewardStatus::Failed as i32;
                reward.error = error;
                normalized.push(false);
            } else if let Some(gate) = gated {
                reward.value = self.floor;
                push_flag(&mut reward.flags, format!("gate_failed:{gate}"));
                normalized.push(false);
            } else if present_weight <= 0.0 {
                reward.status = RewardStatus::Failed as i32;
                reward.error =
                    "every weighted component failed; no reward could be produced".into();
                normalized.push(false);
            } else {
                // Renormalise: the components present keep the profile's total weight.
                reward.value = weighted * (total_weight / present_weight);
                normalized.push(true);
            }
            rewards.push(reward);
        }
        self.normalize_group(&mut rewards, &normalized);
        rewards
    }

    fn component_failed(
        &self,
        component: &Component,
        e: &ScoreError,
        reward: &mut Reward,
        failure: &mut Option<String>,
    ) {
        match (self.on_component_failure, component.gate) {
            (OnFailure::Fail, _) => {
                if failure.is_none() {
                    *failure = Some(format!(
                        "component {:?} failed ({}): {}",
                        component.name, e.reason, e.message
                    ));
                }
            }
            (OnFailure::Renormalize, gate) => {
                let what = if gate.is_some() {
                    "gate_skipped"
                } else {
                    "component_failed"
                };
                push_flag(
                    &mut reward.flags,
                    format!("{what}:{}:{}", component.name, e.reason),
                );
                if reward.status != RewardStatus::Failed as i32 {
                    reward.status = RewardStatus::Degraded as i32;
                }
            }
        }
    }

    fn normalize_group(&self, rewards: &mut [Reward], take_part: &[bool]) {
        let idx: Vec<usize> = (0..rewards.len()).filter(|&i| take_part[i]).collect();
        match self.normalize {
            NormalizeKind::None => {}
            NormalizeKind::Clip => {
                let (lo, hi) = self.clip;
                for &i in &idx {
                    rewards[i].value = rewards[i].value.clamp(lo, hi);
                }
            }
            NormalizeKind::GroupZscore => {
                if idx.is_empty() {
                    return;
                }
                let n = idx.len() as f64;
                let mean = idx.iter().map(|&i| rewards[i].value).sum::<f64>() / n;
                let var = idx
                    .iter()
                    .map(|&i| (rewards[i].value - mean).powi(2))
                    .sum::<f64>()
                    / n;
                let std = var.sqrt();
                for &i in &idx {
                    rewards[i].value = if std > 1e-12 {
                        (rewards[i].value - mean) / std
                    } else {
                        0.0
                    };
                }
            }
            NormalizeKind::GroupRank => {
                if idx.len() == 1 {
                    rewards[idx[0]].value = 0.5;
                    return;
                }
                let values: Vec<f64> = idx.iter().map(|&i| rewards[i].value).collect();
                let ranks = average_ranks(&values);
                let denominator = (idx.len() - 1) as f64;
                for (k, &i) in idx.iter().enumerate() {
                    rewards[i].value = ranks[k] / denominator;
                }
            }
        }
    }
}

async fn score_component(c: &Component, ctx: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
    let outcomes = score_with_fallback(c, ctx, group).await;
    if let Some(Err(e)) = outcomes.iter().find(|o| o.is_err()) {
        tracing::Span::current().record("error.type", e.reason.as_str());
    }
    outcomes
}

async fn score_with_fallback(
    c: &Component,
    ctx: &ScoreContext,
    group: &[Candidate],
) -> Vec<Outcome> {
    let mut outcomes = c.scorer.score(ctx, group).await;
    let Some((fallback_name, fallback)) = &c.fallback else {
        return outcomes;
    };
    let failed: Vec<usize> = (0..group.len())
        .filter(|&i| !matches!(outcomes.get(i), Some(Ok(_))))
        .collect();
    if failed.is_empty() {
        return outcomes;
    }
    outcomes.resize_with(group.len(), || {
        Err(ScoreError::permanent(
            FailureReason::ScorerError,
            "no value returned",
        ))
    });
    // The fallback sees the whole group (pairwise scorers need it) only when all failed.
    let subset: Vec<Candidate> = failed.iter().map(|&i| group[i].clone()).collect();
    let rescored = fallback.score(ctx, &subset).await;
    for (k, &i) in failed.iter().enumerate() {
        let primary_reason = match &outcomes[i] {
            Err(e) => e.reason,
            Ok(_) => FailureReason::NonFinite,
        };
        if let Some(Ok(score)) = rescored.get(k) {
            let mut score = score.clone();
            score.degraded = true;
            score.flags.push(format!(
                "fallback:{}:{fallback_name}:{primary_reason}",
                c.name
            ));
            outcomes[i] = Ok(score);
        }
    }
    outcomes
}

fn push_flag(flags: &mut Vec<String>, flag: String) {
    if !flags.contains(&flag) {
        flags.push(flag);
    }
}

/// 0-based ranks, ties sharing their mean rank.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && values[order[end + 1]] == values[order[start]] {
            end += 1;
        }
        let mean_rank = (start + end) as f64 / 2.0;
        for &k in &order[start..=end] {
            ranks[k] = mean_rank;
        }
        start = end + 1;
    }
    ranks
}

/// Profiles by name.
pub type Profiles = HashMap<String, Arc<Profile>>;

#[cfg(test)]
mod tests;
