"""Logs as an operator reads them: with --log-format json every service writes one JSON object per line, and each
call gets one access line at the gateway and one at the backend it reached, with the same request id and the
caller's trace id, the API key's name (never the key), the model and version, and the tokens of a generation.
No prompt text reaches the logs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e import http_client
from tests.e2e.conftest import API_KEY, GENERATOR_MODEL, Launcher, Process

pytestmark = pytest.mark.e2e

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
SECRET_TITLE = "Secret prototype sneaker 7f3a"


def records(process: Process) -> list[dict]:
    lines = process.log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]  # every line must be JSON


def access(process: Process, method: str, request_id: str) -> dict:
    """The access line of one call, waiting briefly for it (it is written as the call ends)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for record in records(process):
            if record["logger"] == "ecomserve.access" and record.get("request_id") == request_id:
                if record["method"] == method:
                    return record
        time.sleep(0.1)
    raise AssertionError(f"no access line of {method} {request_id} in {process.log}")


def test_json_logs_carry_request_and_trace_ids_and_one_access_line_per_call(
    launcher: Launcher, model_repo: Path, generator_repo: Path
) -> None:
    json_logs = ("--log-format", "json")
    classifier = launcher.start("services.classifier", "--models", str(model_repo), "--model-names", "intent",
                                *json_logs)  # fmt: skip
    generator = launcher.start("services.generator", "--models", str(generator_repo), "--model-names",
                               GENERATOR_MODEL, *json_logs)  # fmt: skip
    gateway = launcher.gateway([classifier], generator, *json_logs)
    for process in (classifier, generator, gateway):
        process.wait_serving()

    headers = {"x-request-id": "req-logs-1", "traceparent": TRACEPARENT}
    body = {"title": SECRET_TITLE, "maxWords": 10, "seed": "3"}
    reply = http_client.call(f"{gateway.http}/v1/describe-product", body, API_KEY, **headers)
    assert reply.status == 200, reply.body
    at_gateway = access(gateway, "DescribeProduct", "req-logs-1")
    assert at_gateway["code"] == "OK" and at_gateway["trace_id"] == TRACE_ID and at_gateway["api_key"] == "tests"
    assert at_gateway["tokens_out"] == reply.body["usage"]["completionTokens"] > 0
    assert at_gateway["tokens_in"] == reply.body["usage"]["promptTokens"] > 0
    assert at_gateway["service"] == "gateway" and at_gateway["latency_ms"] > 0
    at_generator = access(generator, "Generate", "req-logs-1")
    assert at_generator["trace_id"] == TRACE_ID and at_generator["service"] == "generator"
    assert (at_generator["model"], at_generator["version"]) == (GENERATOR_MODEL, 1)
    assert at_generator["tokens_out"] == at_gateway["tokens_out"]

    routed = http_client.call(f"{gateway.http}/v1/route-message", {"message": "refund please"}, API_KEY,
                              **{"x-request-id": "req-logs-2"})  # fmt: skip
    assert routed.status == 200
    at_classifier = access(classifier, "Classify", "req-logs-2")
    assert (at_classifier["model"], at_classifier["version"]) == ("intent", 2) and "trace_id" not in at_classifier

    refused = http_client.call(f"{gateway.http}/v1/route-message", {"message": "hi"}, "not-a-key-0123456789",
                               **{"x-request-id": "req-logs-3"})  # fmt: skip
    assert refused.status == 401
    assert access(gateway, "RouteMessage", "req-logs-3")["code"] == "UNAUTHENTICATED"

    for process in (classifier, generator, gateway):
        text = process.log.read_text()
        assert API_KEY not in text and "not-a-key-0123456789" not in text, f"a key in {process.log}"
        assert SECRET_TITLE not in text, f"prompt text in {process.log}"
        assert {"timestamp", "level", "service", "message"} <= set(records(process)[0])
