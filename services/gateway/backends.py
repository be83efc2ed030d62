"""The gateway's backends: one gRPC channel per backend kind over all of its replicas.

Each channel balances round robin over the replicas whose grpc.health.v1 status is SERVING (client-side health
checking: a draining or loading replica gets no new calls), retries UNAVAILABLE with backoff through the service
config, and keeps its connections alive. Calls get the caller's remaining time minus a margin and its request id.
Backend failures become the gateway's domain errors, naming the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.context import Context

from services.core import errors, metrics, tracing, wire
from services.core.logs import add_tokens, current_traceparent
from services.core.tls import channel_credentials

log = logging.getLogger(__name__)

KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
# Replicas come back within seconds on Kubernetes; gRPC's default backoff grows to 120 s.
MAX_RECONNECT_BACKOFF_MS = 2_000
# A replaced channel (rotated TLS files) stays open this long for the calls still on it (streams included).
CHANNEL_CLOSE_GRACE_S = 300.0
RENEW_CONNECT_S = 10.0
# When one of several replicas dies, the channel can pass through a moment with no READY replica while another
# still serves (CI saw hundreds of calls refused in one). New calls wait this long for a replica before the
# backend counts as down and its calls fail at once.
OUTAGE_GRACE_S = 1.0


@dataclass(frozen=True)
class BackendTls:
    """TLS to the backends: the CA that signed their certificates, the gateway's client certificate and key (for
    backends that require mutual TLS), and the name to expect in their certificates when it is not the address's."""

    ca_file: str
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""

    @property
    def paths(self) -> list[str]:
        return [path for path in (self.ca_file, self.cert_file, self.key_file) if path]


@dataclass(frozen=True)
class CallContext:
    """What the gateway knows about one incoming call: who, which request id, until when (event-loop time), and
    its trace context when tracing is on (a coalesced backend call continues its first caller's trace)."""

    caller: str
    request_id: str
    deadline: float | None
    trace: Context | None = None


def channel_target(addresses: str) -> str:
    """`dns:///name:port` (all A records, re-resolved on failure) passes through; a comma-separated HOST:PORT list
    becomes one `ipv4:`/`ipv6:` target so that a single channel balances over every listed replica."""
    addresses = addresses.strip()
    if ":///" in addresses or "," not in addresses:
        return addresses
    resolved = [_resolve(address.strip()) for address in addresses.split(",") if address.strip()]
    families = {family for family, _ in resolved}
    if len(families) > 1:
        raise ValueError(f"{addresses!r} mixes IPv4 and IPv6 replicas; list one family or use dns:///")
    return f"{families.pop()}:{','.join(address for _, address in resolved)}"


def listed_replicas(addresses: str) -> int | None:
    """How many replicas `addresses` names, when the list says: a comma-separated list (one replica each, see
    channel_target) or a single IP address. None for a name the channel resolves itself (dns:///, a hostname),
    which may stand for any number of replicas."""
    entries = [address.strip() for address in addresses.split(",") if address.strip()]
    if len(entries) > 1:
        return len(entries)
    try:
        ipaddress.ip_address(entries[0].rpartition(":")[0].strip("[]"))
    except ValueError:
        return None
    return 1


def _resolve(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"backend address {address!r} must be HOST:PORT")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = ipaddress.ip_address(socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][4][0])
    if ip.version == 6:
        return "ipv6", f"[{ip}]:{port}"
    return "ipv4", f"{ip}:{port}"


def service_config(service_name: str, max_attempts: int) -> str:
    config: dict[str, Any] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": service_name},
    }
    if max_attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{"service": service_name}],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    # When a replica dies, the calls in flight on it fail UNAVAILABLE and are sent again to another
                    # (traced with grpc 1.85: round_robin keeps the channel READY on the survivor). Once a channel
                    # was seen with no READY replica for 160 ms after such a kill, so the backoff spans more:
                    # 0.1 s doubling over 5 attempts is ~0.75 s on average.
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


class Backend:
    """All replicas of one backend service (`name` is "classifier" or "generator"), behind one channel.

    `ready` is True while at least one replica is connected and SERVING. `unary` and `stream` make calls with the
    caller's deadline and request id, record backend metrics, and raise domain errors naming the backend.
    """

    def __init__(
        self,
        name: str,
        addresses: str,
        service_name: str,
        stub_classes: Sequence[Callable[[grpc.aio.Channel], Any]],
        *,
        max_attempts: int,
        default_timeout_s: float,
        deadline_margin_s: float,
        tls: BackendTls | None = None,
    ) -> None:
        self.name = name
        self.target = channel_target(addresses)
        self._default_timeout_s = default_timeout_s
        self._margin_s = deadline_margin_s
        self._stub_classes = list(stub_classes)  # the services the backend serves; method names differ between them
        self.tls = tls
        self._options = [
            ("grpc.service_config", service_config(service_name, max_attempts)),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
            # Never idle: `ready` (and so failing fast) follows the channel's state, which an idle channel
            # would leave READY only after a reconnect.
            ("grpc.client_idle_timeout_ms", 2**31 - 1),
            ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
        ]
        if tls is not None and tls.server_name:
            self._options.append(("grpc.ssl_target_name_override", tls.server_name))
        self.channel = self._open_channel()
        self._rpcs = self._rpcs_of(self.channel)
        self._renewed = asyncio.Event()
        self._retiring: set[asyncio.Task[None]] = set()  # replaced channels closing after their calls
        self.ready = False  # what probes see: a replica is SERVING, or was less than OUTAGE_GRACE_S ago
        self._serving = asyncio.Event()  # set while the channel is READY
        self._unready_since = 0.0  # event-loop time the channel last left READY
        metrics.BACKEND_READY.labels(name).set(0)

    def _open_channel(self) -> grpc.aio.Channel:
        interceptors = tracing.client_interceptors()  # a span per backend call, its context in the metadata
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self._options, interceptors=interceptors)
        credentials = channel_credentials(self.tls.ca_file, self.tls.cert_file, self.tls.key_file)
        return grpc.aio.secure_channel(self.target, credentials, options=self._options, interceptors=interceptors)

    def _rpcs_of(self, channel: grpc.aio.Channel) -> dict[str, Any]:
        """Method name -> callable over `channel`, for every service of the backend."""
        rpcs: dict[str, Any] = {}
        for stub_class in self._stub_classes:
            stub = stub_class(channel)
            rpcs.update({name: rpc for name, rpc in vars(stub).items() if not name.startswith("_")})
        return rpcs

    async def renew_channel(self) -> None:
        """A new channel with the TLS files as they are now (a rotated client certificate); calls in flight
        finish on the old one, which closes after them (at most CHANNEL_CLOSE_GRACE_S). The new channel takes
        over once it reaches a SERVING replica (or after RENEW_CONNECT_S), so new calls never find it connecting."""
        new = self._open_channel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(new.channel_ready(), RENEW_CONNECT_S)
        old, self.channel = self.channel, new
        self._rpcs = self._rpcs_of(self.channel)
        self._renewed.set()  # `watch` follows the new channel from now on
        log.info("%s backend: new channel with the TLS files re-read", self.name)
        retiring = asyncio.create_task(old.close(CHANNEL_CLOSE_GRACE_S))  # not awaited: the next change may come
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)

    async def watch(self, on_change: Callable[[], Awaitable[None]]) -> None:
        """Follow the channel's connectivity (it is READY while a replica is SERVING) until cancelled. The backend
        stops being ready only once the channel has been without a READY replica for OUTAGE_GRACE_S."""
        while True:
            state = self.channel.get_state(try_to_connect=True)
            if state is grpc.ChannelConnectivity.READY:
                self._serving.set()
            elif self._serving.is_set():
                self._serving.clear()
                self._unready_since = asyncio.get_running_loop().time()
            grace_left = self._grace_left()
            ready = self._serving.is_set() or (self.ready and grace_left > 0)
            if ready != self.ready:
                self.ready = ready
                metrics.BACKEND_READY.labels(self.name).set(int(ready))
                log.log(
                    logging.INFO if ready else logging.WARNING,
                    "%s backend (%s): %s",
                    self.name,
                    self.target,
                    "a replica is SERVING" if ready else f"no SERVING replica ({state.name})",
                )
                await on_change()
            changed = asyncio.ensure_future(self.channel.wait_for_state_change(state))
            renewed = asyncio.ensure_future(self._renewed.wait())
            in_grace = self.ready and not self._serving.is_set()
            try:
                await asyncio.wait(
                    {changed, renewed}, timeout=grace_left if in_grace else None, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                changed.cancel()
                renewed.cancel()
            self._renewed.clear()

    async def unary(self, method: str, request: Any, call: CallContext) -> Any:
        """Call the unary RPC `method` of the backend's service."""
        await self._wait_for_serving(method, call)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            rpc = self._rpcs[method]
            with tracing.attached(call.trace):  # the client span's parent, also from a background task
                pending = rpc(request, timeout=self.remaining_time(call), metadata=_metadata(call))
            response = await pending
            self._count_retries(method, await pending.trailing_metadata())
            _note_usage(response)
            return response
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise self._domain_error(error, call) from None
        finally:
            self._record(method, code, started)

    async def stream(self, method: str, request: Any, call: CallContext) -> AsyncIterator[Any]:
        """Call the server-streaming RPC `method` of the backend's service."""
        await self._wait_for_serving(method, call)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        rpc = self._rpcs[method]
        with tracing.attached(call.trace):
            responses = rpc(request, timeout=self.remaining_time(call), metadata=_metadata(call))
        try:
            async for response in responses:
                _note_usage(response)
                yield response
            self._count_retries(method, await responses.trailing_metadata())
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise self._domain_error(error, call) from None
        except BaseException:  # the caller went away or stopped reading: stop the backend's sequence too
            code = grpc.StatusCode.CANCELLED
            responses.cancel()
            raise
        finally:
            self._record(method, code, started)

    async def aclose(self) -> None:
        for retiring in self._retiring:
            retiring.cancel()
        await self.channel.close()

    async def _wait_for_serving(self, method: str, call: CallContext) -> None:
        """Fail fast while the backend is down: a call would only wait for connection attempts and retries. In the
        grace after the channel lost its last READY replica, wait for one to come back (within the deadline)."""
        if self._serving.is_set():
            return
        if self.ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._serving.wait(), min(self._grace_left(), self.remaining_time(call)))
            if self._serving.is_set():
                return
        self._record(method, grpc.StatusCode.UNAVAILABLE, time.perf_counter())
        raise errors.Unavailable(f"the {self.name} backend has no SERVING replica; retry later")

    def _grace_left(self) -> float:
        """Seconds left of OUTAGE_GRACE_S since the channel last left READY (<= 0 once it has passed)."""
        return self._unready_since + OUTAGE_GRACE_S - asyncio.get_running_loop().time()

    def remaining_time(self, call: CallContext) -> float:
        """Seconds the backend may take for `call`: its deadline less the margin (or the default timeout)."""
        if call.deadline is None:
            return self._default_timeout_s
        remaining = call.deadline - asyncio.get_running_loop().time() - self._margin_s
        if remaining <= 0:
            raise errors.DeadlineExceeded(
                f"the deadline leaves no time for the {self.name} backend (the gateway keeps "
                f"{self._margin_s * 1000:.0f} ms to answer)"
            )
        return remaining

    def _domain_error(self, error: grpc.aio.AioRpcError, call: CallContext) -> BaseException:
        code, details = error.code(), error.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE:
            # The details name replica addresses and connection errors: for the log, not for callers.
            log.debug(
                "%s backend (%s) unavailable for request %s: %s", self.name, self.target, call.request_id, details
            )
            return errors.Unavailable(f"the {self.name} backend is unavailable; retry later")
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return errors.DeadlineExceeded(f"deadline exceeded while the {self.name} backend worked on the request")
        if code is grpc.StatusCode.CANCELLED:
            return asyncio.CancelledError()
        passed_through = PASSED_THROUGH.get(code)
        if passed_through is not None:
            passed = passed_through(details)  # the backend's message already names the field and the limit
            if isinstance(passed, errors.ResourceExhausted):
                passed.retry_after_s = retry_after_s(error)
            return passed
        # The backend's own bug: logged here with the request id, INTERNAL to the caller.
        return BackendFailure(f"{self.name} backend failed with {code.name} ({details}); request {call.request_id}")

    def _count_retries(self, method: str, trailing: grpc.aio.Metadata | None) -> None:
        previous = trailing.get(wire.PREVIOUS_ATTEMPTS) if trailing is not None else None
        if previous:
            metrics.BACKEND_RETRIES.labels(self.name, method).inc(int(previous))
            tracing.add_event("backend retried", backend=self.name, method=method, attempts=int(previous) + 1)

    def _record(self, method: str, code: grpc.StatusCode, started: float) -> None:
        metrics.BACKEND_REQUESTS.labels(self.name, method, code.name).inc()
        metrics.BACKEND_DURATION.labels(self.name, method).observe(time.perf_counter() - started)


def configured_generator(generator: Backend | None) -> Backend:
    """The generator backend, or UNAVAILABLE for a call that needs one on a gateway started without it."""
    if generator is None:
        raise errors.Unavailable("no generator backend is configured on this gateway (--generator)")
    return generator


def _metadata(call: CallContext) -> tuple[tuple[str, str], ...]:
    """The request id, and the caller's trace context so that the backend's log lines carry its trace id (with
    tracing on, the client spans carry their own)."""
    traceparent = "" if tracing.active() else current_traceparent()
    request_id = (wire.REQUEST_ID, call.request_id)
    return (request_id, (wire.TRACEPARENT, traceparent)) if traceparent else (request_id,)


def _note_usage(response: Any) -> None:
    """A generator's answer carries its token counts: they go on the gateway call's access line."""
    if "usage" in response.DESCRIPTOR.fields_by_name and response.HasField("usage"):
        add_tokens(response.usage.prompt_tokens, response.usage.completion_tokens)


def retry_after_s(error: grpc.aio.AioRpcError) -> float | None:
    """The google.rpc.RetryInfo delay a backend attached to its status, if any."""
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


class BackendFailure(RuntimeError):
    """A backend answered with an error that is neither the caller's fault nor an outage."""


PASSED_THROUGH: dict[grpc.StatusCode, type[errors.ServingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
}
