//! Carries jobs to workers and results back: NATS JetStream across machines, or an in-process
//! queue in embedded mode. Both honour the same contract, so the gateway and the worker do not
//! know which one they run on.

mod error;
pub mod inprocess;
pub mod jetstream;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use rewardfleet_core::{Job, JobResult};

pub use error::QueueError;
pub use inprocess::InProcessQueue;
pub use jetstream::JetStreamQueue;

/// The results of one session, as they arrive (replaying those still retained first).
///
/// An `Err` item is passing (a reconnect, or one result that could not be decoded): keep
/// reading. The stream ends only when the queue's connection is closed for good.
pub type ResultStream = BoxStream<'static, Result<JobResult, QueueError>>;

/// The gateway's side and the workers' side of the job queue.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Queues a job durably; returns once the queue has acknowledged it. Publishing the same
    /// `job_id` again within the dedup window is accepted and has no effect.
    async fn publish_job(&self, job: &Job) -> Result<(), QueueError>;

    /// Publishes a job's result to its session; returns once the queue has acknowledged it.
    /// A result for the same `job_id` published twice is delivered once.
    async fn publish_result(&self, result: &JobResult) -> Result<(), QueueError>;

    /// The results of a session: every result still retained, then new ones as they come.
    async fn results(&self, session_id: &str) -> Result<ResultStream, QueueError>;

    /// Drops what is retained for a session that closed cleanly.
    async fn forget_session(&self, session_id: &str) -> Result<(), QueueError>;

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
    async fn next(&mut self) -> Option<Result<Delivery, QueueError>>;
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
    /// Never deliver again.
    async fn term(&self) -> Result<(), QueueError>;
}
