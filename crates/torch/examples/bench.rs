//! Runs `rewardfleet_torch::bench` by hand:
//!
//! ```text
//! bench --dir DIR --model bert-20m.pt [--dtype f32|bf16] [--threads N] [--groups N] [--singles N] [--max-batch-tokens N]
//! ```
//!
//! DIR holds the model and `tokenizer.json` (`scripts/make_test_models.py bert DIR --size 20m`).

use std::path::PathBuf;
use std::process::ExitCode;

use rewardfleet_core::config::{ModelConfig, ModelKind, TruncationSide};
use rewardfleet_torch::bench::{self, Traffic};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut dir = PathBuf::from(".");
    let mut cfg = ModelConfig {
        name: "rm".into(),
        tokenizer: "tokenizer.json".into(),
        kind: ModelKind::Scalar,
        template: "{response}".into(),
        max_length: 2048,
        truncation_side: TruncationSide::Right,
        ..ModelConfig::default()
    };
    let (mut groups, mut singles) = (4usize, 256usize);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        let number = || value.parse::<usize>().unwrap_or(0);
        match flag.as_str() {
            "--dir" => dir = value.clone().into(),
            "--model" => {
                cfg.name = value.trim_end_matches(".pt").to_owned();
                cfg.path = value.clone().into();
            }
            "--dtype" => cfg.dtype = value.clone(),
            "--threads" => cfg.threads = number(),
            "--groups" => groups = number(),
            "--singles" => singles = number(),
            "--max-batch-tokens" => cfg.max_batch_tokens = number(),
            other => {
                eprintln!("unknown flag {other}; see the example's doc comment");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shapes = [
        Traffic::fixed_batches(groups, 64, 256),
        Traffic::rl_singles(singles, 64, 42),
    ];
    match runtime.block_on(bench::run(&cfg, &dir, &shapes)) {
        Ok(rows) => {
            println!(
                "threads per replica: {}, max_batch_tokens: {}, max_wait: {:?}",
                if cfg.threads == 0 {
                    rewardfleet_torch::default_threads(cfg.replicas)
                } else {
                    cfg.threads
                },
                cfg.max_batch_tokens,
                cfg.max_wait
            );
            print!("{}", bench::table(&rows));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
