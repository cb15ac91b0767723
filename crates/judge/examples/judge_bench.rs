//! Judge throughput against the fake judge (50 ms latency): achieved calls/s ÷ (C / 0.05 s) for
//! C = 64 and 256. Run with `cargo run --release -p rewardfleet-judge --example judge_bench`
//! (optional arguments: measured seconds, then the values of C).

use std::time::Duration;

use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Latency};
use rewardfleet_judge::bench::{BenchOptions, run};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let mut levels: Vec<usize> = args.map(|s| s.parse()).collect::<Result<_, _>>()?;
    if levels.is_empty() {
        levels = vec![64, 256];
    }
    let latency = Duration::from_millis(50);
    for concurrency in levels {
        let fake = FakeJudge::start(FakeJudgeConfig {
            latency: Latency::Fixed(latency),
            ..FakeJudgeConfig::default()
        })
        .await?;
        let report = run(&BenchOptions {
            base_url: fake.base_url(),
            concurrency,
            latency,
            duration: Duration::from_secs(seconds),
            warmup: Duration::from_secs(1),
        })
        .await?;
        println!(
            "{report}; the fake judge saw at most {} calls at once",
            fake.max_concurrent()
        );
        fake.stop().await;
    }
    Ok(())
}
