"""`python -m services.classifier` as a real process: health over time and SIGTERM under load."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from ecomserve.classifier.v1 import classifier_pb2 as pb
from ecomserve.classifier.v1 import classifier_pb2_grpc

from services.launcher import free_port, wait_serving


async def test_sigterm_under_load_completes_every_accepted_request(model_repo: Path) -> None:
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - starting the child is instant; waits below are async
        [
            sys.executable,
            "-m",
            "services.classifier",
            "--models",
            str(model_repo),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--max-queue-delay-ms",
            "20",
            "--grace-period-s",
            "10",
        ],
        env={**os.environ, "ECOMSERVE_CLASSIFIER_MAX_BATCH_SIZE": "8"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await asyncio.to_thread(wait_serving, f"127.0.0.1:{port}", process, 60.0, "the classifier")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
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
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
