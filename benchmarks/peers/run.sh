#!/usr/bin/env bash
# Side by side on this machine: OpenRLHF's reward server (`openrlhf.cli.serve_rm`) and
# rewardfleet (embedded gateway), in turn, on the same randomly initialised Llama reward model,
# dtype, thread count and traffic, each driven through its natural client by `rewardfleet bench`:
# the peer with OpenRLHF's HTTP request shape, rewardfleet through `/get_reward` and gRPC `Score`.
#
#   benchmarks/peers/run.sh [OUT_DIR]
#
# Environment: SIZES ("20m 100m"), DTYPES ("bf16 f32"; serve_rm serves bf16 or fp16 only, so f32
# rows are rewardfleet's alone), THREADS (intra-op threads on both sides, 1), WARMUP (5) and
# DURATION (20) seconds per row, UNIFORM_CONCURRENCY (64-query requests in flight, 2), TRAFFIC
# ("trainer uniform"), UNIFORM_REQUESTS (when set, a 64-query row measures that many requests
# from the start, with no warm-up and no time limit: for models where one request outlasts the
# window).
# Writes OUT_DIR/results.jsonl (one bench report per row) and OUT_DIR/table.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/rewardfleet/target}
. scripts/setup.sh >/dev/null

OUT=${1:-out/peers}
SIZES=${SIZES:-"20m 100m"}
DTYPES=${DTYPES:-"bf16 f32"}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-5}
DURATION=${DURATION:-20}
UNIFORM_CONCURRENCY=${UNIFORM_CONCURRENCY:-2}
TRAFFIC=${TRAFFIC:-"trainer uniform"}
UNIFORM_REQUESTS=${UNIFORM_REQUESTS:-}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

# The peer's packages (installed into the set-up's virtualenv; torch and transformers pinned).
"$RF_PYTHON" -m pip install -q -c <("$RF_PYTHON" -m pip freeze | grep -iE '^(torch|transformers|tokenizers|numpy)==') \
  -r benchmarks/peers/requirements.txt
# RF_BIN: a rewardfleet binary already built (skips the build).
RF=${RF_BIN:-$CARGO_TARGET_DIR/release/rewardfleet}
[ -n "${RF_BIN:-}" ] || cargo build --release -q -p rewardfleet-cli

for size in $SIZES; do
  [ -f "$OUT/models/llama-$size/DONE" ] || "$RF_PYTHON" benchmarks/peers/make_models.py "$OUT/models" --size "$size"
done

free_port() { "$RF_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL: until it answers (any status), at most 180 s
  for _ in $(seq 1 900); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done
  echo "nothing answers at $1" >&2; return 1
}
PID=
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi; }
trap stop EXIT

# bench ROW_LABEL ARGS...: one row, its report tagged with the row's labels.
bench() {
  local label=$1; shift
  case $label in *'"trainer"'*) [[ $TRAFFIC == *trainer* ]] || return 0 ;; *) [[ $TRAFFIC == *uniform* ]] || return 0 ;; esac
  local window=(--warmup "$WARMUP" --duration "$DURATION")
  if [[ $label == *'"uniform"'* && -n $UNIFORM_REQUESTS ]]; then
    window=(--warmup 0 --requests "$UNIFORM_REQUESTS" --duration 3600)
  fi
  echo "== $label" >&2
  "$RF" bench "${window[@]}" --json "$@" |
    "$RF_PYTHON" -c 'import json,sys; r=json.load(sys.stdin); r.update(json.loads(sys.argv[1])); print(json.dumps(r))' "$label" >>"$RESULTS"
}

# The two traffic shapes, as `rewardfleet bench` flags (lengths in the model's tokens).
trainer() { echo --lengths lognormal:200:0.8:1024 --batch-size 1 --concurrency 64 --tokenizer "$1"; }
uniform() { echo --lengths fixed:256 --batch-size 64 --concurrency "$UNIFORM_CONCURRENCY" --tokenizer "$1"; }

for size in $SIZES; do
  dir=$OUT/models/llama-$size
  tok=$dir/tokenizer.json
  for dtype in $DTYPES; do
    if [ "$dtype" = bf16 ]; then
      port=$(free_port)
      # serve_rm as users run it, on CPU: sdpa attention (flash_attention_2, its default, needs
      # CUDA), the same intra-op threads as rewardfleet's model, the same max length.
      OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS \
        "$RF_PYTHON" benchmarks/peers/serve_peer.py --reward.model_name_or_path "$dir" --port "$port" --host 127.0.0.1 \
        --ds.attn_implementation sdpa --ds.param_dtype bf16 --data.max_len 2048 >"$OUT/peer-$size.log" 2>&1 &
      PID=$!
      wait_http "http://127.0.0.1:$port/docs"
      url=http://127.0.0.1:$port/get_reward
      # shellcheck disable=SC2046
      bench "{\"server\":\"serve_rm\",\"via\":\"http\",\"size\":\"$size\",\"dtype\":\"$dtype\",\"traffic\":\"trainer\"}" --api http --url "$url" $(trainer "$tok")
      # shellcheck disable=SC2046
      bench "{\"server\":\"serve_rm\",\"via\":\"http\",\"size\":\"$size\",\"dtype\":\"$dtype\",\"traffic\":\"uniform\"}" --api http --url "$url" $(uniform "$tok")
      "$RF_PYTHON" benchmarks/peers/compare.py "$url" "$tok" >"$OUT/peer-rewards-$size.json"
      stop
    fi

    grpc=$(free_port)
    http=$(free_port)
    cat >"$OUT/rewardfleet-$size-$dtype.toml" <<TOML
[gateway]
listen = "127.0.0.1:$grpc"
http_listen = "127.0.0.1:$http"
default_profile = "rm"

[[model]]
name = "rm"
path = "$dir/rewardfleet-$dtype.pt"
tokenizer = "$tok"
dtype = "$dtype"
# OpenRLHF's query is the whole text; bench's synthetic candidates have no prompt.
template = "{response}"
max_length = 2048
truncation_side = "right"
threads = $THREADS
# OpenRLHF's queries hold BOS as text; serve_rm tokenizes them without adding special tokens.
add_special_tokens = false

[profile.rm]
components = [{ scorer = "rm" }]
TOML
    "$RF" gateway --config "$OUT/rewardfleet-$size-$dtype.toml" >"$OUT/rewardfleet-$size-$dtype.log" 2>&1 &
    PID=$!
    wait_http "http://127.0.0.1:$http/health"
    for via in http score; do
      # shellcheck disable=SC2046
      bench "{\"server\":\"rewardfleet\",\"via\":\"$via\",\"size\":\"$size\",\"dtype\":\"$dtype\",\"traffic\":\"trainer\"}" \
        --api "$via" --gateway "http://127.0.0.1:$grpc" --url "http://127.0.0.1:$http/get_reward" $(trainer "$tok")
      # shellcheck disable=SC2046
      bench "{\"server\":\"rewardfleet\",\"via\":\"$via\",\"size\":\"$size\",\"dtype\":\"$dtype\",\"traffic\":\"uniform\"}" \
        --api "$via" --gateway "http://127.0.0.1:$grpc" --url "http://127.0.0.1:$http/get_reward" $(uniform "$tok")
    done
    if [ "$dtype" = bf16 ]; then
      "$RF_PYTHON" benchmarks/peers/compare.py "http://127.0.0.1:$http/get_reward" "$tok" "$OUT/peer-rewards-$size.json" \
        >"$OUT/parity-$size.json"
    fi
    stop
  done
done

"$RF_PYTHON" benchmarks/peers/table.py "$RESULTS" | tee "$OUT/table.md"
