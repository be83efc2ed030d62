"""The serving install the images ship, built by the same script the Dockerfiles run (deploy/docker/
install-serving.sh) into a fresh virtual environment: it holds no torch, carries its generated gRPC code and
package data, and a classifier started from it (outside the source tree) answers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import pytest
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc

from services.dev.launcher import free_port, stop, wait_serving
from services.gateway.config import PACKAGE_DIR
from tests.deploy.manifests import DEPLOY, REPO

TEMPLATES = PACKAGE_DIR / "templates"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("image") / "ecomserve"
    subprocess.run(
        ["sh", str(DEPLOY / "docker" / "install-serving.sh"), str(REPO), str(prefix), "cpu"],
        check=True,
        timeout=600,
    )
    return prefix


def run_python(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=cwd, capture_output=True, text=True)


def test_the_serving_install_has_no_torch_and_its_own_generated_code(serving_venv: Path, tmp_path: Path) -> None:
    assert run_python(serving_venv, "import torch", tmp_path).returncode != 0
    assert run_python(serving_venv, "import grpc_tools", tmp_path).returncode != 0  # build-time only
    for developer_only in ("export", "bench", "services.dev"):  # they run from the source tree
        assert run_python(serving_venv, f"import {developer_only}", tmp_path).returncode != 0, developer_only
    where = run_python(
        serving_venv,
        "import services, ecomserve.gateway.v1.gateway_pb2 as pb, services.gateway.templates as t, pathlib;"
        "print(services.__file__); print(pb.__file__);"
        "folder = pathlib.Path(t.__file__).parent / 'templates';"
        "print(sorted(str(p.relative_to(folder)) for p in folder.glob('**/*.toml')))",
        tmp_path,
    )
    assert where.returncode == 0, where.stderr
    lines = where.stdout.splitlines()
    assert all(line.startswith(str(serving_venv)) for line in lines[:2]), lines  # not the source tree
    shipped = sorted(str(path.relative_to(TEMPLATES)) for path in TEMPLATES.glob("**/*.toml"))
    assert lines[2] == str(shipped), "every prompt template of the gateway must ship as package data"


def test_a_classifier_from_the_serving_install_answers(serving_venv: Path, model_repo: Path, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "classifier.log").open("wb")
    environment = {**os.environ, "ECOMSERVE_CLASSIFIER_MODELS": str(model_repo)}
    command = [str(serving_venv / "bin" / "python"), "-m", "services.classifier"]
    flags = ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--model-names", "intent"]
    child = subprocess.Popen(
        [*command, *flags], cwd=tmp_path, env=environment, stdout=log, stderr=log, start_new_session=True
    )
    try:
        wait_serving(f"127.0.0.1:{port}", child, 120, "classifier")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            answer = stub.Classify(
                classifier_pb2.ClassifyRequest(model="intent", texts=["where is my parcel"], top_k=2), timeout=30
            )
        assert len(answer.results[0].labels) == 2
    finally:
        stop(child)
        log.close()
