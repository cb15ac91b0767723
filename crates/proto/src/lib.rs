//! The wire contract: `rewardfleet.v1` messages and the `RewardService` client and server.
#![allow(missing_docs, clippy::all)]

/// `rewardfleet.v1`: the trainer API and the gateway–worker messages.
pub mod v1 {
    tonic::include_proto!("rewardfleet.v1");
}

impl v1::Reward {
    /// The reward of a candidate that could not be scored at all; `error` says why, in words a
    /// person can act on.
    pub fn failed(candidate_id: &str, error: impl Into<String>) -> Self {
        Self {
            candidate_id: candidate_id.to_owned(),
            status: v1::reward::Status::Failed as i32,
            error: error.into(),
            ..Self::default()
        }
    }
}

impl v1::reward::Status {
    /// The status as metrics and logs name it: `ok`, `degraded`, `failed`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
            Self::Unspecified => "unspecified",
        }
    }
}

impl v1::JobResult {
    /// The result of a job none of whose candidates could be scored: a FAILED reward for each,
    /// all saying `error`, published by `worker` (a worker's name, `gateway`, `dead-letter`).
    pub fn failed(job: &v1::Job, worker: &str, error: &str) -> Self {
        Self {
            job_id: job.job_id.clone(),
            session_id: job.session_id.clone(),
            rewards: job
                .candidates
                .iter()
                .map(|c| v1::Reward::failed(&c.id, error))
                .collect(),
            worker: worker.to_owned(),
            judge_tokens: 0,
        }
    }
}

/// The encoded `FileDescriptorSet` of every proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("rewardfleet_descriptor");
