//! The heartbeat loops of the fleet's processes (NATS mode only; embedded mode has none).
//!
//! Each worker and gateway renews its entry in its role's KV bucket every
//! `nats.heartbeat_interval` (see `rewardfleet_queue::jetstream::heartbeat`) and deletes it on a
//! graceful stop. A beat that fails is a warning, never fatal: the next one opens the bucket
//! again (it may have been lost with a server restart).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rewardfleet_core::config::{Config, NatsConfig};
use rewardfleet_gateway::Gateway;
use rewardfleet_judge::{FleetShare, JudgeSet};
use rewardfleet_queue::JetStreamQueue;
use rewardfleet_queue::QueueError;
use rewardfleet_queue::jetstream::{
    GatewayHeartbeat, Heartbeat, RecentRates, Role, WorkerHeartbeat, heartbeat_key,
};
use rewardfleet_worker::{Monitor, WorkerStats};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How long a stopping process tries to delete its entry before leaving it to expire.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The rewardfleet version every heartbeat reports.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A running heartbeat loop; [`HeartbeatTask::finish`] ends it and deletes the entry.
pub(crate) struct HeartbeatTask {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl HeartbeatTask {
    /// Starts renewing the entry of `name` in `role`'s bucket with what `describe` says each
    /// interval (the first beat at once).
    fn spawn<T, F>(
        queue: JetStreamQueue,
        role: Role,
        name: String,
        nats: NatsConfig,
        describe: F,
    ) -> Self
    where
        T: Serialize + Send + Sync + 'static,
        F: FnMut() -> T + Send + 'static,
    {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(beat_until_stopped(
            queue,
            role,
            name,
            nats,
            describe,
            stop.clone(),
        ));
        Self { stop, handle }
    }

    /// Stops beating and deletes the entry (a graceful stop: readers stop listing the process
    /// at once). If the server does not confirm within two seconds, the entry expires instead.
    pub(crate) async fn finish(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

/// The heartbeat of a worker named `name`, reporting `stats` with the configuration's pool,
/// capacity, models and judges, its rates over each interval, and its `monitor`s' summary.
pub(crate) fn worker(
    queue: JetStreamQueue,
    config: &Config,
    nats: &NatsConfig,
    name: String,
    stats: Arc<WorkerStats>,
    monitor: Arc<Monitor>,
) -> HeartbeatTask {
    let started_at = unix_now();
    let interval_secs = nats.heartbeat_interval.as_secs_f64();
    let pool = config.worker.pool.clone();
    let capacity = config.worker.max_concurrent_jobs;
    let models: Vec<String> = config.model.iter().map(|m| m.name.clone()).collect();
    let judges: Vec<String> = config.judge.iter().map(|j| j.name.clone()).collect();
    let mut previous: Option<(Instant, Totals)> = None;
    let beat_name = name.clone();
    HeartbeatTask::spawn(queue, Role::Worker, name, nats.clone(), move || {
        let now = Instant::now();
        let totals = Totals::of(&stats);
        let recent = previous
            .map(|(then, before)| totals.rates_since(&before, now.duration_since(then)))
            .unwrap_or_default();
        previous = Some((now, totals));
        WorkerHeartbeat {
            name: beat_name.clone(),
            pid: std::process::id(),
            pool: pool.clone(),
            capacity,
            models: models.clone(),
            judges: judges.clone(),
            ready: stats.ready.load(Ordering::Relaxed),
            in_flight: stats.in_flight.load(Ordering::Relaxed),
            jobs_done: totals.jobs_done,
            candidates_done: totals.candidates_done,
            candidates_failed: Some(totals.candidates_failed),
            jobs_retried: totals.jobs_retried,
            jobs_given_up: totals.jobs_given_up,
            redeliveries: stats.redeliveries.load(Ordering::Relaxed),
            recent,
            version: VERSION.into(),
            started_at,
            sent_at: unix_now(),
            interval_secs,
            monitor: Some(monitor.summary()),
        }
    })
}

/// The heartbeat of a gateway named `name` serving on `listen`, reporting its open sessions and
/// candidates in flight.
pub(crate) fn gateway(
    queue: JetStreamQueue,
    nats: &NatsConfig,
    name: String,
    listen: String,
    gateway: Gateway,
) -> HeartbeatTask {
    let started_at = unix_now();
    let interval_secs = nats.heartbeat_interval.as_secs_f64();
    let beat_name = name.clone();
    HeartbeatTask::spawn(queue, Role::Gateway, name, nats.clone(), move || {
        let stats = gateway.stats();
        GatewayHeartbeat {
            name: beat_name.clone(),
            pid: std::process::id(),
            listen: listen.clone(),
            sessions: stats.sessions as u64,
            candidates_in_flight: stats.in_flight as u64,
            version: VERSION.into(),
            started_at,
            sent_at: unix_now(),
            interval_secs,
        }
    })
}

/// Keeps this worker's share of every judge's limits (see [`rewardfleet_judge::FleetShare`])
/// from the workers' heartbeats: each `interval` it counts the live workers whose heartbeat
/// lists the judge, and ranks them by heartbeat key. When the bucket cannot be read it keeps the
/// share it has (never a larger one): jobs come through the same server, so a worker that cannot
/// read it gets no new work meanwhile.
pub(crate) fn share_judges(
    queue: JetStreamQueue,
    judges: Arc<JudgeSet>,
    name: &str,
    interval: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let own = heartbeat_key(name, std::process::id());
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match queue.worker_heartbeats().await {
                Ok(beats) => {
                    failing = false;
                    let workers: Vec<(String, Vec<String>)> = beats
                        .into_iter()
                        .map(|b| (heartbeat_key(&b.name, b.pid), b.judges))
                        .collect();
                    for judge in judges.names() {
                        judges.set_fleet_share(&judge, fleet_share(&workers, &judge, &own));
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(
                        error = %e.chain(),
                        "cannot read the workers' heartbeats: judge limits keep their current share"
                    );
                }
                Err(e) => tracing::debug!(error = %e.chain(), "heartbeats still unreadable"),
            }
        }
    })
}

/// The share of `judge` of the worker whose heartbeat key is `own`, among the workers (heartbeat
/// key, judges listed) that list the judge; itself counted even before its first beat shows.
fn fleet_share(workers: &[(String, Vec<String>)], judge: &str, own: &str) -> FleetShare {
    let mut keys: Vec<String> = workers
        .iter()
        .filter(|(_, judges)| judges.iter().any(|j| j == judge))
        .map(|(key, _)| key.clone())
        .collect();
    if !keys.iter().any(|k| k == own) {
        keys.push(own.to_owned());
    }
    keys.sort();
    keys.dedup();
    FleetShare {
        workers: keys.len(),
        rank: keys.iter().position(|k| k == own).unwrap_or(0),
    }
}

/// Shares the judge tokens this gateway let each tenant with a `judge_tokens_per_hour` quota
/// spend, and learns what the other gateways let it spend (see
/// `rewardfleet_queue::jetstream::TenantTokens`), every `nats.heartbeat_interval`. `None` when
/// no tenant has such a quota. While NATS cannot be reached, each gateway counts its own spend
/// and the last figure it read from the others.
pub(crate) fn share_tenant_tokens(
    queue: JetStreamQueue,
    nats: NatsConfig,
    name: &str,
    gateway: &Gateway,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    let tenants = gateway.judge_token_tenants();
    if tenants.is_empty() {
        return None;
    }
    let name = name.to_owned();
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(nats.heartbeat_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shared = None;
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let exchanged = async {
                if shared.is_none() {
                    shared = Some(queue.tenant_tokens(&name, &nats).await?);
                }
                let Some(shared) = &shared else {
                    return Ok(());
                };
                let minute = unix_now() / 60;
                for tenant in &tenants {
                    let own = tenant.judge_tokens_by_minute().unwrap_or_default();
                    shared.publish(tenant.name(), &own).await?;
                    let elsewhere = shared.elsewhere(tenant.name(), minute).await?;
                    tenant.set_judge_tokens_elsewhere(elsewhere);
                }
                Ok::<(), QueueError>(())
            };
            match exchanged.await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    shared = None;
                    tracing::warn!(
                        error = %e.chain(),
                        "cannot share tenants' judge-token spend with the other gateways; \
                         counting on the last figures until NATS answers"
                    );
                }
                Err(e) => {
                    shared = None;
                    tracing::debug!(error = %e.chain(), "tenants' judge-token spend still not shared");
                }
            }
        }
    }))
}

/// The worker counters that rates are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    jobs_done: u64,
    candidates_done: u64,
    candidates_failed: u64,
    jobs_retried: u64,
    jobs_given_up: u64,
}

impl Totals {
    fn of(stats: &WorkerStats) -> Self {
        Self {
            jobs_done: stats.jobs_done.load(Ordering::Relaxed),
            candidates_done: stats.candidates_done.load(Ordering::Relaxed),
            candidates_failed: stats.candidates_failed.load(Ordering::Relaxed),
            jobs_retried: stats.jobs_retried.load(Ordering::Relaxed),
            jobs_given_up: stats.jobs_given_up.load(Ordering::Relaxed),
        }
    }

    /// Rates from `before` to `self`, `elapsed` apart.
    fn rates_since(&self, before: &Self, elapsed: Duration) -> RecentRates {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return RecentRates::default();
        }
        let per_sec = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        RecentRates {
            window_secs: secs,
            candidates_per_sec: per_sec(self.candidates_done, before.candidates_done),
            candidates_failed_per_sec: per_sec(self.candidates_failed, before.candidates_failed),
            jobs_per_sec: per_sec(self.jobs_done, before.jobs_done),
            jobs_retried_per_sec: per_sec(self.jobs_retried, before.jobs_retried),
            jobs_given_up_per_sec: per_sec(self.jobs_given_up, before.jobs_given_up),
        }
    }
}

/// Beats every interval until `stop` fires, then deletes the entry.
async fn beat_until_stopped<T, F>(
    queue: JetStreamQueue,
    role: Role,
    name: String,
    nats: NatsConfig,
    mut describe: F,
    stop: CancellationToken,
) where
    T: Serialize + Send + Sync + 'static,
    F: FnMut() -> T + Send + 'static,
{
    let mut ticks = tokio::time::interval(nats.heartbeat_interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut entry: Option<Heartbeat> = None;
    let mut reopen = false;
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let value = describe();
        let beat = beat_once(&queue, role, &name, &nats, &mut entry, &mut reopen, &value);
        let outcome = tokio::select! {
            () = stop.cancelled() => break,
            outcome = beat => outcome,
        };
        match outcome {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(process = %name, "heartbeat renewed again");
            }
            Ok(()) => {}
            Err(e) => {
                reopen = true;
                if failing {
                    tracing::debug!(process = %name, error = %e.chain(), "heartbeat still failing");
                } else {
                    failing = true;
                    tracing::warn!(
                        process = %name,
                        error = %e.chain(),
                        "heartbeat not renewed: `rewardfleet status` may stop listing this process \
                         until NATS answers again (work goes on)"
                    );
                }
            }
        }
    }
    if let Some(entry) = entry {
        match tokio::time::timeout(REMOVE_TIMEOUT, entry.remove()).await {
            Ok(Ok(())) => tracing::debug!(entry = %entry.location(), "heartbeat deleted"),
            Ok(Err(e)) => {
                tracing::warn!(entry = %entry.location(), error = %e.chain(), "heartbeat not deleted; it expires by itself");
            }
            Err(_) => {
                tracing::warn!(entry = %entry.location(), "heartbeat not deleted in time; it expires by itself");
            }
        }
    }
}

/// One beat: opens the entry first when there is none yet or the last beat failed.
async fn beat_once<T: Serialize + Sync>(
    queue: &JetStreamQueue,
    role: Role,
    name: &str,
    nats: &NatsConfig,
    entry: &mut Option<Heartbeat>,
    reopen: &mut bool,
    value: &T,
) -> Result<(), QueueError> {
    if entry.is_none() || *reopen {
        *entry = Some(queue.heartbeat(role, name, nats).await?);
        *reopen = false;
    }
    match entry {
        Some(entry) => entry.beat(value).await,
        None => Ok(()),
    }
}

/// Seconds since the Unix epoch (0 on a clock set before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heartbeat keys with the judges their workers list.
    fn beats(entries: &[(&str, u32, &[&str])]) -> Vec<(String, Vec<String>)> {
        entries
            .iter()
            .map(|(name, pid, judges)| {
                (
                    heartbeat_key(name, *pid),
                    judges.iter().map(|j| (*j).to_owned()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_judge_is_shared_among_the_workers_that_list_it_ranked_by_key() {
        let beats = beats(&[
            ("w-c", 3, &["gpt", "rm"]),
            ("w-a", 1, &["gpt"]),
            ("w-b", 2, &["other"]),
        ]);
        let own = heartbeat_key("w-c", 3);
        assert_eq!(
            fleet_share(&beats, "gpt", &own),
            FleetShare {
                workers: 2,
                rank: 1
            }
        );
        // Not yet in the bucket: counted all the same.
        let own = heartbeat_key("w-0", 9);
        assert_eq!(
            fleet_share(&beats, "gpt", &own),
            FleetShare {
                workers: 3,
                rank: 0
            }
        );
        assert_eq!(fleet_share(&[], "gpt", &own), FleetShare::ALONE);
        // The ranks of the workers sharing a judge are 0..n, each once.
        let mut ranks: Vec<usize> = ["w-c", "w-a"]
            .iter()
            .zip([3, 1])
            .map(|(n, pid)| fleet_share(&beats, "gpt", &heartbeat_key(n, pid)).rank)
            .collect();
        ranks.sort_unstable();
        assert_eq!(ranks, [0, 1]);
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let before = Totals {
            jobs_done: 10,
            candidates_done: 80,
            candidates_failed: 4,
            jobs_retried: 1,
            jobs_given_up: 0,
        };
        let now = Totals {
            jobs_done: 20,
            candidates_done: 160,
            candidates_failed: 12,
            jobs_retried: 2,
            jobs_given_up: 1,
        };
        let rates = now.rates_since(&before, Duration::from_secs(2));
        assert_eq!(rates.window_secs, 2.0);
        assert_eq!(rates.candidates_per_sec, 40.0);
        assert_eq!(rates.candidates_failed_per_sec, 4.0);
        assert_eq!(rates.jobs_per_sec, 5.0);
        assert_eq!(rates.jobs_retried_per_sec, 0.5);
        assert_eq!(rates.jobs_given_up_per_sec, 0.5);
        assert_eq!(rates.attempts_per_sec(), 5.5);
        assert_eq!(rates.failed_per_sec(), 1.0);
        assert_eq!(
            now.rates_since(&before, Duration::ZERO),
            RecentRates::default()
        );
    }
}
