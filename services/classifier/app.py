"""Assembly of the classifier service: registry, models, servicer and server. Used by __main__ and by tests."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc

from services.classifier.config import ClassifierConfig
from services.classifier.model import SERVICE, BatchingOptions, ClassifierModel
from services.classifier.servicer import ClassifierServicer
from services.core.manifest import TASK_CLASSIFICATION
from services.core.repository import ModelVersion, Registry, discover
from services.core.runner import CUDA, OnnxRunner, RuntimeOptions, choose_providers
from services.core.server import ServingServer
from services.core.tls import configured_credentials

log = logging.getLogger(__name__)
SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].full_name


class ClassifierApp:
    """The service's parts and their lifecycle: `load` (models, warm-up, batchers) then `close` (drain)."""

    def __init__(self, config: ClassifierConfig) -> None:
        self.config = config
        self.registry: Registry[ClassifierModel] = Registry()
        self._tokenize_pool = ThreadPoolExecutor(config.tokenizer_threads, thread_name_prefix="tokenize")
        servicer = ClassifierServicer(self.registry, config.max_texts_per_request)
        self.server = ServingServer(
            service=SERVICE,
            service_names=[SERVICE_NAME],
            address=config.address,
            max_connection_age_s=config.max_connection_age_s,
            grace_s=config.grace_period_s,
            register=lambda server: classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(servicer, server),
            credentials=configured_credentials(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file),
        )

    async def load(self) -> None:
        """Load, verify and warm up every model version, start their batchers, then mark the registry ready."""
        config = self.config
        versions = discover(Path(config.models), TASK_CLASSIFICATION, config.model_names)
        inference_threads, intra_op_threads = config.run_threads(on_gpu=choose_providers(config.device)[0] == CUDA)
        runtime = RuntimeOptions(device=config.device, intra_op_threads=intra_op_threads)
        batching = BatchingOptions(
            max_batch_size=config.max_batch_size,
            max_queue_delay_ms=config.max_queue_delay_ms,
            max_queue_size=config.max_queue_size,
            max_concurrent_batches=config.max_concurrent_batches,
            max_queue_time_s=config.max_queue_time_s,
            inference_threads=inference_threads,
            run_overhead_tokens=config.run_overhead_tokens,
            batch_invariant=config.batch_invariant,
        )
        for version in versions:
            model = await asyncio.to_thread(self._load_one, version, runtime, batching)
            model.start()
            self.registry.add(version.name, version.version, model)
            log.info(
                "serving %s v%d (%d labels, max %d tokens, %s, %s, %s)",
                version.name,
                version.version,
                len(model.labels),
                model.max_length,
                version.manifest.quantization.get("method", "none"),
                model.runner.provider,
                "one text per run: activations are quantized per run"
                if model.one_text_per_run
                else f"a run costs {model.run_overhead_tokens:.1f} padded tokens",
            )
        self.registry.ready = True

    def _load_one(self, version: ModelVersion, runtime: RuntimeOptions, batching: BatchingOptions) -> ClassifierModel:
        version.verify()
        model = ClassifierModel(
            version, OnnxRunner(version.model_path, runtime), batching, self._tokenize_pool, self.server.fail
        )
        model.warm_up(batching.max_batch_size)
        return model

    async def close(self) -> None:
        for _, _, model, _ in self.registry:
            await model.aclose()
        self._tokenize_pool.shutdown(wait=False)
