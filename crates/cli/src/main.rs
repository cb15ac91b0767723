//! The rewardfleet binary: `score`, `gateway`, `worker`, `check`, `status`, `bench`, `arena`.

mod arena;
mod bench;
mod jsonl;
mod status;
mod summary;
mod telemetry;

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rewardfleet_core::config::{Config, ConfigError};
use rewardfleet_fleet::{Embedded, GatewayProcess, Secrets, WorkerOptions};
use tokio_util::sync::CancellationToken;

/// A distributed fleet of workers that scores candidate responses for reinforcement learning.
#[derive(Parser)]
#[command(name = "rewardfleet", version, about)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax); `RUST_LOG` works too. Default: `warn` for
    /// `score` and `check`, `info` for the fleet's processes.
    #[arg(long, global = true, env = "RUST_LOG")]
    log: Option<String>,
    /// Log lines as text or as one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "RF_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scores a JSONL file: in this process (embedded mode), or through a gateway.
    Score(ScoreArgs),
    /// Runs the trainer-facing gRPC gateway (with an embedded worker when the config has no [nats]).
    Gateway(ConfigArg),
    /// Runs a worker: pulls jobs from NATS JetStream and scores them.
    Worker(ConfigArg),
    /// Validates a configuration and says exactly what is wrong and where.
    Check(ConfigArg),
    /// Compares the responses of two or more models with the profile's pairwise judge (win
    /// rates, Elo, Bradley–Terry ratings), or measures their factuality (`--metric factuality`).
    Arena(arena::ArenaArgs),
    /// Shows a fleet on NATS: each pool's queued jobs, the live workers and gateways, recent
    /// throughput and failure rate.
    Status(status::StatusArgs),
    /// Load-tests a running gateway (gRPC Score streams, ScoreBatch or HTTP /get_reward):
    /// candidates/s, tokens/s, latency percentiles and statuses, at fixed concurrency or rate.
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// The configuration file; default: ./rewardfleet.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Profile for every candidate; default: the configuration's default profile.
    #[arg(long, short)]
    profile: Option<String>,
    /// A gateway URL (http://host:port); without it the file is scored in this process.
    #[arg(long)]
    gateway: Option<String>,
    /// Output file; default: standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Candidates per batch sent to the gateway (whole groups).
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Unresolved candidates at most (the session window); 0: the gateway's default.
    #[arg(long, default_value_t = 0)]
    window: u32,
    /// The JSONL input file.
    input: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Gateway(_) | Command::Worker(_) => "warn,rewardfleet=info",
        Command::Arena(_) => "warn",
        Command::Score(_) | Command::Check(_) | Command::Status(_) | Command::Bench(_) => "warn",
    };
    let logging = Logging {
        directives: cli.log.unwrap_or_else(|| default_log.to_owned()),
        format: cli.log_format,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Score(args) => score(args, &logging).await,
            Command::Arena(args) => arena::run(args, &logging).await,
            Command::Gateway(args) => gateway(&args.config, &logging).await,
            Command::Worker(args) => worker(&args.config, &logging).await,
            Command::Check(args) => {
                logging.logs_only();
                check(&args.config)
            }
            Command::Status(args) => {
                logging.logs_only();
                status::run(args).await
            }
            Command::Bench(args) => {
                logging.logs_only();
                bench::run(args).await
            }
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter and format from the command line, applied once the command knows its config.
struct Logging {
    directives: String,
    format: telemetry::LogFormat,
}

impl Logging {
    fn filter(&self) -> tracing_subscriber::EnvFilter {
        tracing_subscriber::EnvFilter::try_new(&self.directives)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
    }

    fn logs_only(&self) {
        telemetry::logs_only(self.filter(), self.format);
    }

    /// Logs, and the traces and metrics that `config` asks for.
    async fn observe(
        &self,
        config: &Config,
        service: &str,
    ) -> anyhow::Result<telemetry::Telemetry> {
        telemetry::init(self.filter(), self.format, &config.telemetry, service).await
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(ConfigError::Invalid(problems)) => {
            eprintln!("{}: {} problem(s):", path.display(), problems.len());
            for p in problems {
                eprintln!("  - {p}");
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let problems = rewardfleet_scorers::check(&config);
    if problems.is_empty() {
        let mode = if config.is_embedded() {
            "embedded"
        } else {
            "NATS JetStream"
        };
        println!(
            "{}: ok ({mode} mode; profiles: {})",
            path.display(),
            config.profile_names().join(", ")
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}: {} problem(s):", path.display(), problems.len());
        for p in problems {
            eprintln!("  - {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

async fn score(args: ScoreArgs, logging: &Logging) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let input = std::fs::File::open(&args.input)
        .with_context(|| format!("cannot open {}", args.input.display()))?;
    let mut candidates = Vec::new();
    let mut outputs: Vec<Option<jsonl::OutputLine>> = Vec::new();
    let mut position = std::collections::HashMap::new();
    for (i, line) in BufReader::new(input).split(b'\n').enumerate() {
        let line = line.with_context(|| format!("cannot read {}", args.input.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match jsonl::parse_line(i + 1, &line) {
            Ok(c) if position.contains_key(&c.id) => {
                let e = jsonl::LineError {
                    line: i + 1,
                    id: Some(c.id.clone()),
                    message: format!("duplicate id {:?}; ids must be unique in a file", c.id),
                };
                outputs.push(Some(jsonl::failed_line(&e)));
            }
            Ok(c) => {
                position.insert(c.id.clone(), outputs.len());
                outputs.push(None);
                candidates.push(c);
            }
            Err(e) => outputs.push(Some(jsonl::failed_line(&e))),
        }
    }
    let total = candidates.len();

    let session = rewardfleet_client::Session::new(format!("cli-{:016x}", rand::random::<u64>()))
        .profile(args.profile.clone().unwrap_or_default())
        .window(args.window)
        .batches(rewardfleet_client::batches(candidates, args.batch_size));
    let mut embedded = None;
    let progress = indicatif::ProgressBar::new(total as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let on_reward = |reward: rewardfleet_core::Reward| {
        if let Some(&i) = position.get(&reward.candidate_id) {
            outputs[i] = Some(jsonl::output(&reward));
        }
        progress.inc(1);
    };
    let mut telemetry = None;
    let ran = match &args.gateway {
        Some(url) => {
            logging.logs_only();
            let mut client = rewardfleet_client::connect(url).await?;
            session.run(&mut client, on_reward).await
        }
        None => {
            let path = args
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from("rewardfleet.toml"));
            if !path.exists() {
                bail!(
                    "no configuration: pass --config FILE (examples/fleet.toml is one), or --gateway URL"
                );
            }
            let mut config = load_config(&path)?;
            config.nats = None;
            telemetry = Some(logging.observe(&config, "rewardfleet").await?);
            let started = Embedded::start(&config, &secrets(&config)?).await?;
            let ran = session.run(&mut started.transport(), on_reward).await;
            embedded = Some(started);
            ran
        }
    };
    ran?;
    progress.finish_and_clear();

    // Every candidate must have its reward: one without is written as FAILED and fails the run.
    let missing: Vec<String> = position
        .iter()
        .filter(|&(_, &i)| outputs[i].is_none())
        .map(|(id, _)| id.clone())
        .collect();
    for id in &missing {
        outputs[position[id]] = Some(jsonl::missing_reward(id));
    }

    let mut summary = summary::Summary::default();
    let sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = BufWriter::new(sink);
    for line in outputs.into_iter().flatten() {
        summary.add(&line);
        serde_json::to_writer(&mut sink, &line)?;
        sink.write_all(b"\n")?;
    }
    sink.flush()?;
    summary.finish(started.elapsed());
    if let Some(embedded) = &embedded {
        if let Some(judges) = &embedded.judges {
            summary.judges(judges.usage());
        }
        summary.models(embedded.models.usage());
    }
    eprint!("{summary}");
    if let Some(embedded) = embedded {
        embedded.stop().await;
    }
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    if !missing.is_empty() {
        let mut named = missing.clone();
        named.sort();
        named.truncate(10);
        bail!(
            "{} candidate(s) got no reward although the session closed: {}{}",
            missing.len(),
            named.join(", "),
            if missing.len() > named.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn gateway(path: &Path, logging: &Logging) -> anyhow::Result<ExitCode> {
    let config = load_config(path)?;
    let telemetry = logging.observe(&config, "rewardfleet-gateway").await?;
    let shutdown = shutdown_signal();
    let listener = tokio::net::TcpListener::bind(&config.gateway.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.gateway.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        if config.tenant.is_empty() {
            tracing::warn!(
                %addr,
                "the gateway listens beyond loopback without authentication: anyone who reaches \
                 this address can score (and spend judge budget); add [[tenant]] entries with tokens"
            );
        }
        if config.gateway.tls_cert.is_none() {
            tracing::warn!(
                %addr,
                "the gateway listens beyond loopback without TLS: tokens and data cross the \
                 network in clear; set gateway.tls_cert and gateway.tls_key"
            );
        }
    }
    let mut secrets = secrets(&config)?;
    secrets.tenant_tokens = tenant_tokens(&config)?;
    let process = GatewayProcess::build(&config, &secrets, &shutdown)
        .await?
        .with_name(format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into()),
            std::process::id()
        ));
    tracing::info!(%addr, embedded = config.is_embedded(), "gateway listening");
    println!("rewardfleet gateway listening on {addr}");
    let served = process.serve(listener, shutdown).await;
    telemetry.shutdown().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

async fn worker(path: &Path, logging: &Logging) -> anyhow::Result<ExitCode> {
    let config = load_config(path)?;
    if config.is_embedded() {
        bail!(
            "{}: a worker needs [nats]; without it, `rewardfleet gateway` runs the worker in-process",
            path.display()
        );
    }
    let telemetry = logging.observe(&config, "rewardfleet-worker").await?;
    let shutdown = shutdown_signal();
    let health = match &config.worker.health_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("worker.health_listen: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let name =
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("worker-{}", std::process::id()));
    let stats = std::sync::Arc::new(rewardfleet_worker::WorkerStats::default());
    let ready = {
        let stats = std::sync::Arc::clone(&stats);
        let pool = config.worker.pool.clone();
        tokio::spawn(async move {
            // Pulling once the queue is reachable and the models are loaded and warm.
            while !stats.ready.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            println!("rewardfleet worker pulling from pool {pool:?}");
        })
    };
    let options = WorkerOptions {
        name,
        health,
        stats,
    };
    let ran = rewardfleet_fleet::run_worker(&config, options, shutdown, &secrets(&config)?).await;
    ready.abort();
    telemetry.shutdown().await;
    ran?;
    Ok(ExitCode::SUCCESS)
}

/// The secrets the configuration names: the NATS token's variable and each judge's key
/// (variable or file). Read here, in the binary, and handed to the fleet as a value.
fn secrets(config: &Config) -> anyhow::Result<Secrets> {
    let nats_token = match config.nats.as_ref().and_then(|n| n.token_env.as_ref()) {
        Some(var) => {
            Some(std::env::var(var).with_context(|| format!("nats.token_env: ${var} is not set"))?)
        }
        None => None,
    };
    let mut judge_api_keys = std::collections::HashMap::new();
    for judge in &config.judge {
        let env = |var: &str| std::env::var(var).ok();
        if let Some(key) = rewardfleet_judge::read_api_key(judge, &config.base_dir, env)? {
            judge_api_keys.insert(judge.name.clone(), key);
        }
    }
    Ok(Secrets {
        nats_token,
        judge_api_keys,
        tenant_tokens: Default::default(),
    })
}

/// Each `[[tenant]]`'s bearer token (from `token_env` or `token_file`), by tenant name; two
/// tenants with the same token are refused, naming both.
fn tenant_tokens(config: &Config) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut tokens = std::collections::HashMap::new();
    let mut owners: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, tenant) in config.tenant.iter().enumerate() {
        let (key, token) = match (&tenant.token_env, &tenant.token_file) {
            (Some(var), _) => (
                format!("tenant[{i}].token_env"),
                std::env::var(var)
                    .with_context(|| format!("tenant[{i}].token_env: ${var} is not set"))?,
            ),
            (None, Some(file)) => {
                let path = config.resolve(file);
                let token = std::fs::read_to_string(&path).with_context(|| {
                    format!("tenant[{i}].token_file: cannot read {}", path.display())
                })?;
                (format!("tenant[{i}].token_file"), token)
            }
            // Named by its client certificate alone.
            (None, None) if tenant.tls_subject.is_some() => continue,
            (None, None) => bail!(
                "tenant[{i}].token_env: a tenant needs an identity: token_env, token_file or tls_subject"
            ),
        };
        let token = token.trim().to_owned();
        if token.is_empty() {
            bail!("{key}: the token is empty");
        }
        if let Some(first) = owners.insert(token.clone(), i) {
            bail!("{key}: tenant[{i}] has the same token as tenant[{first}]; give each its own");
        }
        tokens.insert(tenant.name.clone(), token);
    }
    Ok(tokens)
}

/// Fires on SIGTERM or Ctrl-C.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = tokio::signal::ctrl_c().await;
                        fire.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal: draining");
        fire.cancel();
    });
    token
}
