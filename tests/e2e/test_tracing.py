"""Tracing end to end: with OTEL_EXPORTER_OTLP_ENDPOINT set, a gateway HTTP request that carries a W3C traceparent
becomes one trace, under the caller's trace id, from the gateway's span through the backend call to the
classifier's queue, batch and onnxruntime spans (and the generator's queue, prefill and decode), sent over OTLP to
a real receiver. The access lines carry the same trace id."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.dev.otlp_receiver import ReceivedSpan, otlp_receiver
from tests.e2e import http_client
from tests.e2e.conftest import API_KEY, Launcher

pytestmark = pytest.mark.e2e

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


def eventually(spans: Callable[[], list[ReceivedSpan]], names: set[str], timeout_s: float = 30) -> list[ReceivedSpan]:
    deadline = time.monotonic() + timeout_s
    while not names <= {span.span.name for span in spans()}:
        assert time.monotonic() < deadline, f"missing spans {names - {s.span.name for s in spans()}}"
        time.sleep(0.2)
    return spans()


def test_one_trace_from_the_gateway_through_the_classifiers_batch(
    launcher: Launcher, model_repo: Path, generator_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with otlp_receiver() as (receiver, endpoint):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)  # the children inherit it
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        classifier = launcher.classifier(model_repo)
        generator = launcher.generator(generator_repo)
        gateway = launcher.gateway([classifier], generator, "--log-format", "json")
        for process in (classifier, generator, gateway):
            process.wait_serving()

        unsampled = "5bd66ef5095369c7b0d1f8f4bd33716a"  # the caller did not sample it: neither do the services
        headers = {"traceparent": f"00-{unsampled}-{CALLER_SPAN}-00"}
        reply = http_client.call(f"{gateway.http}/v1/route-message", {"message": "refund"}, API_KEY, **headers)
        assert reply.status == 200, reply.body
        headers = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01", "x-request-id": "traced-1"}
        reply = http_client.call(f"{gateway.http}/v1/route-message", {"message": "where is my order"}, API_KEY,
                                 **headers)  # fmt: skip
        assert reply.status == 200, reply.body
        classify = "/ecomserve.classifier.v1.ClassifierService/Classify"
        spans = eventually(
            lambda: receiver.spans(TRACE_ID),
            {"RouteMessage", classify, "classifier.queue", "classifier.batch", "onnxruntime.run"},
        )
        by_name = {(s.service, s.span.name, s.span.kind): s for s in spans}
        http = by_name[("ecomserve-gateway", "RouteMessage", 2)]  # SERVER
        assert http.span.parent_span_id.hex() == CALLER_SPAN
        client = by_name[("ecomserve-gateway", classify, 3)]  # CLIENT
        server = by_name[("ecomserve-classifier", classify, 2)]
        batch = next(s for s in spans if s.span.name == "classifier.batch")
        run = next(s for s in spans if s.span.name == "onnxruntime.run")
        assert client.span.parent_span_id == http.span.span_id
        assert server.span.parent_span_id == client.span.span_id
        assert server.attributes["rpc.service"] == "ecomserve.classifier.v1.ClassifierService"
        assert server.attributes["rpc.method"] == "Classify" and server.attributes["rpc.grpc.status_code"] == 0
        assert batch.service == "ecomserve-classifier" and batch.span.parent_span_id == server.span.span_id
        assert batch.attributes["batch.size"] >= 1 and run.span.parent_span_id == batch.span.span_id
        assert 0 < run.attributes["run.padding_efficiency"] <= 1
        assert receiver.spans(unsampled) == []  # it was answered before the sampled call, whose spans all came

        draft = {"message": "where is my order", "maxWords": 10, "seed": "2"}
        other = "1af7651916cd43dd8448eb211c80319c"
        reply = http_client.stream(
            f"{gateway.http}/v1/draft-reply", draft, API_KEY, traceparent=f"00-{other}-{CALLER_SPAN}-01"
        )
        assert reply.status == 200
        spans = eventually(lambda: receiver.spans(other), {"generator.queue", "generator.prefill", "generator.decode"})
        decode = next(s for s in spans if s.span.name == "generator.decode")
        assert decode.service == "ecomserve-generator" and decode.attributes["completion_tokens"] > 0
        assert decode.attributes["stop_reason"] in ("length", "end_of_text", "stop_sequence")

    access = [json.loads(line) for line in gateway.log.read_text().splitlines() if '"ecomserve.access"' in line]
    assert any(line.get("trace_id") == TRACE_ID for line in access)
