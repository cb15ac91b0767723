//! `rewardfleet bench` against the real binary's gateway in embedded mode: the JSON report
//! counts what was sent, its statuses add up, its percentiles are ordered, a sweep gives one row
//! per level, and bad flags or a bad target fail before anything is measured.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use rewardfleet_testkit::free_port;
use serde_json::Value;
use support::process::Process;
use support::*;

/// An embedded gateway of the binary: gRPC on `grpc`, HTTP endpoints on `http`.
fn gateway(dir: &Path, grpc: u16, http: u16) -> Process {
    let text = config_text(None, "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{grpc}"))
        .replace(
            "[gateway]\n",
            &format!("[gateway]\nhttp_listen = \"127.0.0.1:{http}\"\n"),
        );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    Process::start("gateway", &["gateway"], &path, "listening on")
}

fn bench(args: &[&str]) -> Output {
    Command::new(binary())
        .arg("bench")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Runs `bench --json` and returns its report; fails the test on a non-zero exit.
fn report(args: &[&str]) -> Value {
    let out = bench(&[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn n(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for key in path {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

/// Statuses add up to the candidates sent, latency percentiles are ordered and positive.
fn check_consistent(r: &Value) {
    let sent = n(r, &["candidates"]);
    let statuses: f64 = ["ok", "degraded", "failed", "error"]
        .iter()
        .map(|s| n(r, &["statuses", s]))
        .sum();
    assert_eq!(
        statuses, sent,
        "statuses add up to the candidates sent: {r}"
    );
    for of in ["candidate", "request"] {
        let p = |q| n(r, &["latency_ms", of, q]);
        assert!(p("p50") > 0.0, "{r}");
        assert!(
            p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("max"),
            "{of} percentiles out of order: {r}"
        );
    }
    assert!(n(r, &["candidates_per_s"]) > 0.0, "{r}");
    assert!(n(r, &["tokens"]) > 0.0, "{r}");
}

#[test]
fn each_api_reports_what_it_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let _gw = gateway(dir.path(), grpc, http);
    let input = dir.path().join("in.jsonl");
    write_input(&input, 30);
    let gateway = format!("http://127.0.0.1:{grpc}");
    let url = format!("http://127.0.0.1:{http}/get_reward");
    for api in ["score", "batch", "http"] {
        let r = report(&[
            "--api",
            api,
            "--gateway",
            &gateway,
            "--url",
            &url,
            "--input",
            input.to_str().unwrap(),
            "--concurrency",
            "4",
            "--batch-size",
            "3",
            "--warmup",
            "0.2",
            "--requests",
            "40",
            "--duration",
            "60",
        ]);
        assert_eq!(r["api"], api);
        assert_eq!(n(&r, &["requests"]), 40.0, "{r}");
        assert_eq!(n(&r, &["candidates"]), 120.0, "{r}");
        assert_eq!(n(&r, &["statuses", "error"]), 0.0, "{r}");
        check_consistent(&r);
        // The e2e profile's gate fails one candidate in three of the input; none fails.
        assert_eq!(n(&r, &["statuses", "failed"]), 0.0, "{r}");
    }

    // Synthetic lengths, in words: `fixed:N` sends N words per candidate.
    let r = report(&[
        "--gateway",
        &gateway,
        "--lengths",
        "fixed:5",
        "--batch-size",
        "2",
        "--warmup",
        "0",
        "--requests",
        "25",
    ]);
    assert_eq!(n(&r, &["candidates"]), 50.0, "{r}");
    assert_eq!(n(&r, &["tokens"]), 250.0, "{r}");
    check_consistent(&r);
}

#[test]
fn a_sweep_gives_one_row_per_level_and_a_rate_keeps_its_pace() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let _gw = gateway(dir.path(), grpc, http);
    let gateway = format!("http://127.0.0.1:{grpc}");
    let rows = report(&[
        "--gateway",
        &gateway,
        "--sweep",
        "1,2,8",
        "--warmup",
        "0.1",
        "--duration",
        "0.5",
    ]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, level) in rows.iter().zip([1.0, 2.0, 8.0]) {
        assert_eq!(n(row, &["concurrency"]), level);
        assert!(n(row, &["requests"]) > 0.0, "{row}");
        assert!(n(row, &["steady_candidates_per_s"]) > 0.0, "{row}");
        check_consistent(row);
    }

    // Open loop: 40 requests a second for one second start about 40 requests.
    let r = report(&[
        "--gateway",
        &gateway,
        "--api",
        "batch",
        "--rate",
        "40",
        "--warmup",
        "0",
        "--duration",
        "1",
    ]);
    let sent = n(&r, &["requests"]);
    assert!(
        (35.0..=41.0).contains(&sent),
        "{sent} requests at 40/s: {r}"
    );
    assert!(r["concurrency"].is_null());
    check_consistent(&r);
}

#[test]
fn bad_flags_and_bad_targets_fail_before_measuring() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let _gw = gateway(dir.path(), grpc, http);
    let gateway = format!("http://127.0.0.1:{grpc}");
    let url = format!("http://127.0.0.1:{http}/get_reward");
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(&broken, "{\"id\": \"a\", \"response\": \"x\"}\nnot json\n").unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--gateway", &closed], "cannot reach the gateway"),
        (
            vec!["--gateway", &gateway, "--profile", "nope"],
            "unknown profile \"nope\"",
        ),
        (
            vec!["--api", "http", "--url", &url, "--profile", "nope"],
            "unknown profile",
        ),
        (
            vec!["--gateway", &gateway, "--input", broken.to_str().unwrap()],
            "line 2",
        ),
        (vec!["--lengths", "uniform:9:2"], "lower bound exceeds"),
        (vec!["--lengths", "normal:3"], "expected fixed:N"),
        (vec!["--api", "http"], "needs --url"),
        (vec!["--batch-size", "0"], "--batch-size"),
        (vec!["--sweep", "1,x"], "--sweep"),
        (vec!["--rate", "5", "--concurrency", "2"], "cannot be used"),
    ];
    for (args, says) in cases {
        let out = bench(&[&args[..], &["--duration", "1", "--json"]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr:?} lacks {says:?}");
        assert!(out.stdout.is_empty(), "{args:?} measured something");
    }
}
