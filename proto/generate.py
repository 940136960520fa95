"""Regenerates the committed code from proto/: `make proto`.

Python (messages, .pyi stubs and gRPC stubs) goes to clients/python/. The drift test calls
generate() with a temporary directory and compares the result with the committed files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("gitlab/duo/routing/v1")
PYTHON_OUT = ROOT / "clients" / "python"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate_python(out_dir: Path) -> list[Path]:
    """Writes the generated Python package under out_dir and returns the files written."""
    target = out_dir / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*_pb2*.py*"):
        stale.unlink()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    (target / "py.typed").write_text("")
    return sorted(p for p in target.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python-out", type=Path, default=PYTHON_OUT)
    args = parser.parse_args()
    for path in generate_python(args.python_out):
        print(path.relative_to(args.python_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
