//! The `rewardfleet` binary as a user runs it: `check` on broken configurations, `score` on a
//! JSONL file with broken lines.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::process::Command;

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
