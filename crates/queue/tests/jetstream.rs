//! What only JetStream has: a server that can crash and restart, pull capacity, auth, set-up.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use rewardfleet_core::config::{NatsConfig, WorkerConfig};
use rewardfleet_core::{Job, JobResult};
use rewardfleet_queue::jetstream::JetStreamOptions;
use rewardfleet_queue::{
    Delivery, JetStreamQueue, JobSource, Queue, QueueError, ResultStream, SessionEvent,
};
use rewardfleet_testkit::NatsServer;
use tokio::time::timeout;

fn nats_config(server: &NatsServer) -> NatsConfig {
    NatsConfig {
        url: server.url(),
        ..NatsConfig::default()
    }
}

fn worker_config(ack_wait: Duration) -> WorkerConfig {
    WorkerConfig {
        ack_wait,
        max_deliver: 3,
        ..WorkerConfig::default()
    }
}

async fn connect(server: &NatsServer, ack_wait: Duration) -> JetStreamQueue {
    JetStreamQueue::connect(&nats_config(server), &worker_config(ack_wait))
        .await
        .expect("connect")
}

fn job(n: usize) -> Job {
    Job {
        job_id: format!("s.job{n}"),
        session_id: "s".into(),
        profile: "p".into(),
        ..Default::default()
    }
}

/// The next result, skipping the session's other events.
async fn next_result(results: &mut ResultStream) -> JobResult {
    loop {
        match results.next().await {
            Some(Ok(SessionEvent::Result(r, _))) => return r,
            Some(Ok(_)) => {}
            Some(Err(e)) => eprintln!("passing error: {e}"),
            None => panic!("results stream ended"),
        }
    }
}

async fn next_delivery(source: &mut Box<dyn JobSource>, room: usize) -> Delivery {
    timeout(Duration::from_secs(10), async {
        loop {
            match source.next(room).await {
                Some(Ok(d)) => return d,
                Some(Err(e)) => eprintln!("passing error: {e}"),
                None => panic!("source closed"),
            }
        }
    })
    .await
    .expect("a delivery within 10 s")
}

#[tokio::test]
async fn room_bounds_what_a_source_fetches() {
    let server = NatsServer::start().await.expect("nats-server");
    let queue = connect(&server, Duration::from_secs(30)).await;
    for n in 0..20 {
        queue.publish_job(&job(n)).await.expect("publish");
    }
    let mut source = queue.jobs("default", 3).await.expect("source");
    let settle = || tokio::time::sleep(Duration::from_millis(300));

    // Room for 3: one handed out, at most 2 fetched ahead for the caller's free slots.
    let first = next_delivery(&mut source, 3).await;
    settle().await;
    let status = queue.pool_status("default").await.expect("status");
    assert!(
        status.ack_pending <= 3,
        "1 handed out + at most 2 held: {status:?}"
    );
    assert_eq!(status.pending + status.ack_pending as u64, 20);

    let mut held = vec![first];
    held.push(next_delivery(&mut source, 2).await);
    held.push(next_delivery(&mut source, 1).await);
    settle().await;
    let status = queue.pool_status("default").await.expect("status");
    assert_eq!(
        status.ack_pending, 3,
        "nothing pulled ahead of demand: {status:?}"
    );
    assert_eq!(status.pending, 17);

    // Room for one more pulls exactly one more.
    held.push(next_delivery(&mut source, 1).await);
    settle().await;
    let status = queue.pool_status("default").await.expect("status");
    assert_eq!(status.ack_pending, 4, "{status:?}");
    for d in held {
        d.acker.ack().await.expect("ack");
    }
}

#[tokio::test]
async fn kill_and_restart_loses_nothing() {
    const JOBS: usize = 16;
    let mut server = NatsServer::start().await.expect("nats-server");
    let gateway = connect(&server, Duration::from_secs(2)).await;
    let worker = connect(&server, Duration::from_secs(2)).await;

    for n in 0..JOBS / 2 {
        gateway.publish_job(&job(n)).await.expect("publish");
    }
    let mut results = gateway.results("s").await.expect("results");

    // A worker: score (slowly), publish the result, then ack; passing errors are only counted.
    let mut source = worker.jobs("default", 2).await.expect("source");
    let worker_task = tokio::spawn(async move {
        let mut passing_errors = 0;
        while let Some(item) = source.next(2).await {
            let delivery = match item {
                Ok(d) => d,
                Err(_) => {
                    passing_errors += 1;
                    continue;
                }
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            let result = JobResult {
                job_id: delivery.job.job_id.clone(),
                session_id: delivery.job.session_id.clone(),
                worker: "w".into(),
                ..Default::default()
            };
            // During the outage these fail or complete late; a failure means no ack, so the
            // job comes back after ack_wait.
            if worker.publish_result(&result).await.is_ok() {
                let _ = delivery.acker.ack().await;
            }
        }
        passing_errors
    });

    let mut seen: HashMap<String, usize> = HashMap::new();
    let first = timeout(Duration::from_secs(10), next_result(&mut results))
        .await
        .expect("a first result");
    *seen.entry(first.job_id).or_default() += 1;

    server.kill().await.expect("kill -9");
    // Jobs published during the outage complete after the restart.
    let publisher = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            for n in JOBS / 2..JOBS {
                gateway
                    .publish_job(&job(n))
                    .await
                    .expect("publish across the outage");
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart().await.expect("restart");
    timeout(Duration::from_secs(15), publisher)
        .await
        .expect("publishes complete after the restart")
        .expect("publisher");

    let collected = timeout(Duration::from_secs(30), async {
        while seen.len() < JOBS {
            match results.next().await {
                Some(Ok(SessionEvent::Result(r, _))) => *seen.entry(r.job_id).or_default() += 1,
                Some(Ok(_)) => {}
                Some(Err(e)) => eprintln!("results: passing error: {e}"),
                None => panic!("results stream ended"),
            }
        }
    })
    .await;
    assert!(
        collected.is_ok(),
        "results after restart: {} of {JOBS}",
        seen.len()
    );
    let expected: HashSet<String> = (0..JOBS).map(|n| job(n).job_id).collect();
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(
        seen.values().all(|&count| count == 1),
        "each result once: {seen:?}"
    );
    // The worker keeps pulling after the restart (it got the jobs published after it).
    worker_task.abort();
}

#[tokio::test]
async fn undecodable_job_is_terminated_and_reported() {
    let server = NatsServer::start().await.expect("nats-server");
    let queue = connect(&server, Duration::from_secs(1)).await;
    let js = async_nats::jetstream::new(queue.client().clone());
    js.publish(
        queue.session_jobs_subject("default", "s"),
        "not a job \u{ff}".into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    queue.publish_job(&job(1)).await.expect("publish");
    let mut source = queue.jobs("default", 4).await.expect("source");
    match timeout(Duration::from_secs(10), source.next(1)).await {
        Ok(Some(Err(QueueError::Malformed { what: message, .. }))) => {
            assert!(message.contains("terminated"))
        }
        _ => panic!("expected a Malformed error first"),
    }
    let d = next_delivery(&mut source, 1).await;
    assert_eq!(d.job, job(1));
    d.acker.ack().await.expect("ack");
    // Terminated, so not redelivered after ack_wait.
    assert!(
        timeout(Duration::from_millis(1500), source.next(1))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn token_is_used_and_required() {
    let server = NatsServer::start_with_token("s3cret")
        .await
        .expect("nats-server");
    let options = JetStreamOptions {
        token: Some("s3cret".into()),
        client_name: Some("test".into()),
    };
    assert!(!format!("{options:?}").contains("s3cret"), "token redacted");
    JetStreamQueue::connect_with(
        &nats_config(&server),
        &worker_config(Duration::from_secs(1)),
        options,
    )
    .await
    .expect("connect with token");
    let refused = JetStreamQueue::connect(
        &nats_config(&server),
        &worker_config(Duration::from_secs(1)),
    )
    .await;
    assert!(
        matches!(refused, Err(QueueError::Setup { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn setup_is_idempotent_and_validated() {
    let server = NatsServer::start().await.expect("nats-server");
    let a = connect(&server, Duration::from_secs(1)).await;
    let b = connect(&server, Duration::from_secs(2)).await; // updates ack_wait
    let _source = a.jobs("gpu", 2).await.expect("consumer");
    let _again = b.jobs("gpu", 2).await.expect("same consumer, updated");
    assert!(matches!(
        a.jobs("bad.pool", 2).await.err(),
        Some(QueueError::Setup { .. })
    ));
    assert!(matches!(
        a.clone().with_pool("a b"),
        Err(QueueError::Setup { .. })
    ));
    let gpu = a.with_pool("gpu").expect("pool");
    gpu.publish_job(&job(1)).await.expect("publish");
    assert_eq!(gpu.pool_status("gpu").await.expect("status").pending, 1);
    assert!(matches!(
        gpu.pool_status("nobody").await,
        Err(QueueError::Setup { .. })
    ));
    assert!(matches!(
        gpu.publish_job(&Job::default()).await,
        Err(QueueError::Malformed { .. })
    ));
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let port = rewardfleet_testkit::free_port().expect("port");
    let config = NatsConfig {
        url: format!("nats://127.0.0.1:{port}"),
        ..NatsConfig::default()
    };
    let err = JetStreamQueue::connect(&config, &WorkerConfig::default())
        .await
        .expect_err("nothing listens");
    assert!(err.is_retryable(), "{err:?}");
}

/// Each session reads its results through a consumer of its own: once the session's stream is
/// dropped the consumer is deleted, so many ended sessions leave none behind (the server's
/// default would keep each for 30 s).
#[tokio::test]
async fn ended_sessions_leave_no_consumers() {
    let server = NatsServer::start().await.expect("nats-server");
    let queue = connect(&server, Duration::from_secs(5)).await;
    let nats = nats_config(&server);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut results = js
        .get_stream(&nats.results_stream)
        .await
        .expect("results stream");
    let mut streams = Vec::new();
    for i in 0..50 {
        streams.push(queue.results(&format!("s{i}")).await.expect("results"));
    }
    let open = results.info().await.expect("info").state.consumer_count;
    assert_eq!(open, 50, "one consumer per open session");
    drop(streams);
    let mut left = open;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = results.info().await.expect("info").state.consumer_count;
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0, "consumers of ended sessions still on the server");
}

/// The jobs stream is bounded: past `nats.jobs_max_messages` a job is refused as `Full`
/// (retryable, naming the limit) and nothing queued is dropped; once a worker takes a job there
/// is room again.
#[tokio::test]
async fn a_full_jobs_stream_refuses_new_jobs_and_keeps_the_queued_ones() {
    let server = NatsServer::start().await.expect("nats-server");
    let nats = NatsConfig {
        jobs_max_messages: 3,
        ..nats_config(&server)
    };
    let queue = JetStreamQueue::connect(&nats, &worker_config(Duration::from_secs(5)))
        .await
        .expect("connect");
    for n in 0..3 {
        queue.publish_job(&job(n)).await.expect("room for 3");
    }
    let refused = queue.publish_job(&job(3)).await.expect_err("full");
    assert!(matches!(refused, QueueError::Full(_)), "{refused:?}");
    assert!(refused.is_retryable());
    assert!(
        refused.to_string().contains("nats.jobs_max_messages"),
        "{refused}"
    );
    let mut source = queue.jobs("default", 1).await.expect("jobs");
    let first = next_delivery(&mut source, 1).await;
    assert_eq!(first.job.job_id, "s.job0", "the queued jobs were kept");
    first.acker.ack().await.expect("ack");
    let mut published = false;
    for _ in 0..50 {
        if queue.publish_job(&job(3)).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "room again once a job was acknowledged");
}
