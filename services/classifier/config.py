"""ClassifierConfig: every knob of the classifier service, with flags and ECOMSERVE_CLASSIFIER_* twins."""

from __future__ import annotations

import os
from dataclasses import dataclass

from services.core.config import knob, require
from services.core.service import ModelServerConfig


@dataclass(frozen=True)
class ClassifierConfig(ModelServerConfig):
    port: int = knob(50051, "gRPC port (0 picks a free one)")
    metrics_port: int = knob(9101, "Prometheus /metrics port (0 disables)")
    http_port: int = knob(
        0,
        "port of the Open Inference Protocol's REST form (/v2/...), plain HTTP on --host, no API keys (0: off; "
        "the gateway's /v2 routes are the authenticated way in)",
    )
    model_names: tuple[str, ...] = knob(
        (), "comma-separated model names to serve (default: every classifier and embedding model)"
    )
    grace_period_s: float = knob(20.0, "on SIGTERM, how long in-flight requests may take to finish")
    max_batch_size: int = knob(32, "most texts in one model batch")
    max_queue_delay_ms: float = knob(
        0.0,
        "longest time the oldest queued text waits for its batch to fill (0: a batch starts as soon as a batch slot "
        "is free, with every text queued by then); a single-text request that finds nothing queued or running and "
        "an inference thread free runs at once",
    )
    max_queue_size: int = knob(1024, "most texts waiting per model; past it requests get RESOURCE_EXHAUSTED")
    max_queue_time_s: float = knob(
        0.0,
        "refuse at once (RESOURCE_EXHAUSTED with a retry hint) a request whose texts, behind those queued, would take "
        "longer than this at the measured rate (0: no limit but the request's own deadline, which always applies)",
    )
    max_concurrent_batches: int = knob(
        2,
        "batches in flight per model (the next one forms while they run); their runs share the inference threads, "
        "so a second batch keeps them busy while the first one's answers go out and new texts arrive",
    )
    max_texts_per_request: int = knob(64, "most texts in one Classify request")
    run_overhead_tokens: float = knob(
        0.0,
        "fixed cost of one onnxruntime run in padded tokens: a batch is split by text length into the runs that "
        "waste least (0: measured per model at warm-up)",
    )
    batch_invariant: bool = knob(
        True,
        "a text's scores never depend on what it is batched with: models that quantize activations per run (dynamic "
        "int8) run every text on its own (--no-batch-invariant batches them: more throughput, scores that move)",
    )
    inference_threads: int = knob(
        0, "threads that run a batch's onnxruntime runs in parallel, per model (0: one per core; 1 on a GPU)"
    )
    pin_inference_threads: bool = knob(
        True,
        "when there are exactly as many inference threads as CPUs this process may use (a cpuset or a machine of its "
        "own), pin each thread to one of them, so that the scheduler never stacks two on one core "
        "(--no-pin-inference-threads: let them float)",
    )
    intra_op_threads: int = knob(
        0, "onnxruntime intra-op threads per run (0: the cores shared out among inference_threads)"
    )
    tokenizer_threads: int = knob(1, "threads that tokenize requests of over 1,000 characters off the event loop")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.http_port <= 65535, f"http_port must be 0..65535, got {self.http_port}")
        require(
            not (self.http_port and self.tls_cert_file),
            "http_port serves plain HTTP: with --tls-cert-file, call the Open Inference Protocol over gRPC or "
            "through the gateway",
        )
        require(self.max_batch_size >= 1, f"max_batch_size must be >= 1, got {self.max_batch_size}")
        require(self.max_queue_delay_ms >= 0, f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")
        require(self.max_queue_size >= 1, f"max_queue_size must be >= 1, got {self.max_queue_size}")
        require(self.max_queue_time_s >= 0, f"max_queue_time_s must be >= 0, got {self.max_queue_time_s}")
        require(self.max_concurrent_batches >= 1, "max_concurrent_batches must be >= 1")
        require(self.max_texts_per_request >= 1, "max_texts_per_request must be >= 1")
        require(self.run_overhead_tokens >= 0, f"run_overhead_tokens must be >= 0, got {self.run_overhead_tokens}")
        require(self.inference_threads >= 0, f"inference_threads must be >= 0, got {self.inference_threads}")
        require(self.intra_op_threads >= 0, f"intra_op_threads must be >= 0, got {self.intra_op_threads}")
        require(self.tokenizer_threads >= 1, f"tokenizer_threads must be >= 1, got {self.tokenizer_threads}")

    def run_threads(self, on_gpu: bool) -> tuple[int, int]:
        """(inference threads, intra-op threads per run). By default a CPU gets one single-threaded run per core;
        a GPU runs one batch at a time, whole (it gains nothing from parallel runs or split batches)."""
        cores = os.cpu_count() or 1
        inference = self.inference_threads or (1 if on_gpu else cores)
        return inference, self.intra_op_threads or max(1, cores // inference)
