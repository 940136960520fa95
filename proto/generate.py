"""Regenerates the committed code from proto/: `make proto`.

Python (messages, .pyi stubs and gRPC stubs) goes to clients/python/, Ruby (messages and gRPC stubs, for
GitLab Rails) to clients/ruby/lib/. Ruby needs Debian's grpc_tools_ruby_protoc (`make ruby-deps`), which runs
the system protoc: its output depends on protoc's version (3.21 on Debian bookworm, the committed one). The
drift test calls generate_python() and generate_ruby() with a temporary directory and compares the result with
the committed files.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("gitlab/duo/routing/v1")
PYTHON_OUT = ROOT / "clients" / "python"
RUBY_OUT = ROOT / "clients" / "ruby" / "lib"
RUBY_PROTOC = "grpc_tools_ruby_protoc"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def well_known_protos() -> Path:
    # Both languages read google/protobuf/*.proto from the same place, so imports resolve identically.
    return Path(grpc_tools.__file__).parent / "_proto"


def generate_python(out_dir: Path) -> list[Path]:
    """Writes the generated Python package under out_dir and returns the files written."""
    target = out_dir / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*_pb2*.py*"):
        stale.unlink()
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known_protos()}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    (target / "py.typed").write_text("")
    return sorted(p for p in target.iterdir() if p.is_file())


def generate_ruby(out_dir: Path) -> list[Path]:
    """Writes the generated Ruby files (*_pb.rb, *_services_pb.rb) under out_dir and returns them."""
    protoc = shutil.which(RUBY_PROTOC)
    if protoc is None:
        raise RuntimeError(f"{RUBY_PROTOC} is not installed: run `make ruby-deps` (Debian's ruby-grpc-tools)")
    target = out_dir / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*_pb.rb"):
        stale.unlink()
    result = subprocess.run(
        [
            protoc,
            f"-I{PROTO_ROOT}",
            f"-I{well_known_protos()}",
            f"--ruby_out={out_dir}",
            f"--grpc_out={out_dir}",
            *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{RUBY_PROTOC} failed: {result.stderr.strip()}")
    return sorted(p for p in target.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python-out", type=Path, default=PYTHON_OUT)
    parser.add_argument("--ruby-out", type=Path, default=RUBY_OUT)
    args = parser.parse_args()
    for path in generate_python(args.python_out):
        print(path.relative_to(args.python_out))
    for path in generate_ruby(args.ruby_out):
        print(path.relative_to(args.ruby_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
