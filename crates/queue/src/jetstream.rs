//! NATS JetStream: the queue of a fleet that spans machines.
//!
//! Layout (all names from [`NatsConfig`]):
//!
//! - **Jobs**: stream `jobs_stream`, work-queue retention, file storage, subjects
//!   `<prefix>.jobs.>`, at most `jobs_max_messages` / `jobs_max_bytes` (a full stream refuses
//!   new jobs as [`QueueError::Full`]; nothing queued is dropped). A job goes to `<prefix>.jobs.<pool>.<session token>` with header
//!   `Nats-Msg-Id: <job_id>`, so a job published twice within `duplicate_window` is stored once,
//!   and the jobs of an abandoned session can be purged by subject before any worker takes them.
//! - **Workers**: one durable pull consumer per pool, `<prefix>-workers-<pool>`, filtered on
//!   `<prefix>.jobs.<pool>.>`, explicit ack, `ack_wait` / `max_deliver` / `max_ack_pending` from
//!   [`WorkerConfig`]. Every worker of a pool pulls from it, so each job goes to one worker. A
//!   worker asks for no more jobs than it can start at once (see [`JobSource::next`]).
//! - **Session records**: stream `results_stream`, limits retention (kept `results_max_age` so a
//!   resuming session gets them again), subjects `<prefix>.results.>`. A session's subject is
//!   `<prefix>.results.<session token>`; it holds the session's ledger (a [`JobAccepted`] per
//!   queued job, header `Rf-Entry: accepted`, `Nats-Msg-Id: a.<job_id>`) and its results (a
//!   [`JobResult`] per job, `Nats-Msg-Id: r.<job_id>`). A session is read with an ordered push
//!   consumer (ephemeral, in memory) filtered on its subject; the client re-creates it from the
//!   last sequence seen after a reconnect or a server restart, and deletes it when the session
//!   ends.
//! - **Dead letters**: a job delivered `max_deliver` times and never acknowledged (its workers
//!   crashed) gets FAILED rewards from [`JetStreamQueue::watch_dead_letters`], run by gateways.
//! - **Heartbeats**: KV buckets `<prefix>_workers` and `<prefix>_gateways`, one entry per live
//!   process, expiring three heartbeat intervals after its last renewal
//!   ([`JetStreamQueue::heartbeat`]); [`StatusReader`] reads them with the pools' lag.
//!
//! The session token is the session id where it is made of ASCII letters, digits and `-`;
//! any other byte (including `_`) is written `_XX` (hex), so every session id maps to its own
//! valid subject token.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull, push};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::Acker as NatsAcker;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_nats::{Event, HeaderMap, header::NATS_MESSAGE_ID};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use prost::Message as _;
use rewardfleet_core::config::{NatsConfig, WorkerConfig};
use rewardfleet_core::{Job, JobAccepted, JobResult};
use rewardfleet_telemetry::TraceContext;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::{Acker, Delivery, JobSource, Queue, QueueError, ResultStream, SessionEvent};

mod deadletter;
mod heartbeat;
mod status;
mod tenant_tokens;

pub use crate::DEAD_LETTER_WORKER;
pub use heartbeat::{
    CanaryDrift, GatewayHeartbeat, Heartbeat, MonitorScope, MonitorStatistic, MonitorSummary,
    RecentRates, Role, SUMMARY_SESSIONS, TTL_FACTOR, WorkerHeartbeat, heartbeat_key,
};
pub use status::{JobsStreamStatus, PoolLag, StatusReader};
pub use tenant_tokens::TenantTokens;

/// How long one pull request waits at the server for jobs before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Past `PULL_EXPIRES`, how long a pull request may stay silent before it is presumed lost.
const PULL_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed pull request, so a source does not spin while the server is away.
const PULL_RETRY_DELAY: Duration = Duration::from_millis(250);
/// The header that marks a ledger entry in a session's record (results carry none).
pub const ENTRY_HEADER: &str = "Rf-Entry";
/// Its value on a [`JobAccepted`].
pub const ENTRY_ACCEPTED: &str = "accepted";
/// Timeout of JetStream API requests, publish acks and double acks.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection options that do not belong in the config file.
#[derive(Clone, Default)]
pub struct JetStreamOptions {
    /// Token, if the server requires one (the binary reads it from the variable named by
    /// `NatsConfig::token_env`; this library never reads the environment).
    pub token: Option<String>,
    /// Connection name shown in the server's monitoring (e.g. `rewardfleet-worker@host`).
    pub client_name: Option<String>,
}

impl fmt::Debug for JetStreamOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("client_name", &self.client_name)
            .finish()
    }
}

/// Lag of one pool's consumer, from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Jobs in the stream not yet delivered to any worker.
    pub pending: u64,
    /// Jobs delivered and not yet acknowledged (bounded by `max_ack_pending`).
    pub ack_pending: usize,
    /// Jobs delivered more than once and not yet acknowledged.
    pub redelivered: usize,
    /// Open pull requests (roughly: idle workers waiting for jobs).
    pub waiting: usize,
}

/// The queue on NATS JetStream: a cheap `Clone` handle over one connection.
#[derive(Clone)]
pub struct JetStreamQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    jobs_stream: String,
    results: jetstream::stream::Stream<()>,
    prefix: String,
    /// Pool that [`Queue::publish_job`] publishes to.
    pool: String,
    ack_wait: Duration,
    max_deliver: i64,
    max_ack_pending: i64,
    /// Counts (re)connections; job sources renew their pull request when it moves.
    connected: watch::Receiver<u64>,
}

impl fmt::Debug for JetStreamQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamQueue")
            .field("jobs_stream", &self.jobs_stream)
            .field("prefix", &self.prefix)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// The NATS TLS settings of `nats` (`tls_required`, `tls_ca`, `tls_cert` + `tls_key`) on
/// `connect`. The files are read when the connection is made; a server that does not offer TLS
/// is refused when TLS is required.
pub(crate) fn with_tls(
    mut connect: async_nats::ConnectOptions,
    nats: &NatsConfig,
) -> async_nats::ConnectOptions {
    if nats.tls_required {
        connect = connect.require_tls(true);
    }
    if let Some(ca) = &nats.tls_ca {
        connect = connect.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&nats.tls_cert, &nats.tls_key) {
        connect = connect.add_client_certificate(cert.clone(), key.clone());
    }
    connect
}

impl JetStreamQueue {
    /// Connects without a token (see [`JetStreamQueue::connect_with`]).
    ///
    /// # Errors
    /// As [`JetStreamQueue::connect_with`].
    pub async fn connect(nats: &NatsConfig, worker: &WorkerConfig) -> Result<Self, QueueError> {
        Self::connect_with(nats, worker, JetStreamOptions::default()).await
    }

    /// Connects to `nats.url` (comma-separated URLs), authenticating with `options.token` or
    /// `nats.credentials_file`, and creates or updates the jobs and results streams. Jobs are
    /// published to `worker.pool` (change it with [`JetStreamQueue::with_pool`]).
    ///
    /// The connection reconnects by itself for as long as the queue lives.
    ///
    /// # Errors
    /// [`QueueError::Setup`] for a bad URL, an unreadable credentials file, a pool name that is
    /// not a subject token, or streams the server refuses (e.g. an existing stream whose
    /// retention differs); [`QueueError::Unavailable`] if the server cannot be reached.
    pub async fn connect_with(
        nats: &NatsConfig,
        worker: &WorkerConfig,
        options: JetStreamOptions,
    ) -> Result<Self, QueueError> {
        check_token("pool", &worker.pool)?;
        check_token("subject prefix", &nats.subject_prefix)?;
        let (connected_tx, connected) = watch::channel(0_u64);
        let connected_tx = Arc::new(connected_tx);
        let mut connect = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let connected_tx = Arc::clone(&connected_tx);
                async move {
                    match event {
                        Event::Connected => {
                            tracing::info!("connected to NATS");
                            connected_tx.send_modify(|n| *n += 1);
                        }
                        Event::SlowConsumer(sid) => tracing::warn!(
                            sid,
                            "NATS subscription too slow: messages dropped (JetStream will redeliver)"
                        ),
                        other => tracing::warn!(event = %other, "NATS connection event"),
                    }
                }
            });
        if let Some(name) = &options.client_name {
            connect = connect.name(name);
        }
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
        let urls: Vec<&str> = nats
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let client = connect.connect(urls.as_slice()).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            match e.kind() {
                K::ServerParse | K::Authentication | K::AuthorizationViolation | K::Tls => {
                    QueueError::setup(format!("cannot connect to NATS at {}", nats.url))
                        .caused_by(e)
                }
                _ => QueueError::unavailable(format!("cannot connect to NATS at {}", nats.url))
                    .caused_by(e),
            }
        })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());

        let prefix = nats.subject_prefix.clone();
        ensure_stream(
            &js,
            stream::Config {
                name: nats.jobs_stream.clone(),
                description: Some("rewardfleet jobs: one subject per worker pool".into()),
                subjects: vec![format!("{prefix}.jobs.>")],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                num_replicas: nats.replicas,
                duplicate_window: nats.duplicate_window,
                // Bounded: a full stream refuses new jobs (the gateway holds them back) rather
                // than dropping queued ones.
                max_bytes: i64::try_from(nats.jobs_max_bytes).unwrap_or(i64::MAX),
                max_messages: i64::try_from(nats.jobs_max_messages).unwrap_or(i64::MAX),
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            },
        )
        .await?;
        ensure_stream(
            &js,
            stream::Config {
                name: nats.results_stream.clone(),
                description: Some("rewardfleet results: one subject per session".into()),
                subjects: vec![format!("{prefix}.results.>")],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                num_replicas: nats.replicas,
                duplicate_window: nats.duplicate_window,
                max_age: nats.results_max_age,
                ..Default::default()
            },
        )
        .await?;
        let results = js
            .get_stream_no_info(&nats.results_stream)
            .await
            .map_err(|e| setup(format!("results stream {}", nats.results_stream), e))?;

        Ok(Self {
            client,
            js,
            jobs_stream: nats.jobs_stream.clone(),
            results,
            prefix,
            pool: worker.pool.clone(),
            ack_wait: worker.ack_wait,
            max_deliver: worker.max_deliver,
            max_ack_pending: worker.max_ack_pending,
            connected,
        })
    }

    /// The same queue, publishing jobs to `pool` (`<prefix>.jobs.<pool>`).
    ///
    /// # Errors
    /// [`QueueError::Setup`] if `pool` is not a subject token (letters, digits, `-`, `_`).
    pub fn with_pool(mut self, pool: &str) -> Result<Self, QueueError> {
        check_token("pool", pool)?;
        pool.clone_into(&mut self.pool);
        Ok(self)
    }

    /// The pool that jobs are published to.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The subjects that jobs of `pool` go to (one per session under it).
    pub fn jobs_subject(&self, pool: &str) -> String {
        format!("{}.jobs.{pool}.>", self.prefix)
    }

    /// The subject that the jobs of `session_id` for `pool` go to.
    pub fn session_jobs_subject(&self, pool: &str, session_id: &str) -> String {
        format!("{}.jobs.{pool}.{}", self.prefix, session_token(session_id))
    }

    /// The subject that results of `session_id` go to.
    pub fn results_subject(&self, session_id: &str) -> String {
        format!("{}.results.{}", self.prefix, session_token(session_id))
    }

    /// The durable consumer that the workers of `pool` share.
    pub fn consumer_name(&self, pool: &str) -> String {
        format!("{}-workers-{pool}", self.prefix)
    }

    /// The underlying client (for health checks and metrics).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The lag of `pool`'s consumer (what autoscaling and `rewardfleet status` read).
    ///
    /// # Errors
    /// [`QueueError::Setup`] if the pool has no consumer yet (no worker ever pulled from it);
    /// [`QueueError::Unavailable`] if the server cannot be asked.
    pub async fn pool_status(&self, pool: &str) -> Result<PoolStatus, QueueError> {
        let mut consumer: consumer::Consumer<pull::Config> = self
            .js
            .get_consumer_from_stream(self.consumer_name(pool), &self.jobs_stream)
            .await
            .map_err(|e| {
                if matches!(
                    e.kind(),
                    jetstream::stream::ConsumerErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
                ) {
                    QueueError::setup(format!("pool {pool:?} has no consumer yet"))
                } else {
                    unavailable("consumer info", e)
                }
            })?;
        let info = consumer
            .info()
            .await
            .map_err(|e| unavailable("consumer info", e))?;
        Ok(PoolStatus {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending,
            redelivered: info.num_redelivered,
            waiting: info.num_waiting,
        })
    }

    /// Publishes a job's result (`Nats-Msg-Id: r.<job_id>`); returns whether the job already
    /// had one (see [`JetStreamQueue::publish`]: the server kept the first, this one is dropped).
    async fn publish_job_result(&self, result: &JobResult) -> Result<bool, QueueError> {
        check_msg_id("job_id", &result.job_id)?;
        let subject = self.results_subject(&result.session_id);
        let pattern = format!("{}.results", self.prefix);
        let span = publish_span(&pattern, &subject, &result.job_id);
        let headers = traced_headers(&span);
        self.publish(
            "result",
            subject,
            headers,
            format!("r.{}", result.job_id),
            result.encode_to_vec().into(),
        )
        .instrument(span)
        .await
    }

    /// Publishes with `Nats-Msg-Id: msg_id` and waits for the stream's ack. If the connection
    /// is re-established meanwhile, the message may have been lost with the old connection: it
    /// is published again, which the server's dedup makes harmless.
    ///
    /// Returns whether the stream already held a message with this id (within
    /// `duplicate_window`) before this call; false when that cannot be told (published again
    /// after a reconnect: the duplicate may be this call's own first attempt).
    async fn publish(
        &self,
        what: &str,
        subject: String,
        mut headers: HeaderMap,
        msg_id: String,
        payload: Bytes,
    ) -> Result<bool, QueueError> {
        headers.insert(NATS_MESSAGE_ID, msg_id.as_str());
        let mut connected = self.connected.clone();
        connected.mark_unchanged();
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut first_attempt = true;
        loop {
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
                .map_err(|e| publish_error(what, &msg_id, e))?;
            tokio::select! {
                ack = ack => {
                    let ack = ack.map_err(|e| publish_error(what, &msg_id, e))?;
                    if ack.duplicate {
                        tracing::debug!(what, msg_id, "duplicate publish ignored by the server");
                    }
                    return Ok(ack.duplicate && first_attempt);
                }
                Ok(()) = connected.changed() => {
                    tracing::debug!(what, msg_id, "reconnected while awaiting the publish ack; publishing again");
                    first_attempt = false;
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(QueueError::unavailable(format!(
                        "publish {what} {msg_id:?}: no ack within {REQUEST_TIMEOUT:?}"
                    )));
                }
            }
        }
    }
}

#[async_trait]
impl Queue for JetStreamQueue {
    async fn publish_job(&self, job: &Job) -> Result<(), QueueError> {
        check_msg_id("job_id", &job.job_id)?;
        let subject = self.session_jobs_subject(&self.pool, &job.session_id);
        let pattern = format!("{}.jobs.{}", self.prefix, self.pool);
        let span = publish_span(&pattern, &subject, &job.job_id);
        let headers = traced_headers(&span);
        self.publish(
            "job",
            subject,
            headers,
            job.job_id.clone(),
            job.encode_to_vec().into(),
        )
        .instrument(span)
        .await
        .map(drop)
    }

    async fn record_accepted(&self, entry: &JobAccepted) -> Result<(), QueueError> {
        check_msg_id("job_id", &entry.job_id)?;
        let mut headers = HeaderMap::new();
        headers.insert(ENTRY_HEADER, ENTRY_ACCEPTED);
        self.publish(
            "ledger entry",
            self.results_subject(&entry.session_id),
            headers,
            format!("a.{}", entry.job_id),
            entry.encode_to_vec().into(),
        )
        .await
        .map(drop)
    }

    async fn publish_result(&self, result: &JobResult) -> Result<(), QueueError> {
        self.publish_job_result(result).await.map(drop)
    }

    async fn results(&self, session_id: &str) -> Result<ResultStream, QueueError> {
        let mut follower = ResultFollower {
            queue: self.clone(),
            session: session_id.to_owned(),
            last_sequence: 0,
            caught_up: false,
            say_caught_up: false,
            messages: None,
            consumer: None,
            connected: self.connected.clone(),
        };
        follower.open().await?;
        Ok(
            futures::stream::unfold(follower, |mut follower| async move {
                let item = follower.next().await?;
                Some((item, follower))
            })
            .boxed(),
        )
    }

    async fn forget_session(&self, session_id: &str) -> Result<(), QueueError> {
        self.results
            .purge()
            .filter(self.results_subject(session_id))
            .await
            .map_err(|e| unavailable("purge session results", e))?;
        Ok(())
    }

    async fn abandon_session(&self, session_id: &str) -> Result<(), QueueError> {
        // Jobs not yet delivered leave the work queue; one a worker holds is acked or
        // redelivered as usual (an ack of a purged job is harmless), and its result is purged
        // with the session's record when it comes back too late for anyone.
        let jobs = self
            .js
            .get_stream_no_info(&self.jobs_stream)
            .await
            .map_err(|e| unavailable("jobs stream", e))?;
        jobs.purge()
            .filter(format!(
                "{}.jobs.*.{}",
                self.prefix,
                session_token(session_id)
            ))
            .await
            .map_err(|e| unavailable("purge session jobs", e))?;
        self.forget_session(session_id).await
    }

    async fn jobs(&self, pool: &str, capacity: usize) -> Result<Box<dyn JobSource>, QueueError> {
        check_token("pool", pool)?;
        if capacity == 0 {
            return Err(QueueError::setup("job source capacity must be at least 1"));
        }
        let max_deliver = self.max_deliver.max(1);
        let consumer: consumer::Consumer<pull::Config> = self
            .js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(self.consumer_name(pool)),
                    description: Some(format!("rewardfleet workers of pool {pool}")),
                    filter_subject: self.jobs_subject(pool),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_deliver,
                    max_ack_pending: self.max_ack_pending,
                    ..Default::default()
                },
                &self.jobs_stream,
            )
            .await
            .map_err(|e| setup(format!("consumer {}", self.consumer_name(pool)), e))?;
        let mut connected = self.connected.clone();
        connected.mark_unchanged();
        Ok(Box::new(JetStreamJobs {
            client: self.client.clone(),
            consumer,
            max_deliver: max_deliver.unsigned_abs(),
            batch: None,
            deadline: Instant::now(),
            draining: false,
            connected,
        }))
    }
}

/// Follows one session's results: an ordered push consumer from the stream sequence after the
/// last result handed out, opened again after every reconnect (so a server restart while nobody
/// polls the stream costs no idle-heartbeat timeout) and whenever the consumer ends.
struct ResultFollower {
    queue: JetStreamQueue,
    session: String,
    /// Stream sequence of the last entry handed out (0: none yet).
    last_sequence: u64,
    /// The entries retained when the follower started have all been handed out.
    caught_up: bool,
    /// `caught_up` just became true: say so before the next entry.
    say_caught_up: bool,
    messages: Option<push::Ordered>,
    /// The name of the consumer it opened last: deleted when it opens another and when the
    /// session ends, so that ended sessions leave no consumer behind.
    consumer: Option<String>,
    connected: watch::Receiver<u64>,
}

impl ResultFollower {
    async fn open(&mut self) -> Result<(), QueueError> {
        self.connected.mark_unchanged();
        self.delete_consumer();
        let deliver_policy = match self.last_sequence {
            0 => DeliverPolicy::All,
            last => DeliverPolicy::ByStartSequence {
                start_sequence: last + 1,
            },
        };
        let consumer = self
            .queue
            .results
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.queue.client.new_inbox(),
                description: Some(format!("rewardfleet results of session {:?}", self.session)),
                filter_subject: self.queue.results_subject(&self.session),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("create results consumer", e))?;
        self.consumer = Some(consumer.cached_info().name.clone());
        if !self.caught_up && consumer.cached_info().num_pending == 0 {
            self.caught_up = true;
            self.say_caught_up = true;
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable("subscribe to results", e))?;
        self.messages = Some(messages);
        Ok(())
    }

    /// Deletes the consumer opened last, in the background (best effort: one that could not be
    /// deleted, or that the ordered consumer re-created under another name, goes 30 s after
    /// nobody listens, async-nats' inactivity threshold for ordered consumers).
    fn delete_consumer(&mut self) {
        let Some(name) = self.consumer.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let results = self.queue.results.clone();
        runtime.spawn(async move {
            if let Err(e) = results.delete_consumer(&name).await {
                tracing::debug!(consumer = name, error = %e, "session consumer not deleted; it expires");
            }
        });
    }

    /// The next entry, or a passing error; `None` once the connection is closed for good.
    async fn next(&mut self) -> Option<Result<SessionEvent, QueueError>> {
        loop {
            if self.say_caught_up {
                self.say_caught_up = false;
                return Some(Ok(SessionEvent::CaughtUp));
            }
            let Some(messages) = self.messages.as_mut() else {
                if let Err(e) = self.open().await {
                    tokio::time::sleep(PULL_RETRY_DELAY).await;
                    return Some(Err(e));
                }
                continue;
            };
            tokio::select! {
                biased;
                item = messages.next() => match item {
                    Some(Ok(message)) => {
                        if let Ok(info) = message.info() {
                            self.last_sequence = info.stream_sequence;
                            if !self.caught_up && info.pending == 0 {
                                self.caught_up = true;
                                self.say_caught_up = true;
                            }
                        }
                        return Some(session_event(&message).map_err(|e| {
                            tracing::warn!(session = self.session, error = %e, "undecodable session entry skipped");
                            QueueError::malformed(format!("entry of session {:?}", self.session)).caused_by(e)
                        }));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(session = self.session, error = %e, "results stream interrupted; resuming");
                        return Some(Err(unavailable("results", e)));
                    }
                    None => self.messages = None,
                },
                changed = self.connected.changed() => {
                    changed.ok()?;
                    self.messages = None;
                }
            }
        }
    }
}

impl Drop for ResultFollower {
    fn drop(&mut self) {
        self.delete_consumer();
    }
}

/// How long stream creation keeps trying while JetStream is not ready yet (a cluster still
/// electing its meta leader answers "request timed out" for a few seconds after it starts).
const STREAM_SETUP_PATIENCE: Duration = Duration::from_secs(30);

/// Creates or updates a stream; retries while the request times out (a cluster that has just
/// started), for up to [`STREAM_SETUP_PATIENCE`]. A refusal (an existing stream of another
/// retention, a server without JetStream) is an error at once.
async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<(), QueueError> {
    use jetstream::context::CreateStreamErrorKind as K;
    let what = format!("stream {}", config.name);
    let deadline = Instant::now() + STREAM_SETUP_PATIENCE;
    let mut delay = Duration::from_millis(250);
    loop {
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == K::TimedOut && Instant::now() + delay < deadline => {
                tracing::warn!(stream = %config.name, error = %e, "JetStream not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
            Err(e) => return Err(setup(what, e)),
        }
    }
}

/// The producer span of one publish: named after the subject without its session token (a
/// bounded set of names), with the concrete subject as its destination.
fn publish_span(pattern: &str, subject: &str, message_id: &str) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {pattern}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = %message_id,
    )
}

/// Headers that carry `span`'s trace context to whoever takes the message.
fn traced_headers(span: &tracing::Span) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in TraceContext::of(span).fields() {
        headers.insert(name, value);
    }
    headers
}

/// The trace context a message carries in its headers.
pub(crate) fn trace_context(headers: Option<&HeaderMap>) -> TraceContext {
    let Some(headers) = headers else {
        return TraceContext::default();
    };
    TraceContext::from_fields(
        headers
            .iter()
            .filter_map(|(name, values)| Some((name.as_ref(), values.first()?.as_str()))),
    )
}

/// Reads one entry of a session's record.
fn session_event(message: &jetstream::Message) -> Result<SessionEvent, prost::DecodeError> {
    decode_session_event(message.headers.as_ref(), &message.payload)
}

/// Reads one entry of a session's record from its headers and payload: a [`JobAccepted`] when
/// the headers mark it so, else a [`JobResult`] with the trace context of its publisher.
///
/// # Errors
/// The payload is not the message its headers announce.
pub fn decode_session_event(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<SessionEvent, prost::DecodeError> {
    let accepted = headers
        .and_then(|h| h.get(ENTRY_HEADER))
        .is_some_and(|v| v.as_str() == ENTRY_ACCEPTED);
    if accepted {
        JobAccepted::decode(payload).map(SessionEvent::Accepted)
    } else {
        let trace = trace_context(headers);
        JobResult::decode(payload).map(|r| SessionEvent::Result(r, trace))
    }
}

/// Reads a job message as a worker takes it: the [`Job`] of its payload and the trace context
/// of the span that published it (empty when its headers carry none).
///
/// # Errors
/// The payload is not a [`Job`].
pub fn decode_job(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<(Job, TraceContext), prost::DecodeError> {
    let job = Job::decode(payload)?;
    Ok((job, trace_context(headers)))
}

/// A worker's pull loop: one outstanding pull request at a time, of at most the jobs the worker
/// can start when it is made, its jobs handed out as they arrive. So no job waits in the worker
/// for a free slot while its ack timer runs, and none is dropped with an expiring request.
struct JetStreamJobs {
    client: async_nats::Client,
    consumer: consumer::Consumer<pull::Config>,
    max_deliver: u64,
    /// The open pull request, if any.
    batch: Option<pull::Batch>,
    /// When the open pull request is presumed lost (the server expires it before).
    deadline: Instant,
    /// The connection was re-established: hand out what the open request already received,
    /// then drop it (the server that took it may be gone) and pull anew.
    draining: bool,
    connected: watch::Receiver<u64>,
}

impl JetStreamJobs {
    /// Opens a pull request for at most `room` jobs, once connected.
    async fn open_batch(&mut self, room: usize) -> Result<(), QueueError> {
        while self.client.connection_state() != async_nats::connection::State::Connected {
            if self.connected.changed().await.is_err() {
                return Err(QueueError::Closed);
            }
        }
        self.connected.mark_unchanged();
        let batch = self
            .consumer
            .batch()
            .max_messages(room.max(1))
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| unavailable("pull jobs", e))?;
        self.batch = Some(batch);
        self.deadline = Instant::now() + PULL_EXPIRES + PULL_GRACE;
        Ok(())
    }

    /// Turns a message into a delivery; a payload that is not a job is terminated.
    async fn delivery(&self, message: jetstream::Message) -> Result<Delivery, QueueError> {
        let (attempt, sequence) = match message.info() {
            Ok(info) => (info.delivered.unsigned_abs(), info.stream_sequence),
            Err(e) => {
                return Err(
                    QueueError::malformed("job message without JetStream metadata")
                        .caused_by_boxed(e),
                );
            }
        };
        let (message, acker) = message.split();
        let subject = message.subject.to_string();
        match decode_job(message.headers.as_ref(), &message.payload) {
            Ok((job, trace_context)) => Ok(Delivery {
                job,
                attempt,
                max_deliver: self.max_deliver,
                trace_context,
                subject: Some(subject),
                acker: Box::new(JetStreamAcker {
                    acker,
                    connected: self.connected.clone(),
                }),
            }),
            Err(e) => {
                if let Err(term) = acker.double_ack_with(AckKind::Term).await {
                    tracing::warn!(sequence, error = %term, "could not terminate undecodable job");
                }
                Err(QueueError::malformed(format!(
                    "job at stream sequence {sequence} is not a Job; terminated"
                ))
                .caused_by(e))
            }
        }
    }
}

#[async_trait]
impl JobSource for JetStreamJobs {
    async fn next(&mut self, room: usize) -> Option<Result<Delivery, QueueError>> {
        loop {
            if self.batch.is_none()
                && let Err(e) = self.open_batch(room).await
            {
                if matches!(e, QueueError::Closed) {
                    return None;
                }
                tokio::time::sleep(PULL_RETRY_DELAY).await;
                return Some(Err(e));
            }
            let Some(batch) = self.batch.as_mut() else {
                continue;
            };
            if self.draining {
                match batch.next().now_or_never() {
                    Some(Some(Ok(message))) => return Some(self.delivery(message).await),
                    _ => {
                        self.batch = None;
                        self.draining = false;
                        continue;
                    }
                }
            }
            tokio::select! {
                biased;
                item = batch.next() => match item {
                    Some(Ok(message)) => return Some(self.delivery(message).await),
                    None => self.batch = None,
                    Some(Err(e)) => {
                        // A status that ends the request (409 leadership change, max waiting…).
                        self.batch = None;
                        return Some(Err(QueueError::unavailable("pull jobs").caused_by_boxed(e)));
                    }
                },
                changed = self.connected.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    self.draining = true;
                    return Some(Err(QueueError::unavailable(
                        "reconnected to NATS; renewing the pull request",
                    )));
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    tracing::debug!("pull request silent past its expiry; renewing");
                    self.batch = None;
                }
            }
        }
    }
}

/// Acknowledges one JetStream delivery.
struct JetStreamAcker {
    acker: NatsAcker,
    /// A reconnect while a confirmation is awaited means it will not come: fail at once
    /// instead of waiting out the request timeout.
    connected: watch::Receiver<u64>,
}

impl JetStreamAcker {
    async fn confirmed(&self, kind: AckKind, what: &str) -> Result<(), QueueError> {
        let mut connected = self.connected.clone();
        connected.mark_unchanged();
        tokio::select! {
            done = self.acker.double_ack_with(kind) => done.map_err(|e| QueueError::unavailable(what).caused_by_boxed(e)),
            Ok(()) = connected.changed() => Err(QueueError::unavailable(format!(
                "{what}: connection re-established before the server confirmed; the job may be delivered again"
            ))),
        }
    }
}

#[async_trait]
impl Acker for JetStreamAcker {
    async fn ack(&self) -> Result<(), QueueError> {
        self.confirmed(AckKind::Ack, "ack").await
    }

    async fn nak(&self, delay: Duration) -> Result<(), QueueError> {
        self.acker
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| QueueError::unavailable("nak").caused_by_boxed(e))
    }

    async fn progress(&self) -> Result<(), QueueError> {
        self.acker
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| QueueError::unavailable("progress").caused_by_boxed(e))
    }
}

/// The subject token of a session: the id where it is `[A-Za-z0-9-]+`, else `_XX`-escaped.
pub fn session_token(session_id: &str) -> String {
    if session_id.is_empty() {
        return "_".into();
    }
    let mut token = String::with_capacity(session_id.len());
    for byte in session_id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            token.push(char::from(byte));
        } else {
            token.push_str(&format!("_{byte:02X}"));
        }
    }
    token
}

fn check_token(what: &str, value: &str) -> Result<(), QueueError> {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(QueueError::setup(format!(
            "{what} {value:?} is not allowed; use letters, digits, '-' and '_'"
        )))
    }
}

/// A message id travels in a header: it must be non-empty and free of control characters.
fn check_msg_id(what: &str, value: &str) -> Result<(), QueueError> {
    if value.is_empty() || value.chars().any(char::is_control) {
        Err(QueueError::malformed(format!(
            "{what} {value:?} must be non-empty and without control characters"
        )))
    } else {
        Ok(())
    }
}

fn setup(what: String, e: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError::setup(what).caused_by(e)
}

fn unavailable(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError::unavailable(what).caused_by(e)
}

fn publish_error(what: &str, msg_id: &str, e: jetstream::context::PublishError) -> QueueError {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => QueueError::malformed(format!(
            "{what} {msg_id:?} is larger than the server's max_payload"
        )),
        PublishErrorKind::StreamNotFound => QueueError::setup(format!(
            "no stream takes the {what} {msg_id:?} (was it deleted?)"
        )),
        PublishErrorKind::Other if is_stream_full(&e) => {
            return QueueError::Full(format!(
                "the jobs stream holds nats.jobs_max_messages jobs or nats.jobs_max_bytes bytes; \
                 {what} {msg_id:?} waits for workers to make room"
            ));
        }
        _ => QueueError::unavailable(format!("publish {what} {msg_id:?}")),
    }
    .caused_by(e)
}

/// Whether the stream refused a message for its limits (discard policy `new`): JetStream's
/// "maximum messages exceeded" (10077) or "maximum bytes exceeded" (10078).
fn is_stream_full(e: &jetstream::context::PublishError) -> bool {
    let text = std::error::Error::source(e).map_or_else(String::new, ToString::to_string);
    text.contains("maximum messages") || text.contains("maximum bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_are_valid_and_distinct() {
        assert_eq!(session_token("abc-DEF-123"), "abc-DEF-123");
        assert_eq!(session_token("a.b"), "a_2Eb");
        assert_eq!(session_token("a_b"), "a_5Fb");
        assert_eq!(session_token(""), "_");
        assert_ne!(session_token("a_2Eb"), session_token("a.b"));
        for id in ["a b", "*", ">", "x.>", "ünï", "\n"] {
            assert!(check_token("t", &session_token(id)).is_ok(), "{id:?}");
        }
    }

    #[test]
    fn message_ids_reject_control_characters() {
        assert!(check_msg_id("job_id", "s.abc").is_ok());
        assert!(matches!(
            check_msg_id("job_id", ""),
            Err(QueueError::Malformed { .. })
        ));
        assert!(matches!(
            check_msg_id("job_id", "a\r\nb"),
            Err(QueueError::Malformed { .. })
        ));
    }

    #[test]
    fn record_entries_are_read_by_their_header() {
        let entry = JobAccepted {
            job_id: "j".into(),
            session_id: "s".into(),
            candidate_ids: vec!["c1".into()],
        };
        let mut headers = HeaderMap::new();
        headers.insert(ENTRY_HEADER, ENTRY_ACCEPTED);
        assert_eq!(
            decode_session_event(Some(&headers), &entry.encode_to_vec()),
            Ok(SessionEvent::Accepted(entry))
        );
        let result = JobResult {
            job_id: "j".into(),
            session_id: "s".into(),
            ..Default::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert("Traceparent", "00-x");
        let Ok(SessionEvent::Result(read, trace)) =
            decode_session_event(Some(&headers), &result.encode_to_vec())
        else {
            panic!("a result without the entry header is a result");
        };
        assert_eq!(read, result);
        assert_eq!(
            trace.fields().collect::<Vec<_>>(),
            [("traceparent", "00-x")]
        );
        assert!(decode_session_event(None, b"\xff").is_err());
    }

    #[test]
    fn jobs_are_read_with_their_trace_context() {
        let job = Job {
            job_id: "j".into(),
            ..Default::default()
        };
        let (read, trace) = decode_job(None, &job.encode_to_vec()).expect("a job");
        assert_eq!(read, job);
        assert!(trace.is_empty());
        assert!(decode_job(None, b"\x0a\x05ab").is_err(), "truncated");
    }
}
