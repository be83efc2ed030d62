"""Admission's pure parts: request ids checked at the edge, API key rules, bounded rate-limit buckets."""

from __future__ import annotations

import pytest

from services.core.wire import checked_request_id
from services.gateway.admission import peer_host
from services.gateway.auth import ApiKeys, RateLimited, RateLimiter


@pytest.mark.parametrize("request_id", ["abc-123", "a.b_c:d/e+f=g@h~i", "x" * 128])
def test_a_safe_request_id_is_kept(request_id: str) -> None:
    assert checked_request_id(request_id) == request_id


@pytest.mark.parametrize("request_id", [None, "", "café", "a,b", "two words", "x" * 129, "line\nbreak", "caf\udce9"])
def test_any_other_request_id_is_replaced_by_a_new_one(request_id: str | None) -> None:
    replaced = checked_request_id(request_id)
    assert replaced != request_id and len(replaced) == 32 and replaced.isalnum()
    assert checked_request_id(request_id) != replaced


@pytest.mark.parametrize(
    ("peer", "host"), [("ipv4:10.0.0.7:5123", "10.0.0.7"), ("ipv6:[::1]:5123", "::1"), ("unix:/tmp/s", "unix:/tmp/s")]
)
def test_peer_host_drops_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_keys_shorter_than_16_characters_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        ApiKeys.from_entries(["me=0123456789abcde"[:17], "short=0123456789"])
    keys = ApiKeys.from_entries(["me=0123456789abcdef"])
    assert keys.authenticate(None, "0123456789abcdef") == "me"


def test_rate_limiter_keeps_a_bounded_number_of_buckets() -> None:
    limiter = RateLimiter(0.001, 1, max_callers=3)
    for caller in ("a", "b", "c"):
        limiter.acquire(caller)
    with pytest.raises(RateLimited):
        limiter.acquire("a")
    limiter.acquire("d")  # no bucket has refilled: the oldest ("a") is forgotten to make room
    limiter.acquire("a")
    with pytest.raises(RateLimited):
        limiter.acquire("d")
