//! Drives one scoring session against a gateway (in-process or over gRPC), resuming the session
//! after a broken stream: batches not yet accepted are sent again, rewards already received are
//! dropped by candidate id.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use rewardfleet_core::{Candidate, Reward};
use rewardfleet_gateway::{Gateway, ScoreStream};
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_proto::v1::{
    Batch, Close, ScoreRequest, SessionOpen, score_request, score_response,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Where sessions run.
pub enum Transport {
    /// The gateway logic in this process (embedded mode).
    Embedded(Gateway),
    /// A remote gateway over gRPC.
    Remote(RewardServiceClient<Channel>),
}

impl Transport {
    async fn open(&mut self, requests: Vec<ScoreRequest>) -> Result<ScoreStream, Status> {
        match self {
            Self::Embedded(gateway) => {
                let requests = futures::stream::iter(requests.into_iter().map(Ok));
                Ok(gateway.score(requests, CancellationToken::new()))
            }
            Self::Remote(client) => {
                let stream = client
                    .score(futures::stream::iter(requests))
                    .await?
                    .into_inner();
                Ok(Box::pin(stream))
            }
        }
    }
}

/// What a session is asked to score.
pub struct Submission {
    /// Session id (kept across reconnects so the session resumes).
    pub session_id: String,
    /// Profile; empty: the gateway's default.
    pub profile: String,
    /// Window asked for; 0: the gateway's default.
    pub window: u32,
    /// Batches of whole groups.
    pub batches: Vec<Vec<Candidate>>,
}

/// Reconnects after a broken stream, at most.
const MAX_RESUMES: u32 = 30;

/// Runs the submission to completion, calling `on_reward` once per candidate.
///
/// # Errors
/// A status the gateway ended the session with that resuming cannot fix (bad input), or a
/// transport failure that lasted past every resume.
pub async fn run(
    transport: &mut Transport,
    submission: &Submission,
    mut on_reward: impl FnMut(Reward),
) -> Result<(), Status> {
    let mut accepted = vec![false; submission.batches.len()];
    let mut received: HashSet<String> = HashSet::new();
    let mut resumes = 0;
    loop {
        let mut sent = Vec::new();
        let mut requests = vec![ScoreRequest {
            kind: Some(score_request::Kind::Open(SessionOpen {
                session_id: submission.session_id.clone(),
                profile: submission.profile.clone(),
                max_in_flight: submission.window,
            })),
        }];
        for (i, batch) in submission.batches.iter().enumerate() {
            if !accepted[i] {
                sent.push(i);
                requests.push(ScoreRequest {
                    kind: Some(score_request::Kind::Batch(Batch {
                        candidates: batch.clone(),
                        profile: String::new(),
                    })),
                });
            }
        }
        requests.push(ScoreRequest {
            kind: Some(score_request::Kind::Close(Close {})),
        });
        let outcome = match transport.open(requests).await {
            Ok(mut responses) => {
                let mut closed = false;
                let mut failure = None;
                while let Some(response) = responses.next().await {
                    match response.map(|r| r.kind) {
                        Ok(Some(score_response::Kind::Reward(reward))) => {
                            if received.insert(reward.candidate_id.clone()) {
                                on_reward(reward);
                            }
                        }
                        Ok(Some(score_response::Kind::Accepted(a))) => {
                            if let Some(&i) = sent.get(a.batch_index as usize) {
                                accepted[i] = true;
                            }
                        }
                        Ok(Some(score_response::Kind::Closed(_))) => closed = true,
                        Ok(_) => {}
                        Err(status) => {
                            failure = Some(status);
                            break;
                        }
                    }
                }
                match failure {
                    Some(status) => Err(status),
                    None if closed => Ok(()),
                    None => Err(Status::unavailable(
                        "the stream ended before the session closed",
                    )),
                }
            }
            Err(status) => Err(status),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(status) if resumable(&status) && resumes < MAX_RESUMES => {
                resumes += 1;
                tracing::warn!(%status, resumes, "session stream broke; resuming");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(resumes.min(10)))).await;
            }
            Err(status) => return Err(status),
        }
    }
}

fn resumable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted
    )
}

/// Cuts candidates into batches of at most `size` (a group is never split; a group larger than
/// `size` makes a batch of its own).
pub fn batches(candidates: Vec<Candidate>, size: usize) -> Vec<Vec<Candidate>> {
    let mut out: Vec<Vec<Candidate>> = Vec::new();
    let mut current: Vec<Candidate> = Vec::new();
    for group in rewardfleet_core::job::into_groups(candidates) {
        if !current.is_empty() && current.len() + group.len() > size {
            out.push(std::mem::take(&mut current));
        }
        current.extend(group);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}
