"""The model-service skeleton every backend builds on: its shared config fields, and the lifecycle of its models
(discover, verify, build, warm up, serve, report readiness, list, close)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc

from services.core import metrics
from services.core.config import (
    knob,
    log_format_knob,
    log_level_knob,
    max_connection_age_knob,
    metrics_host_knob,
    require,
    require_server_knobs,
    require_tls_knobs,
    tls_cert_knob,
    tls_client_ca_knob,
    tls_key_knob,
)
from services.core.repository import ModelVersion, Registry, discover
from services.core.runner import OnnxRunner
from services.core.server import ServingServer
from services.core.tls import configured_credentials

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ModelServerConfig:
    """The knobs every model service has; a service's config subclasses it and may redeclare a field to change
    its default (the field keeps its place)."""

    host: str = knob("0.0.0.0", "address to listen on for gRPC")
    port: int = knob(0, "gRPC port (0 picks a free one)")
    metrics_port: int = knob(0, "Prometheus /metrics port (0 disables)")
    metrics_host: str = metrics_host_knob()
    models: str = knob("models", "model repository folder (written by `python -m export`)")
    model_names: tuple[str, ...] = knob(
        (), "comma-separated model names to serve (default: every model of this service's kinds)"
    )
    device: str = knob("auto", "execution provider: auto (CUDA when available), cpu or cuda")
    tls_cert_file: str = tls_cert_knob()
    tls_key_file: str = tls_key_knob()
    tls_client_ca_file: str = tls_client_ca_knob()
    max_connection_age_s: float = max_connection_age_knob()
    grace_period_s: float = knob(30.0, "on SIGTERM, how long in-flight requests may take to finish")
    log_level: str = log_level_knob()
    log_format: str = log_format_knob()

    def __post_init__(self) -> None:
        require_server_knobs(self)
        require_tls_knobs(self)
        require(self.device in DEVICES, f"device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class ServedModel(Protocol):
    """What the skeleton needs of one loaded model version."""

    version: ModelVersion
    runner: OnnxRunner

    def warm_up(self) -> None:
        """Run the model once so the first request skips onnxruntime's lazy setup (on a worker thread)."""

    def start_serving(self) -> None:
        """Start the model's background work (batcher, scheduler); from the event loop."""

    async def aclose(self) -> None:
        """Finish or refuse what is queued and stop the background work."""

    def describe(self) -> str:
        """One line for the log: what this model is and how it runs."""


M = TypeVar("M", bound=ServedModel)


class ModelService(Generic[M]):
    """One backend service: a gRPC server and the registry of the model versions it serves.

    Subclasses set what they need, call `__init__`, and implement `register` (add their servicers to the grpc
    server; `self.registry` exists by then) and `build` (one model version, on a worker thread). `load` builds
    every version of the service's `tasks` in the repository, verified against its sha256 and warmed up, then
    marks the registry ready; `close` stops every model.
    """

    def __init__(
        self, config: ModelServerConfig, *, service: str, service_names: list[str], tasks: tuple[str, ...]
    ) -> None:
        self.config = config
        self.service = service
        self.tasks = tasks
        self.registry: Registry[M] = Registry()
        self.server = ServingServer(
            service=service,
            service_names=service_names,
            address=config.address,
            max_connection_age_s=config.max_connection_age_s,
            grace_s=config.grace_period_s,
            register=self.register,
            credentials=configured_credentials(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file),
        )

    def register(self, server: grpc.aio.Server) -> None:
        raise NotImplementedError

    def build(self, version: ModelVersion) -> M:
        raise NotImplementedError

    async def load(self) -> None:
        for version in discover(Path(self.config.models), self.tasks, self.config.model_names):
            model = await asyncio.to_thread(self._build_verified, version)
            model.start_serving()
            self.registry.add(version.name, version.version, model)
            metrics.MODEL_READY.labels(self.service, version.label).set(1)
            log.info(
                "serving %s v%d (%s; %s, %s)",
                version.name,
                version.version,
                model.describe(),
                _quantization(version),
                model.runner.provider,
            )
        self.registry.ready = True

    def _build_verified(self, version: ModelVersion) -> M:
        version.verify()
        model = self.build(version)
        model.warm_up()
        return model

    async def close(self) -> None:
        for _, _, model, _ in self.registry:
            metrics.MODEL_READY.labels(self.service, model.version.label).set(0)
            await model.aclose()


def model_listing(registry: Registry[M]) -> Iterator[tuple[dict[str, Any], M]]:
    """ListModels' rows: the fields every service's ModelInfo has, and the model for the service's own."""
    for name, version, model, is_default in registry:
        common = {
            "name": name,
            "version": version,
            "is_default": is_default,
            "quantization": _quantization(model.version),
            "execution_provider": model.runner.provider,
        }
        yield common, model


def _quantization(version: ModelVersion) -> str:
    return str(version.manifest.quantization.get("method", "none"))
