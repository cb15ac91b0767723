//! One Score session: admits batches while its window has room, publishes their jobs, and streams
//! each reward back as its job's result arrives.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use rewardfleet_core::{Candidate, Job, JobResult, failed_reward, split_into_jobs};
use rewardfleet_proto::v1::{
    BatchAccepted, ScoreRequest, ScoreResponse, SessionClosed, SessionOpen, SessionOpened,
    score_request, score_response,
};
use rewardfleet_queue::{QueueError, ResultStream};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{Gateway, GatewayError};

/// The responses of a session, as the gRPC handler and the embedded client read them.
pub type ScoreStream = Pin<Box<dyn Stream<Item = Result<ScoreResponse, Status>> + Send>>;

/// Responses buffered between a session and its transport. Small on purpose: when the client
/// reads slowly, the session stops reading results and requests (backpressure, not buffering).
const RESPONSE_BUFFER: usize = 64;

impl Gateway {
    /// Runs a session over a stream of requests (first `open`, then batches, then `close`) and
    /// returns the stream of responses. The session ends early with `UNAVAILABLE` when `cancel`
    /// fires (shutdown: the client resumes elsewhere) and with `INVALID_ARGUMENT` on bad input.
    pub fn score<S>(&self, requests: S, cancel: CancellationToken) -> ScoreStream
    where
        S: Stream<Item = Result<ScoreRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let gateway = self.clone();
        tokio::spawn(async move {
            let outcome = gateway.run_session(requests, &tx, cancel).await;
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "session ended with an error");
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }

    async fn run_session<S>(
        &self,
        mut requests: S,
        tx: &mpsc::Sender<Result<ScoreResponse, Status>>,
        cancel: CancellationToken,
    ) -> Result<(), GatewayError>
    where
        S: Stream<Item = Result<ScoreRequest, Status>> + Send + Unpin,
    {
        let open = match requests.next().await {
            Some(Ok(ScoreRequest {
                kind: Some(score_request::Kind::Open(open)),
            })) => open,
            Some(Ok(_)) => {
                return Err(GatewayError::InvalidArgument {
                    field: "open".into(),
                    message: "the first request of a Score stream must be `open`".into(),
                });
            }
            Some(Err(_)) | None => return Ok(()),
        };
        let mut session = self.open_session(open)?;
        let mut results = self.subscribe(&session.id, &cancel).await?;
        let opened = ScoreResponse {
            kind: Some(score_response::Kind::Opened(SessionOpened {
                session_id: session.id.clone(),
                profile: session.profile.clone(),
                max_in_flight: session.window as u32,
            })),
        };
        if tx.send(Ok(opened)).await.is_err() {
            return Ok(());
        }
        self.inner.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let outcome = self
            .drive(&mut session, &mut requests, &mut results, tx, &cancel)
            .await;
        self.inner.stats.sessions.fetch_sub(1, Ordering::Relaxed);
        self.inner
            .stats
            .in_flight
            .fetch_sub(session.unresolved.len(), Ordering::Relaxed);
        outcome
    }

    async fn drive<S>(
        &self,
        session: &mut Session,
        requests: &mut S,
        results: &mut ResultStream,
        tx: &mpsc::Sender<Result<ScoreResponse, Status>>,
        cancel: &CancellationToken,
    ) -> Result<(), GatewayError>
    where
        S: Stream<Item = Result<ScoreRequest, Status>> + Send + Unpin,
    {
        loop {
            if session.closing && session.pending.is_empty() && session.unresolved.is_empty() {
                let closed = ScoreResponse {
                    kind: Some(score_response::Kind::Closed(SessionClosed {
                        rewards: session.delivered.len() as u64,
                    })),
                };
                let _ = tx.send(Ok(closed)).await;
                if let Err(e) = self.inner.queue.forget_session(&session.id).await {
                    tracing::warn!(session = %session.id, error = %e, "could not drop the session's retained results");
                }
                return Ok(());
            }
            // Publish the batch's next job as soon as the window has room for it.
            let room = session.pending.front().is_some_and(|job| {
                session.unresolved.is_empty()
                    || session.unresolved.len() + job.candidates.len() <= session.window
            });
            if room && let Some(job) = session.pending.pop_front() {
                self.publish(&job, cancel).await?;
                self.track(session, job.candidates.iter().map(|c| c.id.clone()));
                if session.pending.is_empty() && !accept(session, tx).await {
                    return Ok(());
                }
                continue;
            }
            let can_read = !session.closing
                && session.pending.is_empty()
                && session.unresolved.len() < session.window;
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(GatewayError::ShuttingDown),
                () = tx.closed() => return Ok(()),
                result = results.next() => match result {
                    Some(Ok(result)) => {
                        if !self.deliver(session, result, tx).await {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => tracing::warn!(session = %session.id, error = %e, "results stream hiccup"),
                    None => return Err(GatewayError::Unavailable(QueueError::Closed)),
                },
                request = requests.next(), if can_read => match request {
                    None => session.closing = true,
                    Some(Err(status)) => {
                        tracing::debug!(session = %session.id, %status, "client stream broke; results stay retained for resume");
                        return Ok(());
                    }
                    Some(Ok(ScoreRequest { kind })) => match kind {
                        Some(score_request::Kind::Batch(batch)) => {
                            self.admit(session, batch.candidates, &batch.profile, cancel).await?;
                            if session.pending.is_empty() && !accept(session, tx).await {
                                return Ok(());
                            }
                        }
                        Some(score_request::Kind::Close(_)) => session.closing = true,
                        Some(score_request::Kind::Open(_)) => {
                            return Err(GatewayError::InvalidArgument {
                                field: "open".into(),
                                message: "the session is already open".into(),
                            });
                        }
                        None => {
                            return Err(GatewayError::InvalidArgument {
                                field: "kind".into(),
                                message: "empty request: set open, batch or close".into(),
                            });
                        }
                    },
                },
            }
        }
    }

    fn open_session(&self, open: SessionOpen) -> Result<Session, GatewayError> {
        let id = if open.session_id.is_empty() {
            format!("s{:016x}", rand::random::<u64>())
        } else {
            open.session_id
        };
        if id.len() > 128
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(GatewayError::InvalidArgument {
                field: "open.session_id".into(),
                message: "use 1 to 128 letters, digits, '-' or '_'".into(),
            });
        }
        if open.max_in_flight > self.inner.max_window {
            return Err(GatewayError::InvalidArgument {
                field: "open.max_in_flight".into(),
                message: format!(
                    "{} is above the limit gateway.max_window = {}",
                    open.max_in_flight, self.inner.max_window
                ),
            });
        }
        let window = if open.max_in_flight == 0 {
            self.inner.default_window
        } else {
            open.max_in_flight
        };
        let profile = if open.profile.is_empty() {
            // Batches may name their profile; the session needs no default then.
            self.profile_for("", "").unwrap_or_default()
        } else {
            self.profile_for(&open.profile, "").map_err(|e| match e {
                GatewayError::InvalidArgument { message, .. } => GatewayError::InvalidArgument {
                    field: "open.profile".into(),
                    message,
                },
                other => other,
            })?
        };
        Ok(Session {
            id,
            profile,
            window: window as usize,
            ..Default::default()
        })
    }

    async fn subscribe(
        &self,
        session_id: &str,
        cancel: &CancellationToken,
    ) -> Result<ResultStream, GatewayError> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.inner.queue.results(session_id).await {
                Ok(stream) => return Ok(stream),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(session = session_id, error = %e, "cannot subscribe to results yet; retrying");
                }
                Err(e) => return Err(e.into()),
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(GatewayError::ShuttingDown),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Validates a batch, answers its malformed candidates with FAILED rewards and queues the
    /// rest as jobs of whole groups (published as the window allows).
    async fn admit(
        &self,
        session: &mut Session,
        candidates: Vec<Candidate>,
        profile: &str,
        cancel: &CancellationToken,
    ) -> Result<(), GatewayError> {
        let profile = self
            .profile_for(profile, &session.profile)
            .map_err(|e| match e {
                GatewayError::InvalidArgument { message, .. } => GatewayError::InvalidArgument {
                    field: "batch.profile".into(),
                    message,
                },
                other => other,
            })?;
        self.inner
            .limits
            .check_batch(&candidates, &mut session.seen)
            .map_err(|e| GatewayError::input("batch", e))?;
        session.batch_size = candidates.len();
        let (valid, invalid): (Vec<Candidate>, Vec<Candidate>) = candidates
            .into_iter()
            .partition(|c| self.inner.limits.check_candidate(c).is_ok());
        let jobs = split_into_jobs(&session.id, &profile, valid, &self.inner.bounds)
            .map_err(|e| GatewayError::input("batch", e))?;
        if !invalid.is_empty() {
            let rewards = invalid
                .iter()
                .map(|c| {
                    let e = self
                        .inner
                        .limits
                        .check_candidate(c)
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    failed_reward(&c.id, format!("invalid input: {e}"))
                })
                .collect();
            let result = JobResult {
                job_id: rejection_id(&session.id, &invalid),
                session_id: session.id.clone(),
                rewards,
                worker: "gateway".into(),
            };
            self.publish_rejections(&result, cancel).await?;
            self.track(session, invalid.into_iter().map(|c| c.id));
        }
        session.pending.extend(jobs);
        Ok(())
    }

    fn track(&self, session: &mut Session, ids: impl Iterator<Item = String>) {
        for id in ids {
            if !session.delivered.contains(&id) && session.unresolved.insert(id) {
                self.inner.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.inner
            .stats
            .max_session_in_flight
            .fetch_max(session.unresolved.len(), Ordering::Relaxed);
    }

    /// Sends the result's rewards that this stream has not sent yet. `false`: the client left.
    async fn deliver(
        &self,
        session: &mut Session,
        result: JobResult,
        tx: &mpsc::Sender<Result<ScoreResponse, Status>>,
    ) -> bool {
        for reward in result.rewards {
            if !session.delivered.insert(reward.candidate_id.clone()) {
                continue;
            }
            if session.unresolved.remove(&reward.candidate_id) {
                self.inner.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            let response = ScoreResponse {
                kind: Some(score_response::Kind::Reward(reward)),
            };
            if tx.send(Ok(response)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Publishes a job, retrying through queue outages (dedup makes retries safe).
    async fn publish(&self, job: &Job, cancel: &CancellationToken) -> Result<(), GatewayError> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.inner.queue.publish_job(job).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(job = %job.job_id, bytes = job.encoded_len(), error = %e, "publish failed; retrying");
                }
                Err(e) => return Err(e.into()),
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(GatewayError::ShuttingDown),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn publish_rejections(
        &self,
        result: &JobResult,
        cancel: &CancellationToken,
    ) -> Result<(), GatewayError> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.inner.queue.publish_result(result).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(job = %result.job_id, error = %e, "publish failed; retrying");
                }
                Err(e) => return Err(e.into()),
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(GatewayError::ShuttingDown),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// Tells the client that every candidate of its current batch is durably queued.
/// `false`: the client left.
async fn accept(session: &mut Session, tx: &mpsc::Sender<Result<ScoreResponse, Status>>) -> bool {
    let accepted = ScoreResponse {
        kind: Some(score_response::Kind::Accepted(BatchAccepted {
            batch_index: session.batch_index,
            candidates: session.batch_size as u32,
        })),
    };
    session.batch_index += 1;
    tx.send(Ok(accepted)).await.is_ok()
}

fn rejection_id(session_id: &str, candidates: &[Candidate]) -> String {
    let mut hash = Sha256::new();
    for c in candidates {
        hash.update(c.id.as_bytes());
        hash.update([0]);
    }
    format!(
        "{session_id}.rejected.{}",
        hex::encode(&hash.finalize()[..12])
    )
}

/// What the gateway knows of one open session.
#[derive(Default)]
struct Session {
    id: String,
    /// Profile of batches that name none.
    profile: String,
    /// Unresolved candidates at most.
    window: usize,
    /// Submitted, no reward yet.
    unresolved: HashSet<String>,
    /// Rewards sent on this stream (duplicates are dropped).
    delivered: HashSet<String>,
    /// Every id submitted on this stream (ids must be unique within a session).
    seen: HashSet<String>,
    /// Jobs of the current batch not yet published (waiting for window room).
    pending: VecDeque<Job>,
    batch_index: u64,
    batch_size: usize,
    closing: bool,
}
