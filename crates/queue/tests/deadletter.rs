//! Dead letters on a real nats-server: a job whose every worker stops before acknowledging it
//! gets FAILED rewards once `max_deliver` is spent, and leaves the jobs stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::stream::RawMessageErrorKind;
use futures::StreamExt;
use prost::Message as _;
use rewardfleet_core::config::{NatsConfig, WorkerConfig};
use rewardfleet_core::{Candidate, Job, JobResult, RewardStatus};
use rewardfleet_queue::jetstream::DEAD_LETTER_WORKER;
use rewardfleet_queue::{JetStreamQueue, Queue, ResultStream, SessionEvent};
use rewardfleet_testkit::NatsServer;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const SESSION: &str = "s";

async fn connect(server: &NatsServer) -> JetStreamQueue {
    let nats = NatsConfig {
        url: server.url(),
        ..NatsConfig::default()
    };
    let worker = WorkerConfig {
        ack_wait: Duration::from_secs(1),
        max_deliver: 2,
        ..WorkerConfig::default()
    };
    JetStreamQueue::connect(&nats, &worker)
        .await
        .expect("connect")
}

fn job(name: &str, candidates: usize) -> Job {
    Job {
        job_id: format!("{SESSION}.{name}"),
        session_id: SESSION.into(),
        profile: "p".into(),
        candidates: (0..candidates)
            .map(|n| Candidate {
                id: format!("{name}-{n}"),
                response: "r".into(),
                ..Default::default()
            })
            .collect(),
    }
}

/// A worker of pool `default` that "crashes" (drops the delivery: no ack, no nak) on every job
/// whose id contains `crash`, after publishing its result when the id also contains `scored`,
/// and scores the others properly (result, then ack). It keeps pulling, as a fleet's restarted
/// workers would. Returns the number of crashes.
fn crashing_worker(
    queue: JetStreamQueue,
    stop: CancellationToken,
) -> (JoinHandle<()>, Arc<AtomicU64>) {
    let crashes = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&crashes);
    let task = tokio::spawn(async move {
        let mut source = queue.jobs("default", 1).await.expect("source");
        loop {
            let item = tokio::select! {
                () = stop.cancelled() => return,
                item = source.next(1) => item,
            };
            let delivery = match item {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    eprintln!("passing error: {e}");
                    continue;
                }
                None => return,
            };
            let crash = delivery.job.job_id.contains("crash");
            if crash && !delivery.job.job_id.contains("scored") {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(delivery);
                continue;
            }
            let result = JobResult {
                job_id: delivery.job.job_id.clone(),
                session_id: delivery.job.session_id.clone(),
                rewards: delivery
                    .job
                    .candidates
                    .iter()
                    .map(|c| rewardfleet_core::Reward {
                        candidate_id: c.id.clone(),
                        value: 1.0,
                        status: RewardStatus::Ok as i32,
                        ..Default::default()
                    })
                    .collect(),
                worker: "test-worker".into(),
                judge_tokens: 0,
            };
            queue.publish_result(&result).await.expect("publish result");
            if crash {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(delivery);
                continue;
            }
            delivery.acker.ack().await.expect("ack");
        }
    });
    (task, crashes)
}

/// Waits for `crashes` deliveries to end in a crash, then past the last `ack_wait`, when the
/// server has given up on them; then has a later job scored and acknowledged, so that the ack
/// floor passes the dead ones. Returns that job once it is acknowledged.
async fn past_the_last_delivery(
    gateway: &JetStreamQueue,
    results: &mut ResultStream,
    crashes: &AtomicU64,
    deliveries: u64,
) -> Job {
    timeout(Duration::from_secs(15), async {
        while crashes.load(Ordering::SeqCst) < deliveries {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{deliveries} crashed deliveries within 15 s"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let fine = job("fine", 1);
    gateway.publish_job(&fine).await.expect("publish");
    results_for(results, &[&fine.job_id]).await;
    // Its result comes before its ack: wait for the ack (the job leaves the work-queue stream).
    timeout(Duration::from_secs(10), async {
        while jobs_on(gateway, "rf.jobs.default.>").await.contains(&fine) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the later job acknowledged within 10 s");
    fine
}

/// Reads results until every one of `job_ids` has one.
async fn results_for(results: &mut ResultStream, job_ids: &[&str]) -> HashMap<String, JobResult> {
    let mut got = HashMap::new();
    timeout(Duration::from_secs(30), async {
        while job_ids.iter().any(|id| !got.contains_key(*id)) {
            match results.next().await {
                Some(Ok(SessionEvent::Result(r, _))) => {
                    got.insert(r.job_id.clone(), r);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => eprintln!("passing error: {e}"),
                None => panic!("results ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("results for {job_ids:?} within 30 s; got {:?}", got.keys()));
    got
}

fn assert_dead_lettered(result: &JobResult, job: &Job) {
    assert_eq!(result.worker, DEAD_LETTER_WORKER);
    assert_eq!(result.session_id, SESSION);
    let ids: Vec<_> = result
        .rewards
        .iter()
        .map(|r| r.candidate_id.as_str())
        .collect();
    let expected: Vec<_> = job.candidates.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, expected, "one reward per candidate");
    for reward in &result.rewards {
        assert_eq!(reward.status, RewardStatus::Failed as i32, "{reward:?}");
        assert!(
            reward.error.contains("gave up after 2 deliveries") && reward.error.contains("crash"),
            "{:?}",
            reward.error
        );
    }
}

/// The jobs left in the stream on `subject`.
async fn jobs_on(queue: &JetStreamQueue, subject: &str) -> Vec<Job> {
    let js = async_nats::jetstream::new(queue.client().clone());
    let stream = js.get_stream_no_info("RF_JOBS").await.expect("jobs stream");
    let mut jobs = Vec::new();
    let mut next = 1;
    loop {
        match stream.get_first_raw_message_by_subject(subject, next).await {
            Ok(m) => {
                next = m.sequence + 1;
                jobs.push(Job::decode(m.payload).expect("a job"));
            }
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return jobs,
            Err(e) => panic!("read jobs stream: {e}"),
        }
    }
}

#[tokio::test]
async fn a_job_whose_workers_all_crash_gets_failed_rewards() {
    let server = NatsServer::start().await.expect("nats-server");
    let gateway = connect(&server).await;
    let worker = connect(&server).await;
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(gateway.watch_dead_letters(shutdown.clone()));

    // Noise the watcher must shrug off: not JSON, and an advisory for a job that does not exist.
    let advisory = gateway
        .dead_letter_advisory_subject()
        .replace('*', "rf-workers-default");
    for payload in [
        &b"not json"[..],
        br#"{"stream":"RF_JOBS","consumer":"rf-workers-default","stream_seq":999,"deliveries":2}"#,
    ] {
        gateway
            .client()
            .publish(advisory.clone(), payload.to_vec().into())
            .await
            .expect("publish advisory");
    }

    let mut results = gateway.results(SESSION).await.expect("results");
    let crash = job("crash", 2);
    let fine = job("fine", 1);
    let idle = job("idle", 1);
    gateway.publish_job(&crash).await.expect("publish");
    gateway.publish_job(&fine).await.expect("publish");
    // A job of another pool, whose consumer exists but pulls nothing: it must stay untouched.
    let other = gateway.clone().with_pool("other").expect("pool");
    other.publish_job(&idle).await.expect("publish");
    let _idle_source = worker.jobs("other", 1).await.expect("source");

    let stop = CancellationToken::new();
    let (worker_task, crashes) = crashing_worker(worker.clone(), stop.clone());
    let got = results_for(&mut results, &[&crash.job_id, &fine.job_id]).await;
    assert_dead_lettered(&got[&crash.job_id], &crash);
    assert_eq!(got[&fine.job_id].worker, "test-worker");
    assert_eq!(got[&fine.job_id].rewards[0].status, RewardStatus::Ok as i32);

    // Past another ack_wait: never a third delivery, the dead job is gone, the idle one stays.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        crashes.load(Ordering::SeqCst),
        2,
        "delivered exactly max_deliver times"
    );
    assert!(jobs_on(&gateway, "rf.jobs.default.>").await.is_empty());
    assert_eq!(jobs_on(&gateway, "rf.jobs.other.>").await, vec![idle]);
    assert!(
        !got.contains_key(&job("idle", 1).job_id),
        "no result for a job nobody pulled"
    );

    stop.cancel();
    worker_task.await.expect("worker");
    shutdown.cancel();
    timeout(Duration::from_secs(5), watcher)
        .await
        .expect("watcher stops on shutdown")
        .expect("watcher did not panic");
}

#[tokio::test]
async fn the_sweep_finds_a_dead_job_whose_advisory_nobody_heard() {
    let server = NatsServer::start().await.expect("nats-server");
    let gateway = connect(&server).await;
    let worker = connect(&server).await;
    let mut results = gateway.results(SESSION).await.expect("results");

    // No watcher: the job dies and its advisory goes unheard.
    let crash = job("crash", 3);
    gateway.publish_job(&crash).await.expect("publish");
    let stop = CancellationToken::new();
    let (worker_task, crashes) = crashing_worker(worker.clone(), stop.clone());
    past_the_last_delivery(&gateway, &mut results, &crashes, 2).await;
    assert_eq!(
        jobs_on(&gateway, "rf.jobs.default.>").await,
        vec![crash.clone()]
    );

    assert_eq!(gateway.sweep_dead_letters().await.expect("sweep"), 1);
    let got = results_for(&mut results, &[&crash.job_id]).await;
    assert_dead_lettered(&got[&crash.job_id], &crash);
    assert!(jobs_on(&gateway, "rf.jobs.default.>").await.is_empty());
    assert_eq!(
        gateway.sweep_dead_letters().await.expect("sweep"),
        0,
        "nothing twice"
    );
    assert_eq!(crashes.load(Ordering::SeqCst), 2);

    stop.cancel();
    worker_task.await.expect("worker");
}

/// A job whose worker published its result and stopped before the ack, on every delivery, is
/// deleted by the sweep without FAILED rewards and without counting as dead-lettered: the
/// trainer already had its rewards (the chaos run found such jobs after a server restart).
#[tokio::test]
async fn a_dead_job_that_already_had_its_result_is_deleted_not_dead_lettered() {
    let server = NatsServer::start().await.expect("nats-server");
    let gateway = connect(&server).await;
    let worker = connect(&server).await;
    let mut results = gateway.results(SESSION).await.expect("results");

    let scored = job("scored-crash", 2);
    let dead = job("crash", 1);
    gateway.publish_job(&scored).await.expect("publish");
    gateway.publish_job(&dead).await.expect("publish");
    let stop = CancellationToken::new();
    let (worker_task, crashes) = crashing_worker(worker.clone(), stop.clone());
    let fine = past_the_last_delivery(&gateway, &mut results, &crashes, 4).await;
    assert_eq!(
        jobs_on(&gateway, "rf.jobs.default.>").await,
        vec![scored.clone(), dead.clone()]
    );

    assert_eq!(
        gateway.sweep_dead_letters().await.expect("sweep"),
        1,
        "only the job without a result is dead-lettered"
    );
    let got = results_for(&mut results, &[&dead.job_id]).await;
    assert_dead_lettered(&got[&dead.job_id], &dead);
    assert!(jobs_on(&gateway, "rf.jobs.default.>").await.is_empty());
    // The scored job's FAILED result was dropped by the results stream: a fresh reader of the
    // session sees its one result, the worker's.
    let mut again = gateway.results(SESSION).await.expect("results");
    let all = results_for(&mut again, &[&scored.job_id, &dead.job_id, &fine.job_id]).await;
    assert_eq!(all[&scored.job_id].worker, "test-worker");
    assert!(
        all[&scored.job_id]
            .rewards
            .iter()
            .all(|r| r.status == RewardStatus::Ok as i32)
    );

    stop.cancel();
    worker_task.await.expect("worker");
}

#[tokio::test]
async fn the_watcher_keeps_working_across_a_server_restart() {
    let mut server = NatsServer::start().await.expect("nats-server");
    let gateway = connect(&server).await;
    let worker = connect(&server).await;
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(gateway.watch_dead_letters(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.restart().await.expect("restart");
    let mut results = gateway.results(SESSION).await.expect("results");
    let crash = job("crash", 1);
    gateway.publish_job(&crash).await.expect("publish");
    let stop = CancellationToken::new();
    let (worker_task, crashes) = crashing_worker(worker.clone(), stop.clone());
    let got = results_for(&mut results, &[&crash.job_id]).await;
    assert_dead_lettered(&got[&crash.job_id], &crash);
    assert_eq!(crashes.load(Ordering::SeqCst), 2);
    assert!(jobs_on(&gateway, "rf.jobs.default.>").await.is_empty());

    stop.cancel();
    worker_task.await.expect("worker");
    shutdown.cancel();
    timeout(Duration::from_secs(5), watcher)
        .await
        .expect("watcher stops on shutdown")
        .expect("watcher did not panic");
}
