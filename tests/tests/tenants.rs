//! Tenants on the real gateway binary: bearer tokens on gRPC and HTTP (`UNAUTHENTICATED` / 401
//! without a valid one), profiles of another tenant `PERMISSION_DENIED` / 403, a tenant's
//! session id never reaching another tenant's session, quotas refused with `RESOURCE_EXHAUSTED`
//! naming the quota and a `retry-after` hint, and the tenant on `rewardfleet_rewards_total`.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use futures::StreamExt;
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_proto::v1::{ListProfilesRequest, ScoreRequest, ScoreResponse, score_response};
use rewardfleet_testkit::free_port;
use support::process::Process;
use support::prometheus::http_get;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-9876543210";

struct Gateway {
    _process: Process,
    grpc: u16,
    http: u16,
    metrics: u16,
}

fn gateway(dir: &std::path::Path) -> Gateway {
    let (grpc, http, metrics) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    std::fs::write(dir.join("alice.token"), format!("{ALICE}\n")).unwrap();
    std::fs::write(dir.join("bob.token"), BOB).unwrap();
    let tenants = format!(
        "[telemetry]\nprometheus_listen = \"127.0.0.1:{metrics}\"\nmetrics_interval = \"100ms\"\n\n\
         [[tenant]]\nname = \"alice\"\ntoken_file = \"alice.token\"\nprofiles = [\"e2e\"]\nmax_sessions = 2\n\n\
         [[tenant]]\nname = \"bob\"\ntoken_file = \"bob.token\"\nprofiles = [\"ranked\"]\ncandidates_per_second = 16\n"
    );
    let text = config_text(None, &tenants).replace(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[gateway]\nlisten = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n"),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    Gateway {
        _process: Process::start("gateway", &["gateway"], &path, "listening on"),
        grpc,
        http,
        metrics,
    }
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Opens a session as `token`; the request sender and the responses after `opened`.
async fn open(
    client: &mut RewardServiceClient<Channel>,
    token: Option<&str>,
    session_id: &str,
    profile: &str,
) -> Result<(mpsc::Sender<ScoreRequest>, tonic::Streaming<ScoreResponse>), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(rewardfleet_client::open(session_id, profile, 64))
        .await
        .unwrap();
    let mut responses = client
        .score(with_token(ReceiverStream::new(rx), token))
        .await?
        .into_inner();
    match responses.message().await? {
        Some(ScoreResponse {
            kind: Some(score_response::Kind::Opened(o)),
        }) => {
            assert_eq!(o.session_id, session_id, "the client's own id comes back");
            Ok((tx, responses))
        }
        other => panic!("expected `opened`, got {other:?}"),
    }
}

/// Reads responses until `n` rewards came; their candidate ids.
async fn rewards(responses: &mut tonic::Streaming<ScoreResponse>, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        if let Some(score_response::Kind::Reward(r)) =
            responses.message().await.unwrap().unwrap().kind
        {
            ids.push(r.candidate_id);
        }
    }
    ids
}

fn http_post(port: u16, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_authenticate_keep_to_their_profiles_sessions_and_quotas() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let mut client = rewardfleet_client::connect(&format!("http://127.0.0.1:{}", gw.grpc))
        .await
        .unwrap();

    // No token, or a wrong one: UNAUTHENTICATED, on every RewardService call.
    for token in [None, Some("not-a-token"), Some(&ALICE[..ALICE.len() - 1])] {
        let status = client
            .list_profiles(with_token(ListProfilesRequest {}, token))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
        let status = open(&mut client, token, "x", "e2e").await.err().unwrap();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
    }
    client
        .list_profiles(with_token(ListProfilesRequest {}, Some(ALICE)))
        .await
        .unwrap();

    // Alice scores in her session "shared"; she may not use bob's profile.
    let (alice_tx, mut alice) = open(&mut client, Some(ALICE), "shared", "e2e")
        .await
        .unwrap();
    let batch: Vec<_> = (0..8).map(candidate).collect();
    alice_tx
        .send(rewardfleet_client::batch(batch, ""))
        .await
        .unwrap();
    assert_eq!(rewards(&mut alice, 8).await.len(), 8);
    let denied = open(&mut client, Some(ALICE), "other", "ranked")
        .await
        .err()
        .unwrap();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("ranked"), "{denied:?}");

    // Her quota of 2 sessions: the third is refused naming the quota, with a retry hint. (The
    // refused session's slot is freed as its task ends, just after the refusal is sent.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _second = open(&mut client, Some(ALICE), "second", "e2e")
        .await
        .unwrap();
    let refused = open(&mut client, Some(ALICE), "third", "e2e")
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("tenant.alice.max_sessions"),
        "{refused:?}"
    );
    assert!(refused.metadata().get("retry-after").is_some());

    // Bob naming the same session id opens his own: he sees none of alice's rewards, and
    // closing it leaves hers open.
    let (bob_tx, mut bob) = open(&mut client, Some(BOB), "shared", "ranked")
        .await
        .unwrap();
    bob_tx.send(rewardfleet_client::close()).await.unwrap();
    let mut bob_rewards = 0;
    while let Some(r) = bob.next().await {
        match r.unwrap().kind {
            Some(score_response::Kind::Reward(_)) => bob_rewards += 1,
            Some(score_response::Kind::Closed(c)) => assert_eq!(c.rewards, 0),
            _ => {}
        }
    }
    assert_eq!(bob_rewards, 0, "bob observed alice's session");
    let more: Vec<_> = (8..16).map(candidate).collect();
    alice_tx
        .send(rewardfleet_client::batch(more, ""))
        .await
        .unwrap();
    assert_eq!(
        rewards(&mut alice, 8).await.len(),
        8,
        "alice's session goes on"
    );

    // Bob's rate: 16 candidates a second; a burst past it is refused naming the quota.
    let (bob_tx, mut bob) = open(&mut client, Some(BOB), "burst", "ranked")
        .await
        .unwrap();
    let first: Vec<_> = (100..116).map(candidate).collect();
    bob_tx
        .send(rewardfleet_client::batch(first, ""))
        .await
        .unwrap();
    let second: Vec<_> = (200..216).map(candidate).collect();
    bob_tx
        .send(rewardfleet_client::batch(second, ""))
        .await
        .unwrap();
    let status = loop {
        match bob.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the burst was not refused"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("tenant.bob.candidates_per_second"),
        "{status:?}"
    );

    // HTTP: the same tokens, 401 / 403 / 200.
    let body = r#"{"query": ["q answer 0"], "prompts": ["q"], "labels": ["answer 0"]}"#;
    let (code, text) = http_post(gw.http, "/get_reward", None, body);
    assert_eq!(code, 401, "{text}");
    let (code, text) = http_post(gw.http, "/get_reward", Some("nope"), body);
    assert_eq!(code, 401, "{text}");
    let (code, text) = http_post(gw.http, "/get_reward?profile=ranked", Some(ALICE), body);
    assert_eq!(code, 403, "{text}");
    let (code, text) = http_post(gw.http, "/get_reward", Some(ALICE), body);
    assert_eq!(code, 200, "{text}");
    assert!(!text.contains(ALICE), "the token is never echoed");

    // The tenant is a label of the rewards sent.
    let addr = format!("127.0.0.1:{}", gw.metrics);
    let mut scraped = String::new();
    for _ in 0..50 {
        scraped = http_get(&addr, "/metrics")
            .map(|(_, t)| t)
            .unwrap_or_default();
        if scraped.contains("tenant=\"alice\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = scraped
        .lines()
        .find(|l| l.starts_with("rewardfleet_rewards_total") && l.contains("tenant=\"alice\""))
        .unwrap_or_else(|| panic!("no rewards series for alice:\n{scraped}"));
    assert!(line.contains("profile=\"e2e\""), "{line}");
}

/// `judge_tokens_per_hour` holds across gateways: two gateway processes and a worker on one
/// nats-server, a profile on the fake judge. A tenant's first batch through gateway A is
/// admitted (nothing spent yet) and spends judge tokens; once the gateways have exchanged their
/// counts, its next batch is refused on gateway B too, with `RESOURCE_EXHAUSTED` naming the
/// quota and a `retry-after` hint, while a tenant without that quota is still served there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_judge_tokens_are_counted_across_gateways() {
    use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig};
    use rewardfleet_proto::v1::ScoreBatchRequest;

    let nats = rewardfleet_testkit::NatsServer::start().await.unwrap();
    let judge = FakeJudge::start(FakeJudgeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alice.token"), ALICE).unwrap();
    std::fs::write(dir.path().join("bob.token"), BOB).unwrap();
    let config_for = |port: u16| {
        format!(
            r#"
[nats]
url = "{nats}"
heartbeat_interval = "1s"

[gateway]
listen = "127.0.0.1:{port}"
default_profile = "judged"

[[judge]]
name = "judge"
base_url = "{judge}"
model = "fake-judge"

[profile.judged]
components = [{{ scorer = "judge", method = "reference" }}]

[[tenant]]
name = "alice"
token_file = "alice.token"
judge_tokens_per_hour = 1

[[tenant]]
name = "bob"
token_file = "bob.token"
"#,
            nats = nats.url(),
            judge = judge.base_url(),
        )
    };
    let (port_a, port_b) = (free_port().unwrap(), free_port().unwrap());
    let (config_a, config_b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    std::fs::write(&config_a, config_for(port_a)).unwrap();
    std::fs::write(&config_b, config_for(port_b)).unwrap();
    let _worker = Process::start("worker", &["worker"], &config_a, "pulling");
    let _gateway_a = Process::start("gateway-a", &["gateway"], &config_a, "listening on");
    let _gateway_b = Process::start("gateway-b", &["gateway"], &config_b, "listening on");

    let batch = |tag: &str| ScoreBatchRequest {
        profile: "judged".into(),
        candidates: judged_candidates(tag, 4),
    };
    let client = |port: u16| async move {
        RewardServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap()
    };
    let (mut a, mut b) = (client(port_a).await, client(port_b).await);

    // Nothing spent yet: admitted, and the judge is called.
    let rewards = a
        .score_batch(with_token(batch("first"), Some(ALICE)))
        .await
        .unwrap()
        .into_inner()
        .rewards;
    assert_eq!(rewards.len(), 4);
    assert!(rewards.iter().all(|r| r.status == 1), "{rewards:?}");
    assert!(judge.calls() >= 4);

    // Gateway B learns what A let alice spend within a few heartbeat intervals.
    let started = std::time::Instant::now();
    let refused = loop {
        match b
            .score_batch(with_token(batch("second"), Some(ALICE)))
            .await
        {
            Err(status) => break status,
            Ok(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "gateway B never counted what alice spent through gateway A"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("tenant.alice.judge_tokens_per_hour"),
        "{}",
        refused.message()
    );
    let retry_after: u64 = refused
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3_600).contains(&retry_after), "{retry_after}");
    // Refused on A as well; bob, with no such quota, is served on B.
    let on_a = a
        .score_batch(with_token(batch("third"), Some(ALICE)))
        .await
        .unwrap_err();
    assert_eq!(on_a.code(), Code::ResourceExhausted);
    let bobs = b
        .score_batch(with_token(batch("bob"), Some(BOB)))
        .await
        .unwrap()
        .into_inner()
        .rewards;
    assert_eq!(bobs.len(), 4);
}
