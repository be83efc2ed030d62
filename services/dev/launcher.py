"""Starting services as child processes, waiting for SERVING, stopping them: for `make demo`, `make up` and
the benchmarks.

Each child runs in its own process group and is stopped with SIGTERM (then SIGKILL) on every exit path; children
of a foreground run also get SIGTERM from the kernel if their parent dies without cleaning up.
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
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never handed out before by this process: the kernel may offer a released port
    again while the child given it is still starting and has not bound it yet."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_serving(
    address: str,
    child: subprocess.Popen[bytes],
    timeout_s: float,
    name: str = "service",
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    channel = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    with channel:
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


# A foreground child asks the kernel (Linux prctl PR_SET_PDEATHSIG, kept across exec) for SIGTERM when its parent
# exits, even on SIGKILL, then becomes the service. It does so itself, first thing: setting it from the parent
# between fork and exec (preexec_fn) makes Python fork() with gRPC's fork handlers, which can hang the parent in a
# process that uses gRPC (seen in the test suite); without preexec_fn, Python starts children with vfork.
_DIE_WITH_PARENT = """
import ctypes, ctypes.util, os, signal, sys
ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the parent is already gone
os.execv(sys.executable, [sys.executable, "-m", *sys.argv[2:]])
"""


def spawn(module: str, *args: str, detached: bool = False, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`python -m <module> <args>` in its own process group. A foreground child dies with this process; a
    detached one (`make up`) outlives it. Output goes to `log` when given, else to this terminal."""
    if detached or not sys.platform.startswith("linux"):
        command = [sys.executable, "-m", module, *args]
    else:
        command = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), module, *args]
    sink = log.open("ab") if log else None
    try:
        return subprocess.Popen(command, start_new_session=True, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL)
    finally:
        if sink:
            sink.close()


def exit_on_termination() -> None:
    """SIGTERM and SIGHUP raise SystemExit, so `finally` blocks stop the children (Ctrl-C already does)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: sys.exit(128 + number))


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
def service(module: str, *flags: str, timeout_s: float = 180.0, log: Path | None = None) -> Iterator[str]:
    """Run `python -m <module> --host 127.0.0.1 --port <free> <flags>` until the block ends; yields HOST:PORT."""
    with service_process(module, *flags, timeout_s=timeout_s, log=log) as (address, _):
        yield address


@contextmanager
def service_process(
    module: str, *flags: str, timeout_s: float = 180.0, log: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """As `service`, and the child process too (to measure it, say)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    child = spawn(module, "--host", "127.0.0.1", "--port", str(port), *flags, log=log)
    try:
        wait_serving(address, child, timeout_s, module)
        yield address, child
    finally:
        stop(child)
