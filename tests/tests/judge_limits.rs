//! A judge's `max_concurrency` and `requests_per_second` hold for the whole fleet: four worker
//! processes (the real binary) share them through their heartbeats. The fake judge counts what
//! the endpoint sees: its peak concurrency stays within `max_concurrency`, its busiest second
//! within `requests_per_second` plus the documented slack (each worker's burst), and the fleet
//! still gets at least 90 % of the limit. When a worker stops, the others take its share.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Latency};
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_testkit::{NatsServer, free_port};
use support::process::Process;
use support::*;

/// Fleet-wide concurrency of the slow judge, and its latency: at most 80 judgements a second.
const MAX_CONCURRENCY: usize = 8;
const SLOW_LATENCY: Duration = Duration::from_millis(100);
/// Fleet-wide request rate of the paced judge.
const REQUESTS_PER_SECOND: f64 = 40.0;
const WORKERS: usize = 4;

fn config_text(nats: &str, port: u16, slow: &str, paced: &str) -> String {
    format!(
        r#"
[nats]
url = "{nats}"
heartbeat_interval = "1s"

[gateway]
listen = "127.0.0.1:{port}"
default_profile = "slow"

[worker]
max_concurrent_jobs = 4
ack_wait = "30s"

[[judge]]
name = "slow"
base_url = "{slow}"
model = "fake-judge"
max_concurrency = {MAX_CONCURRENCY}
requests_per_second = 10000
timeout = "10s"
deadline = "60s"

[[judge]]
name = "paced"
base_url = "{paced}"
model = "fake-judge"
max_concurrency = 64
requests_per_second = {REQUESTS_PER_SECOND}
timeout = "10s"
deadline = "60s"

[profile.slow]
components = [{{ scorer = "slow", method = "reference" }}]

[profile.paced]
components = [{{ scorer = "paced", method = "reference" }}]
"#
    )
}

/// Calls per second that `judge` answered in the steady part of a phase: from one second after
/// its first call to one second before its last (the fleet filling up and draining left out).
fn steady_rate(judge: &FakeJudge) -> f64 {
    let arrivals = judge.arrivals();
    let (Some(first), Some(last)) = (arrivals.first(), arrivals.last()) else {
        return 0.0;
    };
    let (from, to) = (
        *first + Duration::from_secs(1),
        *last - Duration::from_secs(1),
    );
    let calls = arrivals.iter().filter(|a| **a >= from && **a < to).count();
    calls as f64 / (to - from).as_secs_f64()
}

/// Scores `n` candidates on `profile` over four concurrent sessions, in batches of 4.
async fn score_phase(port: u16, profile: &str, tag: &str, n: usize) {
    let all = judged_candidates(tag, n);
    let sessions = all.chunks(n.div_ceil(4)).enumerate().map(|(s, part)| {
        let requests = session_requests(&format!("{tag}-s{s}"), profile, 64, part, 4);
        async move {
            let mut client = RewardServiceClient::connect(format!("http://127.0.0.1:{port}"))
                .await
                .unwrap();
            let rewards = score_all(&mut client, requests).await.unwrap();
            assert_eq!(rewards.len(), part.len(), "one reward per candidate");
            assert!(
                rewards.iter().all(|r| r.status == 1),
                "all scored: {:?}",
                rewards.iter().find(|r| r.status != 1)
            );
        }
    });
    futures::future::join_all(sessions).await;
}

/// Gives every worker time to see the others' heartbeats: each beats at once when it starts
/// (or deletes its entry when it stops) and reads the others' every second.
async fn let_shares_settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_keep_a_judges_limits_fleet_wide() {
    let nats = NatsServer::start().await.unwrap();
    let slow = FakeJudge::start(FakeJudgeConfig {
        latency: Latency::Fixed(SLOW_LATENCY),
        ..FakeJudgeConfig::default()
    })
    .await
    .unwrap();
    let paced = FakeJudge::start(FakeJudgeConfig {
        latency: Latency::Fixed(Duration::from_millis(20)),
        ..FakeJudgeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        config_text(&nats.url(), port, &slow.base_url(), &paced.base_url()),
    )
    .unwrap();

    let _gateway = Process::start("gateway", &["gateway"], &config, "listening");
    let mut workers: Vec<Process> = (0..WORKERS)
        .map(|i| Process::start(&format!("worker-{i}"), &["worker"], &config, "pulling"))
        .collect();
    let_shares_settle().await;

    // Concurrency: 8 in flight fleet-wide (2 per worker), 80 judgements a second at most.
    let n = 800;
    score_phase(port, "slow", "conc", n).await;
    let limit = MAX_CONCURRENCY as f64 / SLOW_LATENCY.as_secs_f64();
    let throughput = steady_rate(&slow);
    println!(
        "max_concurrency {MAX_CONCURRENCY}: peak {} in flight, {throughput:.1} judgements/s of {limit:.0} ({:.2})",
        slow.max_concurrent(),
        throughput / limit
    );
    assert!(
        slow.max_concurrent() <= MAX_CONCURRENCY as u64,
        "the endpoint saw {} at once",
        slow.max_concurrent()
    );
    assert!(throughput >= 0.9 * limit, "{throughput:.1}/s of {limit}/s");

    // Rate: 40 requests a second fleet-wide; in any one second at most the rate plus each
    // worker's burst (a tenth of its rate, at least one request).
    let n = 480;
    score_phase(port, "paced", "rate", n).await;
    let throughput = steady_rate(&paced);
    let peak = paced.peak_calls_within(Duration::from_secs(1));
    let slack = WORKERS as f64 * (REQUESTS_PER_SECOND / WORKERS as f64 / 10.0).max(1.0);
    println!(
        "requests_per_second {REQUESTS_PER_SECOND}: busiest second {peak}, {throughput:.1}/s ({:.2})",
        throughput / REQUESTS_PER_SECOND
    );
    assert!(
        peak as f64 <= REQUESTS_PER_SECOND + slack,
        "{peak} requests in one second"
    );
    assert!(
        throughput >= 0.9 * REQUESTS_PER_SECOND,
        "{throughput:.1}/s of {REQUESTS_PER_SECOND}/s"
    );

    // A worker stops: the three left share the limits (3 + 3 + 2 slots) and keep the pace.
    let mut stopped = workers.pop().unwrap();
    stopped.terminate(Duration::from_secs(20));
    let_shares_settle().await;
    slow.reset_counters();
    score_phase(port, "slow", "three", 800).await;
    let throughput = steady_rate(&slow);
    println!(
        "three workers: peak {} in flight, {throughput:.1} judgements/s of {limit:.0} ({:.2})",
        slow.max_concurrent(),
        throughput / limit
    );
    assert!(slow.max_concurrent() <= MAX_CONCURRENCY as u64);
    assert!(throughput >= 0.9 * limit, "{throughput:.1}/s of {limit}/s");
}
