//! TorchScript test models made by `scripts/make_test_models.py` with the set-up's python, built
//! once per script version and cached.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

/// The python with torch: `RF_PYTHON`, else the set-up's virtualenv
/// (`~/.cache/rewardfleet/venv`), else `python3`.
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

/// `scripts/make_test_models.py` of this checkout.
pub fn models_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make_test_models.py")
}

/// Runs `make_test_models.py <command> <dir> <extra…>` unless `<cache>/<command>…-<script hash>`
/// already holds a finished build (its `DONE` file); returns that directory. Concurrent processes
/// each build into a temporary directory of their own and the first to finish wins the rename.
///
/// # Panics
/// When python cannot import torch and tokenizers (the set-up installs them: a test must fail,
/// not skip) or the script fails.
pub fn test_models(command: &str, extra: &[&str], cache: &Path) -> PathBuf {
    let source = std::fs::read(models_script()).expect("scripts/make_test_models.py is readable");
    // FNV-1a of the script: a new script version builds new models.
    let hash = source.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let name = std::iter::once(command)
        .chain(extra.iter().copied())
        .collect::<Vec<_>>()
        .join("-")
        .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let dir = cache.join(format!("rf-test-models/{name}-{hash:016x}"));
    // The tests of one process build one at a time (the temporary directory is per process).
    static BUILDING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(PoisonError::into_inner);
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
            "{} cannot import torch and tokenizers ({other:?}). Run the set-up (scripts/setup.sh) \
             or point RF_PYTHON at a python that has them",
            py.display()
        ),
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new(&py)
        .arg(models_script())
        .arg(command)
        .arg(&tmp)
        .args(extra)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "make_test_models.py {command} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).expect("the model cache directory can be made");
    }
    // Another process may have won the race: either copy is complete.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(dir.join("DONE").is_file(), "{} has no DONE", dir.display());
    dir
}
