//! Dead letters: jobs that JetStream gave up on get an explicit FAILED result.
//!
//! A worker that gets to score a job's last delivery publishes FAILED rewards itself. What it
//! cannot cover is a job whose worker stops (kill -9, out of memory) on every delivery: after
//! `max_deliver` deliveries the server stops delivering it, keeps it in the work-queue stream
//! (by design) and fires the core-NATS advisory
//! `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`. Without more, the trainer
//! would wait for that job's rewards forever.
//!
//! [`JetStreamQueue::watch_dead_letters`] closes that gap. For each such job it reads the job
//! from the stream, publishes a [`JobResult`] whose rewards are all FAILED through the normal
//! result path (message id `r.<job_id>`, so a late worker's result, or another gateway's
//! watcher, is a harmless duplicate), then deletes the job from the stream. A job that already
//! had its result (its worker published it and stopped before the ack, or a server restart kept
//! a job acknowledged just before it) is only deleted: the results stream drops the FAILED one
//! as a duplicate, and it is not counted as dead-lettered.
//!
//! Advisories are not persisted: one fired while no watcher listened is lost. The watcher
//! therefore also *sweeps* at start-up, after every reconnect and every `ack_wait`: a job still
//! in the stream at or below its consumer's ack floor will never be delivered again (on a
//! work-queue stream an acknowledged job is removed, and the floor only passes a job that is no
//! longer pending), so it is dead. The floor passes a dead job once every job delivered before
//! it is acknowledged; until then only the advisory finds it (see the limitations in
//! [`JetStreamQueue::sweep_dead_letters`]).

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use futures::{Future, StreamExt, TryStreamExt};
use prost::Message as _;
use rewardfleet_core::{Job, JobResult};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{JetStreamQueue, unavailable};
use crate::{DEAD_LETTER_WORKER, QueueError};

/// Pause before subscribing again when the subscription could not be made.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
/// Sweeps run at least this far apart, however short `ack_wait` is.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The fields of a max-deliveries advisory that the watcher reads (the server sends more).
#[derive(Debug, Deserialize)]
struct MaxDeliveriesAdvisory {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
}

/// What became of one dead job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Burial {
    /// FAILED result published, job deleted.
    Buried,
    /// The job already had its result (a worker published it and then stopped before its ack,
    /// or acknowledged it just before a server restart that kept the job, or another watcher
    /// buried it first): the FAILED one was dropped by the results stream's dedup, and the job
    /// deleted. Not given up here: not counted.
    Scored,
    /// Not one of this queue's jobs: left alone.
    Foreign,
}

impl JetStreamQueue {
    /// The subject of the max-deliveries advisories of every consumer on the jobs stream.
    pub fn dead_letter_advisory_subject(&self) -> String {
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
            self.jobs_stream
        )
    }

    /// Watches for jobs that JetStream gave up on (delivered `max_deliver` times, never
    /// acknowledged: every worker that took them stopped) and gives each one a FAILED result
    /// naming the number of deliveries, published as worker [`DEAD_LETTER_WORKER`], then deletes
    /// it from the jobs stream.
    ///
    /// It listens to the max-deliveries advisory of every pool's consumer, and sweeps (see
    /// [`JetStreamQueue::sweep_dead_letters`]) at start-up, after every reconnect and every
    /// `ack_wait` (at least 1 s) for jobs whose advisory it missed. Several processes may run
    /// it at once: results are deduplicated by job id, and a job already deleted is skipped.
    ///
    /// The returned future owns a handle on the queue (spawn it); it runs until `shutdown` is
    /// cancelled or the connection is closed for good. Errors (server away, malformed
    /// advisories) are logged and never end it; the connection resubscribes by itself after a
    /// server restart.
    pub fn watch_dead_letters(
        &self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let queue = self.clone();
        async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = queue.watch_dead_letters_until_closed() => {}
            }
            tracing::debug!("dead-letter watcher stopped");
        }
    }

    async fn watch_dead_letters_until_closed(&self) {
        let subject = self.dead_letter_advisory_subject();
        let mut advisories = loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(subscriber) => break subscriber,
                Err(e) => {
                    tracing::warn!(subject, error = %e, "cannot subscribe to max-deliveries advisories; retrying");
                    tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                }
            }
        };
        let jobs = match self.js.get_stream_no_info(&self.jobs_stream).await {
            Ok(jobs) => jobs,
            Err(e) => {
                // Only an invalid name fails here, and connect() already created the stream.
                tracing::error!(stream = self.jobs_stream, error = %e, "dead-letter watcher cannot address the jobs stream");
                return;
            }
        };
        let mut sweep = tokio::time::interval(self.ack_wait.max(MIN_SWEEP_INTERVAL));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = self.connected.clone();
        connected.mark_unchanged();
        tracing::info!(subject, "watching for jobs given up after max_deliver");
        loop {
            tokio::select! {
                message = advisories.next() => match message {
                    Some(message) => self.on_advisory(&jobs, &message.payload).await,
                    // The client is closed for good (a server restart resubscribes by itself).
                    None => return,
                },
                _ = sweep.tick() => {
                    if let Err(e) = self.sweep_stream(&jobs).await {
                        tracing::warn!(error = %e.chain(), "dead-letter sweep failed; trying again later");
                    }
                }
                changed = connected.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Advisories fired during the outage are lost: look for their jobs now.
                    sweep.reset_immediately();
                }
            }
        }
    }

    async fn on_advisory(&self, jobs: &Stream<()>, payload: &[u8]) {
        let advisory: MaxDeliveriesAdvisory = match serde_json::from_slice(payload) {
            Ok(advisory) => advisory,
            Err(e) => {
                tracing::warn!(error = %e, payload = %String::from_utf8_lossy(payload), "malformed max-deliveries advisory ignored");
                return;
            }
        };
        if advisory.stream != self.jobs_stream {
            return;
        }
        let seq = advisory.stream_seq;
        let message = match jobs.get_raw_message(seq).await {
            Ok(message) => message,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
                tracing::debug!(seq, "dead job already gone");
                return;
            }
            Err(e) => {
                tracing::warn!(seq, consumer = advisory.consumer, error = %e, "cannot read a dead job; the sweep will retry once the ack floor passes it");
                return;
            }
        };
        match self.bury(jobs, message, advisory.deliveries).await {
            Ok(burial) => tracing::debug!(seq, ?burial, "max-deliveries advisory handled"),
            Err(e) => {
                tracing::warn!(seq, error = %e.chain(), "cannot dead-letter a job; the sweep will retry once the ack floor passes it");
            }
        }
    }

    /// Looks once for jobs that JetStream gave up on and whose advisory nobody handled, and
    /// dead-letters them as [`JetStreamQueue::watch_dead_letters`] does; returns how many.
    ///
    /// A job is found dead when it is still in the stream at or below its pool consumer's ack
    /// floor. Limitation (nats-server 2.9, which lists no per-message delivery state): the floor
    /// passes a dead job only once every job delivered before it is acknowledged, or nothing is
    /// pending, and then something is acknowledged. A dead job behind a job still in flight is
    /// found by the advisory, or by a later sweep.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if the server cannot be asked or a result not published.
    pub async fn sweep_dead_letters(&self) -> Result<usize, QueueError> {
        let jobs = self
            .js
            .get_stream_no_info(&self.jobs_stream)
            .await
            .map_err(|e| unavailable("jobs stream", e))?;
        self.sweep_stream(&jobs).await
    }

    async fn sweep_stream(&self, jobs: &Stream<()>) -> Result<usize, QueueError> {
        let pool_consumer = format!("{}-workers-", self.prefix);
        let consumers: Vec<_> = jobs
            .consumers()
            .try_collect()
            .await
            .map_err(|e| unavailable("list job consumers", e))?;
        let mut buried = 0;
        for consumer in consumers {
            let floor = consumer.ack_floor.stream_sequence;
            let subject = &consumer.config.filter_subject;
            if !consumer.name.starts_with(&pool_consumer) || subject.is_empty() || floor == 0 {
                continue;
            }
            let deliveries = consumer.config.max_deliver.max(1).unsigned_abs();
            // Every dead job is read before any is deleted: deleting one makes the server drop
            // the others below the ack floor from the work-queue stream (nats-server 2.9).
            let mut dead = Vec::new();
            let mut next = 1;
            while next <= floor {
                let message = match jobs.get_first_raw_message_by_subject(subject, next).await {
                    Ok(message) if message.sequence <= floor => message,
                    Ok(_) => break,
                    Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                    Err(e) => return Err(unavailable("read dead jobs", e)),
                };
                next = message.sequence + 1;
                dead.push(message);
            }
            for message in dead {
                if self.bury(jobs, message, deliveries).await? == Burial::Buried {
                    buried += 1;
                }
            }
        }
        if buried > 0 {
            tracing::info!(buried, "sweep dead-lettered jobs whose advisory was missed");
        }
        Ok(buried)
    }

    /// Publishes FAILED rewards for the job in `message`, then deletes it from the stream.
    async fn bury(
        &self,
        jobs: &Stream<()>,
        message: StreamMessage,
        deliveries: u64,
    ) -> Result<Burial, QueueError> {
        let seq = message.sequence;
        if !message
            .subject
            .as_str()
            .starts_with(&format!("{}.jobs.", self.prefix))
        {
            tracing::debug!(seq, subject = %message.subject, "dead message is not a job of this queue; left alone");
            return Ok(Burial::Foreign);
        }
        let pool = message
            .subject
            .as_str()
            .split('.')
            .nth(2)
            .unwrap_or_default()
            .to_owned();
        let mut burial = Burial::Buried;
        match Job::decode(message.payload) {
            Ok(job) => {
                let error = crate::given_up_error(deliveries);
                let result = JobResult::failed(&job, DEAD_LETTER_WORKER, &error);
                // The FAILED rewards continue the job's trace.
                let span = tracing::info_span!("dead-letter", job_id = %job.job_id, deliveries);
                super::trace_context(Some(&message.headers)).set_parent_of(&span);
                let had_result = self
                    .publish_job_result(&result)
                    .instrument(span.clone())
                    .await?;
                if had_result {
                    tracing::info!(
                        seq,
                        job = job.job_id,
                        session = job.session_id,
                        "job left in the stream already has its result; deleted, not dead-lettered"
                    );
                    burial = Burial::Scored;
                } else {
                    if let Some(m) = rewardfleet_telemetry::metrics() {
                        m.jobs_dead_lettered
                            .add(1, &[rewardfleet_telemetry::metrics::label("pool", pool)]);
                    }
                    tracing::warn!(
                        seq,
                        job = job.job_id,
                        session = job.session_id,
                        deliveries,
                        candidates = job.candidates.len(),
                        trace_id = rewardfleet_telemetry::trace_id(&span).as_deref(),
                        "job given up after max_deliver: FAILED rewards published"
                    );
                }
            }
            Err(e) => {
                // No worker can take it either (they terminate such jobs): do not keep it.
                tracing::error!(seq, error = %e, "dead message is not a Job; deleting it");
            }
        }
        match jobs.delete_message(seq).await {
            Ok(_) => Ok(burial),
            // Deleted meanwhile (a late worker's ack, another gateway's watcher, the server
            // dropping it with another dead job): its result is published all the same.
            Err(_)
                if matches!(
                    jobs.get_raw_message(seq).await,
                    Err(ref e) if e.kind() == RawMessageErrorKind::NoMessageFound
                ) =>
            {
                Ok(burial)
            }
            Err(e) => Err(unavailable("delete dead job", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advisories_parse_and_malformed_ones_fail() {
        let advisory: MaxDeliveriesAdvisory = serde_json::from_str(
            r#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x",
                "timestamp":"2024-01-01T00:00:00Z","stream":"RF_JOBS",
                "consumer":"rf-workers-default","stream_seq":7,"deliveries":3}"#,
        )
        .expect("parse");
        assert_eq!(advisory.stream, "RF_JOBS");
        assert_eq!(advisory.stream_seq, 7);
        assert_eq!(advisory.deliveries, 3);
        for bad in [&b""[..], b"{}", b"not json", br#"{"stream_seq":-1}"#] {
            assert!(serde_json::from_slice::<MaxDeliveriesAdvisory>(bad).is_err());
        }
    }
}
