//! Small-batch latency on a reused channel: `ScoreBatch` round trips of 1 to 64 candidates on
//! one HTTP/2 connection, against the gateway as it serves (every accepted socket with
//! `TCP_NODELAY`) and against the same service on sockets left with Nagle's algorithm, in one
//! run. Embedded mode, the rules profile of `examples/fleet.toml`.
//!
//! ```sh
//! cargo run --release -p rewardfleet-cli --example latency_bench -- [--calls 200]
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use rewardfleet_core::Candidate;
use rewardfleet_core::config::Config;
use rewardfleet_fleet::{GatewayProcess, Secrets};
use rewardfleet_gateway::RewardApi;
use rewardfleet_proto::v1::reward_service_server::RewardServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SIZES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

fn candidates(n: usize, call: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            id: format!("c{call}-{i}"),
            response: format!("The answer is \\boxed{{{i}}}"),
            reference: Some(i.to_string()),
            ..Default::default()
        })
        .collect()
}

/// Median and 99th percentile of `calls` round trips of `size` candidates, in milliseconds.
async fn measure(url: &str, size: usize, calls: usize) -> anyhow::Result<(f64, f64)> {
    let mut client = rewardfleet_client::connect(url).await?;
    // Warm the channel (HTTP/2 settings, the first stream).
    rewardfleet_client::score_batch(&mut client, "math", candidates(size, usize::MAX)).await?;
    let mut times = Vec::with_capacity(calls);
    for call in 0..calls {
        let started = Instant::now();
        let rewards =
            rewardfleet_client::score_batch(&mut client, "math", candidates(size, call)).await?;
        times.push(started.elapsed());
        anyhow::ensure!(
            rewards.len() == size,
            "{} rewards for {size}",
            rewards.len()
        );
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok((
        ms(times[times.len() / 2]),
        ms(times[(times.len() * 99 / 100).min(times.len() - 1)]),
    ))
}

async fn run(calls: usize) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fleet.toml");
    let config = Config::load(&root).map_err(|e| anyhow::anyhow!("{e}"))?;
    let shutdown = CancellationToken::new();

    // The gateway as it serves.
    let process = GatewayProcess::build(&config, &Secrets::default(), &shutdown).await?;
    let gateway = process.gateway().clone();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let served = format!("http://{}", listener.local_addr()?);
    tokio::spawn(process.serve(listener, shutdown.clone()));

    // The same service, its sockets left as accepted (Nagle's algorithm on).
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let plain = format!("http://{}", listener.local_addr()?);
    let api = RewardServiceServer::new(RewardApi::new(gateway, shutdown.child_token()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(api)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    println!("ScoreBatch on one reused channel, {calls} calls per row (ms)");
    println!("| candidates | TCP_NODELAY p50 | p99 | Nagle p50 | p99 | p50 ratio |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for size in SIZES {
        let (fast50, fast99) = measure(&served, size, calls)
            .await
            .context("the gateway as served")?;
        let (slow50, slow99) = measure(&plain, size, calls)
            .await
            .context("the gateway without TCP_NODELAY")?;
        println!(
            "| {size} | {fast50:.2} | {fast99:.2} | {slow50:.2} | {slow99:.2} | {:.1}x |",
            slow50 / fast50
        );
    }
    shutdown.cancel();
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut calls = 200;
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next().map(|v| v.parse::<usize>())) {
            ("--calls", Some(Ok(n))) if n > 0 => calls = n,
            _ => {
                eprintln!("usage: latency_bench [--calls N]");
                return ExitCode::FAILURE;
            }
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(calls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
