//! Observability through the real processes: `rewardfleet gateway` and `rewardfleet worker` with
//! a real nats-server, the fake judge and the tiny TorchScript model export their spans to an
//! OTLP collector (the OpenTelemetry protocol's own gRPC services) and their metrics to a real
//! Prometheus server that scrapes them. The trace of a trainer's call runs through every hop
//! under the trainer's own parent; the counters match what the session did; `promtool` accepts
//! every metric. Telemetry that cannot start says why; telemetry that cannot export fails no
//! candidate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rewardfleet_core::{Candidate, ChatMessage};
use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Fault};
use rewardfleet_proto::v1::ScoreBatchRequest;
use rewardfleet_proto::v1::reward::Status;
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_testkit::{NatsServer, free_port, test_models};
use support::binary;
use support::otlp::{Collector, Received};
use support::process::Process;
use support::prometheus::{Prometheus, promtool_check};

/// The trainer's own trace: a W3C `traceparent` it sends in the call's metadata.
const TRAINER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRAINER_SPAN: &str = "00f067aa0ba902b7";
/// Candidates per batch, each its own group; two per job, so four jobs share the model.
const N: usize = 8;

fn models() -> PathBuf {
    test_models("tiny", &[], Path::new(env!("CARGO_TARGET_TMPDIR")))
}

#[allow(clippy::too_many_arguments)]
fn config(
    dir: &Path,
    nats: &str,
    listen: &str,
    judge: &str,
    otlp: &str,
    prometheus: &str,
) -> String {
    format!(
        r#"[nats]
url = "{nats}"

[gateway]
listen = "{listen}"

[limits]
max_group_size = 2

[jobs]
max_candidates = 2

[worker]
max_concurrent_jobs = 16

[telemetry]
otlp_endpoint = "{otlp}"
prometheus_listen = "{prometheus}"
metrics_interval = "1s"

[[model]]
name = "rm"
path = "{dir}/scalar.pt"
tokenizer = "{dir}/tokenizer.json"
kind = "scalar"
template = "{{response}}"
max_length = 64
max_batch_tokens = 4096
max_wait = "200ms"
threads = 1

[[judge]]
name = "judge"
base_url = "{judge}"
model = "fake-judge"
max_retries = 2
backoff_base = "10ms"
backoff_max = "20ms"
failure_cache_ttl = "1h"
timeout = "5s"

[profile.mix]
components = [
  {{ name = "verdict", scorer = "judge", method = "reference" }},
  {{ scorer = "rm" }},
  {{ rule = "max_chars", limit = 200 }},
]
normalize = "none"
on_component_failure = "fail"
"#,
        dir = dir.display(),
    )
}

/// Candidates that no span may ever show: their responses carry this marker.
const SECRET: &str = "response-text-never-on-spans";

fn candidates() -> Vec<Candidate> {
    (0..N)
        .map(|i| Candidate {
            id: format!("c{i}"),
            group_id: format!("g{i}"),
            prompt: vec![ChatMessage {
                role: "user".into(),
                content: "What is the capital of France?".into(),
            }],
            response: format!("{SECRET} {i}: Paris"),
            reference: Some("Paris".into()),
            labels: HashMap::new(),
        })
        .collect()
}

fn by_name<'a>(spans: &'a [Received], name: &str) -> Vec<&'a Received> {
    spans.iter().filter(|s| s.span.name == name).collect()
}

fn parent_of<'a>(spans: &'a [Received], child: &Received) -> &'a Received {
    spans
        .iter()
        .find(|s| s.span_id() == child.parent_id())
        .unwrap_or_else(|| panic!("the parent of {:?} was exported", child.span.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scored_batch_is_one_trace_across_every_hop_and_prometheus_counts_it() {
    let dir = models();
    let nats = NatsServer::start().await.unwrap();
    // The first judge call fails with a 500 (retried), the second with a 400 (its candidate
    // FAILS); every other call answers.
    let judge = FakeJudge::start(FakeJudgeConfig {
        script: vec![Fault::ServerError, Fault::BadRequest],
        ..Default::default()
    })
    .await
    .unwrap();
    let collector = Collector::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let gateway_metrics = format!("127.0.0.1:{}", free_port().unwrap());
    let worker_metrics = format!("127.0.0.1:{}", free_port().unwrap());
    let write = |name: &str, metrics: &str| {
        let path = tmp.path().join(name);
        let text = config(
            &dir,
            &nats.url(),
            &listen,
            &judge.base_url(),
            &collector.endpoint(),
            metrics,
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let worker_config = write("worker.toml", &worker_metrics);
    let gateway_config = write("gateway.toml", &gateway_metrics);
    let mut worker = Process::start("worker", &["worker"], &worker_config, "pulling from pool");
    let mut gateway = Process::start("gateway", &["gateway"], &gateway_config, "listening on");
    let prometheus = Prometheus::start(tmp.path(), &[&gateway_metrics, &worker_metrics]);

    let mut client = RewardServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(ScoreBatchRequest {
        profile: "mix".into(),
        candidates: candidates(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRAINER_TRACE}-{TRAINER_SPAN}-01")
            .parse()
            .unwrap(),
    );
    let first = client
        .score_batch(request)
        .await
        .unwrap()
        .into_inner()
        .rewards;
    let failed: Vec<_> = first
        .iter()
        .filter(|r| r.status() == Status::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "the 400 fails one candidate: {first:?}");
    assert_eq!(judge.calls(), N as u64 + 1, "one retry after the 500");
    for r in &first {
        let t = r.timing.expect("every reward carries its timing");
        assert!(t.scoring_ms > 0.0 && t.total_ms >= t.scoring_ms, "{t:?}");
        assert!(
            (t.queue_ms - (t.total_ms - t.scoring_ms)).abs() < 1e-6,
            "{t:?}"
        );
    }
    // The same batch again, untraced: every verdict (and the refusal) comes from the cache.
    let second = client
        .score_batch(ScoreBatchRequest {
            profile: "mix".into(),
            candidates: candidates(),
        })
        .await
        .unwrap()
        .into_inner()
        .rewards;
    assert_eq!(
        judge.calls(),
        N as u64 + 1,
        "the second pass is all cache hits"
    );
    assert_eq!(
        second
            .iter()
            .filter(|r| r.status() == Status::Failed)
            .count(),
        1
    );

    // Prometheus scraped both processes: the counters say what the session did.
    let ok = (2 * (N - 1)) as f64;
    let limit = Duration::from_secs(30);
    let sum = |metric: &str| format!("sum({metric})");
    assert_eq!(
        prometheus
            .wait_value(
                &sum(r#"rewardfleet_rewards_total{profile="mix",status="ok"}"#),
                ok,
                limit
            )
            .await,
        Some(ok),
        "rewards sent, OK"
    );
    let checks = [
        (r#"rewardfleet_rewards_total{status="failed"}"#, 2.0),
        (
            r#"rewardfleet_candidates_scored_total{profile="mix",status="ok"}"#,
            ok,
        ),
        (
            r#"rewardfleet_candidates_scored_total{status="failed"}"#,
            2.0,
        ),
        (
            r#"rewardfleet_judge_requests_total{judge="judge",outcome="ok"}"#,
            (N - 1) as f64,
        ),
        (
            r#"rewardfleet_judge_requests_total{outcome="http_5xx"}"#,
            1.0,
        ),
        (
            r#"rewardfleet_judge_requests_total{outcome="http_4xx"}"#,
            1.0,
        ),
        (
            r#"rewardfleet_cache_lookups_total{judge="judge",result="miss"}"#,
            N as f64,
        ),
        (r#"rewardfleet_cache_lookups_total{result="hit"}"#, N as f64),
        // Per job: four jobs a pass.
        ("rewardfleet_reward_latency_seconds_count", 8.0),
        ("rewardfleet_queue_wait_seconds_count", 8.0),
        (
            r#"rewardfleet_job_duration_seconds_count{profile="mix"}"#,
            8.0,
        ),
        (
            r#"rewardfleet_model_batch_size_sum{model="rm"}"#,
            (2 * N) as f64,
        ),
        (
            r#"rewardfleet_rule_duration_seconds_count{rule="max_chars"}"#,
            (2 * N) as f64,
        ),
        (r#"rewardfleet_consumer_pending{pool="default"}"#, 0.0),
        (r#"rewardfleet_consumer_ack_pending{pool="default"}"#, 0.0),
        (r#"rewardfleet_sessions_open"#, 0.0),
        (r#"rewardfleet_candidates_in_flight"#, 0.0),
    ];
    for (metric, want) in checks {
        assert_eq!(
            prometheus.wait_value(&sum(metric), want, limit).await,
            Some(want),
            "{metric}"
        );
    }
    let tokens = prometheus
        .value(&sum(
            r#"rewardfleet_judge_tokens_total{judge="judge",direction="input"}"#,
        ))
        .unwrap_or(0.0);
    assert!(tokens > 0.0, "judge input tokens are counted");
    let forwards = prometheus
        .value(&sum(
            r#"rewardfleet_model_forward_duration_seconds_count{model="rm"}"#,
        ))
        .unwrap_or(0.0);
    assert!(forwards >= 1.0, "model batches are timed");
    let mut exported = std::collections::BTreeSet::new();
    for addr in [&gateway_metrics, &worker_metrics] {
        let (ok, out) = promtool_check(addr);
        assert!(ok, "promtool check metrics on {addr}:\n{out}");
        let (_, body) = support::prometheus::http_get(addr, "/metrics").unwrap();
        exported.extend(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split(['{', ' ']).next())
                .map(str::to_owned),
        );
    }
    // Every series the Grafana dashboard queries is one the binary exports.
    let dashboard = support::grafana::metric_names(&support::grafana::dashboard());
    let missing: Vec<&String> = dashboard.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries series nobody exports: {missing:?}"
    );

    // Stopping flushes what the exporters still hold.
    assert!(gateway.terminate(Duration::from_secs(30)).success());
    assert!(worker.terminate(Duration::from_secs(30)).success());
    let spans = collector
        .wait_for(Duration::from_secs(20), |s| {
            s.iter()
                .any(|s| s.trace_id() == TRAINER_TRACE && s.span.name == "send rewards")
        })
        .await;
    let trace: Vec<Received> = spans
        .iter()
        .filter(|s| s.trace_id() == TRAINER_TRACE)
        .cloned()
        .collect();
    assert_trace(&trace, &judge);
    // No span of any trace carries a response text.
    for s in &spans {
        for kv in &s.span.attributes {
            let v = s.attr(&kv.key).unwrap_or_default();
            assert!(!v.contains(SECRET), "{}: {} = {v}", s.span.name, kv.key);
        }
    }
    // Metrics went over OTLP too, under the same names.
    let names = collector.metric_names();
    for name in [
        "rewardfleet_rewards",
        "rewardfleet_candidates_scored",
        "rewardfleet_judge_requests",
    ] {
        assert!(names.contains(name), "{name} over OTLP: {names:?}");
    }
}

/// The trace of the trainer's call: trainer → gateway RPC → session → publish (NATS) → worker
/// job → each scorer → model batch / judge HTTP attempt → result publish → gateway send.
fn assert_trace(trace: &[Received], judge: &FakeJudge) {
    let names: Vec<&str> = trace.iter().map(|s| s.span.name.as_str()).collect();
    let rpc = by_name(trace, "rewardfleet.v1.RewardService/ScoreBatch");
    assert_eq!(rpc.len(), 1, "one server span: {names:?}");
    let rpc = rpc[0];
    assert_eq!(
        rpc.parent_id(),
        TRAINER_SPAN,
        "the trainer's span is the parent"
    );
    assert_eq!(rpc.service, "rewardfleet-gateway");
    assert_eq!(rpc.attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        rpc.attr("rpc.service").as_deref(),
        Some("rewardfleet.v1.RewardService")
    );
    assert_eq!(rpc.attr("rpc.method").as_deref(), Some("ScoreBatch"));
    let session = by_name(trace, "session");
    assert_eq!(session.len(), 1);
    assert_eq!(session[0].parent_id(), rpc.span_id());

    let jobs: Vec<&Received> = trace
        .iter()
        .filter(|s| s.span.name.starts_with("process rf.jobs."))
        .collect();
    assert_eq!(jobs.len(), N / 2, "one worker span per job: {names:?}");
    let mut ids = Vec::new();
    for job in &jobs {
        assert_eq!(job.service, "rewardfleet-worker");
        let publish = parent_of(trace, job);
        assert!(
            publish.span.name.starts_with("publish rf.jobs."),
            "{}",
            publish.span.name
        );
        assert_eq!(publish.service, "rewardfleet-gateway");
        assert_eq!(publish.attr("messaging.system").as_deref(), Some("nats"));
        assert_eq!(
            publish.attr("messaging.operation.type").as_deref(),
            Some("publish")
        );
        assert_eq!(parent_of(trace, publish).span.name, "session");
        assert_eq!(job.attr("messaging.system").as_deref(), Some("nats"));
        assert_eq!(
            job.attr("messaging.operation.type").as_deref(),
            Some("process")
        );
        assert!(
            job.attr("messaging.destination.name")
                .is_some_and(|d| d.starts_with("rf.jobs.default."))
        );
        ids.extend(
            job.attr("rewardfleet.candidate_ids")
                .unwrap()
                .split(',')
                .map(str::to_owned),
        );
        // Each scorer of the profile, under the job.
        let scorers: Vec<&Received> = trace
            .iter()
            .filter(|s| s.parent_id() == job.span_id() && s.span.name.starts_with("score "))
            .collect();
        let mut scorer_names: Vec<&str> = scorers.iter().map(|s| s.span.name.as_str()).collect();
        scorer_names.sort_unstable();
        scorer_names.dedup();
        assert_eq!(
            scorer_names,
            ["score max_chars", "score rm", "score verdict"],
            "the job's scorers"
        );
        // The result's publish, under the job; the gateway's send under it.
        let result = trace
            .iter()
            .find(|s| s.parent_id() == job.span_id() && s.span.name == "publish rf.results")
            .expect("the result's publish span");
        let send = trace
            .iter()
            .find(|s| s.parent_id() == result.span_id() && s.span.name == "send rewards")
            .expect("the gateway's send continues from the result");
        assert_eq!(send.service, "rewardfleet-gateway");
    }
    ids.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("c{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "candidate ids on the job spans");

    // Judge attempts: chat spans under the judge's scorer span, with gen_ai attributes, and
    // the `traceparent` the endpoint received names them.
    let chats = by_name(trace, "chat fake-judge");
    assert_eq!(chats.len(), N + 1, "one span per HTTP attempt: {names:?}");
    let sent: Vec<String> = judge
        .requests()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("traceparent")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .collect();
    for chat in &chats {
        assert_eq!(parent_of(trace, chat).span.name, "score verdict");
        assert_eq!(chat.attr("gen_ai.operation.name").as_deref(), Some("chat"));
        assert_eq!(
            chat.attr("gen_ai.request.model").as_deref(),
            Some("fake-judge")
        );
        assert!(
            sent.iter().any(|t| t.contains(&chat.span_id())),
            "the endpoint got traceparent naming {}",
            chat.span_id()
        );
    }
    let answered: Vec<&&Received> = chats
        .iter()
        .filter(|c| c.attr("error.type").is_none())
        .collect();
    assert_eq!(answered.len(), N - 1);
    for c in &answered {
        assert_eq!(
            c.attr("gen_ai.response.model").as_deref(),
            Some("fake-judge")
        );
        assert!(
            c.attr("gen_ai.usage.input_tokens")
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );
        assert!(
            c.attr("gen_ai.usage.output_tokens")
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );
    }
    let mut errors: Vec<String> = chats.iter().filter_map(|c| c.attr("error.type")).collect();
    errors.sort();
    assert_eq!(errors, ["http_4xx", "http_5xx"]);
    // The refused candidate's scorer span says why.
    assert!(
        trace.iter().any(|s| s.span.name == "score verdict"
            && s.attr("error.type").as_deref() == Some("judge_rejected")),
        "error.type on the failed scorer"
    );

    // Model batches: each under one job's model scorer span, linked to the other jobs' (calls)
    // it served; together they cover every job's model scorer span.
    let forwards = by_name(trace, "forward rm");
    assert!(!forwards.is_empty(), "model batches are traced: {names:?}");
    let mut covered = std::collections::BTreeSet::new();
    for f in &forwards {
        assert_eq!(parent_of(trace, f).span.name, "score rm");
        covered.insert(f.parent_id());
        let requests: usize = f
            .attr("rewardfleet.batch.requests")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(f.span.links.len(), requests - 1, "links to the other calls");
        for link in &f.span.links {
            let linked = support::otlp::hex(&link.span_id);
            let target = trace.iter().find(|s| s.span_id() == linked).unwrap();
            assert_eq!(target.span.name, "score rm");
            covered.insert(linked);
        }
    }
    let model_calls: std::collections::BTreeSet<String> = by_name(trace, "score rm")
        .iter()
        .map(|s| s.span_id())
        .collect();
    assert_eq!(model_calls.len(), N / 2, "one model scorer span per job");
    assert_eq!(
        covered, model_calls,
        "every job's texts ran in a traced batch"
    );
}

/// `rewardfleet score` in embedded mode with `--log-format json`, exporting to a collector: the
/// warning about a FAILED candidate is a JSON line carrying the trace id of its job, and that
/// trace holds the same tree without the NATS hops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_lead_from_a_failed_candidate_to_its_trace() {
    let collector = Collector::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            r#"[telemetry]
otlp_endpoint = "{}"

[profile.p]
components = [{{ rule = "exact_match" }}]
on_component_failure = "fail"
"#,
            collector.endpoint()
        ),
    )
    .unwrap();
    let input = tmp.path().join("in.jsonl");
    // Exact match needs a reference: the second candidate has none and FAILS.
    std::fs::write(
        &input,
        format!(
            "{{\"id\":\"a\",\"prompt\":\"q\",\"response\":\"{SECRET}\",\"reference\":\"{SECRET}\"}}\n\
             {{\"id\":\"b\",\"prompt\":\"q\",\"response\":\"{SECRET}\"}}\n"
        ),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["score", "--log-format", "json", "--log", "info", "--config"])
        .arg(&config)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"timing\""), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(SECRET),
        "no response text in the logs at info:\n{stderr}"
    );
    let warning: serde_json::Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "candidates FAILED")
        .unwrap_or_else(|| panic!("a JSON warning about the FAILED candidate in:\n{stderr}"));
    assert_eq!(warning["level"], "WARN");
    let trace_id = warning["fields"]["trace_id"]
        .as_str()
        .expect("the warning carries the trace id")
        .to_owned();
    // `score` flushed its spans before exiting.
    let spans = collector.trace(&trace_id);
    let job = spans
        .iter()
        .find(|s| s.span.name == "job p")
        .expect("the job's span is in that trace");
    assert_eq!(job.service, "rewardfleet");
    assert_eq!(parent_of(&spans, job).span.name, "session");
    assert!(spans.iter().any(|s| s.span.name == "score exact_match"
        && s.parent_id() == job.span_id()
        && s.attr("error.type").is_some()));
    assert!(spans.iter().any(|s| s.span.name == "send rewards"));
    assert!(
        !spans.iter().any(|s| s.attr("messaging.system").is_some()),
        "no NATS hop in embedded mode"
    );
}

/// A Prometheus address in use is a start-up error naming the key; an unreachable collector is
/// a warning, and every candidate is still scored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_that_cannot_start_says_why_and_never_fails_a_candidate() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let unreachable = format!("http://127.0.0.1:{}", free_port().unwrap());
    let write = |name: &str, telemetry: &str| {
        let path = tmp.path().join(name);
        let listen = format!("127.0.0.1:{}", free_port().unwrap());
        std::fs::write(
            &path,
            format!(
                "[gateway]\nlisten = \"{listen}\"\n\n[telemetry]\n{telemetry}\n\n[profile.p]\ncomponents = [{{ rule = \"max_chars\", limit = 10 }}]\n"
            ),
        )
        .unwrap();
        path
    };
    let busy = write("busy.toml", &format!("prometheus_listen = \"{taken}\""));
    let out = Command::new(binary())
        .args(["gateway", "--config"])
        .arg(&busy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "telemetry.prometheus_listen: cannot listen on {taken}"
        )),
        "{stderr}"
    );

    let lost = write("lost.toml", &format!("otlp_endpoint = \"{unreachable}\""));
    let input = tmp.path().join("in.jsonl");
    support::write_input(&input, 20);
    let out = Command::new(binary())
        .args(["score", "--config"])
        .arg(&lost)
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("OTLP collector is not reachable"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 20);
    assert!(!stdout.contains("FAILED"), "{stdout}");
}

/// The standard variables win over the file: `OTEL_EXPORTER_OTLP_ENDPOINT` turns tracing on
/// with no `[telemetry]` at all, `OTEL_SERVICE_NAME` names the service, and
/// `OTEL_TRACES_SAMPLER=always_off` records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_otel_variables_win_over_the_file() {
    let collector = Collector::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("c.toml");
    std::fs::write(
        &config,
        "[profile.p]\ncomponents = [{ rule = \"max_chars\", limit = 10 }]\n",
    )
    .unwrap();
    let input = tmp.path().join("in.jsonl");
    support::write_input(&input, 5);
    let score = |envs: &[(&str, &str)]| {
        let out = Command::new(binary())
            .args(["score", "--config"])
            .arg(&config)
            .arg(&input)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    score(&[("OTEL_SERVICE_NAME", "trainer-box-scorer")]);
    let spans = collector.spans();
    assert!(
        spans.iter().any(|s| s.span.name == "job p"),
        "traced with no [telemetry] in the file"
    );
    assert!(spans.iter().all(|s| s.service == "trainer-box-scorer"));
    let before = spans.len();
    score(&[("OTEL_TRACES_SAMPLER", "always_off")]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        collector.spans().len(),
        before,
        "always_off records nothing"
    );
}
