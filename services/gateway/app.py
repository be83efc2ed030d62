"""Assembly of the gateway: backends, admission, operations, the gRPC server and the HTTP bridge, and their
lifecycle. Used by __main__ and by tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from pathlib import Path

import grpc
from ecomserve.classifier.v1 import classifier_pb2
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ecomserve.generator.v1 import generator_pb2

from services.core.server import ServingServer
from services.gateway.admission import SERVICE, Admission
from services.gateway.auth import ApiKeys, RateLimiter
from services.gateway.backends import Backend
from services.gateway.config import GatewayConfig
from services.gateway.http import HttpBridge, HttpLimits
from services.gateway.operations import GatewayOperations, OperationLimits
from services.gateway.routing import RoutingTable
from services.gateway.servicer import GatewayServicer
from services.gateway.templates import PromptTemplates

log = logging.getLogger(__name__)
# How often the API keys file is checked for changes (SIGHUP reloads it at once).
KEYS_POLL_S = 2.0
SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].full_name
GENERATOR_SERVICE = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name


class GatewayApp:
    """`load` starts following the backends and opens HTTP; the gateway is SERVING (gRPC health and /readyz)
    only while every configured backend has a SERVING replica. `close` stops HTTP and closes the channels."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        keys = self._load_keys()
        if keys.open:
            log.warning("no API keys: every caller is accepted (--allow-unauthenticated)")

        def backend(name: str, addresses: str, service_name: str) -> Backend:
            return Backend(
                name,
                addresses,
                service_name,
                max_attempts=config.max_attempts,
                default_timeout_s=config.default_timeout_s,
                deadline_margin_s=config.deadline_margin_ms / 1000,
            )

        self.backends = [backend("classifier", config.classifier, CLASSIFIER_SERVICE)]
        if config.generator.strip():
            self.backends.append(backend("generator", config.generator, GENERATOR_SERVICE))
        templates = PromptTemplates.load(Path(config.templates))
        self.operations = operations = GatewayOperations(
            classifier=self.backends[0],
            generator=self.backends[1] if len(self.backends) > 1 else None,
            generator_model=config.generator_model,
            routing=RoutingTable.load(Path(config.routing_file)),
            templates=templates,
            limits=OperationLimits(
                config.max_text_chars,
                config.max_texts_per_request,
                route_max_texts_per_call=config.route_max_texts_per_call,
                route_max_calls=config.route_calls,
            ),
        )
        self.admission = admission = Admission(
            keys,
            RateLimiter(config.rate_limit_per_s, config.rate_limit_burst),
            auth_failures=RateLimiter(config.auth_failures_per_s, config.auth_failure_burst),
        )
        servicer = GatewayServicer(operations, admission)
        cert, key = _read_tls(config)
        self.server = ServingServer(
            service=SERVICE,
            service_names=[SERVICE_NAME],
            address=config.address,
            max_connection_age_s=config.max_connection_age_s,
            grace_s=config.grace_period_s,
            register=lambda server: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server),
            ready=lambda: all(backend.ready for backend in self.backends),
            credentials=None if cert is None else grpc.ssl_server_credentials([(key, cert)]),
            max_receive_bytes=config.max_request_bytes,
        )
        self.http = None
        if config.http_port >= 0:
            self.http = HttpBridge(
                operations,
                admission,
                self.server.interceptor,
                lambda: {backend.name: backend.ready for backend in self.backends},
                limits=HttpLimits(
                    max_body_bytes=config.max_request_bytes,
                    body_timeout_s=config.http_body_timeout_s,
                    idle_timeout_s=config.http_idle_timeout_s,
                    max_connections=config.http_max_connections,
                ),
                ssl_context=_ssl_context(config) if cert else None,
            )
        self._watchers: list[asyncio.Task[None]] = []
        self._reload_keys = asyncio.Event()
        log.info(
            "RouteMessage: up to %d Classify calls in flight, %d messages each",
            config.route_calls,
            config.route_max_texts_per_call,
        )
        log.info("prompt templates: %s", ", ".join(templates.operations()) or "none")

    async def load(self) -> None:
        self.operations.start()
        for backend in self.backends:
            log.info("%s backend: %s", backend.name, backend.target)
            self._watchers.append(asyncio.create_task(backend.watch(self.server.refresh_health)))
        if self.config.api_keys_file:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_keys.set)
            self._watchers.append(asyncio.create_task(self._follow_keys_file()))
        if self.http is not None:
            port = await self.http.start(self.config.host, self.config.http_port)
            log.info("gateway HTTP on port %d", port)

    def _load_keys(self) -> ApiKeys:
        config = self.config
        return ApiKeys.load(config.api_keys_file, config.api_keys, allow_unauthenticated=config.allow_unauthenticated)

    async def _follow_keys_file(self) -> None:
        """Re-read the keys file when it changes (a rotated Kubernetes Secret swaps it) or on SIGHUP; a file that
        cannot be read or parsed is logged and the keys in use stay."""
        seen = _file_version(self.config.api_keys_file)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_keys.wait(), KEYS_POLL_S)
            version = _file_version(self.config.api_keys_file)
            if version == seen and not self._reload_keys.is_set():
                continue
            self._reload_keys.clear()
            seen = version
            try:
                self.admission.keys = self._load_keys()
            except (OSError, ValueError) as error:
                log.error("API keys file %s not reloaded, the previous keys stay: %s", self.config.api_keys_file, error)
            else:
                log.info("API keys reloaded from %s", self.config.api_keys_file)

    async def close(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        if self.http is not None:
            await self.http.aclose()
        await self.operations.aclose()
        for backend in self.backends:
            await backend.aclose()


def _file_version(path: str) -> tuple[float, int, int] | None:
    """What tells that a file changed: modification time, size and inode (None while it is missing)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime, stat.st_size, stat.st_ino


def _read_tls(config: GatewayConfig) -> tuple[bytes | None, bytes | None]:
    if not config.tls_cert_file:
        return None, None
    return Path(config.tls_cert_file).read_bytes(), Path(config.tls_key_file).read_bytes()


def _ssl_context(config: GatewayConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context
