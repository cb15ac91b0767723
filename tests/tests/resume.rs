//! A session's ledger survives its gateway: a session resumed on another gateway is owed every
//! candidate accepted before, and `closed` comes only after each of their rewards.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use rewardfleet_core::Candidate;
use rewardfleet_proto::v1::{Close, ScoreRequest, score_request, score_response};
use rewardfleet_testkit::{NatsServer, free_port};
use support::process::Process;
use support::*;
use tokio::time::timeout;

const N: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_closes_only_after_every_accepted_reward() {
    let nats = NatsServer::start().await.unwrap();
    let candidates: Vec<Candidate> = (0..N).map(candidate).collect();

    // Every batch accepted while no worker runs; then the stream breaks.
    let fleet = Fleet::start(&nats, 0, "").await;
    let mut requests = session_requests("resume-1", "e2e", 2048, &candidates, 128);
    requests.pop(); // no close
    let batches = requests.len() - 1;
    let (tx, rx) = tokio::sync::mpsc::channel(requests.len());
    for r in requests {
        tx.send(r).await.unwrap();
    }
    let mut responses = fleet
        .client()
        .await
        .score(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut accepted = 0;
    while accepted < batches {
        match responses.next().await.unwrap().unwrap().kind {
            Some(score_response::Kind::Accepted(_)) => accepted += 1,
            Some(score_response::Kind::Reward(r)) => panic!("no worker, yet a reward: {r:?}"),
            _ => {}
        }
    }
    drop(responses);
    drop(tx);
    // The gateway goes away with the session open.
    fleet.stop().await;

    // Another gateway: reopen the session and close it at once.
    let mut fleet = Fleet::start(&nats, 0, "").await;
    let mut client = fleet.client().await;
    let resumed = tokio::spawn(async move {
        let requests = vec![
            session_requests("resume-1", "e2e", 2048, &[], 1).remove(0),
            ScoreRequest {
                kind: Some(score_request::Kind::Close(Close {})),
            },
        ];
        let mut responses = client
            .score(futures::stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let mut rewards = HashMap::new();
        let mut closed = None;
        while let Some(response) = responses.next().await {
            match response.unwrap().kind {
                Some(score_response::Kind::Reward(r)) => {
                    assert!(closed.is_none(), "a reward after `closed`");
                    assert!(rewards.insert(r.candidate_id.clone(), r).is_none());
                }
                Some(score_response::Kind::Closed(c)) => closed = Some(c.rewards),
                _ => {}
            }
        }
        (rewards, closed)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !resumed.is_finished(),
        "the session closed while it still owed {N} rewards"
    );

    fleet.add_worker().await;
    let (rewards, closed) = timeout(Duration::from_secs(60), resumed)
        .await
        .expect("every reward within 60 s")
        .unwrap();
    assert_eq!(closed, Some(N as u64));
    assert_eq!(rewards.len(), N);
    for (i, c) in candidates.iter().enumerate() {
        assert_eq!(rewards[&c.id].value, expected(i), "{}", c.id);
    }
    fleet.stop().await;
}

/// `rewardfleet score --gateway` through a gateway killed and restarted while nothing was
/// scored yet: it resumes, waits for every reward, and writes every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_through_a_restarted_gateway_writes_every_line() {
    let nats = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = dir.path().join("fleet.toml");
    let text = config_text(Some(&nats.url()), "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&config, text).unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, N);
    let output = dir.path().join("out.jsonl");

    let mut gateway = Process::start("gateway", &["gateway"], &config, "listening");
    let mut client = support::process::spawn_score(port, &input, &output);

    // Every job queued (groups of 8 in jobs of 64), none scored: no worker runs yet.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    timeout(Duration::from_secs(30), async {
        loop {
            let mut jobs = js.get_stream("RF_JOBS").await.unwrap();
            if jobs.info().await.unwrap().state.messages == (N / 64) as u64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every job queued");

    gateway.kill9();
    let _gateway = Process::start("gateway-2", &["gateway"], &config, "listening");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _worker = Process::start("worker", &["worker"], &config, "pulling");

    let status = support::process::wait_exit(&mut client, Duration::from_secs(60)).await;
    assert!(status.success(), "rewardfleet score exited with {status}");
    let values = read_rewards(&output);
    assert_eq!(values.len(), N);
    for i in 0..N {
        assert_eq!(values[&candidate(i).id], expected(i));
    }
}

/// A session id used again after its session closed opens a new session: the same candidate ids
/// are scored again and the session closes (the queue's duplicate window used to drop its
/// jobs, whose ids were the earlier session's, and the stream waited forever). Found by the
/// `score_requests` fuzz target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_used_again_after_close_is_scored_again() {
    let nats = NatsServer::start().await.unwrap();
    let fleet = Fleet::start(&nats, 1, "").await;
    let mut client = fleet.client().await;
    let candidates: Vec<Candidate> = (0..8).map(candidate).collect();
    for round in 0..2 {
        let requests = session_requests("step-1", "e2e", 64, &candidates, 4);
        let rewards = timeout(Duration::from_secs(30), score_all(&mut client, requests))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the session never closed"))
            .unwrap();
        assert_eq!(rewards.len(), 8, "round {round}");
        for r in &rewards {
            let i: usize = r.candidate_id[1..].parse().unwrap();
            assert_eq!(r.value, expected(i), "round {round}: {r:?}");
        }
    }
    fleet.stop().await;
}
