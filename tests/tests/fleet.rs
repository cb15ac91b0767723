//! The scoring path end to end: 10,000 candidates in groups of 8 through a gateway, JetStream and
//! two workers; every candidate gets exactly one reward, equal to what its rules say; the same
//! input scored by the embedded `rewardfleet score` gives identical rewards.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use rewardfleet_testkit::NatsServer;
use support::*;

const N: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_candidates_get_exactly_one_correct_reward_each() {
    let nats = NatsServer::start().await.unwrap();
    let fleet = Fleet::start(&nats, 2, "").await;
    let candidates: Vec<_> = (0..N).map(candidate).collect();
    let mut client = fleet.client().await;
    let rewards = score_all(
        &mut client,
        session_requests("ten-thousand", "e2e", 2048, &candidates, 256),
    )
    .await
    .unwrap();

    assert_eq!(rewards.len(), N, "exactly one reward per candidate");
    let mut by_id = HashMap::new();
    for r in rewards {
        assert!(
            by_id.insert(r.candidate_id.clone(), r).is_none(),
            "duplicate reward"
        );
    }
    for (i, c) in candidates.iter().enumerate() {
        let r = &by_id[&c.id];
        assert_eq!(
            r.value,
            expected(i),
            "candidate {} ({:?})",
            c.id,
            c.response
        );
        assert_eq!(r.status, 1, "{r:?}");
        assert_eq!(r.components.len(), 3);
    }
    let stats = fleet.worker_stats();
    let done: Vec<u64> = stats
        .iter()
        .map(|s| s.candidates_done.load(Ordering::Relaxed))
        .collect();
    assert_eq!(done.iter().sum::<u64>(), N as u64, "{done:?}");
    assert!(
        done.iter().all(|&d| d > 0),
        "both workers took jobs: {done:?}"
    );
    assert_eq!(fleet.gateway.stats().in_flight, 0);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_score_gives_identical_rewards() {
    let nats = NatsServer::start().await.unwrap();
    let fleet = Fleet::start(&nats, 2, "").await;
    let candidates: Vec<_> = (0..2000).map(candidate).collect();
    let mut client = fleet.client().await;
    let fleet_rewards = score_all(
        &mut client,
        session_requests("identical", "ranked", 512, &candidates, 128),
    )
    .await
    .unwrap();
    fleet.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, config_text(None, "")).unwrap();
    let embedded = score_embedded(&config, "ranked", &candidates, dir.path());
    assert_eq!(embedded.len(), fleet_rewards.len());
    for r in &fleet_rewards {
        let e = &embedded[&r.candidate_id];
        assert_eq!(
            e["reward"].as_f64().unwrap().to_bits(),
            r.value.to_bits(),
            "bit for bit: {} {e} vs {r:?}",
            r.candidate_id
        );
        for (name, value) in &r.components {
            assert_eq!(
                e["components"][name].as_f64().unwrap().to_bits(),
                value.to_bits()
            );
        }
    }
    // group_zscore spreads values: not all the same.
    assert!(
        fleet_rewards.iter().any(|r| r.value > 0.5) && fleet_rewards.iter().any(|r| r.value < -0.5)
    );
}
