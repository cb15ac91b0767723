#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time each: the gateway's validation of
# ScoreRequest streams, job and session-record decoding from NATS, the JSONL input parser, the
# configuration, the judge verdict parser and the rules' parameters.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    (default: 30 seconds for every target)
#
# Each run starts from the committed corpus (fuzz/corpus/<target>) and writes what it finds to a
# scratch corpus beside the build; FUZZ_MERGE=1 merges the inputs that reach new code back into
# fuzz/corpus/<target>, to commit. A crash fails the script and leaves its input in
# fuzz/artifacts/<target>/: replay it with `cargo +nightly fuzz run <target> <file>`, fix the
# code, and keep the input as a #[test] in the crate that owns the code.
#
#   RF_HOME   build outputs go to $RF_HOME/fuzz-target (default: ~/.cache/rewardfleet)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-30}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
  exit 2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: cargo fuzz needs a nightly toolchain and none is installed; run: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

target_dir="${RF_HOME:-$HOME/.cache/rewardfleet}/fuzz-target"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One build for every target (release, debug assertions, AddressSanitizer).
cargo +nightly fuzz build --target-dir "$target_dir"
for target in "${targets[@]}"; do
  scratch="$target_dir/corpus/$target"
  mkdir -p "$scratch" "fuzz/corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  # -timeout: an input that takes this long is reported as a hang.
  cargo +nightly fuzz run --target-dir "$target_dir" "$target" "$scratch" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=30 -print_final_stats=1
  if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    # Only inputs that reach new code (edges, not hit counts): the corpus stays small.
    cargo +nightly fuzz run --target-dir "$target_dir" "$target" "fuzz/corpus/$target" "$scratch" -- \
      -merge=1 -use_counters=0
  fi
done
