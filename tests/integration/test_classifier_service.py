"""The classifier service over real gRPC on loopback, with tiny real ONNX models."""

from __future__ import annotations

import asyncio
import shutil
import urllib.request
import weakref
from pathlib import Path

import grpc
import numpy as np
import pytest
from ecomserve.classifier.v1 import classifier_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from services.classifier.app import ClassifierApp
from services.core.listener import serve_metrics
from services.core.manifest import Manifest
from services.dev.launcher import free_port
from tests.fixtures import TEXTS
from tests.integration.conftest import address_of, running_classifier, stub_for
from tests.onnx_reference import run_alone


def assert_matches_reference(
    model_repo: Path, text: str, served: pb.Classification, model: str = "sentiment", version: int = 1
) -> None:
    """The served scores of `text` equal plain onnxruntime's on the text alone (padding and batching change
    nothing)."""
    folder = model_repo / model / str(version)
    scores = {label.label: label.score for label in served.labels}
    expected = run_alone(folder, text)
    labels = Manifest.read(folder).labels
    np.testing.assert_allclose([scores[label] for label in labels], expected, atol=1e-5)


async def test_classify_returns_ranked_labels_and_the_answering_version(classifier) -> None:
    async with classifier() as app, stub_for(app) as stub:
        response = await stub.Classify(pb.ClassifyRequest(model="intent", texts=TEXTS[:2], top_k=2))
        assert (response.model, response.version) == ("intent", 2)
        assert len(response.results) == 2
        for result in response.results:
            assert len(result.labels) == 2
            assert result.labels[0].score >= result.labels[1].score
            assert result.token_count > 0
        pinned = await stub.Classify(pb.ClassifyRequest(model="intent", version=1, texts=TEXTS[:1]))
        assert pinned.version == 1
        assert len(pinned.results[0].labels) == 3
        assert abs(sum(label.score for label in pinned.results[0].labels) - 1.0) < 1e-5


async def test_top_k_labels_are_the_head_of_the_full_ranking(classifier) -> None:
    async with classifier() as app, stub_for(app) as stub:
        for text in TEXTS:
            ranked = (await stub.Classify(pb.ClassifyRequest(model="intent", texts=[text], top_k=0))).results[0]
            scores = [label.score for label in ranked.labels]
            assert scores == sorted(scores, reverse=True)
            for top_k in (1, 3):
                best = (await stub.Classify(pb.ClassifyRequest(model="intent", texts=[text], top_k=top_k))).results[0]
                assert list(best.labels) == list(ranked.labels[:top_k])


@pytest.mark.parametrize(("model", "version"), [("sentiment", 1), ("intent", 1), ("intent", 2)])
async def test_batched_results_equal_unbatched_onnxruntime(classifier, model_repo: Path, model, version) -> None:
    """fp32 models and the dynamically quantized int8 `intent` v2 alike: batched, padded or alone, a text scores
    the same."""
    async with classifier(max_queue_delay_ms=20, max_batch_size=8) as app, stub_for(app) as stub:
        responses = await asyncio.gather(
            *(stub.Classify(pb.ClassifyRequest(model=model, version=version, texts=[text], top_k=0)) for text in TEXTS)
        )
    for text, response in zip(TEXTS, responses, strict=True):
        assert_matches_reference(model_repo, text, response.results[0], model, version)


async def test_without_batch_invariance_int8_texts_share_runs(classifier, model_repo: Path) -> None:
    """--no-batch-invariant: the int8 model's texts are padded into shared runs (and their scores may move)."""
    labels = {"service": "classifier", "model": "intent", "version": "2"}
    before = REGISTRY.get_sample_value("ecomserve_inference_runs_total", labels) or 0.0
    async with classifier(batch_invariant=False, run_overhead_tokens=1000) as app, stub_for(app) as stub:
        response = await stub.Classify(pb.ClassifyRequest(model="intent", texts=TEXTS))
    assert len(response.results) == len(TEXTS)
    assert (REGISTRY.get_sample_value("ecomserve_inference_runs_total", labels) or 0.0) - before < len(TEXTS)


@pytest.mark.parametrize(("model", "version"), [("sentiment", "1"), ("intent", "2")])
async def test_concurrent_requests_are_batched_together_visible_in_metrics(classifier, model, version) -> None:
    """The int8 `intent` v2 too: its texts are batched together, though each then runs on its own."""
    port = free_port()
    serve_metrics("127.0.0.1", port)
    async with classifier(max_queue_delay_ms=30, max_batch_size=16) as app, stub_for(app) as stub:
        await asyncio.gather(
            *(stub.Classify(pb.ClassifyRequest(model=model, texts=[TEXTS[i % len(TEXTS)]])) for i in range(32))
        )
        # While the models serve: a closed model's per-version gauges (runtime info, queue depth) are gone.
        url = f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
    samples = [sample for family in text_string_to_metric_families(body) for sample in family.samples]

    def value(metric: str, **extra: str) -> float:
        """The metric of this model version (model and version are separate labels)."""
        wanted = {"service": "classifier", "model": model, "version": version, **extra}
        found = [s.value for s in samples if s.name == metric and wanted.items() <= s.labels.items()]
        assert found, f"{metric} of {model} v{version} missing from /metrics"
        return found[0]

    assert value("ecomserve_batch_items_total") / value("ecomserve_batches_total") > 1
    assert "ecomserve_padding_efficiency_ratio_bucket" in body
    assert value("ecomserve_runtime_info", provider="CPUExecutionProvider") == 1


async def test_a_batch_is_split_by_length_into_runs_without_padding_waste(classifier, model_repo: Path) -> None:
    labels = {"service": "classifier", "model": "sentiment", "version": "1"}

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {name: sample(name) for name in RUN_SAMPLES}
    texts = [TEXTS[2], TEXTS[1], TEXTS[4], TEXTS[1]]  # two lengths, interleaved, in one batch
    async with classifier(run_overhead_tokens=0.5, max_batch_size=8) as app, stub_for(app) as stub:
        response = await stub.Classify(pb.ClassifyRequest(model="sentiment", texts=texts))
    ran = {name: sample(name) - before[name] for name in RUN_SAMPLES}
    # "hello" and "thanks" have the same token count, the refund text many more: one run per length, none padded.
    assert ran["ecomserve_batches_total"] == 1 and ran["ecomserve_batch_items_total"] == 4
    assert ran["ecomserve_inference_runs_total"] == 2
    assert ran["ecomserve_padding_efficiency_ratio_count"] == 2
    assert ran["ecomserve_padding_efficiency_ratio_sum"] == pytest.approx(2.0)
    for text, result in zip(texts, response.results, strict=True):
        assert_matches_reference(model_repo, text, result)


RUN_SAMPLES = (
    "ecomserve_batches_total",
    "ecomserve_inference_runs_total",
    "ecomserve_batch_items_total",
    "ecomserve_padding_efficiency_ratio_sum",
    "ecomserve_padding_efficiency_ratio_count",
)


@pytest.mark.parametrize(
    ("request_fields", "code", "needle"),
    [
        ({"model": "intent"}, grpc.StatusCode.INVALID_ARGUMENT, "texts is empty"),
        ({"model": "intent", "texts": ["ok", " "]}, grpc.StatusCode.INVALID_ARGUMENT, "texts[1] is empty"),
        (
            {"model": "intent", "texts": ["x"] * 5},
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_texts_per_request=4",
        ),
        (
            {"model": "intent", "texts": ["hello " * 100]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_sequence_length of 64",
        ),
        ({"model": "intent", "texts": ["x"], "top_k": -1}, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
        ({"model": "", "texts": ["x"]}, grpc.StatusCode.INVALID_ARGUMENT, "model is required"),
        ({"model": "nope", "texts": ["x"]}, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ({"model": "intent", "version": 9, "texts": ["x"]}, grpc.StatusCode.NOT_FOUND, "no version 9"),
    ],
)
async def test_invalid_requests_get_precise_statuses(classifier, request_fields, code, needle) -> None:
    async with classifier(max_texts_per_request=4) as app, stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Classify(pb.ClassifyRequest(**request_fields))
        assert caught.value.code() == code
        assert needle in caught.value.details()
        assert (await stub.Classify(pb.ClassifyRequest(model="intent", texts=["still fine"]))).results


async def test_invalid_utf8_in_a_text_is_invalid_argument(classifier) -> None:
    """gRPC itself would answer UNKNOWN with the parser's internal text."""
    raw = pb.ClassifyRequest(model="intent", texts=["ok", "@@@@"]).SerializeToString()
    async with classifier() as app, stub_for(app) as stub:
        async with grpc.aio.insecure_channel(address_of(app.server)) as channel:
            classify = channel.unary_unary("/ecomserve.classifier.v1.ClassifierService/Classify")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await classify(raw.replace(b"@@@@", b"caf\xe9"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ecomserve.classifier.v1.ClassifyRequest" in caught.value.details() and "UTF-8" in caught.value.details()
        assert (await stub.Classify(pb.ClassifyRequest(model="intent", texts=["still fine"]))).results


async def test_truncate_cuts_long_texts_to_the_limit(classifier) -> None:
    async with classifier() as app, stub_for(app) as stub:
        response = await stub.Classify(pb.ClassifyRequest(model="intent", texts=["hello " * 100], truncate=True))
        assert response.results[0].truncated
        assert response.results[0].token_count == 64


async def test_queue_full_is_resource_exhausted(classifier) -> None:
    async with (
        classifier(max_queue_size=2, max_batch_size=64, max_queue_delay_ms=400) as app,
        stub_for(app) as stub,
    ):
        waiting = asyncio.ensure_future(stub.Classify(pb.ClassifyRequest(model="intent", texts=["a", "b"])))
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Classify(pb.ClassifyRequest(model="intent", texts=["c"]))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue_size=2" in caught.value.details()
        assert len((await waiting).results) == 2


async def test_deadline_passed_in_queue_is_deadline_exceeded(classifier) -> None:
    async with classifier(max_batch_size=64, max_queue_delay_ms=500) as app, stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            # two texts: a lone text on an idle server runs at once, without waiting for batch-mates
            await stub.Classify(pb.ClassifyRequest(model="intent", texts=["late", "later"]), timeout=0.1)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.05)
        assert sum(queue_depths(app).values()) == 0


def queue_depths(app: ClassifierApp) -> dict[str, int]:
    return {f"{name}/{version}": model.batcher.depth for name, version, model, _ in app.registry}


async def test_cancelled_call_leaves_the_server_healthy_and_its_queue_empty(classifier) -> None:
    async with classifier(max_batch_size=64, max_queue_delay_ms=300) as app, stub_for(app) as stub:
        call = stub.Classify(pb.ClassifyRequest(model="intent", texts=["a", "b", "c"]))
        await asyncio.sleep(0.1)
        assert queue_depths(app)["intent/2"] == sum(queue_depths(app).values()) == 3
        call.cancel()
        await asyncio.sleep(0.1)
        assert sum(queue_depths(app).values()) == 0
        assert (await stub.Classify(pb.ClassifyRequest(model="intent", texts=["after"]))).results


async def test_health_is_not_serving_until_models_are_loaded_and_warmed_up(model_repo: Path) -> None:
    from services.classifier.config import ClassifierConfig

    app = ClassifierApp(ClassifierConfig(host="127.0.0.1", port=0, metrics_port=0, models=str(model_repo)))
    await app.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "ecomserve.classifier.v1.ClassifierService"):
                response = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
            async with stub_for(app) as stub:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Classify(pb.ClassifyRequest(model="intent", texts=["x"]))
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            await app.load()
            await app.server.set_serving(True)
            for service in ("", "ecomserve.classifier.v1.ClassifierService"):
                response = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await app.server.drain(0.5)
        await app.close()


async def test_list_models_describes_every_version(classifier) -> None:
    async with classifier() as app, stub_for(app) as stub:
        listed = await stub.ListModels(pb.ListModelsRequest())
    found = {(m.name, m.version): m for m in listed.models}
    assert set(found) == {("intent", 1), ("intent", 2), ("sentiment", 1), ("embed", 1)}
    assert found[("intent", 2)].is_default and not found[("intent", 1)].is_default
    assert found[("intent", 2)].kind == pb.MODEL_KIND_CLASSIFICATION
    assert (found[("embed", 1)].kind, found[("embed", 1)].dimension) == (pb.MODEL_KIND_EMBEDDING, 32)
    assert found[("embed", 1)].normalized and not found[("embed", 1)].labels
    assert found[("intent", 2)].quantization == "int8-dynamic-per-channel"
    assert list(found[("sentiment", 1)].labels) == ["negative", "neutral", "positive"]
    assert found[("sentiment", 1)].max_sequence_length == 64


async def test_a_tampered_model_file_is_refused(tmp_path: Path, model_repo: Path) -> None:
    import shutil

    from services.core.errors import ModelFailure

    shutil.copytree(model_repo / "sentiment", tmp_path / "sentiment")
    with (tmp_path / "sentiment" / "1" / "model.onnx").open("ab") as stream:
        stream.write(b"\0")
    from services.classifier.config import ClassifierConfig

    app = ClassifierApp(ClassifierConfig(host="127.0.0.1", port=0, metrics_port=0, models=str(tmp_path)))
    with pytest.raises(ModelFailure, match="sha256"):
        await app.load()
    await app.close()


async def test_an_unloaded_version_frees_its_model_and_drops_its_series(model_repo: Path, tmp_path: Path) -> None:
    """Nothing keeps a version whose folder went: not its queue-depth gauge's callback, not a reference cycle that
    the collector would reach only some time later (or never, for what was frozen at start-up)."""
    repository = tmp_path / "models"
    for version in ("1", "2"):
        shutil.copytree(model_repo / "intent" / version, repository / "intent" / version)
    old_series = {"service": "classifier", "model": "intent", "version": "1"}
    async with (
        running_classifier(repository, model_names=("intent",), repository_poll_s=0.05) as app,
        stub_for(app) as stub,
    ):
        await stub.Classify(pb.ClassifyRequest(model="intent", version=1, texts=TEXTS[:1]))
        freed = weakref.ref(app.registry.get("intent", 1)[1])
        assert REGISTRY.get_sample_value("ecomserve_queue_depth", old_series) == 0
        shutil.rmtree(repository / "intent" / "1")
        for _ in range(600):  # until unloaded, at most 30 s
            if ("intent", 1) not in app.registry.loaded() | app.registry.states.keys():
                break
            await asyncio.sleep(0.05)
        assert freed() is None
        assert REGISTRY.get_sample_value("ecomserve_queue_depth", old_series) is None
        assert (await stub.Classify(pb.ClassifyRequest(model="intent", texts=TEXTS[:1]))).version == 2


async def test_max_versions_serves_the_newest_and_a_new_version_retires_the_oldest(
    model_repo: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    for version in ("1", "2"):
        shutil.copytree(model_repo / "intent" / version, repository / "intent" / version)
    async with (
        running_classifier(repository, model_names=("intent",), max_versions=1, repository_poll_s=0.05) as app,
        stub_for(app) as stub,
    ):
        listed = await stub.ListModels(pb.ListModelsRequest())
        assert [(m.name, m.version) for m in listed.models] == [("intent", 2)]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Classify(pb.ClassifyRequest(model="intent", version=1, texts=TEXTS[:1]))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        shutil.copytree(model_repo / "intent" / "1", repository / "intent" / "3")
        for _ in range(600):  # until v3 serves and v2 is gone, at most 30 s
            if app.registry.loaded() == {("intent", 3)} and not app.registry.states:
                break
            await asyncio.sleep(0.05)
        assert app.registry.loaded() == {("intent", 3)}
        assert (await stub.Classify(pb.ClassifyRequest(model="intent", texts=TEXTS[:1]))).version == 3
