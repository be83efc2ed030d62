"""Assembly of the generator service: registry, models, schedulers, servicer and server. Used by __main__ and
by tests."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ecomserve.generator.v1 import generator_pb2, generator_pb2_grpc

from services.core.manifest import TASK_GENERATION
from services.core.repository import ModelVersion, Registry, discover
from services.core.runner import OnnxRunner, RuntimeOptions
from services.core.server import ServingServer
from services.core.tls import configured_credentials
from services.generator.config import GeneratorConfig
from services.generator.model import GeneratorModel
from services.generator.scheduler import SERVICE, SchedulerBudgets
from services.generator.servicer import GenerationLimits, GeneratorServicer

log = logging.getLogger(__name__)
SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name


class GeneratorApp:
    """The service's parts and their lifecycle: `load` (verify, warm up, start schedulers) then `close`."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.registry: Registry[GeneratorModel] = Registry()
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix="prepare")
        limits = GenerationLimits(
            max_new_tokens=config.max_new_tokens,
            default_max_new_tokens=config.default_max_new_tokens,
            max_stop_sequences=config.max_stop_sequences,
        )
        servicer = GeneratorServicer(self.registry, limits)
        self.server = ServingServer(
            service=SERVICE,
            service_names=[SERVICE_NAME],
            address=config.address,
            max_connection_age_s=config.max_connection_age_s,
            grace_s=config.grace_period_s,
            register=lambda server: generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, server),
            credentials=configured_credentials(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file),
        )

    async def load(self) -> None:
        config = self.config
        runtime = RuntimeOptions(device=config.device, intra_op_threads=config.intra_op_threads)
        for version in discover(Path(config.models), TASK_GENERATION, config.model_names):
            model = await asyncio.to_thread(self._load_one, version, runtime)
            model.start_serving()
            self.registry.add(version.name, version.version, model)
            log.info(
                "serving %s v%d (%d layers, max %d input tokens, %s, %s)",
                version.name,
                version.version,
                model.decoder.num_layers,
                model.max_input_tokens,
                version.manifest.quantization.get("method", "none"),
                model.runner.provider,
            )
        self.registry.ready = True

    def _load_one(self, version: ModelVersion, runtime: RuntimeOptions) -> GeneratorModel:
        config = self.config
        version.verify()
        budgets = SchedulerBudgets(
            max_running_sequences=config.max_running_sequences,
            max_batch_total_tokens=config.max_batch_total_tokens,
            max_prefill_tokens=config.max_prefill_tokens,
            max_waiting_requests=config.max_waiting_requests,
        )
        model = GeneratorModel(
            version,
            OnnxRunner(version.model_path, runtime),
            budgets,
            config.max_input_tokens,
            self._prepare_pool,
            self.server.fail,
        )
        model.warm_up()
        return model

    async def close(self) -> None:
        for _, _, model, _ in self.registry:
            await model.aclose()
        self._prepare_pool.shutdown(wait=False)
