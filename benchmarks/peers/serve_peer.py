#!/usr/bin/env python3
"""Runs `python -m openrlhf.cli.serve_rm ARGS...` unchanged, with the stand-ins of
benchmarks/peers/standins importable for the packages that are not installed (deepspeed,
flash_attn): serve_rm imports them at start and never calls them while serving (README.md)."""

import importlib.util
import runpy
import sys
from pathlib import Path

missing = [m for m in ("deepspeed", "flash_attn") if importlib.util.find_spec(m) is None]
if missing:
    sys.path.append(str(Path(__file__).resolve().parent / "standins"))
    print(f"serve_peer: stand-ins for {', '.join(missing)}", file=sys.stderr)
sys.argv[0] = "serve_rm"
runpy.run_module("openrlhf.cli.serve_rm", run_name="__main__", alter_sys=True)
