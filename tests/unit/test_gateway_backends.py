"""A gateway backend over a real channel to a real gRPC server whose health the test flips: a moment with no
SERVING replica is waited out, a longer one makes calls fail fast."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.core import errors
from services.gateway import backends
from services.gateway.backends import Backend, CallContext

SERVICE = "ecomserve.test.Backend"  # the name the channel's client-side health check asks about
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
CHECK = health_pb2.HealthCheckRequest()  # the call the tests make through the backend: the server's own Check
CALL = CallContext(caller="test", request_id="r1", deadline=None)


@pytest.fixture
async def replica() -> AsyncIterator[tuple[Backend, health.aio.HealthServicer]]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set(SERVICE, SERVING)
    backend = Backend(
        "classifier", f"127.0.0.1:{port}", SERVICE, [health_pb2_grpc.HealthStub],
        max_attempts=1, default_timeout_s=10, deadline_margin_s=0.01,
    )  # fmt: skip
    changes: asyncio.Queue[bool] = asyncio.Queue()

    async def on_change() -> None:
        await changes.put(backend.ready)

    watcher = asyncio.create_task(backend.watch(on_change))
    assert await asyncio.wait_for(changes.get(), 10) is True
    yield backend, servicer
    watcher.cancel()
    await backend.aclose()
    await server.stop(None)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_moment_without_a_serving_replica_is_waited_out(
    replica: tuple[Backend, health.aio.HealthServicer],
) -> None:
    backend, servicer = replica
    await servicer.set(SERVICE, NOT_SERVING)
    await until(lambda: backend.channel.get_state() is not grpc.ChannelConnectivity.READY)
    call = asyncio.ensure_future(backend.unary("Check", CHECK, CALL))
    await asyncio.sleep(backends.OUTAGE_GRACE_S / 4)
    assert backend.ready and not call.done()  # probes see no flap; the call waits for the replica
    await servicer.set(SERVICE, SERVING)
    assert (await asyncio.wait_for(call, 5)).status == SERVING
    assert backend.ready


async def test_an_outage_past_the_grace_fails_calls_fast(replica: tuple[Backend, health.aio.HealthServicer]) -> None:
    backend, servicer = replica
    await servicer.set(SERVICE, NOT_SERVING)
    await until(lambda: backend.channel.get_state() is not grpc.ChannelConnectivity.READY)
    started = time.monotonic()
    with pytest.raises(errors.Unavailable, match="classifier backend has no SERVING replica"):
        await backend.unary("Check", CHECK, CALL)  # waited through the grace, no longer
    assert time.monotonic() - started < backends.OUTAGE_GRACE_S + 1
    await until(lambda: not backend.ready)
    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(errors.Unavailable):
            await backend.unary("Check", CHECK, CALL)
    assert time.monotonic() - started < 0.5  # no waiting once the backend counts as down
    await servicer.set(SERVICE, SERVING)
    await until(lambda: backend.ready)
    assert (await backend.unary("Check", CHECK, CALL)).status == SERVING
