//! Overload bounds of the real gateway binary: sessions past `gateway.max_sessions` are refused
//! with `RESOURCE_EXHAUSTED` naming the limit (and a `retry-after` hint), idle sessions end after
//! `gateway.session_idle_timeout` and free their slot, a message over `gateway.max_message_bytes`
//! is refused naming that key, and one session streaming many candidates keeps the gateway's
//! memory flat (session state is bounded by the window, not by history).
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use rewardfleet_core::Candidate;
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_proto::v1::{ScoreRequest, ScoreResponse, score_response};
use rewardfleet_testkit::free_port;
use support::process::Process;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// An embedded gateway of the binary on a free port with more `[gateway]` keys and more
/// tables (`extra`).
fn gateway(dir: &std::path::Path, keys: &str, extra: &str) -> (Process, u16) {
    let port = free_port().unwrap();
    let text = config_text(None, extra).replace(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[gateway]\nlisten = \"127.0.0.1:{port}\"\n{keys}"),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    (
        Process::start("gateway", &["gateway"], &path, "listening on"),
        port,
    )
}

async fn client(port: u16) -> RewardServiceClient<Channel> {
    rewardfleet_client::connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}

/// Opens a session whose requests the test sends by hand; returns the sender and the responses
/// after `opened`, or the status the gateway answered instead.
async fn open(
    client: &mut RewardServiceClient<Channel>,
    session_id: &str,
) -> Result<(mpsc::Sender<ScoreRequest>, tonic::Streaming<ScoreResponse>), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(rewardfleet_client::open(session_id, "e2e", 64))
        .await
        .unwrap();
    let mut responses = client.score(ReceiverStream::new(rx)).await?.into_inner();
    match responses.message().await? {
        Some(ScoreResponse {
            kind: Some(score_response::Kind::Opened(_)),
        }) => Ok((tx, responses)),
        other => panic!("expected `opened`, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_limit_are_refused_and_idle_ones_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_gw, port) = gateway(
        dir.path(),
        "max_sessions = 3\nsession_idle_timeout = \"3s\"\nmax_message_bytes = 65536\n",
        "",
    );
    let mut client = client(port).await;
    let mut open_sessions = Vec::new();
    for i in 0..3 {
        open_sessions.push(open(&mut client, &format!("held-{i}")).await.unwrap());
    }

    // The fourth is refused at once, naming the limit, with a hint when to retry.
    let refused = open(&mut client, "one-too-many").await.err().unwrap();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("gateway.max_sessions"),
        "{}",
        refused.message()
    );
    assert_eq!(
        refused
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    // A session that has sent nothing and is owed nothing ends after the idle timeout, and
    // frees its slot.
    let started = Instant::now();
    for (_tx, responses) in &mut open_sessions {
        let ended = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .expect("an idle session ends")
            .expect_err("with a status");
        assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
        assert!(
            ended.message().contains("gateway.session_idle_timeout"),
            "{}",
            ended.message()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(6));
    drop(open_sessions);
    let (tx, mut responses) = open(&mut client, "after-idle").await.unwrap();

    // A batch over gateway.max_message_bytes is refused naming the key.
    let big: Vec<Candidate> = (0..40)
        .map(|i| {
            let mut c = candidate(i);
            c.labels.insert("padding".into(), "x".repeat(2000));
            c
        })
        .collect();
    tx.send(rewardfleet_client::batch(big, "")).await.unwrap();
    let status = loop {
        match responses.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the session ended without a status"),
            Err(status) => break status,
        }
    };
    assert!(
        status.message().contains("gateway.max_message_bytes"),
        "{status:?}"
    );
}

/// The resident set of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_long_session_keeps_the_gateway_memory_flat() {
    const BATCH: usize = 512;
    const BATCHES: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    // A small max_window keeps the in-process queue's retained record (twice it, in entries)
    // small, and jobs of one group (8) fill it quickly: what would still grow is the session.
    let (gw, port) = gateway(
        dir.path(),
        "max_in_flight = 2048\nmax_window = 2048\n",
        "[limits]\nmax_group_size = 8\n\n[jobs]\nmax_candidates = 8\n",
    );
    let mut client = client(port).await;
    // Long ids: what the session used to remember of each candidate forever.
    let requests = futures::stream::iter(0..BATCHES + 2).map(|b| {
        if b == 0 {
            rewardfleet_client::open("long", "e2e", 2048)
        } else if b <= BATCHES {
            let candidates = (0..BATCH)
                .map(|k| {
                    let i = (b - 1) * BATCH + k;
                    let mut c = candidate(i % 1000);
                    c.id = format!("candidate-{i:040}");
                    c.group_id = format!("group-{:040}", i / 8);
                    c
                })
                .collect();
            rewardfleet_client::batch(candidates, "")
        } else {
            rewardfleet_client::close()
        }
    });
    let mut responses = client.score(requests).await.unwrap().into_inner();
    let total = BATCH * BATCHES;
    let mut rewards = 0;
    let mut early = None;
    let mut peak = 0;
    let started = Instant::now();
    while let Some(response) = responses.next().await {
        match response.unwrap().kind {
            Some(score_response::Kind::Reward(_)) => {
                rewards += 1;
                if rewards % 8192 == 0 {
                    let rss = rss_kib(gw.pid());
                    peak = peak.max(rss);
                    if early.is_none() && rewards >= total / 5 {
                        early = Some(rss);
                    }
                }
            }
            Some(score_response::Kind::Closed(c)) => {
                assert_eq!(c.rewards, total as u64);
            }
            _ => {}
        }
    }
    assert_eq!(rewards, total, "every candidate rewarded once");
    let early = early.unwrap();
    let end = rss_kib(gw.pid());
    eprintln!(
        "{total} candidates in {:.1}s; gateway RSS after a fifth {early} KiB, peak {peak} KiB, end {end} KiB",
        started.elapsed().as_secs_f64()
    );
    // Unbounded, the 200,000 ids (and their twins in the `delivered` set) would add ~40 MB.
    assert!(
        peak < early + 12 * 1024,
        "the gateway grew with the session's history: {early} KiB after a fifth, peak {peak} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_on_both_listeners() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let http = free_port().unwrap();
    let (_gw, grpc) = gateway(
        dir.path(),
        &format!("max_connections = 2\nhttp_listen = \"127.0.0.1:{http}\"\n"),
        "",
    );
    for port in [grpc, http] {
        let _a = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _b = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut third = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("the third connection is closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0, "port {port}: the third connection was served");
    }
    // Their slots came back when the test's connections closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .unwrap();
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let mut client = client(grpc).await;
    open(&mut client, "after").await.unwrap();
}
