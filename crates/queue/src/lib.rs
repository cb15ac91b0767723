//! Carries jobs to workers and results back: NATS JetStream across machines, or an in-process
//! queue in embedded mode. Both honour the same contract, so the gateway and the worker do not
//! know which one they run on.

mod error;
pub mod inprocess;
pub mod jetstream;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use rewardfleet_core::{Job, JobAccepted, JobResult};
pub use rewardfleet_telemetry::TraceContext;

pub use error::{Cause, Chain, QueueError};
pub use inprocess::InProcessQueue;
pub use jetstream::JetStreamQueue;

/// The `worker` of the FAILED results that a queue publishes for a job it gave up.
pub const DEAD_LETTER_WORKER: &str = "dead-letter";

/// The error of every reward of a job given up after `deliveries` deliveries.
pub(crate) fn given_up_error(deliveries: u64) -> String {
    format!(
        "gave up after {deliveries} deliveries: every worker that took this job stopped before \
         finishing it (crash or out of memory?); see the workers' logs and memory limits, or send \
         smaller batches"
    )
}

/// The events of one session, as they arrive: those still retained first (replayed in the
/// order they were recorded), then [`SessionEvent::CaughtUp`] once, then new ones.
///
/// An `Err` item is passing (a reconnect, or one entry that could not be decoded): keep
/// reading. The stream ends only when the queue's connection is closed for good.
pub type ResultStream = BoxStream<'static, Result<SessionEvent, QueueError>>;

/// What a session's record holds: its ledger of accepted jobs, and its results.
///
/// The record outlives the gateway that wrote it (for `nats.results_max_age` on JetStream), so
/// any gateway that resumes the session knows which candidates it still owes a reward.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A job of the session was durably queued.
    Accepted(JobAccepted),
    /// A job's rewards, and the trace context of the span that published them.
    Result(JobResult, TraceContext),
    /// Everything retained when the stream was opened has been replayed.
    CaughtUp,
}

/// The gateway's side and the workers' side of the job queue.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Queues a job durably; returns once the queue has acknowledged it. Publishing the same
    /// `job_id` again within the dedup window is accepted and has no effect. The current span's
    /// trace context travels with the job (in message headers on JetStream).
    async fn publish_job(&self, job: &Job) -> Result<(), QueueError>;

    /// Records in the session's ledger that a job was accepted (call it once
    /// [`Queue::publish_job`] returned); returns once the queue has acknowledged it. Recording the
    /// same `job_id` twice is harmless.
    async fn record_accepted(&self, entry: &JobAccepted) -> Result<(), QueueError>;

    /// Publishes a job's result to its session; returns once the queue has acknowledged it.
    /// A result for the same `job_id` published twice is delivered once. The current span's
    /// trace context travels with it.
    async fn publish_result(&self, result: &JobResult) -> Result<(), QueueError>;

    /// The events of a session: every entry still retained, then new ones as they come.
    async fn results(&self, session_id: &str) -> Result<ResultStream, QueueError>;

    /// Drops what is retained for a session that closed cleanly.
    async fn forget_session(&self, session_id: &str) -> Result<(), QueueError>;

    /// A session that no one will read again (its caller left and cannot resume): drops what is
    /// retained for it and tells every worker to skip its jobs not yet started. Jobs already
    /// being scored finish; their results are dropped with the session's record.
    async fn abandon_session(&self, session_id: &str) -> Result<(), QueueError>;

    /// A source of jobs for one worker, pulling from `pool`. The source holds at most `capacity`
    /// deliveries that it has fetched but not yet handed out by [`JobSource::next`], so a worker
    /// never sits on jobs it has no room to score (their ack timers would run out).
    async fn jobs(&self, pool: &str, capacity: usize) -> Result<Box<dyn JobSource>, QueueError>;
}

/// Where a worker takes its jobs from.
#[async_trait]
pub trait JobSource: Send {
    /// The next job, waiting until one comes. `None` once the source is closed for good.
    /// Passing errors (a reconnect) are returned as `Some(Err(_))`; the caller keeps calling.
    ///
    /// `room` is how many jobs the caller can start now, this one included (at least 1): a
    /// source fetches no more than that ahead, so no job waits in a worker that cannot start
    /// it while its redelivery timer runs. Jobs of abandoned sessions are skipped (terminated).
    async fn next(&mut self, room: usize) -> Option<Result<Delivery, QueueError>>;
}

/// A job handed to a worker, to be acknowledged once its result is published.
pub struct Delivery {
    /// The job.
    pub job: Job,
    /// 1 for the first delivery, 2 for the first redelivery …
    pub attempt: u64,
    /// Deliveries after which the job is given up (FAILED rewards instead of another try).
    pub max_deliver: u64,
    /// How the worker reports back.
    pub acker: Box<dyn Acker>,
    /// The trace context of the span that published the job (empty when none was traced).
    pub trace_context: TraceContext,
    /// The NATS subject the job came on; `None` for the in-process queue.
    pub subject: Option<String>,
}

impl Delivery {
    /// This is the job's last chance: a failure now must produce FAILED rewards, not a retry.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_deliver
    }
}

/// Acknowledgement of a delivery, in JetStream's terms.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Done: the result is published. Waits for the server's confirmation.
    async fn ack(&self) -> Result<(), QueueError>;
    /// Not done, for a passing reason: deliver again after `delay`.
    async fn nak(&self, delay: Duration) -> Result<(), QueueError>;
    /// Still working: reset the redelivery timer.
    async fn progress(&self) -> Result<(), QueueError>;
}
