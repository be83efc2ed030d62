"""The Python client package (clients/python): installed into a fresh virtual environment from the checkout, it
brings the generated stubs of every API with their type stubs, and a service of another team calls the gateway
with it, without protoc and without ecomserve's own code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import REPO
from tests.e2e.conftest import API_KEY, Launcher

pytestmark = pytest.mark.e2e

CALL = """
import grpc, sys
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ecomserve.classifier.v1 import classifier_pb2_grpc
from ecomserve.generator.v1 import generator_pb2_grpc
from inference import grpc_predict_v2_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    routed = gateway_pb2_grpc.GatewayServiceStub(channel).RouteMessage(
        gateway_pb2.RouteMessageRequest(message="Where is my order?"), metadata=(("x-api-key", sys.argv[2]),),
        timeout=30)
print(routed.queue)
"""


def test_the_client_package_calls_the_gateway(launcher: Launcher, model_repo: Path, tmp_path: Path) -> None:
    venv = tmp_path / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(REPO / "clients" / "python")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    classifier = launcher.classifier(model_repo).wait_serving()
    gateway = launcher.gateway([classifier], None).wait_serving()
    called = subprocess.run(
        [python, "-c", CALL, gateway.address, API_KEY], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert called.returncode == 0, called.stderr
    assert called.stdout.strip()  # a queue from the routing table

    alone = subprocess.run([python, "-c", "import services"], cwd=tmp_path, capture_output=True, check=False)
    assert alone.returncode != 0, "the client package must not carry the server"
    typed = subprocess.run(
        [python, "-c", "import ecomserve.gateway.v1.gateway_pb2 as m, pathlib; p = pathlib.Path(m.__file__);"
         "print(p.with_suffix('.pyi').exists() and (p.parent / 'py.typed').exists())"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert typed.stdout.strip() == "True", typed.stderr
