//! Shared by the integration tests: finds the set-up's python and builds test models once.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rewardfleet_core::{Candidate, ChatMessage};

/// The test models of `kind` (`tiny`, `minilm`), built once per script version.
pub fn models(kind: &str) -> PathBuf {
    rewardfleet_testkit::test_models(kind, &[], Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// Runs the script's `st-cosine` on `pairs`; returns sentence-transformers' cosines.
pub fn st_cosine(pairs: &[(String, String)]) -> Vec<f64> {
    use std::io::Write;
    let mut child = Command::new(rewardfleet_testkit::python())
        .arg(rewardfleet_testkit::models_script())
        .arg("st-cosine")
        .env("HF_HUB_OFFLINE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    let body =
        serde_json::json!({ "pairs": pairs.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>() });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "st-cosine failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["cosine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn candidate(id: &str, response: &str, reference: Option<&str>) -> Candidate {
    Candidate {
        id: id.into(),
        group_id: "g".into(),
        prompt: vec![ChatMessage {
            role: "user".into(),
            content: "question".into(),
        }],
        response: response.into(),
        reference: reference.map(Into::into),
        labels: Default::default(),
    }
}
