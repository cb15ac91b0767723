"""A real `rewardfleet gateway` (embedded mode, the rules profiles of fleet.toml) on free ports
for the whole test session, a TCP proxy that a test can cut, and helpers.

The binary is `$RF_BINARY`, else `$CARGO_TARGET_DIR/debug/rewardfleet`, else
`~/.cache/rewardfleet/target/debug/rewardfleet`, else `target/debug/rewardfleet` of the repo.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent


def binary() -> Path:
    candidates = []
    if os.environ.get("RF_BINARY"):
        candidates.append(Path(os.environ["RF_BINARY"]))
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "rewardfleet")
    candidates += [
        Path.home() / ".cache" / "rewardfleet" / "target" / "debug" / "rewardfleet",
        REPO / "target" / "debug" / "rewardfleet",
    ]
    for c in candidates:
        if c.exists():
            return c
    pytest.exit(
        f"no rewardfleet binary at {', '.join(map(str, candidates))}: build it with "
        "`cargo build -p rewardfleet-cli` or set RF_BINARY",
        returncode=2,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Gateway:
    """A running `rewardfleet gateway`."""

    process: subprocess.Popen[str]
    grpc: str
    http: str
    config: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def write_config(path: Path, *, grpc_port: int = 0, http_port: int | None = None, nats: str | None = None,
                 extra: str = "") -> Path:
    http = http_port if http_port is not None else free_port()
    head = f'[nats]\nurl = "{nats}"\n\n' if nats else ""
    head += (
        f'[gateway]\nlisten = "127.0.0.1:{grpc_port}"\nhttp_listen = "127.0.0.1:{http}"\n'
        'default_profile = "math"\ndrain_timeout = "3s"\n\n'
        '[worker]\nack_wait = "5s"\n\n'
        '[jobs]\nmax_candidates = 64\n\n'
    )
    path.write_text(head + extra + "\n" + (HERE / "fleet.toml").read_text())
    return path


def start_gateway(config: Path, *, log: Path | None = None) -> Gateway:
    """Starts `rewardfleet gateway --config CONFIG` and waits until it listens."""
    text = config.read_text()
    http_port = text.split('http_listen = "127.0.0.1:')[1].split('"')[0]
    stderr = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(
        [str(binary()), "gateway", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "RUST_LOG": os.environ.get("RF_TEST_LOG", "warn")},
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    grpc = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if "listening on" in line:
                grpc = line.strip().rsplit(" ", 1)[-1]
                break
            if not line and process.poll() is not None:
                break
    if not grpc:
        process.kill()
        raise RuntimeError(f"rewardfleet gateway did not start (config {config})")
    # Drain stdout so that the process never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in process.stdout or []], daemon=True).start()
    return Gateway(process, grpc, f"http://127.0.0.1:{http_port}", config)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One embedded gateway for the session."""
    d = tmp_path_factory.mktemp("gateway")
    gw = start_gateway(write_config(d / "fleet.toml"), log=d / "gateway.log")
    yield gw
    gw.stop()


class Proxy:
    """A TCP proxy on a free port to `target`; `cut()` closes every connection it carries (a
    broken stream, as a network fault or a load balancer would make it), then it goes on
    accepting."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.bytes_down = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if down:
                    with self._lock:
                        self.bytes_down += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


@pytest.fixture
def proxy(gateway: Gateway) -> Iterator[Proxy]:
    p = Proxy(gateway.grpc)
    yield p
    p.close()


def math_candidate(i: int) -> dict[str, object]:
    """Candidate `i` for the `math` profile: right (reward 2), wrong (0), or right but too long
    for the gate (the floor, -1), in turn."""
    reference = str(i % 7)
    response = [reference, str(i % 7 + 1), reference + " because " + "x" * 60][i % 3]
    return {"id": f"c{i}", "group_id": f"g{i // 4}", "prompt": f"what is {i % 7}?", "response": response,
            "reference": reference}


def math_expected(i: int) -> float:
    return [2.0, 0.0, -1.0][i % 3]
