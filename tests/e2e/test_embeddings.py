"""Embeddings end to end with the real MiniLM embedder: the classifier's Embed, the gateway's EmbedTexts (gRPC and
JSON) and the OpenAI-compatible /v1/embeddings (the `openai` SDK) agree with plain onnxruntime on the exported
graph, and texts that mean the same are closer than unrelated ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import openai
import pytest
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from export.defaults import EMBED
from tests.e2e import http_client
from tests.e2e.conftest import API_KEY, Launcher, Process
from tests.onnx_reference import run_alone

pytestmark = pytest.mark.e2e

# Two pairs that mean the same in different words, then two unrelated texts.
TEXTS = [
    "Where is my order? It has not arrived yet.",
    "My package still hasn't been delivered.",
    "I would like my money back for this blender.",
    "Please refund the blender I returned.",
    "Do these running shoes come in size 44?",
    "What is the warranty on the coffee machine?",
]
SAME_MEANING = [(0, 1), (2, 3)]
UNRELATED = [(0, 2), (0, 4), (1, 3), (2, 5), (3, 4), (1, 5)]


@pytest.fixture(scope="module")
def embedding_stack(tmp_path_factory: pytest.TempPathFactory, minilm_repo: Path) -> Iterator[tuple[Process, Process]]:
    launcher = Launcher(tmp_path_factory.mktemp("embeddings"))
    try:
        classifier = launcher.start("services.classifier", "--models", str(minilm_repo))
        gateway = launcher.gateway([classifier], None)
        classifier.wait_serving()
        gateway.wait_serving()
        yield classifier, gateway
    finally:
        launcher.stop_all()


def assert_meaning_and_exactness(vectors: np.ndarray, folder: Path) -> None:
    similarity = vectors @ vectors.T
    closest_unrelated = max(similarity[a, b] for a, b in UNRELATED)
    for a, b in SAME_MEANING:
        assert similarity[a, b] > closest_unrelated + 0.1, (similarity[a, b], closest_unrelated)
    for text, vector in zip(TEXTS, vectors, strict=True):
        np.testing.assert_allclose(vector, run_alone(folder, text), atol=1e-5)


def test_embed_on_the_classifier(embedding_stack: tuple[Process, Process], minilm_repo: Path) -> None:
    classifier, _ = embedding_stack
    with grpc.insecure_channel(classifier.address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        response = stub.Embed(classifier_pb2.EmbedRequest(model=EMBED, texts=TEXTS), timeout=60)
        listed = stub.ListModels(classifier_pb2.ListModelsRequest(), timeout=10)
    assert (response.dimension, listed.models[0].dimension) == (384, 384)
    assert listed.models[0].kind == classifier_pb2.MODEL_KIND_EMBEDDING and listed.models[0].normalized
    vectors = np.array([list(e.values) for e in response.embeddings])
    assert_meaning_and_exactness(vectors, minilm_repo / EMBED / "1")


def test_embed_texts_on_the_gateway_grpc_and_json(embedding_stack: tuple[Process, Process], minilm_repo: Path) -> None:
    _, gateway = embedding_stack
    with grpc.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        response = stub.EmbedTexts(
            gateway_pb2.EmbedTextsRequest(model=EMBED, texts=TEXTS), metadata=[("x-api-key", API_KEY)], timeout=60
        )
    assert (response.model, response.version, response.dimension) == (EMBED, 1, 384)
    assert_meaning_and_exactness(np.array([list(e.values) for e in response.embeddings]), minilm_repo / EMBED / "1")
    reply = http_client.call(f"{gateway.http}/v1/embed-texts", {"model": EMBED, "texts": TEXTS}, API_KEY)
    assert reply.status == 200, reply.body
    assert reply.body["dimension"] == 384 and reply.body["embeddings"][0]["tokenCount"] > 0
    assert_meaning_and_exactness(np.array([e["values"] for e in reply.body["embeddings"]]), minilm_repo / EMBED / "1")


def test_openai_embeddings(embedding_stack: tuple[Process, Process], minilm_repo: Path) -> None:
    _, gateway = embedding_stack
    client = openai.OpenAI(base_url=f"{gateway.http}/v1", api_key=API_KEY, max_retries=0)
    # Unless told otherwise the SDK asks for base64 and decodes it itself; both encodings carry the same vectors.
    for fields in ({}, {"encoding_format": "float"}):
        answer = client.embeddings.create(model=EMBED, input=TEXTS, **fields)  # type: ignore[arg-type]
        assert answer.model == EMBED and [d.index for d in answer.data] == list(range(len(TEXTS)))
        assert answer.usage.prompt_tokens == answer.usage.total_tokens > len(TEXTS)
        assert_meaning_and_exactness(np.array([d.embedding for d in answer.data]), minilm_repo / EMBED / "1")
    single = client.embeddings.create(model=EMBED, input="Where is my order?")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 384
    assert [model.id for model in client.models.list()] == [EMBED]  # this gateway has no generator


def test_openai_embeddings_errors(embedding_stack: tuple[Process, Process]) -> None:
    _, gateway = embedding_stack
    client = openai.OpenAI(base_url=f"{gateway.http}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hello")
    with pytest.raises(openai.BadRequestError) as dimensions:
        client.embeddings.create(model=EMBED, input="hello", dimensions=64)
    assert dimensions.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as tokens:
        client.embeddings.create(model=EMBED, input=[[101, 2054, 102]])
    assert tokens.value.param == "input"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=EMBED, input="refund " * 300)
    assert "max_sequence_length" in too_long.value.message
