//! The in-process queue of embedded mode: JetStream's contract inside one process.
//!
//! - **Jobs** wait in one ready queue shared by every [`JobSource`] (embedded mode has one pool:
//!   the `pool` a source names is not used). At most `job_capacity` jobs are *live* — published
//!   and not yet acknowledged, terminated or given up — whether ready, handed out or waiting out
//!   a nak delay; [`Queue::publish_job`] waits for room beyond that (backpressure). A re-queue
//!   (nak, ack timeout) never needs new room, so it never blocks.
//! - **Redelivery** as JetStream does it: a delivery not acknowledged within `ack_wait` (reset by
//!   `progress`) is handed out again; a nak hands it out again after its delay; after
//!   `max_deliver` deliveries the job is given up and its session gets FAILED rewards that say
//!   so (what the JetStream queue's dead-letter watcher does).
//! - **Dedup**: a job id is ignored while its job is live and for the next
//!   [`RECENT_JOB_IDS`] jobs finished after it. A result or ledger entry is ignored within its
//!   session for the session's last `4 × results_retained_per_session + 64` entries.
//! - **Session records**: the last `results_retained_per_session` entries of each session
//!   (ledger entries and results) are kept (oldest dropped) and streamed to subscribers,
//!   replayed first. At most [`MAX_SESSIONS`] sessions are kept; past that, the least recently
//!   used one without a subscriber is dropped.
//! - **Abandoned sessions**: their jobs are skipped when they come up (the last
//!   [`MAX_SESSIONS`] abandoned session ids are remembered).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rewardfleet_core::config::WorkerConfig;
use rewardfleet_core::{Job, JobAccepted, JobResult};
use rewardfleet_telemetry::TraceContext;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::{
    Acker, Delivery, JobSource, Queue, QueueError, ResultStream, SessionEvent, given_up_error,
};

/// Finished job ids remembered for dedup (about 100 bytes each: a few MiB at most).
pub const RECENT_JOB_IDS: usize = 65_536;
/// Sessions whose results are kept; past that the least recently used idle one is dropped.
pub const MAX_SESSIONS: usize = 4_096;

/// The queue of embedded mode: a cheap `Clone` handle; all clones are the same queue.
#[derive(Clone)]
pub struct InProcessQueue {
    inner: Arc<Inner>,
}

impl fmt::Debug for InProcessQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("InProcessQueue")
            .field("live_jobs", &state.live.len())
            .field("ready_jobs", &state.ready.len())
            .field("sessions", &state.sessions.len())
            .field("closed", &state.closed)
            .finish_non_exhaustive()
    }
}

struct Inner {
    state: Mutex<State>,
    /// Room for live jobs: `job_capacity` permits, one held by each live job until it is
    /// acknowledged, terminated or given up. This is the job queue's bound.
    room: Arc<Semaphore>,
    /// Wakes a source waiting for a ready job (one `notify_one` per job made ready).
    ready: Notify,
    results_retained: usize,
}

#[derive(Default)]
struct State {
    closed: bool,
    /// Redelivery: how long a delivery may stay unacknowledged, and how many deliveries a job gets.
    ack_wait: Duration,
    max_deliver: u64,
    /// Ids of ready jobs, oldest first; bounded by `job_capacity` (each is a live job).
    ready: VecDeque<String>,
    live: HashMap<String, LiveJob>,
    /// Finished job ids, oldest first, at most `RECENT_JOB_IDS`.
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
    sessions: HashMap<String, Session>,
    /// Sessions no one will read again, oldest first, at most `MAX_SESSIONS`.
    abandoned: VecDeque<String>,
    abandoned_set: HashSet<String>,
    /// Sequence of the next session entry, across sessions.
    next_entry: u64,
}

struct LiveJob {
    job: Job,
    /// The trace context of the span that published it.
    trace_context: TraceContext,
    /// Deliveries so far.
    delivered: u64,
    /// Identifies the current delivery: stale timers and ackers check it.
    generation: u64,
    phase: Phase,
    _room: OwnedSemaphorePermit,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ready,
    Out { deadline: Instant },
    Delayed,
}

struct Session {
    /// Retained entries with their sequence, oldest first; at most `results_retained`.
    entries: VecDeque<(u64, SessionEvent)>,
    /// Keys of recent entries (`a.<job_id>` for ledger entries, the job id for results), for
    /// dedup; at most `4 × results_retained + 64`.
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    /// The sequence of the newest entry; subscribers wait on it.
    newest: watch::Sender<u64>,
    last_used: Instant,
}

impl Session {
    fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            newest: watch::Sender::new(0),
            last_used: Instant::now(),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn session<'a>(&self, state: &'a mut State, session_id: &str) -> &'a mut Session {
        if !state.sessions.contains_key(session_id) && state.sessions.len() >= MAX_SESSIONS {
            let idle = state
                .sessions
                .iter()
                .filter(|(_, s)| s.newest.receiver_count() == 0)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone());
            if let Some(id) = idle {
                tracing::warn!(
                    session = id,
                    "in-process queue: too many sessions, dropping the oldest idle one"
                );
                state.sessions.remove(&id);
            }
        }
        let session = state
            .sessions
            .entry(session_id.to_owned())
            .or_insert_with(Session::new);
        session.last_used = Instant::now();
        session
    }

    /// Appends an entry to a session's record unless `key` was recorded recently.
    fn record(&self, state: &mut State, session_id: &str, key: String, event: SessionEvent) {
        let seq = state.next_entry;
        let retained = self.results_retained;
        let session = self.session(state, session_id);
        if !session.seen.insert(key.clone()) {
            return;
        }
        session.seen_order.push_back(key);
        if session.seen_order.len() > 4 * retained + 64
            && let Some(old) = session.seen_order.pop_front()
        {
            session.seen.remove(&old);
        }
        session.entries.push_back((seq, event));
        if session.entries.len() > retained {
            session.entries.pop_front();
        }
        session.newest.send_replace(seq);
        state.next_entry = seq + 1;
    }

    /// Marks a job finished: frees its room and remembers its id for dedup.
    fn finish(state: &mut State, job_id: &str) {
        if state.live.remove(job_id).is_some() && state.recent_set.insert(job_id.to_owned()) {
            state.recent.push_back(job_id.to_owned());
            if state.recent.len() > RECENT_JOB_IDS
                && let Some(old) = state.recent.pop_front()
            {
                state.recent_set.remove(&old);
            }
        }
    }

    /// The current delivery of `job_id` failed or timed out: deliver again after `delay`, or
    /// give the job up after `max_deliver` deliveries.
    fn retry(self: &Arc<Self>, state: &mut State, job_id: &str, delay: Duration) {
        let max_deliver = state.max_deliver;
        let Some(job) = state.live.get_mut(job_id) else {
            return;
        };
        if job.delivered >= max_deliver {
            let deliveries = job.delivered;
            let error = given_up_error(deliveries);
            let result = JobResult::failed(&job.job, crate::DEAD_LETTER_WORKER, &error);
            tracing::warn!(
                job_id,
                deliveries,
                "in-process queue: job given up after max_deliver deliveries: FAILED rewards published"
            );
            Self::finish(state, job_id);
            self.record(
                state,
                &result.session_id.clone(),
                result.job_id.clone(),
                SessionEvent::Result(result, TraceContext::default()),
            );
            if let Some(m) = rewardfleet_telemetry::metrics() {
                m.jobs_dead_lettered.add(
                    1,
                    &[rewardfleet_telemetry::metrics::label("pool", "embedded")],
                );
            }
            return;
        }
        job.generation += 1;
        if delay.is_zero() {
            job.phase = Phase::Ready;
            state.ready.push_back(job_id.to_owned());
            self.ready.notify_one();
        } else {
            job.phase = Phase::Delayed;
            let generation = job.generation;
            let inner = Arc::clone(self);
            let job_id = job_id.to_owned();
            // One timer per delayed job: bounded by `job_capacity`.
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut state = inner.lock();
                if let Some(job) = state.live.get_mut(&job_id)
                    && job.generation == generation
                    && job.phase == Phase::Delayed
                {
                    job.phase = Phase::Ready;
                    state.ready.push_back(job_id);
                    inner.ready.notify_one();
                }
            });
        }
    }

    /// Hands out the oldest ready job, if any.
    fn hand_out(self: &Arc<Self>, state: &mut State) -> Option<Delivery> {
        let (ack_wait, max_deliver) = (state.ack_wait, state.max_deliver);
        while let Some(job_id) = state.ready.pop_front() {
            let Some(job) = state.live.get_mut(&job_id) else {
                continue; // finished while it waited (a stale acker)
            };
            if job.phase != Phase::Ready {
                continue;
            }
            if state.abandoned_set.contains(&job.job.session_id) {
                tracing::debug!(
                    job_id,
                    "in-process queue: job of an abandoned session skipped"
                );
                Self::finish(state, &job_id);
                continue;
            }
            job.delivered += 1;
            job.generation += 1;
            let deadline = Instant::now() + ack_wait;
            job.phase = Phase::Out { deadline };
            let generation = job.generation;
            let delivery = Delivery {
                job: job.job.clone(),
                attempt: job.delivered,
                max_deliver,
                acker: Box::new(InProcessAcker {
                    inner: Arc::clone(self),
                    job_id: job_id.clone(),
                    generation,
                }),
                trace_context: job.trace_context.clone(),
                subject: None,
            };
            self.watch_ack_wait(job_id, generation, deadline);
            return Some(delivery);
        }
        None
    }

    /// Redelivers `job_id` if its delivery `generation` is still out at its deadline (which
    /// `progress` pushes back). One timer per delivery out: bounded by `job_capacity`.
    fn watch_ack_wait(self: &Arc<Self>, job_id: String, generation: u64, deadline: Instant) {
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let mut deadline = deadline;
            loop {
                tokio::time::sleep_until(deadline).await;
                let mut state = inner.lock();
                match state.live.get(&job_id) {
                    Some(job) if job.generation == generation => match job.phase {
                        Phase::Out { deadline: d } if d > Instant::now() => deadline = d,
                        Phase::Out { .. } => {
                            tracing::debug!(
                                job_id,
                                "in-process queue: ack_wait passed, redelivering"
                            );
                            inner.retry(&mut state, &job_id, Duration::ZERO);
                            return;
                        }
                        Phase::Ready | Phase::Delayed => return,
                    },
                    _ => return,
                }
            }
        });
    }
}

impl InProcessQueue {
    /// A queue with the worker settings that the JetStream queue honours too: at most
    /// `worker.embedded_queue` live jobs, a delivery not acknowledged within `worker.ack_wait`
    /// delivered again, up to `worker.max_deliver` deliveries (at least 1); and the last
    /// `records_retained_per_session` entries of each session's record (at least 1).
    pub fn new(worker: &WorkerConfig, records_retained_per_session: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    ack_wait: worker.ack_wait,
                    max_deliver: worker.max_deliver.max(1).unsigned_abs(),
                    ..State::default()
                }),
                room: Arc::new(Semaphore::new(
                    worker.embedded_queue.clamp(1, Semaphore::MAX_PERMITS),
                )),
                ready: Notify::new(),
                results_retained: records_retained_per_session.max(1),
            }),
        }
    }

    /// Closes the queue: sources end (`None`), result streams end, publishing fails with
    /// [`QueueError::Closed`]. Jobs still queued are dropped.
    pub fn close(&self) {
        let mut state = self.inner.lock();
        state.closed = true;
        state.ready.clear();
        state.live.clear();
        state.sessions.clear(); // drops the watch senders: result streams wake and end
        drop(state);
        self.inner.room.close();
        self.inner.ready.notify_waiters();
    }

    /// Jobs published and not yet finished (ready, handed out, or waiting out a nak delay).
    pub fn live_jobs(&self) -> usize {
        self.inner.lock().live.len()
    }
}

#[async_trait]
impl Queue for InProcessQueue {
    async fn publish_job(&self, job: &Job) -> Result<(), QueueError> {
        let is_known = |state: &State| {
            state.live.contains_key(&job.job_id) || state.recent_set.contains(&job.job_id)
        };
        {
            let state = self.inner.lock();
            if state.closed {
                return Err(QueueError::Closed);
            }
            if is_known(&state) {
                return Ok(());
            }
        }
        let room = Arc::clone(&self.inner.room)
            .acquire_owned()
            .await
            .map_err(|_| QueueError::Closed)?;
        let mut state = self.inner.lock();
        if state.closed {
            return Err(QueueError::Closed);
        }
        if is_known(&state) {
            return Ok(()); // published concurrently; `room` goes back
        }
        state.live.insert(
            job.job_id.clone(),
            LiveJob {
                job: job.clone(),
                trace_context: TraceContext::current(),
                delivered: 0,
                generation: 0,
                phase: Phase::Ready,
                _room: room,
            },
        );
        state.ready.push_back(job.job_id.clone());
        self.inner.ready.notify_one();
        Ok(())
    }

    async fn record_accepted(&self, entry: &JobAccepted) -> Result<(), QueueError> {
        let mut state = self.inner.lock();
        if state.closed {
            return Err(QueueError::Closed);
        }
        self.inner.record(
            &mut state,
            &entry.session_id,
            format!("a.{}", entry.job_id),
            SessionEvent::Accepted(entry.clone()),
        );
        Ok(())
    }

    async fn publish_result(&self, result: &JobResult) -> Result<(), QueueError> {
        let mut state = self.inner.lock();
        if state.closed {
            return Err(QueueError::Closed);
        }
        self.inner.record(
            &mut state,
            &result.session_id,
            result.job_id.clone(),
            SessionEvent::Result(result.clone(), TraceContext::current()),
        );
        Ok(())
    }

    async fn results(&self, session_id: &str) -> Result<ResultStream, QueueError> {
        let (newest, replay_until) = {
            let mut state = self.inner.lock();
            if state.closed {
                return Err(QueueError::Closed);
            }
            let replay_until = state.next_entry;
            let newest = self
                .inner
                .session(&mut state, session_id)
                .newest
                .subscribe();
            (newest, replay_until)
        };
        let cursor = ResultCursor {
            inner: Arc::clone(&self.inner),
            session_id: session_id.to_owned(),
            next: 0,
            replay_until: Some(replay_until),
            newest,
        };
        Ok(futures::stream::unfold(cursor, |mut cursor| async move {
            let event = cursor.next().await?;
            Some((Ok(event), cursor))
        })
        .boxed())
    }

    async fn forget_session(&self, session_id: &str) -> Result<(), QueueError> {
        self.inner.lock().sessions.remove(session_id);
        Ok(())
    }

    async fn abandon_session(&self, session_id: &str) -> Result<(), QueueError> {
        let mut state = self.inner.lock();
        state.sessions.remove(session_id);
        if state.abandoned_set.insert(session_id.to_owned()) {
            state.abandoned.push_back(session_id.to_owned());
            if state.abandoned.len() > MAX_SESSIONS
                && let Some(old) = state.abandoned.pop_front()
            {
                state.abandoned_set.remove(&old);
            }
        }
        Ok(())
    }

    async fn jobs(&self, _pool: &str, capacity: usize) -> Result<Box<dyn JobSource>, QueueError> {
        if capacity == 0 {
            return Err(QueueError::setup("job source capacity must be at least 1"));
        }
        if self.inner.lock().closed {
            return Err(QueueError::Closed);
        }
        // Jobs are taken from the shared ready queue only when asked for: a source holds none.
        Ok(Box::new(InProcessJobs {
            inner: Arc::clone(&self.inner),
        }))
    }
}

/// A subscriber's place in a session's record.
struct ResultCursor {
    inner: Arc<Inner>,
    session_id: String,
    /// Sequence of the next entry to hand out.
    next: u64,
    /// Entries before this sequence existed when the cursor was made: once none of them is
    /// left to hand out, the cursor says [`SessionEvent::CaughtUp`] (once; `None` after).
    replay_until: Option<u64>,
    newest: watch::Receiver<u64>,
}

impl ResultCursor {
    /// The next entry of the session, waiting for it; `None` once the queue is closed.
    async fn next(&mut self) -> Option<SessionEvent> {
        loop {
            {
                let mut state = self.inner.lock();
                if state.closed {
                    return None;
                }
                if self.newest.has_changed().is_err() {
                    // The session was forgotten (or evicted): follow its new incarnation.
                    let session = self.inner.session(&mut state, &self.session_id);
                    self.newest = session.newest.subscribe();
                }
                self.newest.borrow_and_update();
                let entry = state
                    .sessions
                    .get(&self.session_id)
                    .and_then(|session| session.entries.iter().find(|(seq, _)| *seq >= self.next));
                if let Some(until) = self.replay_until
                    && entry.is_none_or(|(seq, _)| *seq >= until)
                {
                    self.replay_until = None;
                    return Some(SessionEvent::CaughtUp);
                }
                if let Some((seq, event)) = entry {
                    self.next = seq + 1;
                    return Some(event.clone());
                }
            }
            // Results are published under the lock, so any newer one changes `newest` after
            // the check above. An error means the session went away: look again.
            let _ = self.newest.changed().await;
        }
    }
}

struct InProcessJobs {
    inner: Arc<Inner>,
}

#[async_trait]
impl JobSource for InProcessJobs {
    async fn next(&mut self, _room: usize) -> Option<Result<Delivery, QueueError>> {
        loop {
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.inner.lock();
                if state.closed {
                    return None;
                }
                if let Some(delivery) = self.inner.hand_out(&mut state) {
                    return Some(Ok(delivery));
                }
            }
            notified.await;
        }
    }
}

/// Acknowledges one in-process delivery.
struct InProcessAcker {
    inner: Arc<Inner>,
    job_id: String,
    /// The delivery this acker belongs to; nak and progress of an older one are ignored.
    generation: u64,
}

impl InProcessAcker {
    /// Whether this acker's delivery is the one out now.
    fn is_current(&self, state: &State) -> bool {
        state.live.get(&self.job_id).is_some_and(|job| {
            job.generation == self.generation && matches!(job.phase, Phase::Out { .. })
        })
    }
}

#[async_trait]
impl Acker for InProcessAcker {
    async fn ack(&self) -> Result<(), QueueError> {
        // As in JetStream, an ack of an older delivery still finishes the job.
        Inner::finish(&mut self.inner.lock(), &self.job_id);
        Ok(())
    }

    async fn nak(&self, delay: Duration) -> Result<(), QueueError> {
        let mut state = self.inner.lock();
        if self.is_current(&state) {
            self.inner.retry(&mut state, &self.job_id, delay);
        }
        Ok(())
    }

    async fn progress(&self) -> Result<(), QueueError> {
        let mut state = self.inner.lock();
        let ack_wait = state.ack_wait;
        if self.is_current(&state)
            && let Some(job) = state.live.get_mut(&self.job_id)
        {
            job.phase = Phase::Out {
                deadline: Instant::now() + ack_wait,
            };
        }
        Ok(())
    }
}
