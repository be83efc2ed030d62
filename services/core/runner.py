"""OnnxRunner: a synchronous wrapper over one onnxruntime InferenceSession. Knows nothing of batching or asyncio.

onnxruntime releases the GIL inside run(), so callers run it from a worker thread and the event loop stays free.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.core.errors import ModelFailure

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    """device: "auto" (CUDA when onnxruntime-gpu sees a GPU, else CPU), "cpu" or "cuda"; 0 threads = ORT default."""

    device: str = "auto"
    intra_op_threads: int = 0


def choose_providers(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise ModelFailure(
            f"device=cuda, but this onnxruntime has no CUDA provider (available: {', '.join(available)}); "
            "install onnxruntime-gpu instead of onnxruntime, or use device=cpu"
        )
    return [CPU]


class OnnxRunner:
    """Owns the session, its providers and I/O names. `run` is synchronous and thread-safe (onnxruntime's
    sessions allow concurrent runs). Any runtime error is raised as ModelFailure."""

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.intra_op_threads:
            session_options.intra_op_num_threads = options.intra_op_threads
        # Spinning worker threads burn the cores the event loop and the tokenizer need between batches.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), session_options, providers=choose_providers(options.device))
        except ModelFailure:
            raise
        except Exception as error:
            raise ModelFailure(f"onnxruntime cannot load {path}: {error}") from error
        self.provider = self._session.get_providers()[0]
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        log.info("loaded %s on %s", path, self.provider)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        try:
            return list(self._session.run(list(outputs) if outputs else None, dict(feeds)))
        except Exception as error:
            raise ModelFailure(f"onnxruntime run failed: {error}") from error
