//! Benchmark of a local reward model, measured three ways in one run on the same model and the
//! same candidates, for two traffic shapes:
//!
//! - (a) raw forward passes on pre-tokenised, pre-batched tensors (sorted by length, no padding to
//!   speak of): this machine's limit;
//! - (b) the scorer through its batcher, in-process;
//! - (c) the whole fleet: `rewardfleet gateway` → nats-server (JetStream) → `rewardfleet worker`,
//!   real processes, the trainer's side a gRPC `Score` session.
//!
//! ```text
//! cargo build --release -p rewardfleet-cli --examples
//! target/release/examples/model_bench --size 20m|100m --dtype f32|bf16|f16[,...] [--device cpu|cuda:N]
//!     [--threads N[,N...]] [--max-batch-tokens N[,N...]] [--groups N] [--singles N]
//! ```
//!
//! Several `--dtype`, `--threads` or `--max-batch-tokens` values make a sweep: every combination
//! is measured in the same run, and a last table compares each one's fleet throughput with the
//! first's. `--threads 0` and `--max-batch-tokens 0` (the defaults) are what a worker chooses.
//!
//! The model (a BERT-like reward model with random weights and the MiniLM tokenizer) is built once
//! by `scripts/make_test_models.py bert` into `target/bench-models/`. Results: docs/benchmarks-torch.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use futures::StreamExt;
use rewardfleet_core::Candidate;
use rewardfleet_core::config::{ModelConfig, ModelKind, TruncationSide};
use rewardfleet_proto::v1::reward::Status;
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_proto::v1::score_response;
use rewardfleet_testkit::{NatsServer, free_port, test_models};
use rewardfleet_torch::bench::{self, BenchRow, Throughput, Traffic};

/// What the command line asks for.
struct Args {
    size: String,
    /// dtypes to try.
    dtypes: Vec<String>,
    device: String,
    /// Intra-op threads to try (0: the default for this machine).
    threads: Vec<usize>,
    /// `max_batch_tokens` values to try.
    budgets: Vec<usize>,
    groups: usize,
    singles: usize,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut args = Self {
            size: "20m".into(),
            dtypes: vec!["f32".into()],
            device: "cpu".into(),
            threads: vec![0],
            budgets: vec![0],
            groups: 8,
            singles: 512,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let number = |text: &str| {
                text.parse::<usize>()
                    .with_context(|| format!("{flag}: {text:?} is not a number"))
            };
            let numbers = || {
                value
                    .split(',')
                    .map(number)
                    .collect::<anyhow::Result<Vec<_>>>()
            };
            match flag.as_str() {
                "--size" => args.size = value.clone(),
                "--dtype" => args.dtypes = value.split(',').map(str::to_owned).collect(),
                "--device" => args.device = value.clone(),
                "--threads" => args.threads = numbers()?,
                "--max-batch-tokens" => args.budgets = numbers()?,
                "--groups" => args.groups = number(&value)?,
                "--singles" => args.singles = number(&value)?,
                other => {
                    bail!("unknown flag {other}; see the doc comment of examples/model_bench.rs")
                }
            }
        }
        Ok(args)
    }
}

/// Builds the benchmark model of `size` once (under the target directory); returns its directory.
fn model_dir(size: &str) -> PathBuf {
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_owned()))
        .unwrap_or_else(std::env::temp_dir);
    test_models("bert", &["--size", size], &target.join("bench-models"))
}

/// A `rewardfleet` process of the fleet; killed when dropped.
struct Process(Child);

impl Process {
    /// Starts `rewardfleet <sub> --config <config>` and waits for its line containing `ready`.
    fn start(sub: &str, config: &Path, ready: &str) -> anyhow::Result<Self> {
        use std::io::{BufRead, BufReader};
        let binary = std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("rewardfleet"))
            .context("no directory above the example")?;
        if !binary.is_file() {
            bail!(
                "{} is missing: cargo build --release -p rewardfleet-cli --examples",
                binary.display()
            );
        }
        let mut child = Command::new(&binary)
            .args([sub, "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut process = Self(child);
        for line in BufReader::new(stdout).lines() {
            if line?.contains(ready) {
                return Ok(process);
            }
        }
        let status = process.0.wait()?;
        bail!("rewardfleet {sub} exited before it was ready ({status})")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fleet's configuration: one worker with the model, a profile that is the model's logit.
fn fleet_config(nats_url: &str, listen: &str, model: &ModelConfig) -> String {
    format!(
        r#"[nats]
url = "{nats_url}"

[gateway]
listen = "{listen}"
default_profile = "rm"
max_window = 4096

[worker]
max_concurrent_jobs = 256
max_ack_pending = 1024

[limits]
max_batch_candidates = 1024

[[model]]
name = "rm"
path = "{path}"
tokenizer = "{tokenizer}"
kind = "scalar"
template = "{{response}}"
dtype = "{dtype}"
device = "{device}"
threads = {threads}
max_length = {max_length}
truncation_side = "right"
max_batch_tokens = {budget}

[profile.rm]
components = [{{ scorer = "rm" }}]
"#,
        path = model.path.display(),
        tokenizer = model.tokenizer.display(),
        dtype = model.dtype,
        device = model.device,
        threads = model.threads,
        max_length = model.max_length,
        budget = model.batch_token_budget(),
    )
}

/// One `Score` session: sends `groups` as batches (each group its own `group_id`) with a window
/// of `window` candidates and waits for every reward.
async fn session(
    client: &mut RewardServiceClient<tonic::transport::Channel>,
    groups: &[Vec<Candidate>],
    window: u32,
    tag: &str,
) -> anyhow::Result<Throughput> {
    let batches: Vec<Vec<Candidate>> = groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            group
                .iter()
                .map(|c| Candidate {
                    id: format!("{tag}-{}", c.id),
                    group_id: format!("{tag}-{g}"),
                    ..c.clone()
                })
                .collect()
        })
        .collect();
    let count = batches.iter().map(Vec::len).sum::<usize>();
    let requests = rewardfleet_client::session_requests("", "rm", window, batches);
    let start = Instant::now();
    let mut responses = client
        .score(futures::stream::iter(requests))
        .await?
        .into_inner();
    let mut rewards = 0;
    while let Some(response) = responses.next().await {
        match response?.kind {
            Some(score_response::Kind::Reward(r)) => {
                if r.status() != Status::Ok {
                    bail!("candidate {} was not scored: {}", r.candidate_id, r.error);
                }
                rewards += 1;
            }
            Some(score_response::Kind::Closed(_)) => break,
            _ => {}
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if rewards != count {
        bail!("{rewards} rewards for {count} candidates");
    }
    Ok(Throughput {
        candidates: count,
        seconds,
        ..Throughput::default()
    })
}

/// (c): the whole fleet on each traffic shape.
async fn through_fleet(model: &ModelConfig, shapes: &[Traffic]) -> anyhow::Result<Vec<Throughput>> {
    let nats = NatsServer::start().await.context("starting nats-server")?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, fleet_config(&nats.url(), &listen, model))?;
    let _worker = Process::start("worker", &config, "pulling from pool")?;
    let _gateway = Process::start("gateway", &config, "listening on")?;
    let mut client = rewardfleet_client::connect(&format!("http://{listen}")).await?;
    let mut out = Vec::new();
    for (i, traffic) in shapes.iter().enumerate() {
        let window = u32::try_from(traffic.candidates_in_flight())?;
        // Untimed: the first groups warm the path (connections, consumers, allocator).
        session(
            &mut client,
            &traffic.groups[..traffic.in_flight.min(traffic.groups.len())],
            window,
            &format!("warm{i}"),
        )
        .await?;
        out.push(session(&mut client, &traffic.groups, window, &format!("run{i}")).await?);
    }
    Ok(out)
}

/// The measurements of one configuration.
struct Measured {
    dtype: String,
    threads: usize,
    budget: usize,
    rows: Vec<BenchRow>,
    fleet: Vec<Throughput>,
}

fn table(measured: &[Measured]) -> String {
    let mut out = String::from(
        "| model | threads | max_batch_tokens | traffic | cands | (a) raw cand/s | (b) batcher cand/s | (c) fleet cand/s | (b) padding eff. | b/a | c/a |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in measured {
        for (r, c) in m.rows.iter().zip(&m.fleet) {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.2} | {:.2} |\n",
                r.model,
                m.threads,
                m.budget,
                r.traffic,
                r.raw.candidates,
                r.raw.per_second(),
                r.batched.per_second(),
                c.per_second(),
                100.0 * r.batched.tokens as f64 / r.batched.padded_tokens.max(1) as f64,
                r.ratio(),
                c.per_second() / r.raw.per_second().max(1e-9),
            ));
        }
    }
    out
}

/// For a sweep: each configuration's fleet throughput over the first configuration's.
fn sweep_table(measured: &[Measured]) -> String {
    let Some(first) = measured.first() else {
        return String::new();
    };
    let mut out = format!(
        "\n(c) relative to {} with {} thread(s), max_batch_tokens {}:\n\n| dtype | threads | max_batch_tokens | traffic | (c) fleet cand/s | (c) / first (c) |\n|---|---|---|---|---|---|\n",
        first.dtype, first.threads, first.budget
    );
    for m in measured {
        for ((r, c), base) in m.rows.iter().zip(&m.fleet).zip(&first.fleet) {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} | {:.2} |\n",
                m.dtype,
                m.threads,
                m.budget,
                r.traffic,
                c.per_second(),
                c.per_second() / base.per_second().max(1e-9),
            ));
        }
    }
    out
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = model_dir(&args.size);
    let shapes = [
        Traffic::fixed_batches(args.groups, 64, 256),
        Traffic::rl_singles(args.singles, 64, 42),
    ];
    let mut measured = Vec::new();
    let mut configs = Vec::new();
    for dtype in &args.dtypes {
        for &threads in &args.threads {
            for &budget in &args.budgets {
                configs.push((dtype, threads, budget));
            }
        }
    }
    for (dtype, threads, budget) in configs {
        let model = ModelConfig {
            name: format!("bert-{}", args.size),
            path: dir.join(format!("bert-{}.pt", args.size)),
            tokenizer: dir.join("tokenizer.json"),
            kind: ModelKind::Scalar,
            template: "{response}".into(),
            max_length: 2048,
            truncation_side: TruncationSide::Right,
            dtype: dtype.parse().map_err(anyhow::Error::msg)?,
            device: args.device.parse().map_err(anyhow::Error::msg)?,
            threads: if threads == 0 {
                rewardfleet_torch::default_threads(1)
            } else {
                threads
            },
            max_batch_tokens: budget,
            ..ModelConfig::default()
        };
        println!(
            "model bert-{} {} on {}, {} intra-op thread(s), max_batch_tokens {}, max_wait {:?}, {} cores, native CPU bf16: {}",
            args.size,
            dtype,
            args.device,
            model.threads,
            model.batch_token_budget(),
            model.max_wait,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            rewardfleet_torch::cpu_has_native_bf16(),
        );
        // (a) and (b) in this process; the model is dropped before the fleet starts.
        let rows = bench::run(&model, Path::new("/"), &shapes).await?;
        let fleet = through_fleet(&model, &shapes).await?;
        let one = Measured {
            dtype: dtype.clone(),
            threads: model.threads,
            budget: model.batch_token_budget(),
            rows,
            fleet,
        };
        print!("{}", table(std::slice::from_ref(&one)));
        measured.push(one);
    }
    if measured.len() > 1 {
        print!("\nAll configurations:\n\n{}", table(&measured));
        print!("{}", sweep_table(&measured));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
