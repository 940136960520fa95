"""Test helpers: real sidecar processes on 127.0.0.1 and a config writer."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(directory: Path, deployment_type: str, port: int, extra: str = "") -> Path:
    path = directory / "sidecar.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
grace_period_seconds = 2.0
[metrics]
listen = "127.0.0.1:{free_port()}"
[instance]
deployment_type = "{deployment_type}"
[storage]
path = "{directory / "data" / "sidecar.db"}"
{extra}
"""
    )
    return path


@dataclass
class SidecarProcess:
    process: subprocess.Popen[bytes]
    address: str
    config: Path
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def wait_serving(address: str, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"sidecar exited with {process.returncode} before serving")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"sidecar at {address} not SERVING after {timeout}s")


@contextmanager
def run_sidecar(config: Path, port: int, env: dict[str, str] | None = None) -> Iterator[SidecarProcess]:
    """Starts `duo-sidecar serve --config` as a real process and stops it with SIGTERM."""
    log = config.parent / f"sidecar-{port}.log"
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            [str(BIN / "duo-sidecar"), "serve", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=config.parent,
        )
    sidecar = SidecarProcess(process, f"127.0.0.1:{port}", config, log)
    try:
        wait_serving(sidecar.address, process=process)
        yield sidecar
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`duo-sidecar ARGS` run to completion in `cwd`, its output captured as text."""
    return subprocess.run(
        [str(BIN / "duo-sidecar"), *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def duo_admin_path() -> str:
    found = shutil.which("duo-admin", path=str(BIN))
    assert found, "duo-admin is not installed in the test environment"
    return found


@dataclass
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    field_violations: list[str]
    precondition_types: list[str]


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """Decodes the google.rpc.Status details the sidecar attaches to every error."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code()} without grpc-status-details-bin: {error.details()}"
    info = error_details_pb2.ErrorInfo()
    fields: list[str] = []
    preconditions: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            preconditions += [v.type for v in failure.violations]
    assert info.domain == "routing.duo.gitlab.com"
    return ErrorDetails(error.code(), status.message, info.reason, dict(info.metadata), fields, preconditions)
