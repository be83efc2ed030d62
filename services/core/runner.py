"""OnnxRunner: a synchronous wrapper over one onnxruntime InferenceSession. Knows nothing of batching or asyncio.

onnxruntime releases the GIL inside run(), so callers run it from a worker thread and the event loop stays free.
FailureStreak decides when failing runs mean the replica must stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.core.errors import ModelFailure

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
# After this many failed runs (batches, decode steps) in a row, the replica stops (NOT_SERVING, exit non-zero).
MAX_CONSECUTIVE_FAILURES = 3
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    """device: "auto" (CUDA when onnxruntime-gpu sees a GPU, else CPU), "cpu" or "cuda"; 0 threads = ORT default."""

    device: str = "auto"
    intra_op_threads: int = 0
    spin: bool = False  # intra-op threads spin between parallel sections instead of sleeping


class InferenceThreads:
    """Sets up a pool's `threads` inference threads (its `initializer`).

    Each takes the CPU only when no other thread wants it (Linux's SCHED_IDLE policy, per thread; taking it needs no
    privilege): the event loop and gRPC's threads (admission, refusals, answers) run the moment they wake, and
    inference still gets every cycle they leave. At nice 10 instead, a woken loop thread still waited behind
    inference: refusals at twice the capacity took 5-7 ms at p50 and 55-78 ms at p99, against 1.6-1.9 and 20-35 ms
    this way, at the same capacity.

    With `pin`, and exactly as many threads as CPUs this process may run on (a cpuset of its own, a dedicated
    machine), each thread also takes one of those CPUs for itself: left to float, the scheduler stacked both on one
    core while the other idled for moments too short to rebalance (0.27 of 2 cores idle at concurrency 64, 0.09
    pinned). Where either is refused, the thread runs as it is."""

    def __init__(self, threads: int, pin: bool) -> None:
        self._allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
        self._free_cpus = iter(sorted(self._allowed) if pin and len(self._allowed) == threads else [])
        self._lock = threading.Lock()
        self._pinned = _ThreadPin()

    def initializer(self) -> None:
        thread = threading.get_native_id()
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or refused: the thread runs as it is
            os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
        with self._lock:
            cpu = next(self._free_cpus, None)
        if cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(thread, {cpu})
                self._pinned.cpu = cpu

    def float_freely(self) -> None:
        """On an inference thread, before a run whose own intra-op threads take every core: the thread may run on
        any CPU from now on, until `pin`. Pinned, it shared its core with those threads (spinning at a higher
        priority after their last run) and a lone request's p99 rose from 6 to 16 ms; pinned again right after
        each such run, it waited for that core to be free."""
        if self._pinned.cpu is not None and not self._pinned.floating:
            self._pinned.floating = True
            with contextlib.suppress(OSError):  # the CPUs were taken away meanwhile: the run goes on where it is
                os.sched_setaffinity(0, self._allowed)

    def pin(self) -> None:
        """On an inference thread, before a batch's runs: back on its own CPU, if it has one and floats."""
        if self._pinned.floating and self._pinned.cpu is not None:
            self._pinned.floating = False
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {self._pinned.cpu})


class _ThreadPin(threading.local):
    """Per inference thread: the CPU it was given (None: it floats), and whether it floats for now all the same."""

    cpu: int | None = None
    floating = False


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
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
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

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None, stop: RunStop | None = None
    ) -> list[np.ndarray]:
        """The outputs; raises RunStopped once `stop` was requested while it ran, ModelFailure for anything else."""
        try:
            return list(self._session.run(list(outputs) if outputs else None, dict(feeds), stop and stop.options))
        except Exception as error:
            if stop is not None and stop.requested:
                raise RunStopped() from error
            raise ModelFailure(f"onnxruntime run failed: {error}") from error


class RunStopped(Exception):
    """A run given up on request (RunStop); its outputs never existed, so nothing it would have changed did."""


class RunStop:
    """Lets another thread stop one run in progress: onnxruntime checks between graph nodes and gives up."""

    def __init__(self) -> None:
        self.options = ort.RunOptions()

    @property
    def requested(self) -> bool:
        return bool(self.options.terminate)

    def request(self) -> None:
        self.options.terminate = True


class FailureStreak:
    """Counts the model's failures in a row (`unit`: what failed, e.g. "batches") and calls `on_fatal` once
    MAX_CONSECUTIVE_FAILURES is reached: one bad request does not stop a replica, a broken runtime does.
    Call it from the event loop (on_fatal stops the server)."""

    def __init__(self, model_label: str, unit: str, on_fatal: Callable[[str], None]) -> None:
        self._label = model_label
        self._unit = unit
        self._on_fatal = on_fatal
        self._count = 0

    def failed(self, failure: ModelFailure) -> None:
        self._count += 1
        if self._count >= MAX_CONSECUTIVE_FAILURES:
            self._on_fatal(f"{self._label}: {self._count} {self._unit} in a row failed: {failure}")

    def succeeded(self) -> None:
        self._count = 0
