"""Triton's generate extension on the gateway's HTTP port, in front of a real generator on a tiny model: the answer
is the generator's, the stream says the same text piece by piece, and bad requests get 400 naming the field."""

from __future__ import annotations

import grpc
import pytest
from ecomserve.generator.v1 import generator_pb2, generator_pb2_grpc

from tests.e2e import http_client
from tests.e2e.conftest import API_KEY, GENERATOR_MODEL, Stack

pytestmark = pytest.mark.e2e

PROMPT = "Where is my order?"


def test_generate_is_the_generators_answer_and_generate_stream_says_the_same(stack: Stack) -> None:
    with grpc.insecure_channel(stack.generator.address) as channel:
        alone = generator_pb2_grpc.GeneratorServiceStub(channel).Generate(
            generator_pb2.GenerateRequest(
                model=GENERATOR_MODEL,
                prompt=PROMPT,
                sampling=generator_pb2.SamplingParameters(
                    max_new_tokens=12, temperature=0.0, seed=7, stop=["zzz"], repetition_penalty=1.5
                ),
            ),
            timeout=60,
        )
    url = f"{stack.gateway.http}/v2/models/{GENERATOR_MODEL}"
    parameters = {"temperature": 0.0, "seed": 7, "stop": "zzz", "repetition_penalty": 1.5}
    body = {"text_input": PROMPT, "max_tokens": 12, "parameters": parameters}

    answer = http_client.call(f"{url}/generate", body, API_KEY)
    assert answer.status == 200, answer.body
    assert answer.body == {"model_name": GENERATOR_MODEL, "model_version": "1", "text_output": alone.text}
    assert answer.headers.get("x-request-id")

    streamed = http_client.stream(f"{url}/versions/1/generate_stream", body, API_KEY, sse=True)
    assert streamed.status == 200, streamed.body
    assert "".join(event["text_output"] for event in streamed.body) == alone.text
    assert {event["model_name"] for event in streamed.body} == {GENERATOR_MODEL}
    assert streamed.body[-1]["model_version"] == "1"


def test_bad_generate_requests_are_refused_naming_the_field(stack: Stack) -> None:
    url = f"{stack.gateway.http}/v2/models/{GENERATOR_MODEL}/generate"
    refused = [
        ({"text_input": PROMPT, "max_tokens": 0}, 400, "max_tokens"),
        ({"text_input": PROMPT, "parameters": {"beam_width": 4}}, 400, "beam_width"),
        ({"text_input": PROMPT, "parameters": {"repetition_penalty": 0}}, 400, "repetition_penalty"),
        ({"text_input": PROMPT, "stream": True}, 400, "generate_stream"),
        ({"max_tokens": 4}, 400, "text_input"),
        ({"text_input": PROMPT, "parameters": [1]}, 400, "parameters"),
    ]
    for body, status, named in refused:
        answer = http_client.call(url, body, API_KEY)
        assert answer.status == status and named in answer.body["error"], (body, answer.body)
    unknown = http_client.call(f"{stack.gateway.http}/v2/models/nope/generate", {"text_input": PROMPT}, API_KEY)
    assert unknown.status == 404 and "nope" in unknown.body["error"]
    assert http_client.call(url, {"text_input": PROMPT}).status == 401  # the gateway's API keys apply
    assert http_client.call(url, {"text_input": PROMPT, "max_tokens": 2}, API_KEY).status == 200  # still serving
