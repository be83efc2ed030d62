"""The model-service skeleton every backend builds on: its shared config fields, and the lifecycle of its models
(discover, verify, build, warm up, serve, report readiness, list, close)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterator, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc

from services.core import metrics
from services.core.config import (
    event_loop_knob,
    knob,
    log_format_knob,
    log_level_knob,
    max_connection_age_knob,
    metrics_host_knob,
    require,
    require_one_of,
    require_server_knobs,
    require_tls_knobs,
    tls_cert_knob,
    tls_client_ca_knob,
    tls_key_knob,
)
from services.core.errors import ModelFailure
from services.core.repository import Fingerprint, ModelVersion, Registry, discover, folder_fingerprint
from services.core.runner import OnnxRunner
from services.core.server import ServingServer, collect_frozen
from services.core.tls import configured_credentials

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")
# A version whose folder left the repository is no longer handed out at once; requests that took it just before
# still hand it their work within this time. Then it finishes what it has and is unloaded.
UNLOAD_GRACE_S = 1.0
READY, LOADING, UNLOADING, FAILED = "READY", "LOADING", "UNLOADING", "FAILED"


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
    repository_poll_s: float = knob(
        10.0,
        "seconds between looks at the model repository for new and removed versions, which are loaded and unloaded "
        "while serving (0: only on SIGHUP)",
    )
    max_versions: int = knob(
        0,
        "serve only the N highest versions of each model (0: every version); a new version past N retires the "
        "oldest once it serves, as Triton's `latest` version policy",
    )
    log_level: str = log_level_knob()
    log_format: str = log_format_knob()
    event_loop: str = event_loop_knob()

    def __post_init__(self) -> None:
        require_server_knobs(self)
        require_tls_knobs(self)
        require_one_of("device", self.device, DEVICES)
        require(self.repository_poll_s >= 0, f"repository_poll_s must be >= 0, got {self.repository_poll_s}")
        require(self.max_versions >= 0, f"max_versions must be >= 0, got {self.max_versions}")

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
    marks the registry ready; `close` stops every model. While serving, the repository is looked at every
    `repository_poll_s` and on SIGHUP: a new version is loaded next to the others once its files stopped changing
    for one look (at once on SIGHUP) and, as the highest, becomes the default atomically; a version whose folder
    went stops taking requests once another version of its model serves (or none is left in the repository) and
    is unloaded after finishing what it has, without holding up the next look; a new version that cannot be loaded
    is logged, counted (ecomserve_model_load_failures_total), shown FAILED by ListModels and never served.
    """

    def __init__(
        self, config: ModelServerConfig, *, service: str, service_names: list[str], tasks: tuple[str, ...]
    ) -> None:
        self.config = config
        self.service = service
        self.tasks = tasks
        self.registry: Registry[M] = Registry()
        self._rescan_now = asyncio.Event()  # SIGHUP
        self._follower: asyncio.Task[None] | None = None
        self._unloads: set[asyncio.Task[None]] = set()  # versions finishing their work before they are closed
        self._failed: dict[tuple[str, int], Fingerprint] = {}  # versions that failed, as their files were then
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
        for version in self._discover():
            await self._load_version(version)
        self.registry.ready = True
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._rescan_now.set)
        self._follower = asyncio.create_task(self._follow_repository(), name=f"{self.service}-repository")

    def _discover(self) -> list[ModelVersion]:
        return discover(Path(self.config.models), self.tasks, self.config.model_names, self.config.max_versions)

    async def _load_version(self, version: ModelVersion) -> None:
        key = (version.name, version.version)
        self.registry.states[key] = (LOADING, "")
        try:
            model = await asyncio.to_thread(self._build_verified, version)
        finally:
            self.registry.states.pop(key, None)
        model.start_serving()
        self.registry.add(version.name, version.version, model)
        metrics.MODEL_READY.labels(self.service, *version.metric_labels).set(1)
        log.info(
            "serving %s v%d (%s; %s, %s)",
            version.name,
            version.version,
            model.describe(),
            _quantization(version),
            model.runner.provider,
        )

    async def _follow_repository(self) -> None:
        """Until cancelled: look at the repository and load or unload what changed."""
        looked: dict[tuple[str, int], Fingerprint] = {}  # a new version's files at the previous look
        while True:
            forced = await self._next_look()
            try:
                found = {(version.name, version.version): version for version in self._discover()}
            except (ModelFailure, OSError, ValueError) as error:  # e.g. a manifest still being copied
                log.warning("model repository not read (%s); serving what is loaded", error)
                continue
            for key in [key for key in self._failed if key not in found]:
                del self._failed[key]
                self.registry.states.pop(key, None)
            for key in sorted(found.keys() - self.registry.loaded()):
                if self.registry.states.get(key, ("",))[0] == UNLOADING:
                    continue  # its folder came back while the old one finishes: loaded again once that one closed
                fingerprint = folder_fingerprint(found[key].folder)
                settled = forced or looked.get(key) == fingerprint
                looked[key] = fingerprint
                if settled and self._failed.get(key) != fingerprint:
                    await self._try_new_version(found[key], fingerprint)
            for name, version in sorted(self.registry.loaded() - found.keys()):
                if self._replaced_or_deleted(name, found.keys()):
                    self._unload(name, version)

    def _replaced_or_deleted(self, name: str, found: Set[tuple[str, int]]) -> bool:
        """Whether a version whose folder went may stop serving: another version of its model serves, or none is
        left in the repository. A version swapped for a new one in one move serves until the new one is loaded,
        so that the model never goes missing (and keeps serving if the new one fails)."""
        remaining = {key for key in found if key[0] == name}
        return not remaining or bool(remaining & self.registry.loaded())

    async def _next_look(self) -> bool:
        """Wait for the next look; True when SIGHUP asked for it."""
        try:
            await asyncio.wait_for(self._rescan_now.wait(), self.config.repository_poll_s or None)
        except TimeoutError:
            return False
        self._rescan_now.clear()
        return True

    async def _try_new_version(self, version: ModelVersion, fingerprint: Fingerprint) -> None:
        try:
            await self._load_version(version)
        except Exception as error:  # any failure of a new version: the versions before it keep serving
            self._failed[(version.name, version.version)] = fingerprint
            self.registry.states[(version.name, version.version)] = (FAILED, str(error))
            metrics.MODEL_LOAD_FAILURES.labels(self.service, *version.metric_labels).inc()
            log.error("cannot load %s v%d; the versions before it keep serving: %s", version.name, version.version,
                      error)  # fmt: skip
        else:
            self._failed.pop((version.name, version.version), None)

    def _unload(self, name: str, version: int) -> None:
        """Stop handing the version out now; close it in the background once it has finished its work."""
        model = self.registry.remove(name, version)
        self.registry.states[(name, version)] = (UNLOADING, "its folder left the repository")
        metrics.MODEL_READY.labels(self.service, *model.version.metric_labels).set(0)
        log.info("%s v%d left the repository: unloading it once it has finished its work", name, version)

        async def close_when_done(unloaded: M) -> None:
            await asyncio.sleep(UNLOAD_GRACE_S)
            await unloaded.aclose()
            del unloaded
            started = time.perf_counter()
            collect_frozen()  # its memory goes back now, not whenever a full collection happens to run
            self.registry.states.pop((name, version), None)
            log.info("%s v%d unloaded (collected in %.0f ms)", name, version, (time.perf_counter() - started) * 1000)

        closing = asyncio.create_task(close_when_done(model), name=f"unload-{name}-{version}")
        del model  # the task holds the only reference
        self._unloads.add(closing)
        closing.add_done_callback(self._unloads.discard)

    def _build_verified(self, version: ModelVersion) -> M:
        version.verify()
        model = self.build(version)
        model.warm_up()
        return model

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        await asyncio.gather(*self._unloads)
        for _, _, model, _ in self.registry:
            metrics.MODEL_READY.labels(self.service, *model.version.metric_labels).set(0)
            await model.aclose()


def model_listing(registry: Registry[M]) -> Iterator[tuple[dict[str, Any], M | None]]:
    """ListModels' rows: the fields every service's ModelInfo has, and the model for the service's own (None for
    a version that does not serve: loading, unloading or failed)."""
    for name, version, model, is_default in registry:
        common = {
            "name": name,
            "version": version,
            "is_default": is_default,
            "quantization": _quantization(model.version),
            "execution_provider": model.runner.provider,
            "status": f"MODEL_STATUS_{READY}",
        }
        yield common, model
    for (name, version), (status, message) in sorted(registry.states.items()):
        yield {"name": name, "version": version, "status": f"MODEL_STATUS_{status}", "status_message": message}, None


def _quantization(version: ModelVersion) -> str:
    return str(version.manifest.quantization.get("method", "none"))
