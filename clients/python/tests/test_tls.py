"""A gateway serving TLS (`gateway.tls_cert` / `tls_key`): the client connects with the CA's
root certificate over `https://`, and a plaintext client is refused. Certificates are made at
test time with the `openssl` command."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Gateway, math_candidate, math_expected, start_gateway, write_config

from rewardfleet import RewardClient, RewardfleetError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d: Path) -> None:
    """ca.pem, and cert.pem / key.pem for localhost and 127.0.0.1 signed by it."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA", cwd=d)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "key.pem", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "cert.pem", "-days", "2", "-extfile", "san.ext", cwd=d)


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, bytes]]:
    d: Path = tmp_path_factory.mktemp("tls")
    make_certificates(d)
    config = write_config(d / "fleet.toml")
    text = config.read_text().replace("[gateway]\n", '[gateway]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n', 1)
    config.write_text(text)
    gw = start_gateway(config, log=d / "gateway.log")
    yield gw, (d / "ca.pem").read_bytes()
    gw.stop()


def test_the_client_speaks_tls_with_the_ca_and_plaintext_is_refused(tls_gateway: tuple[Gateway, bytes]) -> None:
    gw, ca = tls_gateway
    candidates = [math_candidate(i) for i in range(6)]
    with RewardClient(f"https://{gw.grpc}", root_certificates=ca, timeout=20) as client:
        assert [r.value for r in client.score(candidates)] == [math_expected(i) for i in range(6)]
    with RewardClient(gw.grpc, timeout=5) as plain, pytest.raises(RewardfleetError):
        plain.score(candidates)
