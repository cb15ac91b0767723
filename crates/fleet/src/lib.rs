//! Assembles a gateway, a worker or an embedded fleet from a [`Config`]: the library that the
//! binary and the end-to-end tests call.
//!
//! Each process takes its listeners and a shutdown token as arguments (so tests run the real
//! thing on port 0), and its secrets as a value (the binary reads them; this library never
//! reads the environment).
//!
//! In NATS mode each process also keeps a heartbeat (its entry in a KV bucket, renewed every
//! `nats.heartbeat_interval`, deleted on a graceful stop) that `rewardfleet status` reads.

mod heartbeat;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use rewardfleet_client::{Responses, Transport};
use rewardfleet_core::Pipeline;
use rewardfleet_core::config::Config;
use rewardfleet_gateway::{Gateway, ReloadingTls, TlsFiles};
use rewardfleet_judge::{JudgeCache, JudgeError, JudgeSet};
use rewardfleet_proto::v1::ScoreRequest;
use rewardfleet_queue::jetstream::JetStreamOptions;
use rewardfleet_queue::{InProcessQueue, JetStreamQueue, Queue, QueueError};
use rewardfleet_scorers::ScorerSource;
use rewardfleet_worker::{Worker, WorkerError, WorkerStats};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a fleet process could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The configuration cannot be assembled; the message names each problem and its key path.
    #[error("{0}")]
    Config(String),
    /// The queue failed (NATS unreachable, streams refused).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A judge could not be set up (its key, its cache).
    #[error("{0}")]
    Judge(#[from] JudgeError),
    /// A model could not be loaded.
    #[error("{0}")]
    Models(String),
    /// A worker stopped early.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The gateway's transport failed.
    #[error("gateway transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The secrets a fleet process needs, read by the binary from the variables and files that the
/// configuration names. `Debug` shows which are set, never their values.
#[derive(Clone, Default)]
pub struct Secrets {
    /// The NATS token (`nats.token_env`).
    pub nats_token: Option<String>,
    /// Each judge's API key by judge name (`api_key_env` / `api_key_file`).
    pub judge_api_keys: HashMap<String, String>,
    /// Each tenant's bearer token by tenant name (`token_env` / `token_file`).
    pub tenant_tokens: HashMap<String, String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut judges: Vec<&String> = self.judge_api_keys.keys().collect();
        judges.sort();
        f.debug_struct("Secrets")
            .field(
                "nats_token",
                &self.nats_token.as_ref().map(|_| "<redacted>"),
            )
            .field("judge_api_keys", &judges)
            .field("tenant_tokens", &{
                let mut tenants: Vec<&String> = self.tenant_tokens.keys().collect();
                tenants.sort();
                tenants
            })
            .finish()
    }
}

/// Every profile's scorers, and the judges and models behind them (for their usage).
pub struct Scorers {
    /// The profiles, ready to score.
    pub pipeline: Pipeline,
    /// The judges, when the configuration has any.
    pub judges: Option<Arc<JudgeSet>>,
    /// The local models (none when the configuration has none).
    pub models: Models,
}

/// What one local model has run so far (warm-up not included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUsage {
    /// The model's name.
    pub model: String,
    /// Forward passes.
    pub batches: u64,
    /// Sequences (texts) run.
    pub sequences: u64,
    /// Real tokens run.
    pub tokens: u64,
    /// Padded tokens run (batch × longest sequence).
    pub padded_tokens: u64,
}

/// The local models of a process, shared with the profiles that use them; cheap to clone. Always
/// empty in a build without libtorch.
#[derive(Clone, Default)]
pub struct Models {
    #[cfg(feature = "torch")]
    set: Option<rewardfleet_torch::ModelSet>,
}

impl Models {
    /// The models as a source of profile components, when there are any.
    fn source(&self) -> Option<&dyn ScorerSource> {
        #[cfg(feature = "torch")]
        if let Some(set) = &self.set {
            return Some(set);
        }
        None
    }

    /// What each model has run so far, in name order.
    pub fn usage(&self) -> Vec<ModelUsage> {
        #[cfg(feature = "torch")]
        if let Some(set) = &self.set {
            return set
                .stats()
                .into_iter()
                .map(|(model, s)| ModelUsage {
                    model,
                    batches: s.batches,
                    sequences: s.sequences,
                    tokens: s.tokens,
                    padded_tokens: s.padded_tokens,
                })
                .collect();
        }
        Vec::new()
    }
}

/// Builds every profile's scorers: loads models (warm before this returns), sets up judges with
/// their API keys and verdict cache (a KV bucket on `nats` in fleet mode, memory otherwise).
///
/// # Errors
/// A model that cannot be loaded, a judge that cannot be set up, or profile problems.
pub async fn scorers(
    config: &Config,
    nats: Option<&async_nats::Client>,
    secrets: &Secrets,
) -> Result<Scorers, FleetError> {
    let models = if config.model.is_empty() {
        Models::default()
    } else {
        load_models(config).await?
    };
    let judges = if config.judge.is_empty() {
        None
    } else {
        let c = &config.judge_cache;
        let cache = match (c.enabled, nats) {
            (false, _) => JudgeCache::None,
            (true, Some(client)) => {
                let js = async_nats::jetstream::new(client.clone());
                rewardfleet_scorers::kv_cache::judge_cache(&js, &c.kv_bucket, c.ttl).await?
            }
            (true, None) => JudgeCache::Memory {
                capacity: c.memory_capacity,
                ttl: c.ttl,
            },
        };
        Some(Arc::new(JudgeSet::new(
            &config.judge,
            secrets.judge_api_keys.clone(),
            cache,
        )?))
    };
    let mut sources: Vec<&dyn ScorerSource> = Vec::new();
    if let Some(m) = models.source() {
        sources.push(m);
    }
    if let Some(j) = &judges {
        sources.push(j.as_ref());
    }
    let pipeline = rewardfleet_scorers::build_pipeline(config, &sources)
        .map_err(|e| FleetError::Config(e.to_string()))?;
    Ok(Scorers {
        pipeline,
        judges,
        models,
    })
}

/// Loads every `[[model]]` (each warm before this returns) on a blocking thread.
#[cfg(feature = "torch")]
async fn load_models(config: &Config) -> Result<Models, FleetError> {
    let models = config.model.clone();
    let base = config.base_dir.clone();
    let set =
        tokio::task::spawn_blocking(move || rewardfleet_torch::ModelSet::load(&models, &base))
            .await
            .map_err(|e| FleetError::Models(format!("the model loader stopped: {e}")))?
            .map_err(|e| FleetError::Models(e.to_string()))?;
    Ok(Models { set: Some(set) })
}

#[cfg(not(feature = "torch"))]
async fn load_models(config: &Config) -> Result<Models, FleetError> {
    Err(FleetError::Models(format!(
        "model[0] ({:?}): this binary was built without libtorch (cargo feature `torch`); \
         build with it, or run the profiles that use models on workers that have it",
        config.model[0].name
    )))
}

/// Connects to NATS JetStream as `[nats]` says, as `role` (shown in the server's monitoring).
///
/// # Errors
/// No `[nats]` in the configuration, or [`JetStreamQueue::connect_with`]'s errors.
pub async fn connect(
    config: &Config,
    role: &str,
    secrets: &Secrets,
) -> Result<JetStreamQueue, FleetError> {
    let nats = config
        .nats
        .as_ref()
        .ok_or_else(|| FleetError::Config("no [nats] in the configuration".into()))?;
    let options = JetStreamOptions {
        token: secrets.nats_token.clone(),
        client_name: Some(format!("rewardfleet-{role}")),
    };
    Ok(JetStreamQueue::connect_with(nats, &config.worker, options).await?)
}

/// Gateway and worker in one process over an in-process queue (embedded mode).
pub struct Embedded {
    /// The gateway logic (no socket).
    pub gateway: Gateway,
    /// The judges, for their usage.
    pub judges: Option<Arc<JudgeSet>>,
    /// The local models, for their usage.
    pub models: Models,
    shutdown: CancellationToken,
    worker: JoinHandle<()>,
}

impl Embedded {
    /// Builds the scorers and starts the worker.
    ///
    /// # Errors
    /// As [`scorers`].
    pub async fn start(config: &Config, secrets: &Secrets) -> Result<Self, FleetError> {
        let Scorers {
            pipeline,
            judges,
            models,
        } = scorers(config, None, secrets).await?;
        // Ledger entries and results of one session: twice the largest window.
        let queue: Arc<dyn Queue> = Arc::new(InProcessQueue::new(
            &config.worker,
            2 * config.gateway.max_window as usize,
        ));
        let gateway = Gateway::with_tenants(config, Arc::clone(&queue), &secrets.tenant_tokens);
        let worker = Worker::new(queue, pipeline, config.worker.clone(), "embedded");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let worker = tokio::spawn(async move {
            if let Err(e) = worker.run(stop).await {
                tracing::error!(error = %e, "embedded worker stopped");
            }
        });
        Ok(Self {
            gateway,
            judges,
            models,
            shutdown,
            worker,
        })
    }

    /// A transport that runs client sessions on this process's gateway.
    pub fn transport(&self) -> EmbeddedTransport {
        EmbeddedTransport(self.gateway.clone())
    }

    /// Stops the worker after it finished what it holds.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.worker.await;
    }
}

/// Client sessions on a gateway in this process (no socket).
pub struct EmbeddedTransport(Gateway);

#[async_trait]
impl Transport for EmbeddedTransport {
    async fn score(&mut self, requests: Vec<ScoreRequest>) -> Result<Responses, tonic::Status> {
        let requests = futures::stream::iter(requests.into_iter().map(Ok));
        Ok(self.0.score(requests, CancellationToken::new()))
    }
}

/// A gateway assembled from a configuration, ready to serve: over NATS JetStream (running the
/// dead-letter watcher until shutdown), or with its worker in-process when there is no `[nats]`.
pub struct GatewayProcess {
    gateway: Gateway,
    embedded: Option<Embedded>,
    drain_timeout: std::time::Duration,
    /// NATS mode: the queue and settings that its heartbeat needs.
    heartbeat: Option<(JetStreamQueue, rewardfleet_core::config::NatsConfig)>,
    /// Its name in its heartbeat.
    name: String,
    /// The HTTP endpoints and their listener (`gateway.http_listen`), when configured.
    http: Option<(rewardfleet_gateway::HttpApi, TcpListener)>,
    /// Server TLS for gRPC (ALPN `h2`) and HTTP, when `gateway.tls_cert` is set.
    tls: Option<(ReloadingTls, ReloadingTls)>,
}

impl GatewayProcess {
    /// Assembles the gateway of `config`; background tasks end when `shutdown` fires.
    ///
    /// # Errors
    /// NATS unreachable, or (embedded) the scorers cannot be built.
    pub async fn build(
        config: &Config,
        secrets: &Secrets,
        shutdown: &CancellationToken,
    ) -> Result<Self, FleetError> {
        if let Some(m) = rewardfleet_telemetry::metrics() {
            m.gateway_started();
            if config.is_embedded() {
                m.worker_started("embedded");
            }
        }
        let (gateway, embedded, heartbeat) = match &config.nats {
            None => {
                let embedded = Embedded::start(config, secrets).await?;
                (embedded.gateway.clone(), Some(embedded), None)
            }
            Some(nats) => {
                let queue = connect(config, "gateway", secrets).await?;
                // Jobs whose workers all crashed get FAILED results (every gateway may run this).
                tokio::spawn(queue.watch_dead_letters(shutdown.clone()));
                let heartbeat = Some((queue.clone(), nats.clone()));
                let gateway =
                    Gateway::with_tenants(config, Arc::new(queue), &secrets.tenant_tokens);
                (gateway, None, heartbeat)
            }
        };
        let tls = gateway_tls(config)?;
        let http = match &config.gateway.http_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    FleetError::Config(format!("gateway.http_listen: cannot listen on {addr}: {e}"))
                })?;
                Some((
                    rewardfleet_gateway::HttpApi::new(gateway.clone(), config),
                    listener,
                ))
            }
            None => None,
        };
        Ok(Self {
            gateway,
            embedded,
            drain_timeout: config.gateway.drain_timeout,
            heartbeat,
            name: format!("gateway-{}", std::process::id()),
            http,
            tls,
        })
    }

    /// The address of the HTTP endpoints, when `gateway.http_listen` is set.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().and_then(|(_, l)| l.local_addr().ok())
    }

    /// The same gateway, named `name` in its heartbeat (default: `gateway-<pid>`).
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The gateway logic (its counters, sessions in this process).
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Serves gRPC on `listener` (and the HTTP endpoints on `gateway.http_listen`) until
    /// `shutdown` fires, drains both, then stops an embedded worker. In NATS mode it keeps its
    /// heartbeat meanwhile, and deletes it once drained.
    ///
    /// # Errors
    /// If the transport fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), FleetError> {
        // Tenants' judge-token spend is shared with the fleet's other gateways.
        let _tenant_tokens = self.heartbeat.as_ref().and_then(|(queue, nats)| {
            heartbeat::share_tenant_tokens(
                queue.clone(),
                nats.clone(),
                &self.name,
                &self.gateway,
                shutdown.child_token(),
            )
            .map(|task| AbortOnDrop(task.abort_handle()))
        });
        let heartbeat = self.heartbeat.map(|(queue, nats)| {
            let listen = listener
                .local_addr()
                .map_or_else(|_| String::new(), |a| a.to_string());
            heartbeat::gateway(queue, &nats, self.name, listen, self.gateway.clone())
        });
        let (grpc_tls, http_tls) = self.tls.unzip();
        let http = self.http.map(|(api, http_listener)| {
            if let Ok(addr) = http_listener.local_addr() {
                tracing::info!(%addr, "HTTP endpoints listening (/get_reward, /reward, /health)");
            }
            tokio::spawn(rewardfleet_gateway::serve_http(
                api,
                http_listener,
                shutdown.clone(),
                self.drain_timeout,
                http_tls,
            ))
        });
        let served = rewardfleet_gateway::serve(
            self.gateway,
            listener,
            shutdown,
            self.drain_timeout,
            grpc_tls,
        )
        .await;
        if let Some(http) = http {
            match http.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "the HTTP endpoints failed"),
                Err(e) => tracing::error!(error = %e, "the HTTP server stopped"),
            }
        }
        if let Some(heartbeat) = heartbeat {
            heartbeat.finish().await;
        }
        if let Some(embedded) = self.embedded {
            embedded.stop().await;
        }
        Ok(served?)
    }
}

/// The gateway's server TLS from `gateway.tls_cert` / `tls_key` / `tls_client_ca`: one for gRPC
/// (ALPN `h2`) and one for HTTP (`h2`, `http/1.1`), over the same files.
fn gateway_tls(config: &Config) -> Result<Option<(ReloadingTls, ReloadingTls)>, FleetError> {
    let g = &config.gateway;
    let (Some(cert), Some(key)) = (&g.tls_cert, &g.tls_key) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert: config.resolve(cert),
        key: config.resolve(key),
        client_ca: g.tls_client_ca.as_ref().map(|ca| config.resolve(ca)),
    };
    let fail = |e: rewardfleet_gateway::TlsError| {
        FleetError::Config(format!("gateway.tls_cert / tls_key / tls_client_ca: {e}"))
    };
    let grpc = ReloadingTls::new(files.clone(), &[b"h2"]).map_err(fail)?;
    let http = ReloadingTls::new(files, &[b"h2", b"http/1.1"]).map_err(fail)?;
    Ok(Some((grpc, http)))
}

/// Runs the gateway of `config` on `listener` until `shutdown` fires (see [`GatewayProcess`]).
///
/// # Errors
/// As [`GatewayProcess::build`] and [`GatewayProcess::serve`].
pub async fn run_gateway(
    config: &Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    secrets: &Secrets,
) -> Result<(), FleetError> {
    let process = GatewayProcess::build(config, secrets, &shutdown).await?;
    process.serve(listener, shutdown).await
}

/// How a worker process presents itself.
pub struct WorkerOptions {
    /// Its name in results and logs.
    pub name: String,
    /// Where to serve `/livez` and `/readyz`, if anywhere.
    pub health: Option<TcpListener>,
    /// Its counters (made by the caller, so that it can read them while the worker runs).
    pub stats: Arc<WorkerStats>,
}

/// Runs a worker of `config` until `shutdown` fires: connects to NATS, loads models (not ready
/// until they are warm), then pulls and scores jobs, draining on shutdown. From the connection
/// on it keeps its heartbeat (not ready while models load), and deletes it once drained.
///
/// # Errors
/// No `[nats]`, NATS unreachable, scorers that cannot be built, or no source of jobs.
pub async fn run_worker(
    config: &Config,
    options: WorkerOptions,
    shutdown: CancellationToken,
    secrets: &Secrets,
) -> Result<(), FleetError> {
    // The probes answer until the worker has drained: `/readyz` says 503 while it drains.
    let probes = CancellationToken::new();
    let _stop_probes = probes.clone().drop_guard();
    if let Some(listener) = options.health {
        tokio::spawn(rewardfleet_worker::serve_health(
            listener,
            Arc::clone(&options.stats),
            probes,
        ));
    }
    let queue = connect(config, "worker", secrets).await?;
    let monitor = rewardfleet_worker::Monitor::new(config.worker.monitor.clone());
    let heartbeat = config.nats.as_ref().map(|nats| {
        heartbeat::worker(
            queue.clone(),
            config,
            nats,
            options.name.clone(),
            Arc::clone(&options.stats),
            Arc::clone(&monitor),
        )
    });
    // The pool's consumer lag, as gauges for autoscalers and dashboards.
    let lag = rewardfleet_telemetry::metrics().map(|m| {
        m.worker_started(&config.worker.pool);
        tokio::spawn(export_lag(
            queue.clone(),
            config.worker.pool.clone(),
            config.telemetry.metrics_interval,
            shutdown.child_token(),
        ))
    });
    let ran = async {
        let scorers = scorers(config, Some(queue.client()), secrets).await?;
        // Each judge's limits are the fleet's: this worker takes its share.
        let _sharing = match (&config.nats, &scorers.judges) {
            (Some(nats), Some(judges)) => Some(AbortOnDrop(
                heartbeat::share_judges(
                    queue.clone(),
                    Arc::clone(judges),
                    &options.name,
                    nats.heartbeat_interval,
                    shutdown.child_token(),
                )
                .abort_handle(),
            )),
            _ => None,
        };
        let worker = Worker::with_stats(
            Arc::new(queue),
            scorers.pipeline,
            config.worker.clone(),
            options.name,
            options.stats,
        )
        .with_monitor(monitor);
        Ok(worker.run(shutdown).await?)
    }
    .await;
    if let Some(heartbeat) = heartbeat {
        heartbeat.finish().await;
    }
    if let Some(lag) = lag {
        lag.abort();
    }
    ran
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads `pool`'s consumer info every `interval` into `rewardfleet_consumer_pending` and
/// `rewardfleet_consumer_ack_pending`, until `stop` fires.
async fn export_lag(
    queue: JetStreamQueue,
    pool: String,
    interval: std::time::Duration,
    stop: CancellationToken,
) {
    let Some(m) = rewardfleet_telemetry::metrics() else {
        return;
    };
    let labels = [rewardfleet_telemetry::metrics::label("pool", pool.clone())];
    loop {
        match queue.pool_status(&pool).await {
            Ok(status) => {
                m.consumer_pending.record(status.pending, &labels);
                m.consumer_ack_pending
                    .record(status.ack_pending as u64, &labels);
            }
            Err(e) => tracing::debug!(pool, error = %e.chain(), "cannot read the consumer's lag"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
