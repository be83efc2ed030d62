"""OpenAIRoutes: the OpenAI-compatible endpoints on the gateway's HTTP port, over the generator backend, the
classifier backend's model list and the gateway's EmbedTexts operation.

POST /v1/chat/completions and /v1/completions (JSON, or server-sent events with `stream`), GET /v1/models and
/v1/models/{id} (the generator models and the embedding models the classifier replicas serve), POST
/v1/embeddings (through EmbedTexts, and so with its limits). Callers authenticate with `Authorization: Bearer <API
key>` (the gateway's keys and rate limits), calls are counted and drained like every other gateway call, and a
client that goes away mid-stream stops its generation at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from ecomserve.classifier.v1 import classifier_pb2
from ecomserve.gateway.v1 import gateway_pb2
from ecomserve.generator.v1 import generator_pb2

from services.core import errors
from services.core.http_wire import Respond, counted_answer, read_json, stream_events
from services.core.inflight import InflightCalls
from services.core.wire import REQUEST_ID
from services.gateway import openai
from services.gateway.backends import Backend, CallContext, configured_generator

Translate = Callable[[Any], openai.Generation]
EmbedTexts = Callable[[gateway_pb2.EmbedTextsRequest, CallContext], Awaitable[gateway_pb2.EmbedTextsResponse]]
OK = grpc.StatusCode.OK


class OpenAIRoutes:
    def __init__(
        self,
        calls: InflightCalls,
        admit: Callable[[web.Request], CallContext],
        classifier: Backend,
        generator: Backend | None,
        embed_texts: EmbedTexts,
        body_timeout_s: float,
    ) -> None:
        self._calls = calls
        self._admit = admit  # refuses while draining, authenticates, applies the rate limit
        self._classifier = classifier
        self._generator = generator
        self._embed_texts = embed_texts
        self._body_timeout_s = body_timeout_s

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._generation("ChatCompletions", openai.chat_generation))
        app.router.add_post("/v1/completions", self._generation("Completions", openai.completion_generation))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)

    def _generation(self, method: str, translate: Translate) -> Any:
        chat = translate is openai.chat_generation

        async def handle(request: web.Request) -> web.StreamResponse:
            async def respond() -> tuple[web.StreamResponse, grpc.StatusCode]:
                call = self._admit(request)
                generation = translate(await self._json(request))
                answer = openai.Answer(chat, generation.request.model)
                if generation.stream:
                    return await self._stream(request, generation, answer, call)
                result = await self._backend().unary("Generate", generation.request, call)
                return web.json_response(answer.complete(result), headers={REQUEST_ID: call.request_id}), OK

            return await self._answer(request, method, respond)

        return handle

    async def _stream(
        self, request: web.Request, generation: openai.Generation, answer: openai.Answer, call: CallContext
    ) -> tuple[web.StreamResponse, grpc.StatusCode]:
        """Server-sent chunks (the first carries the role), the usage chunk when asked for, then [DONE]."""

        def closing(last: generator_pb2.GenerateStreamResponse) -> bytes:
            usage = openai.sse(answer.usage_chunk(last.usage)) if generation.include_usage else b""
            return usage + openai.sse("[DONE]")

        return await stream_events(
            request,
            self._backend().stream("GenerateStream", generation.request, call),
            request_id=call.request_id,
            method="GenerateStream",
            event=lambda delta, first: openai.sse(answer.chunk(delta.text, delta.finish_reason, first=first)),
            error_event=lambda error, code: openai.sse(openai.error_body(error, code)),
            closing=closing,
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        async def respond() -> tuple[web.StreamResponse, grpc.StatusCode]:
            call = self._admit(request)
            names = await self._model_names(call)
            models = openai.models_list(names)
            wanted = request.match_info.get("model")
            if wanted is None:
                return web.json_response(models, headers={REQUEST_ID: call.request_id}), OK
            if wanted not in {model["id"] for model in models["data"]}:
                raise errors.NotFound(f"the model {wanted!r} does not exist; GET /v1/models lists the models served")
            return web.json_response(openai.model_object(wanted), headers={REQUEST_ID: call.request_id}), OK

        return await self._answer(request, "ListModels", respond)

    async def _model_names(self, call: CallContext) -> list[str]:
        """The generator models, and the embedding models the classifier replicas serve (ready ones: a failed
        version is listed without a kind)."""
        names = []
        if self._generator is not None:
            listed = await self._generator.unary("ListModels", generator_pb2.ListModelsRequest(), call)
            names += [model.name for model in listed.models if model.status == generator_pb2.MODEL_STATUS_READY]
        listed = await self._classifier.unary("ListModels", classifier_pb2.ListModelsRequest(), call)
        names += [model.name for model in listed.models if model.kind == classifier_pb2.MODEL_KIND_EMBEDDING]
        return names

    async def _answer(self, request: web.Request, method: str, respond: Respond) -> web.StreamResponse:
        return await counted_answer(self._calls, method, request, respond, openai.error_body)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        async def respond() -> tuple[web.StreamResponse, grpc.StatusCode]:
            call = self._admit(request)
            embeddings = openai.embeddings_request(await self._json(request))
            result = await self._embed_texts(embeddings.request, call)
            answer = openai.embeddings_answer(result, embeddings.encoding)
            return web.json_response(answer, headers={REQUEST_ID: call.request_id}), OK

        return await self._answer(request, "Embeddings", respond)

    async def _json(self, request: web.Request) -> Any:
        return await read_json(request, self._body_timeout_s)

    def _backend(self) -> Backend:
        return configured_generator(self._generator)
