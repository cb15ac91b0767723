//! The delivery guarantees with real processes: kill -9 a worker, restart NATS, kill -9 and
//! restart the gateway — every candidate still gets exactly one reward, the right one.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use rewardfleet_testkit::{NatsServer, free_port};
use support::process::{self, Process};
use support::*;

const N: usize = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_restarts_lose_nothing_and_duplicate_nothing() {
    let mut nats = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = dir.path().join("fleet.toml");
    let text = config_text(Some(&nats.url()), "")
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace("ack_wait = \"5s\"", "ack_wait = \"2s\"");
    std::fs::write(&config, text).unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, N);
    let output = dir.path().join("out.jsonl");

    let mut gateway = Process::start("gateway", &["gateway"], &config, "listening");
    let mut worker_a = Process::start("worker-a", &["worker"], &config, "pulling");
    let _worker_b = Process::start("worker-b", &["worker"], &config, "pulling");
    let mut client = process::spawn_score(port, &input, &output);

    tokio::time::sleep(Duration::from_millis(400)).await;
    worker_a.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.kill().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _gateway = Process::start("gateway-2", &["gateway"], &config, "listening");
    let _worker_c = Process::start("worker-c", &["worker"], &config, "pulling");

    let status = process::wait_exit(&mut client, Duration::from_secs(240)).await;
    assert!(status.success(), "client failed: {status}");
    let by_id = read_rewards(&output);
    assert_eq!(by_id.len(), N);
    for i in 0..N {
        assert_eq!(by_id[&candidate(i).id], expected(i), "candidate {i}");
    }
}
