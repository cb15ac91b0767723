//! The gateway's HTTP endpoints (`gateway.http_listen`) on the real binary: OpenRLHF's
//! `/get_reward` answers the rewards `ScoreBatch` gives, bad bodies answer 400 naming field and
//! index, a spent admission budget answers 429 with `Retry-After`, and a draining gateway
//! answers 503 until its open sessions end.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use rewardfleet_core::{Candidate, ChatMessage};
use rewardfleet_proto::v1::{ScoreRequest, SessionOpen, score_request};
use rewardfleet_testkit::{NatsServer, free_port};
use serde_json::{Value, json};
use support::process::Process;
use support::*;

/// An HTTP/1.1 request to `port`: the status, the headers (lower-case names) and the JSON body.
fn http(port: u16, method: &str, path: &str, body: &Value) -> (u16, Vec<(String, String)>, Value) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = if method == "GET" {
        String::new()
    } else {
        body.to_string()
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    (
        status.parse().unwrap(),
        headers,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A gateway of the binary with its HTTP endpoints on `http_port` and more `[gateway]` keys.
fn gateway(dir: &std::path::Path, nats: Option<&str>, http_port: u16, keys: &str) -> Process {
    let text = config_text(nats, "").replace(
        "[gateway]\n",
        &format!("[gateway]\nhttp_listen = \"127.0.0.1:{http_port}\"\n{keys}"),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    Process::start("gateway", &["gateway"], &path, "listening on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reward_answers_what_score_batch_gives() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let _gw = gateway(dir.path(), None, port, "");
    let n = 30;
    let prompts: Vec<String> = (0..n).map(|i| format!("question {}", i / 3)).collect();
    let queries: Vec<String> = (0..n)
        .map(|i| format!("<s>{}{}</s>", prompts[i], candidate(i).response))
        .collect();
    let labels: Vec<String> = (0..n).map(|i| candidate(i).reference.unwrap()).collect();
    let (status, _, body) = http(
        port,
        "POST",
        "/get_reward",
        &json!({"query": queries, "prompts": prompts, "labels": labels}),
    );
    assert_eq!(status, 200, "{body}");
    let rewards: Vec<f64> = body["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(rewards, (0..n).map(expected).collect::<Vec<_>>());
    for s in body["scores"].as_array().unwrap() {
        assert!((0.0..=1.0).contains(&s.as_f64().unwrap()));
    }
    assert_eq!(body["extra_logs"]["component/exact_match"][0], 1.0);
    assert_eq!(body["statuses"][0], "OK");
    assert_eq!(body["profile"], "e2e");

    // The same candidates through ScoreBatch on a gateway in this process give the same rewards.
    let fleet_config = config(None, "");
    let embedded = rewardfleet_fleet::Embedded::start(&fleet_config, &Default::default())
        .await
        .unwrap();
    let candidates: Vec<Candidate> = (0..n)
        .map(|i| Candidate {
            id: i.to_string(),
            group_id: format!("p{}", i / 3),
            prompt: vec![ChatMessage {
                role: "user".into(),
                content: prompts[i].clone(),
            }],
            response: candidate(i).response,
            reference: Some(labels[i].clone()),
            labels: Default::default(),
        })
        .collect();
    let direct = embedded
        .gateway
        .score_batch(String::new(), candidates, Default::default())
        .await
        .unwrap();
    assert_eq!(direct.iter().map(|r| r.value).collect::<Vec<_>>(), rewards);
    embedded.stop().await;
}

#[test]
fn bad_bodies_answer_400_naming_field_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let _gw = gateway(dir.path(), None, port, "");
    let (status, _, body) = http(
        port,
        "POST",
        "/get_reward",
        &json!({"query": ["a", "b"], "prompts": ["a"]}),
    );
    assert_eq!((status, body["field"].as_str()), (400, Some("prompts")));
    let (status, _, body) = http(
        port,
        "POST",
        "/get_reward",
        &json!({"query": ["Q?answer 1", ["x"], "other"], "prompts": ["Q?", "Q?", "Q?"], "labels": ["answer 1", "answer 1", "answer 1"]}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["field"], "query[1]");
    assert_eq!(
        body["rewards"],
        json!([3.0, null, null]),
        "the valid item is scored"
    );
    assert!(
        body["errors"][2]
            .as_str()
            .unwrap()
            .starts_with("prompts[2]: is not a prefix of query[2]")
    );
    let (status, _, body) = http(port, "POST", "/get_reward", &json!("nope"));
    assert_eq!((status, body["field"].as_str()), (400, Some("body")));
    let (status, _, body) = http(
        port,
        "POST",
        "/get_reward?profile=helpful",
        &json!({"query": [], "prompts": []}),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("known: e2e, ranked")
    );
    let (status, _, body) = http(port, "GET", "/nowhere", &Value::Null);
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/get_reward"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_admission_budget_answers_429_with_retry_after() {
    let nats = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    // Four candidates at once over HTTP; no worker yet, so the first request holds them all.
    let _gw = gateway(
        dir.path(),
        Some(&nats.url()),
        port,
        "max_in_flight = 4\nmax_window = 4\n",
    );
    let body = json!({"query": ["Qanswer 1", "Qanswer 2", "Qx", "Qy"], "prompts": ["Q", "Q", "Q", "Q"], "labels": ["answer 1", "answer 1", "answer 1", "answer 1"]});
    let held = std::thread::spawn({
        let body = body.clone();
        move || http(port, "POST", "/get_reward", &body)
    });
    // Let the held request be admitted first (a probe admitted before it would hang instead).
    std::thread::sleep(Duration::from_secs(1));
    let (status, headers, answer) = http(
        port,
        "POST",
        "/reward",
        &json!({"prompt": "Q", "response": "answer 1", "label": "answer 1"}),
    );
    assert_eq!(status, 429, "{answer}");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("gateway.max_window")
    );
    // A worker comes: the held request is answered.
    let _worker = Process::start(
        "worker",
        &["worker"],
        &dir.path().join("gateway.toml"),
        "pulling from pool",
    );
    let (status, _, answer) = held.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rewards"], json!([3.0, 1.0, 0.0, 0.0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_answers_503_until_its_sessions_end() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let grpc = free_port().unwrap();
    let text = config_text(None, "").replace(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[gateway]\nlisten = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{port}\"\n"),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let mut gw = Process::start("gateway", &["gateway"], &path, "listening on");
    assert_eq!(http(port, "GET", "/health", &Value::Null).0, 200);
    // An open session holds the drain.
    let mut client = rewardfleet_client::connect(&format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ScoreRequest {
        kind: Some(score_request::Kind::Open(SessionOpen::default())),
    })
    .await
    .unwrap();
    let mut responses = client
        .score(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let _opened = responses.message().await.unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (status, headers, body) = http(port, "GET", "/health", &Value::Null);
    assert_eq!((status, body["status"].as_str()), (503, Some("draining")));
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    let (status, _, body) = http(
        port,
        "POST",
        "/get_reward",
        &json!({"query": ["Qa"], "prompts": ["Q"]}),
    );
    assert_eq!(status, 503);
    assert!(body["error"].as_str().unwrap().contains("draining"));
    drop(tx);
    drop(responses);
    let exit = gw.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{exit}");
}
