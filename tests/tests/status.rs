//! `rewardfleet status` against a real fleet (nats-server, gateway and worker processes): it
//! lists the live workers with their pool, capacity and version, each pool's pending jobs and
//! the gateway's open sessions; a worker stopped with SIGTERM leaves the list at once, one killed
//! with SIGKILL once its heartbeat expires. An unreachable server is a quick, clear error.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rewardfleet_core::{Candidate, Job};
use rewardfleet_proto::v1::{ScoreRequest, SessionOpen, score_request, score_response};
use rewardfleet_testkit::{NatsServer, free_port};
use serde_json::Value;
use support::process::Process;
use support::*;

/// Jobs queued for pool `b`, which has no worker when they come.
const QUEUED: usize = 5;
/// The heartbeat interval of every process in these tests (entries expire 3 s after a beat).
const INTERVAL_SECS: u64 = 1;

/// `rewardfleet status --json --config <config>`: its one JSON object.
fn status(config: &Path) -> Value {
    let output = Command::new(binary())
        .args(["status", "--json", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object on one line: {text}");
    serde_json::from_str(lines[0]).unwrap()
}

/// The pids of the workers that `status` lists.
fn worker_pids(status: &Value) -> BTreeSet<u64> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap())
        .collect()
}

/// Reads `status` until `done` holds for it, at most `limit`; returns it.
async fn status_until(config: &Path, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let s = status(config);
        if done(&s) {
            return s;
        }
        assert!(
            started.elapsed() < limit,
            "status did not get there within {limit:?}; last: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pool<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == name)
        .unwrap_or_else(|| panic!("no pool {name:?} in {status:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_live_workers_pool_lag_and_sessions_and_forgets_stopped_workers() {
    let nats = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let text = config_text(Some(&nats.url()), "")
        .replace(
            &format!("url = \"{}\"", nats.url()),
            &format!(
                "url = \"{}\"\nheartbeat_interval = \"{INTERVAL_SECS}s\"",
                nats.url()
            ),
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
    let config_a = dir.path().join("a.toml");
    std::fs::write(&config_a, &text).unwrap();
    let config_b = dir.path().join("b.toml");
    std::fs::write(
        &config_b,
        text.replace(
            "max_concurrent_jobs = 8",
            "pool = \"b\"\nmax_concurrent_jobs = 3",
        ),
    )
    .unwrap();

    let gateway = Process::start("gateway", &["gateway"], &config_a, "listening");
    let mut worker_1 = Process::start("worker-1", &["worker"], &config_a, "pulling");
    let worker_2 = Process::start("worker-2", &["worker"], &config_a, "pulling");
    let mut worker_b = Process::start("worker-b", &["worker"], &config_b, "pulling");
    let all: BTreeSet<u64> = [&worker_1, &worker_2, &worker_b]
        .iter()
        .map(|p| u64::from(p.pid()))
        .collect();

    // Every worker is listed with what it said about itself (ready once its pull started).
    let s = status_until(&config_a, Duration::from_secs(10), |s| {
        worker_pids(s) == all
            && s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["ready"] == true)
    })
    .await;
    for w in s["workers"].as_array().unwrap() {
        let pid = w["pid"].as_u64().unwrap();
        let (pool, capacity) = if pid == u64::from(worker_b.pid()) {
            ("b", 3)
        } else {
            ("default", 8)
        };
        assert_eq!(w["pool"], pool, "{w}");
        assert_eq!(w["capacity"], capacity, "{w}");
        assert_eq!(w["version"], env!("CARGO_PKG_VERSION"), "{w}");
        assert_eq!(w["ready"], true, "{w}");
        assert_eq!(w["models"], serde_json::json!([]), "{w}");
        assert_eq!(w["interval_secs"], 1.0, "{w}");
        assert_eq!(w["in_flight"], 0, "{w}");
        assert_eq!(w["jobs_done"], 0, "{w}");
        assert_eq!(w["candidates_failed"], 0, "{w}");
    }
    assert_eq!(pool(&s, "default")["workers"], 2, "{s:#}");
    assert_eq!(pool(&s, "b")["workers"], 1, "{s:#}");

    // A worker stopped with SIGTERM deletes its entry: gone at once, not after the TTL.
    let stopped = worker_b.terminate(Duration::from_secs(20));
    assert!(stopped.success(), "worker-b exited with {stopped}");
    let s = status(&config_a);
    let live: BTreeSet<u64> = [&worker_1, &worker_2]
        .iter()
        .map(|p| u64::from(p.pid()))
        .collect();
    assert_eq!(worker_pids(&s), live, "{s:#}");

    // Jobs for pool b wait in its consumer, which outlives its worker.
    let mut config = config(Some(&nats.url()), "");
    config.worker.pool = "b".into();
    let queue = connect(&config).await;
    for n in 0..QUEUED {
        queue
            .publish_job(&Job {
                job_id: format!("status-b.job{n}"),
                session_id: "status-b".into(),
                profile: "e2e".into(),
                candidates: vec![Candidate {
                    id: format!("c{n}"),
                    response: "answer 1".into(),
                    reference: Some("answer 1".into()),
                    ..Default::default()
                }],
            })
            .await
            .unwrap();
    }
    let s = status(&config_a);
    let b = pool(&s, "b");
    assert_eq!(b["pending"], QUEUED, "{s:#}");
    assert_eq!(b["ack_pending"], 0, "{s:#}");
    assert_eq!(b["workers"], 0, "{s:#}");
    assert_eq!(b["consumer"], "rf-workers-b", "{s:#}");
    assert_eq!(pool(&s, "default")["pending"], 0, "{s:#}");
    assert_eq!(s["jobs_stream"]["name"], "RF_JOBS", "{s:#}");
    assert_eq!(s["jobs_stream"]["messages"], QUEUED, "{s:#}");

    // A trainer session held open on the gateway shows in its next heartbeat.
    let mut client = rewardfleet_client::connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let (requests, rx) = tokio::sync::mpsc::channel(1);
    requests
        .send(ScoreRequest {
            kind: Some(score_request::Kind::Open(SessionOpen {
                session_id: "status-session".into(),
                profile: "e2e".into(),
                max_in_flight: 0,
            })),
        })
        .await
        .unwrap();
    let mut responses = client
        .score(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let opened = responses.message().await.unwrap().unwrap();
    assert!(
        matches!(opened.kind, Some(score_response::Kind::Opened(_))),
        "{opened:?}"
    );
    let s = status_until(&config_a, Duration::from_secs(5), |s| {
        s["gateways"][0]["sessions"] == 1
    })
    .await;
    let gateways = s["gateways"].as_array().unwrap();
    assert_eq!(gateways.len(), 1, "{s:#}");
    assert_eq!(gateways[0]["pid"], gateway.pid(), "{s:#}");
    assert_eq!(gateways[0]["listen"], format!("127.0.0.1:{port}"), "{s:#}");
    assert_eq!(gateways[0]["candidates_in_flight"], 0, "{s:#}");
    assert_eq!(gateways[0]["version"], env!("CARGO_PKG_VERSION"), "{s:#}");

    // A worker killed with SIGKILL stays listed until its heartbeat expires (3 intervals after
    // its last beat), then leaves the list; the other worker stays.
    let killed = u64::from(worker_1.pid());
    worker_1.kill9();
    let killed_at = Instant::now();
    assert!(
        worker_pids(&status(&config_a)).contains(&killed),
        "the killed worker's heartbeat has not expired yet"
    );
    let ttl = Duration::from_secs(3 * INTERVAL_SECS);
    let s = status_until(&config_a, ttl + Duration::from_secs(5), |s| {
        !worker_pids(s).contains(&killed)
    })
    .await;
    let gone_after = killed_at.elapsed();
    eprintln!("the killed worker left the list {gone_after:?} after SIGKILL");
    assert!(
        gone_after >= ttl - Duration::from_secs(INTERVAL_SECS + 1),
        "left after {gone_after:?}: sooner than its heartbeat could expire"
    );
    assert_eq!(
        worker_pids(&s),
        BTreeSet::from([u64::from(worker_2.pid())]),
        "{s:#}"
    );
    assert_eq!(pool(&s, "default")["workers"], 1, "{s:#}");
    drop(requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_fails_fast_naming_an_unreachable_server() {
    let started = Instant::now();
    let output = Command::new(binary())
        .args(["status", "--nats", "nats://127.0.0.1:1"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing on stdout");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}
