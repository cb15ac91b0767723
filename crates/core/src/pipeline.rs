//! One job in, its rewards out: the scoring path shared by embedded mode and the fleet's workers.

use std::collections::HashMap;
use std::sync::Arc;

use crate::job::into_groups;
use crate::profile::Profiles;
use crate::{Job, Limits, Reward, ScoreContext, failed_reward};

/// Scores jobs with the configured profiles.
#[derive(Clone)]
pub struct Pipeline {
    profiles: Arc<Profiles>,
    limits: Limits,
}

impl Pipeline {
    /// A pipeline over these profiles, checking candidates against `limits`.
    pub fn new(profiles: Profiles, limits: Limits) -> Self {
        Self {
            profiles: Arc::new(profiles),
            limits,
        }
    }

    /// The profiles by name.
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// Scores every candidate of the job and returns one reward per candidate, in the job's order,
    /// and whether some FAILED reward may succeed if the job is tried again later (the worker
    /// then asks for a redelivery unless this was the last attempt). Groups are scored
    /// concurrently. A candidate that breaks a limit gets a FAILED reward naming the field and
    /// the limit; its group is scored without it.
    pub async fn score_job(&self, job: &Job) -> (Vec<Reward>, bool) {
        let Some(profile) = self.profiles.get(&job.profile) else {
            let mut known: Vec<&String> = self.profiles.keys().collect();
            known.sort();
            let error = format!(
                "unknown profile {:?}; known: {}",
                job.profile,
                known
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let rewards = job
                .candidates
                .iter()
                .map(|c| failed_reward(&c.id, error.clone()))
                .collect();
            return (rewards, false);
        };
        let mut by_id: HashMap<String, Reward> = HashMap::with_capacity(job.candidates.len());
        let mut valid = Vec::with_capacity(job.candidates.len());
        for c in &job.candidates {
            match self.limits.check_candidate(c) {
                Ok(()) => valid.push(c.clone()),
                Err(e) => {
                    by_id.insert(
                        c.id.clone(),
                        failed_reward(&c.id, format!("invalid input: {e}")),
                    );
                }
            }
        }
        let ctx = ScoreContext {
            session_id: job.session_id.clone(),
            job_id: job.job_id.clone(),
            profile: job.profile.clone(),
        };
        let groups = into_groups(valid);
        let scored =
            futures::future::join_all(groups.iter().map(|g| profile.score_group_detailed(&ctx, g)))
                .await;
        let mut retryable = false;
        for (rewards, retry) in scored {
            retryable |= retry;
            for reward in rewards {
                by_id.insert(reward.candidate_id.clone(), reward);
            }
        }
        let rewards = job
            .candidates
            .iter()
            .map(|c| {
                by_id.remove(&c.id).unwrap_or_else(|| {
                    failed_reward(&c.id, "internal error: the profile returned no reward")
                })
            })
            .collect();
        (rewards, retryable)
    }
}
