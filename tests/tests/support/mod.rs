//! Shared set-up of the end-to-end tests: a real nats-server, a gateway serving gRPC on an
//! ephemeral port, workers, and candidates whose rewards the test knows in advance.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rewardfleet_core::config::Config;
use rewardfleet_core::{Candidate, ChatMessage, Reward};
use rewardfleet_fleet::{GatewayProcess, Secrets, WorkerOptions};
use rewardfleet_gateway::Gateway;
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_proto::v1::{ScoreRequest, score_response};
use rewardfleet_queue::{JetStreamQueue, Queue};
use rewardfleet_testkit::NatsServer;
use rewardfleet_worker::WorkerStats;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub mod deploy;
pub mod grafana;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod raw;

/// The profile every test scores with: rules whose values the test computes itself.
pub const PROFILES: &str = r#"
[profile.e2e]
components = [
  { rule = "exact_match", weight = 2.0 },
  { rule = "regex", pattern = "^answer", weight = 1.0 },
  { rule = "max_chars", limit = 40, gate = true },
]
floor = -1.0

[profile.ranked]
components = [{ rule = "exact_match" }, { rule = "regex", pattern = "answer" }]
normalize = "group_zscore"
"#;

/// A configuration for the fleet on `nats_url` (embedded when `None`).
pub fn config_text(nats_url: Option<&str>, extra: &str) -> String {
    let nats = match nats_url {
        Some(url) => format!("[nats]\nurl = \"{url}\"\n\n"),
        None => String::new(),
    };
    format!(
        "{nats}[gateway]\nlisten = \"127.0.0.1:0\"\ndefault_profile = \"e2e\"\ndrain_timeout = \"5s\"\n\n[worker]\nack_wait = \"5s\"\nmax_concurrent_jobs = 8\n\n{extra}\n{PROFILES}"
    )
}

pub fn config(nats_url: Option<&str>, extra: &str) -> Config {
    Config::from_toml(&config_text(nats_url, extra)).unwrap()
}

/// Candidate `i` of group `i / 8`: one in three answers right, one in three wrong, one in
/// three too long for the gate.
pub fn candidate(i: usize) -> Candidate {
    let reference = format!("answer {}", i % 7);
    let response = match i % 3 {
        0 => reference.clone(),
        1 => format!("answer {}", (i % 7) + 1),
        _ => format!("{reference} {}", "and then some more words ".repeat(2)),
    };
    Candidate {
        id: format!("c{i:05}"),
        group_id: format!("g{}", i / 8),
        prompt: vec![ChatMessage {
            role: "user".into(),
            content: format!("question {i}"),
        }],
        response,
        reference: Some(reference),
        labels: HashMap::new(),
    }
}

/// `n` candidates for a judge's `reference` method that no verdict cache has seen (`tag` keeps
/// runs and phases apart): "what is i plus one?", answered right, in groups of 8.
pub fn judged_candidates(tag: &str, n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            id: format!("{tag}-{i:04}"),
            group_id: format!("{tag}-g{}", i / 8),
            prompt: vec![ChatMessage {
                role: "user".into(),
                content: format!("{tag}: what is {i} plus one?"),
            }],
            response: format!("It is {}.", i + 1),
            reference: Some(format!("{}", i + 1)),
            labels: HashMap::new(),
        })
        .collect()
}

/// The reward the `e2e` profile must give candidate `i`.
pub fn expected(i: usize) -> f64 {
    match i % 3 {
        0 => 2.0 + 1.0,
        1 => 1.0,
        _ => -1.0,
    }
}

/// A gateway serving gRPC on an ephemeral port over JetStream, and workers in this process,
/// each assembled by `rewardfleet-fleet` as the binary assembles them (models and judges too).
pub struct Fleet {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    pub config: Config,
    shutdown: CancellationToken,
    workers: Vec<(CancellationToken, JoinHandle<()>, Arc<WorkerStats>)>,
    server: JoinHandle<()>,
}

impl Fleet {
    pub async fn start(nats: &NatsServer, workers: usize, extra: &str) -> Self {
        let config = config(Some(&nats.url()), extra);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let process = GatewayProcess::build(&config, &Secrets::default(), &shutdown)
            .await
            .unwrap();
        let gateway = process.gateway().clone();
        let server = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { process.serve(listener, shutdown).await.unwrap() }
        });
        let mut fleet = Self {
            addr,
            gateway,
            config,
            shutdown,
            workers: Vec::new(),
            server,
        };
        for _ in 0..workers {
            fleet.add_worker().await;
        }
        fleet
    }

    /// Starts a worker and waits until it pulls.
    pub async fn add_worker(&mut self) {
        let stats = Arc::new(WorkerStats::default());
        let options = WorkerOptions {
            name: format!("worker-{}", self.workers.len()),
            health: None,
            stats: Arc::clone(&stats),
        };
        let stop = CancellationToken::new();
        let handle = tokio::spawn({
            let stop = stop.clone();
            let config = self.config.clone();
            async move {
                rewardfleet_fleet::run_worker(&config, options, stop, &Secrets::default())
                    .await
                    .unwrap();
            }
        });
        while !stats.ready.load(std::sync::atomic::Ordering::Relaxed) {
            assert!(!handle.is_finished(), "the worker stopped before it pulled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.workers.push((stop, handle, stats));
    }

    pub fn worker_stats(&self) -> Vec<Arc<WorkerStats>> {
        self.workers.iter().map(|(_, _, s)| Arc::clone(s)).collect()
    }

    pub async fn client(&self) -> RewardServiceClient<Channel> {
        rewardfleet_client::connect(&format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// A plain channel to the gateway (for raw calls and other services).
    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for (stop, handle, _) in self.workers {
            stop.cancel();
            let _ = handle.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
    }
}

pub async fn connect(config: &Config) -> Arc<dyn Queue> {
    let nats = config.nats.as_ref().unwrap();
    Arc::new(JetStreamQueue::connect(nats, &config.worker).await.unwrap())
}

/// The requests of a session that sends `candidates` in batches of `batch` candidates.
pub fn session_requests(
    session_id: &str,
    profile: &str,
    window: u32,
    candidates: &[Candidate],
    batch: usize,
) -> Vec<ScoreRequest> {
    rewardfleet_client::session_requests(
        session_id,
        profile,
        window,
        candidates.chunks(batch).map(<[Candidate]>::to_vec),
    )
}

/// Runs a session to its end and returns every reward received (duplicates included).
pub async fn score_all(
    client: &mut RewardServiceClient<Channel>,
    requests: Vec<ScoreRequest>,
) -> Result<Vec<Reward>, tonic::Status> {
    let mut responses = client
        .score(futures::stream::iter(requests))
        .await?
        .into_inner();
    let mut rewards = Vec::new();
    let mut closed = false;
    while let Some(response) = responses.next().await {
        match response?.kind {
            Some(score_response::Kind::Reward(r)) => rewards.push(r),
            Some(score_response::Kind::Closed(_)) => closed = true,
            _ => {}
        }
    }
    assert!(closed, "the session ended without `closed`");
    Ok(rewards)
}

/// The `rewardfleet` binary, built by `cargo build` next to the test executables.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("rewardfleet");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p rewardfleet-cli` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Writes candidates `0..n` (see [`candidate`]) as a JSONL input file at `path`.
pub fn write_input(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let c = candidate(i);
            serde_json::json!({"id": c.id, "group_id": c.group_id, "prompt": "q", "response": c.response, "reference": c.reference}).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// The rewards of an output file by candidate id; every line OK and no id twice.
pub fn read_rewards(path: &Path) -> HashMap<String, f64> {
    let mut by_id = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["status"], "OK", "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        assert!(
            by_id.insert(id, v["reward"].as_f64().unwrap()).is_none(),
            "duplicate line"
        );
    }
    by_id
}

/// Scores `candidates` with embedded `rewardfleet score --profile <profile> --config <config>`
/// (the input written as JSONL under `dir`) and returns each output line by candidate id.
pub fn score_embedded(
    config: &Path,
    profile: &str,
    candidates: &[Candidate],
    dir: &Path,
) -> HashMap<String, serde_json::Value> {
    let input = dir.join(format!("{profile}.in.jsonl"));
    let lines: Vec<String> = candidates
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.id, "group_id": c.group_id,
                "prompt": c.prompt.first().map_or("", |m| m.content.as_str()),
                "response": c.response, "reference": c.reference,
            })
            .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = dir.join(format!("{profile}.out.jsonl"));
    let status = std::process::Command::new(binary())
        .args(["score", "--profile", profile, "--config"])
        .arg(config)
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success(), "rewardfleet score exited with {status}");
    std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["id"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// `GET path` over HTTP/1.1 on `addr` (a health endpoint): the status code, `None` when nothing
/// answers.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}
