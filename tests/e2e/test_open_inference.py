"""The Open Inference Protocol (v2) on the classifier service, driven by tritonclient's gRPC client: health and
metadata, classification and embedding through ModelInfer equal plain onnxruntime, errors as gRPC statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.core.manifest import Manifest
from tests.e2e.conftest import API_KEY, Launcher
from tests.fixtures import TEXTS
from tests.onnx_reference import run_alone

pytestmark = pytest.mark.e2e


def test_tritonclient_talks_to_the_classifier(launcher: Launcher, model_repo: Path) -> None:
    # The client runs in a process of its own (see tests/e2e/tritonclient_calls.py); this one never imports it.
    classifier = launcher.start("services.classifier", "--models", str(model_repo)).wait_serving()
    called = subprocess.run(
        [sys.executable, "-m", "tests.e2e.tritonclient_calls", classifier.address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert called.returncode == 0, called.stderr
    answers = json.loads(called.stdout)
    assert answers["live"] and answers["ready"] and answers["model_ready"]
    assert answers["server"]["name"] == "ecomserve"
    sentiment = answers["sentiment_metadata"]
    assert sentiment["platform"] == "onnxruntime_onnx" and sentiment["versions"] == ["1"]
    assert sentiment["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    assert [o["name"] for o in sentiment["outputs"]] == ["probabilities", "label"]
    assert answers["embed_metadata"]["outputs"] == [{"name": "embeddings", "datatype": "FP32", "shape": ["-1", "32"]}]

    folder = model_repo / "sentiment" / "1"
    labels = Manifest.read(folder).labels
    for index, text in enumerate(TEXTS):
        expected = run_alone(folder, text)
        np.testing.assert_allclose(answers["probabilities"][index], expected, atol=1e-5)
        assert answers["labels"][index] == labels[int(np.argmax(expected))]
        assert answers["top2"][index] == [labels[i] for i in np.argsort(-expected, kind="stable")[:2]]
    assert answers["embed_outputs"] == ["embeddings"]  # only what was asked for
    for text, vector in zip(TEXTS, answers["embeddings"], strict=True):
        np.testing.assert_allclose(vector, run_alone(model_repo / "embed" / "1", text), atol=1e-5)

    assert answers["unknown_model"].startswith("StatusCode.NOT_FOUND") and "nope" in answers["unknown_model"]
    assert (
        answers["too_long"].startswith("StatusCode.INVALID_ARGUMENT") and "max_sequence_length" in answers["too_long"]
    )
    assert answers["wrong_input"].startswith("StatusCode.INVALID_ARGUMENT") and '"text"' in answers["wrong_input"]


def test_tritonclient_over_rest_through_the_gateway(launcher: Launcher, model_repo: Path) -> None:
    classifier = launcher.start("services.classifier", "--models", str(model_repo))
    gateway = launcher.gateway([classifier], None)
    classifier.wait_serving()
    gateway.wait_serving()
    address = gateway.http.removeprefix("http://")
    called = subprocess.run(
        [sys.executable, "-m", "tests.e2e.tritonclient_calls", "--http", address, API_KEY],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert called.returncode == 0, called.stderr
    answers = json.loads(called.stdout)
    assert answers["live"] and answers["ready"] and answers["model_ready"]
    assert [o["name"] for o in answers["sentiment_metadata"]["outputs"]] == ["probabilities", "label"]
    folder = model_repo / "sentiment" / "1"
    labels = Manifest.read(folder).labels
    for index, text in enumerate(TEXTS):
        expected = run_alone(folder, text)
        np.testing.assert_allclose(answers["probabilities"][index], expected, atol=1e-5)
        assert answers["top2"][index] == [labels[i] for i in np.argsort(-expected, kind="stable")[:2]]
    assert "nope" in answers["unknown_model"]
    assert "API key" in answers["no_key"]  # the gateway's API keys apply to v2 too
