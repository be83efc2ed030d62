"""Embed over real gRPC on loopback with tiny real ONNX embedders: vectors equal plain onnxruntime on each text
alone, normalisation, the model kind enforced both ways, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from ecomserve.classifier.v1 import classifier_pb2 as pb
from tokenizers import Tokenizer

from export.encoder import EncoderExport, export_encoder
from tests.fixtures import TEXTS
from tests.integration.conftest import running_classifier, stub_for
from tests.onnx_reference import run_alone


async def test_embed_equals_plain_onnxruntime_on_each_text_alone(classifier, model_repo: Path) -> None:
    async with classifier(max_queue_delay_ms=20, max_batch_size=8) as app, stub_for(app) as stub:
        # one request with every text, and concurrent single-text requests that share batches
        together = await stub.Embed(pb.EmbedRequest(model="embed", texts=TEXTS))
        alone = await asyncio.gather(*(stub.Embed(pb.EmbedRequest(model="embed", texts=[t])) for t in TEXTS))
    assert (together.model, together.version, together.dimension) == ("embed", 1, 32)
    folder = model_repo / "embed" / "1"
    for index, text in enumerate(TEXTS):
        expected = run_alone(folder, text)
        np.testing.assert_allclose(together.embeddings[index].values, expected, atol=1e-5)
        np.testing.assert_allclose(alone[index].embeddings[0].values, expected, atol=1e-5)
        assert abs(np.linalg.norm(together.embeddings[index].values) - 1.0) < 1e-5
        assert together.embeddings[index].token_count == len(
            Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids
        )


async def test_normalize_scales_the_vectors_of_a_model_that_does_not(
    tmp_path: Path, hf_models: dict[str, Path]
) -> None:
    _, folder = export_encoder(EncoderExport(model=str(hf_models["body"]), name="raw", out=tmp_path, normalize=False))
    async with running_classifier(tmp_path) as app, stub_for(app) as stub:
        raw = await stub.Embed(pb.EmbedRequest(model="raw", texts=TEXTS[:2]))
        unit = await stub.Embed(pb.EmbedRequest(model="raw", texts=TEXTS[:2], normalize=True))
        listed = await stub.ListModels(pb.ListModelsRequest())
    assert not listed.models[0].normalized
    for text, plain, scaled in zip(TEXTS, raw.embeddings, unit.embeddings, strict=False):
        expected = run_alone(folder, text)
        np.testing.assert_allclose(plain.values, expected, atol=1e-5)
        assert abs(np.linalg.norm(expected) - 1.0) > 1e-3  # the graph does not normalise
        np.testing.assert_allclose(scaled.values, expected / np.linalg.norm(expected), atol=1e-5)


async def test_each_rpc_refuses_the_other_kind_of_model(classifier) -> None:
    async with classifier() as app, stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as embedding:
            await stub.Classify(pb.ClassifyRequest(model="embed", texts=["hello"]))
        with pytest.raises(grpc.aio.AioRpcError) as classifying:
            await stub.Embed(pb.EmbedRequest(model="intent", texts=["hello"]))
        still = await stub.Embed(pb.EmbedRequest(model="embed", texts=["hello"]))
    assert embedding.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "embedding model" in embedding.value.details() and "Embed" in embedding.value.details()
    assert classifying.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "classification model" in classifying.value.details() and "Classify" in classifying.value.details()
    assert len(still.embeddings) == 1


@pytest.mark.parametrize(
    ("request_fields", "code", "needle"),
    [
        ({"texts": ["hello"]}, grpc.StatusCode.INVALID_ARGUMENT, "model is required"),
        ({"model": "embed"}, grpc.StatusCode.INVALID_ARGUMENT, "texts is empty"),
        ({"model": "embed", "texts": ["a"] * 65}, grpc.StatusCode.INVALID_ARGUMENT, "max_texts_per_request=64"),
        ({"model": "embed", "texts": ["ok", " "]}, grpc.StatusCode.INVALID_ARGUMENT, "texts[1] is empty"),
        ({"model": "embed", "texts": ["refund " * 80]}, grpc.StatusCode.INVALID_ARGUMENT, "max_sequence_length"),
        ({"model": "nope", "texts": ["hello"]}, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ({"model": "embed", "version": 9, "texts": ["hello"]}, grpc.StatusCode.NOT_FOUND, "no version 9"),
    ],
)
async def test_bad_embed_requests_get_statuses_a_caller_can_act_on(classifier, request_fields, code, needle) -> None:
    async with classifier() as app, stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Embed(pb.EmbedRequest(**request_fields))
    assert error.value.code() == code
    assert needle in error.value.details()


async def test_truncate_cuts_over_long_texts_and_says_so(classifier) -> None:
    async with classifier() as app, stub_for(app) as stub:
        response = await stub.Embed(pb.EmbedRequest(model="embed", texts=["refund " * 80, "hello"], truncate=True))
    assert response.embeddings[0].truncated and response.embeddings[0].token_count == 64
    assert not response.embeddings[1].truncated
