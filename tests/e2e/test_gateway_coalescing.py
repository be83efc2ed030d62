"""RouteMessage calls that arrive together share Classify calls to the classifier; each caller still gets the
classification of its own message, and its own deadline."""

from __future__ import annotations

import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.dev.launcher import free_port
from tests.e2e.conftest import API_KEY, Launcher
from tests.fixtures import WORDS

pytestmark = pytest.mark.e2e

CALLERS = 24
ROUNDS = 5


def messages(count: int) -> list[str]:
    """Distinct messages of varied length, so that a mixed-up answer shows."""
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(3 + i % 9)) for i in range(count)]


def samples(port: int, name: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(name)
    }


def coalesced(port: int) -> tuple[float, float]:
    """The gateway's count of messages sent in Classify calls, and of those calls."""
    values = samples(port, "ecomserve_backend_coalesced_texts")
    return values.get("ecomserve_backend_coalesced_texts_sum", 0.0), values.get(
        "ecomserve_backend_coalesced_texts_count", 0.0
    )


def route_together(address: str, texts: list[str], timeouts: list[float]) -> list[object]:
    """RouteMessage for every text at once (one thread per caller, on a connected channel, all released together: on
    a busy machine threads that start one by one may each be answered before the next calls); each result is the
    response or the error."""
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        all_ready = threading.Barrier(len(texts))

        def route(index: int) -> object:
            request = gateway_pb2.RouteMessageRequest(message=texts[index])
            metadata = (("x-api-key", API_KEY), ("x-request-id", f"caller-{index}"))
            all_ready.wait(timeout=30)
            try:
                return stub.RouteMessage(request, metadata=metadata, timeout=timeouts[index])
            except grpc.RpcError as error:
                return error

        with ThreadPoolExecutor(len(texts)) as pool:
            return list(pool.map(route, range(len(texts))))


def test_concurrent_messages_share_calls_and_each_gets_its_own_answer(launcher: Launcher, model_repo: Path) -> None:
    metrics_port = free_port()
    classifier = launcher.classifier(model_repo)
    gateway = launcher.gateway([classifier], None, "--route-max-calls", "1", "--metrics-port", str(metrics_port))
    classifier.wait_serving()
    gateway.wait_serving()
    texts = messages(CALLERS)
    with grpc.insecure_channel(classifier.address) as channel:
        classify = classifier_pb2_grpc.ClassifierServiceStub(channel).Classify
        expected = [
            classify(classifier_pb2.ClassifyRequest(model="intent", texts=[text], top_k=3), timeout=30).results[0]
            for text in texts
        ]

    # On a busy machine the classifier may answer each message before the gateway takes the next, so that nothing
    # is shared in one round (1 run in 4 beside two busy processes): the rounds repeat until some call is shared.
    for _ in range(ROUNDS):
        texts_before, calls_before = coalesced(metrics_port)
        routed = route_together(gateway.address, texts, [30.0] * CALLERS)
        for response, alone in zip(routed, expected, strict=True):
            assert isinstance(response, gateway_pb2.RouteMessageResponse), response
            assert [i.label for i in response.intents] == [label.label for label in alone.labels]
            assert [i.score for i in response.intents] == pytest.approx(
                [label.score for label in alone.labels], abs=1e-5
            )
        texts_after, calls_after = coalesced(metrics_port)
        assert texts_after - texts_before == CALLERS
        calls = calls_after - calls_before
        if calls < CALLERS:  # some calls carried several messages
            return
    pytest.fail(f"in {ROUNDS} rounds of {CALLERS} messages at once, every Classify call carried one message")


def test_a_short_deadline_does_not_cut_the_call_it_shares(launcher: Launcher, model_repo: Path) -> None:
    """Callers whose deadline passes get DEADLINE_EXCEEDED; the others in the same Classify calls are answered."""
    classifier = launcher.classifier(model_repo)
    gateway = launcher.gateway([classifier], None, "--route-max-calls", "1", "--deadline-margin-ms", "1")
    classifier.wait_serving()
    gateway.wait_serving()
    timeouts = [0.003 if index % 3 == 0 else 30.0 for index in range(CALLERS)]

    routed = route_together(gateway.address, messages(CALLERS), timeouts)

    for response, timeout in zip(routed, timeouts, strict=True):
        if timeout == 30.0:
            assert isinstance(response, gateway_pb2.RouteMessageResponse), response
        elif isinstance(response, grpc.RpcError):
            assert response.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_classifier_that_allows_fewer_texts_per_request_still_answers_every_message(
    launcher: Launcher, model_repo: Path
) -> None:
    classifier = launcher.start(
        "services.classifier", "--models", str(model_repo), "--model-names", "intent", "--max-texts-per-request", "2"
    )
    gateway = launcher.gateway([classifier], None, "--route-max-calls", "1")
    classifier.wait_serving()
    gateway.wait_serving()

    routed = route_together(gateway.address, messages(CALLERS), [30.0] * CALLERS)

    assert all(isinstance(response, gateway_pb2.RouteMessageResponse) for response in routed), routed
    assert "sending them one by one" in gateway.log.read_text()
