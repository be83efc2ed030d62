"""The Open Inference Protocol (v2) on the classifier service, driven by tritonclient's gRPC client: health and
metadata, classification and embedding through ModelInfer equal plain onnxruntime, errors as gRPC statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from inference import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc

from services.core.manifest import Manifest
from services.dev.launcher import free_port
from tests.e2e import http_client
from tests.e2e.conftest import API_KEY, Launcher
from tests.e2e.test_gateway_hardening import post
from tests.fixtures import TEXTS
from tests.onnx_reference import run_alone

pytestmark = pytest.mark.e2e


def tritonclient_answers(*args: str) -> dict:
    """What tests/e2e/tritonclient_calls.py got from the server (it runs in a process of its own: tritonclient and
    this project both register the protobuf package `inference`); the server is live and the model ready."""
    called = subprocess.run(
        [sys.executable, "-m", "tests.e2e.tritonclient_calls", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert called.returncode == 0, called.stderr
    answers: dict = json.loads(called.stdout)
    assert answers["live"] and answers["ready"] and answers["model_ready"]
    return answers


def assert_classes(classes: list[str], expected: np.ndarray, labels: list[str]) -> None:
    """Triton's classification extension with class_count=2: "score:index:label" for the two best labels."""
    best = np.argsort(-expected, kind="stable")[:2]
    parsed = [entry.split(":", 2) for entry in classes]
    assert [(int(index), label) for _, index, label in parsed] == [(i, labels[i]) for i in best]
    np.testing.assert_allclose([float(score) for score, _, _ in parsed], expected[best], atol=1e-5)


def test_tritonclient_talks_to_the_classifier(launcher: Launcher, model_repo: Path) -> None:
    classifier = launcher.start("services.classifier", "--models", str(model_repo)).wait_serving()
    answers = tritonclient_answers(classifier.address)
    assert answers["server"]["name"] == "ecomserve" and answers["server"]["extensions"] == ["classification"]
    sentiment = answers["sentiment_metadata"]
    assert sentiment["platform"] == "onnxruntime_onnx" and sentiment["versions"] == ["1"]
    assert sentiment["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    assert [o["name"] for o in sentiment["outputs"]] == ["probabilities", "label"]
    with grpc.insecure_channel(classifier.address) as channel:  # the labels, which tritonclient's messages skip
        metadata = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            grpc_predict_v2_pb2.ModelMetadataRequest(name="sentiment"), timeout=10
        )
    labels_parameter = metadata.outputs[0].parameters["labels"].string_param
    assert json.loads(labels_parameter) == Manifest.read(model_repo / "sentiment" / "1").labels
    assert answers["embed_metadata"]["outputs"] == [{"name": "embeddings", "datatype": "FP32", "shape": ["-1", "32"]}]

    folder = model_repo / "sentiment" / "1"
    labels = Manifest.read(folder).labels
    for index, text in enumerate(TEXTS):
        expected = run_alone(folder, text)
        np.testing.assert_allclose(answers["probabilities"][index], expected, atol=1e-5)
        assert answers["labels"][index] == labels[int(np.argmax(expected))]
        assert answers["top2"][index] == [labels[i] for i in np.argsort(-expected, kind="stable")[:2]]
        assert_classes(answers["classes"][index], expected, labels)
    assert answers["embed_outputs"] == ["embeddings"]  # only what was asked for
    for text, vector in zip(TEXTS, answers["embeddings"], strict=True):
        np.testing.assert_allclose(vector, run_alone(model_repo / "embed" / "1", text), atol=1e-5)

    assert answers["unknown_model"].startswith("StatusCode.NOT_FOUND") and "nope" in answers["unknown_model"]
    assert (
        answers["too_long"].startswith("StatusCode.INVALID_ARGUMENT") and "max_sequence_length" in answers["too_long"]
    )
    assert answers["wrong_input"].startswith("StatusCode.INVALID_ARGUMENT") and '"text"' in answers["wrong_input"]
    refused = answers["classes_of_embeddings"]
    assert refused.startswith("StatusCode.INVALID_ARGUMENT") and '"probabilities"' in refused


def assert_rest_answers(answers: dict, model_repo: Path) -> None:
    """What tritonclient.http got over v2 REST equals plain onnxruntime; bad input got the protocol's errors."""
    assert [o["name"] for o in answers["sentiment_metadata"]["outputs"]] == ["probabilities", "label"]
    folder = model_repo / "sentiment" / "1"
    labels = Manifest.read(folder).labels
    probabilities, label = answers["sentiment_metadata"]["outputs"]
    assert json.loads(probabilities["parameters"]["labels"]) == labels and "parameters" not in label
    for index, text in enumerate(TEXTS):
        expected = run_alone(folder, text)
        np.testing.assert_allclose(answers["probabilities"][index], expected, atol=1e-5)
        assert answers["top2"][index] == [labels[i] for i in np.argsort(-expected, kind="stable")[:2]]
        assert_classes(answers["classes"][index], expected, labels)
    assert "nope" in answers["unknown_model"]
    assert answers["wrong_datatype"].startswith("400") and "BYTES" in answers["wrong_datatype"]


def test_tritonclient_over_rest_through_the_gateway(launcher: Launcher, model_repo: Path) -> None:
    classifier = launcher.start("services.classifier", "--models", str(model_repo))
    gateway = launcher.gateway([classifier], None)
    classifier.wait_serving()
    gateway.wait_serving()
    answers = tritonclient_answers("--http", gateway.http.removeprefix("http://"), API_KEY)
    assert_rest_answers(answers, model_repo)
    assert "API key" in answers["no_key"]  # the gateway's API keys apply to v2 too


def test_tritonclient_over_rest_on_the_classifiers_own_http_port(launcher: Launcher, model_repo: Path) -> None:
    """What a KServe runtime declaring both v2 protocols serves: REST v2 straight from the classifier."""
    http_port = free_port()
    classifier = launcher.start(
        "services.classifier", "--models", str(model_repo), "--http-port", str(http_port)
    ).wait_serving()
    answers = tritonclient_answers("--http", f"127.0.0.1:{http_port}")
    assert_rest_answers(answers, model_repo)
    assert answers["no_key"] == "no error"  # like its gRPC port, it trusts its network
    unknown = http_client.call(f"http://127.0.0.1:{http_port}/v2/nowhere")
    assert unknown.status == 404 and "error" in unknown.body and unknown.headers.get("x-request-id")
    classifier.stop()
    assert classifier.child.wait(timeout=30) == 0


def test_v2_and_classify_agree_and_bad_v2_input_gets_the_protocols_errors(launcher: Launcher, model_repo: Path) -> None:
    classifier = launcher.start("services.classifier", "--models", str(model_repo))
    gateway = launcher.gateway([classifier], None)
    classifier.wait_serving()
    gateway.wait_serving()
    texts = {"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}
    infer = f"{gateway.http}/v2/models/sentiment/infer"
    answer = http_client.call(infer, {"inputs": [texts]}, API_KEY)
    assert answer.status == 200, answer.body
    [probabilities] = [o for o in answer.body["outputs"] if o["name"] == "probabilities"]
    with grpc.insecure_channel(classifier.address) as channel:
        classified = classifier_pb2_grpc.ClassifierServiceStub(channel).Classify(
            classifier_pb2.ClassifyRequest(model="sentiment", texts=TEXTS, top_k=0), timeout=30
        )
    labels = Manifest.read(model_repo / "sentiment" / "1").labels
    for row, result in zip(np.reshape(probabilities["data"], probabilities["shape"]), classified.results, strict=True):
        scores = {label.label: label.score for label in result.labels}
        np.testing.assert_allclose(row, [scores[label] for label in labels], atol=1e-6)

    bad_requests = [
        (infer, {"inputs": [texts | {"datatype": "INT64", "data": [1, 2, 3]}]}, 400, "BYTES"),
        (infer, {"inputs": [texts | {"shape": [2, 2]}]}, 400, "shape"),
        (infer, {"inputs": [texts | {"name": "ids"}]}, 400, '"text"'),
        (infer, {"inputs": []}, 400, '"text"'),
        (infer, {"inputs": [texts | {"data": [1, 2, 3]}]}, 400, "strings"),
        (infer, ["not", "an", "object"], 400, "inputs"),
        (f"{gateway.http}/v2/models/nope/infer", {"inputs": [texts]}, 404, "nope"),
        (infer, {"inputs": [texts | {"data": ["x" * (2 << 20)] * 3}]}, 413, "limit"),
    ]
    for url, body, status, words in bad_requests:
        reply = http_client.call(url, body, API_KEY)
        assert reply.status == status, (body if len(str(body)) < 200 else "2 MB body", reply.body)
        assert words in str(reply.body["error"]), reply.body
    status, _, body = post(gateway, "/v2/models/sentiment/infer", b"{not json", {})
    assert status == 400 and "JSON" in body["error"]
    with grpc.insecure_channel(classifier.address) as channel:
        wrong_shape = pb_request_with_shape(channel, [len(TEXTS), 2])
    assert wrong_shape.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape" in (wrong_shape.details() or "")
    assert http_client.call(infer, {"inputs": [texts]}, API_KEY).status == 200  # still serving


def pb_request_with_shape(channel: grpc.Channel, shape: list[int]) -> grpc.RpcError:
    """A ModelInfer over gRPC with a shape the model does not take (with ecomserve's own generated stub)."""
    from inference import grpc_predict_v2_pb2 as v2
    from inference import grpc_predict_v2_pb2_grpc as v2_grpc

    request = v2.ModelInferRequest(model_name="sentiment")
    request.inputs.add(name="text", datatype="BYTES", shape=shape).contents.bytes_contents.extend(
        text.encode() for text in TEXTS
    )
    with pytest.raises(grpc.RpcError) as refused:
        v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    return refused.value
