//! A fast sender is held back by the session window: while nothing resolves, the gateway stops
//! reading the request stream, HTTP/2 flow control stops the client, and the gateway's in-flight
//! stays at the window. Memory stays bounded however fast the client sends.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use rewardfleet_proto::v1::{
    Batch, Close, ScoreRequest, SessionOpen, score_request, score_response,
};
use rewardfleet_testkit::NatsServer;
use support::*;

const WINDOW: u32 = 64;
const BATCHES: usize = 2000;
const PER_BATCH: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sender_is_held_at_the_window() {
    let nats = NatsServer::start().await.unwrap();
    // No worker yet: nothing resolves, so only the window's worth may be admitted.
    let mut fleet = Fleet::start(&nats, 0, "").await;
    let pulled = Arc::new(AtomicUsize::new(0));
    let requests = {
        let pulled = Arc::clone(&pulled);
        let padding = "x".repeat(4000);
        futures::stream::iter(0..BATCHES + 2).map(move |i| {
            pulled.fetch_add(1, Ordering::SeqCst);
            let kind = if i == 0 {
                score_request::Kind::Open(SessionOpen {
                    session_id: "backpressure".into(),
                    profile: "e2e".into(),
                    max_in_flight: WINDOW,
                })
            } else if i <= BATCHES {
                let candidates = (0..PER_BATCH)
                    .map(|k| {
                        let mut c = candidate((i - 1) * PER_BATCH + k);
                        c.group_id = format!("g{i}");
                        c.labels.insert("padding".into(), padding.clone());
                        c
                    })
                    .collect();
                score_request::Kind::Batch(Batch {
                    candidates,
                    profile: String::new(),
                })
            } else {
                score_request::Kind::Close(Close {})
            };
            ScoreRequest { kind: Some(kind) }
        })
    };
    let mut client = fleet.client().await;
    let session = tokio::spawn(async move {
        let mut responses = client.score(requests).await.unwrap().into_inner();
        let mut rewards = 0;
        while let Some(r) = responses.next().await {
            if let Some(score_response::Kind::Reward(_)) = r.unwrap().kind {
                rewards += 1;
            }
        }
        rewards
    });

    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = pulled.load(Ordering::SeqCst);
    let stats = fleet.gateway.stats();
    assert_eq!(
        stats.in_flight, WINDOW as usize,
        "in-flight sits at the window"
    );
    assert!(
        held < BATCHES / 4,
        "the sender was not held back: it produced {held} of {BATCHES} batches"
    );
    // Still held a second later: the sender is blocked, not slow.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pulled.load(Ordering::SeqCst), held, "the sender kept going");
    eprintln!(
        "held back after {held} of {BATCHES} batches ({} KiB)",
        held * PER_BATCH * 4
    );

    fleet.add_worker().await;
    fleet.add_worker().await;
    let rewards = tokio::time::timeout(Duration::from_secs(120), session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rewards, BATCHES * PER_BATCH);
    assert_eq!(pulled.load(Ordering::SeqCst), BATCHES + 2);
    let max = fleet.gateway.stats().max_session_in_flight;
    assert!(
        max <= WINDOW as usize,
        "in-flight reached {max}, above the window {WINDOW}"
    );
    fleet.stop().await;
}
