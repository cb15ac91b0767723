//! Scalar and embedding scoring on the tiny TorchScript models of scripts/make_test_models.py:
//! outputs match PyTorch within 1e-5, batching, abandoned work, admission and load-time errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rewardfleet_core::config::{Device, Dtype, ModelConfig, ModelKind, Pooling, TruncationSide};
use rewardfleet_core::{Candidate, ScoreContext, Scorer};
use rewardfleet_torch::{ModelSet, TorchError};
use serde_json::Value;

use common::candidate;

fn dir() -> PathBuf {
    common::models("tiny")
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(dir().join("expected.json")).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn texts() -> Vec<String> {
    expected()["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

fn cfg(name: &str, file: &str, kind: ModelKind) -> ModelConfig {
    ModelConfig {
        name: name.into(),
        path: file.into(),
        tokenizer: "tokenizer.json".into(),
        kind,
        template: "{response}".into(),
        max_length: 64,
        max_batch_tokens: 256,
        threads: 1,
        ..ModelConfig::default()
    }
}

async fn load(models: Vec<ModelConfig>) -> Result<ModelSet, TorchError> {
    let base = dir();
    tokio::task::spawn_blocking(move || ModelSet::load(&models, &base))
        .await
        .unwrap()
}

async fn score(s: &Arc<dyn Scorer>, group: &[Candidate]) -> Vec<rewardfleet_core::scorer::Outcome> {
    s.score(&ScoreContext::default(), group).await
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} (tolerance {tol})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalar_rewards_match_pytorch_batched_and_alone() {
    let set = load(vec![
        cfg("rm", "scalar.pt", ModelKind::Scalar),
        cfg("flat", "scalar_flat.pt", ModelKind::Scalar),
        ModelConfig {
            token_type_ids: true,
            ..cfg("typed", "scalar_token_types.pt", ModelKind::Scalar)
        },
    ])
    .await
    .unwrap();
    let exp = expected();
    let group: Vec<Candidate> = texts()
        .iter()
        .enumerate()
        .map(|(i, t)| candidate(&i.to_string(), t, None))
        .collect();
    for (name, key) in [
        ("rm", "scalar"),
        ("flat", "scalar_flat"),
        ("typed", "scalar_token_types"),
    ] {
        let want = floats(&exp[key]);
        let scorer = set.scorer(name).unwrap();
        // The whole group in one call: padded batches of mixed lengths.
        let got = score(&scorer, &group).await;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(
                g.as_ref().unwrap().value,
                *w,
                1e-5,
                &format!("{name} text {i} batched"),
            );
        }
        // One candidate per call, all at once: batched across requests by the batcher.
        let calls = group.iter().map(|c| {
            let s = Arc::clone(&scorer);
            let c = c.clone();
            async move { score(&s, std::slice::from_ref(&c)).await.remove(0) }
        });
        let got = futures_join(calls).await;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(
                g.as_ref().unwrap().value,
                *w,
                1e-5,
                &format!("{name} text {i} alone"),
            );
        }
    }
    let stats = set.model("rm").unwrap().stats();
    assert!(
        stats.batches < 2 * texts().len() as u64,
        "requests were batched: {stats:?}"
    );
    assert_eq!(stats.queued, 0);
}

async fn futures_join<F: std::future::Future + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_rewards_are_cosines_matching_pytorch() {
    let set = load(vec![
        cfg("mean", "embedding.pt", ModelKind::Embedding),
        ModelConfig {
            pooling: Pooling::Cls,
            normalize: false,
            ..cfg("cls", "embedding.pt", ModelKind::Embedding)
        },
    ])
    .await
    .unwrap();
    let exp = expected();
    let texts = texts();
    let pairs: Vec<(usize, usize)> = exp["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let mut group: Vec<Candidate> = pairs
        .iter()
        .enumerate()
        .map(|(i, (a, b))| candidate(&i.to_string(), &texts[*a], Some(&texts[*b])))
        .collect();
    // A candidate without a reference fails alone.
    group.insert(3, candidate("no-ref", "the answer", None));
    for (name, key) in [("mean", "cosine_mean"), ("cls", "cosine_cls")] {
        let mut got = score(&set.scorer(name).unwrap(), &group).await;
        let missing = got.remove(3).unwrap_err();
        assert_eq!(missing.reason.as_str(), "missing_reference");
        assert!(!missing.retryable);
        for (i, (g, w)) in got.iter().zip(floats(&exp[key])).enumerate() {
            assert_close(
                g.as_ref().unwrap().value,
                w,
                1e-5,
                &format!("{name} pair {i}"),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_long_input_fails_alone() {
    let set = load(vec![ModelConfig {
        truncation_side: TruncationSide::None,
        max_length: 8,
        ..cfg("rm", "scalar.pt", ModelKind::Scalar)
    }])
    .await
    .unwrap();
    let long = "one two three four five six seven eight nine ten";
    let group = vec![
        candidate("a", "yes", None),
        candidate("b", long, None),
        candidate("c", "wrong", None),
    ];
    let got = score(&set.scorer("rm").unwrap(), &group).await;
    assert!(got[0].is_ok() && got[2].is_ok(), "{got:?}");
    let err = got[1].as_ref().unwrap_err();
    assert_eq!(err.reason.as_str(), "input_too_long");
    assert!(
        err.message.contains("12 tokens") && err.message.contains("at most 8"),
        "{}",
        err.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_keeps_the_configured_end() {
    let exp = expected();
    let want = floats(&exp["scalar"]);
    // Text 2 is "wrong" ([CLS] wrong [SEP], 3 tokens). Left truncation to 3 of "x x … wrong" keeps it.
    let set = load(vec![ModelConfig {
        max_length: 3,
        truncation_side: TruncationSide::Left,
        ..cfg("l", "scalar.pt", ModelKind::Scalar)
    }])
    .await
    .unwrap();
    let got = score(
        &set.scorer("l").unwrap(),
        &[candidate("a", "yes no yes no wrong", None)],
    )
    .await;
    assert_close(
        got[0].as_ref().unwrap().value,
        want[2],
        1e-5,
        "left truncation",
    );
    let set = load(vec![ModelConfig {
        max_length: 3,
        truncation_side: TruncationSide::Right,
        ..cfg("r", "scalar.pt", ModelKind::Scalar)
    }])
    .await
    .unwrap();
    let got = score(
        &set.scorer("r").unwrap(),
        &[candidate("a", "wrong yes no yes no", None)],
    )
    .await;
    assert_close(
        got[0].as_ref().unwrap().value,
        want[2],
        1e-5,
        "right truncation",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_work_is_skipped_before_forward() {
    let set = load(vec![ModelConfig {
        max_wait: Duration::from_millis(300),
        ..cfg("rm", "scalar.pt", ModelKind::Scalar)
    }])
    .await
    .unwrap();
    let scorer = set.scorer("rm").unwrap();
    let model = set.model("rm").unwrap();
    let before = model.stats();
    // The caller gives up before the batch window closes.
    let group = vec![candidate("a", "yes", None)];
    let gave_up = tokio::time::timeout(Duration::from_millis(20), score(&scorer, &group)).await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = model.stats();
    assert_eq!(
        after.sequences, before.sequences,
        "abandoned work reached a forward"
    );
    assert_eq!(after.skipped, before.skipped + 1);
    assert_eq!(
        after.queued, 0,
        "the abandoned request's place was given back"
    );
    assert!(score(&scorer, &group).await[0].is_ok());
    assert_eq!(model.stats().sequences, before.sequences + 1);
}

/// A model has room while fewer tokens wait for a batch than `admit_tokens`: the tokens of a
/// text count from the moment it is handed over until its batch goes to a replica, or until it is
/// dropped, abandoned by its caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_is_the_tokens_waiting_for_a_batch() {
    let exp = expected();
    let text = texts()[1].clone();
    let tokens = exp["ids"][1].as_array().unwrap().len();
    let set = load(vec![ModelConfig {
        max_wait: Duration::from_millis(700),
        admit_tokens: tokens,
        ..cfg("rm", "scalar.pt", ModelKind::Scalar)
    }])
    .await
    .unwrap();
    let scorer = set.scorer("rm").unwrap();
    let model = set.model("rm").unwrap();
    assert!(scorer.has_room());
    assert_eq!(model.stats().waiting_tokens, 0);

    let waits_for = |want: usize| {
        let model = model.clone();
        async move {
            for _ in 0..400 {
                if model.stats().waiting_tokens == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("waiting tokens {} not {want}", model.stats().waiting_tokens);
        }
    };
    // Scored: full while its batch window is open, room again once the batch has gone.
    let group = vec![candidate("a", &text, None)];
    let scoring = tokio::spawn({
        let scorer = Arc::clone(&scorer);
        async move { score(&scorer, &group).await }
    });
    waits_for(tokens).await;
    assert!(
        !scorer.has_room(),
        "{tokens} tokens wait, admit_tokens {tokens}"
    );
    assert!(scoring.await.unwrap()[0].is_ok());
    assert_eq!(model.stats().waiting_tokens, 0);
    assert!(scorer.has_room());

    // Abandoned before its batch: its tokens leave with it.
    let group = vec![candidate("b", &text, None)];
    let gave_up = tokio::time::timeout(Duration::from_millis(50), score(&scorer, &group)).await;
    assert!(gave_up.is_err());
    assert!(!scorer.has_room());
    waits_for(0).await;
    assert!(scorer.has_room());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_past_queue_capacity() {
    let set = load(vec![ModelConfig {
        queue_capacity: 2,
        ..cfg("rm", "scalar.pt", ModelKind::Scalar)
    }])
    .await
    .unwrap();
    let group: Vec<Candidate> = (0..3)
        .map(|i| candidate(&i.to_string(), "yes", None))
        .collect();
    let got = score(&set.scorer("rm").unwrap(), &group).await;
    for g in &got {
        let e = g.as_ref().unwrap_err();
        assert_eq!(e.reason.as_str(), "overloaded");
        assert!(
            e.retryable && e.message.contains("queue_capacity = 2"),
            "{}",
            e.message
        );
    }
    assert!(
        score(&set.scorer("rm").unwrap(), &group[..2])
            .await
            .iter()
            .all(Result::is_ok)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_models_and_one_load_per_model() {
    let set = load(vec![
        cfg("a", "scalar.pt", ModelKind::Scalar),
        ModelConfig {
            replicas: 2,
            ..cfg("b", "embedding.pt", ModelKind::Embedding)
        },
    ])
    .await
    .unwrap();
    let mut names: Vec<&str> = set.names().collect();
    names.sort_unstable();
    assert_eq!(names, ["a", "b"]);
    assert!(set.scorer("nope").is_none());
    // Two profiles asking for "a" get handles on the same loaded model.
    let (p1, p2) = (set.scorer("a").unwrap(), set.scorer("a").unwrap());
    score(&p1, &[candidate("x", "yes", None)]).await;
    score(&p2, &[candidate("y", "no", None)]).await;
    assert_eq!(set.model("a").unwrap().stats().sequences, 2);
    let got = score(
        &set.scorer("b").unwrap(),
        &[candidate("x", "yes", Some("yes"))],
    )
    .await;
    assert_close(got[0].as_ref().unwrap().value, 1.0, 1e-6, "identical texts");
}

fn load_err(models: Vec<ModelConfig>) -> String {
    let err = ModelSet::load(&models, &dir()).expect_err("load must fail");
    err.to_string()
}

#[test]
fn load_errors_name_the_model_and_the_cause() {
    let cases: Vec<(ModelConfig, &[&str])> = vec![
        (
            cfg("m", "absent.pt", ModelKind::Scalar),
            &["model m: no TorchScript file at", "absent.pt"],
        ),
        (
            ModelConfig {
                tokenizer: "absent.json".into(),
                ..cfg("m", "scalar.pt", ModelKind::Scalar)
            },
            &["model m: no tokenizer file at", "absent.json"],
        ),
        (
            ModelConfig {
                tokenizer: "expected.json".into(),
                ..cfg("m", "scalar.pt", ModelKind::Scalar)
            },
            &["model m: cannot use tokenizer"],
        ),
        (
            cfg("m", "not_a_model.pt", ModelKind::Scalar),
            &["model m: cannot load TorchScript", "not_a_model.pt"],
        ),
        (
            cfg("m", "bad_signature.pt", ModelKind::Scalar),
            &[
                "model m: wrong input signature",
                "(input_ids, attention_mask)",
            ],
        ),
        (
            cfg("m", "bad_output.pt", ModelKind::Scalar),
            &["model m: wrong output shape", "[B] or [B, 1]", "[2, 3]"],
        ),
        (
            cfg("m", "scalar.pt", ModelKind::Embedding),
            &[
                "model m: wrong output shape",
                "[B, T, H] or pooled vectors [B, H]",
            ],
        ),
        (
            cfg("m", "small_vocab.pt", ModelKind::Scalar),
            &[
                "model m: tokenizer and model do not match",
                "embedding table has 10 rows",
            ],
        ),
        (
            ModelConfig {
                max_length: 128,
                max_batch_tokens: 128,
                ..cfg("m", "scalar.pt", ModelKind::Scalar)
            },
            &[
                "model m: warm-up forward of 1 × 128 tokens",
                "position embeddings",
            ],
        ),
        (
            ModelConfig {
                device: Device::Cuda(0),
                ..cfg("m", "scalar.pt", ModelKind::Scalar)
            },
            &["model m: device cuda:0 asked for"],
        ),
        (
            ModelConfig {
                dtype: Dtype::F16,
                ..cfg("m", "scalar.pt", ModelKind::Scalar)
            },
            &["model m: dtype \"f16\" is not offered on cpu"],
        ),
    ];
    for (c, wants) in cases {
        let msg = load_err(vec![cfg("ok", "scalar.pt", ModelKind::Scalar), c]);
        for w in wants {
            assert!(msg.contains(w), "{w:?} not in {msg:?}");
        }
    }
    let msg = load_err(vec![
        cfg("m", "scalar.pt", ModelKind::Scalar),
        cfg("m", "embedding.pt", ModelKind::Embedding),
    ]);
    assert!(msg.contains("model m: two [[model]] entries"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bf16_on_cpu_runs_close_to_f32() {
    // The tiny models hold an int64 `position_ids` buffer, like Hugging Face models: only the
    // floating-point parameters may be cast.
    let set = load(vec![ModelConfig {
        dtype: Dtype::Bf16,
        ..cfg("rm", "scalar.pt", ModelKind::Scalar)
    }])
    .await
    .unwrap();
    let want = floats(&expected()["scalar"]);
    let group: Vec<Candidate> = texts()
        .iter()
        .enumerate()
        .map(|(i, t)| candidate(&i.to_string(), t, None))
        .collect();
    for (i, (g, w)) in score(&set.scorer("rm").unwrap(), &group)
        .await
        .iter()
        .zip(want)
        .enumerate()
    {
        assert_close(g.as_ref().unwrap().value, w, 0.1, &format!("bf16 text {i}"));
    }
}

#[test]
fn the_test_models_exist() {
    assert!(Path::new(&dir()).join("scalar.pt").is_file());
}
