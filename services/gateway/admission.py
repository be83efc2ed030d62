"""Admission of an incoming call, for both transports: authenticate the API key, apply its rate limit, take or
make the request id, and fix the deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from services.core import errors, metrics, tracing
from services.core.logs import note
from services.core.wire import REQUEST_ID, checked_request_id
from services.gateway.auth import ApiKeys, RateLimited, RateLimiter
from services.gateway.backends import CallContext

log = logging.getLogger(__name__)
SERVICE = "gateway"
# The api_key label of ecomserve_rate_limited_requests_total for calls refused after failed authentications.
AUTH_FAILURES = "(failed authentication)"


class Admission:
    """`keys` may be replaced at any time (a rotated keys file); `auth_failures` limits failed authentications per
    peer address."""

    def __init__(self, keys: ApiKeys, limiter: RateLimiter, auth_failures: RateLimiter) -> None:
        self.keys = keys
        self._limiter = limiter
        self._auth_failures = auth_failures

    def admit(self, headers: Mapping[str, str], timeout_s: float | None, peer: str) -> CallContext:
        """`headers`: lower-case names (gRPC metadata or HTTP headers); `peer`: the caller's address. Raises
        Unauthenticated, or RateLimited (the key's rate, or too many failed authentications from `peer`)."""
        request_id = checked_request_id(headers.get(REQUEST_ID))
        caller = self._authenticate(headers, peer, request_id)
        try:
            self._limiter.acquire(caller)
        except RateLimited:
            metrics.RATE_LIMITED.labels(SERVICE, caller).inc()
            log.info("request %s from %s refused: rate limit", request_id, caller)
            raise
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        note(api_key=caller, request_id=request_id)
        return CallContext(caller=caller, request_id=request_id, deadline=deadline, trace=tracing.current_context())

    def _authenticate(self, headers: Mapping[str, str], peer: str, request_id: str) -> str:
        """A valid key is always accepted (a peer address may be a proxy that other callers share too); a peer
        whose failures passed its limit gets RESOURCE_EXHAUSTED instead of UNAUTHENTICATED, and no log line."""
        try:
            return self.keys.authenticate(headers.get("authorization"), headers.get("x-api-key"))
        except errors.Unauthenticated as refusal:
            try:
                self._auth_failures.acquire(peer)
            except RateLimited as limited:
                metrics.RATE_LIMITED.labels(SERVICE, AUTH_FAILURES).inc()
                raise TooManyAuthFailures(peer, limited.retry_after_s) from None
            log.info("request %s from %s refused: %s", request_id, peer, refusal)
            raise


class TooManyAuthFailures(errors.ResourceExhausted):
    def __init__(self, peer: str, retry_after_s: float | None) -> None:
        super().__init__(f"too many failed authentications from {peer}; retry after {retry_after_s or 1:.2f} s")
        self.retry_after_s = retry_after_s


def peer_host(peer: str) -> str:
    """The address of a gRPC peer (`ipv4:10.0.0.7:5123`, `ipv6:[::1]:5123`) without its port."""
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    return address.rpartition(":")[0].strip("[]")
