//! The delivery guarantees with real processes under a mixed profile (rules, the tiny TorchScript
//! reward model, the fake judge failing 20 % of its calls): a worker `kill -9`'d every 5 s (a
//! replacement started each time, so the fleet keeps two), the nats-server killed and restarted
//! twice, the gateway killed and restarted once — every candidate still gets exactly one reward,
//! the right one, `OK`.
//!
//! CI runs [`CI_CANDIDATES`] candidates. `RF_CHAOS_CANDIDATES=100000` runs the long version whose
//! figures are in docs/chaos.md; either prints the same summary table (`-- --nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rewardfleet_client::{Responses, Session, Transport};
use rewardfleet_core::Reward;
use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Fault};
use rewardfleet_proto::v1::reward::Status as RewardStatus;
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_proto::v1::{ScoreRequest, score_response};
use rewardfleet_testkit::{NatsServer, free_port, test_models};
use support::process::Process;
use support::prometheus::http_get;
use support::{candidate, score_embedded};
use tonic::transport::Channel;

/// Candidates of the CI run; `RF_CHAOS_CANDIDATES` overrides it.
const CI_CANDIDATES: usize = 4_000;

/// A worker is killed this often, from the first second of scoring to the last.
const WORKER_KILL_EVERY: Duration = Duration::from_secs(5);

/// Share of the judge's calls answered with HTTP 500.
const JUDGE_FAULT_RATE: f64 = 0.2;

/// Workers the fleet keeps (a killed one is replaced at once).
const WORKERS: usize = 2;

/// The rewards of candidate `i` depend only on `i % CLASSES` (see [`support::candidate`]).
const CLASSES: usize = 21;

/// The once-per-run faults, each when the workers have scored this share of the candidates.
/// Early enough that a short run, whose replacement workers take a good part of it to start,
/// still sees all three before its last reward.
const SCHEDULE: [(f64, Event); 3] = [
    (0.15, Event::RestartNats),
    (0.35, Event::RestartGateway),
    (0.55, Event::RestartNats),
];

#[derive(Debug, Clone, Copy)]
enum Event {
    RestartNats,
    RestartGateway,
}

fn candidates_to_run() -> usize {
    std::env::var("RF_CHAOS_CANDIDATES")
        .ok()
        .map_or(CI_CANDIDATES, |n| {
            n.replace('_', "")
                .parse()
                .expect("RF_CHAOS_CANDIDATES is a number")
        })
}

/// The fleet's configuration. `nats` absent: embedded (the reference run). Retries are sized so
/// that a judgement fails all its attempts with probability 0.2^6 and a job then still has nine
/// more deliveries: every candidate must end `OK`. With 20 % faults, retries are a quarter of
/// first attempts: the retry budget allows half.
fn config_text(
    models: &Path,
    nats: Option<&str>,
    listen: &str,
    metrics: &str,
    judge: &str,
) -> String {
    let (nats, telemetry) = match nats {
        Some(url) => (
            format!("[nats]\nurl = \"{url}\"\n"),
            format!("[telemetry]\nprometheus_listen = \"{metrics}\"\n"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        r#"{nats}
[gateway]
listen = "{listen}"
default_profile = "chaos"
drain_timeout = "5s"

[worker]
ack_wait = "2s"
max_deliver = 10
retry_delay = "100ms"
max_concurrent_jobs = 8

{telemetry}
[[model]]
name = "rm"
path = "{dir}/scalar.pt"
tokenizer = "{dir}/tokenizer.json"
kind = "scalar"
template = "{{response}}"
max_length = 64
max_batch_tokens = 4096
max_wait = "2ms"
threads = 1

[[judge]]
name = "judge"
base_url = "{judge}"
model = "fake-judge"
max_concurrency = 512
requests_per_second = 100000
timeout = "5s"
deadline = "30s"
max_retries = 5
backoff_base = "5ms"
backoff_max = "50ms"
retry_budget_ratio = 0.5
retry_budget_min_per_second = 100

[profile.chaos]
components = [
  {{ rule = "exact_match", weight = 2.0 }},
  {{ rule = "regex", pattern = "^answer", weight = 1.0 }},
  {{ rule = "max_chars", limit = 40, gate = true }},
  {{ scorer = "rm" }},
  {{ name = "verdict", scorer = "judge", method = "reference" }},
]
normalize = "none"
on_component_failure = "fail"
floor = -1.0
"#,
        dir = models.display(),
    )
}

/// The trainer's transport: the gRPC client, counting every reward that comes over the wire
/// before the client drops re-sent ones.
struct CountingTransport {
    inner: RewardServiceClient<Channel>,
    wire: Arc<Mutex<Wire>>,
}

/// Rewards as they came over the wire.
#[derive(Default)]
struct Wire {
    /// Streams opened (the first, then one per resume).
    streams: usize,
    /// Candidates with a reward on some stream.
    rewarded: HashSet<String>,
    /// A reward for a candidate already rewarded on the same stream: the gateway sent it twice.
    same_stream_duplicates: usize,
    /// A reward re-sent on a resumed stream for a candidate rewarded on an earlier one (the
    /// session's retained results; the client drops them by id).
    resent_after_resume: usize,
}

impl Transport for CountingTransport {
    fn score<'life0, 'async_trait>(
        &'life0 mut self,
        requests: Vec<ScoreRequest>,
    ) -> Pin<Box<dyn Future<Output = Result<Responses, tonic::Status>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let responses = Transport::score(&mut self.inner, requests).await?;
            let wire = Arc::clone(&self.wire);
            wire.lock().unwrap().streams += 1;
            let mut this_stream = HashSet::new();
            let counted = responses.inspect(move |response| {
                if let Ok(r) = response
                    && let Some(score_response::Kind::Reward(reward)) = &r.kind
                {
                    let mut wire = wire.lock().unwrap();
                    if !this_stream.insert(reward.candidate_id.clone()) {
                        wire.same_stream_duplicates += 1;
                    } else if !wire.rewarded.insert(reward.candidate_id.clone()) {
                        wire.resent_after_resume += 1;
                    }
                }
            });
            Ok(Box::pin(counted) as Responses)
        })
    }
}

/// The reward of each class of candidates, from embedded `rewardfleet score` (no NATS, no
/// faults), checked against what the rules and the judge must give.
fn reference_rewards(models: &Path, dir: &Path) -> Vec<f64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let judge = rt
        .block_on(FakeJudge::start(FakeJudgeConfig::default()))
        .unwrap();
    let config = dir.join("embedded.toml");
    let text = config_text(models, None, "127.0.0.1:0", "", &judge.base_url());
    std::fs::write(&config, text).unwrap();
    let classes: Vec<_> = (0..CLASSES).map(candidate).collect();
    let lines = score_embedded(&config, "chaos", &classes, dir);
    (0..CLASSES)
        .map(|i| {
            let line = &lines[&candidate(i).id];
            assert_eq!(line["status"], "OK", "{line}");
            let reward = line["reward"].as_f64().unwrap();
            if i % 3 == 2 {
                assert_eq!(reward, -1.0, "too long: the gate's floor; {line}");
            } else {
                let rm = line["components"]["rm"].as_f64().unwrap();
                let (rules, verdict) = if i % 3 == 0 { (3.0, 1.0) } else { (1.0, 0.0) };
                assert!((reward - (rules + verdict + rm)).abs() < 1e-9, "{line}");
            }
            reward
        })
        .collect()
}

/// A `rewardfleet` process of the fleet and its metrics endpoint.
struct Member {
    process: Process,
    metrics: String,
}

/// What the run measured: the last metrics scraped from each process (a process is scraped
/// just before it is killed) and each process's peak RSS.
#[derive(Default)]
struct Figures {
    /// Counter sums by metric (and label) of each process, by process name.
    counters: HashMap<String, HashMap<String, f64>>,
    peak_rss_kib: HashMap<&'static str, u64>,
    worker_kills: usize,
    nats_restarts: usize,
    gateway_restarts: usize,
}

impl Figures {
    fn scrape(&mut self, member: &Member) {
        let Some((200, body)) = http_get(&member.metrics, "/metrics") else {
            return;
        };
        let mut sums: HashMap<String, f64> = HashMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            *sums.entry(name.to_owned()).or_default() += value;
            if name == "rewardfleet_judge_requests_total"
                && let Some(outcome) = label(series, "outcome")
            {
                *sums.entry(format!("{name}:{outcome}")).or_default() += value;
            }
        }
        self.counters.insert(member.process.name.clone(), sums);
    }

    fn peak_rss(&mut self, role: &'static str, pid: u32) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let peak = self.peak_rss_kib.entry(role).or_default();
        *peak = (*peak).max(hwm);
    }

    /// A counter summed over every process whose name starts with `prefix`.
    fn total(&self, prefix: &str, metric: &str) -> u64 {
        let sum: f64 = self
            .counters
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .filter_map(|(_, sums)| sums.get(metric))
            .sum();
        sum.round() as u64
    }
}

fn label<'a>(series: &'a str, key: &str) -> Option<&'a str> {
    let at = series.find(&format!("{key}=\""))? + key.len() + 2;
    series[at..].split('"').next()
}

/// `rewardfleet <role>` with its own config (its own metrics port), ready.
async fn start_member(
    name: String,
    role: &'static str,
    config: PathBuf,
    metrics: String,
) -> Member {
    let ready = if role == "gateway" {
        "listening"
    } else {
        "pulling"
    };
    let process =
        tokio::task::spawn_blocking(move || Process::start(&name, &[role], &config, ready))
            .await
            .unwrap();
    Member { process, metrics }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_restarts_lose_nothing_and_duplicate_nothing() {
    let n = candidates_to_run();
    let models = test_models("tiny", &[], Path::new(env!("CARGO_TARGET_TMPDIR")));
    let dir = tempfile::tempdir().unwrap();
    // The expected rewards, computed while the fleet starts.
    let reference = tokio::task::spawn_blocking({
        let (models, dir) = (models.clone(), dir.path().to_owned());
        move || reference_rewards(&models, &dir)
    });

    let mut nats = NatsServer::start().await.unwrap();
    let judge = FakeJudge::start(FakeJudgeConfig {
        fault_rate: JUDGE_FAULT_RATE,
        random_fault: Fault::ServerError,
        seed: 7,
        ..FakeJudgeConfig::default()
    })
    .await
    .unwrap();
    let nats_url = nats.url();
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut configs = 0;
    let mut member_config = |name: &str| {
        configs += 1;
        let metrics = format!("127.0.0.1:{}", free_port().unwrap());
        let path = dir.path().join(format!("{name}-{configs}.toml"));
        let text = config_text(
            &models,
            Some(&nats_url),
            &listen,
            &metrics,
            &judge.base_url(),
        );
        std::fs::write(&path, text).unwrap();
        (path, metrics)
    };
    let (config, metrics) = member_config("gateway");
    let gateway_config = (config.clone(), metrics.clone());
    let mut gateway = start_member("gateway-1".into(), "gateway", config, metrics).await;
    let mut workers = Vec::new();
    let mut started_workers = 0;
    for _ in 0..WORKERS {
        started_workers += 1;
        let (config, metrics) = member_config("worker");
        workers.push(
            start_member(
                format!("worker-{started_workers}"),
                "worker",
                config,
                metrics,
            )
            .await,
        );
    }

    let mut figures = Figures::default();
    let started = Instant::now();
    // The trainer: one session of batches of 128 with a window of 2048, as `rewardfleet score
    // --gateway` runs it, resuming after the gateway's restart.
    let wire = Arc::new(Mutex::new(Wire::default()));
    let mut transport = CountingTransport {
        inner: rewardfleet_client::connect(&format!("http://{listen}"))
            .await
            .unwrap(),
        wire: Arc::clone(&wire),
    };
    let session =
        Session::new(format!("chaos-{n}"))
            .window(2048)
            .batches(rewardfleet_client::batches(
                (0..n).map(candidate).collect(),
                128,
            ));
    let trainer = tokio::spawn(async move {
        let mut rewards: HashMap<String, Reward> = HashMap::new();
        let mut handed_twice = 0;
        let ran = session
            .run(&mut transport, |reward| {
                if let Some(earlier) = rewards.insert(reward.candidate_id.clone(), reward) {
                    handed_twice += 1;
                    eprintln!("handed to the trainer twice: {earlier:?}");
                }
            })
            .await;
        (ran, rewards, handed_twice)
    });
    let limit = Duration::from_secs(240) + Duration::from_millis(20) * n as u32;
    let mut next_kill = Instant::now() + WORKER_KILL_EVERY;
    let mut events = SCHEDULE.iter().peekable();
    loop {
        if trainer.is_finished() {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "the trainer did not finish within {limit:?}"
        );
        for member in &workers {
            figures.scrape(member);
        }
        let scored = figures.total("worker", "rewardfleet_candidates_scored_total");
        if let Some(&&(at, event)) = events.peek()
            && scored as f64 >= at * n as f64
        {
            events.next();
            match event {
                Event::RestartNats => {
                    figures.peak_rss("nats-server", nats.pid().unwrap());
                    nats.kill().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    nats.restart().await.unwrap();
                    figures.nats_restarts += 1;
                }
                Event::RestartGateway => {
                    figures.scrape(&gateway);
                    figures.peak_rss("gateway", gateway.process.pid());
                    gateway.process.kill9();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let (config, metrics) = gateway_config.clone();
                    gateway = start_member("gateway-2".into(), "gateway", config, metrics).await;
                    figures.gateway_restarts += 1;
                }
            }
        }
        if Instant::now() >= next_kill {
            let mut victim = workers.remove(0);
            figures.scrape(&victim);
            figures.peak_rss("worker", victim.process.pid());
            victim.process.kill9();
            figures.worker_kills += 1;
            next_kill += WORKER_KILL_EVERY;
            started_workers += 1;
            let (config, metrics) = member_config("worker");
            workers.push(
                start_member(
                    format!("worker-{started_workers}"),
                    "worker",
                    config,
                    metrics,
                )
                .await,
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall = started.elapsed();
    let (ran, rewards, duplicated) = trainer.await.unwrap();
    // The gateway's sweep finds jobs JetStream gave up on at least every `ack_wait`.
    tokio::time::sleep(Duration::from_secs(3)).await;
    figures.scrape(&gateway);
    figures.peak_rss("gateway", gateway.process.pid());
    for member in &workers {
        figures.scrape(member);
        figures.peak_rss("worker", member.process.pid());
    }
    figures.peak_rss("nats-server", nats.pid().unwrap());
    figures.peak_rss("test (fake judge, driver)", std::process::id());

    // What the trainer got: one reward per candidate, the expected one.
    let want = reference.await.unwrap();
    let (mut ok, mut failed, mut lost, mut wrong) = (0, 0, 0, Vec::new());
    for i in 0..n {
        let id = candidate(i).id;
        match rewards.get(&id) {
            None => lost += 1,
            Some(r) if r.status() == RewardStatus::Ok => {
                ok += 1;
                if (r.value - want[i % CLASSES]).abs() > 1e-5 {
                    wrong.push(format!("{id}: {}, expected {}", r.value, want[i % CLASSES]));
                }
            }
            Some(_) => failed += 1,
        }
    }
    let wire = std::mem::take(&mut *wire.lock().unwrap());
    let counts = Counts {
        n,
        ok,
        lost,
        duplicated,
        failed,
    };
    let summary = summary(&figures, &judge, &counts, &wire, wall);
    println!("{summary}");

    ran.unwrap_or_else(|e| panic!("the session failed: {e}\n{summary}"));
    assert_eq!(
        (figures.nats_restarts, figures.gateway_restarts),
        (2, 1),
        "the run ended before every scheduled restart"
    );
    assert!(figures.worker_kills >= 1, "no worker was killed");
    assert_eq!((lost, duplicated, failed), (0, 0, 0), "{summary}");
    assert_eq!(wire.same_stream_duplicates, 0, "{summary}");
    assert_eq!(ok, n);
    assert!(
        wrong.is_empty(),
        "{} wrong rewards, first: {}",
        wrong.len(),
        wrong[0]
    );
    assert!(judge.faults() > 0, "the judge served no fault");
}

/// What the trainer got, per candidate.
struct Counts {
    n: usize,
    ok: usize,
    lost: usize,
    duplicated: usize,
    failed: usize,
}

fn summary(
    figures: &Figures,
    judge: &FakeJudge,
    c: &Counts,
    wire: &Wire,
    wall: Duration,
) -> String {
    let mib = |role: &str| {
        figures.peak_rss_kib.get(role).map_or_else(
            || "-".to_owned(),
            |k| format!("{:.0} MiB", *k as f64 / 1024.0),
        )
    };
    let retried = figures.total("worker", "rewardfleet_judge_requests_total:http_5xx");
    let rows = [
        ("candidates", c.n.to_string()),
        ("rewarded OK with the expected value", c.ok.to_string()),
        ("lost", c.lost.to_string()),
        ("duplicated at the trainer", c.duplicated.to_string()),
        ("FAILED", c.failed.to_string()),
        (
            "trainer streams (first + resumes)",
            wire.streams.to_string(),
        ),
        (
            "rewards sent twice on one stream",
            wire.same_stream_duplicates.to_string(),
        ),
        (
            "rewards re-sent on a resumed stream (dropped by the client)",
            wire.resent_after_resume.to_string(),
        ),
        (
            "workers kill -9'd / nats-server / gateway restarts",
            format!(
                "{} / {} / {}",
                figures.worker_kills, figures.nats_restarts, figures.gateway_restarts
            ),
        ),
        (
            "job redeliveries",
            figures
                .total("worker", "rewardfleet_jobs_redelivered_total")
                .to_string(),
        ),
        (
            "jobs dead-lettered",
            figures
                .total("gateway", "rewardfleet_jobs_dead_lettered_total")
                .to_string(),
        ),
        (
            "judge calls / HTTP 500 served",
            format!("{} / {}", judge.calls(), judge.faults()),
        ),
        (
            "judge retries (HTTP 500s that reached a live worker)",
            retried.to_string(),
        ),
        ("wall time", format!("{:.1} s", wall.as_secs_f64())),
        ("peak RSS gateway", mib("gateway")),
        ("peak RSS worker (max)", mib("worker")),
        ("peak RSS nats-server", mib("nats-server")),
        (
            "peak RSS test process (fake judge, driver)",
            mib("test (fake judge, driver)"),
        ),
    ];
    let mut out = String::from("\n| chaos run | |\n|---|---|\n");
    for (key, value) in rows {
        writeln!(out, "| {key} | {value} |").unwrap();
    }
    out
}
