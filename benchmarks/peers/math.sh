#!/usr/bin/env bash
# The rules path against the math verifier RL trainers use today: `rewardfleet score` (embedded,
# one process) with the `math_answer` rule against a Python loop over math-verify (PyPI) on the
# same file, the way TRL's `accuracy_reward` and veRL's `math_verify.compute_score` call it (one
# process, one candidate after the other). Prints candidates/s of each, the ratio, and where the
# two disagree on which candidates are correct.
#
#   benchmarks/peers/math.sh [OUT_DIR]
#
# Environment: N (candidates, 20000; groups of 8 per prompt), SEED (1234), PEERS ("trl verl":
# which math-verify call styles to run), RF_BIN (a rewardfleet binary already built: skips the
# build). Writes OUT_DIR (default out/peers-math): input.jsonl, math.toml, rewards-*.jsonl,
# peer-*.jsonl, results.jsonl (one JSON object per row) and table.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/rewardfleet/target}
. scripts/setup.sh >/dev/null

OUT=${1:-out/peers-math}
N=${N:-20000}
SEED=${SEED:-1234}
PEERS=${PEERS:-"trl verl"}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

"$RF_PYTHON" -m pip install -q -r benchmarks/peers/requirements-math.txt
RF=${RF_BIN:-$CARGO_TARGET_DIR/release/rewardfleet}
[ -n "${RF_BIN:-}" ] || cargo build --release -q -p rewardfleet-cli
BENCH=benchmarks/peers/math_bench.py

"$RF_PYTHON" "$BENCH" gen "$N" "$OUT/input.jsonl" --seed "$SEED"

# The rule alone: a `math` profile of one `math_answer` component, raw (no normalisation).
cat >"$OUT/math.toml" <<'TOML'
[gateway]
default_profile = "math"

[profile.math]
components = [{ rule = "math_answer" }]
TOML
"$RF" check --config "$OUT/math.toml" >/dev/null

now() { date +%s.%N; }

# rf ROW CONFIG PROFILE: one `rewardfleet score` run, timed as a whole process.
rf() {
  local row=$1 config=$2 profile=$3 start end
  start=$(now)
  "$RF" score --config "$config" --profile "$profile" "$OUT/input.jsonl" \
    -o "$OUT/rewards-$row.jsonl" 2>"$OUT/summary-$row.txt"
  end=$(now)
  local own
  own=$(grep -m1 -oE '\(([0-9.]+) candidates/s\)' "$OUT/summary-$row.txt" | grep -oE '[0-9.]+' || echo null)
  echo "{\"row\": \"$row\", \"side\": \"rewardfleet\", \"candidates\": $N, \"process_s\": $(awk "BEGIN{print $end - $start}"), \"own_candidates_per_s\": $own}" >>"$RESULTS"
  sed 's/^/  /' "$OUT/summary-$row.txt" >&2
}
echo "rewardfleet score, math_answer alone ($N candidates)" >&2
rf rule "$OUT/math.toml" math
echo "rewardfleet score, examples/fleet.toml profile math (math_answer, phrases, max_chars gate, group z-score)" >&2
rf fleet-math examples/fleet.toml math

for style in $PEERS; do
  echo "math-verify, $style style ($N candidates)" >&2
  start=$(now)
  summary=$("$RF_PYTHON" "$BENCH" peer "$OUT/input.jsonl" "$OUT/peer-$style.jsonl" --style "$style")
  end=$(now)
  agreement=$("$RF_PYTHON" "$BENCH" compare "$OUT/input.jsonl" "$OUT/rewards-rule.jsonl" "$OUT/peer-$style.jsonl")
  echo "{\"row\": \"$style\", \"side\": \"math-verify\", \"process_s\": $(awk "BEGIN{print $end - $start}"), \"loop\": $summary, \"agreement\": $agreement}" >>"$RESULTS"
done

"$RF_PYTHON" - "$RESULTS" "$("$RF" --version 2>/dev/null || echo rewardfleet) ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))" >"$OUT/table.md" <<'PY'
import json, sys
from importlib.metadata import version
rows = [json.loads(line) for line in open(sys.argv[1])]
rf = {r["row"]: r for r in rows if r["side"] == "rewardfleet"}
peers = [r for r in rows if r["side"] == "math-verify"]
rule_cps = rf["rule"]["candidates"] / rf["rule"]["process_s"]
print(f"{sys.argv[2]}; math-verify {version('math-verify')}, latex2sympy2_extended {version('latex2sympy2_extended')}, sympy {version('sympy')}")
print()
print("| scorer | candidates | seconds (process) | candidates/s (process) | candidates/s (own count) | × math-verify (TRL) | × math-verify (veRL) |")
print("|---|---:|---:|---:|---:|---:|---:|")
base = {p["row"]: p["loop"]["candidates"] / p["process_s"] for p in peers}
def ratio(cps, style):
    return f"**{cps / base[style]:.0f}×**" if style in base else "–"
names = {"rule": "`rewardfleet score`, `math_answer` alone", "fleet-math": "`rewardfleet score`, examples/fleet.toml `math` (3 rules, group z-score)"}
for key, r in rf.items():
    cps = r["candidates"] / r["process_s"]
    own = r["own_candidates_per_s"]
    print(f"| {names[key]} | {r['candidates']} | {r['process_s']:.2f} | {cps:,.0f} | {f'{own:,.0f}' if own is not None else '–'} | {ratio(cps, 'trl')} | {ratio(cps, 'verl')} |")
for p in peers:
    cps = p["loop"]["candidates"] / p["process_s"]
    label = {"trl": "math-verify, TRL `accuracy_reward` loop", "verl": "math-verify, veRL `compute_score` loop"}[p["row"]]
    print(f"| {label} | {p['loop']['candidates']} | {p['process_s']:.2f} | {cps:,.1f} | {p['loop']['candidates_per_s']:,.1f} (loop only) | {'1×' if p['row'] == 'trl' else '–'} | {'1×' if p['row'] == 'verl' else '–'} |")
print()
print("| math-verify style | correct (rewardfleet) | correct (math-verify) | agree | only rewardfleet | only math-verify |")
print("|---|---:|---:|---:|---:|---:|")
for p in peers:
    a = p["agreement"]
    print(f"| {p['row']} | {a['rf_correct']} | {a['peer_correct']} | {a['agree']} ({a['agree_pct']} %) | {a['rf_only']} | {a['peer_only']} |")
for p in peers:
    print()
    print(f"{p['row']}: disagreements by how the response was written (style/kind of gold answer): {json.dumps(p['agreement']['disagreements_by_style'])}")
PY
cat "$OUT/table.md"
