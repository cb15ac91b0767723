//! `rewardfleet arena` through the real binary on examples/arena/, with the fake judge on a free
//! port: per-pair wins, losses and ties as the fake judge's qualities imply them, Wilson
//! intervals, Bradley–Terry ratings and the win-rate matrix; position-biased verdicts dropped or
//! counted as ties; bad input (unmatched prompt ids, duplicate ids, a profile without a pairwise
//! judge) reported by name before any judge call.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Fault, atomic_claims};
use serde_json::Value;
use support::binary;

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/arena")
        .join(file)
}

/// examples/arena/arena.toml with the judge at `judge`'s address, written in `dir`.
fn config(dir: &Path, judge: &FakeJudge) -> PathBuf {
    let text = std::fs::read_to_string(example("arena.toml")).unwrap();
    assert!(text.contains("http://127.0.0.1:8000/v1"));
    let text = text.replace("http://127.0.0.1:8000/v1", &judge.base_url());
    let path = dir.join("arena.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn arena(config: &Path, args: &[&str], files: &[PathBuf]) -> Output {
    Command::new(binary())
        .arg("arena")
        .arg("--config")
        .arg(config)
        .args(args)
        .args(files)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn models() -> Vec<PathBuf> {
    ["baseline.jsonl", "tuned.jsonl", "verbose.jsonl"]
        .iter()
        .map(|f| example(f))
        .collect()
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "arena failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn pair<'a>(report: &'a Value, a: &str, b: &str) -> &'a Value {
    report["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["a"] == a && p["b"] == b)
        .unwrap_or_else(|| panic!("no pair {a} vs {b} in {report}"))
}

fn counts(p: &Value) -> [u64; 4] {
    ["wins", "losses", "ties", "inconsistent"].map(|k| p[k].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_models_give_pairs_ratings_and_a_matrix() {
    let judge = FakeJudge::start(FakeJudgeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &judge);
    let files = models();
    let report = json(&arena(&config, &["--json", "--seed", "3"], &files));
    // The fake judge compares the [quality:N] markers (see the example files), per prompt:
    // baseline 5 6 3 6 7 2 6 2, tuned 8 8 7 6 8 8 5 7, verbose 7 7 9 9 6 7 8 8.
    let bt = pair(&report, "baseline", "tuned");
    assert_eq!(counts(bt), [1, 6, 1, 0]);
    assert_eq!(bt["win_rate"].as_f64().unwrap(), 1.5 / 8.0);
    // Wilson 95 % of 1.5/8, by the formula (see crates/arena/src/stats.rs).
    let (low, high) = (
        bt["ci"]["low"].as_f64().unwrap(),
        bt["ci"]["high"].as_f64().unwrap(),
    );
    assert!((low - 0.044_543_9).abs() < 1e-6 && (high - 0.533_210_8).abs() < 1e-6);
    assert!((bt["elo"].as_f64().unwrap() - 400.0 * (1.5f64 / 6.5).log10()).abs() < 1e-9);
    assert_eq!(counts(pair(&report, "baseline", "verbose")), [1, 7, 0, 0]);
    assert_eq!(counts(pair(&report, "tuned", "verbose")), [4, 4, 0, 0]);
    assert!(pair(&report, "tuned", "verbose")["comparisons_needed"].is_null());
    let ratings = report["ratings"].as_array().unwrap();
    assert_eq!(ratings.len(), 3);
    assert_eq!(ratings[2]["model"], "baseline");
    let mean: f64 = ratings
        .iter()
        .map(|r| r["rating"].as_f64().unwrap())
        .sum::<f64>()
        / 3.0;
    assert!((mean - 1000.0).abs() < 1e-6, "{mean}");
    let m = &report["matrix"];
    assert_eq!(m[1][0].as_f64().unwrap(), 6.5 / 8.0);
    // Both orders of every pair of every prompt: 3 pairs × 8 prompts × 2, less what the verdict
    // cache answered. On prompt 3 baseline and tuned gave the same response, so three of its
    // judgements repeat another (baseline–tuned in the other order, and tuned–verbose both ways
    // as baseline–verbose): each is asked of the judge only if it starts before its twin ends.
    let calls = judge.calls();
    assert!((45..=48).contains(&calls), "{calls} judge calls");

    // A second run (a new process: the judge is asked again) reports the same, seed included.
    let again = json(&arena(&config, &["--json", "--seed", "3"], &files));
    assert_eq!(again["ratings"], report["ratings"]);

    // With a style control on length: in these files the longer response mostly wins, so the
    // length coefficient is positive and verbose, the longest, loses its lead.
    let styled = json(&arena(&config, &["--json", "--style-control"], &files));
    assert!(styled["style_beta"].as_f64().unwrap() > 0.0, "{styled}");
    let order: Vec<&str> = styled["style_ratings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(order.len(), 3);
    assert_eq!(order[2], "verbose", "{styled}");
    assert!(report["style_ratings"].is_null());

    // The terminal table.
    let out = arena(&config, &["--anchor", "baseline"], &files);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("Bradley–Terry"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("baseline ") && l.contains(" 1000.0  [")),
        "{table}"
    );
    assert!(table.contains("18.8%"), "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn position_biased_verdicts_are_dropped_or_ties() {
    // A judge that always prefers what it is shown first.
    let judge = FakeJudge::start(FakeJudgeConfig {
        fault_rate: 1.0,
        random_fault: Fault::PositionBias,
        ..FakeJudgeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &judge);
    let files = &models()[..2];
    let dropped = json(&arena(&config, &["--json"], files));
    let p = pair(&dropped, "baseline", "tuned");
    assert_eq!(counts(p), [0, 0, 0, 8]);
    assert!(p["win_rate"].is_null());
    let tied = json(&arena(&config, &["--json", "--inconsistent", "tie"], files));
    let p = pair(&tied, "baseline", "tuned");
    assert_eq!(counts(p), [0, 0, 8, 8]);
    assert_eq!(p["win_rate"].as_f64().unwrap(), 0.5);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_named_before_any_judge_call() {
    let judge = FakeJudge::start(FakeJudgeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &judge);
    let short = dir.path().join("short.jsonl");
    let text = std::fs::read_to_string(example("tuned.jsonl")).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("\"p7\"")).collect();
    std::fs::write(&short, kept.join("\n")).unwrap();
    let dup = dir.path().join("dup.jsonl");
    std::fs::write(&dup, format!("{text}{}\n", text.lines().next().unwrap())).unwrap();
    let no_pairwise = dir.path().join("rubric.toml");
    std::fs::write(
        &no_pairwise,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("method = \"pairwise\"", "method = \"reference\""),
    )
    .unwrap();
    for (config, files, want) in [
        (
            &config,
            vec![example("baseline.jsonl"), short.clone()],
            "model \"short\" has no response to 1 prompt id(s): p7",
        ),
        (
            &config,
            vec![example("baseline.jsonl"), dup.clone()],
            "duplicate id \"p1\"",
        ),
        (
            &no_pairwise,
            models(),
            "profile \"compare\" has no pairwise judge component",
        ),
    ] {
        let out = arena(config, &[], &files);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    assert_eq!(judge.calls(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn factuality_reports_precision_error_and_hallucination_rates_per_model() {
    let judge = FakeJudge::start(FakeJudgeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &judge);
    let args = ["--json", "--profile", "facts", "--metric", "factuality"];
    let report = json(&arena(&config, &args, &models()));
    let model = |name: &str| {
        report["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == name)
            .unwrap()
            .clone()
    };
    let rate = |m: &Value, k: &str| m[k]["value"].as_f64().unwrap();
    // By hand, from the example files (one claim per sentence; a claim is supported when the
    // reference contains it): baseline answers 7 prompts with one claim each, 5 supported, and
    // abstains on p8 ("I am not sure.").
    let b = model("baseline");
    assert_eq!(
        (b["responses"].as_u64(), b["abstained"].as_u64()),
        (Some(8), Some(1))
    );
    assert!((rate(&b, "precision") - 5.0 / 7.0).abs() < 1e-12);
    assert!((rate(&b, "claim_error_rate") - 2.0 / 7.0).abs() < 1e-12);
    assert!((rate(&b, "hallucination_rate") - 2.0 / 7.0).abs() < 1e-12);
    // tuned: 12 claims, all supported.
    let t = model("tuned");
    assert_eq!(t["claims"].as_u64(), Some(12));
    assert_eq!(rate(&t, "precision"), 1.0);
    assert_eq!(rate(&t, "hallucination_rate"), 0.0);
    // verbose: one unsupported claim in every answer (two in p1's four): 16 of 25 supported.
    let v = model("verbose");
    assert_eq!(v["claims"].as_u64(), Some(25));
    assert!((rate(&v, "claim_error_rate") - 9.0 / 25.0).abs() < 1e-12);
    assert!((rate(&v, "precision") - (0.5 + 7.0 * 2.0 / 3.0) / 8.0).abs() < 1e-12);
    assert_eq!(rate(&v, "hallucination_rate"), 1.0);
    let ci = &v["claim_error_rate"]["ci"];
    assert!(ci["low"].as_f64().unwrap() <= 0.36 && 0.36 <= ci["high"].as_f64().unwrap());
    // One split per response, one verification per claim; a claim that several models make on
    // the same prompt is verified once, then read from the judge cache (unless the models ask
    // at the same moment).
    let mut distinct = std::collections::BTreeSet::new();
    for file in models() {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let (claims, _) = atomic_claims(v["response"].as_str().unwrap());
            for claim in claims {
                distinct.insert((v["id"].to_string(), claim));
            }
        }
    }
    let calls = judge.calls();
    assert!(
        (24 + distinct.len() as u64..=24 + 7 + 12 + 25).contains(&calls),
        "{calls} calls; {} distinct claims",
        distinct.len()
    );

    // A line without a reference is named before any judge call.
    let no_ref = dir.path().join("noref.jsonl");
    let text = std::fs::read_to_string(example("tuned.jsonl")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.contains("\"p3\"") {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("reference");
                v.to_string()
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&no_ref, lines.join("\n")).unwrap();
    let out = arena(
        &config,
        &args[1..],
        &[example("baseline.jsonl"), no_ref.clone()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model \"noref\": no reference for prompt id(s) p3"),
        "{err}"
    );
    assert_eq!(judge.calls(), calls);
}

#[tokio::test(flavor = "multi_thread")]
async fn through_a_gateway_the_report_is_the_same() {
    let judge = FakeJudge::start(FakeJudgeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &judge);
    let port = rewardfleet_testkit::free_port().unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[gateway]\n",
        &format!("[gateway]\nlisten = \"127.0.0.1:{port}\"\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let mut gateway =
        support::process::Process::start("gateway", &["gateway"], &config, "listening");
    let url = format!("http://127.0.0.1:{port}");
    let args = ["--json", "--seed", "3", "--gateway", url.as_str()];
    let remote = json(&arena(&config, &args, &models()));
    let local = json(&arena(&config, &args[..3], &models()));
    assert_eq!(remote["pairs"], local["pairs"]);
    assert_eq!(remote["ratings"], local["ratings"]);
    assert_eq!(counts(pair(&remote, "baseline", "tuned")), [1, 6, 1, 0]);
    gateway.terminate(std::time::Duration::from_secs(20));
}
