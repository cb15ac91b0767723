//! A read-only view of a fleet on NATS JetStream, for `rewardfleet status`: the jobs stream,
//! each pool's durable consumer and the processes' heartbeats. It creates and changes nothing
//! (unlike [`JetStreamQueue::connect_with`], which creates or updates the streams).

use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt;
use rewardfleet_core::config::NatsConfig;
use serde::Serialize;

use super::heartbeat::{GatewayHeartbeat, Role, WorkerHeartbeat, is_stream_not_found, read_bucket};
use super::{JetStreamOptions, REQUEST_TIMEOUT, unavailable};
use crate::QueueError;

/// The jobs stream, from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobsStreamStatus {
    /// Its name (`nats.jobs_stream`).
    pub name: String,
    /// Jobs stored: queued, or delivered and not yet acknowledged (or given up and not yet
    /// removed by a gateway's dead-letter watcher).
    pub messages: u64,
    /// Their size in bytes.
    pub bytes: u64,
    /// Consumers on it (one per pool that ever had a worker).
    pub consumers: usize,
}

/// The lag of one pool's durable consumer, from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolLag {
    /// The pool (from the consumer's filter `<prefix>.jobs.<pool>.>`, else its name).
    pub pool: String,
    /// The consumer's durable name.
    pub consumer: String,
    /// Jobs not yet delivered to any worker of the pool.
    pub pending: u64,
    /// Jobs delivered and not yet acknowledged.
    pub ack_pending: usize,
    /// Jobs delivered more than once and not yet acknowledged.
    pub redelivered: usize,
    /// Open pull requests (roughly: workers waiting for jobs).
    pub waiting: usize,
}

/// A read-only connection to a fleet's NATS server.
#[derive(Clone)]
pub struct StatusReader {
    js: jetstream::Context,
    jobs_stream: String,
    prefix: String,
    url: String,
}

impl std::fmt::Debug for StatusReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusReader")
            .field("url", &self.url)
            .field("jobs_stream", &self.jobs_stream)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl StatusReader {
    /// Connects to `nats.url` (comma-separated URLs) with `options.token` or
    /// `nats.credentials_file`, giving up after `timeout`; reads the streams and buckets that
    /// `nats.jobs_stream` and `nats.subject_prefix` name.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] naming the URL if no server answers within `timeout`;
    /// [`QueueError::Setup`] for a bad URL, refused credentials or an unreadable credentials file.
    pub async fn connect(
        nats: &NatsConfig,
        options: JetStreamOptions,
        timeout: Duration,
    ) -> Result<Self, QueueError> {
        let url = nats.url.clone();
        let mut connect = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .name(
                options
                    .client_name
                    .unwrap_or_else(|| "rewardfleet-status".into()),
            );
        if let Some(token) = options.token {
            connect = connect.token(token);
        }
        if let Some(path) = &nats.credentials_file {
            connect = connect.credentials_file(path).await.map_err(|e| {
                QueueError::setup(format!("cannot read NATS credentials {}", path.display()))
                    .caused_by(e)
            })?;
        }
        connect = crate::jetstream::with_tls(connect, nats);
        let urls: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let connecting = connect.connect(urls.as_slice());
        // The client's own timeout covers one attempt per server; this bounds the whole.
        let client =
            match tokio::time::timeout(timeout * (urls.len().max(1) as u32), connecting).await {
                Err(_) => {
                    return Err(QueueError::unavailable(format!(
                        "cannot connect to NATS at {url}: no answer within {timeout:?}"
                    )));
                }
                Ok(Err(e)) => {
                    use async_nats::ConnectErrorKind as K;
                    let what = format!("cannot connect to NATS at {url}");
                    return Err(match e.kind() {
                        K::ServerParse | K::Authentication | K::AuthorizationViolation | K::Tls => {
                            QueueError::setup(what).caused_by(e)
                        }
                        _ => QueueError::unavailable(what).caused_by(e),
                    });
                }
                Ok(Ok(client)) => client,
            };
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout.min(REQUEST_TIMEOUT))
            .build(client);
        Ok(Self {
            js,
            jobs_stream: nats.jobs_stream.clone(),
            prefix: nats.subject_prefix.clone(),
            url,
        })
    }

    /// The URL(s) this reader is connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The jobs stream; `None` if it does not exist (no gateway or worker of this fleet ran yet,
    /// or `nats.jobs_stream` names another stream).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if the server cannot be asked.
    pub async fn jobs_stream(&self) -> Result<Option<JobsStreamStatus>, QueueError> {
        let stream = match self.js.get_stream(&self.jobs_stream).await {
            Ok(stream) => stream,
            Err(e) if is_stream_not_found(&e) => return Ok(None),
            Err(e) => return Err(unavailable("jobs stream info", e)),
        };
        let state = &stream.cached_info().state;
        Ok(Some(JobsStreamStatus {
            name: self.jobs_stream.clone(),
            messages: state.messages,
            bytes: state.bytes,
            consumers: state.consumer_count,
        }))
    }

    /// Every consumer of the jobs stream with its lag, in pool order (none if the stream does
    /// not exist).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if the server cannot be asked.
    pub async fn pools(&self) -> Result<Vec<PoolLag>, QueueError> {
        let stream = match self.js.get_stream_no_info(&self.jobs_stream).await {
            Ok(stream) => stream,
            Err(e) => return Err(unavailable("jobs stream", e)),
        };
        let infos: Vec<jetstream::consumer::Info> = match stream.consumers().try_collect().await {
            Ok(infos) => infos,
            Err(e) => {
                // A missing stream lists no consumers; tell it apart from an unreachable server.
                if self.jobs_stream().await?.is_none() {
                    return Ok(Vec::new());
                }
                return Err(unavailable("consumers of the jobs stream", e));
            }
        };
        let jobs_prefix = format!("{}.jobs.", self.prefix);
        let name_prefix = format!("{}-workers-", self.prefix);
        let mut pools: Vec<PoolLag> = infos
            .into_iter()
            .map(|info| {
                let pool = info
                    .config
                    .filter_subject
                    .strip_prefix(&jobs_prefix)
                    .and_then(|rest| rest.strip_suffix(".>"))
                    .or_else(|| info.name.strip_prefix(&name_prefix))
                    .unwrap_or(&info.name)
                    .to_owned();
                PoolLag {
                    pool,
                    consumer: info.name,
                    pending: info.num_pending,
                    ack_pending: info.num_ack_pending,
                    redelivered: info.num_redelivered,
                    waiting: info.num_waiting,
                }
            })
            .collect();
        pools.sort_by(|a, b| (&a.pool, &a.consumer).cmp(&(&b.pool, &b.consumer)));
        Ok(pools)
    }

    /// The live workers (those whose heartbeat has not expired), by pool and name.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if the server cannot be asked.
    pub async fn workers(&self) -> Result<Vec<WorkerHeartbeat>, QueueError> {
        let mut workers: Vec<WorkerHeartbeat> =
            read_bucket(&self.js, &Role::Worker.bucket(&self.prefix)).await?;
        workers.sort_by(|a, b| (&a.pool, &a.name, a.pid).cmp(&(&b.pool, &b.name, b.pid)));
        Ok(workers)
    }

    /// The live gateways, by name.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if the server cannot be asked.
    pub async fn gateways(&self) -> Result<Vec<GatewayHeartbeat>, QueueError> {
        let mut gateways: Vec<GatewayHeartbeat> =
            read_bucket(&self.js, &Role::Gateway.bucket(&self.prefix)).await?;
        gateways.sort_by(|a, b| (&a.name, a.pid).cmp(&(&b.name, b.pid)));
        Ok(gateways)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rewardfleet_core::config::WorkerConfig;
    use rewardfleet_testkit::NatsServer;

    use super::*;
    use crate::Queue;
    use crate::jetstream::{JetStreamQueue, TTL_FACTOR};

    fn beat(name: &str) -> GatewayHeartbeat {
        GatewayHeartbeat {
            name: name.into(),
            pid: std::process::id(),
            listen: "127.0.0.1:1".into(),
            sessions: 2,
            candidates_in_flight: 16,
            version: "0.1.0".into(),
            started_at: 1,
            sent_at: 2,
            interval_secs: 1.0,
        }
    }

    /// Heartbeats on a real server: listed while renewed, gone at once when removed, gone by
    /// themselves within [`TTL_FACTOR`] intervals when no longer renewed.
    #[tokio::test]
    async fn entries_are_listed_until_removed_or_expired() {
        let server = NatsServer::start().await.unwrap();
        let nats = NatsConfig {
            url: server.url(),
            heartbeat_interval: Duration::from_secs(1),
            ..NatsConfig::default()
        };
        let reader =
            StatusReader::connect(&nats, JetStreamOptions::default(), Duration::from_secs(5))
                .await
                .unwrap();
        assert_eq!(reader.jobs_stream().await.unwrap(), None);
        assert_eq!(reader.pools().await.unwrap(), vec![]);
        assert_eq!(reader.gateways().await.unwrap(), vec![]);

        let queue = JetStreamQueue::connect(&nats, &WorkerConfig::default())
            .await
            .unwrap();
        let kept = queue.heartbeat(Role::Gateway, "kept", &nats).await.unwrap();
        let removed = queue
            .heartbeat(Role::Gateway, "removed", &nats)
            .await
            .unwrap();
        kept.beat(&beat("kept")).await.unwrap();
        removed.beat(&beat("removed")).await.unwrap();
        let names = |g: Vec<GatewayHeartbeat>| g.into_iter().map(|g| g.name).collect::<Vec<_>>();
        assert_eq!(names(reader.gateways().await.unwrap()), ["kept", "removed"]);
        assert_eq!(reader.gateways().await.unwrap()[0], beat("kept"));
        assert_eq!(reader.workers().await.unwrap(), vec![]);

        removed.remove().await.unwrap();
        assert_eq!(names(reader.gateways().await.unwrap()), ["kept"]);

        let last_beat = Instant::now();
        kept.beat(&beat("kept")).await.unwrap();
        let ttl = nats.heartbeat_interval * TTL_FACTOR;
        while !reader.gateways().await.unwrap().is_empty() {
            assert!(
                last_beat.elapsed() < ttl + Duration::from_secs(3),
                "still listed {:?} after its last beat",
                last_beat.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let gone_after = last_beat.elapsed();
        assert!(
            gone_after >= ttl - Duration::from_millis(100),
            "expired after {gone_after:?}, before its {ttl:?}"
        );

        // A pool's consumer shows up with its lag once a worker pulls.
        let _jobs = queue.jobs("default", 1).await.unwrap();
        let status = reader.jobs_stream().await.unwrap().unwrap();
        assert_eq!(
            (status.name.as_str(), status.messages, status.consumers),
            ("RF_JOBS", 0, 1)
        );
        let pools = reader.pools().await.unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].pool, "default");
        assert_eq!(pools[0].consumer, "rf-workers-default");
        assert_eq!(pools[0].pending, 0);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named_in_the_error() {
        let nats = NatsConfig {
            url: "nats://127.0.0.1:1".into(),
            ..NatsConfig::default()
        };
        let started = Instant::now();
        let e = StatusReader::connect(&nats, JetStreamOptions::default(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(e.is_retryable(), "{e}");
        assert!(
            e.to_string()
                .contains("cannot connect to NATS at nats://127.0.0.1:1"),
            "{e}"
        );
    }
}
