#!/usr/bin/env python3
"""Posts the same 200 queries to a `/get_reward` endpoint in OpenRLHF's request shape (batches
of 8) and prints the rewards; given a file of another server's rewards, prints the differences
and fails beyond a bf16 tolerance (3 % of the largest reward).

    compare.py URL TOKENIZER_JSON [OTHER_REWARDS.json]
"""

import json
import random
import sys
import urllib.request

WORDS = (
    "the answer is because we add two numbers and then divide by three so result equals seven "
    "reward model score response prompt first second step therefore value of function at point"
).split()


def queries(n=200, seed=7):
    rng = random.Random(seed)
    # BOS as text first, as OpenRLHF's queries hold it (its chat template's first token).
    return [
        "<s>" + " ".join(rng.choice(WORDS) for _ in range(max(3, min(600, int(rng.lognormvariate(4.5, 0.8))))))
        for _ in range(n)
    ]


def rewards(url, texts):
    out = []
    for i in range(0, len(texts), 8):
        batch = texts[i : i + 8]
        body = json.dumps({"query": batch, "prompts": [""] * len(batch), "labels": [None] * len(batch)})
        request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            out.extend(json.load(response)["rewards"])
    return out


def main():
    url, other = sys.argv[1], sys.argv[3] if len(sys.argv) > 3 else None
    mine = rewards(url, queries())
    if other is None:
        json.dump({"rewards": mine}, sys.stdout)
        return
    theirs = json.load(open(other))["rewards"]
    diffs = [abs(a - b) for a, b in zip(mine, theirs)]
    scale = max(abs(b) for b in theirs)
    # Both servers answer in bf16 (spacing 2^-7 ≈ 0.008 between 1 and 2), from batches of other
    # shapes and paddings through every layer: 3 % of the largest reward is about 4 steps of
    # bf16 there, while a tokenization that differs (a second BOS) moves rewards by 20 % or more.
    tolerance = max(0.03 * scale, 1e-2)
    summary = {"queries": len(diffs), "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs),
               "max_abs_reward": scale, "tolerance": tolerance, "ok": max(diffs) <= tolerance}
    json.dump(summary, sys.stdout)
    print(file=sys.stdout)
    if not summary["ok"]:
        sys.exit(f"served rewards differ by up to {max(diffs)} > {tolerance}")


if __name__ == "__main__":
    main()
