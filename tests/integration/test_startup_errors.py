"""What an operator sees when a service cannot start for its configuration or its machine: one line naming the
cause and the flag that fixes it, exit code 2, no traceback and no drain."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

GATEWAY = ["services.gateway", "--allow-unauthenticated", "--host", "127.0.0.1"]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another socket listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def start(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, check=False)


def assert_one_clear_line(ran: subprocess.CompletedProcess[str], *mentions: str) -> None:
    assert ran.returncode == 2, ran.stderr
    errors = [line for line in ran.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and all(mention in errors[0] for mention in mentions), ran.stderr
    assert "Traceback" not in ran.stderr and "draining" not in ran.stderr, ran.stderr


def test_a_missing_model_repository(tmp_path: Path) -> None:
    missing = tmp_path / "no-models"
    ran = start("services.classifier", "--models", str(missing), "--port", "0", "--metrics-port", "0")
    assert_one_clear_line(ran, "cannot start classifier", f"model repository {missing} does not exist")


def test_a_grpc_port_in_use(taken_port: int) -> None:
    ran = start(*GATEWAY, "--port", str(taken_port), "--metrics-port", "0")
    assert_one_clear_line(ran, f"cannot listen on 127.0.0.1:{taken_port}", "--port", "ECOMSERVE_GATEWAY_PORT")


def test_an_http_port_in_use(taken_port: int) -> None:
    ran = start(*GATEWAY, "--port", "0", "--http-port", str(taken_port), "--metrics-port", "0")
    assert_one_clear_line(ran, f"HTTP on 127.0.0.1:{taken_port}", "--http-port", "ECOMSERVE_GATEWAY_HTTP_PORT")


def test_a_metrics_port_in_use(taken_port: int, tmp_path: Path) -> None:
    ran = start("services.generator", "--models", str(tmp_path), "--port", "0", "--metrics-port", str(taken_port))
    assert_one_clear_line(ran, f"/metrics on 127.0.0.1:{taken_port}", "--metrics-port", "ECOMSERVE_GENERATOR_METRICS")
