"""Starting services as child processes, waiting for SERVING, stopping them: for `make demo` and benchmarks.

Each child runs in its own process group and is stopped with SIGTERM (then SIGKILL) on every exit path.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(address: str, child: subprocess.Popen[bytes], timeout_s: float, name: str = "service") -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"{name} exited with code {child.returncode} while starting")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{name} was not SERVING on {address} after {timeout_s:.0f} s")


def stop(child: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if child.poll() is not None:
        return
    os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


@contextmanager
def service(module: str, *flags: str, timeout_s: float = 180.0, quiet: bool = True) -> Iterator[str]:
    """Run `python -m <module> --host 127.0.0.1 --port <free> <flags>` until the block ends; yields HOST:PORT."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    child = subprocess.Popen(
        [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port), *flags],
        start_new_session=True,
        stderr=subprocess.DEVNULL if quiet else None,
    )
    try:
        wait_serving(address, child, timeout_s, module)
        yield address
    finally:
        stop(child)
