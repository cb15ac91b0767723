#!/usr/bin/env bash
# Sets up (see setup.sh), builds rewardfleet and scores the example file in embedded mode:
# rewards go to out/math-rewards.jsonl, the summary to the terminal.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh

mkdir -p out
cargo run --release --locked -p rewardfleet-cli -- \
  score --config examples/fleet.toml examples/math.jsonl -o out/math-rewards.jsonl
echo "rewards written to out/math-rewards.jsonl"
