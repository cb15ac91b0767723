//! The worker: pulls jobs, scores them with their profile, publishes each result, then acks.
//!
//! Admission, not buffering: a job is taken from the queue only when a scoring slot is free.
//! A result is published (and confirmed) before its job is acknowledged, so a worker killed at
//! any point loses nothing: the job is delivered again and JetStream's dedup drops the
//! duplicate result.

mod canary;
mod health;
mod monitor;

pub use canary::CANARY_SESSION;
pub use health::serve_health;
pub use monitor::{CanaryStats, Crossing, Monitor, MonitorStats, SessionStats};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rewardfleet_core::config::WorkerConfig;
use rewardfleet_core::{Job, JobResult, Pipeline, Reward, RewardStatus};
use rewardfleet_proto::v1::Timing;
use rewardfleet_queue::{Delivery, Queue, QueueError};
use rewardfleet_telemetry::metrics::label;
use rewardfleet_telemetry::{metrics, trace_id};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Why a worker stopped before its shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The queue could not give a source of jobs.
    #[error("cannot pull jobs")]
    Queue(#[from] QueueError),
}

/// How often a worker whose scorers have no room looks again (they free room as batches start
/// and judgements end, on threads of their own).
const ROOM_POLL: Duration = Duration::from_millis(2);

/// The most jobs one pull asks the queue for.
const PULL_BATCH: usize = 16;

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
    /// Candidates with a FAILED reward in the results this worker published.
    pub candidates_failed: AtomicU64,
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
    monitor: Arc<Monitor>,
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
        let monitor = Monitor::new(config.monitor.clone());
        Self {
            queue,
            pipeline,
            config,
            name: name.into(),
            stats,
            monitor,
        }
    }

    /// As it is, reporting into `monitor` (made before the worker, so that its heartbeat can
    /// describe them from the start).
    #[must_use]
    pub fn with_monitor(mut self, monitor: Arc<Monitor>) -> Self {
        self.monitor = monitor;
        self
    }

    /// Its reward-hacking monitors (shared; they keep moving while it runs).
    pub fn monitor(&self) -> Arc<Monitor> {
        Arc::clone(&self.monitor)
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
            monitor: Arc::clone(&self.monitor),
        });
        let canaries = self.canaries(shutdown.child_token());
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
            // Admission by what the scorers can take: while a model's batcher or a judge's queue
            // is full, another job would only wait in it (and its ack timer would run), so wait
            // for room instead. With nothing in flight here, take one anyway: the queue that is
            // full is someone else's (another worker in this process) and will drain.
            while !running.is_empty() && !self.pipeline.has_room() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = running.join_next() => {}
                    () = tokio::time::sleep(ROOM_POLL) => {}
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            // Room for this job and every other slot free now, and no more than one pull's
            // worth: the source fetches no more, so no job waits here while its ack timer runs.
            let room = (slots.available_permits() + 1).min(PULL_BATCH);
            let delivery = tokio::select! {
                () = shutdown.cancelled() => break,
                d = source.next(room) => d,
            };
            match delivery {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(worker = %self.name, error = %e.chain(), "pull hiccup; going on");
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
                    // Let the job reach its scorers (a model counts its tokens on the first poll)
                    // before asking them for room again.
                    tokio::task::yield_now().await;
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
        if let Some(canaries) = canaries {
            canaries.abort();
        }
        Ok(())
    }

    /// Starts the canary runs (`worker.monitor.canary_interval`), until `stop` fires. A canary
    /// file that cannot be read now (it was when the configuration was checked) is a warning:
    /// the worker scores without canaries.
    fn canaries(&self, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let monitor = &self.config.monitor;
        let interval = monitor.canary_interval;
        let path = monitor.canaries.as_ref()?;
        if interval.is_zero() {
            return None;
        }
        let canaries = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| rewardfleet_core::config::parse_canaries(&text));
        match canaries {
            Ok(canaries) => {
                tracing::info!(worker = %self.name, canaries = canaries.len(), ?interval, "canary runs on");
                Some(tokio::spawn(canary::run(
                    self.pipeline.clone(),
                    Arc::clone(&self.monitor),
                    canaries,
                    interval,
                    stop,
                )))
            }
            Err(e) => {
                tracing::warn!(worker = %self.name, file = %path.display(), error = %e, "no canary runs: the canary file cannot be used");
                None
            }
        }
    }
}

struct JobContext {
    queue: Arc<dyn Queue>,
    pipeline: Pipeline,
    config: WorkerConfig,
    name: String,
    stats: Arc<WorkerStats>,
    monitor: Arc<Monitor>,
}

impl JobContext {
    async fn process(&self, delivery: Delivery) {
        self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
        if delivery.attempt > 1 {
            self.stats.redeliveries.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = metrics() {
                m.jobs_redelivered
                    .add(1, &[label("pool", self.config.pool.clone())]);
            }
        }
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let span = self.job_span(&delivery);
        let job_id = delivery.job.job_id.clone();
        let outcome = self
            .score_publish_ack(&delivery)
            .instrument(span.clone())
            .await;
        if let Err(e) = outcome {
            tracing::warn!(worker = %self.name, job = %job_id, attempt = delivery.attempt, error = %e.chain(), trace_id = trace_id(&span).as_deref(), "job not finished");
        }
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The job's span: a child of the span that published it (across NATS, in its headers),
    /// with the candidate ids (never their texts) as an attribute.
    fn job_span(&self, delivery: &Delivery) -> tracing::Span {
        let job = &delivery.job;
        let span = match &delivery.subject {
            Some(subject) => tracing::info_span!(
                "process",
                otel.name = %format_args!("process {}", subject.rsplit_once('.').map_or(subject.as_str(), |(pattern, _)| pattern)),
                otel.kind = "consumer",
                messaging.system = "nats",
                messaging.operation.type = "process",
                messaging.destination.name = %subject,
                messaging.message.id = %job.job_id,
                messaging.consumer.group.name = %self.config.pool,
                rewardfleet.profile = %job.profile,
                rewardfleet.attempt = delivery.attempt,
                rewardfleet.candidates = job.candidates.len(),
                rewardfleet.worker = %self.name,
            ),
            None => tracing::info_span!(
                "job",
                otel.name = %format_args!("job {}", job.profile),
                messaging.message.id = %job.job_id,
                rewardfleet.profile = %job.profile,
                rewardfleet.attempt = delivery.attempt,
                rewardfleet.candidates = job.candidates.len(),
                rewardfleet.worker = %self.name,
            ),
        };
        delivery.trace_context.set_parent_of(&span);
        if trace_id(&span).is_some() {
            let ids: Vec<opentelemetry::StringValue> =
                job.candidates.iter().map(|c| c.id.clone().into()).collect();
            span.set_attribute(
                rewardfleet_telemetry::keys::CANDIDATE_IDS,
                opentelemetry::Value::Array(ids.into()),
            );
        }
        span
    }

    async fn score_publish_ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let job = &delivery.job;
        let last = delivery.is_last_attempt();
        // Score on a task of its own so that a panicking scorer fails this job, not the worker,
        // and send in-progress acks while it runs so that a long job is not redelivered.
        let pipeline = self.pipeline.clone();
        let scored_job = job.clone();
        let started = Instant::now();
        let mut scoring = tokio::spawn(
            async move { pipeline.score_job(&scored_job).await }.instrument(Span::current()),
        );
        let heartbeat = (self.config.ack_wait / 3).max(Duration::from_millis(100));
        let scored = loop {
            tokio::select! {
                r = &mut scoring => break r,
                () = tokio::time::sleep(heartbeat) => {
                    if let Err(e) = delivery.acker.progress().await {
                        tracing::debug!(job = %job.job_id, error = %e.chain(), "progress ack failed");
                    }
                }
            }
        };
        let result = match scored {
            Ok(outcome) if outcome.retry && !last => {
                self.stats.jobs_retried.fetch_add(1, Ordering::Relaxed);
                return delivery.acker.nak(self.config.retry_delay).await;
            }
            Ok(outcome) => {
                let scoring = started.elapsed();
                let mut rewards = outcome.rewards;
                for reward in &mut rewards {
                    reward.timing = Some(Timing {
                        scoring_ms: scoring.as_secs_f64() * 1e3,
                        ..Timing::default()
                    });
                }
                self.observe(job, &rewards, scoring);
                JobResult {
                    job_id: job.job_id.clone(),
                    session_id: job.session_id.clone(),
                    rewards,
                    worker: self.name.clone(),
                    judge_tokens: outcome.judge_tokens,
                }
            }
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

    /// Counts a scored job's candidates by status and says, once per job, why any failed
    /// (with the trace id, so that the line leads to the job's trace).
    fn observe(&self, job: &Job, rewards: &[Reward], scoring: Duration) {
        self.monitor
            .observe(&job.profile, &job.session_id, &job.candidates, rewards);
        let failed: Vec<&Reward> = rewards
            .iter()
            .filter(|r| r.status() == RewardStatus::Failed)
            .collect();
        self.stats
            .candidates_failed
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
        if let Some(first) = failed.first() {
            tracing::warn!(
                worker = %self.name,
                job = %job.job_id,
                profile = %job.profile,
                failed = failed.len(),
                candidates = rewards.len(),
                first_candidate = %first.candidate_id,
                error = %first.error,
                trace_id = trace_id(&Span::current()).as_deref(),
                "candidates FAILED"
            );
        }
        if let Some(m) = metrics() {
            let profile = label("profile", job.profile.clone());
            m.job_duration
                .record(scoring.as_secs_f64(), std::slice::from_ref(&profile));
            for status in [
                RewardStatus::Ok,
                RewardStatus::Degraded,
                RewardStatus::Failed,
            ] {
                let n = rewards.iter().filter(|r| r.status() == status).count();
                if n > 0 {
                    m.candidates_scored.add(
                        n as u64,
                        &[profile.clone(), label("status", status.label())],
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use futures::StreamExt;
    use rewardfleet_core::config::{MonitorConfig, NormalizeKind, OnFailure};
    use rewardfleet_core::profile::Component;
    use rewardfleet_core::scorer::Outcome;
    use rewardfleet_core::{
        Candidate, ComponentKind, FailureReason, Job, Profile, RewardStatus, Score, ScoreContext,
        ScoreError, Scorer,
    };
    use rewardfleet_queue::{InProcessQueue, SessionEvent};

    use super::*;

    /// Scores the response's length; `transient` responses fail for a passing reason, `panic`
    /// ones crash the scorer. Counts its calls.
    #[derive(Default)]
    struct Length {
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Scorer for Length {
        async fn score(&self, _: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            group
                .iter()
                .map(|c| match c.response.as_str() {
                    "panic" => panic!("the scorer crashed"),
                    "transient" => Err(ScoreError::transient(
                        FailureReason::JudgeUnavailable,
                        "try later",
                    )),
                    r => Ok(Score::new(r.len() as f64)),
                })
                .collect()
        }
    }

    fn pipeline(scorer: Arc<Length>) -> Pipeline {
        let profile = Profile {
            name: "p".into(),
            components: vec![Component {
                name: "length".into(),
                kind: ComponentKind::Rule,
                weight: 1.0,
                gate: None,
                scorer,
                fallback: None,
            }],
            normalize: NormalizeKind::None,
            clip: (0.0, 1.0),
            on_component_failure: OnFailure::Fail,
            floor: 0.0,
        };
        Pipeline::new(HashMap::from([("p".to_owned(), Arc::new(profile))]))
    }

    fn job(n: usize, response: &str) -> Job {
        Job {
            job_id: format!("s.job{n}"),
            session_id: "s".into(),
            profile: "p".into(),
            candidates: vec![Candidate {
                id: format!("c{n}"),
                response: response.into(),
                ..Default::default()
            }],
        }
    }

    fn config(max_deliver: i64) -> WorkerConfig {
        WorkerConfig {
            max_concurrent_jobs: 2,
            max_deliver,
            retry_delay: Duration::from_millis(10),
            drain_timeout: Duration::from_secs(5),
            ..WorkerConfig::default()
        }
    }

    /// Holds every group until the test lets one go; has room while fewer than `room` are held.
    struct Held {
        held: AtomicUsize,
        peak: AtomicUsize,
        room: usize,
        release: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl Scorer for Held {
        async fn score(&self, _: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
            let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            self.release.acquire().await.expect("open").forget();
            self.held.fetch_sub(1, Ordering::SeqCst);
            group.iter().map(|_| Ok(Score::new(1.0))).collect()
        }

        fn has_room(&self) -> bool {
            self.held.load(Ordering::SeqCst) < self.room
        }
    }

    /// Admission follows the scorers' room, not the job count: with room for 3 a worker holds 3
    /// of 20 queued jobs (4: one may be on its way to the scorer as it fills) although it may
    /// hold 256; a scorer with room without end gets all 20.
    #[tokio::test]
    async fn a_worker_takes_jobs_while_its_scorers_have_room() {
        for (room, want) in [(3, 3), (usize::MAX, 20usize)] {
            let scorer = Arc::new(Held {
                held: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                room,
                release: tokio::sync::Semaphore::new(0),
            });
            let profile = Profile {
                name: "p".into(),
                components: vec![Component {
                    name: "held".into(),
                    kind: ComponentKind::Rule,
                    weight: 1.0,
                    gate: None,
                    scorer: Arc::clone(&scorer) as Arc<dyn Scorer>,
                    fallback: None,
                }],
                normalize: NormalizeKind::None,
                clip: (0.0, 1.0),
                on_component_failure: OnFailure::Fail,
                floor: 0.0,
            };
            let pipeline = Pipeline::new(HashMap::from([("p".to_owned(), Arc::new(profile))]));
            let cfg = WorkerConfig::default();
            assert_eq!(cfg.max_concurrent_jobs, 256);
            let queue = Arc::new(InProcessQueue::new(&cfg, 64));
            let mut events = queue.results("s").await.expect("subscribe");
            for n in 0..20 {
                queue.publish_job(&job(n, "x")).await.expect("publish");
            }
            let worker = Worker::new(queue, pipeline, cfg, "w");
            let stop = CancellationToken::new();
            let running = tokio::spawn(worker.run(stop.clone()));
            // Until the scorer holds what it has room for, and a while more.
            while scorer.held.load(Ordering::SeqCst) < want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let peak = scorer.peak.load(Ordering::SeqCst);
            assert!(
                (want..=want + 1).contains(&peak),
                "room {room}: peak {peak}"
            );
            scorer.release.add_permits(20);
            let mut results = 0;
            while results < 20 {
                let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                    .await
                    .expect("a result within 10 s");
                if let Some(Ok(SessionEvent::Result(..))) = event {
                    results += 1;
                }
            }
            assert_eq!(
                scorer.peak.load(Ordering::SeqCst),
                peak,
                "nothing more once full"
            );
            stop.cancel();
            running.await.expect("worker task").expect("worker");
        }
    }

    /// Runs a worker over `jobs` until `n` results came; returns them by job id.
    async fn results_of(
        jobs: &[Job],
        n: usize,
        max_deliver: i64,
        scorer: Arc<Length>,
    ) -> (HashMap<String, JobResult>, Arc<WorkerStats>) {
        let queue = Arc::new(InProcessQueue::new(&config(max_deliver), 64));
        let mut events = queue.results("s").await.expect("subscribe");
        for j in jobs {
            queue.publish_job(j).await.expect("publish");
        }
        let worker = Worker::new(queue, pipeline(scorer), config(max_deliver), "w");
        let stats = worker.stats();
        let stop = CancellationToken::new();
        let running = tokio::spawn(worker.run(stop.clone()));
        let mut results = HashMap::new();
        while results.len() < n {
            let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("a result within 10 s");
            if let Some(Ok(SessionEvent::Result(r, _))) = event {
                results.insert(r.job_id.clone(), r);
            }
        }
        stop.cancel();
        running.await.expect("worker task").expect("worker");
        (results, stats)
    }

    /// Runs a worker (monitors with `monitor`) over one job per response; returns its
    /// monitors once every result came, and the threshold crossings of a replay.
    async fn monitored(responses: &[String], monitor: MonitorConfig) -> Arc<Monitor> {
        let mut cfg = config(1);
        cfg.monitor = monitor;
        let queue = Arc::new(InProcessQueue::new(&cfg, 64));
        let mut events = queue.results("s").await.expect("subscribe");
        let worker = Worker::new(
            queue.clone(),
            pipeline(Arc::new(Length::default())),
            cfg,
            "w",
        );
        let monitors = worker.monitor();
        let stop = CancellationToken::new();
        let running = tokio::spawn(worker.run(stop.clone()));
        for (n, r) in responses.iter().enumerate() {
            queue.publish_job(&job(n, r)).await.expect("publish");
        }
        let mut seen = 0;
        while seen < responses.len() {
            let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("a result within 10 s");
            if let Some(Ok(SessionEvent::Result(..))) = event {
                seen += 1;
            }
        }
        stop.cancel();
        running.await.expect("worker task").expect("worker");
        monitors
    }

    /// A synthetic policy over a session: every answer is equally right ("4"), but it learns
    /// that a length-biased grader pays for words, and pads its answers with more and more
    /// flattery. The length-correlation monitor sees it; a policy that stays put does not.
    #[tokio::test]
    async fn a_policy_buying_reward_with_flattery_trips_the_length_monitor() {
        let monitor = MonitorConfig {
            window: 100,
            min_samples: 50,
            ..MonitorConfig::default()
        };
        let gaming: Vec<String> = (0..120)
            .map(|i| format!("4.{}", " What a brilliant question!".repeat(i / 10)))
            .collect();
        let stats = monitored(&gaming, monitor.clone()).await.snapshot()["p"];
        assert_eq!(stats.samples, 100, "the window keeps the last 100");
        assert!(stats.length_correlation > 0.99, "{stats:?}");
        let crossed = Monitor::new(monitor.clone()).observe(
            "p",
            "s",
            &gaming
                .iter()
                .enumerate()
                .map(|(n, r)| job(n, r).candidates.remove(0))
                .collect::<Vec<_>>(),
            &gaming
                .iter()
                .map(|r| Reward {
                    value: r.len() as f64,
                    status: RewardStatus::Ok as i32,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        );
        let crossed: Vec<(Option<&str>, &str)> = crossed
            .iter()
            .map(|c| (c.session.as_deref(), c.statistic))
            .collect();
        assert_eq!(
            crossed,
            [
                (None, "length_correlation"),
                (Some("s"), "length_correlation")
            ]
        );

        let steady: Vec<String> = (0..120).map(|_| "4. Done.".to_owned()).collect();
        let stats = monitored(&steady, monitor).await.snapshot()["p"];
        assert_eq!(stats.length_correlation, 0.0, "{stats:?}");
    }

    #[tokio::test]
    async fn scores_publishes_and_acks_each_job_once() {
        let scorer = Arc::new(Length::default());
        let jobs: Vec<Job> = (0..5).map(|n| job(n, &"x".repeat(n))).collect();
        let (results, stats) = results_of(&jobs, 5, 3, Arc::clone(&scorer)).await;
        for n in 0..5 {
            let r = &results[&format!("s.job{n}")];
            assert_eq!(r.worker, "w");
            assert_eq!(r.rewards[0].value, n as f64);
            assert_eq!(r.rewards[0].status(), RewardStatus::Ok);
        }
        assert_eq!(stats.jobs_done.load(Ordering::SeqCst), 5);
        assert_eq!(stats.deliveries.load(Ordering::SeqCst), 5);
        assert_eq!(scorer.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_passing_failure_is_retried_until_the_last_attempt() {
        let scorer = Arc::new(Length::default());
        let (results, stats) = results_of(&[job(0, "transient")], 1, 3, Arc::clone(&scorer)).await;
        let reward = &results["s.job0"].rewards[0];
        assert_eq!(reward.status(), RewardStatus::Failed);
        assert!(reward.error.contains("try later"), "{}", reward.error);
        assert_eq!(
            scorer.calls.load(Ordering::SeqCst),
            3,
            "max_deliver attempts"
        );
        assert_eq!(stats.jobs_retried.load(Ordering::SeqCst), 2);
        assert_eq!(stats.redeliveries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_crashing_scorer_fails_its_job_not_the_worker() {
        let scorer = Arc::new(Length::default());
        let jobs = [job(0, "panic"), job(1, "ok")];
        let (results, stats) = results_of(&jobs, 2, 2, Arc::clone(&scorer)).await;
        let crashed = &results["s.job0"].rewards[0];
        assert_eq!(crashed.status(), RewardStatus::Failed);
        assert!(
            crashed.error.contains("crashed on all 2 attempts"),
            "{}",
            crashed.error
        );
        assert_eq!(results["s.job1"].rewards[0].value, 2.0);
        assert_eq!(stats.jobs_given_up.load(Ordering::SeqCst), 1);
    }
}
