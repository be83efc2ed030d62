"""`python -m services.classifier` as a real process: health over time and SIGTERM under load."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import grpc
import pytest
from ecomserve.classifier.v1 import classifier_pb2 as pb
from ecomserve.classifier.v1 import classifier_pb2_grpc

from services.dev.launcher import wait_serving
from tests.integration.conftest import spawned_service


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_sigterm_under_load_completes_every_accepted_request(model_repo: Path, event_loop: str) -> None:
    with spawned_service(
        "services.classifier",
        model_repo,
        "--event-loop",
        event_loop,
        "--max-queue-delay-ms",
        "20",
        "--grace-period-s",
        "10",
        ECOMSERVE_CLASSIFIER_MAX_BATCH_SIZE="8",
    ) as (process, address):
        await asyncio.to_thread(wait_serving, address, process, 60.0, "the classifier")
        async with grpc.aio.insecure_channel(address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            request = pb.ClassifyRequest(model="sentiment", texts=["where is my order"] * 4)
            calls = [asyncio.ensure_future(stub.Classify(request)) for _ in range(64)]
            await asyncio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        succeeded = [o for o in outcomes if isinstance(o, pb.ClassifyResponse)]
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert succeeded, "requests accepted before SIGTERM must complete"
        assert len(succeeded) + len(refused) == len(calls)
        # Only requests that arrived after the drain started may be refused, and only as UNAVAILABLE.
        assert all(error.code() == grpc.StatusCode.UNAVAILABLE for error in refused), [e.code() for e in refused]
        assert process.wait(timeout=30) == 0
        log = process.stderr.read().decode() if process.stderr else ""
        assert "draining" in log
        assert f"event_loop = {event_loop}" in log  # the effective configuration, as logged at start


async def test_sigterm_while_callers_keep_sending_to_a_full_queue_answers_every_call(model_repo: Path) -> None:
    """Callers that ignore health keep sending for seconds after SIGTERM: each call is served, refused as the
    queue is full, or refused UNAVAILABLE while draining; none is CANCELLED by the transport stopping."""
    with spawned_service(
        "services.classifier",
        model_repo,
        "--model-names",
        "intent",
        "--max-queue-size",
        "64",
        "--inference-threads",
        "1",
        "--grace-period-s",
        "20",
    ) as (process, address):
        await asyncio.to_thread(wait_serving, address, process, 60.0, "the classifier")
        codes: Counter[str] = Counter()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            request = pb.ClassifyRequest(model="intent", texts=["where is my order, it is late"] * 8)

            async def call() -> None:
                try:
                    await stub.Classify(request, timeout=15)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    codes[error.code().name] += 1

            loop = asyncio.get_running_loop()
            calls = []
            started = loop.time()
            while loop.time() - started < 4.0:  # open loop, bursts of 20 calls every 10 ms, SIGTERM after 1 s
                calls += [asyncio.ensure_future(call()) for _ in range(20)]
                if len(calls) == 2000:
                    process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.01)
            await asyncio.gather(*calls)
        assert codes["OK"] and codes["UNAVAILABLE"], codes
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}, codes
        assert process.wait(timeout=30) == 0
