//! Redelivery and abandoned work with a real judge endpoint (the fake OpenAI-compatible server):
//! embedded mode honours the worker's redelivery settings as NATS does, and the jobs of a
//! `ScoreBatch` caller that gave up are not scored.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Fault, Latency};
use rewardfleet_proto::v1::ScoreBatchRequest;
use rewardfleet_testkit::{NatsServer, free_port};
use support::process::Process;
use support::*;

/// A profile judged by `judge` at `base_url`, with the worker's and judge's retries given.
fn judged_config(
    nats: Option<&str>,
    base_url: &str,
    port: u16,
    worker: &str,
    judge: &str,
) -> String {
    let extra = format!(
        r#"
[jobs]
max_candidates = 8

[limits]
max_group_size = 8

[judge_cache]
enabled = false

[[judge]]
name = "judge"
base_url = "{base_url}"
model = "fake"
backoff_base = "10ms"
backoff_max = "20ms"
circuit_breaker_failures = 1000
{judge}

[profile.judged]
components = [
  {{ rule = "exact_match" }},
  {{ scorer = "judge", method = "reference" }},
]
"#
    );
    config_text(nats, &extra)
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace("[worker]", &format!("[worker]\n{worker}"))
}

fn write_input(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let input = dir.join("in.jsonl");
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"id": format!("c{i}"), "prompt": "q", "response": format!("answer {i}"), "reference": "answer 0"}).to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    input
}

fn score(config: &std::path::Path, input: &std::path::Path, gateway: Option<u16>) {
    let mut command = Command::new(binary());
    command
        .args(["score", "--profile", "judged", "--config"])
        .arg(config);
    if let Some(port) = gateway {
        command
            .arg("--gateway")
            .arg(format!("http://127.0.0.1:{port}"));
    }
    let status = command
        .arg(input)
        .arg("-o")
        .arg(input.with_extension("out"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "rewardfleet score exited with {status}");
}

/// With `max_retries = 1` and `worker.max_deliver = 1`, a judge that always answers 503 sees
/// each candidate twice (one try, one retry, one delivery), in embedded mode as through NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_and_nats_modes_honour_the_same_redelivery_settings() {
    const N: usize = 4;
    let judge = FakeJudge::start(FakeJudgeConfig {
        fault_rate: 1.0,
        random_fault: Fault::Unavailable { retry_after: None },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), N);
    let settings = ("max_deliver = 1\nretry_delay = \"50ms\"", "max_retries = 1");

    let embedded = dir.path().join("embedded.toml");
    std::fs::write(
        &embedded,
        judged_config(None, &judge.base_url(), 0, settings.0, settings.1),
    )
    .unwrap();
    score(&embedded, &input, None);
    let embedded_calls = judge.calls();
    assert_eq!(
        embedded_calls,
        2 * N as u64,
        "embedded: one try and one retry each"
    );

    let before = judge.calls();
    let nats = NatsServer::start().await.unwrap();
    let port = free_port().unwrap();
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet,
        judged_config(
            Some(&nats.url()),
            &judge.base_url(),
            port,
            settings.0,
            settings.1,
        ),
    )
    .unwrap();
    let _gateway = Process::start("gateway", &["gateway"], &fleet, "listening");
    let _worker = Process::start("worker", &["worker"], &fleet, "pulling");
    score(&fleet, &input, Some(port));
    assert_eq!(
        judge.calls() - before,
        embedded_calls,
        "NATS mode makes as many calls"
    );
}

/// `ScoreBatch` callers that give up (deadline) cost only the work already started: their
/// sessions' jobs still queued are dropped, and the judge never sees most of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_score_batch_calls_cost_no_further_work() {
    const CALLS: usize = 20;
    const PER_CALL: usize = 32;
    let judge = FakeJudge::start(FakeJudgeConfig {
        latency: Latency::Fixed(Duration::from_millis(100)),
        ..Default::default()
    })
    .await
    .unwrap();
    let nats = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet,
        judged_config(
            Some(&nats.url()),
            &judge.base_url(),
            port,
            "max_concurrent_jobs = 2",
            "max_concurrency = 4",
        )
        .replace("max_concurrent_jobs = 8\n", ""),
    )
    .unwrap();
    let _gateway = Process::start("gateway", &["gateway"], &fleet, "listening");
    let _worker = Process::start("worker", &["worker"], &fleet, "pulling");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // 640 candidates, about 16 s of judge work; every caller gives up after 300 ms.
    let calls = (0..CALLS).map(|c| {
        let mut client =
            rewardfleet_proto::v1::reward_service_client::RewardServiceClient::new(channel.clone());
        async move {
            let candidates = (0..PER_CALL)
                .map(|i| {
                    let mut cand = candidate(c * PER_CALL + i);
                    cand.group_id.clear();
                    cand
                })
                .collect();
            let mut request = tonic::Request::new(ScoreBatchRequest {
                profile: "judged".into(),
                candidates,
            });
            request.set_timeout(Duration::from_millis(300));
            client.score_batch(request).await
        }
    });
    let outcomes = futures::future::join_all(calls).await;
    assert!(
        outcomes.iter().all(Result::is_err),
        "every call passed its deadline"
    );
    // Long enough for the old behaviour to have scored about 200 of the abandoned candidates.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let judged = judge.calls();
    assert!(
        judged < 64,
        "abandoned work was scored anyway: {judged} judge calls for {} candidates",
        CALLS * PER_CALL
    );

    // The fleet still serves a caller that waits.
    let mut client =
        rewardfleet_proto::v1::reward_service_client::RewardServiceClient::new(channel);
    let rewards = client
        .score_batch(ScoreBatchRequest {
            profile: "judged".into(),
            candidates: vec![candidate(0)],
        })
        .await
        .unwrap()
        .into_inner()
        .rewards;
    assert_eq!(rewards[0].status, 1, "{:?}", rewards[0]);
}
