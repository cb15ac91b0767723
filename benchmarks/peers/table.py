#!/usr/bin/env python3
"""results.jsonl of run.sh → the markdown table of docs/benchmarks-peers.md."""

import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
key = lambda r: (r["size"], r["dtype"], r["traffic"])  # noqa: E731
peer = {key(r): r for r in rows if r["server"] == "serve_rm"}
# The ratio is of the steady-state figure (answers inside the window) where both rows have it.
rate = lambda r: r.get("steady_candidates_per_s") or r["candidates_per_s"]  # noqa: E731
print("| model | dtype | traffic | server (client) | candidates/s | steady cand/s | p50 ms | p99 ms | errors | × serve_rm (steady) |")
print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    p = r["latency_ms"]["candidate"]
    base = peer.get(key(r))
    ratio = f"{rate(r) / rate(base):.2f}×" if base and rate(base) else "n/a"
    if r["server"] == "serve_rm":
        ratio = "1.00×"
    client = "OpenRLHF HTTP" if r["server"] == "serve_rm" else ("/get_reward" if r["via"] == "http" else "gRPC Score")
    traffic = "1-query, 64 in flight, lognormal 200/0.8/1024" if r["traffic"] == "trainer" else f"64-query, uniform 256, {r['concurrency']} in flight"
    steady = r.get("steady_candidates_per_s")
    steady = f"{steady:.1f}" if steady is not None else "—"
    print(f"| {r['size']} | {r['dtype']} | {traffic} | {r['server']} ({client}) | {r['candidates_per_s']:.1f} | {steady} "
          f"| {p['p50']:.0f} | {p['p99']:.0f} | {r['statuses']['error']} | {ratio} |")
