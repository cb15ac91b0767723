//! The trainer-side Rust client: builds the requests of a `Score` session, drives a session to
//! its end (resuming the same session after a broken stream), and calls `ScoreBatch`.
//!
//! ```no_run
//! # async fn example() -> Result<(), rewardfleet_client::ClientError> {
//! use rewardfleet_client::{Session, connect};
//! use rewardfleet_proto::v1::Candidate;
//!
//! let mut gateway = connect("http://127.0.0.1:50051").await?;
//! let candidates = vec![Candidate { id: "c1".into(), response: "42".into(), ..Default::default() }];
//! let session = Session::new("my-run-0001").profile("math").batches(vec![candidates]);
//! session.run(&mut gateway, |reward| println!("{} {}", reward.candidate_id, reward.value)).await?;
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_proto::v1::{
    Batch, Candidate, Close, Reward, ScoreBatchRequest, ScoreRequest, ScoreResponse, SessionOpen,
    score_request, score_response,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Largest gRPC message sent or received, in bytes (as the gateway's limit).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Reconnects after a broken stream, at most, before a session gives up.
pub const MAX_RESUMES: u32 = 30;

/// Why a session or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached.
    #[error("cannot reach the gateway at {url}: {source}")]
    Connect {
        /// The address tried.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The gateway ended the call with this status (bad input, an unknown profile, or a
    /// failure that lasted past every resume).
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
}

/// The responses of a session stream.
pub type Responses = Pin<Box<dyn Stream<Item = Result<ScoreResponse, Status>> + Send>>;

/// Where a session's requests go: a remote gateway over gRPC, or a gateway in this process.
#[async_trait]
pub trait Transport: Send {
    /// Opens a `Score` stream that sends `requests` and returns the responses.
    ///
    /// # Errors
    /// The status the call could not start with.
    async fn score(&mut self, requests: Vec<ScoreRequest>) -> Result<Responses, Status>;
}

#[async_trait]
impl Transport for RewardServiceClient<Channel> {
    async fn score(&mut self, requests: Vec<ScoreRequest>) -> Result<Responses, Status> {
        let stream = RewardServiceClient::score(self, futures::stream::iter(requests))
            .await?
            .into_inner();
        Ok(Box::pin(stream))
    }
}

/// Connects to a gateway (`http://host:port`), with `TCP_NODELAY` and message limits that fit
/// the gateway's.
///
/// # Errors
/// [`ClientError::Connect`] if the address is malformed or nothing answers there.
pub async fn connect(url: &str) -> Result<RewardServiceClient<Channel>, ClientError> {
    let fail = |source| ClientError::Connect {
        url: url.into(),
        source,
    };
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(fail)?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(fail)?;
    Ok(client(channel))
}

/// A client over an open channel, with message limits that fit the gateway's.
pub fn client(channel: Channel) -> RewardServiceClient<Channel> {
    RewardServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The `open` request of a session: `session_id` (empty: the gateway makes one), default
/// `profile` (empty: the gateway's default) and `window` (0: the gateway's default).
pub fn open(session_id: &str, profile: &str, window: u32) -> ScoreRequest {
    ScoreRequest {
        kind: Some(score_request::Kind::Open(SessionOpen {
            session_id: session_id.into(),
            profile: profile.into(),
            max_in_flight: window,
        })),
    }
}

/// A `batch` request (whole groups; `profile` empty: the session's).
pub fn batch(candidates: Vec<Candidate>, profile: &str) -> ScoreRequest {
    ScoreRequest {
        kind: Some(score_request::Kind::Batch(Batch {
            candidates,
            profile: profile.into(),
        })),
    }
}

/// The `close` request: no more batches; the gateway answers `closed` once every reward is sent.
pub fn close() -> ScoreRequest {
    ScoreRequest {
        kind: Some(score_request::Kind::Close(Close {})),
    }
}

/// The requests of a whole session: `open`, one `batch` per entry of `batches`, `close`.
pub fn session_requests(
    session_id: &str,
    profile: &str,
    window: u32,
    batches: impl IntoIterator<Item = Vec<Candidate>>,
) -> Vec<ScoreRequest> {
    let mut requests = vec![open(session_id, profile, window)];
    requests.extend(batches.into_iter().map(|b| batch(b, "")));
    requests.push(close());
    requests
}

/// Scores one batch with `ScoreBatch`: its rewards in candidate order.
///
/// # Errors
/// The status the gateway answered with.
pub async fn score_batch(
    client: &mut RewardServiceClient<Channel>,
    profile: &str,
    candidates: Vec<Candidate>,
) -> Result<Vec<Reward>, ClientError> {
    let response = client
        .score_batch(ScoreBatchRequest {
            profile: profile.into(),
            candidates,
        })
        .await?;
    Ok(response.into_inner().rewards)
}

/// Cuts candidates into batches of at most `size` (a group is never split; a group larger than
/// `size` makes a batch of its own). Groups keep the order of their first candidate; an empty
/// `group_id` is a group of one.
pub fn batches(candidates: Vec<Candidate>, size: usize) -> Vec<Vec<Candidate>> {
    let groups = rewardfleet_core::job::into_groups(candidates);
    let size = size.max(1);
    let mut out: Vec<Vec<Candidate>> = Vec::new();
    let mut current: Vec<Candidate> = Vec::new();
    for group in groups {
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

/// What a session scores: its id (kept across reconnects so that the session resumes), its
/// profile, its window and its batches.
#[derive(Debug, Clone, Default)]
pub struct Session {
    session_id: String,
    profile: String,
    window: u32,
    batches: Vec<Vec<Candidate>>,
}

impl Session {
    /// A session with this id; pick one unique to the run (letters, digits, `-`, `_`).
    pub fn new(session_id: impl Into<String>) -> Self {
        Self {
            session_id: session_id.into(),
            ..Self::default()
        }
    }

    /// The profile of its batches (default: the gateway's).
    #[must_use]
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = profile.into();
        self
    }

    /// Its window: candidates without a reward yet, at most (default: the gateway's).
    #[must_use]
    pub fn window(mut self, window: u32) -> Self {
        self.window = window;
        self
    }

    /// Its batches, each of whole groups (see [`batches`]).
    #[must_use]
    pub fn batches(mut self, batches: Vec<Vec<Candidate>>) -> Self {
        self.batches = batches;
        self
    }

    /// The requests of one attempt (open, the batches not yet accepted, close), and the index
    /// of each batch sent.
    fn requests(&self, accepted: &[bool]) -> (Vec<ScoreRequest>, Vec<usize>) {
        let sent: Vec<usize> = (0..self.batches.len()).filter(|&i| !accepted[i]).collect();
        let requests = session_requests(
            &self.session_id,
            &self.profile,
            self.window,
            sent.iter().map(|&i| self.batches[i].clone()),
        );
        (requests, sent)
    }

    /// Runs the session to `closed`, calling `on_reward` once per candidate (duplicates that
    /// a resume re-delivers are dropped). After a broken stream it reopens the same session,
    /// sends again the batches not yet `accepted`, and goes on, up to [`MAX_RESUMES`] times.
    ///
    /// # Errors
    /// A status resuming cannot fix (bad input, an unknown profile, a failure for good), or a
    /// broken stream that lasted past every resume.
    pub async fn run(
        &self,
        transport: &mut impl Transport,
        mut on_reward: impl FnMut(Reward),
    ) -> Result<(), ClientError> {
        let mut accepted = vec![false; self.batches.len()];
        let mut received: HashSet<String> = HashSet::new();
        let mut resumes = 0;
        loop {
            let (requests, sent) = self.requests(&accepted);
            let outcome = match transport.score(requests).await {
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
                    let pause = Duration::from_millis(200 * u64::from(resumes.min(10)));
                    tokio::time::sleep(pause).await;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
}

/// Whether reopening the session may help: the stream broke or the gateway went away. Bad
/// input, a missing profile or a permanent failure (`FAILED_PRECONDITION`, `INTERNAL`) is not.
fn resumable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, group: &str) -> Candidate {
        Candidate {
            id: id.into(),
            group_id: group.into(),
            ..Default::default()
        }
    }

    fn ids(batches: &[Vec<Candidate>]) -> Vec<Vec<&str>> {
        batches
            .iter()
            .map(|b| b.iter().map(|c| c.id.as_str()).collect())
            .collect()
    }

    #[test]
    fn batches_keep_groups_whole() {
        let candidates = vec![
            cand("a1", "a"),
            cand("b1", "b"),
            cand("a2", "a"),
            cand("x", ""),
            cand("b2", "b"),
            cand("c1", "c"),
            cand("c2", "c"),
            cand("c3", "c"),
        ];
        assert_eq!(
            ids(&batches(candidates, 4)),
            [vec!["a1", "a2", "b1", "b2"], vec!["x", "c1", "c2", "c3"]]
        );
        let big = (0..5).map(|i| cand(&format!("g{i}"), "g")).collect();
        assert_eq!(
            batches(big, 2).len(),
            1,
            "a group larger than a batch stays whole"
        );
    }

    #[test]
    fn a_resume_sends_only_what_was_not_accepted() {
        let session = Session::new("s")
            .profile("p")
            .window(8)
            .batches(vec![vec![cand("a", "")], vec![cand("b", "")]]);
        let (requests, sent) = session.requests(&[true, false]);
        assert_eq!(sent, [1]);
        assert_eq!(
            requests,
            [open("s", "p", 8), batch(vec![cand("b", "")], ""), close()]
        );
    }

    #[test]
    fn only_passing_failures_are_resumed() {
        assert!(resumable(&Status::unavailable("gateway draining")));
        assert!(resumable(&Status::cancelled("reset")));
        for status in [
            Status::invalid_argument("bad"),
            Status::failed_precondition("job larger than max_payload"),
            Status::internal("no stream"),
            Status::resource_exhausted("quota"),
        ] {
            assert!(!resumable(&status), "{status:?}");
        }
    }
}
