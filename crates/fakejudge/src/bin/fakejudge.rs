//! `rewardfleet-fakejudge`: serves the fake OpenAI-compatible judge until Ctrl-C.

use std::time::Duration;

use clap::Parser;
use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Fault, Latency};

/// A fake OpenAI-compatible judge with deterministic verdicts, for tests and benchmarks.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// Latency of every answer (e.g. `50ms`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0ms")]
    latency: Duration,
    /// With `--latency`, draw latencies uniformly up to this bound.
    #[arg(long, value_parser = humantime::parse_duration)]
    latency_max: Option<Duration>,
    /// Fraction of calls answered with HTTP 503 and `Retry-After: 1`.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let latency = match args.latency_max {
        Some(max) => Latency::Uniform(args.latency, max),
        None if args.latency.is_zero() => Latency::None,
        None => Latency::Fixed(args.latency),
    };
    let judge = FakeJudge::start_on(
        &args.listen,
        FakeJudgeConfig {
            latency,
            fault_rate: args.error_rate,
            random_fault: Fault::Unavailable {
                retry_after: Some(Duration::from_secs(1)),
            },
            ..FakeJudgeConfig::default()
        },
    )
    .await?;
    println!("fake judge listening; base_url = {}", judge.base_url());
    tokio::signal::ctrl_c().await?;
    println!(
        "calls: {}, most at once: {}",
        judge.calls(),
        judge.max_concurrent()
    );
    judge.stop().await;
    Ok(())
}
