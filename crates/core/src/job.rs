//! Cutting a batch into jobs of whole groups, bounded in candidates and bytes.

use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::input::InputError;
use crate::{Candidate, Job};

/// Bounds of one job (one JetStream message, scored by one worker).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JobBounds {
    /// Candidates in one job, at most (whole groups are never split).
    pub max_candidates: usize,
    /// Encoded bytes of one job, at most; keep below the NATS server's `max_payload` (1 MiB).
    pub max_bytes: usize,
}

impl Default for JobBounds {
    fn default() -> Self {
        Self {
            max_candidates: 64,
            max_bytes: 512 * 1024,
        }
    }
}

/// Cuts candidates into jobs: candidates sharing a group_id stay together (in order of first
/// appearance), groups are packed greedily up to the bounds. The job id is a hash of the session
/// and the candidate ids, so a resubmitted job is recognised by JetStream's dedup.
///
/// # Errors
/// A group that alone exceeds `max_bytes`, naming the group and the limit.
pub fn split_into_jobs(
    session_id: &str,
    profile: &str,
    candidates: Vec<Candidate>,
    bounds: &JobBounds,
) -> Result<Vec<Job>, InputError> {
    let groups = into_groups(candidates);
    let mut jobs = Vec::new();
    let mut current: Vec<Candidate> = Vec::new();
    let mut current_bytes = 0usize;
    for group in groups {
        let bytes: usize = group.iter().map(|c| c.encoded_len() + 8).sum();
        if bytes + 1024 > bounds.max_bytes {
            return Err(InputError::new(
                "candidates",
                format!(
                    "group {:?} encodes to {bytes} bytes; limit jobs.max_bytes = {}",
                    group[0].group_id, bounds.max_bytes
                ),
            ));
        }
        if !current.is_empty()
            && (current.len() + group.len() > bounds.max_candidates
                || current_bytes + bytes + 1024 > bounds.max_bytes)
        {
            jobs.push(make_job(session_id, profile, std::mem::take(&mut current)));
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.extend(group);
    }
    if !current.is_empty() {
        jobs.push(make_job(session_id, profile, current));
    }
    Ok(jobs)
}

/// Groups candidates by group_id in order of first appearance; an empty group_id is a group of one.
pub fn into_groups(candidates: Vec<Candidate>) -> Vec<Vec<Candidate>> {
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    let mut groups: Vec<Vec<Candidate>> = Vec::new();
    for c in candidates {
        if c.group_id.is_empty() {
            groups.push(vec![c]);
            continue;
        }
        match index.get(&c.group_id) {
            Some(&i) => groups[i].push(c),
            None => {
                index.insert(c.group_id.clone(), groups.len());
                groups.push(vec![c]);
            }
        }
    }
    groups
}

fn make_job(session_id: &str, profile: &str, candidates: Vec<Candidate>) -> Job {
    let mut hash = Sha256::new();
    hash.update(session_id.as_bytes());
    hash.update([0]);
    hash.update(profile.as_bytes());
    for c in &candidates {
        hash.update([0]);
        hash.update(c.id.as_bytes());
    }
    let digest = hash.finalize();
    Job {
        job_id: format!("{session_id}.{}", hex::encode(&digest[..12])),
        session_id: session_id.to_owned(),
        profile: profile.to_owned(),
        candidates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, group: &str, response: &str) -> Candidate {
        Candidate {
            id: id.into(),
            group_id: group.into(),
            response: response.into(),
            ..Default::default()
        }
    }

    #[test]
    fn groups_stay_whole_and_jobs_respect_the_candidate_bound() {
        let mut cands = Vec::new();
        for g in 0..10 {
            for i in 0..8 {
                cands.push(cand(&format!("{g}-{i}"), &format!("g{g}"), "x"));
            }
        }
        let bounds = JobBounds {
            max_candidates: 20,
            max_bytes: 512 * 1024,
        };
        let jobs = split_into_jobs("s", "p", cands, &bounds).unwrap();
        assert_eq!(jobs.len(), 5, "two groups of 8 per job");
        for job in &jobs {
            assert!(job.candidates.len() <= 20);
            let groups: std::collections::BTreeSet<_> =
                job.candidates.iter().map(|c| c.group_id.clone()).collect();
            for g in groups {
                let n = job.candidates.iter().filter(|c| c.group_id == g).count();
                assert_eq!(n, 8, "group {g} split across jobs");
            }
        }
    }

    #[test]
    fn interleaved_group_members_are_gathered() {
        let cands = vec![
            cand("a1", "a", ""),
            cand("b1", "b", ""),
            cand("a2", "a", ""),
        ];
        let groups = into_groups(cands);
        assert_eq!(groups.len(), 2);
        assert_eq!(
            groups[0].iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["a1", "a2"]
        );
    }

    #[test]
    fn byte_bound_cuts_jobs_and_rejects_a_group_too_big_alone() {
        let big = "y".repeat(3000);
        let cands: Vec<_> = (0..10).map(|i| cand(&format!("c{i}"), "", &big)).collect();
        let bounds = JobBounds {
            max_candidates: 64,
            max_bytes: 8192,
        };
        let jobs = split_into_jobs("s", "p", cands, &bounds).unwrap();
        assert!(jobs.len() >= 5);
        for job in &jobs {
            assert!(job.encoded_len() <= 8192, "{}", job.encoded_len());
        }
        let huge = vec![cand("h", "", &"z".repeat(10_000))];
        let err = split_into_jobs("s", "p", huge, &bounds).unwrap_err();
        assert!(err.message.contains("jobs.max_bytes = 8192"), "{err}");
    }

    #[test]
    fn job_ids_are_deterministic_and_distinct() {
        let a = split_into_jobs("s", "p", vec![cand("1", "", "")], &JobBounds::default()).unwrap();
        let b = split_into_jobs("s", "p", vec![cand("1", "", "")], &JobBounds::default()).unwrap();
        let c = split_into_jobs("s", "p", vec![cand("2", "", "")], &JobBounds::default()).unwrap();
        assert_eq!(a[0].job_id, b[0].job_id);
        assert_ne!(a[0].job_id, c[0].job_id);
    }
}
