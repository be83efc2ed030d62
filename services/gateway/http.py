"""The gateway's JSON-over-HTTP transport: the same operations as gRPC, in the proto JSON mapping.

POST /v1/route-message, /v1/classify-texts, /v1/embed-texts, /v1/describe-product, /v1/analyze-reviews take the
request message as JSON and answer the response message; POST /v1/draft-reply and /v1/write-marketing-copy stream
as server-sent events (Accept: text/event-stream) or JSON lines.
GET /healthz is liveness (the process answers), GET /readyz readiness (every backend has a SERVING replica).
The OpenAI-compatible endpoints (/v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings) and the Open
Inference Protocol's REST form (/v2/...), with Triton's generate extension, share the port: see
services.gateway.openai_routes, services.core.oip_rest and services.gateway.triton_generate.
Headers: authorization / x-api-key, x-request-id, x-timeout-ms (the call's deadline). Errors are JSON
{"error": {"code", "message", "requestId"}} with the gRPC code mapped to an HTTP status by `http_status`.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from ecomserve.gateway.v1 import gateway_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from services.core import errors
from services.core.http_wire import (
    JSON_LINES,
    SSE,
    Respond,
    counted_answer,
    read_body,
    request_id_and_envelope,
    stream_events,
    timeout_of,
)
from services.core.inflight import InflightCalls
from services.core.listener import HttpListener
from services.core.oip_rest import V2Routes
from services.core.status import INTERNAL_MESSAGE
from services.core.wire import REQUEST_ID
from services.gateway.admission import Admission
from services.gateway.backends import Backend, CallContext
from services.gateway.openai_routes import OpenAIRoutes
from services.gateway.operations import GatewayOperations
from services.gateway.triton_generate import GenerateRoutes

log = logging.getLogger(__name__)


def to_json(message: Message, *, defaults: bool = True) -> dict[str, Any]:
    """The proto JSON mapping; stream deltas leave out fields at their default to keep frames small."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=defaults)


Unary = Callable[[Any, CallContext], Awaitable[Message]]
Streaming = Callable[[Any, CallContext], AsyncIterator[Message]]


@dataclass(frozen=True)
class HttpLimits:
    """How much an HTTP caller may hold: body bytes, seconds to send the body, seconds to send a request head
    (from connect or from the last response), and open connections."""

    max_body_bytes: int
    body_timeout_s: float
    idle_timeout_s: float
    max_connections: int


class HttpBridge:
    """An aiohttp server on the gateway's event loop. Calls are counted in the gRPC server's InflightCalls, so
    metrics, in-flight accounting and draining cover both transports."""

    def __init__(
        self,
        operations: GatewayOperations,
        admission: Admission,
        calls: InflightCalls,
        readiness: Callable[[], dict[str, bool]],
        *,
        classifier: Backend,
        generator: Backend | None,
        limits: HttpLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._admission = admission
        self._calls = calls
        self._readiness = readiness
        self._ssl = ssl_context
        app = web.Application(
            client_max_size=limits.max_body_bytes, middlewares=[request_id_and_envelope(_refusal_envelope)]
        )
        unary: dict[str, tuple[str, type[Message], Unary]] = {
            "/v1/route-message": ("RouteMessage", gateway_pb2.RouteMessageRequest, operations.route_message),
            "/v1/classify-texts": ("ClassifyTexts", gateway_pb2.ClassifyTextsRequest, operations.classify_texts),
            "/v1/embed-texts": ("EmbedTexts", gateway_pb2.EmbedTextsRequest, operations.embed_texts),
            "/v1/describe-product": (
                "DescribeProduct",
                gateway_pb2.DescribeProductRequest,
                operations.describe_product,
            ),
            "/v1/analyze-reviews": ("AnalyzeReviews", gateway_pb2.AnalyzeReviewsRequest, operations.analyze_reviews),
        }
        for path, (method, message_class, operation) in unary.items():
            app.router.add_post(path, self._unary_handler(method, message_class, operation))
        streaming: dict[str, tuple[str, type[Message], Streaming]] = {
            "/v1/draft-reply": ("DraftReply", gateway_pb2.DraftReplyRequest, operations.draft_reply),
            "/v1/write-marketing-copy": (
                "WriteMarketingCopy",
                gateway_pb2.WriteMarketingCopyRequest,
                operations.write_marketing_copy,
            ),
        }
        for path, (method, message_class, streamed) in streaming.items():
            app.router.add_post(path, self._stream_handler(method, message_class, streamed))
        OpenAIRoutes(
            calls, self._admit_call, classifier, generator, operations.embed_texts, limits.body_timeout_s
        ).register(app)
        V2Routes(calls, self._admit_call, classifier.unary, limits.body_timeout_s).register(app)
        GenerateRoutes(calls, self._admit_call, generator, limits.body_timeout_s).register(app)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._listener = HttpListener(
            app, idle_timeout_s=limits.idle_timeout_s, max_connections=limits.max_connections, name="gateway HTTP"
        )
        self._body_timeout_s = limits.body_timeout_s
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self.port = await self._listener.start(host, port, self._ssl)
        return self.port

    async def aclose(self) -> None:
        await self._listener.aclose()

    def _unary_handler(self, method: str, message_class: type[Message], operation: Unary) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            async def respond() -> tuple[web.StreamResponse, grpc.StatusCode]:
                call, body = await self._accept(request, message_class)
                response = await operation(body, call)
                return web.json_response(to_json(response), headers={REQUEST_ID: call.request_id}), grpc.StatusCode.OK

            return await self._answer(request, method, respond)

        return handle

    def _stream_handler(self, method: str, message_class: type[Message], operation: Streaming) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            async def respond() -> tuple[web.StreamResponse, grpc.StatusCode]:
                call, body = await self._accept(request, message_class)
                return await _stream(request, operation(body, call), call.request_id, method)

            return await self._answer(request, method, respond)

        return handle

    async def _answer(self, request: web.Request, method: str, respond: Respond) -> web.StreamResponse:
        request_id = request[REQUEST_ID]
        return await counted_answer(
            self._calls, method, request, respond, lambda error, code: _error_body(error, code, request_id)
        )

    async def _accept(self, request: web.Request, message_class: type[Message]) -> tuple[CallContext, Message]:
        """What both kinds of handler do first: refuse while draining, admit the caller, parse the body."""
        call = self._admit_call(request)
        return call, await _parse(request, message_class, self._body_timeout_s)

    def _admit_call(self, request: web.Request) -> CallContext:
        """Refuse while draining, authenticate, apply the rate limit, fix the deadline (x-timeout-ms)."""
        self._calls.refuse_new_calls()
        timeout_s = timeout_of(request)
        headers = {name.lower(): value for name, value in request.headers.items()}
        headers[REQUEST_ID] = request[REQUEST_ID]
        return self._admission.admit(headers, timeout_s, request.remote or "-")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        backends = self._readiness()
        ready = all(backends.values()) and not self._calls.draining
        body = {"status": "SERVING" if ready else "NOT_SERVING", "backends": backends}
        return web.json_response(body, status=200 if ready else 503)


def _refusal_envelope(code: grpc.StatusCode, message: str, request_id: str) -> dict[str, Any]:
    return {"error": {"code": code.name, "message": message, "requestId": request_id}}


async def _parse(request: web.Request, message_class: type[Message], timeout_s: float) -> Message:
    body = await read_body(request, timeout_s)
    try:
        return json_format.Parse(body or "{}", message_class())
    except json_format.ParseError as error:
        raise errors.InvalidArgument(f"request body is not a valid {message_class.DESCRIPTOR.name}: {error}") from None
    except RecursionError:
        raise errors.InvalidArgument("request body nests JSON too deeply") from None


async def _stream(
    request: web.Request, messages: AsyncIterator[Message], request_id: str, method: str
) -> tuple[web.StreamResponse, grpc.StatusCode]:
    """Server-sent events (when the request accepts them) or JSON lines."""
    sse = SSE in request.headers.get("accept", "")
    return await stream_events(
        request,
        messages,
        request_id=request_id,
        method=method,
        event=lambda message, first: _frame(to_json(message, defaults=False), sse),
        error_event=lambda error, code: _frame(_error_body(error, code, request_id), sse, event="error"),
        content_type=SSE if sse else JSON_LINES,
    )


def _frame(body: dict[str, Any], sse: bool, event: str | None = None) -> bytes:
    data = json.dumps(body, separators=(",", ":"))
    if not sse:
        return (data + "\n").encode()
    return (f"event: {event}\n" if event else "").encode() + f"data: {data}\n\n".encode()


def _error_body(error: BaseException, code: grpc.StatusCode, request_id: str) -> dict[str, Any]:
    message = INTERNAL_MESSAGE if code is grpc.StatusCode.INTERNAL else str(error)
    return {"error": {"code": code.name, "message": message, "requestId": request_id}}
