"""Assembly of the classifier service: the model-service skeleton with encoder models (classifiers and
embedders) and their servicer. Used by __main__ and by tests."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import grpc
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from inference import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc

from services.classifier.config import ClassifierConfig
from services.classifier.heads import ClassifierModel, EmbedderModel
from services.classifier.oip import InferenceServicer
from services.classifier.rest import ClassifierRest
from services.classifier.servicer import ClassifierServicer
from services.core.encoder import BatchedEncoder, BatchingOptions
from services.core.manifest import TASK_CLASSIFICATION, TASK_EMBEDDING
from services.core.repository import ModelVersion
from services.core.runner import CUDA, OnnxRunner, RuntimeOptions, choose_providers
from services.core.server import listen_flags
from services.core.service import ModelService

log = logging.getLogger(__name__)
SERVICE = "classifier"
SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].full_name
INFERENCE_SERVICE_NAME = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEADS: dict[str, type[BatchedEncoder]] = {TASK_CLASSIFICATION: ClassifierModel, TASK_EMBEDDING: EmbedderModel}


class ClassifierApp(ModelService[BatchedEncoder]):
    """The classifier service: every classification and embedding model version, each behind its own dynamic
    batcher."""

    def __init__(self, config: ClassifierConfig) -> None:
        self._tokenize_pool = ThreadPoolExecutor(config.tokenizer_threads, thread_name_prefix="tokenize")
        on_gpu = choose_providers(config.device)[0] == CUDA
        inference_threads, intra_op_threads = config.run_threads(on_gpu)
        self._runtime = RuntimeOptions(device=config.device, intra_op_threads=intra_op_threads)
        # A request that runs alone gets every core when the batches' runs each get fewer.
        cores = os.cpu_count() or 1
        self._solo_runtime = None
        if not on_gpu and intra_op_threads < cores:
            self._solo_runtime = RuntimeOptions(device=config.device, intra_op_threads=cores, spin=True)
        self._batching = BatchingOptions(
            max_batch_size=config.max_batch_size,
            max_queue_delay_ms=config.max_queue_delay_ms,
            max_queue_size=config.max_queue_size,
            max_concurrent_batches=config.max_concurrent_batches,
            max_queue_time_s=config.max_queue_time_s,
            inference_threads=inference_threads,
            pin_inference_threads=config.pin_inference_threads,
            run_overhead_tokens=config.run_overhead_tokens,
            batch_invariant=config.batch_invariant,
        )
        self._max_texts = config.max_texts_per_request
        self._http_port = config.http_port
        self._rest: ClassifierRest | None = None
        super().__init__(
            config, service=SERVICE, service_names=[SERVICE_NAME, INFERENCE_SERVICE_NAME], tasks=tuple(HEADS)
        )

    def register(self, server: grpc.aio.Server) -> None:
        servicer = ClassifierServicer(self.registry, self._max_texts)
        classifier_pb2_grpc.add_ClassifierServiceServicer_to_server(servicer, server)
        # The same models over the Open Inference Protocol (v2), for KServe's and Triton's clients.
        inference = InferenceServicer(self.registry, lambda: self.server.serving, self._max_texts)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
        self._inference = inference

    async def load(self) -> None:
        if self._http_port:  # from the start, so that probes of the REST form see the loading
            self._rest = ClassifierRest(self._inference, self.server.calls)
            try:
                port = await self._rest.start(self.config.host, self._http_port)
            except OSError as error:
                raise OSError(
                    f"cannot listen for HTTP on {self.config.host}:{self._http_port} ({error.strerror or error}); "
                    f"choose another port with {listen_flags(SERVICE, 'http_port')}"
                ) from None
            log.info("Open Inference Protocol REST on port %d", port)
        await super().load()

    def build(self, version: ModelVersion) -> BatchedEncoder:
        runner = OnnxRunner(version.model_path, self._runtime)
        solo = OnnxRunner(version.model_path, self._solo_runtime) if self._solo_runtime else None
        head = HEADS[version.manifest.task]
        return head(SERVICE, version, runner, self._batching, self._tokenize_pool, self.server.fail, solo_runner=solo)

    async def close(self) -> None:
        if self._rest is not None:
            await self._rest.aclose()
        await super().close()
        self._tokenize_pool.shutdown(wait=False)
