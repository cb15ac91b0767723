//! One job in, its rewards out: the scoring path shared by embedded mode and the fleet's workers.

use std::collections::HashMap;
use std::sync::Arc;

use crate::job::into_groups;
use crate::profile::Profiles;
use crate::{Job, Reward, ScoreContext};

/// Scores jobs with the configured profiles.
#[derive(Clone)]
pub struct Pipeline {
    profiles: Arc<Profiles>,
}

impl Pipeline {
    /// A pipeline over these profiles.
    pub fn new(profiles: Profiles) -> Self {
        Self {
            profiles: Arc::new(profiles),
        }
    }

    /// The profiles by name.
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// Whether every scorer of every profile has room for more work ([`Scorer::has_room`]): a
    /// worker takes another job only then, so admission follows what the scorers can take
    /// (tokens for a model, judgements for a judge) rather than a count of jobs.
    ///
    /// [`Scorer::has_room`]: crate::Scorer::has_room
    pub fn has_room(&self) -> bool {
        self.profiles
            .values()
            .flat_map(|p| &p.components)
            .all(|c| c.scorer.has_room())
    }

    /// Scores every candidate of the job: one reward per candidate, in the job's order, and
    /// whether trying the job again later may help (see [`JobOutcome::retry`]). Groups are
    /// scored concurrently. Candidates were validated by the gateway that accepted them.
    pub async fn score_job(&self, job: &Job) -> JobOutcome {
        let Some(profile) = self.profiles.get(&job.profile) else {
            let mut known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            known.sort_unstable();
            let error = format!(
                "unknown profile {:?}; known: {}",
                job.profile,
                known.join(", ")
            );
            return JobOutcome {
                judge_tokens: 0,
                rewards: job
                    .candidates
                    .iter()
                    .map(|c| Reward::failed(&c.id, error.clone()))
                    .collect(),
                retry: false,
            };
        };
        let ctx = ScoreContext {
            session_id: job.session_id.clone(),
            job_id: job.job_id.clone(),
            profile: job.profile.clone(),
            fresh: false,
            judge_tokens: Default::default(),
        };
        let groups = into_groups(job.candidates.clone());
        let spans = profile.component_spans(job.candidates.len());
        let scored = futures::future::join_all(
            groups
                .iter()
                .map(|g| profile.score_group_in(&ctx, g, &spans)),
        )
        .await;
        let mut by_id: HashMap<String, Reward> = HashMap::with_capacity(job.candidates.len());
        let mut retry = false;
        for outcome in scored {
            retry |= outcome.retry;
            for reward in outcome.rewards {
                by_id.insert(reward.candidate_id.clone(), reward);
            }
        }
        let rewards = job
            .candidates
            .iter()
            .map(|c| {
                by_id.remove(&c.id).unwrap_or_else(|| {
                    Reward::failed(&c.id, "internal error: the profile returned no reward")
                })
            })
            .collect();
        JobOutcome {
            rewards,
            retry,
            judge_tokens: ctx.judge_tokens.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The rewards of a job (or of one group), and whether trying it again may help.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobOutcome {
    /// One reward per candidate, in the candidates' order.
    pub rewards: Vec<Reward>,
    /// Some FAILED reward came from an error that may go away if the job is tried again later
    /// (a judge down, a timeout): the worker asks for a redelivery unless this was the last
    /// attempt.
    pub retry: bool,
    /// Judge tokens spent scoring it (see [`ScoreContext::judge_tokens`]).
    pub judge_tokens: u64,
}
