//! One Score session: admits batches while its window has room, publishes their jobs, records
//! them in the session's ledger, and streams each reward back as its job's result arrives.
//!
//! What a session owes survives the gateway: the queue keeps the session's record (a ledger
//! entry per accepted job, and the results), so a gateway that resumes the session replays it
//! and answers `closed` only once every candidate ever accepted has had its reward sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use rewardfleet_core::RewardStatus;
use rewardfleet_core::{Candidate, Job, JobAccepted, JobResult, Reward, split_into_jobs};
use rewardfleet_proto::v1::Timing;
use rewardfleet_proto::v1::{
    Batch, BatchAccepted, Close, ScoreRequest, ScoreResponse, SessionClosed, SessionOpen,
    SessionOpened, score_request, score_response,
};
use rewardfleet_queue::{QueueError, ResultStream, SessionEvent};
use rewardfleet_telemetry::metrics::{KeyValue, label};
use rewardfleet_telemetry::{metrics, trace_id};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{Instrument, Span};

use crate::{Caller, Gateway, GatewayError};

/// The responses of a session, as the gRPC handler and the embedded client read them.
pub type ScoreStream = Pin<Box<dyn Stream<Item = Result<ScoreResponse, Status>> + Send>>;

/// Responses buffered between a session and its transport. Small on purpose: when the client
/// reads slowly, the session stops reading results and requests (backpressure, not buffering).
const RESPONSE_BUFFER: usize = 64;

/// Whether a session can be resumed by its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resumable {
    /// A `Score` stream: a broken stream leaves the session's record for a resume.
    Yes,
    /// A `ScoreBatch` call: when its caller leaves (deadline, cancel) no one can read the
    /// session again, so its jobs not yet started are dropped and its record with them.
    No,
}

/// How a session's run ended without an error.
enum Ended {
    /// `closed` was sent: every candidate accepted had its reward.
    Closed,
    /// The client went away (or broke its stream) first.
    ClientLeft,
}

impl Gateway {
    /// Runs a session over a stream of requests (first `open`, then batches, then `close`) and
    /// returns the stream of responses. The session ends early with `UNAVAILABLE` when `cancel`
    /// fires (shutdown: the client resumes elsewhere) and with `INVALID_ARGUMENT` on bad input,
    /// including requests that cannot be decoded.
    pub fn score<S>(&self, requests: S, cancel: CancellationToken) -> ScoreStream
    where
        S: Stream<Item = Result<ScoreRequest, Status>> + Send + Unpin + 'static,
    {
        self.score_as(None, requests, cancel)
    }

    /// As [`Gateway::score`], for `caller`: its profiles, its sessions' namespace, its quotas.
    pub fn score_as<S>(&self, caller: Caller, requests: S, cancel: CancellationToken) -> ScoreStream
    where
        S: Stream<Item = Result<ScoreRequest, Status>> + Send + Unpin + 'static,
    {
        self.spawn_session(requests, cancel, Resumable::Yes, caller)
    }

    /// Scores one batch in a session of its own and returns its rewards in candidate order.
    /// If the caller stops waiting (the future is dropped), the session is abandoned: its jobs
    /// not yet started are skipped and its results dropped.
    ///
    /// # Errors
    /// The status the session ended with (bad input, the queue unreachable, shutdown).
    pub async fn score_batch(
        &self,
        profile: String,
        candidates: Vec<Candidate>,
        cancel: CancellationToken,
    ) -> Result<Vec<Reward>, Status> {
        self.score_batch_as(None, profile, candidates, cancel).await
    }

    /// As [`Gateway::score_batch`], for `caller`.
    ///
    /// # Errors
    /// As [`Gateway::score_batch`]; `PERMISSION_DENIED` for a profile the caller may not use,
    /// `RESOURCE_EXHAUSTED` past its quotas.
    pub async fn score_batch_as(
        &self,
        caller: Caller,
        profile: String,
        candidates: Vec<Candidate>,
        cancel: CancellationToken,
    ) -> Result<Vec<Reward>, Status> {
        self.batch_room(candidates.len()).map_err(Status::from)?;
        let order: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
        let requests = futures::stream::iter([
            ScoreRequest {
                kind: Some(score_request::Kind::Open(SessionOpen {
                    profile: profile.clone(),
                    max_in_flight: 0,
                    session_id: String::new(),
                })),
            },
            ScoreRequest {
                kind: Some(score_request::Kind::Batch(Batch {
                    candidates,
                    profile,
                })),
            },
            ScoreRequest {
                kind: Some(score_request::Kind::Close(Close {})),
            },
        ])
        .map(Ok);
        let mut responses = self.spawn_session(requests, cancel, Resumable::No, caller);
        let mut rewards = HashMap::with_capacity(order.len());
        while let Some(response) = responses.next().await {
            if let Some(score_response::Kind::Reward(r)) = response?.kind {
                rewards.insert(r.candidate_id.clone(), r);
            }
        }
        order
            .iter()
            .map(|id| {
                rewards
                    .remove(id)
                    .ok_or_else(|| Status::internal(format!("no reward for candidate {id:?}")))
            })
            .collect()
    }

    fn spawn_session<S>(
        &self,
        requests: S,
        cancel: CancellationToken,
        resumable: Resumable,
        caller: Caller,
    ) -> ScoreStream
    where
        S: Stream<Item = Result<ScoreRequest, Status>> + Send + Unpin + 'static,
    {
        // A Score stream holds a session slot from its first frame to its end; a `ScoreBatch`
        // call is bounded by the HTTP/2 streams of its connection instead.
        let refuse = |e: GatewayError| -> ScoreStream {
            let refused = Status::from(e);
            Box::pin(futures::stream::once(async move { Err(refused) }))
        };
        let slot = match resumable {
            Resumable::No => None,
            Resumable::Yes => match Arc::clone(&self.inner.session_slots).try_acquire_owned() {
                Ok(permit) => {
                    let tenant_slot = match caller.as_ref().map(|t| t.session_slot()) {
                        Some(Err(e)) => return refuse(e),
                        Some(Ok(slot)) => slot,
                        None => None,
                    };
                    Some((permit, tenant_slot))
                }
                Err(_) => {
                    if let Some(m) = metrics() {
                        m.refused.add(1, &[label("limit", "gateway.max_sessions")]);
                    }
                    return refuse(GatewayError::ResourceExhausted {
                        limit: "gateway.max_sessions".into(),
                        message: format!(
                            "{} sessions are open on this gateway",
                            self.inner.max_sessions
                        ),
                        retry_after_secs: 1,
                    });
                }
            },
        };
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let gateway = self.clone();
        // A child of the caller's span (the gRPC call's, when there is one).
        let span = tracing::info_span!(
            "session",
            rewardfleet.session_id = tracing::field::Empty,
            rewardfleet.tenant = caller.as_ref().map(|t| t.name()),
            error.type = tracing::field::Empty,
        );
        let session = async move {
            let _slot = slot;
            match gateway.run_session(requests, &tx, cancel, caller).await {
                Ok((_, Ended::Closed)) => {}
                Ok((id, Ended::ClientLeft)) if resumable == Resumable::No => {
                    tracing::debug!(session = %id, "caller left; abandoning the session");
                    if let Err(e) = gateway.inner.queue.abandon_session(&id).await {
                        tracing::warn!(session = %id, error = %e.chain(), "could not abandon the session");
                    }
                }
                Ok((id, Ended::ClientLeft)) => {
                    tracing::debug!(session = %id, "client left; the session's record stays for a resume");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "session ended with an error");
                    let status = Status::from(e);
                    Span::current().record("error.type", format!("{:?}", status.code()));
                    let _ = tx.send(Err(status)).await;
                }
            }
        };
        self.inner.sessions.spawn(session.instrument(span));
        Box::pin(ReceiverStream::new(rx))
    }

    /// Runs one session to its end; returns its id and how it ended.
    async fn run_session<S>(
        &self,
        mut requests: S,
        tx: &mpsc::Sender<Result<ScoreResponse, Status>>,
        cancel: CancellationToken,
        caller: Caller,
    ) -> Result<(String, Ended), GatewayError>
    where
        S: Stream<Item = Result<ScoreRequest, Status>> + Send + Unpin,
    {
        let idle = self.inner.idle_timeout;
        let first = tokio::select! {
            first = requests.next() => first,
            () = tokio::time::sleep(idle) => return Err(GatewayError::Idle(idle)),
            () = cancel.cancelled() => return Err(GatewayError::ShuttingDown),
        };
        let open = match first {
            Some(Ok(ScoreRequest {
                kind: Some(score_request::Kind::Open(open)),
            })) => open,
            Some(Ok(_)) => {
                return Err(GatewayError::InvalidArgument {
                    field: "open".into(),
                    message: "the first request of a Score stream must be `open`".into(),
                });
            }
            Some(Err(status)) => return unreadable(status, "the first request (open)", ""),
            None => return Ok((String::new(), Ended::ClientLeft)),
        };
        let mut session = self.open_session(open, caller)?;
        Span::current().record("rewardfleet.session_id", session.id.as_str());
        let mut events = self.subscribe(&session.id, &cancel).await?;
        let opened = ScoreResponse {
            kind: Some(score_response::Kind::Opened(SessionOpened {
                session_id: session.client_id.clone(),
                profile: session.profile.clone(),
                max_in_flight: session.window as u32,
            })),
        };
        if tx.send(Ok(opened)).await.is_err() {
            return Ok((session.id, Ended::ClientLeft));
        }
        let stats = &self.inner.stats;
        stats.sessions.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = metrics() {
            m.sessions_open.add(1, &[]);
        }
        let outcome = self
            .drive(&mut session, &mut requests, &mut events, tx, &cancel)
            .await;
        stats.sessions.fetch_sub(1, Ordering::Relaxed);
        stats
            .in_flight
            .fetch_sub(session.owed.len(), Ordering::Relaxed);
        // Its share goes to the others.
        self.inner.room.notify_waiters();
        if let Some(t) = &session.tenant {
            t.resolved(session.owed.len());
        }
        if let Some(m) = metrics() {
            m.sessions_open.add(-1, &[]);
            m.candidates_in_flight
                .add(-(session.owed.len() as i64), &[]);
        }
        outcome.map(|ended| (session.id, ended))
    }

    async fn drive<S>(
        &self,
        session: &mut Session,
        requests: &mut S,
        events: &mut ResultStream,
        tx: &mpsc::Sender<Result<ScoreResponse, Status>>,
        cancel: &CancellationToken,
    ) -> Result<Ended, GatewayError>
    where
        S: Stream<Item = Result<ScoreRequest, Status>> + Send + Unpin,
    {
        loop {
            if session.is_done() {
                let closed = ScoreResponse {
                    kind: Some(score_response::Kind::Closed(SessionClosed {
                        rewards: session.rewards_sent,
                    })),
                };
                let _ = tx.send(Ok(closed)).await;
                if let Err(e) = self.inner.queue.forget_session(&session.id).await {
                    tracing::warn!(session = %session.id, error = %e.chain(), "could not drop the session's retained results");
                }
                return Ok(Ended::Closed);
            }
            // Publish the batch's next job as soon as the window, and the session's fair share
            // of the gateway's queue, have room for it. Registered before looking, so that a
            // result resolved meanwhile is not missed.
            let room = self.inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(job) = session.next_job_with_room(|owed, len| self.fair_room(owed, len)) {
                self.publish(session, &job, cancel).await?;
                if session.pending.is_empty() && !accept(session, tx).await {
                    return Ok(Ended::ClientLeft);
                }
                continue;
            }
            let stalled = !session.closing && !session.can_read();
            if stalled
                && !session.stalled
                && let Some(m) = metrics()
            {
                m.window_stalls.add(1, &[]);
            }
            session.stalled = stalled;
            let idle = self.inner.idle_timeout;
            let idle_until = tokio::time::Instant::from_std(session.last_activity + idle);
            let waiting = !session.pending.is_empty();
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(GatewayError::ShuttingDown),
                () = tx.closed() => return Ok(Ended::ClientLeft),
                () = &mut room, if waiting => {}
                () = tokio::time::sleep_until(idle_until), if session.owes_nothing() => {
                    return Err(GatewayError::Idle(idle));
                }
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        session.last_activity = Instant::now();
                        if !self.apply(session, event, tx).await {
                            return Ok(Ended::ClientLeft);
                        }
                    }
                    Some(Err(e)) => tracing::warn!(session = %session.id, error = %e.chain(), "session record hiccup"),
                    None => return Err(GatewayError::Queue(QueueError::Closed)),
                },
                request = requests.next(), if session.can_read() => match request {
                    None => session.closing = true,
                    Some(Err(status)) => {
                        let at = format!("request {} of the stream", session.requests_read + 1);
                        return unreadable(status, &at, &session.id).map(|(_, ended)| ended);
                    }
                    Some(Ok(ScoreRequest { kind })) => {
                        session.requests_read += 1;
                        session.last_activity = Instant::now();
                        match kind {
                            Some(score_request::Kind::Batch(batch)) => {
                                self.admit(session, batch.candidates, &batch.profile, cancel).await?;
                                if session.pending.is_empty() && !accept(session, tx).await {
                                    return Ok(Ended::ClientLeft);
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
                        }
                    }
                },
            }
        }
    }

    fn open_session(&self, open: SessionOpen, caller: Caller) -> Result<Session, GatewayError> {
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
        let mut window = if open.max_in_flight == 0 {
            self.inner.default_window
        } else {
            open.max_in_flight
        };
        if let Some(t) = &caller {
            window = t.cap_window(window);
        }
        let profile = if open.profile.is_empty() {
            // Batches may name their profile; the session needs no default then.
            self.profile_for("", "").unwrap_or_default()
        } else {
            let name = self
                .profile_for(&open.profile, "")
                .map_err(|e| e.in_field("open.profile"))?;
            if let Some(t) = &caller {
                t.check_profile(&name)?;
            }
            name
        };
        // Enough to outlast any reordering between a job's ledger entry and its result (at most
        // a window and a batch of other rewards come between them), with room to spare.
        let remembered = 4 * window as usize + self.inner.limits.max_batch_candidates;
        // A tenant's sessions live in its own namespace: another tenant naming the same id
        // opens a different session, and can never resume, observe or close this one.
        let key = caller
            .as_ref()
            .map_or_else(|| id.clone(), |t| t.session_key(&id));
        Ok(Session {
            id: key,
            client_id: id,
            profile,
            window: window as usize,
            delivered: RecentIds::new(remembered),
            retired: RecentIds::new(remembered),
            tenant: caller,
            ..Default::default()
        })
    }

    async fn subscribe(
        &self,
        session_id: &str,
        cancel: &CancellationToken,
    ) -> Result<ResultStream, GatewayError> {
        self.with_retry("subscribe to the session's record", cancel, || {
            self.inner.queue.results(session_id)
        })
        .await
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
            .map_err(|e| e.in_field("batch.profile"))?;
        if let Some(t) = &session.tenant {
            t.check_profile(&profile)?;
            t.admit(candidates.len())?;
        }
        // Ids in flight are in `seen`; ids submitted on this stream and rewarded recently in
        // `retired`. A reward replayed from the session's record does not count: a resuming
        // client sends again the batches it was not told were accepted, and their candidates
        // may have been scored meanwhile (the queue's dedup and `delivered` make that harmless).
        if let Some((i, c)) = candidates
            .iter()
            .enumerate()
            .find(|(_, c)| session.retired.contains(&c.id))
        {
            return Err(GatewayError::InvalidArgument {
                field: format!("batch.candidates[{i}].id"),
                message: format!(
                    "{:?} was already submitted in this session; ids must be unique",
                    c.id
                ),
            });
        }
        self.inner
            .limits
            .check_batch(&candidates, &mut session.seen)
            .map_err(|e| GatewayError::input("batch", e))?;
        session.batch_size = candidates.len();
        let mut valid = Vec::with_capacity(candidates.len());
        let mut rejected = Vec::new();
        for c in candidates {
            match self.inner.limits.check_candidate(&c) {
                Ok(()) => valid.push(c),
                Err(e) => rejected.push(Reward::failed(&c.id, format!("invalid input: {e}"))),
            }
        }
        let mut jobs = split_into_jobs(&session.id, &profile, valid, &self.inner.bounds)
            .map_err(|e| GatewayError::input("batch", e))?;
        for job in &mut jobs {
            job.job_id = session.job_id(&job.job_id);
        }
        let arrived = Instant::now();
        let profile_label = label("profile", profile.clone());
        for job in &jobs {
            session.clocks.insert(
                job.job_id.clone(),
                JobClock {
                    arrived,
                    profile: profile_label.clone(),
                },
            );
        }
        if !rejected.is_empty() {
            // Answered through the session's record like any result, so a resume sees them.
            let result = JobResult {
                job_id: session.job_id(&rejection_id(&session.id, &rejected)),
                session_id: session.id.clone(),
                rewards: rejected,
                worker: "gateway".into(),
                judge_tokens: 0,
            };
            self.with_retry("publish rejections", cancel, || {
                self.inner.queue.publish_result(&result)
            })
            .await?;
            self.owe(
                session,
                result.rewards.iter().map(|r| r.candidate_id.as_str()),
            );
        }
        session.pending.extend(jobs);
        Ok(())
    }

    /// Queues a job, then records it in the session's ledger: in that order, so the ledger
    /// never names a job that is not queued. A crash between the two leaves a queued job the
    /// ledger does not know; its batch was not `accepted`, so the client sends it again, and
    /// the queue's dedup on the job id makes that harmless.
    async fn publish(
        &self,
        session: &mut Session,
        job: &Job,
        cancel: &CancellationToken,
    ) -> Result<(), GatewayError> {
        self.with_retry("publish a job", cancel, || {
            self.inner.queue.publish_job(job)
        })
        .await?;
        let entry = JobAccepted {
            job_id: job.job_id.clone(),
            session_id: job.session_id.clone(),
            candidate_ids: job.candidates.iter().map(|c| c.id.clone()).collect(),
        };
        self.with_retry("record an accepted job", cancel, || {
            self.inner.queue.record_accepted(&entry)
        })
        .await?;
        self.owe(session, entry.candidate_ids.iter().map(String::as_str));
        Ok(())
    }

    /// Whether a session holding `owed` unresolved candidates may publish a job of `len` more:
    /// while the gateway's queue (`gateway.max_queued_candidates`) has room, anyone; once it is
    /// full, only a session holding less than its fair share (the limit ÷ open sessions), so a
    /// session that just opened (a `ScoreBatch` call) goes at once, past any backlog.
    fn fair_room(&self, owed: usize, len: usize) -> bool {
        let cap = self.inner.max_queued;
        if cap == 0 {
            return true;
        }
        let stats = &self.inner.stats;
        let queued = stats.in_flight.load(Ordering::Relaxed);
        let share = cap / stats.sessions.load(Ordering::Relaxed).max(1);
        queued + len <= cap || owed < share.max(1)
    }

    /// Whether a `ScoreBatch` call of `len` candidates may start. It has no window and jumps
    /// any backlog through its fair share, so under overload the calls alone would queue
    /// without bound and wait past their deadlines; instead a call is admitted only while the
    /// gateway's queue holds less than twice `gateway.max_queued_candidates` (the limit plus
    /// what fair shares may add), which bounds the work ahead of it, and refused otherwise
    /// with `RESOURCE_EXHAUSTED` naming that key and a `retry-after` hint.
    fn batch_room(&self, len: usize) -> Result<(), GatewayError> {
        let cap = self.inner.max_queued;
        let queued = self.inner.stats.in_flight.load(Ordering::Relaxed);
        if cap == 0 || queued == 0 || queued + len <= 2 * cap {
            return Ok(());
        }
        if let Some(m) = metrics() {
            m.refused
                .add(1, &[label("limit", "gateway.max_queued_candidates")]);
        }
        Err(GatewayError::ResourceExhausted {
            limit: "gateway.max_queued_candidates".into(),
            message: format!(
                "{queued} candidates are queued on this gateway, twice the fair-share limit; \
                 a batch of {len} more"
            ),
            retry_after_secs: 1,
        })
    }

    /// Runs a queue operation, retrying passing failures with backoff until it succeeds, fails
    /// for good, or `cancel` fires. Retries are safe: every operation is deduplicated by id.
    async fn with_retry<T, F, Fut>(
        &self,
        what: &str,
        cancel: &CancellationToken,
        mut operation: F,
    ) -> Result<T, GatewayError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, QueueError>>,
    {
        let mut delay = Duration::from_millis(50);
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e.chain(), "{what} failed; retrying");
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

    /// Takes one event of the session's record in. `false`: the client left.
    async fn apply(
        &self,
        session: &mut Session,
        event: SessionEvent,
        tx: &mpsc::Sender<Result<ScoreResponse, Status>>,
    ) -> bool {
        match event {
            SessionEvent::Accepted(entry) => {
                if session.epoch.is_none() {
                    session.epoch = Some(epoch_of(&session.id, &entry.job_id));
                }
                self.owe(session, entry.candidate_ids.iter().map(String::as_str));
                true
            }
            SessionEvent::CaughtUp => {
                session.caught_up = true;
                // A session with nothing on record is new (or was closed, and its record
                // deleted): its jobs get ids of their own, so none is taken for a duplicate of
                // an earlier session's under the same id.
                session
                    .epoch
                    .get_or_insert_with(|| Some(rand::random::<u64>()));
                true
            }
            SessionEvent::Result(result, trace) => {
                // The send continues the trace of the worker that published the result.
                let span = tracing::info_span!(
                    "send",
                    otel.name = "send rewards",
                    rewardfleet.job_id = %result.job_id,
                    rewardfleet.rewards = result.rewards.len(),
                );
                trace.set_parent_of(&span);
                self.deliver(session, result, tx).instrument(span).await
            }
        }
    }

    /// Marks candidates as owed a reward, unless this stream already sent theirs.
    fn owe<'a>(&self, session: &mut Session, ids: impl Iterator<Item = &'a str>) {
        let stats = &self.inner.stats;
        let mut added = 0;
        for id in ids {
            if !session.delivered.contains(id) && session.owed.insert(id.to_owned()) {
                stats.in_flight.fetch_add(1, Ordering::Relaxed);
                added += 1;
            }
        }
        if added > 0
            && let Some(t) = &session.tenant
        {
            t.owe(added as usize);
        }
        if added > 0
            && let Some(m) = metrics()
        {
            m.candidates_in_flight.add(added, &[]);
        }
        stats
            .max_session_in_flight
            .fetch_max(session.owed.len(), Ordering::Relaxed);
    }

    /// Sends the result's rewards that this stream has not sent yet. `false`: the client left.
    async fn deliver(
        &self,
        session: &mut Session,
        result: JobResult,
        tx: &mpsc::Sender<Result<ScoreResponse, Status>>,
    ) -> bool {
        let clock = session.clocks.remove(&result.job_id);
        let m = metrics();
        // Counted per job, recorded once: [ok, degraded, failed, unspecified].
        let mut by_status = [0u64; 4];
        let mut resolved = 0;
        let mut sent_all = true;
        let mut job_timing = None;
        for mut reward in result.rewards {
            if !session.delivered.insert(reward.candidate_id.clone()) {
                continue;
            }
            // Rewarded: an id submitted on this stream moves from `seen` (in flight) to
            // `retired` (recent).
            if session.seen.remove(&reward.candidate_id) {
                session.retired.insert(reward.candidate_id.clone());
            }
            session.rewards_sent += 1;
            if session.owed.remove(&reward.candidate_id) {
                self.inner.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                resolved += 1;
            }
            let status = reward.status();
            by_status[status_index(status)] += 1;
            if let Some(clock) = &clock {
                let timing = reward.timing.get_or_insert_with(Timing::default);
                let total = clock.arrived.elapsed().as_secs_f64() * 1e3;
                timing.total_ms = total;
                timing.queue_ms = (total - timing.scoring_ms).max(0.0);
                job_timing = Some(*timing);
            }
            let response = ScoreResponse {
                kind: Some(score_response::Kind::Reward(reward)),
            };
            if tx.send(Ok(response)).await.is_err() {
                sent_all = false;
                break;
            }
        }
        if resolved > 0 {
            self.inner.room.notify_waiters();
        }
        if let Some(t) = &session.tenant {
            t.resolved(resolved as usize);
            t.spent_judge_tokens(result.judge_tokens);
        }
        if let Some(m) = m {
            m.candidates_in_flight.add(-resolved, &[]);
            // Per job: its candidates share their batch's arrival, their scoring and their send.
            if let (Some(clock), Some(t)) = (&clock, job_timing) {
                let profile = std::slice::from_ref(&clock.profile);
                m.reward_latency.record(t.total_ms / 1e3, profile);
                m.queue_wait.record(t.queue_ms / 1e3, profile);
            }
            if let Some(clock) = &clock {
                for (status, n) in STATUSES.iter().zip(by_status) {
                    if n > 0 {
                        let mut labels =
                            vec![clock.profile.clone(), label("status", status.label())];
                        if let Some(t) = &session.tenant {
                            labels.push(label("tenant", t.name().to_owned()));
                        }
                        m.rewards.add(n, &labels);
                    }
                }
            }
        }
        if !sent_all {
            return false;
        }
        let failed = by_status[status_index(RewardStatus::Failed)];
        if failed > 0 {
            tracing::debug!(
                session = %session.id,
                job = %result.job_id,
                failed,
                trace_id = trace_id(&Span::current()).as_deref(),
                "FAILED rewards sent"
            );
        }
        true
    }
}

/// When a job's batch arrived, and its profile's label: for the rewards' timing and metrics.
struct JobClock {
    arrived: Instant,
    profile: KeyValue,
}

/// Reward statuses, in the order [`status_index`] gives.
const STATUSES: [RewardStatus; 4] = [
    RewardStatus::Ok,
    RewardStatus::Degraded,
    RewardStatus::Failed,
    RewardStatus::Unspecified,
];

fn status_index(status: RewardStatus) -> usize {
    match status {
        RewardStatus::Ok => 0,
        RewardStatus::Degraded => 1,
        RewardStatus::Failed => 2,
        RewardStatus::Unspecified => 3,
    }
}

/// The end of a session whose request stream failed: a request that cannot be decoded (bytes
/// that are not a request, a truncated message, one over `gateway.max_message_bytes`) is the
/// client's error (`INVALID_ARGUMENT`, naming what could not be read); any other failure of the
/// stream means the client is gone or broke the stream, and the session's record stays.
fn unreadable(status: Status, at: &str, session: &str) -> Result<(String, Ended), GatewayError> {
    match crate::error::undecodable(&status) {
        Some(why) => Err(GatewayError::Unreadable(format!("{at}: {why}"))),
        None => {
            tracing::debug!(session, %status, "client stream broke; the session's record stays for a resume");
            Ok((session.to_owned(), Ended::ClientLeft))
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

/// The epoch of a job id made by [`Session::job_id`] for session `session_id`; `None` for an id
/// without one (a gateway of an earlier version accepted it).
fn epoch_of(session_id: &str, job_id: &str) -> Option<u64> {
    let rest = job_id.strip_prefix(session_id)?.strip_prefix('.')?;
    let (epoch, _) = rest.split_once('.')?;
    if epoch.len() != 16 {
        return None;
    }
    u64::from_str_radix(epoch, 16).ok()
}

fn rejection_id(session_id: &str, rewards: &[Reward]) -> String {
    let mut hash = Sha256::new();
    for r in rewards {
        hash.update(r.candidate_id.as_bytes());
        hash.update([0]);
    }
    format!(
        "{session_id}.rejected.{}",
        hex::encode(&hash.finalize()[..12])
    )
}

/// What the gateway knows of one open session.
struct Session {
    /// The session's key in the queue (namespaced by tenant when there is one).
    id: String,
    /// The session id as its client knows it.
    client_id: String,
    /// Its caller, when tenants are configured.
    tenant: Caller,
    /// Profile of batches that name none.
    profile: String,
    /// Owed candidates at most (the window).
    window: usize,
    /// Accepted (on this stream or, per the ledger, on an earlier one) and not yet rewarded on
    /// this stream.
    owed: HashSet<String>,
    /// Ids of the rewards sent most recently on this stream (duplicates of them are dropped, and
    /// they cannot be submitted again); at most `4 × window + limits.max_batch_candidates`.
    delivered: RecentIds,
    /// Ids submitted on this stream whose rewards were sent most recently (they cannot be
    /// submitted again); as bounded as `delivered`.
    retired: RecentIds,
    /// Rewards sent on this stream.
    rewards_sent: u64,
    /// Ids submitted on this stream and not yet rewarded (with `delivered`, what makes ids
    /// unique within a session); bounded by the window and one batch.
    seen: HashSet<String>,
    /// Jobs of the current batch not yet published (waiting for window room).
    pending: VecDeque<Job>,
    /// The session's record was replayed up to where it stood when the stream opened: until
    /// then what the session owes is not known, and it cannot close.
    caught_up: bool,
    /// The epoch of its job ids (see [`Session::job_id`]): unknown until its record is read,
    /// then the one on record, or a new one; `Some(None)`: ids without one (on record so).
    epoch: Option<Option<u64>>,
    /// Requests read after `open`.
    requests_read: u64,
    batch_index: u64,
    batch_size: usize,
    closing: bool,
    /// The window is full (or a batch waits for room): requests are not read.
    stalled: bool,
    /// Jobs accepted on this stream and not yet answered, with when their batch arrived.
    clocks: HashMap<String, JobClock>,
    /// When the client last sent a request or the session's record last moved.
    last_activity: Instant,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            id: String::new(),
            client_id: String::new(),
            tenant: None,
            profile: String::new(),
            window: 0,
            owed: HashSet::new(),
            delivered: RecentIds::new(0),
            retired: RecentIds::new(0),
            rewards_sent: 0,
            seen: HashSet::new(),
            pending: VecDeque::new(),
            caught_up: false,
            epoch: None,
            requests_read: 0,
            batch_index: 0,
            batch_size: 0,
            closing: false,
            stalled: false,
            clocks: HashMap::new(),
            last_activity: Instant::now(),
        }
    }
}

/// Ids remembered for dedup: the newest `capacity` at most, the oldest forgotten first. What
/// keeps a session's memory bounded by its window rather than by its history.
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// Remembers `id`; `false` if it is remembered already.
    fn insert(&mut self, id: String) -> bool {
        if self.set.contains(&id) {
            return false;
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

impl Session {
    /// Nothing is owed to the client nor waits to be published: the session only waits for
    /// the client (what the idle timeout applies to).
    fn owes_nothing(&self) -> bool {
        self.owed.is_empty() && self.pending.is_empty()
    }

    /// The client closed, and everything accepted has had its reward sent.
    fn is_done(&self) -> bool {
        self.closing && self.caught_up && self.pending.is_empty() && self.owed.is_empty()
    }

    /// The next job of the current batch, if the window has room for it (a job always fits an
    /// empty window, so a job larger than the window still goes) and `fair` (the session's
    /// unresolved candidates, the job's size) lets it go.
    fn next_job_with_room(&mut self, fair: impl FnOnce(usize, usize) -> bool) -> Option<Job> {
        let job = self.pending.front()?;
        let window = self.owed.is_empty() || self.owed.len() + job.candidates.len() <= self.window;
        if window && fair(self.owed.len(), job.candidates.len()) {
            self.pending.pop_front()
        } else {
            None
        }
    }

    /// Whether to read the next request: not while a batch waits for room, nor while the
    /// window is full (backpressure through HTTP/2 flow control).
    /// Not before the session's record is read (`caught_up`): a resumed session must know
    /// what it already accepted, and the ids its jobs take (its `epoch`).
    fn can_read(&self) -> bool {
        self.caught_up && !self.closing && self.pending.is_empty() && self.owed.len() < self.window
    }

    /// The id under which this session queues the job or rejection that `split_into_jobs` or
    /// `rejection_id` named `id` (`<session id>.<rest>`): `<session id>.<epoch>.<rest>`. The
    /// queue drops a job whose id it saw within its dedup window, so a session id used again
    /// after its session closed must not give its jobs the ids of the earlier session's (their
    /// results were deleted with its record, and they would never be answered). A resumed
    /// session keeps the epoch of the jobs on its record.
    fn job_id(&self, id: &str) -> String {
        match (self.epoch, id.strip_prefix(&format!("{}.", self.id))) {
            (Some(Some(epoch)), Some(rest)) => format!("{}.{epoch:016x}.{rest}", self.id),
            _ => id.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, candidates: usize) -> Job {
        Job {
            job_id: id.into(),
            candidates: (0..candidates)
                .map(|i| Candidate {
                    id: format!("{id}-{i}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn session(window: usize) -> Session {
        Session {
            id: "s".into(),
            window,
            ..Default::default()
        }
    }

    #[test]
    fn jobs_go_out_while_the_window_has_room() {
        let mut s = session(10);
        s.pending.extend([job("a", 6), job("b", 6), job("c", 20)]);
        let a = s
            .next_job_with_room(|_, _| true)
            .expect("an empty window takes any job");
        s.owed.extend(a.candidates.iter().map(|c| c.id.clone()));
        assert!(s.next_job_with_room(|_, _| true).is_none(), "6 + 6 > 10");
        assert!(!s.can_read(), "a batch waits: read nothing more");
        s.owed.clear();
        let b = s.next_job_with_room(|_, _| true).expect("room again");
        assert_eq!(b.job_id, "b");
        s.owed.clear();
        let c = s
            .next_job_with_room(|_, _| true)
            .expect("a job larger than the window still goes");
        assert_eq!(c.candidates.len(), 20);
        assert!(!s.can_read(), "not before the record is read");
        s.caught_up = true;
        assert!(s.can_read());
    }

    #[test]
    fn job_ids_carry_the_sessions_epoch() {
        let mut s = session(10);
        s.id = "s1".into();
        assert_eq!(s.job_id("s1.abc"), "s1.abc", "no epoch known yet");
        s.epoch = Some(Some(0x2a));
        let id = s.job_id("s1.abc");
        assert_eq!(id, "s1.000000000000002a.abc");
        assert_eq!(epoch_of("s1", &id), Some(0x2a));
        assert_eq!(
            epoch_of("s1", "s1.abc"),
            None,
            "an id of an earlier version"
        );
        assert_eq!(epoch_of("s1", "s2.000000000000002a.abc"), None);
        s.epoch = Some(None);
        assert_eq!(s.job_id("s1.abc"), "s1.abc", "resumed with ids without one");
    }

    #[test]
    fn a_session_is_done_only_when_caught_up_and_owing_nothing() {
        let mut s = session(10);
        s.closing = true;
        assert!(!s.is_done(), "the record is not replayed yet");
        s.caught_up = true;
        s.owed.insert("c1".into());
        assert!(!s.is_done(), "a reward is owed");
        s.owed.clear();
        s.pending.push_back(job("a", 1));
        assert!(!s.is_done(), "a job is not published yet");
        s.pending.clear();
        assert!(s.is_done());
    }

    #[test]
    fn decode_errors_are_the_clients_and_other_failures_mean_it_left() {
        let decode = Status::internal(
            "failed to decode Protobuf message: Candidate.id: invalid string value",
        );
        match unreadable(decode, "request 3 of the stream", "s") {
            Err(GatewayError::Unreadable(m)) => {
                assert!(
                    m.starts_with("request 3 of the stream: failed to decode"),
                    "{m}"
                );
            }
            other => panic!("{:?}", other.map(|(id, _)| id)),
        }
        let truncated = Status::internal("Unexpected EOF decoding stream.");
        match unreadable(truncated, "request 2 of the stream", "s") {
            Err(GatewayError::Unreadable(m)) => {
                assert!(
                    m.starts_with("request 2 of the stream: truncated message"),
                    "{m}"
                );
            }
            other => panic!("{:?}", other.map(|(id, _)| id)),
        }
        let too_large = Status::out_of_range("message length too large");
        match unreadable(too_large, "x", "s") {
            Err(GatewayError::Unreadable(m)) => {
                assert!(m.ends_with("(limit gateway.max_message_bytes)"), "{m}");
            }
            other => panic!("{:?}", other.map(|(id, _)| id)),
        }
        for gone in [
            Status::cancelled("reset"),
            Status::unknown("h2"),
            Status::internal("connection error"),
        ] {
            assert!(matches!(
                unreadable(gone, "x", "s"),
                Ok((_, Ended::ClientLeft))
            ));
        }
    }

    #[test]
    fn recent_ids_forget_the_oldest_past_their_capacity() {
        let mut recent = RecentIds::new(3);
        for id in ["a", "b", "c"] {
            assert!(recent.insert(id.into()));
        }
        assert!(!recent.insert("a".into()), "a duplicate is refused");
        assert!(recent.insert("d".into()));
        assert!(!recent.contains("a"), "the oldest is forgotten");
        assert!(recent.contains("b") && recent.contains("d"));
        assert_eq!((recent.set.len(), recent.order.len()), (3, 3));
    }

    #[test]
    fn rejection_ids_are_stable_and_differ_by_candidate() {
        let one = [Reward::failed("a", "x"), Reward::failed("b", "x")];
        let other = [Reward::failed("a", "x"), Reward::failed("c", "x")];
        assert_eq!(rejection_id("s", &one), rejection_id("s", &one));
        assert_ne!(rejection_id("s", &one), rejection_id("s", &other));
        assert!(rejection_id("s", &one).starts_with("s.rejected."));
    }

    /// Candidates `0..n` of one group, tagged `tag`, that the rules profile `p` can score.
    fn group(tag: &str, n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: format!("{tag}-{i}"),
                group_id: tag.into(),
                prompt: vec![rewardfleet_core::ChatMessage {
                    role: "user".into(),
                    content: "one plus two?".into(),
                }],
                response: "3".into(),
                reference: Some("3".into()),
                ..Default::default()
            })
            .collect()
    }

    #[tokio::test]
    async fn batch_calls_past_twice_the_queue_limit_are_refused_at_once() {
        let config = rewardfleet_core::config::Config::from_toml(
            "[gateway]\nmax_queued_candidates = 8\n\n[profile.p]\ncomponents = [{ rule = \"exact_match\" }]\n",
        )
        .expect("a valid config");
        // No worker: what the calls publish stays queued, and they wait.
        let queue = Arc::new(rewardfleet_queue::InProcessQueue::new(&config.worker, 64));
        let gateway = Gateway::new(&config, queue);
        let cancel = CancellationToken::new();
        let waiting: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|tag| {
                let (gateway, cancel) = (gateway.clone(), cancel.clone());
                tokio::spawn(
                    async move { gateway.score_batch("p".into(), group(tag, 8), cancel).await },
                )
            })
            .collect();
        let started = Instant::now();
        while gateway.stats().in_flight < 16 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the calls were not queued"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Twice the limit is queued: one more call is refused at once, naming the key, with a
        // hint when to retry, instead of waiting behind them past its deadline.
        let refused = tokio::time::timeout(
            Duration::from_secs(1),
            gateway.score_batch("p".into(), group("c", 8), cancel.clone()),
        )
        .await
        .expect("answered at once")
        .expect_err("refused");
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        assert!(
            refused.message().contains("gateway.max_queued_candidates"),
            "{}",
            refused.message()
        );
        assert_eq!(
            refused
                .metadata()
                .get(crate::error::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        cancel.cancel();
        for call in waiting {
            let _ = call.await;
        }
    }
}
