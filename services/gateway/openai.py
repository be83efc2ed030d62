"""The OpenAI-compatible API in front of the generator and the embedding models: requests in OpenAI's shapes become
GenerateRequests and EmbedTextsRequests, answers and errors go back in OpenAI's shapes, so that the `openai` SDK and
the tools built on it work unchanged.

Pure translation, no transport: the gateway's HTTP bridge reads the bodies, admits the callers and calls the
generator. Fields that cannot be honoured (n > 1, logprobs, tools, penalties, other response formats) are refused
with 400 naming the field, never silently ignored.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from ecomserve.gateway.v1 import gateway_pb2
from ecomserve.generator.v1 import generator_pb2

from services.core import errors
from services.core.status import INTERNAL_MESSAGE

FINISH_REASONS = {
    generator_pb2.FINISH_REASON_LENGTH: "length",
    generator_pb2.FINISH_REASON_STOP_SEQUENCE: "stop",
    generator_pb2.FINISH_REASON_END_OF_TEXT: "stop",
}
ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 4
ERROR_TYPES = {
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_request_error", None),
    grpc.StatusCode.UNAUTHENTICATED: ("invalid_request_error", "invalid_api_key"),
    grpc.StatusCode.NOT_FOUND: ("invalid_request_error", "model_not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("rate_limit_exceeded", "rate_limit_exceeded"),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("timeout", "timeout"),
    grpc.StatusCode.UNAVAILABLE: ("server_error", "service_unavailable"),
}


class Unsupported(errors.InvalidArgument):
    """A field this server cannot honour (or does not know); `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Generation:
    """An OpenAI request, translated: what to ask the generator, and how to answer."""

    request: generator_pb2.GenerateRequest
    stream: bool
    include_usage: bool


def _refuse_if(condition: bool, param: str, why: str) -> None:
    if condition:
        raise Unsupported(param, f"{param}: {why}")


# Fields of OpenAI requests that this server cannot honour, checked when present (null counts as absent).
_CHECKS: dict[str, Callable[[Any], None]] = {
    "n": lambda v: _refuse_if(v != 1, "n", "only n=1 is supported (one choice per request)"),
    "logprobs": lambda v: _refuse_if(v not in (False, 0), "logprobs", "log probabilities are not supported"),
    "top_logprobs": lambda v: _refuse_if(v != 0, "top_logprobs", "log probabilities are not supported"),
    "frequency_penalty": lambda v: _refuse_if(v != 0, "frequency_penalty", "only 0 is supported"),
    "presence_penalty": lambda v: _refuse_if(v != 0, "presence_penalty", "only 0 is supported"),
    "logit_bias": lambda v: _refuse_if(bool(v), "logit_bias", "is not supported"),
    "tools": lambda v: _refuse_if(bool(v), "tools", "tool calls are not supported"),
    "tool_choice": lambda v: _refuse_if(v != "none", "tool_choice", "tool calls are not supported"),
    "functions": lambda v: _refuse_if(bool(v), "functions", "function calls are not supported"),
    "function_call": lambda v: _refuse_if(v != "none", "function_call", "function calls are not supported"),
    "response_format": lambda v: _refuse_if(
        not isinstance(v, dict) or v.get("type") != "text", "response_format", 'only {"type": "text"}'
    ),
    "best_of": lambda v: _refuse_if(v != 1, "best_of", "only best_of=1 is supported"),
    "echo": lambda v: _refuse_if(bool(v), "echo", "echoing the prompt is not supported"),
    "suffix": lambda v: _refuse_if(bool(v), "suffix", "is not supported"),
}
# Fields read by the translation below, and fields that change nothing here (`user` identifies the end user).
SAMPLING_FIELDS = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop")
# Not OpenAI's, but what vLLM and TGI (repetition_penalty) and llama.cpp (repeat_penalty) clients send; 1 is off.
REPETITION_PENALTY_FIELDS = ("repetition_penalty", "repeat_penalty")
_READ = {"model", "stream", "stream_options", "user", *SAMPLING_FIELDS, *REPETITION_PENALTY_FIELDS}


def chat_generation(body: Any) -> Generation:
    """A /v1/chat/completions body as a Generation; InvalidArgument (or Unsupported) naming the field."""
    fields = _fields(body, {"messages"})
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Unsupported("messages", "messages must be a non-empty list of {role, content}")
    chat = [_chat_message(index, message) for index, message in enumerate(messages)]
    request = generator_pb2.GenerateRequest(model=_model(fields), messages=chat, sampling=sampling_parameters(fields))
    return Generation(request, *_streaming(fields))


def completion_generation(body: Any) -> Generation:
    """A /v1/completions body as a Generation."""
    fields = _fields(body, {"prompt"})
    prompt = fields.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise Unsupported("prompt", "prompt must be a non-empty string (one prompt per request)")
    request = generator_pb2.GenerateRequest(model=_model(fields), prompt=prompt, sampling=sampling_parameters(fields))
    return Generation(request, *_streaming(fields))


ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class Embeddings:
    """A /v1/embeddings request, translated: what to ask the embedding model, and how to encode the vectors."""

    request: gateway_pb2.EmbedTextsRequest
    encoding: str


def embeddings_request(body: Any) -> Embeddings:
    """A /v1/embeddings body: `input` is one string or a list of strings (token arrays are refused); vectors come
    back unit length, as OpenAI's do; an input over the model's length limit is refused, not cut."""
    fields = _fields(body, {"input", "encoding_format", "dimensions"})
    texts = fields.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise Unsupported(
            "input", "input must be a non-empty string or list of strings (token arrays are not supported)"
        )
    encoding = fields.get("encoding_format", "float")
    _refuse_if(encoding not in ENCODINGS, "encoding_format", f"use one of {', '.join(ENCODINGS)}")
    _refuse_if("dimensions" in fields, "dimensions", "the models' own dimension only (GET /v1/models lists them)")
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise Unsupported("model", "model is required: an embedding model id, e.g. minilm-embed")
    return Embeddings(gateway_pb2.EmbedTextsRequest(model=model, texts=texts, normalize=True), encoding)


def embeddings_answer(response: gateway_pb2.EmbedTextsResponse, encoding: str) -> dict[str, Any]:
    tokens = sum(embedding.token_count for embedding in response.embeddings)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": _vector(embedding.values, encoding)}
            for index, embedding in enumerate(response.embeddings)
        ],
        "model": response.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _vector(values: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()
    return list(values)


def _fields(body: Any, own: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Unsupported("body", "the request body must be a JSON object")
    fields = {key: value for key, value in body.items() if value is not None}
    for key, value in fields.items():
        if key in _CHECKS:
            _CHECKS[key](value)
        elif key not in _READ and key not in own:
            raise Unsupported(key, f"{key}: unknown or unsupported field")
    return fields


def _model(fields: Mapping[str, Any]) -> str:
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise Unsupported("model", "model is required: a generator model id from GET /v1/models")
    return model


def _chat_message(index: int, message: Any) -> generator_pb2.ChatMessage:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise Unsupported(f"{param}.role", f"{param}.role must be one of {', '.join(ROLES)}")
    content = message.get("content")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise Unsupported(f"{param}.content", f"{param}.content: only parts of type text are supported")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise Unsupported(f"{param}.content", f"{param}.content must be a string or a list of text parts")
    return generator_pb2.ChatMessage(role=message["role"], content=content)


def sampling_parameters(fields: Mapping[str, Any]) -> generator_pb2.SamplingParameters:
    """The sampling fields OpenAI's requests (and Triton's generate extension) share, checked: max_tokens
    (or max_completion_tokens), temperature, top_p, seed, stop, and the repetition penalty under either name."""
    sampling = generator_pb2.SamplingParameters()
    max_tokens = fields.get("max_completion_tokens", fields.get("max_tokens"))
    if max_tokens is not None:
        _refuse_if(not _is_int(max_tokens) or max_tokens < 1, "max_tokens", "must be an integer >= 1")
        sampling.max_new_tokens = max_tokens
    for name in ("temperature", "top_p"):
        if name in fields:
            _refuse_if(not _is_number(fields[name]), name, "must be a number")
            setattr(sampling, name, fields[name])
    for name in REPETITION_PENALTY_FIELDS:
        if name in fields:
            _refuse_if(not _is_number(fields[name]) or fields[name] <= 0, name, "must be a number > 0 (1 = off)")
            sampling.repetition_penalty = fields[name]
            break
    if "seed" in fields:
        _refuse_if(not _is_int(fields["seed"]), "seed", "must be an integer")
        sampling.seed = fields["seed"] % 2**64
    stop = fields.get("stop", [])
    stops = [stop] if isinstance(stop, str) else stop
    _refuse_if(
        not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) for s in stops),
        "stop",
        f"must be a string or a list of at most {MAX_STOP_SEQUENCES} strings",
    )
    sampling.stop.extend(stops)
    return sampling


def _streaming(fields: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = fields.get("stream", False)
    _refuse_if(not isinstance(stream, bool), "stream", "must be true or false")
    options = fields.get("stream_options", {})
    _refuse_if(not isinstance(options, dict), "stream_options", "must be an object")
    include_usage = options.get("include_usage", False)
    _refuse_if(not isinstance(include_usage, bool), "stream_options.include_usage", "must be true or false")
    return stream, include_usage


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Answer:
    """The OpenAI objects of one answer: an id and creation time shared by all its chunks."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def complete(self, response: generator_pb2.GenerateResponse) -> dict[str, Any]:
        """The whole answer (chat.completion or text_completion)."""
        finish = FINISH_REASONS.get(response.finish_reason, "stop")
        if self.chat:
            choice: dict[str, Any] = {"message": {"role": "assistant", "content": response.text}}
        else:
            choice = {"text": response.text}
        choice |= {"index": 0, "finish_reason": finish, "logprobs": None}
        return self._object(False) | {"choices": [choice], "usage": usage(response.usage)}

    def chunk(self, text: str, finish_reason: int = 0, *, first: bool = False) -> dict[str, Any]:
        """One streamed chunk: a text delta (the first chat chunk also carries the role), or the finish reason."""
        finish = FINISH_REASONS.get(finish_reason) if finish_reason else None
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            choice: dict[str, Any] = {"delta": delta if text or first else {}}
        else:
            choice = {"text": text}
        choice |= {"index": 0, "finish_reason": finish, "logprobs": None}
        return self._object(True) | {"choices": [choice]}

    def usage_chunk(self, tokens: generator_pb2.Usage) -> dict[str, Any]:
        """The chunk that stream_options.include_usage asks for: no choices, the usage."""
        return self._object(True) | {"choices": [], "usage": usage(tokens)}

    def _object(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def usage(tokens: generator_pb2.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": tokens.prompt_tokens,
        "completion_tokens": tokens.completion_tokens,
        "total_tokens": tokens.prompt_tokens + tokens.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": tokens.cached_prompt_tokens},
    }


def models_list(names: list[str]) -> dict[str, Any]:
    """GET /v1/models: one entry per model name the backends serve."""
    return {"object": "list", "data": [model_object(name) for name in sorted(set(names))]}


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "ecomserve"}


def error_body(error: BaseException, code: grpc.StatusCode) -> dict[str, Any]:
    """OpenAI's error envelope; unexpected errors say only that they were logged."""
    kind, error_code = ERROR_TYPES.get(code, ("server_error", None))
    message = INTERNAL_MESSAGE if code is grpc.StatusCode.INTERNAL else str(error)
    param = error.param if isinstance(error, Unsupported) else None
    return {"error": {"message": message, "type": kind, "param": param, "code": error_code}}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event; `data: [DONE]` ends a stream."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
