"""Model versions change under running services: a version copied into the classifier's repository takes over
while 32 callers keep calling (every call succeeds), a removed version is unloaded, and a broken one is shown
FAILED, counted, and never served until its files are fixed; the generator swaps a version for another in one move
on SIGHUP with no gap, and a stream under way on the old version finishes on it."""

from __future__ import annotations

import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from ecomserve.classifier.v1 import classifier_pb2 as pb
from ecomserve.classifier.v1 import classifier_pb2_grpc
from ecomserve.generator.v1 import generator_pb2 as gen
from ecomserve.generator.v1 import generator_pb2_grpc

from services.dev.launcher import free_port
from tests.e2e.conftest import GENERATOR_MODEL, Launcher, Process, metric_value, wait_until

pytestmark = pytest.mark.e2e

CALLERS = 32
POLL_S = "0.3"
RELOAD_S = 60.0  # time for a version to be noticed, loaded and warmed up on a busy machine


@dataclass
class Serving:
    repository: Path
    classifier: Process
    metrics_port: int


def serving_v1_only(launcher: Launcher, model_repo: Path, tmp_path: Path) -> Serving:
    """A classifier on a repository of its own that holds intent v1 only, looking at it every POLL_S."""
    repository = tmp_path / "models"
    shutil.copytree(model_repo / "intent" / "1", repository / "intent" / "1")
    metrics_port = free_port()
    classifier = launcher.start(
        "services.classifier", "--models", str(repository), "--model-names", "intent",
        "--repository-poll-s", POLL_S, "--metrics-port", str(metrics_port),
    ).wait_serving()  # fmt: skip
    return Serving(repository, classifier, metrics_port)


def listed(stub: classifier_pb2_grpc.ClassifierServiceStub) -> dict[int, pb.ModelInfo]:
    return {model.version: model for model in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}


def test_a_new_version_takes_over_under_load_and_a_removed_one_is_unloaded(
    launcher: Launcher, model_repo: Path, tmp_path: Path
) -> None:
    serving = serving_v1_only(launcher, model_repo, tmp_path)
    repository, classifier, metrics_port = serving.repository, serving.classifier, serving.metrics_port
    answered: list[list[int]] = [[] for _ in range(CALLERS)]  # versions that answered, per caller
    failures: list[str] = []
    stop = threading.Event()

    def caller(index: int) -> None:
        with grpc.insecure_channel(classifier.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            while not stop.is_set():
                try:
                    reply = stub.Classify(pb.ClassifyRequest(model="intent", texts=["where is my order"]), timeout=30)
                    answered[index].append(reply.version)
                except grpc.RpcError as error:
                    failures.append(f"{error.code().name}: {error.details()}")

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    with grpc.insecure_channel(classifier.address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        try:
            wait_until(lambda: all(answered), "every caller got an answer from v1", RELOAD_S)
            shutil.copytree(model_repo / "intent" / "2", repository / "intent" / "2")
            wait_until(lambda: all(versions[-1] == 2 for versions in answered), "answers switched to v2", RELOAD_S)
            assert listed(stub)[2].is_default and listed(stub)[2].status == pb.MODEL_STATUS_READY

            shutil.rmtree(repository / "intent" / "1")
            wait_until(lambda: 1 not in listed(stub), "v1 was unloaded", RELOAD_S)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert not failures, failures[:5]
    assert all(versions[0] == 1 and versions[-1] == 2 for versions in answered)
    assert all(versions == sorted(versions) for versions in answered), "an answer went back to v1"
    assert metric_value(metrics_port, "ecomserve_model_ready", model="intent", version="1") == 0
    assert metric_value(metrics_port, "ecomserve_model_ready", model="intent", version="2") == 1


def test_a_broken_new_version_never_replaces_a_working_one(
    launcher: Launcher, model_repo: Path, tmp_path: Path
) -> None:
    serving = serving_v1_only(launcher, model_repo, tmp_path)
    repository, classifier, metrics_port = serving.repository, serving.classifier, serving.metrics_port
    broken = repository / "intent" / "3"
    shutil.copytree(model_repo / "intent" / "2", broken)
    with (broken / "model.onnx").open("ab") as model_file:
        model_file.write(b"not the exported bytes")
    with grpc.insecure_channel(classifier.address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        wait_until(lambda: 3 in listed(stub), "the broken version is listed", RELOAD_S)
        shown = listed(stub)[3]
        assert shown.status == pb.MODEL_STATUS_FAILED and "sha256" in shown.status_message and not shown.is_default
        assert listed(stub)[1].is_default
        reply = stub.Classify(pb.ClassifyRequest(model="intent", texts=["refund please"]), timeout=30)
        assert reply.version == 1
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(pb.ClassifyRequest(model="intent", version=3, texts=["refund please"]), timeout=30)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert metric_value(metrics_port, "ecomserve_model_load_failures_total", model="intent", version="3") == 1

        shutil.copyfile(model_repo / "intent" / "2" / "model.onnx", broken / "model.onnx")  # fixed: tried again
        wait_until(lambda: listed(stub)[3].status == pb.MODEL_STATUS_READY, "the fixed version is served", RELOAD_S)
        assert stub.Classify(pb.ClassifyRequest(model="intent", texts=["refund please"]), timeout=30).version == 3
        assert metric_value(metrics_port, "ecomserve_model_load_failures_total", model="intent", version="3") == 1


def test_the_generator_swaps_a_version_on_sighup_with_no_gap_and_finishes_streams_on_the_old_one(
    launcher: Launcher, generator_repo: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    shutil.copytree(generator_repo / GENERATOR_MODEL / "1", repository / GENERATOR_MODEL / "1")
    generator = launcher.start(
        "services.generator",
        "--models",
        str(repository),
        "--repository-poll-s",
        "0",  # looks on SIGHUP only
    ).wait_serving()
    request = gen.GenerateRequest(
        model=GENERATOR_MODEL,
        prompt="Where is my order?",
        sampling=gen.SamplingParameters(max_new_tokens=24, temperature=0.0, seed=7),
    )
    answered: list[int] = []
    failures: list[str] = []
    stop = threading.Event()
    with grpc.insecure_channel(generator.address) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)

        def caller() -> None:
            while not stop.is_set():
                try:
                    answered.append(stub.Generate(request, timeout=60).version)
                except grpc.RpcError as error:
                    failures.append(f"{error.code().name}: {error.details()}")

        def versions() -> set[int]:
            return {model.version for model in stub.ListModels(gen.ListModelsRequest(), timeout=10).models}

        stream = stub.GenerateStream(request, timeout=120)
        first = next(stream)  # under way on v1
        thread = threading.Thread(target=caller)
        thread.start()
        try:
            wait_until(lambda: bool(answered), "v1 answered", RELOAD_S)
            # One move: the old folder goes and the new one comes before the service looks.
            shutil.rmtree(repository / GENERATOR_MODEL / "1")
            shutil.copytree(generator_repo / GENERATOR_MODEL / "1", repository / GENERATOR_MODEL / "2")
            generator.child.send_signal(signal.SIGHUP)
            wait_until(lambda: answered[-1] == 2, "answers switched to v2", RELOAD_S)
            wait_until(lambda: versions() == {2}, "v1 was unloaded", RELOAD_S)
        finally:
            stop.set()
            thread.join()
        rest = list(stream)
        again = stub.Generate(request, timeout=60)
    assert not failures, failures[:5]  # no NOT_FOUND while v2 loaded: v1 served until then
    assert answered[0] == 1 and answered == sorted(answered)
    assert rest[-1].version == 1 and rest[-1].finish_reason != gen.FINISH_REASON_UNSPECIFIED
    # v2 holds the same weights: the stream that finished on v1 and a greedy call on v2 say the same.
    assert again.version == 2 and first.text + "".join(message.text for message in rest) == again.text
