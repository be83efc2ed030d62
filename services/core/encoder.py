"""BatchedEncoder: tokenization, dynamic batching and onnxruntime runs of one exported encoder version, the base
of every encoder kind (a classifier's or an embedder's head sits on the rows it returns).

Texts are tokenized when a request arrives (so their token lengths are known for bucketing): on the loop when the
request is short (a thread hop costs more than tokenizing a message), in a thread pool otherwise; then they are
queued in the model's DynamicBatcher as one item each, and run through the OnnxRunner in worker threads. A batch
is split by length into the onnxruntime runs that waste least (services.core.padding), each padded to its longest
text; what one run costs in padded tokens is measured at warm-up unless configured. Models that quantize
activations per run (dynamic int8) get one run per text instead, so that no text's scores depend on its batch.
The runs of a batch are shared out among the inference threads, costliest first, so one batch keeps every core
busy and ends as soon as possible. The graph is run for the first output its manifest names, one row per text.

The cost follows the load: a single-text request that finds nothing queued or running in the batcher and an
inference thread free is tokenized and run on that thread in one hand-off, as the batch of one the batcher would
have made of it at that moment, without the batcher's hand-offs (loop -> tokenizer thread -> loop -> batcher ->
inference thread -> loop). When it is the only run and the request before it ran alone too, it runs on a session
of its own that uses every core (the batches' runs use one core each, side by side), so a lone request is as fast
as the hardware allows. Concurrent requests find the threads or the batcher busy and batch as before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from opentelemetry.context import Context
from tokenizers import Tokenizer

from services.core import metrics, tracing
from services.core.batcher import DynamicBatcher
from services.core.errors import InvalidArgument, ModelFailure
from services.core.manifest import TOKENIZER_FILE
from services.core.padding import length_groups, spread
from services.core.repository import ModelVersion
from services.core.runner import FailureStreak, InferenceThreads, OnnxRunner

log = logging.getLogger(__name__)
WARMUP_TEXT = "warming up the encoder with a sentence of moderate length"
# Run-overhead measurement: the best of CALIBRATION_REPEATS runs of 1 and of CALIBRATION_ROWS rows, both
# CALIBRATION_WIDTH tokens wide; the difference is the cost of the extra tokens, the rest is the run's own cost.
CALIBRATION_ROWS = 16
CALIBRATION_WIDTH = 16
CALIBRATION_REPEATS = 5
INLINE_TOKENIZE_CHARS = 1000  # requests up to this many characters are tokenized on the loop (about 40 µs a message)


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    max_concurrent_batches: int
    max_queue_time_s: float = 0.0
    inference_threads: int = 1
    pin_inference_threads: bool = False
    run_overhead_tokens: float = 0.0  # 0: measured at warm-up
    batch_invariant: bool = True


@dataclass(frozen=True)
class EncoderItem:
    """One tokenized text waiting for its batch."""

    ids: np.ndarray
    type_ids: np.ndarray
    queued_at: float  # time.perf_counter() when tokenized, i.e. when it joined the queue
    trace: Context | None = None  # its call's trace context, when tracing is on

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class RunTiming:
    """When one onnxruntime run started and ended (time.perf_counter()), and its real / padded tokens."""

    started: float
    ended: float
    padding_efficiency: float


@dataclass(frozen=True)
class EncodedText:
    """The graph's output row for one text, and what the model saw of the text."""

    output: np.ndarray
    token_count: int
    truncated: bool


class BatchedEncoder:
    """One served encoder version. `encode` is safe to call from many concurrent requests; every text becomes
    one batcher item. Raises InvalidArgument (over-long text without truncate), QueueFull, DeadlineExceeded,
    Unavailable (draining) and ModelFailure (runtime broken)."""

    def __init__(
        self,
        service: str,
        version: ModelVersion,
        runner: OnnxRunner,
        batching: BatchingOptions,
        tokenize_pool: ThreadPoolExecutor,
        on_fatal: Callable[[str], None],
        *,
        solo_runner: OnnxRunner | None = None,
    ) -> None:
        self.version = version
        self.runner = runner
        self._solo_runner = solo_runner  # every core on one run: for a request that runs alone
        self.max_length = version.manifest.max_sequence_length
        self._service = service
        self._label = version.label
        self._labels = (service, *version.metric_labels)
        self._output_name = version.manifest.outputs[0].name
        self._warmup_batch_size = batching.max_batch_size
        self._feed_names = [spec.name for spec in version.manifest.inputs]
        self._pad_id = int(version.manifest.special_tokens.get("pad_token_id") or 0)
        self._tokenizer = Tokenizer.from_file(str(version.folder / TOKENIZER_FILE))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_length)
        self._tokenize_pool = tokenize_pool
        self._threads = InferenceThreads(batching.inference_threads, batching.pin_inference_threads)
        self._infer_pool = ThreadPoolExecutor(
            batching.inference_threads, thread_name_prefix="onnx", initializer=self._threads.initializer
        )
        self._inference_threads = batching.inference_threads
        # Inference threads free for a single-text request outside the batcher: taken on the loop, given back by
        # the thread when its run ends (even when the caller left earlier).
        self._direct_slots = threading.Semaphore(batching.inference_threads)
        self._direct_runs = 0  # of them, awaited now (the loop's count: a lone one may use the solo runner)
        # Requests in a row that ran alone. The solo runner's threads spin on after a run: that speeds up the next
        # lone request, but slows a batch that starts right after (under load a request may find the server idle
        # between two batches). So only the second lone request in a row takes the solo runner.
        self._lone_requests = 0
        self._failures = FailureStreak(self._label, "batches", on_fatal)
        # A text's scores must not depend on the texts it is batched with: models that quantize activations per
        # run get a run of their own for every text (the batch's runs still spread over the inference threads).
        self.one_text_per_run = batching.batch_invariant and version.manifest.quantizes_activations_per_run
        self.run_overhead_tokens = batching.run_overhead_tokens
        self.batcher: DynamicBatcher[EncoderItem, np.ndarray] = DynamicBatcher(
            self.predict_batch,
            max_batch_size=batching.max_batch_size,
            max_wait_s=batching.max_queue_delay_ms / 1000,
            max_queue_size=batching.max_queue_size,
            max_concurrent_batches=batching.max_concurrent_batches,
            max_queue_time_s=batching.max_queue_time_s,
            size_of=lambda item: item.length,
            on_drop=lambda reason, n: metrics.DROPPED_ITEMS.labels(*self._labels, reason).inc(n),
        )
        metrics.QUEUE_DEPTH.labels(*self._labels).set_function(lambda: self.batcher.depth)
        metrics.QUEUE_CAPACITY.labels(*self._labels).set(batching.max_queue_size)
        metrics.RUNTIME_INFO.labels(*self._labels).info(
            {"provider": runner.provider, "quantization": version.manifest.quantization.get("method", "none")}
        )

    def start_serving(self) -> None:
        self.batcher.start()

    async def aclose(self) -> None:
        await self.batcher.aclose()
        self._infer_pool.shutdown(wait=True)
        metrics.forget_version(self._labels, metrics.QUEUE_DEPTH, metrics.QUEUE_CAPACITY, metrics.RUNTIME_INFO)

    def describe(self) -> str:
        if self.one_text_per_run:
            return f"max {self.max_length} tokens, one text per run: activations are quantized per run"
        return f"max {self.max_length} tokens, a run costs {self.run_overhead_tokens:.1f} padded tokens"

    def warm_up(self) -> None:
        """Run a full batch once so the first request does not pay for onnxruntime's lazy initialisation, then
        measure what a run costs in padded tokens unless it was configured."""
        items = [item for item, _ in self._tokenize([WARMUP_TEXT] * self._warmup_batch_size, truncate=True)]
        self._forward(items)
        if self._solo_runner is not None:
            self._forward(items[:1], self._solo_runner)
        if not self.run_overhead_tokens and not self.one_text_per_run:
            self.run_overhead_tokens = self._measure_run_overhead(items[0])

    def _measure_run_overhead(self, sample: EncoderItem) -> float:
        repeat = CALIBRATION_WIDTH // sample.length + 1
        row = EncoderItem(
            np.tile(sample.ids, repeat)[:CALIBRATION_WIDTH], np.tile(sample.type_ids, repeat)[:CALIBRATION_WIDTH], 0.0
        )

        def best_time(rows: int) -> float:
            times = []
            for _ in range(CALIBRATION_REPEATS):
                started = time.perf_counter()
                self._forward([row] * rows)
                times.append(time.perf_counter() - started)
            return min(times)

        single, full = best_time(1), best_time(CALIBRATION_ROWS)
        per_token = max(full - single, 1e-9) / ((CALIBRATION_ROWS - 1) * CALIBRATION_WIDTH)
        return max(single - CALIBRATION_WIDTH * per_token, 0.0) / per_token

    async def encode(self, texts: Sequence[str], truncate: bool, deadline: float | None) -> list[EncodedText]:
        """The output row of every text, in order, each computed as if the text were alone (batch invariance
        where the model needs it: see one_text_per_run)."""
        self.batcher.admit(len(texts), deadline)  # an overloaded replica refuses before it spends work
        if len(texts) == 1 and self.batcher.idle and self._direct_slots.acquire(blocking=False):
            return [await self._encode_directly(texts[0], truncate)]
        self._lone_requests = 0
        trace = tracing.current_context()
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
            tokenized = self._tokenize(texts, truncate, trace)
        else:
            loop = asyncio.get_running_loop()
            tokenized = await loop.run_in_executor(self._tokenize_pool, self._tokenize, texts, truncate, trace)
        rows = await self.batcher.submit_many([item for item, _ in tokenized], deadline)
        return [
            EncodedText(row, item.length, truncated) for row, (item, truncated) in zip(rows, tokenized, strict=True)
        ]

    async def _encode_directly(self, text: str, truncate: bool) -> EncodedText:
        """With a direct slot taken: the text on an inference thread, on the solo runner when no other direct run
        is going on and the request before ran alone too."""
        self._lone_requests = self._lone_requests + 1 if self._direct_runs == 0 else 0
        runner = self._solo_runner if self._lone_requests > 1 and self._solo_runner is not None else self.runner
        self._direct_runs += 1
        loop = asyncio.get_running_loop()
        try:
            running = loop.run_in_executor(
                self._infer_pool, self._run_alone, text, truncate, runner, tracing.current_context()
            )
        except RuntimeError:  # the pool is shut down (closing): the run never starts, so its slot comes back here
            self._direct_runs -= 1
            self._direct_slots.release()
            raise
        try:
            encoded = await running
        except ModelFailure as failure:
            self._failures.failed(failure)
            raise
        finally:
            self._direct_runs -= 1
        self._failures.succeeded()
        return encoded

    def _run_alone(self, text: str, truncate: bool, runner: OnnxRunner, trace: Context | None) -> EncodedText:
        """On an inference thread: tokenize one text and run it on `runner`, recorded as a batch of one; gives
        its direct slot back when done."""
        try:
            [(item, truncated)] = self._tokenize([text], truncate, trace)
            started = time.perf_counter()
            self._record_batch([item], started)
            if runner is self._solo_runner:
                self._threads.float_freely()
            [row], timing = self._timed_forward([item], runner)
            metrics.INFERENCE_RUNS.labels(*self._labels).inc()
            _trace_batch([item], [[0]], [timing], started)
            return EncodedText(row, item.length, truncated)
        finally:
            self._direct_slots.release()

    def _record_batch(self, items: list[EncoderItem], started: float) -> None:
        labels = self._labels
        queue_duration = metrics.QUEUE_DURATION.labels(*labels)
        for item in items:
            queue_duration.observe(started - item.queued_at)
        metrics.BATCH_SIZE.labels(*labels).observe(len(items))
        metrics.BATCHES.labels(*labels).inc()
        metrics.BATCH_ITEMS.labels(*labels).inc(len(items))

    def predict_batch(self, items: list[EncoderItem]) -> Awaitable[list[np.ndarray | BaseException]]:
        """Hand the batch's runs to the inference threads now, on the loop, and return an awaitable of the
        output row per item (the batcher delivers the previous batch's results while these run)."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self._record_batch(items, started)
        lengths = [item.length for item in items]
        if self.one_text_per_run:
            groups = [[index] for index in range(len(items))]
        else:
            groups = length_groups(lengths, self.run_overhead_tokens)
        runs = spread(groups, lengths, self._inference_threads)
        # The threads take the runs (costliest first) from one queue as they get free: one hand-over per thread,
        # however many runs, and no thread idles while runs wait.
        waiting = deque((index, [items[i] for i in run]) for index, run in enumerate(runs))
        outputs: list[list[np.ndarray]] = [[] for _ in runs]
        timings: list[RunTiming | None] = [None] * len(runs)
        running = [
            loop.run_in_executor(self._infer_pool, self._run_waiting, waiting, outputs, timings)
            for _ in range(min(self._inference_threads, len(runs)))
        ]
        return self._collect(items, runs, outputs, timings, running, started)

    async def _collect(
        self,
        items: list[EncoderItem],
        runs: list[list[int]],
        outputs: list[list[np.ndarray]],
        timings: list[RunTiming | None],
        running: list[asyncio.Future[None]],
        started: float,
    ) -> list[np.ndarray | BaseException]:
        try:
            await asyncio.gather(*running)
        except ModelFailure as failure:  # counted per batch, on the loop: the runs of one batch fail together
            self._failures.failed(failure)
            raise
        self._failures.succeeded()
        _trace_batch(items, runs, timings, started)
        results: list[np.ndarray | BaseException] = [np.empty(0)] * len(items)
        for run, rows in zip(runs, outputs, strict=True):
            for index, row in zip(run, rows, strict=True):
                results[index] = row
        return results

    def _tokenize(
        self, texts: Sequence[str], truncate: bool, trace: Context | None = None
    ) -> list[tuple[EncoderItem, bool]]:
        # One text is encoded as it is: encode_batch hands even a single text to the tokenizer's thread pool.
        encodings = self._tokenizer.encode_batch(list(texts)) if len(texts) > 1 else [self._tokenizer.encode(texts[0])]
        now = time.perf_counter()
        items = []
        for index, encoding in enumerate(encodings):
            truncated = bool(encoding.overflowing)
            if truncated and not truncate:
                raise InvalidArgument(
                    f"texts[{index}] is longer than the model's max_sequence_length of {self.max_length} tokens; "
                    "shorten it or set truncate=true"
                )
            ids = np.asarray(encoding.ids, dtype=np.int64)
            items.append((EncoderItem(ids, np.asarray(encoding.type_ids, dtype=np.int64), now, trace), truncated))
        return items

    def _run_waiting(
        self,
        waiting: deque[tuple[int, list[EncoderItem]]],
        outputs: list[list[np.ndarray]],
        timings: list[RunTiming | None],
    ) -> None:
        """On an inference thread: onnxruntime runs taken from `waiting` until it is empty, each output and timing
        stored at its run's index and recorded in the run metrics."""
        self._threads.pin()
        runs = 0
        while True:
            try:
                index, items = waiting.popleft()  # atomic: the threads share the queue without a lock
            except IndexError:
                break
            outputs[index], timings[index] = self._timed_forward(items)
            runs += 1
        metrics.INFERENCE_RUNS.labels(*self._labels).inc(runs)

    def _timed_forward(
        self, items: list[EncoderItem], runner: OnnxRunner | None = None
    ) -> tuple[list[np.ndarray], RunTiming]:
        """One run, recorded in inference_duration_seconds and padding_efficiency_ratio."""
        labels = self._labels
        started = time.perf_counter()
        rows, padding_efficiency = self._forward(items, runner)
        ended = time.perf_counter()
        metrics.INFERENCE_DURATION.labels(*labels).observe(ended - started)
        metrics.PADDING_EFFICIENCY.labels(*labels).observe(padding_efficiency)
        return rows, RunTiming(started, ended, padding_efficiency)

    def _forward(self, items: list[EncoderItem], runner: OnnxRunner | None = None) -> tuple[list[np.ndarray], float]:
        """Pad the items to the longest and run them (on `runner`, by default the batches' runner); returns their
        output rows and real / padded tokens."""
        width = max(item.length for item in items)
        ids = np.full((len(items), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(items), width), dtype=np.int64)
        type_ids = np.zeros((len(items), width), dtype=np.int64)
        for row, item in enumerate(items):
            ids[row, : item.length] = item.ids
            mask[row, : item.length] = 1
            type_ids[row, : item.length] = item.type_ids
        available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
        (output,) = (runner or self.runner).run({n: available[n] for n in self._feed_names}, [self._output_name])
        return list(output), float(mask.sum()) / mask.size


def _trace_batch(
    items: list[EncoderItem], runs: list[list[int]], timings: Sequence[RunTiming | None], started: float
) -> None:
    """For each traced item: its wait in the queue, the batch it joined and the onnxruntime run that held it."""
    if not tracing.active():  # every batch passes here: skip the walk over its items
        return
    ended = time.perf_counter()
    for run, timing in zip(runs, timings, strict=True):
        for index in run:
            item = items[index]
            if item.trace is None or timing is None:
                continue
            tracing.span_between("classifier.queue", item.trace, item.queued_at, started)
            batch = tracing.span_between(
                "classifier.batch", item.trace, started, ended, **{"batch.size": len(items), "batch.runs": len(runs)}
            )
            tracing.span_between(
                "onnxruntime.run", batch, timing.started, timing.ended,
                **{"run.rows": len(run), "run.padding_efficiency": round(timing.padding_efficiency, 4)},
            )  # fmt: skip
