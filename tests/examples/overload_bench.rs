//! The 10× overload benchmark: a real nats-server, the fake judge with a fixed latency (so the
//! fleet's capacity is known), a `rewardfleet gateway` process and two `rewardfleet worker`
//! processes; many `Score` sessions and `ScoreBatch` callers offer ten times what the fleet can
//! score, for a set time. Every second it records the resident set (`VmRSS`) of the gateway and
//! of each worker. It checks that the peak stays under a bound computed from the configuration,
//! that the RSS at the end is within 10 % of the RSS after the first 20 s, that every caller is
//! answered (a reward or a refusal) within its deadline, and that no accepted candidate is lost;
//! it exits non-zero when a check fails. Figures and method: `docs/benchmarks-overload.md`.
//!
//! ```sh
//! cargo build -p rewardfleet-cli
//! cargo run -p rewardfleet-e2e --example overload_bench -- --seconds 120
//! ```
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rewardfleet_core::{Candidate, ChatMessage};
use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Latency};
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_proto::v1::{ScoreBatchRequest, score_response};
use rewardfleet_testkit::{NatsServer, free_port};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// The fake judge's latency and the fleet-wide concurrency the workers share: the fleet scores
/// at most `JUDGE_CONCURRENCY / JUDGE_LATENCY` candidates a second (one judge call each).
const JUDGE_LATENCY: Duration = Duration::from_millis(100);
const JUDGE_CONCURRENCY: usize = 8;

/// `[gateway]` bounds of the run (what the memory bound is computed from).
const MAX_SESSIONS: usize = 32;
const MAX_CONNECTIONS: usize = 24;
const MAX_STREAMS: usize = 64;
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
const MAX_QUEUED: usize = 256;
const MAX_WINDOW: usize = 64;
/// `[nats]` bounds of the jobs stream.
const JOBS_MAX_MESSAGES: usize = 512;
const JOBS_MAX_BYTES: usize = 4 * 1024 * 1024;
/// `[worker]` bounds.
const WORKERS: usize = 2;
const MAX_CONCURRENT_JOBS: usize = 4;

/// Trainers with a `Score` session each, more than `MAX_SESSIONS`: some are refused at any time.
const SESSION_CALLERS: usize = 48;
/// Connections the session callers share, and the `ScoreBatch` callers'.
const SESSION_CHANNELS: usize = 8;
const BATCH_CHANNELS: usize = 4;
/// A session's window, its batches, and how many batches it sends before it closes.
const WINDOW: u32 = 64;
const BATCH: usize = 16;
const BATCHES_PER_SESSION: usize = 8;
/// Candidates of one `ScoreBatch` call (one group) and its deadline (`grpc-timeout`).
const CALL_CANDIDATES: usize = 8;
const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// The deadline of a session's `open`: opened or refused within it.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);
/// How long a session may take from `close` to `closed`: its window at the fleet's capacity,
/// shared with every other session, with room to spare.
const CLOSE_DEADLINE: Duration = Duration::from_secs(120);
/// The share of the offered candidates that comes through `ScoreBatch` calls.
const BATCH_SHARE: f64 = 0.2;
/// Offered load ÷ capacity.
const OVERLOAD: f64 = 10.0;

fn config_text(nats: &str, port: u16, judge: &str) -> String {
    format!(
        r#"
[nats]
url = "{nats}"
heartbeat_interval = "1s"
jobs_max_messages = {JOBS_MAX_MESSAGES}
jobs_max_bytes = {JOBS_MAX_BYTES}

[gateway]
listen = "127.0.0.1:{port}"
default_profile = "judged"
max_in_flight = {MAX_WINDOW}
max_window = {MAX_WINDOW}
max_sessions = {MAX_SESSIONS}
max_connections = {MAX_CONNECTIONS}
max_concurrent_streams = {MAX_STREAMS}
max_message_bytes = {MAX_MESSAGE_BYTES}
max_queued_candidates = {MAX_QUEUED}
session_idle_timeout = "30s"

[worker]
max_concurrent_jobs = {MAX_CONCURRENT_JOBS}
ack_wait = "30s"

[[judge]]
name = "judge"
base_url = "{judge}"
model = "fake-judge"
max_concurrency = {JUDGE_CONCURRENCY}
requests_per_second = 10000
timeout = "10s"
deadline = "120s"
queue_capacity = 4096

[profile.judged]
components = [{{ scorer = "judge", method = "reference" }}]
"#
    )
}

/// Command-line options: `--seconds N` (overload phase), `--calibrate-seconds N`.
struct Options {
    seconds: u64,
    calibrate_seconds: u64,
}

impl Options {
    fn parse() -> Self {
        let mut options = Self {
            seconds: 120,
            calibrate_seconds: 15,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let value = || args.get(i + 1).and_then(|v| v.parse().ok());
            match args[i].as_str() {
                "--seconds" => options.seconds = value().expect("--seconds N"),
                "--calibrate-seconds" => {
                    options.calibrate_seconds = value().expect("--calibrate-seconds N");
                }
                other => {
                    panic!("unknown argument {other:?} (use --seconds N, --calibrate-seconds N)")
                }
            }
            i += 2;
        }
        assert!(options.seconds > 20, "--seconds must be over 20");
        options
    }
}

/// The `rewardfleet` binary of the same build (`target/<profile>/rewardfleet`).
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("rewardfleet");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p rewardfleet-cli` (same profile)",
        bin.display()
    );
    bin
}

/// A `rewardfleet` process; its log goes to a file; killed when dropped.
struct Process {
    child: Child,
    name: String,
}

impl Process {
    fn start(name: &str, args: &[&str], config: &Path, log: &Path) -> Self {
        let mut child = Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(config)
            // RF_BENCH_LOG (a tracing filter) keeps more of the processes' logs.
            .env(
                "RUST_LOG",
                std::env::var("RF_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut log = std::fs::File::create(log).unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let ready = if args[0] == "gateway" {
            "listening on"
        } else {
            "pulling"
        };
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if line.contains(ready) {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{name} did not become ready"));
        Self {
            child,
            name: name.into(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident set of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`); 0 once it is gone.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What the callers saw, in candidates unless named otherwise.
#[derive(Default)]
struct Tally {
    offered: AtomicU64,
    sent: AtomicU64,
    accepted: AtomicU64,
    rewarded: AtomicU64,
    /// Rewards whose status is not OK (the judge failed them).
    failed_rewards: AtomicU64,
    lost: AtomicU64,
    /// Session calls and `ScoreBatch` calls made, and those answered (opened, rewarded or
    /// refused) within their deadline.
    calls: AtomicU64,
    answered: AtomicU64,
    sessions_opened: AtomicU64,
    sessions_closed: AtomicU64,
    batch_calls_rewarded: AtomicU64,
    /// Refused calls and the candidates they carried (or that arrived while the caller waited
    /// out `retry-after`), by limit name.
    refused: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Calls not answered within their deadline, or answered with something else than a reward
    /// or a refusal: what happened.
    failures: Mutex<BTreeMap<String, u64>>,
    /// The slowest answer of a `ScoreBatch` call.
    slowest_batch_call_ms: AtomicU64,
}

impl Tally {
    fn refuse(&self, limit: &str, candidates: u64) {
        let mut refused = self.refused.lock().unwrap();
        let entry = refused.entry(limit.to_owned()).or_default();
        entry.0 += 1;
        entry.1 += candidates;
    }

    fn fail(&self, what: String) {
        *self.failures.lock().unwrap().entry(what).or_default() += 1;
    }

    fn failures(&self) -> u64 {
        self.failures.lock().unwrap().values().sum()
    }
}

/// The limit a `RESOURCE_EXHAUSTED` status names (`… limit <key> reached …`), and its
/// `retry-after` hint.
fn refusal(status: &tonic::Status) -> Option<(String, Duration)> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let limit = status
        .message()
        .split_once("limit ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("unnamed")
        .trim_end_matches([',', ';'])
        .to_owned();
    let retry_after = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Some((limit, Duration::from_secs(retry_after)))
}

/// A candidate no cache has seen: the judge is called for each.
fn candidate(id: String, group: &str) -> Candidate {
    Candidate {
        prompt: vec![ChatMessage {
            role: "user".into(),
            content: format!("{id}: what is one plus two?"),
        }],
        response: "It is 3.".into(),
        reference: Some("3".into()),
        group_id: group.into(),
        id,
        labels: HashMap::new(),
    }
}

/// A trainer with a `Score` session: opens one (waiting out `retry-after` when refused), sends a
/// batch of `BATCH` candidates each time one arrives (every `period`) if the session's stream
/// takes it, closes after `BATCHES_PER_SESSION` batches, checks that every accepted candidate
/// was rewarded, and opens the next, until `stop`.
async fn session_caller(
    phase: &'static str,
    caller: usize,
    mut client: RewardServiceClient<Channel>,
    period: Duration,
    stop: CancellationToken,
    tally: Arc<Tally>,
) {
    let started = Instant::now();
    let mut batches_offered = 0u64;
    let offer_until_now = |offered: &mut u64| {
        let due = (started.elapsed().as_secs_f64() / period.as_secs_f64()) as u64;
        let new = due.saturating_sub(*offered);
        *offered = due;
        tally
            .offered
            .fetch_add(new * BATCH as u64, Ordering::Relaxed);
        new
    };
    let mut round = 0;
    while !stop.is_cancelled() {
        round += 1;
        // Unique across phases too: a closed session's id and candidate ids used again within
        // `nats.duplicate_window` would be deduplicated by the queue, never scored.
        let session_id = format!("{phase}-c{caller}-r{round}");
        let (tx, rx) = mpsc::channel(1);
        tx.send(rewardfleet_client::open(&session_id, "judged", WINDOW))
            .await
            .unwrap();
        tally.calls.fetch_add(1, Ordering::Relaxed);
        let asked = Instant::now();
        let opened = tokio::time::timeout(OPEN_DEADLINE, async {
            let mut responses = client.score(ReceiverStream::new(rx)).await?.into_inner();
            match responses.message().await? {
                Some(r) if matches!(r.kind, Some(score_response::Kind::Opened(_))) => Ok(responses),
                other => Err(tonic::Status::internal(format!(
                    "expected `opened`, got {other:?}"
                ))),
            }
        })
        .await;
        let mut responses = match opened {
            Err(_) => {
                tally.fail("Score open: no answer within its deadline".into());
                continue;
            }
            Ok(Err(status)) => {
                if let Some((limit, retry_after)) = refusal(&status) {
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(retry_after) => {}
                    }
                    let arrived = offer_until_now(&mut batches_offered);
                    tally.refuse(&limit, arrived * BATCH as u64);
                } else {
                    tally.fail(format!(
                        "Score open: {:?} {}",
                        status.code(),
                        status.message()
                    ));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
            Ok(Ok(responses)) => responses,
        };
        assert!(asked.elapsed() <= OPEN_DEADLINE);
        tally.answered.fetch_add(1, Ordering::Relaxed);
        tally.sessions_opened.fetch_add(1, Ordering::Relaxed);

        // The ids of each batch sent, in stream order (`BatchAccepted.batch_index`).
        let sent: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        // Candidates accepted and rewarded in this session, by id.
        let ledger: Arc<Mutex<(HashSet<String>, HashSet<String>)>> = Arc::default();
        let reader = tokio::spawn({
            let sent = Arc::clone(&sent);
            let ledger = Arc::clone(&ledger);
            let tally = Arc::clone(&tally);
            async move {
                loop {
                    match responses.message().await {
                        Ok(Some(response)) => match response.kind {
                            Some(score_response::Kind::Accepted(a)) => {
                                let ids = sent.lock().unwrap()[a.batch_index as usize].clone();
                                tally
                                    .accepted
                                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
                                ledger.lock().unwrap().0.extend(ids);
                            }
                            Some(score_response::Kind::Reward(r)) => {
                                if r.status != 1 {
                                    tally.failed_rewards.fetch_add(1, Ordering::Relaxed);
                                }
                                if ledger.lock().unwrap().1.insert(r.candidate_id) {
                                    tally.rewarded.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Some(score_response::Kind::Closed(_)) => {
                                tally.sessions_closed.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        },
                        Ok(None) => break,
                        Err(status) => {
                            tally.fail(format!(
                                "Score session ended: {:?} {}",
                                status.code(),
                                status.message()
                            ));
                            break;
                        }
                    }
                }
            }
        });

        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut batches = 0;
        while batches < BATCHES_PER_SESSION {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            offer_until_now(&mut batches_offered);
            let index = sent.lock().unwrap().len();
            let group = format!("{session_id}-b{index}");
            let candidates: Vec<Candidate> = (0..BATCH)
                .map(|k| candidate(format!("{group}-{k}"), &format!("{group}-g{}", k / 8)))
                .collect();
            let ids = candidates.iter().map(|c| c.id.clone()).collect();
            sent.lock().unwrap().push(ids);
            // A full stream (the window has no room, flow control holds the batch) leaves the
            // batch with the trainer: held back, not sent.
            if tx
                .try_send(rewardfleet_client::batch(candidates, ""))
                .is_ok()
            {
                batches += 1;
                tally.sent.fetch_add(BATCH as u64, Ordering::Relaxed);
            } else {
                sent.lock().unwrap().pop();
            }
        }
        let _ = tx.send(rewardfleet_client::close()).await;
        drop(tx);
        if tokio::time::timeout(CLOSE_DEADLINE, reader).await.is_err() {
            tally.fail(format!(
                "Score session: not closed within {} s of `close`",
                CLOSE_DEADLINE.as_secs()
            ));
        }
        let (accepted, rewarded) = &*ledger.lock().unwrap();
        let lost = accepted.difference(rewarded).count() as u64;
        tally.lost.fetch_add(lost, Ordering::Relaxed);
        offer_until_now(&mut batches_offered);
    }
}

/// `ScoreBatch` callers arriving every `period` (open loop: whatever the gateway does), each
/// with a deadline of `CALL_DEADLINE` (`grpc-timeout`), on `clients` in turn, until `stop`.
async fn batch_callers(
    clients: Vec<RewardServiceClient<Channel>>,
    period: Duration,
    stop: CancellationToken,
    tally: Arc<Tally>,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut calls = tokio::task::JoinSet::new();
    for n in 0.. {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let mut client = clients[n % clients.len()].clone();
        let tally = Arc::clone(&tally);
        calls.spawn(async move {
            let group = format!("call{n}");
            let candidates = (0..CALL_CANDIDATES)
                .map(|k| candidate(format!("{group}-{k}"), &group))
                .collect();
            let mut request = tonic::Request::new(ScoreBatchRequest {
                profile: "judged".into(),
                candidates,
            });
            request.set_timeout(CALL_DEADLINE);
            tally
                .offered
                .fetch_add(CALL_CANDIDATES as u64, Ordering::Relaxed);
            tally
                .sent
                .fetch_add(CALL_CANDIDATES as u64, Ordering::Relaxed);
            tally.calls.fetch_add(1, Ordering::Relaxed);
            let asked = Instant::now();
            // The client waits a little past the deadline for the gateway's answer: one that
            // has not come by then is a hang.
            let answer = tokio::time::timeout(
                CALL_DEADLINE + Duration::from_secs(2),
                client.score_batch(request),
            )
            .await;
            let took = asked.elapsed();
            tally
                .slowest_batch_call_ms
                .fetch_max(took.as_millis() as u64, Ordering::Relaxed);
            match answer {
                Err(_) => tally.fail("ScoreBatch: no answer by its deadline (client side)".into()),
                Ok(Ok(response)) if took <= CALL_DEADLINE => {
                    let rewards = response.into_inner().rewards;
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                    tally.batch_calls_rewarded.fetch_add(1, Ordering::Relaxed);
                    tally
                        .accepted
                        .fetch_add(CALL_CANDIDATES as u64, Ordering::Relaxed);
                    let ids: HashSet<_> = rewards.iter().map(|r| r.candidate_id.clone()).collect();
                    tally
                        .rewarded
                        .fetch_add(ids.len() as u64, Ordering::Relaxed);
                    tally
                        .lost
                        .fetch_add((CALL_CANDIDATES - ids.len()) as u64, Ordering::Relaxed);
                    let failed = rewards.iter().filter(|r| r.status != 1).count();
                    tally
                        .failed_rewards
                        .fetch_add(failed as u64, Ordering::Relaxed);
                }
                Ok(Ok(_)) => tally.fail("ScoreBatch: rewards after its deadline".into()),
                Ok(Err(status)) => match refusal(&status) {
                    Some((limit, _)) if took <= CALL_DEADLINE => {
                        tally.answered.fetch_add(1, Ordering::Relaxed);
                        tally.refuse(&limit, CALL_CANDIDATES as u64);
                    }
                    _ => tally.fail(format!(
                        "ScoreBatch: {:?} {} (after {:.1} s)",
                        status.code(),
                        status.message(),
                        took.as_secs_f64()
                    )),
                },
            }
        });
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

/// Starts the callers of one phase and returns their tasks.
async fn start_load(
    phase: &'static str,
    url: &str,
    candidates_per_second: f64,
    batch_share: f64,
    stop: &CancellationToken,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut session_clients = Vec::new();
    for _ in 0..SESSION_CHANNELS {
        session_clients.push(rewardfleet_client::connect(url).await.unwrap());
    }
    let per_caller = candidates_per_second * (1.0 - batch_share) / SESSION_CALLERS as f64;
    let period = Duration::from_secs_f64(BATCH as f64 / per_caller);
    for caller in 0..SESSION_CALLERS {
        tasks.push(tokio::spawn(session_caller(
            phase,
            caller,
            session_clients[caller % SESSION_CHANNELS].clone(),
            period,
            stop.clone(),
            Arc::clone(tally),
        )));
    }
    if batch_share > 0.0 {
        let mut clients = Vec::new();
        for _ in 0..BATCH_CHANNELS {
            clients.push(rewardfleet_client::connect(url).await.unwrap());
        }
        let calls_per_second = candidates_per_second * batch_share / CALL_CANDIDATES as f64;
        tasks.push(tokio::spawn(batch_callers(
            clients,
            Duration::from_secs_f64(1.0 / calls_per_second),
            stop.clone(),
            Arc::clone(tally),
        )));
    }
    tasks
}

/// The memory bound of each process, in KiB, from its RSS at rest and the configuration; the
/// terms, for the report.
fn gateway_bound(base_kib: u64) -> (u64, Vec<(String, u64)>) {
    const KIB: u64 = 1024;
    // A candidate held by the gateway: the request message, its job (JSON), the ids in the
    // session's sets and ledger; generously 4 KiB for the few hundred bytes of one.
    let candidate = 4 * KIB;
    // What a session holds besides its candidates: the task, its response channel (64
    // responses), its results subscription, its remembered ids (4 × window + a batch).
    let session = 256 * KIB + (4 * MAX_WINDOW as u64 + BATCH as u64) * 256;
    // Each stream may hold one message being received, at most max_message_bytes.
    let streams = (MAX_SESSIONS as u64 + MAX_CONNECTIONS as u64) * MAX_MESSAGE_BYTES as u64;
    // hyper/h2 buffers per connection (flow-control windows, codec buffers).
    let connection = 2 * 1024 * KIB;
    let terms = vec![
        ("RSS at rest".into(), base_kib * KIB),
        (
            format!("max_sessions {MAX_SESSIONS} × (session state 256 KiB + remembered ids)"),
            MAX_SESSIONS as u64 * session,
        ),
        (
            format!(
                "(max_queued_candidates {MAX_QUEUED} + max_sessions × window {MAX_WINDOW}) × 4 KiB per candidate"
            ),
            (MAX_QUEUED as u64 + (MAX_SESSIONS * MAX_WINDOW) as u64) * candidate,
        ),
        (
            format!(
                "(max_sessions + max_connections {MAX_CONNECTIONS}) × max_message_bytes {MAX_MESSAGE_BYTES}"
            ),
            streams,
        ),
        (
            "max_connections × 2 MiB of HTTP/2 buffers".into(),
            MAX_CONNECTIONS as u64 * connection,
        ),
        ("allocator and runtime slack 32 MiB".into(), 32 * 1024 * KIB),
    ];
    let total = terms.iter().map(|t| t.1).sum::<u64>() / KIB;
    (total, terms)
}

fn worker_bound(base_kib: u64) -> (u64, Vec<(String, u64)>) {
    const KIB: u64 = 1024;
    let terms = vec![
        ("RSS at rest".into(), base_kib * KIB),
        (
            format!(
                "max_concurrent_jobs {MAX_CONCURRENT_JOBS} × 2 × max_message_bytes (a job and its result)"
            ),
            (MAX_CONCURRENT_JOBS * 2 * MAX_MESSAGE_BYTES) as u64,
        ),
        (
            format!("judge max_concurrency {JUDGE_CONCURRENCY} × 1 MiB per call in flight"),
            JUDGE_CONCURRENCY as u64 * 1024 * KIB,
        ),
        ("allocator and runtime slack 32 MiB".into(), 32 * 1024 * KIB),
    ];
    let total = terms.iter().map(|t| t.1).sum::<u64>() / KIB;
    (total, terms)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let options = Options::parse();
    let nats = NatsServer::start().await.unwrap();
    let judge = FakeJudge::start(FakeJudgeConfig {
        latency: Latency::Fixed(JUDGE_LATENCY),
        ..FakeJudgeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, config_text(&nats.url(), port, &judge.base_url())).unwrap();
    let out_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join("overload-bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut processes = Vec::new();
    for w in 0..WORKERS {
        let name = format!("worker-{}", w + 1);
        let log = out_dir.join(format!("{name}.log"));
        processes.push(Process::start(&name, &["worker"], &config, &log));
    }
    let gateway = Process::start(
        "gateway",
        &["gateway"],
        &config,
        &out_dir.join("gateway.log"),
    );
    processes.insert(0, gateway);
    let url = format!("http://127.0.0.1:{port}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_rest: Vec<u64> = processes.iter().map(|p| rss_kib(p.pid())).collect();

    // Capacity: as many sessions as the fleet can take, sending as fast as allowed.
    let judge_limit = JUDGE_CONCURRENCY as f64 / JUDGE_LATENCY.as_secs_f64();
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let tasks = start_load("calibrate", &url, 100.0 * judge_limit, 0.0, &stop, &tally).await;
    let warm = Duration::from_secs(options.calibrate_seconds / 3);
    tokio::time::sleep(warm).await;
    let from = tally.rewarded.load(Ordering::Relaxed);
    let measured_for = Duration::from_secs(options.calibrate_seconds) - warm;
    tokio::time::sleep(measured_for).await;
    let capacity =
        (tally.rewarded.load(Ordering::Relaxed) - from) as f64 / measured_for.as_secs_f64();
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "capacity: {capacity:.1} candidates/s measured over {} s ({judge_limit:.0}/s the judge allows: \
         max_concurrency {JUDGE_CONCURRENCY} / latency {} ms)",
        measured_for.as_secs(),
        JUDGE_LATENCY.as_millis()
    );

    // The overload phase, with the RSS of every process sampled each second.
    let offered_rate = OVERLOAD * capacity;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let csv_path = out_dir.join("rss.csv");
    let pids: Vec<u32> = processes.iter().map(Process::pid).collect();
    let names: Vec<String> = processes.iter().map(|p| p.name.clone()).collect();
    let sampler = tokio::spawn({
        let stop = stop.clone();
        let mut csv = std::fs::File::create(&csv_path).unwrap();
        let header: Vec<String> = names.iter().map(|n| format!("{n}_rss_kib")).collect();
        writeln!(csv, "second,{}", header.join(",")).unwrap();
        let pids = pids.clone();
        async move {
            let mut series: Vec<Vec<u64>> = Vec::new();
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            for second in 0u64.. {
                ticker.tick().await;
                let sample: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
                let cells: Vec<String> = sample.iter().map(u64::to_string).collect();
                writeln!(csv, "{second},{}", cells.join(",")).unwrap();
                series.push(sample);
                if stop.is_cancelled() {
                    break;
                }
            }
            series
        }
    });
    let tasks = start_load("overload", &url, offered_rate, BATCH_SHARE, &stop, &tally).await;
    tokio::time::sleep(Duration::from_secs(options.seconds)).await;
    let rewarded_during = tally.rewarded.load(Ordering::Relaxed);
    stop.cancel();
    let series = sampler.await.unwrap();
    let drain = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let drained_in = drain.elapsed();
    let after_drain: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();

    // The report.
    let offered = tally.offered.load(Ordering::Relaxed);
    let sent = tally.sent.load(Ordering::Relaxed);
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let rewarded = tally.rewarded.load(Ordering::Relaxed);
    let lost = tally.lost.load(Ordering::Relaxed);
    let calls = tally.calls.load(Ordering::Relaxed);
    let answered = tally.answered.load(Ordering::Relaxed);
    let failures = tally.failures();
    println!(
        "\noffered {offered_rate:.0} candidates/s ({OVERLOAD}× capacity) for {} s: {SESSION_CALLERS} \
         Score callers (window {WINDOW}, batches of {BATCH}, {BATCHES_PER_SESSION} batches a session) \
         and ScoreBatch callers ({CALL_CANDIDATES} candidates, deadline {} s) with {:.0} % of it; \
         the callers stopped offering and drained in {:.1} s",
        options.seconds,
        CALL_DEADLINE.as_secs(),
        BATCH_SHARE * 100.0,
        drained_in.as_secs_f64()
    );
    println!("\n| candidates | count |\n|---|---:|");
    println!("| offered | {offered} |");
    println!("| sent (the rest held back by flow control or a refused session) | {sent} |");
    println!("| accepted | {accepted} |");
    println!(
        "| rewarded | {rewarded} ({:.1}/s while offered; {} not OK) |",
        rewarded_during as f64 / options.seconds as f64,
        tally.failed_rewards.load(Ordering::Relaxed)
    );
    for (limit, (n, c)) in tally.refused.lock().unwrap().iter() {
        println!("| refused: {limit} ({n} calls) | {c} |");
    }
    println!("| lost (accepted, never rewarded) | {lost} |");
    println!(
        "\n{calls} calls ({} sessions opened, {} closed; {} ScoreBatch calls rewarded, slowest {:.2} s): \
         {answered} answered within their deadline, {failures} not",
        tally.sessions_opened.load(Ordering::Relaxed),
        tally.sessions_closed.load(Ordering::Relaxed),
        tally.batch_calls_rewarded.load(Ordering::Relaxed),
        tally.slowest_batch_call_ms.load(Ordering::Relaxed) as f64 / 1000.0
    );
    for (what, n) in tally.failures.lock().unwrap().iter() {
        println!("  {n} × {what}");
    }

    println!(
        "\n| process | at rest MiB | after 20 s | peak | end | after drain | bound | peak < bound | |end − 20 s| ≤ 10 % |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|");
    let mut ok = true;
    let mut bounds = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let column: Vec<u64> = series.iter().map(|s| s[i]).collect();
        let at20 = column[20.min(column.len() - 1)];
        let peak = column.iter().copied().max().unwrap_or(0);
        // The last sample taken while the load was still offered.
        let end = column[(options.seconds as usize).min(column.len() - 1)];
        let (bound, terms) = if i == 0 {
            gateway_bound(at_rest[i])
        } else {
            worker_bound(at_rest[i])
        };
        bounds.push((name.clone(), bound, terms));
        let under = peak < bound;
        let flat = end.abs_diff(at20) * 10 <= at20;
        ok &= under && flat;
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} ({:+.1} %) |",
            mib(at_rest[i]),
            mib(at20),
            mib(peak),
            mib(end),
            mib(after_drain[i]),
            mib(bound),
            if under { "yes" } else { "NO" },
            if flat { "yes" } else { "NO" },
            (end as f64 - at20 as f64) * 100.0 / at20 as f64
        );
    }
    for (name, bound, terms) in &bounds {
        println!("\nbound of {name}: {} MiB =", mib(*bound));
        for (what, bytes) in terms {
            println!("  {:>8} MiB  {what}", mib(bytes / 1024));
        }
    }
    println!("\nper-second RSS: {}", csv_path.display());

    if failures > 0 || lost > 0 {
        // What JetStream holds, to tell jobs not scored from results not delivered.
        let jsz = out_dir.join("jsz.json");
        let _ = Command::new("curl")
            .args(["-s", "-o"])
            .arg(&jsz)
            .arg(format!(
                "{}/jsz?streams=true&consumers=true",
                nats.monitor_url()
            ))
            .status();
        println!("JetStream state: {}", jsz.display());
    }
    let answered_all = failures == 0 && answered == calls;
    println!(
        "\nchecks: peak under the bound and flat: {}; every caller answered within its deadline: {}; \
         nothing lost: {}; judge: {} calls, at most {} at once",
        if ok { "pass" } else { "FAIL" },
        if answered_all { "pass" } else { "FAIL" },
        if lost == 0 { "pass" } else { "FAIL" },
        judge.calls(),
        judge.max_concurrent()
    );
    drop(processes);
    if !(ok && answered_all && lost == 0) {
        std::process::exit(1);
    }
}
