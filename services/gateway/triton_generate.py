"""Triton's generate extension on the gateway's HTTP port, in front of the generator: the REST form that Triton's
LLM tooling (and clients written for Triton's vLLM and TensorRT-LLM backends) calls.

POST /v2/models/{name}[/versions/{v}]/generate takes {"text_input": str, and sampling fields at the top level or
under "parameters": max_tokens, temperature, top_p, seed, stop (a string or a list), repetition_penalty (or
repeat_penalty), stream (false here)} and
answers {"model_name", "model_version", "text_output"}; .../generate_stream answers server-sent events of the same
object, each with the next piece of text, the last with the version that answered. Unknown or unsupported fields
are refused with 400 naming them; errors are {"error": message}, as the rest of the protocol's REST form. Behind the
gateway's API keys and rate limits, like every route of the port.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web
from ecomserve.generator.v1 import generator_pb2

from services.core.http_wire import Respond, counted_answer, read_json, stream_events
from services.core.inflight import InflightCalls
from services.core.oip_rest import error_body, version_number
from services.core.wire import REQUEST_ID
from services.gateway.backends import Backend, CallContext, configured_generator
from services.gateway.openai import (
    REPETITION_PENALTY_FIELDS,
    SAMPLING_FIELDS,
    Unsupported,
    sampling_parameters,
    sse,
)

TEXT_INPUT = "text_input"
OK = grpc.StatusCode.OK


def generate_request(body: Any, model: str, version: str, stream: bool) -> generator_pb2.GenerateRequest:
    """A generate (or generate_stream) body as a GenerateRequest; Unsupported naming the field it refuses."""
    if not isinstance(body, dict):
        raise Unsupported("body", 'the body must be a JSON object with "text_input"')
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise Unsupported("parameters", "parameters must be a JSON object")
    fields = {key: value for key, value in body.items() if key != "parameters"} | parameters
    unknown = sorted(set(fields) - {TEXT_INPUT, "stream", *SAMPLING_FIELDS, *REPETITION_PENALTY_FIELDS})
    if unknown:
        raise Unsupported(unknown[0], f"{unknown[0]}: unknown or unsupported field (supported: max_tokens, "
                          "temperature, top_p, seed, stop, repetition_penalty)")  # fmt: skip
    if fields.get("stream", stream) is not stream:
        raise Unsupported("stream", f"stream: must be {str(stream).lower()} here; use generate_stream to stream")
    text = fields.get(TEXT_INPUT)
    if not isinstance(text, str) or not text:
        raise Unsupported(TEXT_INPUT, f"{TEXT_INPUT} is required: the prompt, a non-empty string")
    return generator_pb2.GenerateRequest(
        model=model, version=version_number(model, version), prompt=text, sampling=sampling_parameters(fields)
    )


class GenerateRoutes:
    def __init__(
        self,
        calls: InflightCalls,
        admit: Callable[[web.Request], CallContext],
        generator: Backend | None,
        body_timeout_s: float,
    ) -> None:
        self._calls = calls
        self._admit = admit  # refuses while draining, authenticates, applies the rate limit
        self._generator = generator
        self._body_timeout_s = body_timeout_s

    def register(self, app: web.Application) -> None:
        for path in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            app.router.add_post(path + "/generate", self._generate)
            app.router.add_post(path + "/generate_stream", self._generate_stream)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        async def respond() -> tuple[web.StreamResponse, grpc.StatusCode]:
            call, generation = await self._accept(request, stream=False)
            answer = await self._backend().unary("Generate", generation, call)
            body = _output(answer.model, answer.version, answer.text)
            return web.json_response(body, headers={REQUEST_ID: call.request_id}), OK

        return await self._answer(request, "ModelGenerate", respond)

    async def _generate_stream(self, request: web.Request) -> web.StreamResponse:
        async def respond() -> tuple[web.StreamResponse, grpc.StatusCode]:
            call, generation = await self._accept(request, stream=True)
            return await stream_events(
                request,
                self._backend().stream("GenerateStream", generation, call),
                request_id=call.request_id,
                method="ModelGenerateStream",
                event=lambda delta, first: sse(_output(generation.model, delta.version, delta.text)),
                error_event=lambda error, code: sse(error_body(error, code)),
            )

        return await self._answer(request, "ModelGenerateStream", respond)

    async def _accept(self, request: web.Request, stream: bool) -> tuple[CallContext, generator_pb2.GenerateRequest]:
        call = self._admit(request)
        body = await read_json(request, self._body_timeout_s)
        match = request.match_info
        return call, generate_request(body, match["name"], match.get("version", ""), stream)

    async def _answer(self, request: web.Request, method: str, respond: Respond) -> web.StreamResponse:
        return await counted_answer(self._calls, method, request, respond, error_body)

    def _backend(self) -> Backend:
        return configured_generator(self._generator)


def _output(model: str, version: int, text: str) -> dict[str, Any]:
    """Triton's answer object; a streamed piece before the last has no version yet ("")."""
    return {"model_name": model, "model_version": str(version) if version else "", "text_output": text}
