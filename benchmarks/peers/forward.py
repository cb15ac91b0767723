#!/usr/bin/env python3
"""The forward alone, without either server: microseconds per token of the bf16 TorchScript
module that rewardfleet runs, at batch 1 and at larger batches, against the eager Hugging Face
model that serve_rm runs at batch 1 (its trainer-shaped traffic), on one intra-op thread.

    forward.py MODEL_DIR [--tokens 256] [--batches 1,4,8,16] [--seconds 10] [--threads 1]

What it answers: how much a batch saves per token on this machine, which bounds what any
server gains by batching a trainer's single queries.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))


def per_token(forward, batch, tokens, seconds, vocab):
    """Microseconds per token of `forward` on `batch` × `tokens` random ids (no padding)."""
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, vocab, (batch, tokens), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        forward(ids, mask)  # warm-up (and a TorchScript profiling run)
        forward(ids, mask)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or runs < 2:
            forward(ids, mask)
            runs += 1
        elapsed = time.perf_counter() - start
    return elapsed / runs / (batch * tokens) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batches", default="1,4,8,16")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from make_models import VOCAB, ensure_importable

    ensure_importable()
    from openrlhf.models import get_llm_for_sequence_regression

    eager = get_llm_for_sequence_regression(
        str(args.model_dir), "reward", param_dtype="bf16", attn_implementation="sdpa"
    ).eval()
    traced = torch.jit.load(str(args.model_dir / "rewardfleet-bf16.pt")).eval()
    rows = [
        {
            "forward": "serve_rm's (eager, OpenRLHF loader)",
            "batch": 1,
            "us_per_token": per_token(eager, 1, args.tokens, args.seconds, VOCAB),
        }
    ]
    for batch in map(int, args.batches.split(",")):
        rows.append(
            {
                "forward": "rewardfleet's (TorchScript)",
                "batch": batch,
                "us_per_token": per_token(traced, batch, args.tokens, args.seconds, VOCAB),
            }
        )
    # The same module frozen and optimised for inference (constants folded, weights prepacked
    # for the CPU's kernels), as `make_models.py --optimize` exports it.
    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    for batch in map(int, args.batches.split(",")):
        rows.append(
            {
                "forward": "rewardfleet's (TorchScript, frozen and optimised)",
                "batch": batch,
                "us_per_token": per_token(frozen, batch, args.tokens, args.seconds, VOCAB),
            }
        )
    base = rows[0]["us_per_token"]
    print(f"| forward | batch × tokens | µs per token | × serve_rm's batch of 1 |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['forward']} | {r['batch']} × {args.tokens} | {r['us_per_token']:.0f} | {base / r['us_per_token']:.2f}× |")
    print(json.dumps({"model": args.model_dir.name, "threads": args.threads, "rows": rows}), file=sys.stderr)


if __name__ == "__main__":
    main()
