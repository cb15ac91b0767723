//! Graceful drain with real processes: a worker told SIGTERM while its jobs wait on a slow judge
//! stops pulling, finishes and acknowledges what it holds, and exits 0 within its grace period;
//! no job is scored twice and every candidate gets its reward.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Latency};
use rewardfleet_testkit::{NatsServer, free_port};
use support::process::Process;
use support::*;

const N: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_jobs_and_exits_zero() {
    let nats = NatsServer::start().await.unwrap();
    let judge = FakeJudge::start(FakeJudgeConfig {
        latency: Latency::Fixed(Duration::from_millis(400)),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rubric.md"),
        "Score how well the answer answers.",
    )
    .unwrap();
    let port = free_port().unwrap();
    let health_a = free_port().unwrap();
    let health_b = free_port().unwrap();
    let judged = format!(
        r#"
[jobs]
max_candidates = 8

[limits]
max_group_size = 8

[judge_cache]
enabled = false

[[judge]]
name = "judge"
base_url = "{}"
model = "fake"

[profile.judged]
components = [
  {{ rule = "exact_match", weight = 2.0 }},
  {{ rule = "regex", pattern = "^answer", weight = 1.0 }},
  {{ rule = "max_chars", limit = 40, gate = true }},
  {{ scorer = "judge", method = "rubric", rubric = "rubric.md", weight = 0.0 }},
]
floor = -1.0
"#,
        judge.base_url()
    );
    let text = config_text(Some(&nats.url()), &judged)
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(
            "max_concurrent_jobs = 8",
            "max_concurrent_jobs = 4\ndrain_timeout = \"20s\"",
        );
    let config_a = dir.path().join("a.toml");
    let config_b = dir.path().join("b.toml");
    std::fs::write(
        &config_a,
        text.replace(
            "[worker]",
            &format!("[worker]\nhealth_listen = \"127.0.0.1:{health_a}\""),
        ),
    )
    .unwrap();
    std::fs::write(
        &config_b,
        text.replace(
            "[worker]",
            &format!("[worker]\nhealth_listen = \"127.0.0.1:{health_b}\""),
        ),
    )
    .unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = (0..N)
        .map(|i| {
            let c = candidate(i);
            serde_json::json!({"id": c.id, "group_id": c.group_id, "prompt": "q", "response": c.response, "reference": c.reference}).to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = dir.path().join("out.jsonl");

    let _gateway = Process::start("gateway", &["gateway"], &config_a, "listening");
    let mut worker_a = Process::start("worker-a", &["worker"], &config_a, "pulling");
    let _worker_b = Process::start("worker-b", &["worker"], &config_b, "pulling");
    assert_eq!(
        http_status(&format!("127.0.0.1:{health_a}"), "/readyz"),
        Some(200)
    );
    assert_eq!(
        http_status(&format!("127.0.0.1:{health_a}"), "/livez"),
        Some(200)
    );
    let mut client = Command::new(binary())
        .args(["score", "--profile", "judged", "--gateway"])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // Let worker A take jobs, then stop it while they wait on the judge.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        judge.in_flight() > 0,
        "jobs are in flight when SIGTERM comes"
    );
    let sent = Instant::now();
    worker_a.signal_term();
    // While it drains (its jobs wait on the judge) it is alive and not ready.
    let health = format!("127.0.0.1:{health_a}");
    let mut ready = http_status(&health, "/readyz");
    for _ in 0..100 {
        if ready == Some(503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = http_status(&health, "/readyz");
    }
    assert_eq!(ready, Some(503), "/readyz while draining");
    assert_eq!(
        http_status(&health, "/livez"),
        Some(200),
        "/livez while draining"
    );
    let status = worker_a.terminate(Duration::from_secs(20));
    assert!(status.success(), "worker exited with {status}");
    eprintln!("worker drained and exited 0 in {:?}", sent.elapsed());
    assert!(sent.elapsed() < Duration::from_secs(10));

    let started = Instant::now();
    let status = loop {
        if let Some(status) = client.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the client did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success());
    let rewards: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rewards.len(), N);
    for (i, r) in rewards.iter().enumerate() {
        assert_eq!(r["status"], "OK", "{r}");
        assert_eq!(r["reward"].as_f64().unwrap(), expected(i), "{r}");
        let j = r["components"]["judge"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&j), "{r}");
    }
    // Nothing was scored twice: the drained worker finished its jobs instead of dropping them.
    assert_eq!(judge.calls(), N as u64, "judge calls");
}
