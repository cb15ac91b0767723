//! A session's backlog does not starve another's: with `gateway.max_queued_candidates`, a
//! session that holds more than its fair share of the gateway's queue waits, so a `ScoreBatch`
//! call that arrives behind a large `Score` session's backlog is scored after at most that many
//! candidates, not after the whole backlog. Real gateway and worker processes, a real
//! nats-server, a slow fake judge; the same load through a gateway without the limit shows the
//! difference.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Latency};
use rewardfleet_proto::v1::ScoreBatchRequest;
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_testkit::{NatsServer, free_port};
use support::process::Process;
use support::*;

/// Candidates of the large session: 10 s of the judge's 80 a second.
const BACKLOG: usize = 800;

fn config_text(nats: &str, port: u16, judge: &str, max_queued: u32) -> String {
    format!(
        r#"
[nats]
url = "{nats}"

[gateway]
listen = "127.0.0.1:{port}"
default_profile = "judged"
max_window = 4096
max_queued_candidates = {max_queued}

[worker]
max_concurrent_jobs = 4

[[judge]]
name = "judge"
base_url = "{judge}"
model = "fake-judge"
max_concurrency = 4
timeout = "10s"
deadline = "120s"
queue_capacity = 4096

[profile.judged]
components = [{{ scorer = "judge", method = "reference" }}]
"#
    )
}

/// A large session's backlog on the gateway at `port`, then one small `ScoreBatch` call a
/// second later: (the call's latency, the large session's wall time).
async fn batch_behind_backlog(port: u16, tag: &str) -> (Duration, Duration) {
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let heavy = {
        let url = url.clone();
        let requests = session_requests(
            &format!("{tag}-heavy"),
            "judged",
            2048,
            &judged_candidates(&format!("{tag}-heavy"), BACKLOG),
            8,
        );
        tokio::spawn(async move {
            let mut client = RewardServiceClient::connect(url).await.unwrap();
            let rewards = score_all(&mut client, requests).await.unwrap();
            assert_eq!(rewards.len(), BACKLOG);
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut client = RewardServiceClient::connect(url).await.unwrap();
    let asked = Instant::now();
    let rewards = client
        .score_batch(ScoreBatchRequest {
            profile: "judged".into(),
            candidates: judged_candidates(&format!("{tag}-batch"), 8),
        })
        .await
        .unwrap()
        .into_inner()
        .rewards;
    let latency = asked.elapsed();
    assert_eq!(rewards.len(), 8);
    assert!(rewards.iter().all(|r| r.status == 1), "{rewards:?}");
    (latency, heavy.await.unwrap())
}

fn start(dir: &Path, name: &str, text: &str, args: &[&str], ready: &str) -> Process {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    Process::start(name, args, &path, ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_not_starved_by_another_sessions_backlog() {
    let nats = NatsServer::start().await.unwrap();
    let judge = FakeJudge::start(FakeJudgeConfig {
        latency: Latency::Fixed(Duration::from_millis(50)),
        ..FakeJudgeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (fair_port, open_port) = (free_port().unwrap(), free_port().unwrap());
    let fair = config_text(&nats.url(), fair_port, &judge.base_url(), 64);
    let open = config_text(&nats.url(), open_port, &judge.base_url(), 0);
    let _worker = start(dir.path(), "worker", &fair, &["worker"], "pulling");
    let _fair = start(dir.path(), "fair", &fair, &["gateway"], "listening on");
    let _open = start(dir.path(), "open", &open, &["gateway"], "listening on");

    let (fair_latency, fair_wall) = batch_behind_backlog(fair_port, "fair").await;
    let (open_latency, open_wall) = batch_behind_backlog(open_port, "open").await;
    println!(
        "a batch behind a {BACKLOG}-candidate session: {:.2} s with max_queued_candidates = 64 \
         (session {:.1} s), {:.2} s without (session {:.1} s): {:.1}x sooner",
        fair_latency.as_secs_f64(),
        fair_wall.as_secs_f64(),
        open_latency.as_secs_f64(),
        open_wall.as_secs_f64(),
        open_latency.as_secs_f64() / fair_latency.as_secs_f64()
    );
    // Behind at most 64 queued candidates (under a second of the judge's time), not behind
    // the backlog (ten seconds of it).
    assert!(
        fair_latency < fair_wall / 4,
        "the batch waited {fair_latency:?} of the session's {fair_wall:?}"
    );
    assert!(
        fair_latency * 2 < open_latency,
        "no gain: {fair_latency:?} with the limit, {open_latency:?} without"
    );
}
