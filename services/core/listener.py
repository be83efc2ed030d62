"""HttpListener: an aiohttp application on a TCP port, guarded against callers that hold connections.

Every HTTP surface of the project (the gateway's JSON API, each service's /metrics) listens through it, so they
share three guards: a connection that has not sent a whole request head within `idle_timeout_s` of opening or of
its last response is closed (slow or idle clients cannot hold it); past `max_connections` open connections a new
one is answered 503 and closed at once; and nothing grows per connection but the connection itself (no thread).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import threading
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.aiohttp import make_aiohttp_handler

log = logging.getLogger(__name__)

OVERLOADED = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\nretry-after: 1\r\n\r\n"


class _Refusal(asyncio.Protocol):
    """What a connection past the cap gets: a 503 and a close, without reading anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transport writes; uvloop's are not asyncio.Transport subclasses, so no isinstance check.
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(OVERLOADED)
        writer.close()


class _ClientMistakesLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp logs a request it cannot parse (bad request line, oversized or invalid header) with a traceback at
    ERROR; that is the client's mistake, so it becomes one line at INFO. Real handler errors stay as they are."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(error, HttpProcessingError):
            reason = " ".join(str(error.message or type(error).__name__).split())  # aiohttp's spans lines
            self.logger.info("%s: %s", str(msg) % args, reason)
        else:
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


class HttpListener:
    """Serves `app` on (host, port); `start` returns the bound port, `aclose` stops it (connections finish the
    request in hand within a few seconds)."""

    def __init__(self, app: web.Application, *, idle_timeout_s: float, max_connections: int, name: str) -> None:
        self._name = name
        self._max_connections = max_connections
        # aiohttp closes a connection whose request head is not complete when this timer fires; it starts at
        # connection open and again after each response, and partial data does not restart it.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=idle_timeout_s,
            logger=_ClientMistakesLogger(logging.getLogger("aiohttp.server")),
        )
        self._server: asyncio.Server | None = None
        self.refused = 0
        self.port = 0

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        await self._runner.setup()
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, host, port, ssl=ssl_context, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()

    def _protocol(self) -> asyncio.BaseProtocol:
        requests = self._runner.server
        assert requests is not None
        if len(requests.connections) >= self._max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "%s: %d open connections, the most allowed; refused %d",
                    self._name,
                    len(requests.connections),
                    self.refused,
                )
            return _Refusal()
        return requests()


METRICS_IDLE_TIMEOUT_S = 15.0
METRICS_MAX_CONNECTIONS = 64


def serve_metrics(host: str, port: int) -> None:
    """Expose /metrics on (host, port) from one daemon thread with its own event loop, so that a scrape never
    waits for the service's loop and many scrapers cost no thread each; port 0 disables it. Returns once the port
    is bound, or raises the OSError that prevented it."""
    if not port:
        return
    bound = threading.Event()
    failure: list[OSError] = []

    async def listen() -> None:
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler())
        listener = HttpListener(
            app, idle_timeout_s=METRICS_IDLE_TIMEOUT_S, max_connections=METRICS_MAX_CONNECTIONS, name="metrics"
        )
        try:
            await listener.start(host, port)
        except OSError as error:
            failure.append(error)
            return
        finally:
            bound.set()
        await asyncio.Event().wait()  # serve for the life of the process

    threading.Thread(target=asyncio.run, args=(listen(),), name="metrics", daemon=True).start()
    bound.wait()
    if failure:
        raise failure[0]
