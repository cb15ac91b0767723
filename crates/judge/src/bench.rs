//! The judge throughput benchmark: judgements per second through the full stack and the rubric
//! method, against the ideal `C / latency` of an endpoint with a fixed latency.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rewardfleet_core::config::JudgeConfig;
use rewardfleet_core::{Candidate, ChatMessage, ScoreContext, Scorer};
use tokio::time::Instant;

use crate::method::{JudgeScorer, Spec};
use crate::{JudgeCache, JudgeError, JudgeSet};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The endpoint (e.g. the fake judge's `base_url`).
    pub base_url: String,
    /// The judge's concurrency limit C.
    pub concurrency: usize,
    /// The endpoint's latency per call, for the ideal rate `C / latency`.
    pub latency: Duration,
    /// Measured time (after the warm-up).
    pub duration: Duration,
    /// Time before measuring starts (connections are opened, the pipeline fills).
    pub warmup: Duration,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The concurrency limit C.
    pub concurrency: usize,
    /// Judgements completed in the measured window.
    pub calls: u64,
    /// Judgements that failed in the measured window.
    pub failures: u64,
    /// The measured window.
    pub elapsed: Duration,
    /// Achieved judgements per second.
    pub calls_per_second: f64,
    /// `C / latency`.
    pub ideal_calls_per_second: f64,
    /// Achieved ÷ ideal (goal ≥ 0.95).
    pub ratio: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "C = {:>4}: {:>8.1} judge calls/s of an ideal {:>8.1} → ratio {:.3} ({} calls, {} failures in {:.1} s)",
            self.concurrency,
            self.calls_per_second,
            self.ideal_calls_per_second,
            self.ratio,
            self.calls,
            self.failures,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Runs the benchmark: `2 × C` callers score one candidate after another with the rubric method
/// through a judge limited to C calls in flight (no cache, no rate limit besides C).
///
/// # Errors
/// [`JudgeError`] if the judge cannot be built (outside a Tokio runtime, a bad URL).
pub async fn run(options: &BenchOptions) -> Result<BenchReport, JudgeError> {
    let config = JudgeConfig {
        name: "bench".into(),
        base_url: options.base_url.clone(),
        model: "bench".into(),
        max_concurrency: options.concurrency,
        requests_per_second: 1e9,
        queue_capacity: 4 * options.concurrency,
        timeout: Duration::from_secs(10),
        deadline: Duration::from_secs(30),
        cache_ttl: Duration::ZERO,
        ..JudgeConfig::default()
    };
    let set = JudgeSet::new(&[config], HashMap::new(), JudgeCache::None)?;
    let scorer = Arc::new(JudgeScorer {
        spec: Spec::inline_rubric("Score how helpful the response is.", 1, 10),
        judges: set.judges.clone(),
    });
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..2 * options.concurrency {
        let (scorer, done, failed, stop) =
            (scorer.clone(), done.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let ctx = ScoreContext {
                session_id: "bench".into(),
                ..ScoreContext::default()
            };
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let candidate = Candidate {
                    id: format!("{worker}-{i}"),
                    prompt: vec![ChatMessage {
                        role: "user".into(),
                        content: "Explain why the sky is blue in two sentences.".into(),
                    }],
                    response: format!(
                        "Rayleigh scattering, case {worker}-{i}. quality:{}",
                        1 + i % 10
                    ),
                    ..Candidate::default()
                };
                let outcome = scorer.score(&ctx, std::slice::from_ref(&candidate)).await;
                match outcome.first() {
                    Some(Ok(_)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    tokio::time::sleep(options.warmup).await;
    let (done0, failed0, start) = (
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(options.duration).await;
    let (calls, failures, elapsed) = (
        done.load(Ordering::Relaxed) - done0,
        failed.load(Ordering::Relaxed) - failed0,
        start.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let calls_per_second = calls as f64 / elapsed.as_secs_f64();
    let ideal = options.concurrency as f64 / options.latency.as_secs_f64();
    Ok(BenchReport {
        concurrency: options.concurrency,
        calls,
        failures,
        elapsed,
        calls_per_second,
        ideal_calls_per_second: ideal,
        ratio: calls_per_second / ideal,
    })
}
