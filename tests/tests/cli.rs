//! The `rewardfleet` binary as a user runs it: `check` on broken configurations, `score` on a
//! JSONL file with broken lines, judges that fall back and judgements that are redelivered.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::Path;
use std::process::Command;

use rewardfleet_core::{Candidate, ChatMessage};
use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Fault};
use support::*;

#[test]
fn check_reports_every_problem_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[gateway]
max_in_flight = 0

[worker]
max_concurent_jobs = 4

[profile.p]
components = [
  { rule = "max_chars", limt = 10 },
  { rule = "regex", pattern = "(unclosed" },
  { scorer = "nobody" },
]
normalize = "clip"
"#,
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Unknown keys come first (the file's shape), then every value problem.
    assert!(
        err.contains("worker.max_concurent_jobs: unknown key"),
        "{err}"
    );

    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("max_concurent_jobs", "max_concurrent_jobs"),
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "gateway.max_in_flight: must be at least 1",
        "profile.p.components[2].scorer: unknown scorer \"nobody\"",
        "profile.p.clip: normalize = \"clip\" needs clip = [min, max]",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }

    std::fs::write(
        &path,
        r#"
[profile.p]
components = [
  { rule = "max_chars", limt = 10 },
  { rule = "regex", pattern = "(unclosed" },
]
"#,
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("profile.p.components[0].limt"), "{err}");
    assert!(err.contains("profile.p.components[1].pattern"), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, config_text(None, "")).unwrap();
    let out = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (embedded mode"));
}

#[test]
fn score_answers_broken_lines_and_scores_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        config_text(None, "[limits]\nmax_response_bytes = 100\n"),
    )
    .unwrap();
    let mut input: Vec<u8> = Vec::new();
    let line = |i: usize| {
        let c = candidate(i);
        serde_json::json!({"id": c.id, "group_id": c.group_id, "prompt": "q", "response": c.response, "reference": c.reference})
            .to_string()
    };
    input.extend(line(0).as_bytes());
    input.extend(b"\n{\"id\": \"broken\", \"response\": \n");
    input.extend(b"{\"id\": \"bytes\", \"response\": \"\xff\xfe\"}\n");
    input.extend(line(1).as_bytes());
    input.extend(b"\n{\"id\": \"huge\", \"response\": \"");
    input.extend("z".repeat(500).as_bytes());
    input.extend(b"\"}\n");
    input.extend(line(1).as_bytes()); // a duplicate id
    input.extend(b"\n\n");
    input.extend(line(2).as_bytes());
    input.push(b'\n');
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, input).unwrap();
    let out = Command::new(binary())
        .arg("score")
        .arg("--config")
        .arg(&config)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7, "one output line per input line: {lines:#?}");
    assert_eq!(lines[0]["reward"], expected(0));
    assert_eq!(lines[1]["status"], "FAILED");
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("line 2: malformed JSON line")
    );
    assert_eq!(lines[2]["status"], "FAILED");
    assert!(
        lines[2]["error"]
            .as_str()
            .unwrap()
            .contains("line 3: invalid UTF-8")
    );
    assert_eq!(lines[3]["reward"], expected(1));
    assert_eq!(lines[4]["id"], "huge");
    assert!(
        lines[4]["error"]
            .as_str()
            .unwrap()
            .contains("limit max_response_bytes = 100")
    );
    assert!(lines[5]["error"].as_str().unwrap().contains("duplicate id"));
    assert_eq!(lines[6]["reward"], expected(2));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("scored 7 candidates"), "{summary}");
    assert!(summary.contains("3 ok, 0 degraded, 4 failed"), "{summary}");
    assert!(summary.contains("malformed JSON line"), "{summary}");
}

/// `[[judge]]` tables for fake judges: `(name, base_url)`.
fn judges_toml(judges: &[(&str, String)], extra: &str) -> String {
    judges
        .iter()
        .map(|(name, url)| {
            format!(
                "[[judge]]\nname = \"{name}\"\nbase_url = \"{url}\"\nmodel = \"fake-judge\"\nrequests_per_second = 1000\ntimeout = \"2s\"\ndeadline = \"10s\"\nbackoff_base = \"10ms\"\n{extra}\n"
            )
        })
        .collect()
}

fn judged(i: usize, response: &str) -> Candidate {
    Candidate {
        id: format!("j{i}"),
        group_id: "g".into(),
        prompt: vec![ChatMessage {
            role: "user".into(),
            content: "Explain the answer.".into(),
        }],
        response: response.into(),
        ..Candidate::default()
    }
}

fn check_output(config: &Path) -> (bool, String, String) {
    let out = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_falls_back_to_a_judge_through_rewardfleet_score() {
    // The primary refuses every request; the backup answers.
    let down = FakeJudge::start(FakeJudgeConfig {
        fault_rate: 1.0,
        random_fault: Fault::BadRequest,
        ..FakeJudgeConfig::default()
    })
    .await
    .unwrap();
    let up = FakeJudge::start(FakeJudgeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("helpful.md"), "Score how helpful it is.").unwrap();
    let config = dir.path().join("fleet.toml");
    let judges = judges_toml(
        &[("primary", down.base_url()), ("backup", up.base_url())],
        "",
    );
    // `fallback = "backup"` inherits the primary's rubric and score range.
    std::fs::write(
        &config,
        config_text(
            None,
            &format!(
                "{judges}\n[profile.judged]\ncomponents = [{{ scorer = \"primary\", rubric = \"helpful.md\", score_range = [0, 10], fallback = \"backup\" }}]\n"
            ),
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = check_output(&config);
    assert!(ok && stdout.contains("ok (embedded mode"), "{stderr}");

    let candidates = [judged(0, "quality:7 yes"), judged(1, "quality:2 no")];
    let out = {
        let (config, dir_path) = (config.clone(), dir.path().to_owned());
        let cands = candidates.to_vec();
        tokio::task::spawn_blocking(move || score_embedded(&config, "judged", &cands, &dir_path))
            .await
            .unwrap()
    };
    for (c, want) in [(&candidates[0], 0.7), (&candidates[1], 0.2)] {
        let line = &out[&c.id];
        assert_eq!(line["status"], "DEGRADED", "{line}");
        assert!(
            (line["reward"].as_f64().unwrap() - want).abs() < 1e-9,
            "the backup judged with the inherited score range: {line}"
        );
        let flags: Vec<&str> = line["flags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        assert!(
            flags.contains(&"fallback:primary:backup:judge_rejected"),
            "{line}"
        );
    }
    assert_eq!((down.calls(), up.calls()), (2, 2));
}

#[test]
fn check_rejects_a_fallback_that_cannot_be_built() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("helpful.md"), "Score how helpful it is.").unwrap();
    let judges = judges_toml(
        &[
            ("primary", "http://127.0.0.1:9/v1".into()),
            ("backup", "http://127.0.0.1:9/v1".into()),
        ],
        "",
    );
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        config_text(
            None,
            &format!(
                r#"{judges}
[profile.judged]
components = [
  {{ rule = "exact_match", fallback = "backup" }},
  {{ scorer = "primary", rubric = "helpful.md", fallback = {{ scorer = "backup", method = "vibes" }} }},
]
"#
            ),
        ),
    )
    .unwrap();
    let (ok, _, stderr) = check_output(&config);
    assert!(!ok, "check accepted a fallback no worker can build");
    for want in [
        "profile.judged.components[0].fallback: \"backup\": rubric: ",
        "fallback = { scorer = \"backup\"",
        "profile.judged.components[1].fallback.method: unknown method \"vibes\"",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_job_does_not_send_the_judge_what_it_refused() {
    // Calls in arrival order: one candidate is refused (400), the other's judge is unavailable
    // (503, no retries), so the job goes back to the queue and is scored again.
    let fake = FakeJudge::start(FakeJudgeConfig {
        script: vec![Fault::BadRequest, Fault::Unavailable { retry_after: None }],
        ..FakeJudgeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("helpful.md"), "Score how helpful it is.").unwrap();
    let judges = judges_toml(&[("j", fake.base_url())], "max_retries = 0");
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        config_text(
            None,
            &format!(
                "{judges}\n[profile.judged]\ncomponents = [{{ scorer = \"j\", rubric = \"helpful.md\" }}]\non_component_failure = \"fail\"\n"
            ),
        )
        .replace("[worker]\n", "[worker]\nretry_delay = \"50ms\"\n"),
    )
    .unwrap();
    let candidates = [judged(0, "quality:3 first"), judged(1, "quality:8 second")];
    let out = {
        let (config, dir_path) = (config.clone(), dir.path().to_owned());
        let cands = candidates.to_vec();
        tokio::task::spawn_blocking(move || score_embedded(&config, "judged", &cands, &dir_path))
            .await
            .unwrap()
    };
    let refused: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| out[&c.id]["status"] == "FAILED")
        .collect();
    assert_eq!(refused.len(), 1, "{out:?}");
    let refused = refused[0];
    assert!(
        out[&refused.id]["error"]
            .as_str()
            .unwrap()
            .contains("judge_rejected"),
        "{out:?}"
    );
    let flaky = candidates.iter().find(|c| c.id != refused.id).unwrap();
    assert_eq!(out[&flaky.id]["status"], "OK", "{out:?}");
    // Two deliveries: the refused candidate went to the judge once, the other twice.
    let sent = |c: &Candidate| {
        fake.requests()
            .iter()
            .filter(|r| {
                r.body["messages"][1]["content"]
                    .as_str()
                    .unwrap()
                    .contains(&c.response)
            })
            .count()
    };
    assert_eq!((sent(refused), sent(flaky)), (1, 2));
    assert_eq!(fake.calls(), 3);
}
