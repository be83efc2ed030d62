"""Assembly of the gateway: backends, admission, operations, the gRPC server and the HTTP bridge, and their
lifecycle. Used by __main__ and by tests."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ecomserve.classifier.v1 import classifier_pb2
from ecomserve.classifier.v1.classifier_pb2_grpc import ClassifierServiceStub
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ecomserve.generator.v1 import generator_pb2
from ecomserve.generator.v1.generator_pb2_grpc import GeneratorServiceStub
from inference.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from services.core.server import ServingServer, listen_flags
from services.core.tls import configured_credentials, watch_files
from services.gateway.admission import SERVICE, Admission
from services.gateway.auth import ApiKeys, RateLimiter
from services.gateway.backends import Backend
from services.gateway.config import GatewayConfig
from services.gateway.http import HttpBridge, HttpLimits
from services.gateway.operations import GatewayOperations, OperationLimits
from services.gateway.routing import RoutingTable
from services.gateway.servicer import GatewayServicer
from services.gateway.templates import PromptTemplates, template_files

log = logging.getLogger(__name__)
# How often the API keys, routing table, prompt templates and TLS files are checked for changes (SIGHUP re-reads
# them at once).
FILES_POLL_S = 2.0
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

        classifier_stubs = [ClassifierServiceStub, GRPCInferenceServiceStub]
        classifier = _backend(config, "classifier", config.classifier, CLASSIFIER_SERVICE, classifier_stubs)
        generator = None
        if config.generator.strip():
            generator = _backend(config, "generator", config.generator, GENERATOR_SERVICE, [GeneratorServiceStub])
        self.backends = [classifier] if generator is None else [classifier, generator]
        templates = PromptTemplates.load(Path(config.templates))
        self.operations = operations = GatewayOperations(
            classifier=classifier,
            generator=generator,
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
        self.server = ServingServer(
            service=SERVICE,
            service_names=[SERVICE_NAME],
            address=config.address,
            max_connection_age_s=config.max_connection_age_s,
            grace_s=config.grace_period_s,
            register=lambda server: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server),
            ready=lambda: all(backend.ready for backend in self.backends),
            credentials=configured_credentials(config.tls_cert_file, config.tls_key_file),
            max_receive_bytes=config.max_request_bytes,
            max_inflight_calls=config.max_inflight_calls,
        )
        self._ssl_context = _ssl_context(config)
        self.http = self._http_bridge(classifier, generator) if config.http_port >= 0 else None
        self._watchers: list[asyncio.Task[None]] = []
        self._reload_events: list[asyncio.Event] = []  # one per watcher of files, set on SIGHUP
        log.info(
            "RouteMessage: up to %d Classify calls in flight, %d messages each",
            config.route_calls,
            config.route_max_texts_per_call,
        )
        log.info("prompt templates: %s", ", ".join(templates.operations()) or "none")

    def _http_bridge(self, classifier: Backend, generator: Backend | None) -> HttpBridge:
        config = self.config
        return HttpBridge(
            self.operations,
            self.admission,
            self.server.calls,
            lambda: {backend.name: backend.ready for backend in self.backends},
            classifier=classifier,
            generator=generator,
            limits=HttpLimits(
                max_body_bytes=config.max_request_bytes,
                body_timeout_s=config.http_body_timeout_s,
                idle_timeout_s=config.http_idle_timeout_s,
                max_connections=config.http_max_connections,
            ),
            ssl_context=self._ssl_context,
        )

    async def load(self) -> None:
        self.operations.start()
        for backend in self.backends:
            log.info("%s backend: %s", backend.name, backend.target)
            self._watchers.append(asyncio.create_task(backend.watch(self.server.refresh_health)))
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_now)
        config = self.config
        self._follow([config.api_keys_file] if config.api_keys_file else [], self._reload_keys)
        self._follow([config.routing_file], self._reload_routing)
        self._follow(self._template_paths, self._reload_templates)
        self._follow(self._server_tls_files(), self._reload_http_certificate)
        if config.backend_tls is not None:
            self._follow(config.backend_tls.paths, self._renew_backend_channels)
        if self.http is not None:
            try:
                port = await self.http.start(config.host, config.http_port)
            except OSError as error:
                raise OSError(
                    f"cannot listen for HTTP on {config.host}:{config.http_port} ({error.strerror or error}); "
                    f"choose another port with {listen_flags('gateway', 'http_port')}"
                ) from None
            log.info("gateway HTTP on port %d", port)

    def _load_keys(self) -> ApiKeys:
        config = self.config
        return ApiKeys.load(config.api_keys_file, config.api_keys, allow_unauthenticated=config.allow_unauthenticated)

    def _follow(
        self, paths: list[str] | Callable[[], list[str]], on_change: Callable[[], Awaitable[None] | None]
    ) -> None:
        if paths:
            now = asyncio.Event()
            self._reload_events.append(now)
            self._watchers.append(asyncio.create_task(watch_files(paths, on_change, poll_s=FILES_POLL_S, now=now)))

    def _reload_now(self) -> None:
        """SIGHUP: every watched file is re-read at once."""
        for event in self._reload_events:
            event.set()

    def _reload_keys(self) -> None:
        """A rotated keys file (a Kubernetes Secret swaps it) takes effect for the next call."""
        self.admission.keys = self._load_keys()
        log.info("API keys reloaded from %s", self.config.api_keys_file)

    def _reload_routing(self) -> None:
        self.operations.replace_routing(RoutingTable.load(Path(self.config.routing_file)))
        log.info("routing table reloaded from %s", self.config.routing_file)

    def _template_paths(self) -> list[str]:
        """The template folder, its subfolders and files: a new, changed or removed template changes one of them."""
        folder = Path(self.config.templates)
        files = template_files(folder) if folder.is_dir() else []
        return [str(folder), *sorted({str(path.parent) for path in files}), *(str(path) for path in files)]

    def _reload_templates(self) -> None:
        templates = PromptTemplates.load(Path(self.config.templates))
        self.operations.replace_templates(templates)
        log.info("prompt templates reloaded from %s: %s", self.config.templates, ", ".join(templates.operations()))

    def _server_tls_files(self) -> list[str]:
        """The HTTP listener's certificate files (gRPC's credentials re-read theirs themselves)."""
        if self._ssl_context is None:
            return []
        return [self.config.tls_cert_file, self.config.tls_key_file]

    def _reload_http_certificate(self) -> None:
        assert self._ssl_context is not None
        self._ssl_context.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)  # next handshakes
        log.info("HTTP TLS certificate reloaded from %s", self.config.tls_cert_file)

    async def _renew_backend_channels(self) -> None:
        await asyncio.gather(*(backend.renew_channel() for backend in self.backends))

    async def close(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        if self.http is not None:
            await self.http.aclose()
        await self.operations.aclose()
        for backend in self.backends:
            await backend.aclose()


def _backend(config: GatewayConfig, name: str, addresses: str, service_name: str, stubs: list[Any]) -> Backend:
    return Backend(
        name,
        addresses,
        service_name,
        stubs,
        max_attempts=config.max_attempts,
        default_timeout_s=config.default_timeout_s,
        deadline_margin_s=config.deadline_margin_ms / 1000,
        tls=config.backend_tls,
    )


def _ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    if not config.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context
