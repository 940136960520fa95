"""`duo-sidecar healthcheck` against real sidecar processes: exit 0 only on SERVING, with a one-line message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sidecar.healthcheck import probe_address
from tests.conftest import StartSidecar
from tests.helpers import BIN, free_port


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "duo-sidecar"), "healthcheck", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert output.count("\n") == 1, output
    return output.strip()


def test_serving_sidecar_exits_0(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar()
    result = healthcheck("--address", sidecar.address)
    assert result.returncode == 0, result.stderr
    assert one_line(result) == f"SERVING: {sidecar.address} overall health"

    routing = healthcheck("--address", sidecar.address, "--service", "gitlab.duo.routing.v1.RoutingService")
    assert routing.returncode == 0, routing.stderr


def test_default_address_comes_from_the_config(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar()
    assert healthcheck("--config", str(sidecar.config)).returncode == 0

    # Inside a container the sidecar listens on 0.0.0.0; the probe goes to loopback.
    port = sidecar.address.rsplit(":", 1)[1]
    wildcard = healthcheck("--config", str(sidecar.config), env={"DUO_SIDECAR_SERVER_LISTEN": f"0.0.0.0:{port}"})
    assert wildcard.returncode == 0, wildcard.stderr
    assert one_line(wildcard) == f"SERVING: 127.0.0.1:{port} overall health"


def test_nothing_listening_exits_1() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = healthcheck("--address", address, "--timeout", "2")
    assert result.returncode == 1
    message = one_line(result)
    assert message.startswith(f"unhealthy: UNAVAILABLE: {address}"), message


def test_unknown_service_exits_1(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar()
    result = healthcheck("--address", sidecar.address, "--service", "no.such.Service")
    assert result.returncode == 1
    assert (
        one_line(result) == f"unhealthy: UNKNOWN_SERVICE: {sidecar.address} does not report service 'no.such.Service'"
    )


def test_configuration_error_exits_1_not_2(tmp_path: Path) -> None:
    # Container runtimes reserve exit code 2; a probe that cannot run is simply unhealthy.
    result = healthcheck("--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 1
    assert "file not found" in one_line(result)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        ("[::]:50051", "127.0.0.1:50051"),
        (":::50051", "127.0.0.1:50051"),
        ("127.0.0.1:6000", "127.0.0.1:6000"),
        ("localhost:6000", "localhost:6000"),
        ("[::1]:6000", "[::1]:6000"),
        ("10.1.2.3:6000", "10.1.2.3:6000"),
    ],
)
def test_probe_address(listen: str, expected: str) -> None:
    assert probe_address(listen) == expected


def test_checks_a_tls_sidecar(tmp_path: Path) -> None:
    import signal
    import time

    from tests.certs import make_pki
    from tests.helpers import write_config

    pki = make_pki(tmp_path)
    port = free_port()
    config = write_config(tmp_path, "self_managed", port)
    tls = f'[server]\ntls_cert_file = "{pki.server_cert}"\ntls_key_file = "{pki.server_key}"\n'
    config.write_text(config.read_text().replace("[server]\n", tls, 1))
    process = subprocess.Popen([str(BIN / "duo-sidecar"), "serve", "--config", str(config)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while (result := healthcheck("--config", str(config), "--tls-ca", str(pki.ca))).returncode != 0:
            assert time.monotonic() < deadline, result.stderr
            time.sleep(0.2)
        assert one_line(result) == f"SERVING: 127.0.0.1:{port} overall health"
        # A plaintext probe of a TLS port is a failed probe, not a hang.
        plaintext = healthcheck("--address", f"127.0.0.1:{port}", "--timeout", "3")
        assert plaintext.returncode == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
