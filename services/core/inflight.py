"""InflightCalls: the calls a service is answering, over every transport it serves (the gRPC interceptor, the
gateway's HTTP bridge): counted and timed in the request metrics, refused while draining, and waited for by the
drain."""

from __future__ import annotations

import asyncio
import time

import grpc

from services.core import errors, metrics


class InflightCalls:
    def __init__(self, service: str) -> None:
        self._service = service
        self.count = 0
        self.last_call_at = 0.0  # time.perf_counter() of the latest call's start
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def refuse_new_calls(self) -> None:
        """UNAVAILABLE while draining: call before starting any work."""
        if self.draining:
            raise errors.Unavailable(f"{self._service} is shutting down; retry on another replica")

    def begin(self) -> float:
        """Count a call in flight (the drain waits for it); returns its start time for `end`."""
        metrics.INFLIGHT.labels(self._service).inc()
        self.count += 1
        self._idle.clear()
        self.last_call_at = time.perf_counter()
        return self.last_call_at

    def end(self, method: str, code: grpc.StatusCode, started: float) -> None:
        """The call is over with `code`: requests_total and request_duration_seconds record it."""
        metrics.INFLIGHT.labels(self._service).dec()
        self.count -= 1
        if self.count == 0:
            self._idle.set()
        metrics.REQUESTS.labels(self._service, method, code.name).inc()
        metrics.REQUEST_DURATION.labels(self._service, method).observe(time.perf_counter() - started)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in flight; False when timeout_s passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
