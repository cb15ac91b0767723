//! A worker pulls only what it can start: with a slow judge and more jobs than slots, every job
//! is delivered once (none waits in the worker while its ack timer runs out).
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rewardfleet_core::config::Config;
use rewardfleet_core::{Candidate, Job};
use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Latency};
use rewardfleet_judge::{JudgeCache, JudgeSet};
use rewardfleet_queue::{JetStreamQueue, Queue};
use rewardfleet_scorers::ScorerSource;
use rewardfleet_testkit::NatsServer;
use rewardfleet_worker::Worker;
use tokio_util::sync::CancellationToken;

const JOBS: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_jobs_than_slots_are_each_delivered_once() {
    let nats = NatsServer::start().await.unwrap();
    // Judgements of 0.5 to 2.5 s, so slots free up one at a time; ack_wait is shorter than
    // one judgement: a job fetched before a slot is free would be redelivered meanwhile.
    let judge = FakeJudge::start(FakeJudgeConfig {
        latency: Latency::Uniform(Duration::from_millis(500), Duration::from_millis(2500)),
        seed: 7,
        ..Default::default()
    })
    .await
    .unwrap();
    let config = Config::from_toml(&format!(
        r#"
[nats]
url = "{}"

[worker]
max_concurrent_jobs = 4
ack_wait = "1s"

[judge_cache]
enabled = false

[[judge]]
name = "judge"
base_url = "{}"
model = "fake"
max_concurrency = 16

[profile.judged]
components = [{{ scorer = "judge", method = "reference" }}]
"#,
        nats.url(),
        judge.base_url()
    ))
    .unwrap();
    let judges = JudgeSet::new(&config.judge, HashMap::new(), JudgeCache::None).unwrap();
    let sources: Vec<&dyn ScorerSource> = vec![&judges];
    let pipeline = rewardfleet_scorers::build_pipeline(&config, &sources).unwrap();
    let nats_config = config.nats.clone().unwrap();
    let queue = Arc::new(
        JetStreamQueue::connect(&nats_config, &config.worker)
            .await
            .unwrap(),
    );
    for n in 0..JOBS {
        queue
            .publish_job(&Job {
                job_id: format!("s.job{n}"),
                session_id: "s".into(),
                profile: "judged".into(),
                candidates: vec![Candidate {
                    id: format!("c{n}"),
                    response: "answer".into(),
                    reference: Some("answer".into()),
                    ..Default::default()
                }],
            })
            .await
            .unwrap();
    }

    let worker = Worker::new(queue, pipeline, config.worker.clone(), "w");
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    tokio::time::timeout(Duration::from_secs(60), async {
        while stats.jobs_done.load(Ordering::Relaxed) < JOBS as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every job done within 60 s");
    // Past another ack_wait: nothing comes back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(stats.redeliveries.load(Ordering::Relaxed), 0);
    assert_eq!(stats.deliveries.load(Ordering::Relaxed), JOBS as u64);
    assert_eq!(judge.calls(), JOBS as u64);
}
