"""API keys (kept only as SHA-256 hashes, compared in constant time) and per-key token-bucket rate limits."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from services.core import errors

HASH_PREFIX = "sha256:"
ANONYMOUS = "anonymous"
# A shorter key could be guessed; `openssl rand -hex 24` makes a good one.
MIN_KEY_CHARS = 16


def hash_key(key: str) -> str:
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """Who may call: NAME -> sha256 of the key. `authenticate(headers)` returns the caller's name or raises
    Unauthenticated. With no keys and `allow_unauthenticated`, every caller is ANONYMOUS."""

    def __init__(self, hashes: Mapping[str, str], *, allow_unauthenticated: bool = False) -> None:
        self._digests = [(name, bytes.fromhex(digest.removeprefix(HASH_PREFIX))) for name, digest in hashes.items()]
        self.open = allow_unauthenticated and not self._digests

    @classmethod
    def from_entries(cls, entries: Iterable[str], *, allow_unauthenticated: bool = False) -> ApiKeys:
        """Entries `NAME=KEY` or `NAME=sha256:HEX` (from --api-keys or a keys file); a plain key is hashed at once."""
        hashes: dict[str, str] = {}
        for number, raw in enumerate(entries, 1):
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            name, sep, secret = entry.partition("=")
            name, secret = name.strip(), secret.strip()
            if not sep or not name or not secret:
                raise ValueError(f"API key entry {number} must be NAME=KEY or NAME=sha256:HEX")
            if secret.startswith(HASH_PREFIX):
                digest = secret.removeprefix(HASH_PREFIX).lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise ValueError(f"API key entry {number} ({name}): sha256: must be followed by 64 hex digits")
                hashes[name] = HASH_PREFIX + digest
            elif len(secret) < MIN_KEY_CHARS:
                raise ValueError(
                    f"API key entry {number} ({name}): keys must be at least {MIN_KEY_CHARS} characters, this one has "
                    f"{len(secret)}; make one with `openssl rand -hex 24`"
                )
            else:
                hashes[name] = hash_key(secret)
        if not hashes and not allow_unauthenticated:
            raise ValueError("no API keys configured: give --api-keys-file or --api-keys (or --allow-unauthenticated)")
        return cls(hashes, allow_unauthenticated=allow_unauthenticated)

    @classmethod
    def load(cls, file: str, entries: Iterable[str], *, allow_unauthenticated: bool = False) -> ApiKeys:
        lines = Path(file).read_text().splitlines() if file else []
        return cls.from_entries([*lines, *entries], allow_unauthenticated=allow_unauthenticated)

    def authenticate(self, authorization: str | None, api_key: str | None) -> str:
        if self.open:
            return ANONYMOUS
        key = api_key
        if authorization:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise errors.Unauthenticated("authorization must be `Bearer <API key>`")
            key = credentials.strip()
        if not key:
            raise errors.Unauthenticated("missing API key: send `authorization: Bearer <key>` or `x-api-key: <key>`")
        presented = hashlib.sha256(key.encode()).digest()
        caller = None
        for name, digest in self._digests:  # every digest is compared, so timing does not tell which one matched
            if hmac.compare_digest(presented, digest):
                caller = name
        if caller is None:
            raise errors.Unauthenticated("unknown API key")
        return caller


class RateLimited(errors.ResourceExhausted):
    """A key's token bucket is empty; `retry_after_s` says when one more request would pass."""

    def __init__(self, caller: str, retry_after_s: float) -> None:
        super().__init__(f"rate limit of API key {caller!r} exceeded; retry after {retry_after_s:.2f} s")
        self.retry_after_s = retry_after_s


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """One token bucket per caller: `rate_per_s` sustained, `burst` at once. rate_per_s = 0 disables it.

    At most `max_callers` buckets are kept (callers may be peer addresses, which an attacker can vary): past it,
    buckets that have refilled are forgotten, and if none has, the oldest.
    """

    def __init__(self, rate_per_s: float, burst: int, *, max_callers: int = 100_000) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max_callers = max_callers
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, caller: str) -> None:
        """Take one token for `caller` or raise RateLimited with the time until the next one."""
        if self._rate == 0:
            return
        now = time.monotonic()
        bucket = self._buckets.get(caller)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[caller] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise RateLimited(caller, (1.0 - bucket.tokens) / self._rate)
        bucket.tokens -= 1.0

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self._max_callers:
            return
        refill_s = self._burst / self._rate
        self._buckets = {caller: bucket for caller, bucket in self._buckets.items() if now - bucket.updated < refill_s}
        if len(self._buckets) >= self._max_callers:
            del self._buckets[next(iter(self._buckets))]
