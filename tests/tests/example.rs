//! The README's first command, `scripts/run-example.sh`: the profile `mix` of examples/mix.toml (a
//! length rule, all-MiniLM-L6-v2 on libtorch and an LLM judge) scores examples/mix.jsonl in
//! embedded mode. This test does what the script does — all-MiniLM-L6-v2 exported to TorchScript
//! in out/models/minilm by scripts/make_test_models.py when missing, the fake judge on a free
//! loopback port written into the configuration's `base_url`, the real `rewardfleet score` — and
//! checks that every candidate is OK with its three components and that the summary says what
//! each component, the judge and the model did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig};
use rewardfleet_testkit::{models_script, python};
use serde_json::Value;
use support::binary;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// out/models/minilm as run-example.sh makes it, made the same way when it is missing:
/// `make_test_models.py minilm` into a folder of this process, then renamed into place.
fn example_model(root: &Path) -> PathBuf {
    // The tests of this file export one at a time (the temporary folder is per process).
    static EXPORTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = EXPORTING.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = root.join("out/models/minilm");
    if dir.join("DONE").is_file() {
        return dir;
    }
    let tmp = root.join(format!("out/models/minilm.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let py = python();
    let out = Command::new(&py)
        .arg(models_script())
        .arg("minilm")
        .arg(&tmp)
        .output()
        .unwrap_or_else(|e| panic!("{} does not run: {e}", py.display()));
    assert!(
        out.status.success(),
        "make_test_models.py minilm failed (scripts/setup.sh installs what it needs):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The script or another test run may have finished first: either copy is whole.
    if !dir.join("DONE").is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::rename(&tmp, &dir);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(dir.join("DONE").is_file(), "{} has no DONE", dir.display());
    dir
}

/// examples/mix.toml with `base_url` set as run-example.sh sets it.
fn with_base_url(config: &str, base_url: &str) -> String {
    let mut replaced = 0;
    let lines: Vec<String> = config
        .lines()
        .map(|line| {
            if line.starts_with("base_url = ") {
                replaced += 1;
                format!("base_url = \"{base_url}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(
        replaced, 1,
        "examples/mix.toml has one `base_url = ` line (run-example.sh replaces it)"
    );
    lines.join("\n") + "\n"
}

/// The numbers after `prefix` in `text`'s line that starts with it (`"  judge judge: "` →
/// calls, attempts, failed, cache hits, tokens …).
fn numbers_after(text: &str, prefix: &str) -> Vec<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in the summary:\n{text}"));
    line.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn the_example_scores_every_candidate_with_the_rule_the_model_and_the_judge() {
    let root = root();
    std::fs::create_dir_all(root.join("out")).unwrap();
    example_model(&root);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let judge = runtime
        .block_on(FakeJudge::start(FakeJudgeConfig::default()))
        .unwrap();
    let example = std::fs::read_to_string(root.join("examples/mix.toml")).unwrap();
    // Beside the script's out/mix.toml, so that the model paths resolve the same way.
    let config = tempfile::Builder::new()
        .prefix("mix-test-")
        .suffix(".toml")
        .tempfile_in(root.join("out"))
        .unwrap();
    std::fs::write(config.path(), with_base_url(&example, &judge.base_url())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rewards = dir.path().join("rewards.jsonl");
    let input = root.join("examples/mix.jsonl");

    let out = Command::new(binary())
        .arg("score")
        .arg("--config")
        .arg(config.path())
        .arg("--profile")
        .arg("mix")
        .arg(&input)
        .arg("-o")
        .arg(&rewards)
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "rewardfleet score failed:\n{summary}");

    let inputs: Vec<Value> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outputs: Vec<Value> = std::fs::read_to_string(&rewards)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(inputs.len() >= 24, "a few dozen candidates");
    assert_eq!(outputs.len(), inputs.len(), "one reward per candidate");
    let mut by_id = HashMap::new();
    for (input, output) in inputs.iter().zip(&outputs) {
        assert_eq!(output["id"], input["id"], "rewards in input order");
        assert_eq!(output["status"], "OK", "{output}");
        let c = output["components"].as_object().unwrap();
        let names: BTreeSet<&str> = c.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            BTreeSet::from(["concise", "correct", "similarity"]),
            "{output}"
        );
        let (correct, similarity, concise) = (
            c["correct"].as_f64().unwrap(),
            c["similarity"].as_f64().unwrap(),
            c["concise"].as_f64().unwrap(),
        );
        assert!(correct == 0.0 || correct == 1.0, "{output}");
        assert!((-1.0..=1.0).contains(&similarity), "{output}");
        assert!((0.0..=1.0).contains(&concise), "{output}");
        // normalize = "none": the weighted sum of the components.
        let want = 0.6 * correct + 0.3 * similarity + 0.1 * concise;
        let got = output["reward"].as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-6,
            "reward {got}, want {want}: {output}"
        );
        by_id.insert(input["id"].as_str().unwrap().to_owned(), output.clone());
    }
    let component = |id: &str, name: &str| by_id[id]["components"][name].as_f64().unwrap();
    // The judge was told the reference: "Canberra" is right, "Sydney" is wrong.
    assert_eq!(component("capital-0", "correct"), 1.0);
    assert_eq!(component("capital-1", "correct"), 0.0);
    // The model: the right answer says what the reference says more than the wrong one does.
    assert!(component("capital-0", "similarity") > component("capital-1", "similarity") + 0.1);
    // The rule: 341 characters, 141 past the limit of 200 with a tolerance of 400.
    let concise = component("linear-3", "concise");
    assert!((concise - (1.0 - 141.0 / 400.0)).abs() < 1e-9, "{concise}");
    assert_eq!(component("linear-2", "concise"), 1.0);

    let n = inputs.len() as u64;
    assert!(
        summary.contains(&format!("scored {n} candidates")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("status: {n} ok, 0 degraded, 0 failed")),
        "{summary}"
    );
    for name in ["concise", "correct", "similarity"] {
        let numbers = numbers_after(&summary, &format!("  component {name}: mean "));
        assert_eq!(
            numbers.last(),
            Some(&n),
            "{name} over every candidate: {summary}"
        );
    }
    let mean_correct = outputs
        .iter()
        .map(|o| o["components"]["correct"].as_f64().unwrap())
        .sum::<f64>()
        / n as f64;
    assert!(
        summary.contains(&format!("  component correct: mean {mean_correct:.4} over")),
        "{summary}"
    );
    // calls, attempts, failed, cache hits: each candidate was judged once, by a call or the cache.
    let judged = numbers_after(&summary, "  judge judge: ");
    let (calls, attempts, failed, hits) = (judged[0], judged[1], judged[2], judged[3]);
    assert_eq!(calls + hits, n, "{summary}");
    assert_eq!(failed, 0, "{summary}");
    assert_eq!(
        attempts,
        judge.calls(),
        "every attempt reached the judge: {summary}"
    );
    // batches, sequences, tokens, padded tokens: responses and references, each distinct text of
    // a job once.
    let model = numbers_after(&summary, "  model minilm: ");
    let (batches, sequences, tokens, padded) = (model[0], model[1], model[2], model[3]);
    assert!(batches >= 1 && batches <= sequences, "{summary}");
    assert!(sequences > n / 2 && sequences <= 2 * n, "{summary}");
    assert!(tokens >= sequences * 3 && tokens <= padded, "{summary}");
}

#[test]
fn both_example_configurations_check_and_the_rules_only_one_needs_no_judge_and_no_model() {
    let root = root();
    // `check` wants the model's files where examples/mix.toml says (it does not load them).
    example_model(&root);
    for config in ["examples/fleet.toml", "examples/mix.toml"] {
        let out = Command::new(binary())
            .arg("check")
            .arg("--config")
            .arg(root.join(config))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // examples/fleet.toml has no [[judge]] and no [[model]]: nothing to start, nothing to export.
    let dir = tempfile::tempdir().unwrap();
    let rewards = dir.path().join("math.jsonl");
    let out = Command::new(binary())
        .arg("score")
        .arg("--config")
        .arg(root.join("examples/fleet.toml"))
        .arg(root.join("examples/math.jsonl"))
        .arg("-o")
        .arg(&rewards)
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{summary}");
    let lines = std::fs::read_to_string(root.join("examples/math.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(
        summary.contains(&format!("status: {lines} ok, 0 degraded, 0 failed")),
        "{summary}"
    );
    assert!(
        summary.contains("  component math_answer: mean "),
        "{summary}"
    );
    assert!(
        !summary.contains("  judge ") && !summary.contains("  model "),
        "{summary}"
    );
}
