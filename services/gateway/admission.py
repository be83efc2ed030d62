"""Admission of an incoming call, for both transports: authenticate the API key, apply its rate limit, take or
make the request id, and fix the deadline."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping

from services.core import metrics
from services.gateway.auth import ApiKeys, RateLimited, RateLimiter
from services.gateway.backends import CallContext

log = logging.getLogger(__name__)
SERVICE = "gateway"
MAX_REQUEST_ID_CHARS = 128


class Admission:
    def __init__(self, keys: ApiKeys, limiter: RateLimiter) -> None:
        self._keys = keys
        self._limiter = limiter

    def admit(self, headers: Mapping[str, str], timeout_s: float | None) -> CallContext:
        """`headers`: lower-case names (gRPC metadata or HTTP headers). Raises Unauthenticated or RateLimited."""
        request_id = headers.get("x-request-id", "")[:MAX_REQUEST_ID_CHARS] or uuid.uuid4().hex
        caller = self._keys.authenticate(headers.get("authorization"), headers.get("x-api-key"))
        try:
            self._limiter.acquire(caller)
        except RateLimited:
            metrics.RATE_LIMITED.labels(SERVICE, caller).inc()
            log.info("request %s from %s refused: rate limit", request_id, caller)
            raise
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        return CallContext(caller=caller, request_id=request_id, deadline=deadline)
