"""Server bootstrap shared by every service: grpc.aio server, status interceptor, grpc.health.v1 (overall and per
service name), reflection, /metrics, and the lifecycle (load -> SERVING -> SIGTERM -> NOT_SERVING -> drain -> exit).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.core import config as config_parsing
from services.core import errors, metrics, tracing, wire
from services.core.inflight import InflightCalls
from services.core.listener import serve_metrics
from services.core.logs import configure_logging
from services.core.status import StatusInterceptor

log = logging.getLogger(__name__)

Register = Callable[[grpc.aio.Server], None]

# Quiet this long before the transport stops: a caller whose sends lag (a busy client, a slow network) may still
# have calls on the way after a shorter gap, and those would be CANCELLED.
QUIET_PERIOD_S = 1.0
# The grpc.health.v1 name of liveness probes: SERVING from bind to exit, loading and draining included, so that
# Kubernetes restarts only a process that no longer answers (readiness probes use the service's own name).
LIVENESS_SERVICE = "liveness"
# Calls the transport has received that the event loop has not taken yet. Past gRPC's default (1,000, with random
# early drops up to 3,000) the core drops such calls as CANCELLED, which a caller cannot tell from its own cancel and
# does not retry; the servicers refuse overload themselves (RESOURCE_EXHAUSTED, UNAVAILABLE), so this is set far
# above any backlog the event loop catches up with, and only bounds memory against a flood.
MAX_UNACCEPTED_CALLS = 20_000
# What goes wrong at start by the configuration or the machine, not by a bug (a missing model repository, a port
# in use, a file that does not parse): one line naming the cause and the fix, no traceback, exit code 2.
STARTUP_ERRORS = (errors.ModelFailure, OSError, ValueError)
STARTUP_EXIT_CODE = 2


class ServingServer:
    """A grpc.aio server that reports NOT_SERVING until `set_serving(True)` and drains gracefully.

    `ready`, when given, is a further condition of SERVING (the gateway's: every backend has a SERVING replica);
    call `refresh_health()` when it changes. `credentials` serve TLS instead of plaintext. `max_connection_age_s`
    closes each client connection after that long (GOAWAY; calls on it get `grace_s` to finish), so clients that
    resolve replicas through DNS reconnect and find new ones. Larger requests than `max_receive_bytes` get
    RESOURCE_EXHAUSTED from gRPC itself; calls past `max_inflight_calls` at once (0: no limit) get it from the
    interceptor.
    """

    def __init__(
        self,
        *,
        service: str,
        service_names: Sequence[str],
        address: str,
        register: Register,
        ready: Callable[[], bool] | None = None,
        credentials: grpc.ServerCredentials | None = None,
        max_connection_age_s: float = 0.0,
        grace_s: float = 30.0,
        max_receive_bytes: int = wire.MAX_MESSAGE_BYTES,
        max_inflight_calls: int = 0,
    ) -> None:
        self.service = service
        self._service_names = list(service_names)
        self._address = address
        self._ready = ready
        self._credentials = credentials
        self._serving = False
        self.calls = InflightCalls(service, max_inflight_calls)
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            # Clients (the gateway) keep idle connections alive with pings every 30 s: allow them.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.server.max_pending_requests", MAX_UNACCEPTED_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_UNACCEPTED_CALLS),
        ]
        if max_connection_age_s > 0:
            options += [
                ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(grace_s * 1000)),
            ]
        self.server = grpc.aio.server(interceptors=[StatusInterceptor(self.calls)], options=options)
        register(self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0
        self.stopping = asyncio.Event()
        self.failure: str | None = None

    def fail(self, reason: str) -> None:
        """The model runtime can no longer run: go NOT_SERVING, drain and exit non-zero (Kubernetes restarts us)."""
        if self.failure is None:
            log.critical("fatal: %s", reason)
            self.failure = reason
            self.stopping.set()

    async def start(self) -> int:
        """Bind and start; health is NOT_SERVING until set_serving(True). Returns the bound port."""
        try:
            if self._credentials is None:
                self.port = self.server.add_insecure_port(self._address)
            else:
                self.port = self.server.add_secure_port(self._address, self._credentials)
        except RuntimeError:  # grpc's "Failed to bind to address"
            self.port = 0
        if self.port == 0:
            raise OSError(
                f"cannot listen on {self._address}: the port is in use (perhaps as another socket's local port) or "
                f"the address is not this machine's; choose another with {listen_flags(self.service, 'port')}"
            )
        await self.set_serving(False)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        self._serving = serving
        await self.refresh_health()

    @property
    def serving(self) -> bool:
        return self._serving and (self._ready is None or self._ready())

    async def refresh_health(self) -> None:
        serving = self.serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self._service_names]:
            await self.health.set(name, status)
        metrics.SERVING.labels(self.service).set(1 if serving else 0)

    async def drain(self, grace_s: float) -> None:
        """NOT_SERVING at once (load balancers stop sending), refuse new RPCs with UNAVAILABLE, let every RPC
        already received finish, and stop the transport once callers have stopped arriving (or grace_s passed)."""
        await self.set_serving(False)
        self.calls.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        # Stopping the server cancels (CANCELLED, not retryable) the calls its transport received but not yet
        # handed to a handler: while callers still arrive, some always are, so the server keeps answering
        # UNAVAILABLE until QUIET_PERIOD_S passed without a new call.
        while loop.time() < deadline:
            if not await self.calls.wait_idle(deadline - loop.time()):
                break
            quiet_s = time.perf_counter() - self.calls.last_call_at
            if quiet_s >= QUIET_PERIOD_S and self.calls.count == 0:
                break
            await asyncio.sleep(min(QUIET_PERIOD_S - quiet_s, max(0.0, deadline - loop.time())))
        if self.calls.count:
            log.warning(
                "%d RPCs still running after the %.1f s grace period; cancelling them",
                self.calls.count,
                grace_s,
            )
        await self.server.stop(0.5)


def collect_frozen() -> None:
    """One full collection, frozen objects included, then freeze what survives: after start-up, and after a model
    version is unloaded, whose reference cycles (a model and its batcher, say) only the collector frees."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def listen_flags(component: str, field_name: str) -> str:
    """How a user sets a listening knob: its flag and its environment twin."""
    return f"--{field_name.replace('_', '-')} (or {config_parsing.env_name(component, field_name)})"


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline as an absolute event-loop time, or None when the caller set none."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


async def run_until_signal(
    server: ServingServer,
    *,
    load: Callable[[], Coroutine[Any, Any, None]],
    close: Callable[[], Awaitable[None]],
    grace_s: float,
) -> int:
    """Serve: start, load (then SERVING), wait for SIGTERM/SIGINT, drain within grace_s, close. Exit code."""
    loop = asyncio.get_running_loop()
    stopping = server.stopping
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        port = await server.start()
    except OSError as error:
        log.error("cannot start %s: %s", server.service, error)
        return STARTUP_EXIT_CODE
    log.info("%s listening on port %d (NOT_SERVING until ready)", server.service, port)
    loading = loop.create_task(load())
    stop_wait = loop.create_task(stopping.wait())
    await asyncio.wait({loading, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if loading.done():
        failure = loading.exception()
        if isinstance(failure, STARTUP_ERRORS):  # nothing was served: stop without draining
            log.error("cannot start %s: %s", server.service, failure)
            await server.server.stop(0)
            await close()
            return STARTUP_EXIT_CODE
        if failure is not None:
            log.error("loading failed; exiting", exc_info=failure)
            exit_code = 1
            stopping.set()
        else:
            # What is loaded now lives until a version is unloaded: move it out of the collector's reach, so that
            # a full collection does not walk it and stall the event loop (measured: 17-27 ms, 3 times in 8 s at
            # 650 requests/s; <1 ms frozen). An unload collects it all once (collect_frozen).
            collect_frozen()
            await server.set_serving(True)
            log.info("%s loaded; %s", server.service, "SERVING" if server.serving else "NOT_SERVING until ready")
    else:
        loading.cancel()
    await stopping.wait()
    stop_wait.cancel()
    log.info("%s draining (grace %.1f s)", server.service, grace_s)
    await server.drain(grace_s)
    await close()
    log.info("%s stopped", server.service)
    return 1 if server.failure else exit_code


def serve_main(
    config_class: type[Any],
    component: str,
    make_app: Callable[[Any], Any],
    argv: list[str] | None,
    *,
    description: str,
) -> int:
    """The body of every `python -m services.<component>`: parse the config (flags and ECOMSERVE_* env), log it,
    expose /metrics, then build the app (`.server`, `.load`, `.close`) and run it until SIGTERM. Exit code."""
    config = config_parsing.parse(
        config_class, component, argv, prog=f"python -m services.{component}", description=description
    )
    configure_logging(config.log_level, config.log_format, component)
    if tracing.configure_tracing(component):
        log.info("tracing: spans go over OTLP as the OTEL_* environment variables say")
    log.info("effective config:\n%s", config_parsing.describe(config))
    try:
        serve_metrics(config.metrics_host, config.metrics_port)
    except OSError as error:
        log.error(
            "cannot serve /metrics on %s:%d (%s); choose another port with %s",
            config.metrics_host,
            config.metrics_port,
            error.strerror or error,
            listen_flags(component, "metrics_port"),
        )
        return STARTUP_EXIT_CODE

    async def serve() -> int:
        try:
            app = make_app(config)  # inside the loop: the app's server and batchers bind to it
        except STARTUP_ERRORS as error:  # a bad file named by the config: say which, without a traceback
            log.error("cannot start %s: %s", component, error)
            return STARTUP_EXIT_CODE
        return await run_until_signal(app.server, load=app.load, close=app.close, grace_s=config.grace_period_s)

    with asyncio.Runner(loop_factory=event_loop_factory(config.event_loop)) as runner:
        return runner.run(serve())


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The serving loop's factory: uvloop's (its callbacks, timers and socket handling cost the loop thread less
    per gRPC call), or asyncio's own. grpc.aio and aiohttp run on either."""
    return uvloop.new_event_loop if name == "uvloop" else asyncio.new_event_loop
