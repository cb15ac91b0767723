//! Heartbeats: which workers and gateways are alive, for `rewardfleet status`.
//!
//! Every worker and gateway in NATS mode renews one entry every `nats.heartbeat_interval` in a
//! KV bucket of its [`Role`]: `<prefix>_workers` or `<prefix>_gateways`. The key is
//! `<name>.<pid>` (the name with every character a KV key cannot hold written `_`; the process
//! id keeps apart two processes that share a name, e.g. on one host). A bucket keeps one value
//! per key (history 1) for [`TTL_FACTOR`] × the interval (`max_age`): the entry of a process
//! killed without a word expires within three intervals of its last beat, and a process that
//! stops gracefully deletes its entry at once.
//!
//! Values are JSON ([`WorkerHeartbeat`], [`GatewayHeartbeat`]); readers ignore fields they do
//! not know, so a fleet of mixed versions still lists every process. The buckets live in memory
//! on the server: they hold nothing that outlives the processes, and a process re-creates its
//! bucket when a beat finds it gone (a server restart).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use rewardfleet_core::config::NatsConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{JetStreamQueue, setup, unavailable};
use crate::QueueError;

/// An entry lives this many heartbeat intervals after its last beat.
pub const TTL_FACTOR: u32 = 3;

/// Which kind of fleet process beats: each kind has a bucket of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `rewardfleet worker`: bucket `<prefix>_workers`, values [`WorkerHeartbeat`].
    Worker,
    /// `rewardfleet gateway`: bucket `<prefix>_gateways`, values [`GatewayHeartbeat`].
    Gateway,
}

impl Role {
    /// The KV bucket of this role's heartbeats under the subject prefix `prefix`.
    pub fn bucket(self, prefix: &str) -> String {
        match self {
            Self::Worker => format!("{prefix}_workers"),
            Self::Gateway => format!("{prefix}_gateways"),
        }
    }
}

/// What a worker says about itself in each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    /// The worker's name (as in its results' `worker`).
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// The pool it pulls from.
    pub pool: String,
    /// Jobs it scores at once, at most (`worker.max_concurrent_jobs`).
    pub capacity: usize,
    /// The local models it serves (`[[model]]` names).
    pub models: Vec<String>,
    /// The judges it calls (`[[judge]]` names).
    pub judges: Vec<String>,
    /// Pulling jobs: models loaded and warm, not draining.
    pub ready: bool,
    /// Jobs being scored now.
    pub in_flight: u64,
    /// Jobs whose result was published and acknowledged, since start.
    pub jobs_done: u64,
    /// Candidates in those jobs.
    pub candidates_done: u64,
    /// Candidates that got a FAILED reward, since start, where the worker counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates_failed: Option<u64>,
    /// Jobs handed back for another try (a judge down, a result not published), since start.
    pub jobs_retried: u64,
    /// Jobs given up on their last delivery (FAILED rewards published), since start.
    pub jobs_given_up: u64,
    /// Deliveries of jobs delivered before (a worker died, an ack timed out), since start.
    pub redeliveries: u64,
    /// What it did since its previous heartbeat.
    pub recent: RecentRates,
    /// The rewardfleet version it runs.
    pub version: String,
    /// When it started (unix seconds).
    pub started_at: u64,
    /// When this heartbeat was sent (unix seconds).
    pub sent_at: u64,
    /// Its heartbeat interval in seconds (its entry expires [`TTL_FACTOR`] times later).
    pub interval_secs: f64,
    /// Its reward-hacking monitors (absent from workers that do not send them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<MonitorSummary>,
}

/// A worker's reward-hacking monitors, compact: each statistic with its threshold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MonitorSummary {
    /// One per profile the worker scored.
    pub profiles: Vec<MonitorScope>,
    /// The most recently active sessions (at most [`SUMMARY_SESSIONS`]), most recent first.
    #[serde(default)]
    pub sessions: Vec<MonitorScope>,
    /// Each judge component's drift on the canary candidates, by profile.
    #[serde(default)]
    pub canaries: Vec<CanaryDrift>,
}

/// Sessions a heartbeat describes, at most (the worker may keep more; its metrics show them).
pub const SUMMARY_SESSIONS: usize = 16;

impl MonitorSummary {
    /// Every statistic over its threshold: `(profile, session, statistic)` (canaries with the
    /// statistic `canary_drift:<judge>`).
    pub fn over(&self) -> Vec<(String, Option<String>, String)> {
        let scopes = self.profiles.iter().chain(&self.sessions);
        let mut over: Vec<(String, Option<String>, String)> = scopes
            .flat_map(|s| {
                s.statistics
                    .iter()
                    .filter(|st| st.over)
                    .map(|st| (s.profile.clone(), s.session.clone(), st.name.clone()))
            })
            .collect();
        over.extend(
            self.canaries
                .iter()
                .filter(|c| c.over)
                .map(|c| (c.profile.clone(), None, format!("canary_drift:{}", c.judge))),
        );
        over
    }
}

/// A profile's (or one of its sessions') window of rewards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorScope {
    /// The profile.
    pub profile: String,
    /// The session, for a session's own window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Rewards in the window.
    pub samples: usize,
    /// Each statistic of the window.
    pub statistics: Vec<MonitorStatistic>,
}

/// One statistic of a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorStatistic {
    /// `length_correlation`, `injection_rate`, `position_inconsistency_rate`,
    /// `panel_disagreement_rate` or `gate_floor_rate`.
    pub name: String,
    /// Its value now.
    pub value: f64,
    /// Its threshold (`[worker.monitor]`).
    pub threshold: f64,
    /// Over the threshold, with enough samples in the window to say so.
    pub over: bool,
}

/// One judge component's mean score on the canary candidates, against its first run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryDrift {
    /// The profile.
    pub profile: String,
    /// The judge component (its name in rewards' `components`).
    pub judge: String,
    /// The mean of the first run.
    pub baseline: f64,
    /// The mean of the latest run.
    pub mean: f64,
    /// `mean - baseline`.
    pub drift: f64,
    /// How far it may move either way (`worker.monitor.canary_drift`).
    pub threshold: f64,
    /// `|drift|` over the threshold.
    pub over: bool,
    /// Runs so far.
    pub runs: u64,
}

/// A worker's rates over the interval between its last two heartbeats (zero in the first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RecentRates {
    /// The interval they are measured over, in seconds (0 in the first heartbeat).
    pub window_secs: f64,
    /// Candidates finished (result published and acknowledged) per second.
    pub candidates_per_sec: f64,
    /// Candidates scored with a FAILED reward, per second (0 from workers that do not count
    /// them).
    #[serde(default)]
    pub candidates_failed_per_sec: f64,
    /// Jobs finished (result published and acknowledged) per second, given-up jobs included.
    pub jobs_per_sec: f64,
    /// Jobs handed back for another try, per second.
    pub jobs_retried_per_sec: f64,
    /// Jobs given up on their last delivery (FAILED rewards published), per second.
    pub jobs_given_up_per_sec: f64,
}

impl RecentRates {
    /// Job attempts that ended, per second: finished, or handed back for another try.
    pub fn attempts_per_sec(&self) -> f64 {
        self.jobs_per_sec + self.jobs_retried_per_sec
    }

    /// Attempts that failed (retried or given up), per second.
    pub fn failed_per_sec(&self) -> f64 {
        self.jobs_retried_per_sec + self.jobs_given_up_per_sec
    }
}

/// What a gateway says about itself in each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayHeartbeat {
    /// The gateway's name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// The address its gRPC server listens on.
    pub listen: String,
    /// Trainer sessions open now.
    pub sessions: u64,
    /// Candidates submitted and not yet answered, across its sessions.
    pub candidates_in_flight: u64,
    /// The rewardfleet version it runs.
    pub version: String,
    /// When it started (unix seconds).
    pub started_at: u64,
    /// When this heartbeat was sent (unix seconds).
    pub sent_at: u64,
    /// Its heartbeat interval in seconds (its entry expires [`TTL_FACTOR`] times later).
    pub interval_secs: f64,
}

/// One process's entry in its role's bucket: renewed by [`Heartbeat::beat`], deleted by
/// [`Heartbeat::remove`].
#[derive(Clone)]
pub struct Heartbeat {
    store: kv::Store,
    key: String,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("bucket", &self.store.name)
            .field("key", &self.key)
            .finish()
    }
}

impl Heartbeat {
    /// The bucket and key of this entry, `bucket/key` (for logs).
    pub fn location(&self) -> String {
        format!("{}/{}", self.store.name, self.key)
    }

    /// Writes `value` (as JSON) as this process's entry, renewing its lifetime.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if the server does not confirm (unreachable, or the bucket
    /// was lost with a server restart: open it again with [`JetStreamQueue::heartbeat`]);
    /// [`QueueError::Malformed`] if `value` cannot be written as JSON.
    pub async fn beat<T: Serialize>(&self, value: &T) -> Result<(), QueueError> {
        let json = serde_json::to_vec(value)
            .map_err(|e| QueueError::malformed("heartbeat value").caused_by(e))?;
        self.store
            .put(&self.key, json.into())
            .await
            .map_err(|e| unavailable(&format!("heartbeat {}", self.location()), e))?;
        Ok(())
    }

    /// Deletes this process's entry (a graceful stop): readers stop listing it at once.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if the server does not confirm; the entry then expires.
    pub async fn remove(&self) -> Result<(), QueueError> {
        self.store
            .delete(&self.key)
            .await
            .map_err(|e| unavailable(&format!("delete heartbeat {}", self.location()), e))
    }
}

impl JetStreamQueue {
    /// Every live worker's heartbeat, oldest key first (none when no worker ever beat).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if the server cannot be read.
    pub async fn worker_heartbeats(&self) -> Result<Vec<WorkerHeartbeat>, QueueError> {
        read_bucket(&self.js, &Role::Worker.bucket(&self.prefix)).await
    }

    /// The heartbeat entry of the process `name` in `role`'s bucket, which is created if it does
    /// not exist yet (entries kept [`TTL_FACTOR`] × `nats.heartbeat_interval`, `nats.replicas`
    /// replicas). An existing bucket keeps its settings; if its entries would expire before the
    /// next beat, a warning says how to fix it.
    ///
    /// # Errors
    /// [`QueueError::Setup`] if the bucket can be neither opened nor created.
    pub async fn heartbeat(
        &self,
        role: Role,
        name: &str,
        nats: &NatsConfig,
    ) -> Result<Heartbeat, QueueError> {
        let bucket = role.bucket(&self.prefix);
        let interval = nats.heartbeat_interval;
        let ttl = interval * TTL_FACTOR;
        let description = format!(
            "rewardfleet heartbeats of every {}",
            match role {
                Role::Worker => "worker",
                Role::Gateway => "gateway",
            }
        );
        let store = memory_bucket(&self.js, &bucket, description, ttl, nats.replicas).await?;
        let kept = store.stream.cached_info().config.max_age;
        if !kept.is_zero() && kept < interval * 2 {
            tracing::warn!(
                bucket,
                kept = ?kept,
                interval = ?interval,
                "the heartbeat bucket drops entries sooner than twice this process's \
                 nats.heartbeat_interval, so it may vanish from `rewardfleet status` between \
                 beats; give the fleet one interval, or delete the bucket's stream KV_{bucket} \
                 to have it made again"
            );
        }
        Ok(Heartbeat {
            store,
            key: heartbeat_key(name, std::process::id()),
        })
    }
}

/// Opens the KV bucket `bucket`, or creates it in memory with `max_age` and `replicas` (history
/// 1). An existing bucket keeps its settings.
///
/// # Errors
/// [`QueueError::Setup`] if the bucket can be neither opened nor created.
pub(super) async fn memory_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: String,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, QueueError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    // Created as a stream: `create_key_value` first asks for the account info, whose reply
    // from nats-server 2.9 async-nats 0.51 cannot read. The layout is async-nats' own for a KV
    // bucket.
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        duplicate_window: max_age.min(Duration::from_secs(120)),
        storage: jetstream::stream::StorageType::Memory,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| setup(format!("KV bucket {bucket:?}"), e))?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| setup(format!("KV bucket {bucket:?}"), e))
}

/// Every live entry of `bucket`, oldest key first; an entry that is not a `T` is skipped with
/// a warning (another program's, or a future version's that changed a field's type). No bucket
/// (no process ever beat) is an empty list.
///
/// # Errors
/// [`QueueError::Unavailable`] if the server cannot be read.
pub(super) async fn read_bucket<T: DeserializeOwned>(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<Vec<T>, QueueError> {
    let stream = match js.get_stream(format!("KV_{bucket}")).await {
        Ok(stream) => stream,
        Err(e) if is_stream_not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(unavailable(&format!("heartbeat bucket {bucket:?}"), e)),
    };
    let store = js
        .get_key_value(bucket)
        .await
        .map_err(|e| unavailable(&format!("heartbeat bucket {bucket:?}"), e))?;
    // The keys from the stream's subjects (plain requests), not from `Store::keys`: its
    // ordered consumer can wait forever for entries that expired while it was being made.
    let prefix = format!("$KV.{bucket}.");
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| unavailable(&format!("keys of {bucket:?}"), e))?
        .try_collect()
        .await
        .map_err(|e| unavailable(&format!("keys of {bucket:?}"), e))?;
    let mut keys: Vec<String> = subjects
        .into_iter()
        .filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    keys.sort();
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        // An entry may expire between listing and reading: then it is simply gone.
        let Some(value) = store
            .get(&key)
            .await
            .map_err(|e| unavailable(&format!("heartbeat {bucket}/{key}"), e))?
        else {
            continue;
        };
        match serde_json::from_slice(&value) {
            Ok(v) => values.push(v),
            Err(e) => tracing::warn!(bucket, key, error = %e, "unreadable heartbeat skipped"),
        }
    }
    Ok(values)
}

/// Whether a stream lookup failed because there is no such stream.
pub(super) fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The key of process `pid` named `name`: `<name>.<pid>`, every character of the name that a
/// KV key cannot hold (or that would split it, `.`) written `_`.
pub fn heartbeat_key(name: &str, pid: u32) -> String {
    let mut key: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() {
        key.push('_');
    }
    format!("{key}.{pid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_only_kv_key_characters_and_the_pid() {
        assert_eq!(heartbeat_key("worker-7", 42), "worker-7.42");
        assert_eq!(heartbeat_key("gpu node.a:1", 1), "gpu_node_a_1.1");
        assert_eq!(heartbeat_key("", 9), "_.9");
        assert_eq!(heartbeat_key("ünï", 3), "_n_.3");
    }

    #[test]
    fn buckets_are_named_after_the_prefix_and_role() {
        assert_eq!(Role::Worker.bucket("rf"), "rf_workers");
        assert_eq!(Role::Gateway.bucket("fleet-b"), "fleet-b_gateways");
    }

    #[test]
    fn candidates_failed_is_left_out_when_unknown() {
        let beat = WorkerHeartbeat {
            name: "w".into(),
            pid: 1,
            pool: "default".into(),
            capacity: 4,
            models: vec![],
            judges: vec!["judge".into()],
            ready: true,
            in_flight: 0,
            jobs_done: 2,
            candidates_done: 16,
            candidates_failed: None,
            jobs_retried: 0,
            jobs_given_up: 0,
            redeliveries: 0,
            recent: RecentRates::default(),
            version: "0.1.0".into(),
            started_at: 1,
            sent_at: 2,
            interval_secs: 5.0,
            monitor: None,
        };
        let json = serde_json::to_value(&beat).unwrap();
        assert!(json.get("candidates_failed").is_none(), "{json}");
        assert!(json.get("monitor").is_none(), "{json}");
        let back: WorkerHeartbeat = serde_json::from_value(json).unwrap();
        assert_eq!(back, beat);

        // A worker's monitors travel whole and say what is over its threshold.
        let statistic = |name: &str, value: f64, over: bool| MonitorStatistic {
            name: name.into(),
            value,
            threshold: 0.5,
            over,
        };
        let monitor = MonitorSummary {
            profiles: vec![MonitorScope {
                profile: "p".into(),
                session: None,
                samples: 100,
                statistics: vec![statistic("length_correlation", 0.2, false)],
            }],
            sessions: vec![MonitorScope {
                profile: "p".into(),
                session: Some("s1".into()),
                samples: 60,
                statistics: vec![statistic("length_correlation", 0.9, true)],
            }],
            canaries: vec![CanaryDrift {
                profile: "p".into(),
                judge: "judge".into(),
                baseline: 0.5,
                mean: 0.8,
                drift: 0.3,
                threshold: 0.1,
                over: true,
                runs: 3,
            }],
        };
        let beat = WorkerHeartbeat {
            monitor: Some(monitor.clone()),
            ..beat
        };
        let back: WorkerHeartbeat =
            serde_json::from_value(serde_json::to_value(&beat).unwrap()).unwrap();
        assert_eq!(back.monitor.as_ref(), Some(&monitor));
        assert_eq!(
            monitor.over(),
            [
                ("p".into(), Some("s1".into()), "length_correlation".into()),
                ("p".into(), None, "canary_drift:judge".into()),
            ]
        );
    }
}
