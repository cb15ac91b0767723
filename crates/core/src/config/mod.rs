//! The one TOML configuration file: typed, documented, validated with the key path of every problem.
//!
//! Unknown keys are errors. Secrets never live here: only the name of an environment variable or
//! the path of a file that holds them.

mod judge;
mod model;
mod monitor;
pub mod params;
mod profile;
mod tenant;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use judge::{JudgeConfig, SamplingConfig};
pub use model::{Device, Dtype, ModelConfig, ModelKind, Pooling, TruncationSide};
pub use monitor::{MAX_MONITORED_SESSIONS, MonitorConfig, parse_canaries};
pub use params::Params;
pub use profile::{
    ComponentConfig, ComponentKind, ComponentSource, NormalizeKind, OnFailure, PANEL_PARAMS,
    ProfileConfig,
};
pub use tenant::TenantConfig;

use crate::input::Limits;
use crate::job::JobBounds;

/// The whole configuration of a gateway, a worker or an embedded process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// NATS JetStream; absent means embedded mode (one process, in-process queue).
    pub nats: Option<NatsConfig>,
    /// The trainer-facing gateway.
    pub gateway: GatewayConfig,
    /// Input limits, enforced by the gateway with errors that name them.
    pub limits: Limits,
    /// How the gateway cuts batches into jobs.
    pub jobs: JobBounds,
    /// Worker capacity and delivery policy.
    pub worker: WorkerConfig,
    /// Local reward models (TorchScript + tokenizer.json).
    pub model: Vec<ModelConfig>,
    /// Remote LLM judges (OpenAI-compatible chat completions).
    pub judge: Vec<JudgeConfig>,
    /// The judges' verdict cache.
    pub judge_cache: JudgeCacheConfig,
    /// Traces, metrics and their exporters.
    pub telemetry: TelemetryConfig,
    /// Named profiles: how a trainer's candidates are scored.
    pub profile: BTreeMap<String, ProfileConfig>,
    /// Callers of the gateway with their tokens, profiles and quotas; none: the gateway is open.
    pub tenant: Vec<TenantConfig>,
    /// Relative paths in the file (models, rubrics, schemas) are resolved against this directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Where NATS is and how the fleet's streams are laid out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Environment variable holding a token, if the server needs one.
    pub token_env: Option<String>,
    /// A `.creds` file, if the server needs one.
    pub credentials_file: Option<PathBuf>,
    /// The stream that carries jobs (work-queue retention).
    pub jobs_stream: String,
    /// The stream that carries results (limits retention, kept `results_max_age` for resume).
    pub results_stream: String,
    /// Subject prefix: jobs go to `<prefix>.jobs.<pool>`, results to `<prefix>.results.<session>`.
    pub subject_prefix: String,
    /// JetStream dedup window; keep it above `ack_wait × max_deliver`.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long results stay available for a resuming session.
    #[serde(with = "humantime_serde")]
    pub results_max_age: Duration,
    /// Bytes the jobs stream holds at most (queued and unacknowledged jobs); a job past it is
    /// not stored, and the gateway holds the batch back until workers make room.
    pub jobs_max_bytes: u64,
    /// Jobs the jobs stream holds at most; past it, as `jobs_max_bytes`.
    pub jobs_max_messages: u64,
    /// Stream replicas (1 for a single server, 3 in a cluster).
    pub replicas: usize,
    /// How often each worker and gateway renews its heartbeat in the KV buckets
    /// `<subject_prefix>_workers` / `<subject_prefix>_gateways` (what `rewardfleet status`
    /// reads). An entry not renewed for three intervals expires: a dead process leaves the list.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Refuse to talk to a server that does not offer TLS.
    pub tls_required: bool,
    /// PEM CA bundle the server's certificate must chain to (a private CA).
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that verifies clients (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            token_env: None,
            credentials_file: None,
            jobs_stream: "RF_JOBS".into(),
            results_stream: "RF_RESULTS".into(),
            subject_prefix: "rf".into(),
            duplicate_window: Duration::from_secs(600),
            results_max_age: Duration::from_secs(3600),
            jobs_max_bytes: 1 << 30,
            jobs_max_messages: 1_000_000,
            replicas: 1,
            heartbeat_interval: Duration::from_secs(5),
            tls_required: false,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The trainer-facing gRPC gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// Address the gRPC server listens on.
    pub listen: String,
    /// Address of the HTTP endpoints for trainers that speak HTTP (OpenRLHF's `/get_reward`,
    /// slime's remote reward, `/health`); none: no HTTP server.
    pub http_listen: Option<String>,
    /// Window of a session that asks for none: unresolved candidates at most.
    pub max_in_flight: u32,
    /// The largest window a session may ask for.
    pub max_window: u32,
    /// Profile of sessions and batches that name none.
    pub default_profile: Option<String>,
    /// Shutdown: how long open streams may take to finish before they are cut.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Open `Score` streams at most, across connections (a stream counts from its first frame,
    /// before `open`). One more is refused with `RESOURCE_EXHAUSTED` naming this key.
    pub max_sessions: u32,
    /// Candidates this gateway has queued for scoring and not yet seen rewarded, across its
    /// sessions, at most; 0: no limit beyond the windows. Past it a session publishes only while
    /// it holds less than its fair share (this figure ÷ open sessions), so one session's
    /// backlog never delays another's first batch by more than this many candidates.
    pub max_queued_candidates: u32,
    /// Open gRPC connections at most; a connection past it is closed as soon as it is accepted.
    pub max_connections: u32,
    /// HTTP/2 streams at once on one gRPC connection (`SETTINGS_MAX_CONCURRENT_STREAMS`); the
    /// client waits for a stream to end before it opens another.
    pub max_concurrent_streams: u32,
    /// Largest gRPC message (a batch) and HTTP request body accepted, in bytes; a message being
    /// received is held whole, so this bounds what one stream can hold.
    pub max_message_bytes: usize,
    /// A `Score` stream that sends nothing and is owed nothing for this long is ended with
    /// `DEADLINE_EXCEEDED` naming this key (its record stays for a resume).
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// HTTP/2 PING sent on a gRPC connection idle this long; a peer that does not answer within
    /// `http2_keepalive_timeout` is disconnected.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// How long an HTTP/2 keep-alive PING may go unanswered.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// TCP keep-alive probes on trainer connections after this much silence.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// A gRPC connection must complete its TLS handshake (with TLS) and send the HTTP/2
    /// connection preface within this long of being accepted, or it is closed: a client that
    /// connects and stays silent holds no `max_connections` slot for longer.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// PEM certificate chain: with `tls_key`, gRPC and HTTP are served over TLS only (the
    /// files are reloaded when they change; new connections get the new certificate).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate that chains to it (mTLS).
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            http_listen: None,
            max_in_flight: 1024,
            max_window: 65_536,
            default_profile: None,
            drain_timeout: Duration::from_secs(20),
            max_sessions: 1024,
            max_connections: 1024,
            max_concurrent_streams: 128,
            max_message_bytes: 16 * 1024 * 1024,
            max_queued_candidates: 16_384,
            session_idle_timeout: Duration::from_secs(300),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// Worker capacity and JetStream delivery policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    /// The pool this worker pulls from (`<prefix>.jobs.<pool>`); one durable consumer per pool.
    pub pool: String,
    /// Jobs one worker holds at once, at most: a bound on its memory and on the jobs whose ack
    /// timers run while they wait. Within it, a worker takes another job only while every scorer
    /// has room for more work (a model: `admit_tokens` waiting for a batch; a judge: as many
    /// judgements waiting as it may have in flight), so admission follows the scorers' capacity
    /// in tokens and judgements, not a count of jobs.
    pub max_concurrent_jobs: usize,
    /// Unacknowledged jobs across all workers of the pool (JetStream `max_ack_pending`).
    pub max_ack_pending: i64,
    /// How long a job may stay unacknowledged before it is delivered again.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries before a job gets FAILED rewards instead of another try.
    pub max_deliver: i64,
    /// Delay before a job that failed for a passing reason is delivered again.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// Shutdown: how long in-flight jobs may take to finish (keep below Kubernetes' grace period).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Capacity of the in-process job queue in embedded mode.
    pub embedded_queue: usize,
    /// Address of the HTTP probes (`/livez`, `/readyz`); none: no probes.
    pub health_listen: Option<String>,
    /// Reward-hacking monitors over the rewards this worker produces.
    pub monitor: MonitorConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            pool: "default".into(),
            max_concurrent_jobs: 256,
            max_ack_pending: 1024,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            retry_delay: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(25),
            embedded_queue: 256,
            health_listen: None,
            monitor: MonitorConfig::default(),
        }
    }
}

/// Traces and metrics. Off unless an OTLP endpoint is set (here or by the standard
/// `OTEL_EXPORTER_OTLP_*` variables) or a Prometheus address is given; off costs nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector for traces and metrics (`http://host:4317`). The variables
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (and `_TRACES_` / `_METRICS_` ones) take precedence.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of this process's telemetry; `OTEL_SERVICE_NAME` takes precedence.
    /// Default: `rewardfleet-gateway`, `rewardfleet-worker` or `rewardfleet`.
    pub service_name: Option<String>,
    /// Share of traces recorded (parent-based: a trainer's sampled trace is always continued).
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` take precedence.
    pub sampling_ratio: f64,
    /// Address of the Prometheus scrape endpoint (`/metrics`); none: no endpoint.
    pub prometheus_listen: Option<String>,
    /// How often metrics are pushed over OTLP, and JetStream consumer lag is read.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: None,
            sampling_ratio: 1.0,
            prometheus_listen: None,
            metrics_interval: Duration::from_secs(10),
        }
    }
}

/// The judges' verdict cache: content-addressed, so a repeated (judge, prompt, response,
/// reference) skips the call. In memory in embedded mode, a NATS KV bucket shared by the fleet
/// otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JudgeCacheConfig {
    /// Whether verdicts are cached at all.
    pub enabled: bool,
    /// Entries of the in-memory cache (embedded mode), at most.
    pub memory_capacity: usize,
    /// The KV bucket (fleet mode).
    pub kv_bucket: String,
    /// How long a verdict stays.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for JudgeCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            memory_capacity: 100_000,
            kv_bucket: "RF_JUDGE_CACHE".into(),
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// One thing wrong with a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Key path, e.g. `profile.helpful.components[1].weight`.
    pub path: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// The file parsed, but these things are wrong.
    #[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

impl Config {
    /// Reads and validates a configuration file; relative paths inside it are resolved against
    /// the file's directory.
    ///
    /// # Errors
    /// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Syntax`] if it is not valid
    /// TOML of the right shape, [`ConfigError::Invalid`] listing every problem otherwise.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Syntax(m) => ConfigError::Syntax(format!("{}: {m}", path.display())),
            other => other,
        })?;
        config.base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        // The judges' CA files and the NATS TLS files are handed to their clients as they are:
        // resolve them here.
        for judge in &mut config.judge {
            if let Some(file) = judge.ca_file.as_mut()
                && file.is_relative()
            {
                *file = config.base_dir.join(&*file);
            }
        }
        // The worker reads its canaries at start, wherever it runs from.
        if let Some(file) = config.worker.monitor.canaries.as_mut()
            && file.is_relative()
        {
            *file = config.base_dir.join(&*file);
        }
        if let Some(nats) = config.nats.as_mut() {
            for file in [&mut nats.tls_ca, &mut nats.tls_cert, &mut nats.tls_key]
                .into_iter()
                .flatten()
            {
                if file.is_relative() {
                    *file = config.base_dir.join(&*file);
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text and reports every unknown key; does not validate values.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] for malformed TOML or wrong types, [`ConfigError::Invalid`] for
    /// unknown keys.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut unknown = Vec::new();
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let config: Config = serde_ignored::deserialize(de, |path| {
            // An empty key at the top (`"" = 1`) has an empty path: name it as TOML writes it.
            let path = match path.to_string() {
                p if p.is_empty() => "\"\"".to_owned(),
                p => p,
            };
            unknown.push(ConfigProblem::new(
                path,
                "unknown key (see the configuration reference in README.md)",
            ));
        })
        .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        if unknown.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(unknown))
        }
    }

    /// Parses and validates TOML text (paths relative to the working directory).
    ///
    /// # Errors
    /// As [`Config::parse`], then [`ConfigError::Invalid`] with every problem found.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config = Self::parse(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value and cross-reference; returns all problems at once.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Every problem of this configuration (empty when it is valid).
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        if let Some(nats) = &self.nats {
            if nats.url.trim().is_empty() {
                p.push(ConfigProblem::new("nats.url", "must not be empty"));
            }
            for (key, value) in [
                ("nats.jobs_stream", &nats.jobs_stream),
                ("nats.results_stream", &nats.results_stream),
                ("nats.subject_prefix", &nats.subject_prefix),
            ] {
                if !is_nats_token(value) {
                    p.push(ConfigProblem::new(
                        key,
                        format!("{value:?} is not allowed; use letters, digits, '-' and '_'"),
                    ));
                }
            }
            if nats.replicas == 0 || nats.replicas > 5 {
                p.push(ConfigProblem::new("nats.replicas", "must be 1 to 5"));
            }
            match (&nats.tls_cert, &nats.tls_key) {
                (Some(_), None) => p.push(ConfigProblem::new(
                    "nats.tls_key",
                    "tls_cert needs tls_key (the certificate's private key)",
                )),
                (None, Some(_)) => p.push(ConfigProblem::new(
                    "nats.tls_cert",
                    "tls_key needs tls_cert (the client certificate)",
                )),
                _ => {}
            }
            for (key, file) in [
                ("nats.tls_ca", &nats.tls_ca),
                ("nats.tls_cert", &nats.tls_cert),
                ("nats.tls_key", &nats.tls_key),
            ] {
                if let Some(file) = file {
                    let path = self.resolve(file);
                    if let Err(e) = std::fs::File::open(&path) {
                        p.push(ConfigProblem::new(
                            key,
                            format!("cannot read {}: {e}", path.display()),
                        ));
                    }
                }
            }
            if nats.heartbeat_interval < Duration::from_secs(1) {
                p.push(ConfigProblem::new(
                    "nats.heartbeat_interval",
                    "must be at least 1s",
                ));
            }
            if nats.jobs_max_messages == 0 {
                p.push(ConfigProblem::new(
                    "nats.jobs_max_messages",
                    "must be at least 1",
                ));
            }
            // A job is at most `gateway.max_message_bytes` of candidates plus its envelope.
            if nats.jobs_max_bytes < (self.gateway.max_message_bytes as u64).saturating_mul(2) {
                p.push(ConfigProblem::new(
                    "nats.jobs_max_bytes",
                    format!(
                        "must hold at least two of the largest jobs: 2 × gateway.max_message_bytes = {}",
                        (self.gateway.max_message_bytes as u64).saturating_mul(2)
                    ),
                ));
            }
            let horizon = self.worker.ack_wait * self.worker.max_deliver.max(1) as u32;
            if nats.duplicate_window < horizon {
                p.push(ConfigProblem::new(
                    "nats.duplicate_window",
                    format!(
                        "{} is shorter than worker.ack_wait × worker.max_deliver ({}); duplicates could slip through",
                        humantime::format_duration(nats.duplicate_window),
                        humantime::format_duration(horizon)
                    ),
                ));
            }
        }
        let telemetry = &self.telemetry;
        if !(0.0..=1.0).contains(&telemetry.sampling_ratio) {
            p.push(ConfigProblem::new(
                "telemetry.sampling_ratio",
                "must be between 0 and 1",
            ));
        }
        if telemetry.metrics_interval < Duration::from_millis(100) {
            p.push(ConfigProblem::new(
                "telemetry.metrics_interval",
                "must be at least 100ms",
            ));
        }
        if let Some(addr) = &telemetry.prometheus_listen
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(ConfigProblem::new(
                "telemetry.prometheus_listen",
                format!("{addr:?} is not an address (host:port, e.g. 0.0.0.0:9464)"),
            ));
        }
        if let Some(addr) = &self.gateway.http_listen
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(ConfigProblem::new(
                "gateway.http_listen",
                format!("{addr:?} is not an address (host:port, e.g. 0.0.0.0:8080)"),
            ));
        }
        if self.gateway.max_in_flight == 0 {
            p.push(ConfigProblem::new(
                "gateway.max_in_flight",
                "must be at least 1",
            ));
        }
        if self.gateway.max_window < self.gateway.max_in_flight {
            p.push(ConfigProblem::new(
                "gateway.max_window",
                "must be at least gateway.max_in_flight",
            ));
        }
        gateway_bounds_problems(&self.gateway, &mut p);
        self.gateway_tls_problems(&mut p);
        if let Some(name) = &self.gateway.default_profile
            && !self.profile.contains_key(name)
        {
            p.push(ConfigProblem::new(
                "gateway.default_profile",
                format!(
                    "unknown profile {name:?}; known: {}",
                    self.profile_names().join(", ")
                ),
            ));
        }
        limits_problems(&self.limits, "limits", &mut p);
        job_bounds_problems(&self.jobs, "jobs", &self.limits, &mut p);
        if !is_nats_token(&self.worker.pool) {
            p.push(ConfigProblem::new(
                "worker.pool",
                "use letters, digits, '-' and '_'",
            ));
        }
        if self.worker.max_concurrent_jobs == 0 {
            p.push(ConfigProblem::new(
                "worker.max_concurrent_jobs",
                "must be at least 1",
            ));
        }
        if self.worker.max_ack_pending < 1 {
            p.push(ConfigProblem::new(
                "worker.max_ack_pending",
                "must be at least 1",
            ));
        }
        if self.worker.max_deliver < 1 {
            p.push(ConfigProblem::new(
                "worker.max_deliver",
                "must be at least 1",
            ));
        }
        if self.worker.ack_wait < Duration::from_secs(1) {
            p.push(ConfigProblem::new("worker.ack_wait", "must be at least 1s"));
        }
        if self.judge_cache.enabled && self.judge_cache.memory_capacity == 0 {
            p.push(ConfigProblem::new(
                "judge_cache.memory_capacity",
                "must be at least 1",
            ));
        }
        if !is_nats_token(&self.judge_cache.kv_bucket) {
            p.push(ConfigProblem::new(
                "judge_cache.kv_bucket",
                "use letters, digits, '-' and '_'",
            ));
        }
        self.worker.monitor.problems("worker.monitor", self, &mut p);
        if self.worker.embedded_queue == 0 {
            p.push(ConfigProblem::new(
                "worker.embedded_queue",
                "must be at least 1",
            ));
        }

        let mut scorer_names: BTreeMap<&str, String> = BTreeMap::new();
        for (i, model) in self.model.iter().enumerate() {
            let path = format!("model[{i}]");
            model.problems(&path, &self.base_dir, &mut p);
            if let Some(first) = scorer_names.insert(&model.name, path.clone()) {
                p.push(ConfigProblem::new(
                    format!("{path}.name"),
                    format!("{:?} is already the name of {first}", model.name),
                ));
            }
        }
        for (i, judge) in self.judge.iter().enumerate() {
            let path = format!("judge[{i}]");
            judge.problems(&path, &mut p);
            if let Some(file) = &judge.ca_file
                && let Err(e) = std::fs::File::open(self.resolve(file))
            {
                p.push(ConfigProblem::new(
                    format!("{path}.ca_file"),
                    format!("cannot read {}: {e}", self.resolve(file).display()),
                ));
            }
            if let Some(first) = scorer_names.insert(&judge.name, path.clone()) {
                p.push(ConfigProblem::new(
                    format!("{path}.name"),
                    format!("{:?} is already the name of {first}", judge.name),
                ));
            }
        }
        if self.profile.is_empty() {
            p.push(ConfigProblem::new(
                "profile",
                "no profile is defined; add at least one [profile.NAME] table",
            ));
        }
        for (name, profile) in &self.profile {
            profile.problems(&format!("profile.{name}"), self, &mut p);
        }
        let profiles = self.profile_names();
        let mut tenant_names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut token_sources: BTreeMap<String, usize> = BTreeMap::new();
        let mut subjects: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, tenant) in self.tenant.iter().enumerate() {
            tenant.problems(&format!("tenant[{i}]"), &profiles, &mut p);
            if let Some(subject) = &tenant.tls_subject {
                if self.gateway.tls_client_ca.is_none() {
                    p.push(ConfigProblem::new(
                        format!("tenant[{i}].tls_subject"),
                        "needs gateway.tls_client_ca: only verified client certificates name a tenant",
                    ));
                }
                if let Some(first) = subjects.insert(subject, i) {
                    p.push(ConfigProblem::new(
                        format!("tenant[{i}].tls_subject"),
                        format!("the same subject as tenant[{first}]; each tenant needs its own"),
                    ));
                }
            }
            // Two tenants reading one source would share a token (the gateway also refuses two
            // equal tokens at start, wherever they come from).
            let source = match (&tenant.token_env, &tenant.token_file) {
                (Some(var), _) => Some(("token_env", format!("env:{var}"))),
                (None, Some(file)) => {
                    let path = self.resolve(file);
                    if let Err(e) = std::fs::File::open(&path) {
                        p.push(ConfigProblem::new(
                            format!("tenant[{i}].token_file"),
                            format!("cannot read {}: {e}", path.display()),
                        ));
                    }
                    Some(("token_file", format!("file:{}", path.display())))
                }
                (None, None) => None,
            };
            if let Some((key, source)) = source
                && let Some(first) = token_sources.insert(source, i)
            {
                p.push(ConfigProblem::new(
                    format!("tenant[{i}].{key}"),
                    format!(
                        "the same token source as tenant[{first}]; each tenant needs its own token"
                    ),
                ));
            }
            if let Some(first) = tenant_names.insert(&tenant.name, i) {
                p.push(ConfigProblem::new(
                    format!("tenant[{i}].name"),
                    format!("{:?} is already the name of tenant[{first}]", tenant.name),
                ));
            }
        }
        p
    }

    /// Problems of the gateway's TLS files: a certificate needs its key (and the reverse), a
    /// client CA needs a certificate, and each file must be readable.
    fn gateway_tls_problems(&self, p: &mut Vec<ConfigProblem>) {
        let g = &self.gateway;
        match (&g.tls_cert, &g.tls_key) {
            (Some(_), None) => p.push(ConfigProblem::new(
                "gateway.tls_key",
                "tls_cert needs tls_key (the certificate's private key)",
            )),
            (None, Some(_)) => p.push(ConfigProblem::new(
                "gateway.tls_cert",
                "tls_key needs tls_cert (the certificate chain)",
            )),
            _ => {}
        }
        if g.tls_client_ca.is_some() && g.tls_cert.is_none() {
            p.push(ConfigProblem::new(
                "gateway.tls_client_ca",
                "client certificates need TLS: set tls_cert and tls_key",
            ));
        }
        for (key, file) in [
            ("gateway.tls_cert", &g.tls_cert),
            ("gateway.tls_key", &g.tls_key),
            ("gateway.tls_client_ca", &g.tls_client_ca),
        ] {
            if let Some(file) = file {
                let path = self.resolve(file);
                if let Err(e) = std::fs::File::open(&path) {
                    p.push(ConfigProblem::new(
                        key,
                        format!("cannot read {}: {e}", path.display()),
                    ));
                }
            }
        }
    }

    /// Names of the profiles, sorted.
    pub fn profile_names(&self) -> Vec<String> {
        self.profile.keys().cloned().collect()
    }

    /// Resolves a path from the file against the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    /// Whether the fleet runs in one process (no `[nats]`).
    pub fn is_embedded(&self) -> bool {
        self.nats.is_none()
    }

    /// What kind of scorer `name` is: a `[[model]]` or a `[[judge]]` of this configuration.
    pub fn scorer_kind(&self, name: &str) -> Option<ComponentKind> {
        if self.model.iter().any(|m| m.name == name) {
            Some(ComponentKind::Model)
        } else if self.judge.iter().any(|j| j.name == name) {
            Some(ComponentKind::Judge)
        } else {
            None
        }
    }

    /// What scores `component`: a rule, or the model or judge it names. A component that names
    /// a scorer this configuration does not declare counts as a judge (as `ListProfiles` shows
    /// it); [`Config::problems`] reports it.
    pub fn component_kind(&self, component: &ComponentConfig) -> ComponentKind {
        match component.source() {
            Some(ComponentSource::Scorer(name)) => {
                self.scorer_kind(name).unwrap_or(ComponentKind::Judge)
            }
            Some(ComponentSource::Rule(_)) | None => ComponentKind::Rule,
        }
    }
}

/// Problems of the gateway's overload bounds: each must admit something.
fn gateway_bounds_problems(g: &GatewayConfig, p: &mut Vec<ConfigProblem>) {
    for (key, value) in [
        ("gateway.max_sessions", g.max_sessions),
        ("gateway.max_connections", g.max_connections),
        ("gateway.max_concurrent_streams", g.max_concurrent_streams),
    ] {
        if value == 0 {
            p.push(ConfigProblem::new(key, "must be at least 1"));
        }
    }
    if g.max_message_bytes < 4096 || g.max_message_bytes > 1 << 30 {
        p.push(ConfigProblem::new(
            "gateway.max_message_bytes",
            "must be between 4 KiB and 1 GiB",
        ));
    }
    for (key, value) in [
        ("gateway.session_idle_timeout", g.session_idle_timeout),
        (
            "gateway.http2_keepalive_interval",
            g.http2_keepalive_interval,
        ),
        ("gateway.http2_keepalive_timeout", g.http2_keepalive_timeout),
        ("gateway.tcp_keepalive", g.tcp_keepalive),
        ("gateway.handshake_timeout", g.handshake_timeout),
    ] {
        if value < Duration::from_secs(1) {
            p.push(ConfigProblem::new(key, "must be at least 1s"));
        }
    }
}

/// Problems of `[limits]`: every limit must be at least 1.
fn limits_problems(limits: &Limits, path: &str, p: &mut Vec<ConfigProblem>) {
    for (key, value) in [
        ("max_batch_candidates", limits.max_batch_candidates),
        ("max_group_size", limits.max_group_size),
        ("max_response_bytes", limits.max_response_bytes),
        ("max_prompt_messages", limits.max_prompt_messages),
        ("max_prompt_bytes", limits.max_prompt_bytes),
        ("max_reference_bytes", limits.max_reference_bytes),
        ("max_id_bytes", limits.max_id_bytes),
    ] {
        if value == 0 {
            p.push(ConfigProblem::new(
                format!("{path}.{key}"),
                "must be at least 1",
            ));
        }
    }
}

/// Problems of `[jobs]`: a whole group must fit in one job, and a job in one NATS message.
fn job_bounds_problems(
    bounds: &JobBounds,
    path: &str,
    limits: &Limits,
    p: &mut Vec<ConfigProblem>,
) {
    if bounds.max_candidates < limits.max_group_size {
        p.push(ConfigProblem::new(
            format!("{path}.max_candidates"),
            format!(
                "{} is less than limits.max_group_size ({}); a whole group must fit in one job",
                bounds.max_candidates, limits.max_group_size
            ),
        ));
    }
    if bounds.max_bytes < 4096 || bounds.max_bytes > 8 * 1024 * 1024 {
        p.push(ConfigProblem::new(
            format!("{path}.max_bytes"),
            "must be between 4 KiB and 8 MiB (and below the server's max_payload)",
        ));
    }
}

fn is_nats_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests;
