"""`python -m services.generator` as a real process: SIGTERM lets running streams finish, then exits 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
from ecomserve.generator.v1 import generator_pb2 as pb
from ecomserve.generator.v1 import generator_pb2_grpc

from services.dev.launcher import wait_serving
from tests.integration.conftest import spawned_service


async def test_sigterm_drains_running_streams(generator_repo: Path) -> None:
    with spawned_service("services.generator", generator_repo, "--grace-period-s", "20") as (process, address):
        await asyncio.to_thread(wait_serving, address, process, 60.0, "the generator")
        async with grpc.aio.insecure_channel(address) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            calls = [
                stub.GenerateStream(
                    pb.GenerateRequest(
                        model="llama",
                        prompt=f"where is my order {i}",
                        sampling=pb.SamplingParameters(max_new_tokens=120, temperature=1.0, seed=i),
                    )
                )
                for i in range(3)
            ]
            for call in calls:
                await call.read()  # every stream is running before the signal
            process.send_signal(signal.SIGTERM)

            async def finish(call: grpc.aio.UnaryStreamCall) -> pb.GenerateStreamResponse:
                last = pb.GenerateStreamResponse()
                while (message := await call.read()) is not grpc.aio.EOF:
                    last = message
                return last

            finals = await asyncio.gather(*(finish(call) for call in calls))
            assert all(final.finish_reason != pb.FINISH_REASON_UNSPECIFIED for final in finals)
            assert all(final.usage.completion_tokens >= 1 for final in finals)
        assert process.wait(timeout=30) == 0
        log = process.stderr.read().decode() if process.stderr else ""
        assert "draining" in log
