"""InflightCalls: the calls a service is answering, over every transport it serves (the gRPC interceptor, the
gateway's HTTP bridge): counted and timed in the request metrics, refused while draining, and waited for by the
drain, and refused past a limit on how many there may be at once."""

from __future__ import annotations

import asyncio
import time

import grpc

from services.core import errors, metrics
from services.core.logs import CallLog, log_access, open_call

# What a caller refused for the in-flight limit is told to wait: about how long the calls ahead take under overload.
INFLIGHT_RETRY_AFTER_S = 1.0


class InflightCalls:
    """`max_calls` (0: no limit) bounds the calls at once, so that the memory they hold stays bounded however many
    callers come: past it a call is refused before any work, as cheaply as the server can answer."""

    def __init__(self, service: str, max_calls: int = 0) -> None:
        self._service = service
        self._max_calls = max_calls
        self.count = 0
        self.last_call_at = 0.0  # time.perf_counter() of the latest call's start
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def refuse_new_calls(self) -> None:
        """UNAVAILABLE while draining, RESOURCE_EXHAUSTED past the limit: call after `begin`, before any work."""
        if self.draining:
            raise errors.Unavailable(f"{self._service} is shutting down; retry on another replica")
        if self._max_calls and self.count > self._max_calls:
            refusal = errors.ResourceExhausted(
                f"{self._service} is at its limit of {self._max_calls} calls in flight; retry later"
            )
            refusal.retry_after_s = INFLIGHT_RETRY_AFTER_S
            raise refusal

    def begin(self, request_id: str = "", traceparent: str | None = None) -> CallLog:
        """Count a call in flight (the drain waits for it) and open its access-log line, for `end`."""
        metrics.INFLIGHT.labels(self._service).inc()
        self.count += 1
        self._idle.clear()
        call = open_call(request_id, traceparent)
        self.last_call_at = call.started
        return call

    def end(self, method: str, code: grpc.StatusCode, call: CallLog) -> None:
        """The call is over with `code`: requests_total, request_duration_seconds and the access log record it."""
        metrics.INFLIGHT.labels(self._service).dec()
        self.count -= 1
        if self.count == 0:
            self._idle.set()
        metrics.REQUESTS.labels(self._service, method, code.name).inc()
        metrics.REQUEST_DURATION.labels(self._service, method).observe(time.perf_counter() - call.started)
        log_access(call, method, code.name)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in flight; False when timeout_s passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
