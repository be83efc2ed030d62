"""What the HTTP surfaces (the gateway's JSON API, its OpenAI-compatible API, and the Open Inference Protocol's
REST form on the gateway and the classifier) share: the one mapping from gRPC status codes to HTTP statuses, the
request id and the deadline of a request, counting a call, and reading a request body within the limits (size,
charset, time)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from services.core import errors, tracing
from services.core.inflight import InflightCalls
from services.core.status import status_of
from services.core.wire import REQUEST_ID, TRACEPARENT, checked_request_id

log = logging.getLogger(__name__)

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# aiohttp's own refusals (no such path, wrong method, ...) in the envelope's terms.
CODE_OF_HTTP_STATUS = {status: code for code, status in HTTP_STATUS.items()} | {
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
}
TIMEOUT_HEADER = "x-timeout-ms"
UTF8_CHARSETS = ("utf-8", "utf8", "us-ascii", "ascii")
SSE = "text/event-stream"
JSON_LINES = "application/x-ndjson"


def http_status(code: grpc.StatusCode) -> int:
    """The one mapping from gRPC status codes to HTTP statuses; anything unlisted is a 500."""
    return HTTP_STATUS.get(code, 500)


class HttpRefusal(errors.InvalidArgument):
    """A request refused for its HTTP form (body size, charset): INVALID_ARGUMENT with its own HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_for(error: BaseException, code: grpc.StatusCode) -> int:
    """The HTTP status of a refused request: its own for HttpRefusal, else its gRPC code's."""
    return error.status if isinstance(error, HttpRefusal) else http_status(code)


Respond = Callable[[], Awaitable[tuple[web.StreamResponse, grpc.StatusCode]]]
Envelope = Callable[[Exception, grpc.StatusCode], dict[str, Any]]


async def counted_answer(
    calls: InflightCalls, method: str, request: web.Request, respond: Respond, envelope: Envelope
) -> web.StreamResponse:
    """One HTTP call, counted in the service's InflightCalls like a gRPC call (in flight, drained, requests_total by
    code): `respond` gives the response and its final code (a stream's is known only at its end); an exception it
    raises becomes an error response in `envelope`'s shape."""
    request_id = request[REQUEST_ID]
    with tracing.server_span(method, request.headers):
        call = calls.begin(request_id, request.headers.get(TRACEPARENT))
        code = grpc.StatusCode.OK
        try:
            response, code = await respond()
            return response
        except Exception as error:
            code = status_of(error)
            return error_response(envelope(error, code), error, code, request_id, method)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            calls.end(method, code, call)


def error_response(
    body: dict[str, Any], error: Exception, code: grpc.StatusCode, request_id: str, method: str
) -> web.Response:
    """An error answer in `body`'s envelope: the HTTP status of `code` (or the refusal's own), the request id, and
    Retry-After when the refusal knows when to retry; unexpected errors are logged with their traceback."""
    log_unexpected(error, code, request_id, method)
    headers = {REQUEST_ID: request_id}
    if isinstance(error, errors.ResourceExhausted) and error.retry_after_s is not None:
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after_s)))
    return web.json_response(body, status=status_for(error, code), headers=headers)


def log_unexpected(error: BaseException, code: grpc.StatusCode, request_id: str, method: str) -> None:
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s failed with an unexpected error (request %s)", method, request_id or "-", exc_info=error)


async def read_body(request: web.Request, timeout_s: float) -> str:
    """The request body as text: HttpRefusal for a charset other than UTF-8 (415), a body over the application's
    client_max_size (413) or one not received within timeout_s (408); InvalidArgument when it is not UTF-8."""
    if request.charset is not None and request.charset.lower() not in UTF8_CHARSETS:
        raise HttpRefusal(415, f"charset {request.charset!r} is not supported: send the JSON body as UTF-8")
    try:
        async with asyncio.timeout(timeout_s):
            return (await request.read()).decode()
    except web.HTTPRequestEntityTooLarge:
        raise HttpRefusal(413, f"request body over the {request.client_max_size} byte limit") from None
    except TimeoutError:
        raise HttpRefusal(408, f"request body not received within {timeout_s:g} s") from None
    except UnicodeDecodeError as error:
        raise errors.InvalidArgument(f"request body is not valid UTF-8 (byte {error.start})") from None


async def read_json(request: web.Request, timeout_s: float) -> Any:
    """The request body parsed as JSON (an empty body is null), within read_body's limits; InvalidArgument when it
    is not JSON."""
    try:
        return json.loads(await read_body(request, timeout_s) or "null")
    except (ValueError, RecursionError):
        raise errors.InvalidArgument("the request body is not valid JSON") from None


RefusalEnvelope = Callable[[grpc.StatusCode, str, str], dict[str, Any]]


def request_id_and_envelope(envelope: RefusalEnvelope) -> Any:
    """A middleware: every request gets its checked request id; aiohttp's own refusals (unknown path 404, wrong
    method 405, ...) keep their status but answer in `envelope(code, message, request id)`, logged as the
    caller's mistake."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        request_id = request[REQUEST_ID] = checked_request_id(request.headers.get(REQUEST_ID))
        try:
            return await handler(request)
        except web.HTTPException as refusal:
            if refusal.status < 400:
                raise
            code = CODE_OF_HTTP_STATUS.get(refusal.status, grpc.StatusCode.INVALID_ARGUMENT)
            log.info(
                "%s %s refused with %d %s (request %s)",
                request.method,
                request.path,
                refusal.status,
                refusal.reason,
                request_id,
            )
            headers = {REQUEST_ID: request_id}
            if "allow" in refusal.headers:
                headers["allow"] = refusal.headers["allow"]
            body = envelope(code, refusal.reason, request_id)
            return web.json_response(body, status=refusal.status, headers=headers)

    return middleware


def timeout_of(request: web.Request) -> float | None:
    """The call's time limit in seconds, from the x-timeout-ms header (None: no limit)."""
    timeout_ms = request.headers.get(TIMEOUT_HEADER)
    try:
        timeout_s = None if timeout_ms is None else float(timeout_ms) / 1000
    except ValueError:
        raise errors.InvalidArgument(f"{TIMEOUT_HEADER} must be a number of milliseconds") from None
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise errors.InvalidArgument(f"{TIMEOUT_HEADER} must be > 0")
    return timeout_s


async def stream_events(
    request: web.Request,
    messages: AsyncIterator[Any],
    *,
    request_id: str,
    method: str,
    event: Callable[[Any, bool], bytes],
    error_event: Callable[[Exception, grpc.StatusCode], bytes],
    closing: Callable[[Any], bytes] = lambda last: b"",
    content_type: str = SSE,
) -> tuple[web.StreamResponse, grpc.StatusCode]:
    """A backend's stream of `messages` as an HTTP stream: `event(message, is_first)` for each, `closing(last)`
    after them. An error before the first message gets its own HTTP status (raised); after it, the status line is
    sent, so the error travels as the last event (`error_event`). A caller that goes away ends it CANCELLED; either
    way `messages` is closed, which stops the backend's work."""
    try:
        first = await anext(messages)
    except BaseException:
        await messages.aclose()  # type: ignore[attr-defined]
        raise
    response = web.StreamResponse(
        headers={"content-type": content_type, REQUEST_ID: request_id, "cache-control": "no-cache"}
    )
    try:
        await response.prepare(request)
        last = first
        await response.write(event(first, True))
        async for message in messages:
            last = message
            await response.write(event(message, False))
        if tail := closing(last):
            await response.write(tail)
        await response.write_eof()
        return response, grpc.StatusCode.OK
    except ConnectionError:
        return response, grpc.StatusCode.CANCELLED
    except Exception as error:
        code = status_of(error)
        log_unexpected(error, code, request_id, method)
        await response.write(error_event(error, code))
        await response.write_eof()
        return response, code
    finally:
        await messages.aclose()  # type: ignore[attr-defined]
