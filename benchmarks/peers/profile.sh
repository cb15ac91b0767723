#!/usr/bin/env bash
# Where the time goes on the trainer-shaped row (docs/benchmarks-peers.md): rewardfleet alone,
# under several admission settings, each row with the model's own metrics (batch size, padding,
# forward time) read from the gateway's Prometheus endpoint. Needs the models of run.sh
# (out/peers/models).
#
#   SIZE=20m|100m benchmarks/peers/profile.sh   # RF_BIN: the binary (default: release build)
#                                               # WARMUP (5), DURATION (30) seconds
#
# Settings: `default` (admission by the model's room: admit_tokens, two batches' budget);
# `jobs16` (what a fixed job count did: max_concurrent_jobs = 16, the former default, and the
# model's room out of the way); `jobs64` (the same with 64); `admit1` (admit_tokens = one batch);
# `budget1024` (smaller batches: max_batch_tokens and max_length 1024, the traffic's longest).
set -uo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/rewardfleet/target}
. scripts/setup.sh >/dev/null
RF=${RF_BIN:-$CARGO_TARGET_DIR/release/rewardfleet}
SIZE=${SIZE:-20m}
FMT='import json,sys
r=json.load(sys.stdin); p=r["latency_ms"]["candidate"]
print("%.1f cand/s (steady %.1f), %.0f tokens/s, p50 %.0f ms, p99 %.0f ms, errors %d, elapsed %.1f s" % (r["candidates_per_s"], r["steady_candidates_per_s"], r["tokens_per_s"], p["p50"], p["p99"], r["statuses"]["error"], r["elapsed_s"]))'

D=out/peers/models/llama-$SIZE
OUT=out/peers/profile-$SIZE; mkdir -p $OUT
: > $OUT/results.txt
free_port() { "$RF_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WARMUP=${WARMUP:-5}
DURATION=${DURATION:-30}
for variant in "default||" "jobs16|[worker]
max_concurrent_jobs = 16|admit_tokens = 100000000" "jobs64|[worker]
max_concurrent_jobs = 64|admit_tokens = 100000000" "admit1||admit_tokens = 2048" \
  "budget1024||max_batch_tokens = 1024
max_length = 1024"; do
  name=${variant%%|*}; rest=${variant#*|}; worker=${rest%%|*}; model=${rest#*|}
  G=$(free_port); H=$(free_port); P=$(free_port)
  cat > $OUT/$name.toml <<TOML
[gateway]
listen = "127.0.0.1:$G"
http_listen = "127.0.0.1:$H"
default_profile = "rm"
[telemetry]
prometheus_listen = "127.0.0.1:$P"
$worker
[[model]]
name = "rm"
path = "$PWD/$D/rewardfleet-bf16.pt"
tokenizer = "$PWD/$D/tokenizer.json"
dtype = "bf16"
template = "{response}"
truncation_side = "right"
threads = 1
add_special_tokens = false
$model
$( [[ $model == *max_length* ]] || echo "max_length = 2048" )
[profile.rm]
components = [{ scorer = "rm" }]
TOML
  $RF gateway --config $OUT/$name.toml > $OUT/$name.log 2>&1 &
  pid=$!
  for i in $(seq 300); do curl -s -o /dev/null http://127.0.0.1:$H/health && break; sleep 0.2; done
  r=$($RF bench --api http --url http://127.0.0.1:$H/get_reward --lengths lognormal:200:0.8:1024 --tokenizer $D/tokenizer.json --concurrency 64 --warmup "$WARMUP" --duration "$DURATION" --json)
  m=$(curl -s http://127.0.0.1:$P/metrics | grep -E "^rewardfleet_model_(batch_size|padding_ratio|forward_duration_seconds|batch_tokens)_(sum|count)")
  kill $pid; wait $pid 2>/dev/null
  echo "$name $(echo "$r" | "$RF_PYTHON" -c "$FMT")" | tee -a $OUT/results.txt
  echo "$m" | python3 -c '
import sys,re
v={}
for l in sys.stdin:
    k,x=l.split()[0],float(l.split()[-1]); name=re.sub(r"\{.*\}","",k); v[name]=v.get(name,0)+x
for base in ["batch_size","padding_ratio","forward_duration_seconds","batch_tokens"]:
    s=v.get(f"rewardfleet_model_{base}_sum"); c=v.get(f"rewardfleet_model_{base}_count")
    if s is not None and c: print(f"  mean {base}: {s/c:.3f} over {c:.0f} batches")
' | tee -a $OUT/results.txt
done
