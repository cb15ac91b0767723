"""The checked-in gRPC stubs are those `scripts/gen_protos.py` makes from proto/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gen_protos.py"


def test_checked_in_stubs_are_current() -> None:
    pytest.importorskip("grpc_tools")
    run = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
