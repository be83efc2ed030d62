"""The one table from domain exceptions to gRPC status codes, applied by the one server interceptor.

The interceptor also counts every call in the service's InflightCalls (requests_total by code, request duration,
in flight, drained) and, when tracing is on, opens its server span, so that servicers hold no try/except, no metric
code and no tracing code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.core import errors, tracing, wire
from services.core.inflight import InflightCalls
from services.core.logs import CallLog

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.ServingError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}
INTERNAL_MESSAGE = "internal error; it was logged on the server"


def status_of(error: BaseException) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps raised domain errors to statuses (INTERNAL + logged traceback for anything else), counts every call
    in `calls` (refused while draining) and traces it, for the project's own RPCs (health and reflection pass
    through)."""

    def __init__(self, calls: InflightCalls) -> None:
        self._calls = calls
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method or ""
        if handler is None or not full_method.startswith(wire.SERVED_PREFIXES):
            return handler
        # A method's handler never changes: wrap it once, not on every call.
        wrapped = self._wrapped.get(full_method)
        if wrapped is None:
            wrapped = self._wrapped[full_method] = self._wrap(handler, full_method)
        return wrapped

    def _begin(self, metadata: dict[str, Any]) -> CallLog:
        return self._calls.begin(str(metadata.get(wire.REQUEST_ID, "")), metadata.get(wire.TRACEPARENT))

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        deserializer = _tolerant(handler.request_deserializer)
        method = full_method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, full_method, method),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, full_method, method),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], full_method: str, method: str
    ) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._served(request, context, full_method, method):
                return await behavior(request, context)

        return unary

    def _wrap_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], full_method: str, method: str
    ) -> Callable[..., Any]:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._served(request, context, full_method, method):
                async for response in behavior(request, context):
                    yield response

        return stream

    @contextlib.asynccontextmanager
    async def _served(
        self, request: Any, context: grpc.aio.ServicerContext, full_method: str, method: str
    ) -> AsyncIterator[None]:
        """Around one call of `full_method` (`method` its last part): its server span (when tracing is on), its
        count and access line, the refusals that come before the servicer runs, and the mapping of whatever it
        raises to a status."""
        metadata = dict(context.invocation_metadata() or ())
        with tracing.grpc_server_span(full_method, metadata) as span:  # in force before the call log opens
            call = self._begin(metadata)
            code = grpc.StatusCode.OK
            try:
                self._calls.refuse_new_calls()
                _refuse_undecodable(request)
                _echo_previous_attempts(context)
                yield
            except BaseException as error:  # every outcome is counted, then re-raised or mapped
                code = _code_for(error, context)
                await _reraise_or_abort(error, code, context, method)
            finally:
                tracing.record_grpc_code(span, code)
                self._calls.end(method, code, call)


class UndecodableRequest:
    """Stands for a request whose bytes did not parse (a string field that is not UTF-8, say): gRPC itself would
    answer UNKNOWN with the parser's text; the wrapped handler answers INVALID_ARGUMENT instead."""

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    message_name = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name", "request message")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return UndecodableRequest(message_name)

    return deserialize


def _refuse_undecodable(request: Any) -> None:
    if isinstance(request, UndecodableRequest):
        raise errors.InvalidArgument(
            f"the request is not a valid {request.message_name}: string fields must be valid UTF-8, and the message "
            "must be encoded from this service's protos"
        )


# How a call ends when its caller goes away: cancelled while it waits, or (a stream) closed with GeneratorExit when
# gRPC cannot write the next message to a peer that is gone. Neither is the server's failure.
CALLER_GONE = (asyncio.CancelledError, GeneratorExit)


def _code_for(error: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    if isinstance(error, CALLER_GONE):
        return grpc.StatusCode.CANCELLED
    if isinstance(error, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[return-value]
    return status_of(error)


async def _reraise_or_abort(
    error: BaseException, code: grpc.StatusCode, context: grpc.aio.ServicerContext, method: str
) -> None:
    """Abort with the mapped status; a caller gone and explicit aborts propagate unchanged."""
    if isinstance(error, (*CALLER_GONE, grpc.aio.AbortError)):
        raise error
    if code is grpc.StatusCode.INTERNAL:
        request_id = dict(context.invocation_metadata() or ()).get(wire.REQUEST_ID, "-")
        log.error("%s failed with an unexpected error (request %s)", method, request_id, exc_info=error)
    # Never send an unexpected exception's text to the caller: it may hold internals.
    message = INTERNAL_MESSAGE if code is grpc.StatusCode.INTERNAL else str(error)
    retry_after_s = error.retry_after_s if isinstance(error, errors.ResourceExhausted) else None
    trailing = () if retry_after_s is None else retry_info_metadata(code, message, retry_after_s)
    await context.abort(code, message, trailing_metadata=trailing)


def retry_info_metadata(code: grpc.StatusCode, message: str, retry_after_s: float) -> tuple[tuple[str, bytes], ...]:
    """The status as google.rpc.Status with a RetryInfo detail (grpc-status-details-bin), the standard retry hint."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(retry_after_s * 1e9))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[detail])
    return tuple(rpc_status.to_status(status).trailing_metadata)


def _echo_previous_attempts(context: grpc.aio.ServicerContext) -> None:
    for key, value in context.invocation_metadata() or ():
        if key == wire.GRPC_PREVIOUS_ATTEMPTS:
            context.set_trailing_metadata(((wire.PREVIOUS_ATTEMPTS, str(value)),))
