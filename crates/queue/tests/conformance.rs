//! The queue contract, checked against both implementations: JetStream on a real nats-server
//! started by each test, and the in-process queue.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rewardfleet_core::config::{NatsConfig, WorkerConfig};
use rewardfleet_core::{Candidate, Job, JobAccepted, JobResult, Reward, RewardStatus};
use rewardfleet_queue::{
    DEAD_LETTER_WORKER, Delivery, InProcessQueue, JetStreamQueue, JobSource, Queue, QueueError,
    ResultStream, SessionEvent,
};
use rewardfleet_testkit::NatsServer;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const ACK_WAIT: Duration = Duration::from_secs(1);
const MAX_DELIVER: u64 = 3;
/// How long to wait for something that should come.
const COMES: Duration = Duration::from_secs(10);
/// How long to watch for something that should not come.
const QUIET: Duration = Duration::from_millis(400);

/// One queue under test, built from the same [`worker_config`], with the server it runs on
/// (if any). On JetStream the dead-letter watcher runs, as gateways run it.
struct Harness {
    queue: Arc<dyn Queue>,
    _server: Option<NatsServer>,
    _watcher: Option<tokio_util::sync::DropGuard>,
}

impl Harness {
    async fn jetstream() -> Self {
        let server = NatsServer::start().await.expect("start nats-server");
        let queue = JetStreamQueue::connect(&nats_config(&server), &worker_config())
            .await
            .expect("connect");
        let stop = CancellationToken::new();
        tokio::spawn(queue.watch_dead_letters(stop.clone()));
        Self {
            queue: Arc::new(queue),
            _server: Some(server),
            _watcher: Some(stop.drop_guard()),
        }
    }

    fn inprocess() -> Self {
        Self {
            queue: Arc::new(InProcessQueue::new(&worker_config(), 16)),
            _server: None,
            _watcher: None,
        }
    }
}

fn nats_config(server: &NatsServer) -> NatsConfig {
    NatsConfig {
        url: server.url(),
        ..NatsConfig::default()
    }
}

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        ack_wait: ACK_WAIT,
        max_deliver: MAX_DELIVER as i64,
        embedded_queue: 64,
        ..WorkerConfig::default()
    }
}

fn accepted(session: &str, n: usize) -> JobAccepted {
    JobAccepted {
        job_id: format!("{session}.job{n}"),
        session_id: session.into(),
        candidate_ids: vec![format!("c{n}")],
    }
}

fn job(session: &str, n: usize) -> Job {
    Job {
        job_id: format!("{session}.job{n}"),
        session_id: session.into(),
        profile: "p".into(),
        candidates: vec![Candidate {
            id: format!("c{n}"),
            response: format!("response {n}"),
            ..Default::default()
        }],
    }
}

fn result(session: &str, n: usize) -> JobResult {
    JobResult {
        job_id: format!("{session}.job{n}"),
        session_id: session.into(),
        rewards: vec![Reward {
            candidate_id: format!("c{n}"),
            value: n as f64,
            ..Default::default()
        }],
        worker: "test".into(),
        judge_tokens: 0,
    }
}

/// The next delivery within `wait`, skipping passing errors; `None` if none came.
async fn next_within(source: &mut Box<dyn JobSource>, wait: Duration) -> Option<Delivery> {
    timeout(wait, async {
        loop {
            match source.next(1).await {
                Some(Ok(delivery)) => return Some(delivery),
                Some(Err(e)) => eprintln!("passing error: {e}"),
                None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

async fn next_delivery(source: &mut Box<dyn JobSource>) -> Delivery {
    next_within(source, COMES).await.expect("a delivery")
}

/// The next event within `wait`, skipping passing errors; `None` if none came.
async fn next_event_within(stream: &mut ResultStream, wait: Duration) -> Option<SessionEvent> {
    timeout(wait, async {
        loop {
            match stream.next().await {
                Some(Ok(event)) => return Some(event),
                Some(Err(e)) => eprintln!("passing error: {e}"),
                None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

async fn next_event(stream: &mut ResultStream) -> SessionEvent {
    next_event_within(stream, COMES).await.expect("an event")
}

/// The next result within `wait`, skipping other events.
async fn next_result_within(stream: &mut ResultStream, wait: Duration) -> Option<JobResult> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event_within(stream, left).await? {
            SessionEvent::Result(result, _) => return Some(result),
            SessionEvent::Accepted(_) | SessionEvent::CaughtUp => {}
        }
    }
}

async fn next_result(stream: &mut ResultStream) -> JobResult {
    next_result_within(stream, COMES).await.expect("a result")
}

// ---- the contract ---------------------------------------------------------------------------

async fn round_trip(h: &Harness) {
    let q = &h.queue;
    q.publish_job(&job("s1", 1)).await.expect("publish");
    let mut source = q.jobs("default", 4).await.expect("source");
    let d = next_delivery(&mut source).await;
    assert_eq!(d.job, job("s1", 1));
    assert_eq!(d.attempt, 1);
    assert_eq!(d.max_deliver, MAX_DELIVER);
    assert!(!d.is_last_attempt());
    d.acker.ack().await.expect("ack");
    // Acked: not delivered again, even after ack_wait.
    assert!(next_within(&mut source, ACK_WAIT + QUIET).await.is_none());
}

async fn duplicate_job_is_delivered_once(h: &Harness) {
    let q = &h.queue;
    q.publish_job(&job("s1", 1)).await.expect("publish");
    q.publish_job(&job("s1", 1))
        .await
        .expect("duplicate publish is accepted");
    let mut source = q.jobs("default", 4).await.expect("source");
    let d = next_delivery(&mut source).await;
    d.acker.ack().await.expect("ack");
    // Again after the ack: still within the dedup window.
    q.publish_job(&job("s1", 1))
        .await
        .expect("duplicate publish is accepted");
    assert!(next_within(&mut source, QUIET).await.is_none());
}

async fn results_replay_then_live(h: &Harness) {
    let q = &h.queue;
    q.publish_result(&result("s1", 1)).await.expect("publish");
    q.publish_result(&result("other", 9))
        .await
        .expect("publish");
    q.publish_result(&result("s1", 2)).await.expect("publish");
    q.publish_result(&result("s1", 1))
        .await
        .expect("duplicate result is accepted");

    // A late subscriber gets the retained ones, in order, then live ones.
    let mut stream = q.results("s1").await.expect("subscribe");
    assert_eq!(next_result(&mut stream).await, result("s1", 1));
    assert_eq!(next_result(&mut stream).await, result("s1", 2));
    q.publish_result(&result("s1", 3)).await.expect("publish");
    assert_eq!(next_result(&mut stream).await, result("s1", 3));
    assert!(
        next_result_within(&mut stream, QUIET).await.is_none(),
        "no duplicate, no other session"
    );
    drop(stream);

    // Re-subscribing (a resumed session) replays everything retained.
    let mut again = q.results("s1").await.expect("subscribe");
    for n in 1..=3 {
        assert_eq!(next_result(&mut again).await, result("s1", n));
    }
}

async fn session_ids_need_no_escaping_by_callers(h: &Harness) {
    let q = &h.queue;
    for session in ["a.b", "a_2Eb", "with space", "*", ""] {
        q.publish_result(&result(session, 1))
            .await
            .expect("publish");
    }
    for session in ["a.b", "a_2Eb", "with space", "*", ""] {
        let mut stream = q.results(session).await.expect("subscribe");
        assert_eq!(next_result(&mut stream).await, result(session, 1));
        assert!(
            next_result_within(&mut stream, Duration::from_millis(100))
                .await
                .is_none()
        );
    }
}

async fn nak_redelivers_with_next_attempt(h: &Harness) {
    let q = &h.queue;
    q.publish_job(&job("s1", 1)).await.expect("publish");
    let mut source = q.jobs("default", 4).await.expect("source");
    let d = next_delivery(&mut source).await;
    d.acker.nak(Duration::from_millis(100)).await.expect("nak");
    let d2 = next_delivery(&mut source).await;
    assert_eq!(d2.job, job("s1", 1));
    assert_eq!(d2.attempt, 2);
    d2.acker.ack().await.expect("ack");
}

async fn unacked_job_is_redelivered_after_ack_wait(h: &Harness) {
    let q = &h.queue;
    q.publish_job(&job("s1", 1)).await.expect("publish");
    let mut source = q.jobs("default", 4).await.expect("source");
    let started = tokio::time::Instant::now();
    let d = next_delivery(&mut source).await;
    // Neither acked nor dropped: the worker "hangs".
    let d2 = next_delivery(&mut source).await;
    assert!(started.elapsed() >= ACK_WAIT - Duration::from_millis(100));
    assert_eq!(d2.job, d.job);
    assert_eq!(d2.attempt, 2);
    d2.acker.ack().await.expect("ack");
}

async fn progress_prevents_redelivery(h: &Harness) {
    let q = &h.queue;
    q.publish_job(&job("s1", 1)).await.expect("publish");
    let mut source = q.jobs("default", 4).await.expect("source");
    let d = next_delivery(&mut source).await;
    // Work for 2.5 × ack_wait, reporting progress every 0.3 s.
    for _ in 0..8 {
        d.acker.progress().await.expect("progress");
        assert!(
            next_within(&mut source, Duration::from_millis(300))
                .await
                .is_none()
        );
    }
    d.acker.ack().await.expect("ack");
    assert!(next_within(&mut source, ACK_WAIT + QUIET).await.is_none());
}

async fn attempts_reach_max_deliver(h: &Harness) {
    let q = &h.queue;
    q.publish_job(&job("s1", 1)).await.expect("publish");
    let mut source = q.jobs("default", 4).await.expect("source");
    for attempt in 1..=MAX_DELIVER {
        let d = next_delivery(&mut source).await;
        assert_eq!(d.attempt, attempt);
        assert_eq!(d.is_last_attempt(), attempt == MAX_DELIVER);
        d.acker.nak(Duration::from_millis(50)).await.expect("nak");
    }
    // Given up: no delivery past max_deliver.
    assert!(next_within(&mut source, ACK_WAIT + QUIET).await.is_none());
}

async fn given_up_job_gets_failed_rewards(h: &Harness) {
    let q = &h.queue;
    let mut stream = q.results("s1").await.expect("subscribe");
    q.publish_job(&job("s1", 1)).await.expect("publish");
    let mut source = q.jobs("default", 4).await.expect("source");
    for _ in 1..=MAX_DELIVER {
        // Taken and never answered: the worker died each time.
        let _held = next_delivery(&mut source).await;
    }
    // Keep pulling meanwhile, as a live worker does (JetStream gives up a job when it would
    // deliver it once more).
    let (result, extra) = tokio::join!(
        next_result(&mut stream),
        next_within(&mut source, 4 * ACK_WAIT)
    );
    assert!(extra.is_none(), "no delivery past max_deliver");
    assert_eq!(result.job_id, "s1.job1");
    assert_eq!(result.worker, DEAD_LETTER_WORKER);
    assert_eq!(result.rewards.len(), 1);
    assert_eq!(result.rewards[0].candidate_id, "c1");
    assert_eq!(result.rewards[0].status(), RewardStatus::Failed);
    assert!(
        result.rewards[0]
            .error
            .contains(&format!("gave up after {MAX_DELIVER} deliveries")),
        "{}",
        result.rewards[0].error
    );
    assert!(next_within(&mut source, QUIET).await.is_none());
}

async fn ledger_replays_in_order_then_caught_up(h: &Harness) {
    let q = &h.queue;
    q.record_accepted(&accepted("s1", 1)).await.expect("record");
    q.record_accepted(&accepted("s1", 2)).await.expect("record");
    q.record_accepted(&accepted("s1", 1))
        .await
        .expect("a duplicate entry is accepted");
    q.record_accepted(&accepted("other", 7))
        .await
        .expect("record");
    q.publish_result(&result("s1", 1)).await.expect("publish");

    let mut stream = q.results("s1").await.expect("subscribe");
    assert_eq!(
        next_event(&mut stream).await,
        SessionEvent::Accepted(accepted("s1", 1))
    );
    assert_eq!(
        next_event(&mut stream).await,
        SessionEvent::Accepted(accepted("s1", 2))
    );
    assert_eq!(
        next_event(&mut stream).await,
        SessionEvent::Result(result("s1", 1), Default::default())
    );
    assert_eq!(next_event(&mut stream).await, SessionEvent::CaughtUp);
    q.publish_result(&result("s1", 2)).await.expect("publish");
    assert_eq!(
        next_event(&mut stream).await,
        SessionEvent::Result(result("s1", 2), Default::default())
    );
    assert!(next_event_within(&mut stream, QUIET).await.is_none());
}

async fn a_new_session_is_caught_up_at_once(h: &Harness) {
    let q = &h.queue;
    q.publish_result(&result("other", 1))
        .await
        .expect("publish");
    let mut stream = q.results("s1").await.expect("subscribe");
    assert_eq!(next_event(&mut stream).await, SessionEvent::CaughtUp);
    q.record_accepted(&accepted("s1", 1)).await.expect("record");
    assert_eq!(
        next_event(&mut stream).await,
        SessionEvent::Accepted(accepted("s1", 1))
    );
}

async fn abandoned_session_jobs_are_skipped(h: &Harness) {
    let q = &h.queue;
    for n in 0..3 {
        q.publish_job(&job("gone", n)).await.expect("publish");
    }
    q.publish_job(&job("kept", 9)).await.expect("publish");
    q.publish_result(&result("gone", 0)).await.expect("publish");
    q.abandon_session("gone").await.expect("abandon");
    let mut source = q.jobs("default", 4).await.expect("source");
    let d = next_delivery(&mut source).await;
    assert_eq!(d.job, job("kept", 9));
    d.acker.ack().await.expect("ack");
    assert!(next_within(&mut source, QUIET).await.is_none());
    let mut stream = q.results("gone").await.expect("subscribe");
    assert_eq!(next_event(&mut stream).await, SessionEvent::CaughtUp);
}

async fn forget_session_purges(h: &Harness) {
    let q = &h.queue;
    q.publish_result(&result("s1", 1)).await.expect("publish");
    q.publish_result(&result("s2", 1)).await.expect("publish");
    q.forget_session("s1").await.expect("forget");
    let mut stream = q.results("s1").await.expect("subscribe");
    assert!(next_result_within(&mut stream, QUIET).await.is_none());
    q.publish_result(&result("s1", 2)).await.expect("publish");
    assert_eq!(next_result(&mut stream).await, result("s1", 2));
    // Other sessions keep theirs.
    let mut other = q.results("s2").await.expect("subscribe");
    assert_eq!(next_result(&mut other).await, result("s2", 1));
}

async fn two_sources_share_a_pool(h: &Harness) {
    let q = &h.queue;
    for n in 0..10 {
        q.publish_job(&job("s1", n)).await.expect("publish");
    }
    let mut a = q.jobs("default", 5).await.expect("source a");
    let mut b = q.jobs("default", 5).await.expect("source b");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next_delivery(&mut a).await);
    }
    for _ in 0..5 {
        held.push(next_delivery(&mut b).await);
    }
    let ids: HashSet<String> = held.iter().map(|d| d.job.job_id.clone()).collect();
    assert_eq!(ids.len(), 10, "each job to one source");
    assert!(held.iter().all(|d| d.attempt == 1));
    for d in held {
        d.acker.ack().await.expect("ack");
    }
    assert!(next_within(&mut a, QUIET).await.is_none());
    assert!(
        next_within(&mut b, Duration::from_millis(50))
            .await
            .is_none()
    );
}

async fn zero_capacity_is_refused(h: &Harness) {
    assert!(matches!(
        h.queue.jobs("default", 0).await.err(),
        Some(QueueError::Setup { .. })
    ));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod jetstream {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Harness::jetstream().await).await;
                }
            )*
        }
        mod inprocess {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Harness::inprocess()).await;
                }
            )*
        }
    };
}

conformance!(
    round_trip,
    duplicate_job_is_delivered_once,
    results_replay_then_live,
    session_ids_need_no_escaping_by_callers,
    nak_redelivers_with_next_attempt,
    unacked_job_is_redelivered_after_ack_wait,
    progress_prevents_redelivery,
    attempts_reach_max_deliver,
    given_up_job_gets_failed_rewards,
    ledger_replays_in_order_then_caught_up,
    a_new_session_is_caught_up_at_once,
    abandoned_session_jobs_are_skipped,
    forget_session_purges,
    two_sources_share_a_pool,
    zero_capacity_is_refused,
);
