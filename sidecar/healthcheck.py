"""`duo-sidecar healthcheck`: one grpc.health.v1 Check against a running sidecar, for container HEALTHCHECKs.

Exit 0 only when the answer is SERVING; 1 for anything else (NOT_SERVING, unknown service, nothing listening,
no answer in time, a configuration error), which is what Docker and Kubernetes exec probes expect.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.config import ConfigError, load_config

DEFAULT_TIMEOUT_SECONDS = 5.0
# A server bound to every interface is reachable on loopback; connecting to 0.0.0.0 itself is not portable.
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    message: str


def probe_address(listen: str) -> str:
    """The address to probe for a server.listen value: wildcard hosts become 127.0.0.1."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def _channel(address: str, credentials: grpc.ChannelCredentials | None, server_name: str) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(address)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, credentials, options=options)


def check(
    address: str,
    service: str = "",
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str = "",
) -> HealthResult:
    """Runs Health.Check once (over TLS when credentials are given); never raises for an unhealthy or
    unreachable server."""
    subject = f"service {service!r}" if service else "overall health"
    try:
        with _channel(address, credentials, server_name) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return HealthResult(False, f"UNKNOWN_SERVICE: {address} does not report {subject}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return HealthResult(False, f"DEADLINE_EXCEEDED: no answer from {address} within {timeout:g}s")
        details = " ".join(str(error.details() or "").split())  # one line, whatever gRPC put in it
        return HealthResult(False, f"{code.name}: {address}: {details}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return HealthResult(reply.status == health_pb2.HealthCheckResponse.SERVING, f"{status}: {address} {subject}")


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value!r}")
    return number


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_text = "check a running sidecar's gRPC health: exit 0 if SERVING, 1 otherwise"
    sub = commands.add_parser("healthcheck", help=help_text, description=help_text)
    sub.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="sidecar to check (default: the configuration's server.listen; 0.0.0.0 and :: mean 127.0.0.1)",
    )
    sub.add_argument("--service", default="", help="service name to check (default: overall health)")
    sub.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="S",
        help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    sub.add_argument("--config", type=Path, help="TOML file (default: built-in defaults)")
    tls = sub.add_argument_group(
        "TLS", "when the configuration serves TLS, the check uses it too; by default it trusts server.tls_cert_file"
    )
    tls.add_argument("--tls-ca", type=Path, metavar="PATH", help="CA certificate that signed the server's")
    tls.add_argument("--tls-cert", type=Path, metavar="PATH", help="client certificate (mutual TLS)")
    tls.add_argument("--tls-key", type=Path, metavar="PATH", help="client private key (mutual TLS)")
    tls.add_argument("--tls-server-name", default="", help="name to verify in the server's certificate")
    sub.set_defaults(run=run)


def _credentials(args: argparse.Namespace, server_cert: str) -> grpc.ChannelCredentials | None:
    """TLS credentials when asked for on the command line or when the configuration serves TLS."""
    ca: Path | None = args.tls_ca or (Path(server_cert) if server_cert else None)
    if ca is None and args.tls_cert is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )


def run(args: argparse.Namespace) -> int:
    address: str | None = args.address
    try:
        server = load_config(args.config).server
    except ConfigError as exc:
        # Exit 1, not 2: container runtimes reserve 2, and a probe that cannot run is a failed probe.
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    try:
        credentials = _credentials(args, server.tls_cert_file)
    except OSError as exc:
        print(f"unhealthy: cannot read a TLS file: {exc}", file=sys.stderr)
        return 1
    if address is None:
        listen = server.listen
        address = probe_address(listen)
        if address.endswith(":0"):
            print(f"unhealthy: server.listen {listen} uses a random port; pass --address", file=sys.stderr)
            return 1
    result = check(address, args.service, args.timeout, credentials, args.tls_server_name)
    if result.healthy:
        print(result.message)
        return 0
    print(f"unhealthy: {result.message}", file=sys.stderr)
    return 1
