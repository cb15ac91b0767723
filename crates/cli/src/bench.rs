//! `rewardfleet bench`: a load generator against a running gateway (gRPC `Score` streams,
//! `ScoreBatch`, or HTTP `/get_reward` in OpenRLHF's request shape), in the manner of
//! `perf_analyzer` and `ghz`: closed loop (a fixed number of requests in flight) or open loop (a
//! fixed request rate), a warm-up, a measured window, and a report of throughput, latency
//! percentiles and statuses.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rewardfleet_core::{Candidate, RewardStatus};
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_proto::v1::score_response;
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tonic::transport::Channel;

/// Arguments of `rewardfleet bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The gateway's gRPC address (`--api score` and `--api batch`).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    gateway: String,
    /// The HTTP endpoint of `--api http`, e.g. `http://127.0.0.1:8080/get_reward` (any server
    /// that takes OpenRLHF's `{"query", "prompts", "labels"}` and answers `rewards`).
    #[arg(long)]
    url: Option<String>,
    /// What to call: `score` (one gRPC `Score` stream, each request a batch on it), `batch`
    /// (`ScoreBatch` calls) or `http` (POSTs to `--url`).
    #[arg(long, value_enum, default_value = "score")]
    api: Api,
    /// The profile (default: the gateway's default profile).
    #[arg(long, short)]
    profile: Option<String>,
    /// Candidates from a JSONL file (the format of `rewardfleet score`), sent in a cycle with
    /// fresh ids; default: synthetic candidates of `--lengths`.
    #[arg(long, conflicts_with = "lengths")]
    input: Option<PathBuf>,
    /// Lengths of synthetic responses: `fixed:N`, `uniform:A:B` or `lognormal:MEDIAN:SIGMA[:CAP]`,
    /// in tokens of `--tokenizer`, or in words without one.
    #[arg(long, default_value = "uniform:16:128")]
    lengths: Lengths,
    /// A `tokenizer.json` whose tokens `--lengths` counts (and `tokens/s` reports).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Requests in flight (closed loop).
    #[arg(long, default_value_t = 1, conflicts_with = "rate")]
    concurrency: usize,
    /// Requests started per second, whatever the answers (open loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of load before the measured window (not reported).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Measured requests at most: the window ends when this many were sent (or at `--duration`).
    #[arg(long)]
    requests: Option<u64>,
    /// Candidates per request.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Concurrency levels, comma-separated (`1,4,16,64`): one run each, one report row each.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["rate", "concurrency"])]
    sweep: Vec<usize>,
    /// The report as JSON on standard output (one object; with `--sweep`, an array of them).
    #[arg(long)]
    json: bool,
    /// Seed of the synthetic lengths and texts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Api {
    Score,
    Batch,
    Http,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Score => "score",
            Api::Batch => "batch",
            Api::Http => "http",
        }
    }
}

/// A distribution of response lengths.
#[derive(Clone, Debug, PartialEq)]
pub enum Lengths {
    /// Always `n`.
    Fixed(usize),
    /// Uniform in `[a, b]`.
    Uniform(usize, usize),
    /// Log-normal with this median and sigma (of the log), cut at `cap`.
    LogNormal {
        /// The median length.
        median: f64,
        /// The standard deviation of the length's logarithm.
        sigma: f64,
        /// The longest length.
        cap: usize,
    },
}

/// Longest synthetic response without an explicit cap.
const DEFAULT_CAP: usize = 8192;

impl FromStr for Lengths {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let int = |p: &str| {
            p.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{p:?} is not a positive whole number of tokens"))
        };
        let real = |p: &str| {
            p.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("{p:?} is not a non-negative number"))
        };
        match parts.as_slice() {
            ["fixed", n] => Ok(Lengths::Fixed(int(n)?)),
            ["uniform", a, b] => {
                let (a, b) = (int(a)?, int(b)?);
                if a > b {
                    return Err(format!(
                        "uniform:{a}:{b}: the lower bound exceeds the upper"
                    ));
                }
                Ok(Lengths::Uniform(a, b))
            }
            ["lognormal", median, sigma, rest @ ..] if rest.len() <= 1 => {
                let median = real(median)?;
                if median < 1.0 {
                    return Err(format!("lognormal median {median} is below one token"));
                }
                let sigma = real(sigma)?;
                let cap = match rest {
                    [cap] => int(cap)?,
                    _ => DEFAULT_CAP,
                };
                Ok(Lengths::LogNormal { median, sigma, cap })
            }
            _ => Err(format!(
                "{s:?}: expected fixed:N, uniform:A:B or lognormal:MEDIAN:SIGMA[:CAP]"
            )),
        }
    }
}

impl Lengths {
    fn max(&self) -> usize {
        match *self {
            Lengths::Fixed(n) => n,
            Lengths::Uniform(_, b) => b,
            Lengths::LogNormal { cap, .. } => cap,
        }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        match *self {
            Lengths::Fixed(n) => n,
            Lengths::Uniform(a, b) => rng.random_range(a..=b),
            Lengths::LogNormal { median, sigma, cap } => {
                // Box–Muller: a standard normal from two uniforms.
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                ((median * (sigma * z).exp()).round() as usize).clamp(1, cap)
            }
        }
    }
}

/// Words the synthetic responses are made of.
const WORDS: &[&str] = &[
    "the",
    "answer",
    "is",
    "because",
    "we",
    "add",
    "two",
    "numbers",
    "and",
    "then",
    "divide",
    "by",
    "three",
    "so",
    "result",
    "equals",
    "seven",
    "reward",
    "model",
    "score",
    "response",
    "prompt",
    "first",
    "second",
    "step",
    "therefore",
    "value",
    "of",
    "function",
    "at",
    "point",
    "zero",
    "check",
    "again",
    "carefully",
    "which",
    "gives",
    "final",
    "boxed",
    "solution",
    "proof",
    "assume",
    "contrary",
    "integer",
    "prime",
    "square",
    "root",
    "triangle",
    "angle",
    "sum",
];

/// The candidates each request sends.
enum Source {
    /// Synthetic responses (no prompt) cut from one long random text, `lengths` tokens (or
    /// words) long.
    Synthetic {
        lengths: Lengths,
        text: String,
        /// Byte range of each token (or word) of `text`.
        spans: Vec<(usize, usize)>,
        seed: u64,
    },
    /// Candidates of a file, in a cycle, each with its token (or word) count.
    File(Vec<(Candidate, usize)>),
}

impl Source {
    fn synthetic(
        lengths: Lengths,
        tokenizer: Option<&tokenizers::Tokenizer>,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let words = lengths.max() * 2 + 1000;
        let text: Vec<&str> = (0..words)
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        let text = text.join(" ");
        let spans = match tokenizer {
            Some(t) => t
                .encode(text.as_str(), false)
                .map_err(|e| anyhow::anyhow!("--tokenizer cannot encode: {e}"))?
                .get_offsets()
                .to_vec(),
            None => {
                let mut spans = Vec::with_capacity(words);
                let mut start = 0;
                for w in text.split(' ') {
                    spans.push((start, start + w.len()));
                    start += w.len() + 1;
                }
                spans
            }
        };
        if spans.len() < lengths.max() {
            bail!(
                "the synthetic text has {} tokens, fewer than the longest length {}",
                spans.len(),
                lengths.max()
            );
        }
        Ok(Source::Synthetic {
            lengths,
            text,
            spans,
            seed,
        })
    }

    fn file(path: &PathBuf, tokenizer: Option<&tokenizers::Tokenizer>) -> anyhow::Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut candidates = Vec::new();
        for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let c = crate::jsonl::parse_line(i + 1, &line).map_err(|e| {
                anyhow::anyhow!("{}: line {}: {}", path.display(), e.line, e.message)
            })?;
            let text: String = c
                .prompt
                .iter()
                .map(|m| m.content.as_str())
                .chain([c.response.as_str()])
                .collect::<Vec<_>>()
                .join("\n");
            let tokens = match tokenizer {
                Some(t) => t
                    .encode(text.as_str(), false)
                    .map_err(|e| anyhow::anyhow!("--tokenizer cannot encode line {}: {e}", i + 1))?
                    .len(),
                None => text.split_whitespace().count(),
            };
            candidates.push((c, tokens));
        }
        if candidates.is_empty() {
            bail!("{}: no candidates", path.display());
        }
        Ok(Source::File(candidates))
    }

    /// The candidates of request `r` (ids `r-i`, unique in a run) and their token count.
    fn request(&self, r: u64, size: usize) -> (Vec<Candidate>, usize) {
        let mut tokens = 0;
        let candidates = match self {
            Source::Synthetic {
                lengths,
                text,
                spans,
                seed,
            } => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ r.wrapping_mul(0x9e37));
                (0..size)
                    .map(|i| {
                        let n = lengths.sample(&mut rng);
                        let start = rng.random_range(0..=spans.len() - n);
                        tokens += n;
                        // A response alone: a model whose template is `{response}` sees exactly
                        // the text an OpenRLHF query of `--api http` holds.
                        Candidate {
                            id: format!("{r}-{i}"),
                            response: text[spans[start].0..spans[start + n - 1].1].to_owned(),
                            ..Default::default()
                        }
                    })
                    .collect()
            }
            Source::File(all) => (0..size)
                .map(|i| {
                    let at = (r as usize * size + i) % all.len();
                    let (c, n) = &all[at];
                    tokens += n;
                    let mut c = c.clone();
                    c.id = format!("{r}-{i}");
                    if !c.group_id.is_empty() {
                        c.group_id = format!("{r}-{}", c.group_id);
                    }
                    c
                })
                .collect(),
        };
        (candidates, tokens)
    }
}

/// What the load is sent to.
#[derive(Clone)]
enum Target {
    Grpc(RewardServiceClient<Channel>),
    /// The URL carries the profile (`?profile=`).
    Http(reqwest::Client, reqwest::Url),
}

/// The statuses of one request's candidates, or why the request failed as a whole.
type Outcome = Result<Vec<RewardStatus>, String>;

impl Target {
    async fn call(&mut self, profile: &str, candidates: Vec<Candidate>) -> Outcome {
        let n = candidates.len();
        match self {
            Target::Grpc(client) => {
                match rewardfleet_client::score_batch(client, profile, candidates).await {
                    Ok(rewards) if rewards.len() == n => {
                        Ok(rewards.iter().map(|r| r.status()).collect())
                    }
                    Ok(rewards) => Err(format!("{} rewards for {n} candidates", rewards.len())),
                    Err(e) => Err(e.to_string()),
                }
            }
            Target::Http(client, url) => {
                let prompts: Vec<String> = candidates
                    .iter()
                    .map(|c| c.prompt.iter().map(|m| m.content.as_str()).collect())
                    .collect();
                let queries: Vec<String> = candidates
                    .iter()
                    .zip(&prompts)
                    .map(|(c, p)| format!("{p}{}", c.response))
                    .collect();
                let labels: Vec<Option<&str>> =
                    candidates.iter().map(|c| c.reference.as_deref()).collect();
                let body =
                    serde_json::json!({"query": queries, "prompts": prompts, "labels": labels});
                let response = client
                    .post(url.clone())
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                let status = response.status();
                let text = response.text().await.map_err(|e| format!("{url}: {e}"))?;
                if !status.is_success() {
                    let mut text = text;
                    text.truncate(300);
                    return Err(format!("HTTP {status}: {text}"));
                }
                let body: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| format!("the answer is not JSON: {e}"))?;
                let rewards = body
                    .get("rewards")
                    .and_then(serde_json::Value::as_array)
                    .map_or(0, Vec::len);
                if rewards != n {
                    return Err(format!("{rewards} rewards for {n} queries"));
                }
                // A peer that reports no statuses (OpenRLHF's serve_rm): every reward is OK.
                let statuses = body.get("statuses").and_then(serde_json::Value::as_array);
                Ok((0..n)
                    .map(|i| {
                        match statuses
                            .and_then(|s| s.get(i))
                            .and_then(serde_json::Value::as_str)
                        {
                            Some("FAILED") | Some("INVALID") => RewardStatus::Failed,
                            Some("DEGRADED") => RewardStatus::Degraded,
                            _ => RewardStatus::Ok,
                        }
                    })
                    .collect())
            }
        }
    }
}

/// The load of one run: closed loop at `concurrency` or open loop at `rate`.
#[derive(Clone, Copy)]
enum Load {
    Concurrency(usize),
    Rate(f64),
}

/// Everything the measured window produced.
#[derive(Default)]
struct Recorder {
    window_start: Option<Instant>,
    requests: u64,
    candidates: u64,
    tokens: u64,
    ok: u64,
    degraded: u64,
    failed: u64,
    errors: u64,
    error_messages: Vec<String>,
    per_candidate: Vec<f64>,
    per_request: Vec<f64>,
    last_done: Option<Instant>,
    /// Candidates answered so far (warm-up included), for the progress bar.
    answered: u64,
    /// When each answer came (warm-up included) and how many candidates it answered.
    answers: Vec<(Instant, u64)>,
    /// The latest start of a measured request.
    last_sent: Option<Instant>,
    /// The window's end: its `--duration`, or the start of its last request with `--requests`.
    window_close: Option<Instant>,
}

impl Recorder {
    /// Records a request sent at `sent` with `n` candidates of `tokens` tokens; its candidates'
    /// latencies are `per_candidate`, or the request's own when they came in one answer.
    fn request_done(
        &mut self,
        measured: bool,
        sent: Instant,
        n: usize,
        tokens: usize,
        outcome: &Outcome,
        per_candidate: Option<Vec<f64>>,
    ) {
        let now = Instant::now();
        self.answered += n as u64;
        if outcome.is_ok() {
            match &per_candidate {
                Some(latencies) => self.answers.extend(
                    latencies
                        .iter()
                        .map(|l| (sent + Duration::from_secs_f64(l / 1e3), 1)),
                ),
                None => self.answers.push((now, n as u64)),
            }
        }
        if !measured {
            return;
        }
        self.last_sent = Some(self.last_sent.map_or(sent, |t| t.max(sent)));
        self.requests += 1;
        self.candidates += n as u64;
        self.tokens += tokens as u64;
        self.per_request.push(ms(now - sent));
        self.last_done = Some(self.last_done.map_or(now, |t| t.max(now)));
        match outcome {
            Ok(statuses) => {
                for s in statuses {
                    self.status(*s);
                }
                match per_candidate {
                    Some(latencies) => self.per_candidate.extend(latencies),
                    None => self
                        .per_candidate
                        .extend(std::iter::repeat_n(ms(now - sent), statuses.len())),
                }
            }
            Err(e) => self.error(n, e),
        }
    }

    fn status(&mut self, s: RewardStatus) {
        match s {
            RewardStatus::Ok => self.ok += 1,
            RewardStatus::Degraded => self.degraded += 1,
            _ => self.failed += 1,
        }
    }

    fn error(&mut self, n: usize, message: &str) {
        self.errors += n as u64;
        if self.error_messages.len() < 5 && !self.error_messages.iter().any(|m| m == message) {
            self.error_messages.push(message.to_owned());
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Latency percentiles, in milliseconds.
#[derive(Serialize, Default, Debug, PartialEq)]
pub struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Percentiles {
    fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        // Nearest rank.
        let at =
            |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: values[values.len() - 1],
            mean: values.iter().sum::<f64>() / values.len() as f64,
        }
    }
}

#[derive(Serialize)]
struct Statuses {
    ok: u64,
    degraded: u64,
    failed: u64,
    /// Candidates of requests that failed whole (transport, HTTP or gRPC error): no reward.
    error: u64,
}

#[derive(Serialize)]
struct Latency {
    candidate: Percentiles,
    request: Percentiles,
}

/// One run's report.
#[derive(Serialize)]
struct Report {
    api: &'static str,
    concurrency: Option<usize>,
    rate: Option<f64>,
    batch_size: usize,
    warmup_s: f64,
    /// From the window's start to the last measured answer.
    elapsed_s: f64,
    /// Requests sent in the measured window (each answered or failed).
    requests: u64,
    /// Their candidates.
    candidates: u64,
    /// Their tokens (or words, without `--tokenizer`).
    tokens: u64,
    requests_per_s: f64,
    candidates_per_s: f64,
    tokens_per_s: f64,
    /// Candidates answered inside the window (of any request, warm-up included) per second of
    /// window: the steady-state throughput, unbiased by latencies close to the window's length.
    steady_candidates_per_s: f64,
    statuses: Statuses,
    latency_ms: Latency,
    /// The first distinct errors.
    errors: Vec<String>,
}

impl Report {
    fn new(api: Api, load: Load, args: &BenchArgs, rec: Recorder) -> Self {
        let elapsed = match (rec.window_start, rec.last_done) {
            (Some(start), Some(end)) => (end - start).as_secs_f64().max(1e-9),
            _ => 0.0,
        };
        let per = |n: u64| {
            if elapsed > 0.0 {
                n as f64 / elapsed
            } else {
                0.0
            }
        };
        let steady = match (rec.window_start, rec.window_close) {
            (Some(start), Some(close)) if close > start => {
                let inside: u64 = rec
                    .answers
                    .iter()
                    .filter(|(at, _)| (start..=close).contains(at))
                    .map(|(_, n)| n)
                    .sum();
                inside as f64 / (close - start).as_secs_f64()
            }
            _ => 0.0,
        };
        Self {
            api: api.name(),
            concurrency: match load {
                Load::Concurrency(c) => Some(c),
                Load::Rate(_) => None,
            },
            rate: match load {
                Load::Rate(r) => Some(r),
                Load::Concurrency(_) => None,
            },
            batch_size: args.batch_size,
            warmup_s: args.warmup,
            elapsed_s: elapsed,
            requests: rec.requests,
            candidates: rec.candidates,
            tokens: rec.tokens,
            requests_per_s: per(rec.requests),
            candidates_per_s: per(rec.candidates),
            tokens_per_s: per(rec.tokens),
            steady_candidates_per_s: steady,
            statuses: Statuses {
                ok: rec.ok,
                degraded: rec.degraded,
                failed: rec.failed,
                error: rec.errors,
            },
            latency_ms: Latency {
                candidate: Percentiles::of(rec.per_candidate),
                request: Percentiles::of(rec.per_request),
            },
            errors: rec.error_messages,
        }
    }

    fn load(&self) -> String {
        match (self.concurrency, self.rate) {
            (Some(c), _) => format!("concurrency {c}"),
            (_, Some(r)) => format!("rate {r}/s"),
            _ => String::new(),
        }
    }

    fn print(&self) {
        let l = &self.latency_ms;
        println!(
            "{} api, {}, {} candidate(s) per request: {} requests, {} candidates in {:.2} s",
            self.api,
            self.load(),
            self.batch_size,
            self.requests,
            self.candidates,
            self.elapsed_s
        );
        println!(
            "  throughput: {:.1} candidates/s, {:.0} tokens/s, {:.1} requests/s",
            self.candidates_per_s, self.tokens_per_s, self.requests_per_s
        );
        println!(
            "  steady state: {:.1} candidates/s answered inside the window",
            self.steady_candidates_per_s
        );
        println!(
            "  statuses: {} ok, {} degraded, {} failed, {} without reward (request errors)",
            self.statuses.ok, self.statuses.degraded, self.statuses.failed, self.statuses.error
        );
        for (what, p) in [("candidate", &l.candidate), ("request", &l.request)] {
            println!(
                "  latency per {what} (ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}",
                p.p50, p.p90, p.p99, p.max, p.mean
            );
        }
        for e in &self.errors {
            println!("  error: {e}");
        }
    }
}

fn print_table(reports: &[Report]) {
    println!(
        "| load | requests | candidates | cand/s | tokens/s | ok | degraded | failed | errors | p50 ms | p90 ms | p99 ms | max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        let p = &r.latency_ms.candidate;
        println!(
            "| {} | {} | {} | {:.1} | {:.0} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.load(),
            r.requests,
            r.candidates,
            r.candidates_per_s,
            r.tokens_per_s,
            r.statuses.ok,
            r.statuses.degraded,
            r.statuses.failed,
            r.statuses.error,
            p.p50,
            p.p90,
            p.p99,
            p.max
        );
    }
}

/// When requests start and which are measured.
#[derive(Clone, Copy)]
struct Clock {
    window_start: Instant,
    end: Instant,
    max_requests: Option<u64>,
}

/// Request numbers; a request is measured when it starts inside the window.
struct Tickets {
    next: AtomicU64,
    measured: AtomicU64,
}

impl Tickets {
    /// The next request's number and whether it is measured, or `None` once the run is over.
    fn take(&self, clock: &Clock) -> Option<(u64, bool)> {
        let now = Instant::now();
        if now >= clock.end {
            return None;
        }
        let measured = now >= clock.window_start;
        if measured {
            let m = self.measured.fetch_add(1, Ordering::Relaxed);
            if clock.max_requests.is_some_and(|max| m >= max) {
                return None;
            }
        }
        Some((self.next.fetch_add(1, Ordering::Relaxed), measured))
    }
}

/// Runs `rewardfleet bench`.
///
/// # Errors
/// Bad flags, an unreadable input or tokenizer, an unreachable gateway, or a probe request that
/// fails (an unknown profile): all before anything is measured.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.concurrency == 0 || args.sweep.contains(&0) {
        bail!("--concurrency (and each --sweep level) must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of requests per second");
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(args.warmup.is_finite() && args.warmup >= 0.0) {
        bail!("--warmup must be zero or a positive number of seconds");
    }
    if args.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    let tokenizer = match &args.tokenizer {
        Some(path) => Some(
            tokenizers::Tokenizer::from_file(path)
                .map_err(|e| anyhow::anyhow!("--tokenizer {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let source = Arc::new(match &args.input {
        Some(path) => Source::file(path, tokenizer.as_ref())?,
        None => Source::synthetic(args.lengths.clone(), tokenizer.as_ref(), args.seed)?,
    });
    let target = match args.api {
        Api::Score | Api::Batch => Target::Grpc(
            rewardfleet_client::connect(&args.gateway)
                .await
                .with_context(|| "--gateway")?,
        ),
        Api::Http => {
            let Some(url) = &args.url else {
                bail!("--api http needs --url (e.g. http://127.0.0.1:8080/get_reward)");
            };
            let mut url =
                reqwest::Url::parse(url).with_context(|| format!("--url {url:?} is not a URL"))?;
            if let Some(profile) = &args.profile {
                url.query_pairs_mut().append_pair("profile", profile);
            }
            Target::Http(
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(600))
                    .build()
                    .context("cannot build the HTTP client")?,
                url,
            )
        }
    };
    let profile = args.profile.clone().unwrap_or_default();

    // One request of one candidate says whether the target answers and knows the profile.
    let (probe, _) = source.request(u64::MAX, 1);
    if let Err(e) = target.clone().call(&profile, probe).await {
        bail!("the probe request failed, nothing measured: {e}");
    }

    let loads: Vec<Load> = match (args.rate, args.sweep.is_empty()) {
        (Some(rate), _) => vec![Load::Rate(rate)],
        (None, true) => vec![Load::Concurrency(args.concurrency)],
        (None, false) => args.sweep.iter().map(|&c| Load::Concurrency(c)).collect(),
    };
    let mut reports = Vec::new();
    for load in loads {
        let rec = match args.api {
            Api::Score => {
                let Target::Grpc(client) = &target else {
                    unreachable!("score runs over gRPC")
                };
                run_stream(client.clone(), &args, &profile, &source, load).await?
            }
            Api::Batch | Api::Http => run_calls(&target, &args, &profile, &source, load).await,
        };
        let report = Report::new(args.api, load, &args, rec);
        if !args.json && args.sweep.is_empty() {
            report.print();
        }
        reports.push(report);
    }
    if args.json {
        let json = if args.sweep.is_empty() {
            serde_json::to_string_pretty(&reports[0])?
        } else {
            serde_json::to_string_pretty(&reports)?
        };
        println!("{json}");
    } else if !args.sweep.is_empty() {
        print_table(&reports);
    }
    Ok(ExitCode::SUCCESS)
}

fn clock(args: &BenchArgs) -> Clock {
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(args.warmup);
    Clock {
        window_start,
        end: window_start + Duration::from_secs_f64(args.duration),
        max_requests: args.requests,
    }
}

/// The window's end: its `--duration`, or with `--requests` the start of its last request when
/// that came first.
fn window_close(clock: &Clock, rec: &Recorder) -> Instant {
    match (clock.max_requests, rec.last_sent) {
        (Some(_), Some(last)) => last.min(clock.end),
        _ => clock.end,
    }
}

/// A progress bar over the run's seconds (drawn only on a terminal), until `done` fires.
fn progress(clock: Clock, recorder: Arc<Mutex<Recorder>>) -> tokio::task::JoinHandle<()> {
    let start = Instant::now();
    let total = (clock.end - start).as_millis() as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg:24} [{elapsed}] {bar:40}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    tokio::spawn(async move {
        loop {
            let now = Instant::now();
            let answered = recorder.lock().await.answered;
            bar.set_position((now - start).as_millis() as u64);
            let phase = if now < clock.window_start {
                "warm-up"
            } else if now < clock.end {
                "measuring"
            } else {
                "draining"
            };
            bar.set_message(format!("{phase}, {answered} answered"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Whole calls (`ScoreBatch` or HTTP), each its own request.
async fn run_calls(
    target: &Target,
    args: &BenchArgs,
    profile: &str,
    source: &Arc<Source>,
    load: Load,
) -> Recorder {
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let tickets = Arc::new(Tickets {
        next: AtomicU64::new(0),
        measured: AtomicU64::new(0),
    });
    let clock = clock(args);
    recorder.lock().await.window_start = Some(clock.window_start);
    let bar = progress(clock, Arc::clone(&recorder));
    let one = {
        let (target, profile, source, recorder, size) = (
            target.clone(),
            profile.to_owned(),
            Arc::clone(source),
            Arc::clone(&recorder),
            args.batch_size,
        );
        move |r: u64, measured: bool| {
            let (mut target, profile, source, recorder) = (
                target.clone(),
                profile.clone(),
                Arc::clone(&source),
                Arc::clone(&recorder),
            );
            async move {
                let (candidates, tokens) = source.request(r, size);
                let n = candidates.len();
                let sent = Instant::now();
                let outcome = target.call(&profile, candidates).await;
                recorder
                    .lock()
                    .await
                    .request_done(measured, sent, n, tokens, &outcome, None);
            }
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    match load {
        Load::Concurrency(c) => {
            for _ in 0..c {
                let (one, tickets) = (one.clone(), Arc::clone(&tickets));
                tasks.spawn(async move {
                    while let Some((r, measured)) = tickets.take(&clock) {
                        one(r, measured).await;
                    }
                });
            }
        }
        Load::Rate(rate) => {
            let start = Instant::now();
            for k in 0u64.. {
                let at = start + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
                let Some((r, measured)) = tickets.take(&clock) else {
                    break;
                };
                tasks.spawn(one(r, measured));
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    bar.abort();
    let mut rec = recorder.lock().await;
    rec.window_close = Some(window_close(&clock, &rec));
    std::mem::take(&mut *rec)
}

/// A request on the stream not yet wholly answered.
struct Pending {
    sent: Instant,
    measured: bool,
    remaining: usize,
    n: usize,
    tokens: usize,
    statuses: Vec<RewardStatus>,
    /// Each answered candidate's latency, in milliseconds.
    latencies: Vec<f64>,
    /// The request's slot in the closed loop, freed with its last reward.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// One `Score` stream; each request is a batch on it, answered by its rewards.
async fn run_stream(
    mut client: RewardServiceClient<Channel>,
    args: &BenchArgs,
    profile: &str,
    source: &Arc<Source>,
    load: Load,
) -> anyhow::Result<Recorder> {
    let window = match load {
        // Never more unresolved than the loop keeps in flight.
        Load::Concurrency(c) => u32::try_from(c * args.batch_size).unwrap_or(u32::MAX),
        // The gateway's default: an open loop past the fleet's capacity waits here.
        Load::Rate(_) => 0,
    };
    let session = format!("bench-{:016x}", rand::random::<u64>());
    // Bounded by the requests in flight: the sender waits for a slot (closed loop) or for the
    // gateway to read (open loop).
    let (tx, rx) = mpsc::channel(64);
    tx.send(rewardfleet_client::open(&session, profile, window))
        .await
        .ok();
    let requests = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|request| (request, rx))
    });
    let mut responses = client
        .score(requests)
        .await
        .context("cannot open a Score stream")?
        .into_inner();

    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let pending: Arc<std::sync::Mutex<HashMap<u64, Pending>>> = Arc::default();
    let clock = clock(args);
    recorder.lock().await.window_start = Some(clock.window_start);
    let bar = progress(clock, Arc::clone(&recorder));
    let sender = {
        let (source, pending, size) = (Arc::clone(source), Arc::clone(&pending), args.batch_size);
        tokio::spawn(async move {
            let tickets = Tickets {
                next: AtomicU64::new(0),
                measured: AtomicU64::new(0),
            };
            let slots = match load {
                Load::Concurrency(c) => Some(Arc::new(Semaphore::new(c))),
                Load::Rate(_) => None,
            };
            let start = Instant::now();
            for k in 0u64.. {
                let permit = match (&slots, load) {
                    (Some(slots), _) => Arc::clone(slots).acquire_owned().await.ok(),
                    (None, Load::Rate(rate)) => {
                        let at = start + Duration::from_secs_f64(k as f64 / rate);
                        tokio::time::sleep_until(at.into()).await;
                        None
                    }
                    (None, Load::Concurrency(_)) => None,
                };
                let Some((r, measured)) = tickets.take(&clock) else {
                    break;
                };
                let (candidates, tokens) = source.request(r, size);
                let n = candidates.len();
                if let Ok(mut p) = pending.lock() {
                    p.insert(
                        r,
                        Pending {
                            sent: Instant::now(),
                            measured,
                            remaining: n,
                            n,
                            tokens,
                            statuses: Vec::with_capacity(n),
                            latencies: Vec::with_capacity(n),
                            _permit: permit,
                        },
                    );
                }
                if tx
                    .send(rewardfleet_client::batch(candidates, ""))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = tx.send(rewardfleet_client::close()).await;
        })
    };

    let mut closed = false;
    while let Some(response) = responses.next().await {
        let kind = match response {
            Ok(r) => r.kind,
            Err(status) => {
                sender.abort();
                bar.abort();
                bail!(
                    "the Score stream failed: {}: {}",
                    status.code(),
                    status.message()
                );
            }
        };
        match kind {
            Some(score_response::Kind::Reward(reward)) => {
                let now = Instant::now();
                let Some(r) = reward
                    .candidate_id
                    .split('-')
                    .next()
                    .and_then(|r| r.parse::<u64>().ok())
                else {
                    continue;
                };
                let finished = {
                    let Ok(mut map) = pending.lock() else { break };
                    let Some(p) = map.get_mut(&r) else { continue };
                    p.remaining -= 1;
                    p.statuses.push(reward.status());
                    p.latencies.push(ms(now - p.sent));
                    if p.remaining == 0 {
                        map.remove(&r)
                    } else {
                        None
                    }
                };
                if let Some(p) = finished {
                    let outcome: Outcome = Ok(p.statuses);
                    recorder.lock().await.request_done(
                        p.measured,
                        p.sent,
                        p.n,
                        p.tokens,
                        &outcome,
                        Some(p.latencies),
                    );
                }
            }
            Some(score_response::Kind::Closed(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    sender.abort();
    bar.abort();
    if !closed {
        bail!("the Score stream ended before the session closed");
    }
    let mut rec = recorder.lock().await;
    rec.window_close = Some(window_close(&clock, &rec));
    Ok(std::mem::take(&mut *rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_parse_and_refuse() {
        assert_eq!("fixed:8".parse(), Ok(Lengths::Fixed(8)));
        assert_eq!("uniform:2:9".parse(), Ok(Lengths::Uniform(2, 9)));
        assert_eq!(
            "lognormal:200:0.8:1024".parse(),
            Ok(Lengths::LogNormal {
                median: 200.0,
                sigma: 0.8,
                cap: 1024
            })
        );
        for bad in [
            "fixed:0",
            "uniform:9:2",
            "lognormal:0.5:1",
            "normal:3",
            "fixed:x",
        ] {
            assert!(bad.parse::<Lengths>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lognormal_has_its_median_and_cap() {
        let lengths: Lengths = "lognormal:200:0.8:1024"
            .parse()
            .unwrap_or(Lengths::Fixed(1));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut samples: Vec<usize> = (0..20_000).map(|_| lengths.sample(&mut rng)).collect();
        samples.sort_unstable();
        let median = samples[samples.len() / 2];
        assert!((185..=215).contains(&median), "median {median}");
        assert_eq!(
            samples[samples.len() - 1],
            1024,
            "the cap is reached and kept"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank_and_ordered() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(vec![]), Percentiles::default());
    }

    #[test]
    fn synthetic_requests_have_their_lengths_in_words() {
        let source = Source::synthetic(Lengths::Fixed(12), None, 1).unwrap_or(Source::File(vec![]));
        let (candidates, tokens) = source.request(3, 4);
        assert_eq!(tokens, 48);
        assert_eq!(candidates.len(), 4);
        for (i, c) in candidates.iter().enumerate() {
            assert_eq!(c.id, format!("3-{i}"));
            assert_eq!(c.response.split(' ').count(), 12, "{:?}", c.response);
        }
    }
}
