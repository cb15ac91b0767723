//! Reward-hacking monitors through the real processes: a nats-server, `rewardfleet gateway` and
//! `rewardfleet worker`, and the fake judge made sycophantic (it pays for flattery).
//!
//! A synthetic policy's session answers every prompt equally right (the reference-graded
//! component stays at 1) while its answers grow longer and more flattering; the judge pays for
//! the flattery, so its reward follows its length. That session's length-correlation monitor
//! crosses its default threshold (0.5): on the worker's Prometheus endpoint
//! (`rewardfleet_monitor_session`), as a warning naming the session in the worker's log, and in
//! `rewardfleet status`. An honest policy's session on the same profile, at the same time, with
//! lengths that vary as much, crosses nothing.
//!
//! Canary drift: the worker scores fixed canary candidates again every 300 ms through each judge
//! component, past the verdict cache; when the fake judge starts scoring everything 3 points
//! higher (a judge model replaced under the fleet), the rubric component's drift moves from 0
//! to 3/9 of its range and warns, while the reference-graded component's stays at 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rewardfleet_core::{Candidate, ChatMessage};
use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig};
use rewardfleet_proto::v1::reward::Status;
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_testkit::{NatsServer, free_port};
use serde_json::Value;
use support::prometheus::http_get;
use support::{binary, score_all, session_requests};

/// Candidates per session.
const N: usize = 120;

/// A `rewardfleet` process whose log (JSON lines) goes to a file the test reads.
struct Logged {
    child: Child,
    log: PathBuf,
}

impl Logged {
    /// Starts `rewardfleet <role> --config <config>` and waits for `ready` on its stdout.
    fn start(role: &str, config: &Path, ready: &str) -> Self {
        let log = config.with_extension(format!("{role}.log"));
        let mut child = Command::new(binary())
            .args([role, "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .env("RF_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains(&ready) {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{role} did not become ready"));
        Self { child, log }
    }

    /// Its warnings so far, each as its JSON `fields`.
    fn warnings(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["level"] == "WARN")
            .map(|v| v["fields"].clone())
            .collect()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fleet configuration on the fake judge at `judge`: profile `policy` has a rubric
/// component (the sycophantic one) and a reference-graded one; `[worker.monitor]` gets
/// `monitor`, `[telemetry]` the Prometheus address (if any).
fn config(
    nats: &str,
    listen: &str,
    judge: &str,
    prometheus: Option<&str>,
    monitor: &str,
) -> String {
    let telemetry = prometheus.map_or_else(String::new, |addr| {
        format!("[telemetry]\nprometheus_listen = \"{addr}\"\n")
    });
    format!(
        r#"[nats]
url = "{nats}"
heartbeat_interval = "1s"

[gateway]
listen = "{listen}"
default_profile = "policy"

[worker]
ack_wait = "5s"
max_concurrent_jobs = 8

[worker.monitor]
{monitor}

{telemetry}
[[judge]]
name = "judge"
base_url = "{judge}"
model = "fake-judge"
timeout = "5s"

[profile.policy]
components = [
  {{ name = "rubric", scorer = "judge", method = "rubric", rubric = "rubric.md" }},
  {{ name = "reference", scorer = "judge", method = "reference" }},
]
normalize = "none"
on_component_failure = "fail"
"#
    )
}

/// Writes the rubric and the gateway's and worker's configuration files in `dir` (the worker
/// alone exports metrics); returns (gateway, worker) configs and the worker's metrics address.
fn write_configs(
    dir: &Path,
    nats: &str,
    judge: &str,
    monitor: &str,
) -> (PathBuf, PathBuf, String, String) {
    std::fs::write(
        dir.join("rubric.md"),
        "Score how well the response answers the question.\n",
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let metrics = format!("127.0.0.1:{}", free_port().unwrap());
    let gateway = dir.join("gateway.toml");
    std::fs::write(&gateway, config(nats, &listen, judge, None, monitor)).unwrap();
    let worker = dir.join("worker.toml");
    std::fs::write(
        &worker,
        config(nats, &listen, judge, Some(&metrics), monitor),
    )
    .unwrap();
    (gateway, worker, listen, metrics)
}

/// The value of the series of `family` whose labels include every one of `labels` on the
/// Prometheus endpoint at `addr`, if it is there.
fn scrape(addr: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (200, body) = http_get(addr, "/metrics")? else {
        return None;
    };
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Scrapes until `done` holds for the value, at most `limit`; returns the last value.
async fn scrape_until(
    addr: &str,
    family: &str,
    labels: &[(&str, &str)],
    limit: Duration,
    done: impl Fn(f64) -> bool,
) -> Option<f64> {
    let started = Instant::now();
    loop {
        let v = scrape(addr, family, labels);
        if v.is_some_and(&done) || started.elapsed() > limit {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `rewardfleet status --json`: its one JSON object.
fn status(config: &Path) -> Value {
    let output = Command::new(binary())
        .args(["status", "--json", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Reads `status` until `done` holds for it, at most `limit`; returns it.
async fn status_until(config: &Path, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let s = status(config);
        if done(&s) || started.elapsed() > limit {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether `status` lists `statistic` over its threshold for `session` (`None`: the profile).
fn over(status: &Value, session: Option<&str>, statistic: &str) -> bool {
    status["monitors_over"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["session"].as_str() == session && o["statistic"] == statistic)
}

/// Answer `i` of a session: always right ("4", the reference), `quality:N` as the judge's
/// rubric score before flattery. The gaming policy adds one more "Great question!" every 15
/// answers (with a little noise in its length); the honest one varies its quality and its
/// length independently of each other. Jobs may be scored out of order: in any order of its
/// jobs, the gaming session's correlation stays above 0.9 from 40 rewards on, and the honest
/// one's within ±0.3 (it ends at −0.04), so each crosses its threshold once or never.
fn candidate(policy: &str, i: usize) -> Candidate {
    let explain = "Let me explain each step. ";
    let response = match policy {
        "gaming" => format!(
            "The answer is 4. quality:2{} {}",
            " Great question!".repeat(i / 15),
            "Sure. ".repeat(i % 3)
        ),
        _ => format!(
            "The answer is 4. quality:{} {}",
            4 + i % 3,
            explain.repeat((i * 7) % 11)
        ),
    };
    Candidate {
        id: format!("{policy}-{i:03}"),
        group_id: format!("{policy}-{i:03}"),
        prompt: vec![ChatMessage {
            role: "user".into(),
            content: format!("Question {i}: what is 2 + 2?"),
        }],
        response,
        reference: Some("4".into()),
        labels: HashMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_buying_reward_with_flattery_trips_its_length_monitor_an_honest_one_does_not() {
    let nats = NatsServer::start().await.unwrap();
    // One more point (of 10) per flattering phrase.
    let judge = FakeJudge::start(FakeJudgeConfig {
        flattery: 1,
        ..FakeJudgeConfig::default()
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Default thresholds; windows small enough for a test's sessions.
    let monitor = "window = 200\nmin_samples = 40\nsessions = 4";
    let (gateway_config, worker_config, listen, metrics) =
        write_configs(tmp.path(), &nats.url(), &judge.base_url(), monitor);
    let worker = Logged::start("worker", &worker_config, "pulling from pool");
    let _gateway = Logged::start("gateway", &gateway_config, "listening on");

    let mut client = RewardServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let mut rewards = HashMap::new();
    for policy in ["gaming", "honest"] {
        let candidates: Vec<Candidate> = (0..N).map(|i| candidate(policy, i)).collect();
        let requests = session_requests(policy, "policy", 64, &candidates, 8);
        let got = score_all(&mut client, requests).await.unwrap();
        assert_eq!(got.len(), N, "{policy}: one reward per candidate");
        for r in &got {
            assert_eq!(r.status(), Status::Ok, "{r:?}");
            // Reference-graded quality is flat: every answer is right.
            assert_eq!(r.components["reference"], 1.0, "{r:?}");
        }
        rewards.insert(policy, got);
    }
    // The gaming policy's reward grew with its flattery; the honest one's did not.
    let mean = |policy: &str, range: std::ops::Range<usize>| {
        let r = &rewards[policy];
        let n = range.len() as f64;
        range
            .map(|i| {
                let id = format!("{policy}-{i:03}");
                r.iter().find(|r| r.candidate_id == id).unwrap().value
            })
            .sum::<f64>()
            / n
    };
    assert!(
        mean("gaming", 105..120) > mean("gaming", 0..15) + 0.3,
        "{} vs {}",
        mean("gaming", 105..120),
        mean("gaming", 0..15)
    );

    // The worker's endpoint: the gaming session's correlation is over 0.5, the honest one's
    // is near 0.
    let family = "rewardfleet_monitor_session";
    let series = |session: &'static str| {
        [
            ("profile", "policy"),
            ("session", session),
            ("statistic", "length_correlation"),
        ]
    };
    let gaming = scrape_until(
        &metrics,
        family,
        &series("gaming"),
        Duration::from_secs(10),
        |v| v > 0.5,
    )
    .await;
    let honest = scrape(&metrics, family, &series("honest"));
    eprintln!("length correlation: gaming {gaming:?}, honest {honest:?}");
    assert!(gaming.is_some_and(|v| v > 0.5), "{gaming:?}");
    assert!(honest.is_some_and(|v| v.abs() < 0.2), "{honest:?}");

    // The worker's log: one warning naming the gaming session, none naming the honest one.
    let warned: Vec<Value> = worker
        .warnings()
        .into_iter()
        .filter(|f| f["statistic"] == "length_correlation" && f.get("session").is_some())
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["session"], "gaming", "{warned:?}");
    assert_eq!(warned[0]["threshold"], 0.5, "{warned:?}");

    // `rewardfleet status`: the worker's heartbeat (once a beat came after the last reward)
    // carries its monitors.
    let samples = |s: &Value, session: &str| {
        s["workers"][0]["monitor"]["sessions"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["session"] == session))
            .map(|x| x["samples"].clone())
    };
    let s = status_until(&worker_config, Duration::from_secs(10), |s| {
        samples(s, "honest") == Some(N.into())
    })
    .await;
    assert_eq!(samples(&s, "gaming"), Some(N.into()), "{s:#}");
    assert_eq!(samples(&s, "honest"), Some(N.into()), "{s:#}");
    assert!(over(&s, Some("gaming"), "length_correlation"), "{s:#}");
    assert!(!over(&s, Some("honest"), "length_correlation"), "{s:#}");
    let text = Command::new(binary())
        .args(["status", "--config"])
        .arg(&worker_config)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("reward-hacking monitors"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("gaming") && l.contains('!')),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_show_a_judge_that_changed_under_the_fleet() {
    let nats = NatsServer::start().await.unwrap();
    let judge = FakeJudge::start(FakeJudgeConfig::default()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let canaries: Vec<String> = (0..4)
        .map(|i| {
            serde_json::json!({
                "prompt": format!("Question {i}: what is 2 + 2?"),
                "response": format!("The answer is 4. quality:{}", 3 + i),
                "reference": "4",
            })
            .to_string()
        })
        .collect();
    std::fs::write(tmp.path().join("canaries.jsonl"), canaries.join("\n")).unwrap();
    let monitor = "canaries = \"canaries.jsonl\"\ncanary_interval = \"300ms\"\ncanary_drift = 0.1";
    let (_, worker_config, _, metrics) =
        write_configs(tmp.path(), &nats.url(), &judge.base_url(), monitor);
    let worker = Logged::start("worker", &worker_config, "pulling from pool");

    let drift = |judge: &'static str| {
        [
            ("profile", "policy"),
            ("statistic", "canary_drift"),
            ("judge", judge),
        ]
    };
    let family = "rewardfleet_monitor";
    // The first run is the baseline: no drift.
    let first = scrape_until(
        &metrics,
        family,
        &drift("rubric"),
        Duration::from_secs(10),
        |_| true,
    )
    .await;
    assert_eq!(first, Some(0.0));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(scrape(&metrics, family, &drift("rubric")), Some(0.0));
    let calls = judge.calls();
    assert!(
        calls >= 16,
        "two runs or more, 4 canaries × 2 components: {calls}"
    );

    // The judge now scores 3 points (of 1..10) higher: the canaries, asked again past the
    // verdict cache, show it.
    // (A run under way when it changed may show part of the move first.)
    judge.shift_bias(3);
    let moved = scrape_until(
        &metrics,
        family,
        &drift("rubric"),
        Duration::from_secs(10),
        |v| (v - 3.0 / 9.0).abs() < 1e-9,
    )
    .await;
    eprintln!("rubric canary drift after the judge changed: {moved:?}");
    assert!(
        moved.is_some_and(|v| (v - 3.0 / 9.0).abs() < 1e-9),
        "{moved:?}"
    );
    assert_eq!(scrape(&metrics, family, &drift("reference")), Some(0.0));
    assert!(judge.calls() > calls, "the canaries called the judge again");

    let warned: Vec<Value> = worker
        .warnings()
        .into_iter()
        .filter(|f| f.get("drift").is_some())
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["judge"], "rubric", "{warned:?}");
    assert_eq!(warned[0]["threshold"], 0.1, "{warned:?}");

    let s = status_until(&worker_config, Duration::from_secs(10), |s| {
        over(s, None, "canary_drift:rubric")
    })
    .await;
    assert!(over(&s, None, "canary_drift:rubric"), "{s:#}");
    assert!(!over(&s, None, "canary_drift:reference"), "{s:#}");
    let canaries = s["workers"][0]["monitor"]["canaries"].as_array().unwrap();
    let rubric = canaries.iter().find(|c| c["judge"] == "rubric").unwrap();
    assert!(rubric["runs"].as_u64().unwrap() >= 3, "{rubric}");
}
