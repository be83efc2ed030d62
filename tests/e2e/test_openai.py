"""The OpenAI-compatible API, driven by the `openai` SDK (sync and async, streaming and not) against the gateway in
front of a real generator on a tiny model; errors arrive as the SDK's typed exceptions."""

from __future__ import annotations

from pathlib import Path

import grpc
import openai
import pytest
from ecomserve.generator.v1 import generator_pb2, generator_pb2_grpc

from services.dev.launcher import free_port
from tests.e2e import http_client
from tests.e2e.conftest import (
    API_KEY,
    GENERATOR_MODEL,
    Launcher,
    Stack,
    cancelled_sequences,
    finished_sequences,
    wait_until,
)

pytestmark = pytest.mark.e2e

MESSAGES = [
    {"role": "system", "content": "You write short replies."},
    {"role": "user", "content": [{"type": "text", "text": "Where is my order?"}]},
]
SAMPLING = {"max_tokens": 12, "temperature": 0.0, "seed": 7}
ATTEMPTS = 5  # of a disconnect mid-generation


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway.http}/v1", api_key=API_KEY, max_retries=0)


def direct(stack: Stack, **sampling: float) -> generator_pb2.GenerateResponse:
    """The gRPC twin of MESSAGES with SAMPLING (and `sampling`), straight to the generator."""
    request = generator_pb2.GenerateRequest(
        model=GENERATOR_MODEL,
        messages=[
            generator_pb2.ChatMessage(role="system", content="You write short replies."),
            generator_pb2.ChatMessage(role="user", content="Where is my order?"),
        ],
        sampling=generator_pb2.SamplingParameters(max_new_tokens=12, temperature=0.0, seed=7, **sampling),
    )
    with grpc.insecure_channel(stack.generator.address) as channel:
        return generator_pb2_grpc.GeneratorServiceStub(channel).Generate(request, timeout=60)


def test_models_lists_what_the_generators_serve(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [GENERATOR_MODEL]
    assert client.models.retrieve(GENERATOR_MODEL).owned_by == "ecomserve"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_completion_is_the_generators_answer_and_streams_the_same_text(stack: Stack, client) -> None:
    completion = client.chat.completions.create(model=GENERATOR_MODEL, messages=MESSAGES, **SAMPLING)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    alone = direct(stack)
    assert choice.message.content == alone.text
    assert completion.usage.completion_tokens == alone.usage.completion_tokens
    assert completion.usage.total_tokens == alone.usage.prompt_tokens + alone.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model=GENERATOR_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **SAMPLING
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == alone.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        choice.finish_reason
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == alone.usage.completion_tokens
    # The same messages again: their prompt came from the generator's prefix cache, all but its last token or so.
    cached = chunks[-1].usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < chunks[-1].usage.prompt_tokens


def test_the_repetition_penalty_of_vllm_and_llama_cpp_clients_is_honoured(stack: Stack, client) -> None:
    penalised = direct(stack, repetition_penalty=3.0)
    plain = client.chat.completions.create(model=GENERATOR_MODEL, messages=MESSAGES, **SAMPLING)
    assert plain.choices[0].message.content != penalised.text, "the penalty must change this answer"
    for name in ("repetition_penalty", "repeat_penalty"):
        completion = client.chat.completions.create(
            model=GENERATOR_MODEL, messages=MESSAGES, extra_body={name: 3.0}, **SAMPLING
        )
        assert completion.choices[0].message.content == penalised.text, name
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=GENERATOR_MODEL, messages=MESSAGES, extra_body={"repetition_penalty": 0}, **SAMPLING
        )
    assert refused.value.param == "repetition_penalty"


def test_completions_with_a_prompt(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=GENERATOR_MODEL, prompt="Product: wool socks.", **SAMPLING)
    assert completion.object == "text_completion" and completion.choices[0].text
    streamed = client.completions.create(model=GENERATOR_MODEL, prompt="Product: wool socks.", stream=True, **SAMPLING)
    assert "".join(chunk.choices[0].text for chunk in streamed) == completion.choices[0].text


async def test_the_async_client_streams(stack: Stack) -> None:
    client = openai.AsyncOpenAI(base_url=f"{stack.gateway.http}/v1", api_key=API_KEY, max_retries=0)
    stream = await client.chat.completions.create(model=GENERATOR_MODEL, messages=MESSAGES, stream=True, **SAMPLING)
    texts = [chunk.choices[0].delta.content or "" async for chunk in stream]
    assert "".join(texts)
    await client.close()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_fields_that_cannot_be_honoured_are_refused_by_name(client: openai.OpenAI, fields: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=GENERATOR_MODEL, messages=MESSAGES, **fields)
    assert refused.value.param == param and param in refused.value.message


def test_errors_arrive_as_the_sdks_exceptions(stack: Stack, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):  # the generator's own validation, in OpenAI's envelope
        client.chat.completions.create(model=GENERATOR_MODEL, messages=MESSAGES, temperature=-1)
    unknown = openai.OpenAI(base_url=f"{stack.gateway.http}/v1", api_key="not-a-key-0123456789", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        unknown.chat.completions.create(model=GENERATOR_MODEL, messages=MESSAGES)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model=GENERATOR_MODEL, input="hello")
    reply = http_client.call(f"{stack.gateway.http}/v1/chat/completions", ["not", "an", "object"], API_KEY)
    assert reply.status == 400 and reply.body["error"]["type"] == "invalid_request_error"


def test_a_client_that_disconnects_mid_stream_stops_its_generation(
    launcher: Launcher, model_repo: Path, generator_repo: Path
) -> None:
    metrics_port = free_port()
    classifier = launcher.classifier(model_repo)
    generator = launcher.start(
        "services.generator", "--models", str(generator_repo), "--model-names", GENERATOR_MODEL,
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    gateway = launcher.gateway([classifier], generator)
    for process in (classifier, generator, gateway):
        process.wait_serving()
    client = openai.OpenAI(base_url=f"{gateway.http}/v1", api_key=API_KEY, max_retries=0)
    # The tiny model writes its whole answer in a few hundred ms at most: on a busy machine the client may take
    # longer than that to close after the first chunk, and an attempt whose generation had already ended shows
    # nothing. So attempts are repeated until one ended while generating; it must have ended cancelled.
    for _ in range(ATTEMPTS):
        ended_before = finished_sequences(metrics_port)
        stream = client.chat.completions.create(
            model=GENERATOR_MODEL, messages=MESSAGES, stream=True, max_tokens=500, temperature=0.0
        )
        next(iter(stream))
        stream.close()  # the connection goes away mid-generation
        wait_until(lambda before=ended_before: finished_sequences(metrics_port) > before, "it never ended", 10)
        if cancelled_sequences(metrics_port) == 1:
            return
    pytest.fail(f"in {ATTEMPTS} attempts, no generation ended cancelled when its client left: they ran to the end")
