"""The Open Inference Protocol's REST form on the classifier's own HTTP port (`--http-port`), for KServe's v2
REST clients and a ServingRuntime that declares both v2 protocols: the routes of services.core.oip_rest, answered
in-process by the v2 servicer and counted with the gRPC calls (requests_total, in flight, draining). Like the gRPC
port it has no API keys: it trusts its network (the gateway's /v2 routes are the authenticated way in)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from services.classifier.oip import InferenceServicer
from services.core.http_wire import request_id_and_envelope, timeout_of
from services.core.inflight import InflightCalls
from services.core.listener import HttpListener
from services.core.oip_rest import V2Routes
from services.core.wire import MAX_MESSAGE_BYTES, REQUEST_ID

# The limits of an HTTP caller, as the gateway's defaults: seconds to send a body, seconds to send a request head,
# open connections.
BODY_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 15.0
MAX_CONNECTIONS = 1000


@dataclass(frozen=True)
class RestCall:
    request_id: str
    deadline: float | None  # event-loop time, from x-timeout-ms


class ClassifierRest:
    def __init__(self, inference: InferenceServicer, calls: InflightCalls) -> None:
        self._inference = inference
        self._calls = calls
        middleware = request_id_and_envelope(_refusal_body)
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES, middlewares=[middleware])
        V2Routes(calls, self._admit, self._forward, BODY_TIMEOUT_S).register(app)
        self._listener = HttpListener(
            app, idle_timeout_s=IDLE_TIMEOUT_S, max_connections=MAX_CONNECTIONS, name="classifier HTTP"
        )

    async def start(self, host: str, port: int) -> int:
        return await self._listener.start(host, port)

    async def aclose(self) -> None:
        await self._listener.aclose()

    def _admit(self, request: web.Request) -> RestCall:
        self._calls.refuse_new_calls()
        timeout_s = timeout_of(request)
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        return RestCall(request[REQUEST_ID], deadline)

    async def _forward(self, method: str, request: Any, call: RestCall) -> Any:
        return await self._inference.answer(method, request, call.deadline)


def _refusal_body(code: grpc.StatusCode, message: str, request_id: str) -> dict[str, Any]:
    return {"error": message}
