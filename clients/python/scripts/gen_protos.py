#!/usr/bin/env python3
"""Generates the grpcio stubs of the `rewardfleet` package from the repository's `proto/`.

    python clients/python/scripts/gen_protos.py           # write src/rewardfleet/v1/*_pb2*.py(i)
    python clients/python/scripts/gen_protos.py --check   # exit 1 if the checked-in stubs are stale

Needs `grpcio-tools` (it bundles protoc: no system protoc). The proto package `rewardfleet.v1`
maps onto the Python package `rewardfleet.v1`, so the generated imports resolve inside this
package. The header of each file names the grpcio-tools version that made it; the check
regenerates with the installed grpcio-tools and compares byte for byte.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent / "src"
PROTO_ROOT = HERE.parent.parent.parent / "proto"
PROTOS = ["rewardfleet/v1/reward.proto"]
OUT = PACKAGE / "rewardfleet" / "v1"
GENERATED = ["reward_pb2.py", "reward_pb2.pyi", "reward_pb2_grpc.py"]


def generate(into: Path) -> None:
    from grpc_tools import protoc  # imported here: only this script needs grpcio-tools

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        f"--grpc_python_out={into}",
        *[str(PROTO_ROOT / p) for p in PROTOS],
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTOS}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "rewardfleet" / "v1"
        if args.check:
            stale = [
                name
                for name in GENERATED
                if not (OUT / name).exists() or not filecmp.cmp(fresh / name, OUT / name, shallow=False)
            ]
            if stale:
                print(
                    f"stale gRPC stubs in {OUT}: {', '.join(stale)}; "
                    f"run `python {Path(__file__).relative_to(HERE.parent.parent.parent)}` and commit them",
                    file=sys.stderr,
                )
                return 1
            print(f"gRPC stubs in {OUT} match {', '.join(PROTOS)}")
            return 0
        OUT.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copyfile(fresh / name, OUT / name)
        print(f"wrote {', '.join(GENERATED)} to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
