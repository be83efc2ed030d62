"""`python -m services.classifier` as a real process: health over time and SIGTERM under load."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
from ecomserve.classifier.v1 import classifier_pb2 as pb
from ecomserve.classifier.v1 import classifier_pb2_grpc

from services.launcher import wait_serving
from tests.integration.conftest import spawned_service


async def test_sigterm_under_load_completes_every_accepted_request(model_repo: Path) -> None:
    with spawned_service(
        "services.classifier",
        model_repo,
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
