"""`make demo`: start the classifier on the exported defaults, classify sample customer messages, stop it.

The classifier runs as a child process in its own process group; it is stopped (SIGTERM, then SIGKILL) on every
exit path, also when the demo fails or is interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

MESSAGES = [
    "Where is my order? It was supposed to arrive yesterday.",
    "I want to talk to a real person, not a bot.",
    "This is the third time my package is late. I am really disappointed.",
    "Can I change the delivery address for order 4471?",
    "How do I return the shoes? They are too small.",
    "You charged my card twice for the same purchase!",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(address: str, child: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"the classifier exited with code {child.returncode} while starting")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the classifier was not SERVING after {timeout_s:.0f} s")


def stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.demo", description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository (default: models)")
    args = parser.parse_args()
    port = free_port()
    address = f"127.0.0.1:{port}"
    child = subprocess.Popen(
        [sys.executable, "-m", "services.classifier", "--models", str(args.models), "--host", "127.0.0.1",
         "--port", str(port), "--metrics-port", "0", "--model-names", "intent", "--log-level", "warning"],
        start_new_session=True,
    )
    try:
        print(f"starting the classifier on {address} ...", flush=True)
        wait_serving(address, child, timeout_s=120)
        with grpc.insecure_channel(address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            response = stub.Classify(classifier_pb2.ClassifyRequest(model="intent", texts=MESSAGES, top_k=3), timeout=30)
        print(f"\nintent v{response.version} (served by ecomserve over gRPC):\n")
        for message, result in zip(MESSAGES, response.results, strict=True):
            best = ", ".join(f"{label.label} {label.score:.2f}" for label in result.labels)
            print(f"  {message}\n    -> {best}")
        print()
        return 0
    except (RuntimeError, grpc.RpcError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    finally:
        stop(child)


if __name__ == "__main__":
    sys.exit(main())
