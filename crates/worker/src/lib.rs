//! The worker: pulls jobs, scores them with their profile, publishes each result, then acks.
//!
//! Admission, not buffering: a job is taken from the queue only when a scoring slot is free.
//! A result is published (and confirmed) before its job is acknowledged, so a worker killed at
//! any point loses nothing: the job is delivered again and JetStream's dedup drops the
//! duplicate result.

mod health;

pub use health::serve_health;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rewardfleet_core::config::WorkerConfig;
use rewardfleet_core::{JobResult, Pipeline};
use rewardfleet_queue::{Delivery, Queue, QueueError};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why a worker stopped before its shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The queue could not give a source of jobs.
    #[error("cannot pull jobs: {0}")]
    Queue(#[from] QueueError),
}

/// What a worker has done, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Jobs whose result was published and acknowledged.
    pub jobs_done: AtomicU64,
    /// Candidates in those jobs.
    pub candidates_done: AtomicU64,
    /// Jobs handed back for a later try.
    pub jobs_retried: AtomicU64,
    /// Jobs given up after their last attempt (FAILED rewards published).
    pub jobs_given_up: AtomicU64,
    /// Deliveries taken (a job delivered twice counts twice).
    pub deliveries: AtomicU64,
    /// Deliveries of a job already delivered before (a worker died, an ack timed out, a nak).
    pub redeliveries: AtomicU64,
    /// Jobs being scored now.
    pub in_flight: AtomicU64,
    /// Ready to take work (its models loaded and warm, pulling).
    pub ready: AtomicBool,
}

/// A worker over a queue and a pipeline.
pub struct Worker {
    queue: Arc<dyn Queue>,
    pipeline: Pipeline,
    config: WorkerConfig,
    name: String,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// A worker named `name` (shown in results) that scores with `pipeline`.
    pub fn new(
        queue: Arc<dyn Queue>,
        pipeline: Pipeline,
        config: WorkerConfig,
        name: impl Into<String>,
    ) -> Self {
        Self::with_stats(queue, pipeline, config, name, Arc::default())
    }

    /// As [`Worker::new`], reporting into `stats` (made before the worker, so that the
    /// readiness probe can answer while models load).
    pub fn with_stats(
        queue: Arc<dyn Queue>,
        pipeline: Pipeline,
        config: WorkerConfig,
        name: impl Into<String>,
        stats: Arc<WorkerStats>,
    ) -> Self {
        Self {
            queue,
            pipeline,
            config,
            name: name.into(),
            stats,
        }
    }

    /// Its counters (shared; they keep moving while it runs).
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// Pulls and scores jobs until `shutdown` fires; then stops pulling, lets the jobs in flight
    /// finish (publish, ack) for up to `drain_timeout`, and returns. Jobs still unfinished at the
    /// deadline are handed back for redelivery.
    ///
    /// # Errors
    /// If no source of jobs can be had from the queue.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let capacity = self.config.max_concurrent_jobs;
        let mut source = self.queue.jobs(&self.config.pool, capacity).await?;
        let slots = Arc::new(Semaphore::new(capacity));
        let mut running: JoinSet<()> = JoinSet::new();
        let ctx = Arc::new(JobContext {
            queue: Arc::clone(&self.queue),
            pipeline: self.pipeline.clone(),
            config: self.config.clone(),
            name: self.name.clone(),
            stats: Arc::clone(&self.stats),
        });
        self.stats.ready.store(true, Ordering::Relaxed);
        tracing::info!(worker = %self.name, pool = %self.config.pool, capacity, "worker pulling");
        loop {
            while running.try_join_next().is_some() {}
            let slot = tokio::select! {
                () = shutdown.cancelled() => break,
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            // Room for this job and every other slot free now: the source fetches no more.
            let room = capacity;
            let delivery = tokio::select! {
                () = shutdown.cancelled() => break,
                d = source.next(room) => d,
            };
            match delivery {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(worker = %self.name, error = %e, "pull hiccup; going on");
                    if !e.is_retryable() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Some(Ok(delivery)) => {
                    let ctx = Arc::clone(&ctx);
                    running.spawn(async move {
                        ctx.process(delivery).await;
                        drop(slot);
                    });
                }
            }
        }
        self.stats.ready.store(false, Ordering::Relaxed);
        drop(source);
        tracing::info!(worker = %self.name, in_flight = running.len(), "draining");
        let drained = tokio::time::timeout(self.config.drain_timeout, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(worker = %self.name, left = running.len(), "drain deadline passed; unfinished jobs will be redelivered");
            running.abort_all();
        }
        Ok(())
    }
}

struct JobContext {
    queue: Arc<dyn Queue>,
    pipeline: Pipeline,
    config: WorkerConfig,
    name: String,
    stats: Arc<WorkerStats>,
}

impl JobContext {
    async fn process(&self, delivery: Delivery) {
        self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
        if delivery.attempt > 1 {
            self.stats.redeliveries.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let job_id = delivery.job.job_id.clone();
        let outcome = self.score_publish_ack(&delivery).await;
        if let Err(e) = outcome {
            tracing::warn!(worker = %self.name, job = %job_id, attempt = delivery.attempt, error = %e, "job not finished");
        }
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    async fn score_publish_ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let job = &delivery.job;
        let last = delivery.is_last_attempt();
        // Score on a task of its own so that a panicking scorer fails this job, not the worker,
        // and send in-progress acks while it runs so that a long job is not redelivered.
        let pipeline = self.pipeline.clone();
        let scored_job = job.clone();
        let mut scoring = tokio::spawn(async move { pipeline.score_job(&scored_job).await });
        let heartbeat = (self.config.ack_wait / 3).max(Duration::from_millis(100));
        let scored = loop {
            tokio::select! {
                r = &mut scoring => break r,
                () = tokio::time::sleep(heartbeat) => {
                    if let Err(e) = delivery.acker.progress().await {
                        tracing::debug!(job = %job.job_id, error = %e, "progress ack failed");
                    }
                }
            }
        };
        let result = match scored {
            Ok(outcome) if outcome.retry && !last => {
                self.stats.jobs_retried.fetch_add(1, Ordering::Relaxed);
                return delivery.acker.nak(self.config.retry_delay).await;
            }
            Ok(outcome) => JobResult {
                job_id: job.job_id.clone(),
                session_id: job.session_id.clone(),
                rewards: outcome.rewards,
                worker: self.name.clone(),
            },
            Err(panic) if !last => {
                tracing::error!(job = %job.job_id, error = %panic, "scoring panicked; the job will be tried again");
                self.stats.jobs_retried.fetch_add(1, Ordering::Relaxed);
                return delivery.acker.nak(self.config.retry_delay).await;
            }
            Err(panic) => {
                tracing::error!(job = %job.job_id, error = %panic, "scoring panicked on the last attempt");
                self.stats.jobs_given_up.fetch_add(1, Ordering::Relaxed);
                let error = format!(
                    "internal error: scoring crashed on all {} attempts",
                    delivery.attempt
                );
                JobResult::failed(job, &self.name, &error)
            }
        };
        if let Err(e) = self.queue.publish_result(&result).await {
            // Not published: hand the job back; never ack what was not delivered.
            let _ = delivery.acker.nak(self.config.retry_delay).await;
            return Err(e);
        }
        delivery.acker.ack().await?;
        self.stats.jobs_done.fetch_add(1, Ordering::Relaxed);
        self.stats
            .candidates_done
            .fetch_add(job.candidates.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
