"""Overhead of the Python paths against the Rust gRPC path, in one run, on a rules profile.

    python clients/python/benchmarks/overhead.py [--candidates 20000] [--binary PATH]

Starts one embedded `rewardfleet gateway` (the `math` profile of tests/fleet.toml, gRPC and
HTTP on free ports) and scores the same candidates three ways against it, one after another:

1. Rust: `rewardfleet score --gateway` (the Rust client: one Score session, batches of 256,
   window 4096), timed around the whole command, process start included;
2. Python: `RewardClient.score_stream` (one Score session, batches of 256, window 4096);
3. HTTP: `POST /get_reward` (OpenRLHF's shape), requests of 256 queries from 4 threads.

Prints candidates per second for each, and the Python client's own CPU time per candidate
(what it costs the trainer's process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import binary, start_gateway, write_config  # noqa: E402

from rewardfleet import RewardClient  # noqa: E402


def candidate(i: int) -> dict[str, str]:
    answer = str(i % 97)
    return {
        "id": f"c{i}",
        "group_id": f"g{i // 8}",
        "prompt": f"what is {answer}?",
        "response": answer if i % 2 else answer + "1",
        "reference": answer,
    }


def rust(gateway: str, n: int, work: Path, exe: Path) -> float:
    import subprocess

    path = work / "in.jsonl"
    path.write_text("\n".join(json.dumps(candidate(i)) for i in range(n)))
    started = time.perf_counter()
    subprocess.run(
        [str(exe), "score", "--gateway", f"http://{gateway}", "--batch-size", "256", "--window", "4096",
         str(path), "-o", str(work / "out.jsonl")],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def python_stream(gateway: str, n: int) -> tuple[float, float]:
    candidates = [candidate(i) for i in range(n)]
    with RewardClient(gateway) as client:
        cpu, started = time.process_time(), time.perf_counter()
        count = sum(1 for _ in client.score_stream(candidates, batch_size=256, window=4096))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert count == n
    return elapsed, cpu


def http(base: str, n: int, threads: int = 4, per_request: int = 256) -> float:
    bodies = []
    for start in range(0, n, per_request):
        items = [candidate(i) for i in range(start, min(n, start + per_request))]
        bodies.append(json.dumps({
            "query": [c["prompt"] + c["response"] for c in items],
            "prompts": [c["prompt"] for c in items],
            "labels": [c["reference"] for c in items],
        }).encode())
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                if not bodies:
                    return
                body = bodies.pop()
            request = urllib.request.Request(f"{base}/get_reward", data=body)
            with urllib.request.urlopen(request, timeout=60) as r:
                assert r.status == 200
                r.read()

    started = time.perf_counter()
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=20000)
    parser.add_argument("--binary", type=Path, default=None, help="rewardfleet binary (default: as the tests)")
    args = parser.parse_args()
    if args.binary:
        os.environ["RF_BINARY"] = str(args.binary)
    exe = binary()
    n = args.candidates
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = write_config(work / "fleet.toml")
        gateway = start_gateway(config)
        try:
            python_stream(gateway.grpc, 2000)  # warm-up
            results = {
                "rust gRPC (rewardfleet score --gateway)": rust(gateway.grpc, n, work, exe),
            }
            elapsed, cpu = python_stream(gateway.grpc, n)
            results["python RewardClient.score_stream"] = elapsed
            results["http POST /get_reward (4 threads x 256)"] = http(gateway.http, n)
        finally:
            gateway.stop()
    print(f"binary: {exe}")
    print(f"{n} candidates, profile math (rules), embedded gateway")
    for name, seconds in results.items():
        print(f"  {name:<45} {n / seconds:>9.0f} candidates/s  ({seconds:.2f} s)")
    print(f"  python client CPU: {cpu * 1e6 / n:.1f} µs per candidate "
          f"(alone it could drive {n / cpu:.0f} candidates/s)")


if __name__ == "__main__":
    main()
