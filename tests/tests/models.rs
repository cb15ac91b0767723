//! Local reward models in the fleet: `rewardfleet worker` processes with the tiny TorchScript models
//! of scripts/make_test_models.py, behind a `rewardfleet gateway` and a real nats-server, give
//! PyTorch's values (mixed with a rule in one profile); embedded `rewardfleet score` gives the same
//! rewards; a model that cannot load keeps its worker from ever becoming ready and stops it with
//! an error naming the model and the cause.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rewardfleet_core::{Candidate, ChatMessage, Reward};
use rewardfleet_proto::v1::reward::Status;
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_proto::v1::{Batch, Close, ScoreRequest, SessionOpen, score_request};
use rewardfleet_testkit::{NatsServer, free_port, test_models};
use serde_json::Value;
use support::process::Process;
use support::{binary, http_status, score_all, score_embedded};

fn models() -> PathBuf {
    test_models("tiny", &[], Path::new(env!("CARGO_TARGET_TMPDIR")))
}

fn expected(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap()
}

/// A fleet configuration with the tiny scalar and embedding models; embedded without `nats_url`.
fn config(dir: &Path, nats_url: Option<&str>, listen: &str, health: &str, scalar: &str) -> String {
    let nats = nats_url.map_or(String::new(), |url| format!("[nats]\nurl = \"{url}\"\n"));
    format!(
        r#"{nats}
[gateway]
listen = "{listen}"

[worker]
health_listen = "{health}"
max_concurrent_jobs = 16

[[model]]
name = "rm"
path = "{dir}/{scalar}"
tokenizer = "{dir}/tokenizer.json"
kind = "scalar"
template = "{{response}}"
max_length = 64
max_batch_tokens = 256
threads = 1

[[model]]
name = "sim"
path = "{dir}/embedding.pt"
tokenizer = "{dir}/tokenizer.json"
kind = "embedding"
pooling = "mean"
max_length = 64
max_batch_tokens = 256
threads = 1

[profile.mix]
components = [{{ scorer = "rm" }}, {{ rule = "exact_match", weight = 2.0 }}]

[profile.similar]
components = [{{ scorer = "sim" }}]
"#,
        dir = dir.display(),
    )
}

fn candidate(id: String, group: &str, response: &str, reference: &str) -> Candidate {
    Candidate {
        id,
        group_id: group.into(),
        prompt: vec![ChatMessage {
            role: "user".into(),
            content: "question".into(),
        }],
        response: response.into(),
        reference: Some(reference.into()),
        labels: HashMap::new(),
    }
}

/// The candidates and the reward each must get: `mix` = logit + 2 × exact match of the first
/// text; `similar` = the cosine of the pair's mean-pooled embeddings.
fn cases(exp: &Value) -> (Vec<Candidate>, Vec<Candidate>, HashMap<String, f64>) {
    let texts: Vec<&str> = exp["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let mut want = HashMap::new();
    let mix: Vec<Candidate> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let logit = exp["scalar"][i].as_f64().unwrap();
            want.insert(format!("m{i}"), logit + if i == 0 { 2.0 } else { 0.0 });
            candidate(format!("m{i}"), "mix", t, texts[0])
        })
        .collect();
    let similar: Vec<Candidate> = exp["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (a, b) = (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
            );
            want.insert(format!("s{i}"), exp["cosine_mean"][i].as_f64().unwrap());
            candidate(format!("s{i}"), &format!("pair{i}"), texts[a], texts[b])
        })
        .collect();
    (mix, similar, want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_rewards_through_the_fleet_match_pytorch_and_embedded_mode() {
    let dir = models();
    let exp = expected(&dir);
    let (mix, similar, want) = cases(&exp);
    let nats = NatsServer::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());

    // Two workers, each loading both models once; each ready only once they are loaded and warm.
    let mut workers = Vec::new();
    for i in 0..2 {
        let health = format!("127.0.0.1:{}", free_port().unwrap());
        let path = tmp.path().join(format!("worker{i}.toml"));
        let text = config(&dir, Some(&nats.url()), &listen, &health, "scalar.pt");
        std::fs::write(&path, text).unwrap();
        let worker = Process::start(
            &format!("worker{i}"),
            &["worker"],
            &path,
            "pulling from pool",
        );
        // Ready once its consumer pulls (just after the line above).
        let mut ready = None;
        for _ in 0..100 {
            ready = http_status(&health, "/readyz");
            if ready == Some(200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ready, Some(200), "worker{i} is ready");
        workers.push(worker);
    }
    let gateway_config = tmp.path().join("gateway.toml");
    let text = config(&dir, Some(&nats.url()), &listen, "127.0.0.1:0", "scalar.pt");
    std::fs::write(&gateway_config, text).unwrap();
    let _gateway = Process::start("gateway", &["gateway"], &gateway_config, "listening on");

    let mut client = RewardServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let requests = vec![
        ScoreRequest {
            kind: Some(score_request::Kind::Open(SessionOpen {
                session_id: "models".into(),
                profile: "mix".into(),
                max_in_flight: 64,
            })),
        },
        ScoreRequest {
            kind: Some(score_request::Kind::Batch(Batch {
                candidates: mix.clone(),
                profile: String::new(),
            })),
        },
        ScoreRequest {
            kind: Some(score_request::Kind::Batch(Batch {
                candidates: similar.clone(),
                profile: "similar".into(),
            })),
        },
        ScoreRequest {
            kind: Some(score_request::Kind::Close(Close {})),
        },
    ];
    let rewards: Vec<Reward> = score_all(&mut client, requests).await.unwrap();
    assert_eq!(rewards.len(), want.len());
    let mut fleet = HashMap::new();
    for r in &rewards {
        assert_eq!(r.status(), Status::Ok, "{r:?}");
        let w = want[&r.candidate_id];
        assert!(
            (r.value - w).abs() <= 1e-5,
            "{}: fleet {}, PyTorch {w}",
            r.candidate_id,
            r.value
        );
        fleet.insert(r.candidate_id.clone(), r.value);
    }
    drop(workers);

    // The same candidates through embedded `rewardfleet score`, one run per profile.
    let embedded_config = tmp.path().join("embedded.toml");
    let text = config(&dir, None, "127.0.0.1:0", "127.0.0.1:0", "scalar.pt");
    std::fs::write(&embedded_config, text).unwrap();
    for (profile, candidates) in [("mix", &mix), ("similar", &similar)] {
        let embedded = score_embedded(&embedded_config, profile, candidates, tmp.path());
        assert_eq!(embedded.len(), candidates.len());
        for (id, v) in &embedded {
            let got = v["reward"].as_f64().unwrap();
            // Equal up to float summation order: the two modes may batch the texts differently,
            // and a batched matmul's rounding depends on the batch's shape.
            assert!(
                (got - fleet[id]).abs() <= 1e-6,
                "{id}: embedded {got}, fleet {}",
                fleet[id]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_model_keeps_the_worker_unready_and_names_the_cause() {
    let dir = models();
    let nats = NatsServer::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (file, cause) in [
        ("bad_output.pt", "one logit per sequence"),
        ("missing.pt", "no file at"),
        ("small_vocab.pt", "embedding table has 10 rows"),
    ] {
        let health = format!("127.0.0.1:{}", free_port().unwrap());
        let path = tmp.path().join("worker.toml");
        let text = config(&dir, Some(&nats.url()), "127.0.0.1:0", &health, file);
        std::fs::write(&path, text).unwrap();
        let child = std::process::Command::new(binary())
            .args(["worker", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut seen_ready = false;
        let output = tokio::task::spawn_blocking(move || child.wait_with_output());
        tokio::pin!(output);
        let output = loop {
            tokio::select! {
                out = &mut output => break out.unwrap().unwrap(),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    seen_ready |= http_status(&health, "/readyz") == Some(200);
                }
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{file}: the worker exited 0");
        assert!(!seen_ready, "{file}: /readyz said ready");
        assert!(
            (stderr.contains("model rm") || stderr.contains("model[0]")) && stderr.contains(cause),
            "{file}: the error names the model and {cause:?}:\n{stderr}"
        );
    }
}
