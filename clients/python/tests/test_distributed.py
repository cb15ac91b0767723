"""The distributed mode: a real nats-server with JetStream, `rewardfleet gateway` and
`rewardfleet worker` processes. The gateway is killed with SIGKILL mid-stream and started again:
the client resumes its session and receives every reward exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import binary, free_port, math_candidate, math_expected, start_gateway, write_config

from rewardfleet import RewardClient


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[str]:
    if not shutil.which("nats-server"):
        pytest.skip("nats-server is not installed (scripts/setup.sh installs it)")
    port = free_port()
    process = subprocess.Popen(
        ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


def test_resume_across_a_killed_gateway(nats: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "fleet.toml", grpc_port=free_port(), nats=nats)
    worker = subprocess.Popen(
        [str(binary()), "worker", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "worker.log", "w"),  # noqa: SIM115
        env={**os.environ, "RUST_LOG": "warn"},
    )
    gateway = start_gateway(config, log=tmp_path / "gateway.log")
    restarted = None
    try:
        # HTTP in the distributed mode, as OpenRLHF would call it.
        request = urllib.request.Request(
            f"{gateway.http}/get_reward",
            data=json.dumps({"query": ["Q?3", "Q?4"], "prompts": ["Q?", "Q?"], "labels": ["3", "3"]}).encode(),
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            assert json.loads(r.read())["rewards"] == [2.0, 0.0]

        seen: dict[str, float] = {}
        with RewardClient(gateway.grpc) as client:
            stream = client.score_stream((math_candidate(i) for i in range(1200)), batch_size=50, window=200)
            for reward in stream:
                assert reward.candidate_id not in seen, "a duplicate reward"
                seen[reward.candidate_id] = reward.value
                if len(seen) == 200:
                    gateway.process.send_signal(signal.SIGKILL)
                    gateway.process.wait()
                    restarted = start_gateway(config, log=tmp_path / "gateway.log")
        assert restarted is not None, "the gateway was killed mid-stream"
        assert len(seen) == 1200
        assert all(seen[f"c{i}"] == math_expected(i) for i in range(1200))
    finally:
        for gw in (gateway, restarted):
            if gw:
                gw.stop()
        worker.terminate()
        assert worker.wait(timeout=30) == 0, "the worker drains and exits 0 on SIGTERM"
