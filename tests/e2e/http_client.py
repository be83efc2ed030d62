"""A small JSON-over-HTTP client for the gateway tests (urllib: no extra dependency)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any


def _request(url: str, body: Any, key: str | None, headers: Mapping[str, str]) -> urllib.request.Request:
    all_headers = {"content-type": "application/json", **headers}
    if key is not None:
        all_headers["x-api-key"] = key
    data = None if body is None else json.dumps(body).encode()
    return urllib.request.Request(url, data=data, method="GET" if body is None else "POST", headers=all_headers)


def call(url: str, body: Any = None, key: str | None = None, timeout: float = 60, **headers: str) -> Reply:
    """POST `body` as JSON (GET when None); the reply's JSON body, also for error statuses."""
    try:
        with urllib.request.urlopen(_request(url, body, key, headers), timeout=timeout) as response:
            return Reply(response.status, response.headers, json.loads(response.read()))
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.headers, json.loads(error.read()))


def stream(url: str, body: Any, key: str | None = None, sse: bool = False, timeout: float = 60, **extra: str) -> Reply:
    """POST and read a streamed reply: a list of JSON frames (JSON lines, or server-sent events' data)."""
    headers = {"accept": "text/event-stream", **extra} if sse else dict(extra)
    try:
        with urllib.request.urlopen(_request(url, body, key, headers), timeout=timeout) as response:
            text = response.read().decode()
            content_type = response.headers["content-type"]
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.headers, json.loads(error.read()))
    if sse:
        frames = [json.loads(line.removeprefix("data: ")) for line in text.splitlines() if line.startswith("data: ")]
    else:
        frames = [json.loads(line) for line in text.splitlines() if line]
    return Reply(200, {"content-type": content_type}, frames)
