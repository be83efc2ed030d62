"""Assembly of the generator service: the model-service skeleton with decoder models, their schedulers and the
servicer. Used by __main__ and by tests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from ecomserve.generator.v1 import generator_pb2, generator_pb2_grpc

from services.core.allocator import reuse_freed_memory
from services.core.manifest import TASK_GENERATION
from services.core.repository import ModelVersion
from services.core.runner import OnnxRunner, RuntimeOptions
from services.core.service import ModelService
from services.generator.config import GeneratorConfig
from services.generator.model import GeneratorModel
from services.generator.observer import SERVICE
from services.generator.policy import SchedulerBudgets
from services.generator.servicer import GenerationLimits, GeneratorServicer

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
# Freed memory the process keeps for its next KV arrays rather than trimming it (about a 16-stream batch's cache).
RETAINED_FREE_MB = 256


class GeneratorApp(ModelService[GeneratorModel]):
    """The generator service: every generation model version, each with its continuous-batching scheduler."""

    def __init__(self, config: GeneratorConfig) -> None:
        # Before the decode threads exist: the KV cache is copied into new arrays whenever the batch changes.
        reuse_freed_memory(RETAINED_FREE_MB)
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix="prepare")
        self._runtime = RuntimeOptions(
            device=config.device, intra_op_threads=config.intra_op_threads, spin=config.spin_threads
        )
        self._budgets = SchedulerBudgets(
            max_running_sequences=config.max_running_sequences,
            max_batch_total_tokens=config.max_batch_total_tokens,
            max_prefill_tokens=config.max_prefill_tokens,
            max_waiting_requests=config.max_waiting_requests,
        )
        self._limits = GenerationLimits(
            max_new_tokens=config.max_new_tokens,
            default_max_new_tokens=config.default_max_new_tokens,
            max_stop_sequences=config.max_stop_sequences,
        )
        self._max_input_tokens = config.max_input_tokens
        self._prefix_cache_bytes = config.prefix_cache_mb << 20
        super().__init__(config, service=SERVICE, service_names=[SERVICE_NAME], tasks=(TASK_GENERATION,))

    def register(self, server: grpc.aio.Server) -> None:
        servicer = GeneratorServicer(self.registry, self._limits)
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, server)

    def build(self, version: ModelVersion) -> GeneratorModel:
        runner = OnnxRunner(version.model_path, self._runtime)
        return GeneratorModel(
            version,
            runner,
            self._budgets,
            self._max_input_tokens,
            self._prepare_pool,
            self.server.fail,
            self._prefix_cache_bytes,
        )

    async def close(self) -> None:
        await super().close()
        self._prepare_pool.shutdown(wait=False)
