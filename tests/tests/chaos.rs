//! The delivery guarantees with real processes: kill -9 a worker, restart NATS, kill -9 and
//! restart the gateway — every candidate still gets exactly one reward, the right one.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rewardfleet_testkit::{NatsServer, free_port};
use support::process::Process;
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
    let lines: Vec<String> = (0..N)
        .map(|i| {
            let c = candidate(i);
            serde_json::json!({"id": c.id, "group_id": c.group_id, "prompt": "q", "response": c.response, "reference": c.reference}).to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = dir.path().join("out.jsonl");

    let mut gateway = Process::start("gateway", &["gateway"], &config, "listening");
    let mut worker_a = Process::start("worker-a", &["worker"], &config, "pulling");
    let _worker_b = Process::start("worker-b", &["worker"], &config, "pulling");
    let mut client = Command::new(binary())
        .args([
            "score",
            "--window",
            "2048",
            "--batch-size",
            "128",
            "--gateway",
        ])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

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

    let started = Instant::now();
    let status = loop {
        if let Some(status) = client.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the client did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "client failed: {status}");

    let mut by_id: HashMap<String, f64> = HashMap::new();
    for line in std::fs::read_to_string(&output).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["status"], "OK", "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        assert!(
            by_id.insert(id, v["reward"].as_f64().unwrap()).is_none(),
            "duplicate line"
        );
    }
    assert_eq!(by_id.len(), N);
    for i in 0..N {
        assert_eq!(by_id[&candidate(i).id], expected(i), "candidate {i}");
    }
}
