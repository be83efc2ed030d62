"""The status interceptor on a real grpc.aio server: a caller that goes away from a stream while the server is
writing to it ends the call as CANCELLED, never as an INTERNAL failure with a logged traceback; past the limit of
calls in flight a call is refused at once with a retry hint, and served again once calls end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from services.core import metrics
from services.core.inflight import InflightCalls
from services.core.status import StatusInterceptor

SERVICE = "interceptor-test"
METHOD = "/ecomserve.test.v1.Probe/Stream"  # a served prefix: the interceptor wraps it


async def endless(request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
    """As fast as gRPC takes them: the caller's cancel finds the server in the middle of a write."""
    while True:
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def count(code: str, method: str = "Stream") -> float:
    return metrics.REQUESTS.labels(SERVICE, method, code)._value.get()


@contextlib.asynccontextmanager
async def probe_server(calls: InflightCalls, **handlers: grpc.RpcMethodHandler) -> AsyncIterator[grpc.aio.Channel]:
    """A grpc.aio server with the status interceptor over `calls`, serving `handlers` as methods of the Probe
    service; yields a channel to it."""
    server = grpc.aio.server(interceptors=[StatusInterceptor(calls)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("ecomserve.test.v1.Probe", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)


async def test_a_caller_leaving_a_stream_mid_write_is_cancelled_not_internal(caplog: pytest.LogCaptureFixture) -> None:
    handler = grpc.unary_stream_rpc_method_handler(
        endless,
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    calls = 20
    cancelled_before, internal_before = count("CANCELLED"), count("INTERNAL")
    async with probe_server(InflightCalls(SERVICE), Stream=handler) as channel:
        stream = channel.unary_stream(
            METHOD,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        for _ in range(calls):
            call = stream(health_pb2.HealthCheckRequest())
            await call.read()
            call.cancel()
        for _ in range(200):  # the server learns of each cancel asynchronously
            if count("CANCELLED") - cancelled_before == calls:
                break
            await asyncio.sleep(0.05)
    assert count("CANCELLED") - cancelled_before == calls
    assert count("INTERNAL") == internal_before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a caller leaving is not a server error"


async def test_calls_past_the_in_flight_limit_are_refused_at_once_with_a_retry_hint() -> None:
    release = asyncio.Event()

    async def held(request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> Any:
        await release.wait()
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    handler = grpc.unary_unary_rpc_method_handler(
        held,
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    refused_before = count("RESOURCE_EXHAUSTED", "Held")
    async with probe_server(InflightCalls(SERVICE, max_calls=2), Held=handler) as channel:
        call = channel.unary_unary(
            "/ecomserve.test.v1.Probe/Held",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        first = [asyncio.ensure_future(call(health_pb2.HealthCheckRequest(), timeout=10)) for _ in range(2)]
        await asyncio.sleep(0.3)  # both are in the handler, waiting
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(health_pb2.HealthCheckRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 2 calls in flight" in (refused.value.details() or "")
        status = rpc_status.from_call(refused.value)
        retry = error_details_pb2.RetryInfo()
        assert status is not None and status.details[0].Unpack(retry)
        assert retry.retry_delay.ToTimedelta().total_seconds() > 0
        assert not any(task.done() for task in first)  # the calls in flight are untouched
        release.set()
        assert [(await task).status for task in first] == [health_pb2.HealthCheckResponse.SERVING] * 2
        assert (await call(health_pb2.HealthCheckRequest(), timeout=10)).status  # room again
    assert count("RESOURCE_EXHAUSTED", "Held") == refused_before + 1
