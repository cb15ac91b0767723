#!/usr/bin/env bash
# Sets up (see setup.sh) and runs every check and test: formatting, lints, unit tests,
# end-to-end tests against real nats-server processes, real libtorch and real gRPC.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Judge-and-rules-only workers build without libtorch.
cargo clippy -p rewardfleet-cli --no-default-features --locked -- -D warnings
# The end-to-end tests run the real binary.
cargo build --locked -p rewardfleet-cli
cargo test --workspace --locked
# The Python client: stubs current with proto/, types, and its tests against the binary just built.
(
  cd clients/python
  "$RF_PYTHON" scripts/gen_protos.py --check
  "$RF_PYTHON" -m mypy
  RF_BINARY="${CARGO_TARGET_DIR:-$PWD/../../target}/debug/rewardfleet" "$RF_PYTHON" -m pytest -q -p no:warnings
)
# Every fuzz target for 30 s (nightly, its own build directory): the gateway's request
# validation and the parsers of NATS messages, JSONL, configuration, verdicts and rule parameters.
scripts/fuzz.sh 30
