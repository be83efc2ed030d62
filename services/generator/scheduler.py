"""ContinuousScheduler: iteration-level batching of one model's sequences (as in Orca, vLLM, TGI).

One asyncio task per model runs the loop schedule -> step -> update:
- schedule (event loop): drop cancelled and expired waiting requests, admit waiting ones within the budgets;
- step (worker thread): ONE forward pass, sampling and detokenizing per sequence. A prefill of the admitted
  sequences whenever any could be admitted (their first tokens are published at once), else a decode for every
  running sequence, which the prefilled ones join first. Prefills go first (as in TGI), and a request that would
  be admitted at once stops the decode in progress (onnxruntime gives up between graph nodes; the batch is left
  as it was and decoded again after the prefill), so that it waits for its own prefill only. Never two decodes
  in a row are stopped, so decoding always advances; free slots bound how many prefills come between two decodes;
- update (event loop): publish text deltas to the callers; finished and cancelled sequences leave the batch
  before the next step and free their slot and cache.
The loop and the worker strictly alternate, so the batch and the sequences are never touched by both at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.core import metrics
from services.core.errors import DeadlineExceeded, ModelFailure, QueueFull, Unavailable
from services.core.runner import FailureStreak, RunStop, RunStopped
from services.generator.batch import DecodeBatch
from services.generator.decoder import DecoderRunner
from services.generator.sequence import Sequence, TextDelta

log = logging.getLogger(__name__)
SERVICE = "generator"


@dataclass(frozen=True)
class SchedulerBudgets:
    max_running_sequences: int
    max_batch_total_tokens: int
    max_prefill_tokens: int
    max_waiting_requests: int


class ContinuousScheduler:
    """Runs submitted sequences to completion in a shared, changing batch. `submit` raises QueueFull when
    max_running_sequences + max_waiting_requests are running or waiting, and Unavailable while closing; expired
    waiting sequences receive DeadlineExceeded; a failed step gives every running sequence a ModelFailure."""

    def __init__(
        self,
        decoder: DecoderRunner,
        budgets: SchedulerBudgets,
        pad_id: int,
        model_label: str,
        on_fatal: Callable[[str], None],
    ) -> None:
        self._decoder = decoder
        self._budgets = budgets
        self._pad_id = pad_id
        self._label = model_label
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._batch: DecodeBatch | None = None
        self._joining: list[DecodeBatch] = []  # prefilled since the last decode, which merges them
        self._decode_stop: RunStop | None = None  # set while a decode that a newcomer may stop is running
        self._may_stop_decode = True  # false from a stopped decode until a decode goes through
        self._wakeup = asyncio.Event()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"decode-{model_label}")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failures = FailureStreak(model_label, "decode steps", on_fatal)
        metrics.RUNNING_SEQUENCES.labels(SERVICE, model_label).set_function(lambda: len(self._running))
        metrics.WAITING_SEQUENCES.labels(SERVICE, model_label).set_function(lambda: len(self._waiting))
        # The queue that fills up to RESOURCE_EXHAUSTED: requests waiting beyond the free running slots.
        metrics.QUEUE_DEPTH.labels(SERVICE, model_label).set_function(
            lambda: max(0, len(self._running) + len(self._waiting) - budgets.max_running_sequences)
        )
        metrics.QUEUE_CAPACITY.labels(SERVICE, model_label).set(budgets.max_waiting_requests)

    @property
    def running(self) -> int:
        return sum(1 for s in self._running if s.active)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"scheduler-{self._label}")

    def submit(self, sequence: Sequence) -> None:
        """Queue a sequence; its deltas arrive on `sequence.events`."""
        if self._closing or self._task is None:
            raise Unavailable("the server is draining and accepts no new work; retry on another replica")
        # Requests that arrive together wait for the next step even while slots are free: the limit is on
        # everything taken in, so that those slots are not counted against the waiting room.
        budgets, running = self._budgets, self.running
        if running + len(self._waiting) >= budgets.max_running_sequences + budgets.max_waiting_requests:
            raise QueueFull(
                f"{running} requests running and {len(self._waiting)} waiting: at most max_running_sequences="
                f"{budgets.max_running_sequences} + max_waiting_requests={budgets.max_waiting_requests} at once; "
                "retry with backoff"
            )
        self._waiting.append(sequence)
        self._wakeup.set()
        if self._decode_stop is not None and self._starts_at_once(sequence):
            self._decode_stop.request()

    def _starts_at_once(self, sequence: Sequence) -> bool:
        """Whether the next step would prefill `sequence`: first in line, a free slot, room in the token budget."""
        active = [s for s in self._running if s.active]
        return len(self._waiting) == 1 and self._has_room(len(active), sum(s.reserved_tokens for s in active), sequence)

    def _has_room(self, running: int, reserved_tokens: int, sequence: Sequence) -> bool:
        """Whether `sequence` may join `running` sequences that reserve `reserved_tokens` of the token budget."""
        budgets = self._budgets
        return (
            running < budgets.max_running_sequences
            and reserved_tokens + sequence.reserved_tokens <= budgets.max_batch_total_tokens
        )

    def cancel(self, sequence: Sequence) -> None:
        """The caller went away: the sequence leaves at the next step (or the queue, if it never started)."""
        if sequence.active:
            sequence.cancelled = True
            self._count_finish("cancelled")
            self._wakeup.set()

    async def aclose(self) -> None:
        """Refuse new sequences, finish the running and waiting ones, stop the loop and the worker."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._worker.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._running = [s for s in self._running if s.active]
            if not self._running:
                self._batch, self._joining = None, []  # frees the cache of sequences that were cancelled
            admitted = self._admit(loop.time())
            if not self._running and not admitted:
                if self._closing and not self._waiting:
                    return
                self._wakeup.clear()
                if not self._waiting:
                    await self._wakeup.wait()
                continue
            self._running.extend(admitted)
            if admitted:
                step = functools.partial(self._prefill, admitted)
            else:
                self._decode_stop = RunStop() if self._may_stop_decode else None
                step = functools.partial(self._decode, self._decode_stop)
            try:
                deltas = await loop.run_in_executor(self._worker, step)
            except RunStopped:
                metrics.STOPPED_STEPS.labels(SERVICE, self._label).inc()
                self._may_stop_decode = False
                continue
            except ModelFailure as failure:
                self._fail_running(failure)
                continue
            except Exception as error:  # a bug in a step fails its sequences, not the loop that serves the rest
                log.exception("%s: step failed unexpectedly", self._label)
                self._fail_running(ModelFailure(f"unexpected {error!r}"))
                continue
            finally:
                self._decode_stop = None
            if not admitted:
                self._may_stop_decode = True  # a decode went through; the next one may be stopped again
            self._failures.succeeded()
            self._publish(deltas)
            # Let callers' handlers run (stream writes, cancellations) between steps.
            await asyncio.sleep(0)

    def _publish(self, deltas: list[tuple[Sequence, TextDelta]]) -> None:
        for sequence, delta in deltas:
            if sequence.cancelled:
                continue
            sequence.events.put_nowait(delta)
            if delta.finish is not None:
                self._record_finished(sequence)

    def _admit(self, now: float) -> list[Sequence]:
        """Waiting sequences that fit the budgets, oldest first (no overtaking, so none starves)."""
        reserved = sum(s.reserved_tokens for s in self._running)
        admitted: list[Sequence] = []
        widest = 0
        while self._waiting:
            sequence = self._waiting[0]
            if sequence.cancelled:
                self._waiting.popleft()
                continue
            if sequence.deadline is not None and now >= sequence.deadline:
                self._waiting.popleft()
                sequence.cancelled = True  # gone from the scheduler; its caller gets the error below
                sequence.events.put_nowait(
                    DeadlineExceeded("deadline exceeded while waiting for a free slot; no token was generated")
                )
                self._count_finish("deadline")
                continue
            width = max(widest, len(sequence.prompt_ids))
            if not self._has_room(len(self._running) + len(admitted), reserved, sequence) or (
                admitted and width * (len(admitted) + 1) > self._budgets.max_prefill_tokens
            ):
                break
            self._waiting.popleft()
            admitted.append(sequence)
            reserved += sequence.reserved_tokens
            widest = width
        return admitted

    def _prefill(self, admitted: list[Sequence]) -> list[tuple[Sequence, TextDelta]]:
        """Worker thread: prefill the admitted prompts and sample their first tokens; they join the running batch
        at the next decode."""
        started = time.perf_counter()
        joining, logits = DecodeBatch.prefill(self._decoder, admitted, self._pad_id)
        self._observe_step("prefill", started)
        metrics.PROMPT_TOKENS.labels(SERVICE, self._label).inc(sum(len(s.prompt_ids) for s in admitted))
        deltas = self._advance(admitted, logits)
        for sequence in admitted:
            if (ttft := sequence.time_to_first_token_s()) is not None:
                metrics.TIME_TO_FIRST_TOKEN.labels(SERVICE, self._label).observe(ttft)
        self._joining.append(joining)
        return deltas

    def _decode(self, stop: RunStop | None) -> list[tuple[Sequence, TextDelta]]:
        """Worker thread: merge the sequences prefilled since the last decode, drop finished and cancelled rows,
        and decode one token for every other row (unless `stop` is requested first: RunStopped)."""
        parts = [b for b in (self._batch, *self._joining) if b is not None]
        kept = [k for b in parts if (k := b.filter([i for i, s in enumerate(b.sequences) if s.active])) is not None]
        self._joining = []
        batch = self._batch = DecodeBatch.concatenate(kept) if kept else None
        deltas: list[tuple[Sequence, TextDelta]] = []
        if batch is not None:
            started = time.perf_counter()
            logits = batch.decode(self._decoder, stop)
            self._observe_step("decode", started)
            metrics.BATCH_SIZE.labels(SERVICE, self._label).observe(len(batch.sequences))
            metrics.BATCH_OCCUPANCY.labels(SERVICE, self._label).observe(
                len(batch.sequences) / self._budgets.max_running_sequences
            )
            deltas = self._advance(batch.sequences, logits)
        return deltas

    def _advance(self, sequences: list[Sequence], logits: np.ndarray) -> list[tuple[Sequence, TextDelta]]:
        deltas = []
        advanced = 0
        for row, sequence in enumerate(sequences):
            if not sequence.active:
                continue  # cancelled while this step ran; it leaves the batch before the next one
            advanced += 1
            if (delta := sequence.advance(logits[row])) is not None:
                deltas.append((sequence, delta))
        metrics.GENERATED_TOKENS.labels(SERVICE, self._label).inc(advanced)
        return deltas

    def _observe_step(self, phase: str, started: float) -> None:
        metrics.STEP_DURATION.labels(SERVICE, self._label, phase).observe(time.perf_counter() - started)

    def _record_finished(self, sequence: Sequence) -> None:
        assert sequence.finish is not None
        self._count_finish(sequence.finish.value)
        per_token = sequence.time_per_output_token_s()
        if per_token is not None:
            metrics.TIME_PER_OUTPUT_TOKEN.labels(SERVICE, self._label).observe(per_token)

    def _count_finish(self, reason: str) -> None:
        metrics.FINISHED_SEQUENCES.labels(SERVICE, self._label, reason).inc()

    def _fail_running(self, failure: ModelFailure) -> None:
        log.error("%s: step failed: %s", self._label, failure)
        for sequence in self._running:
            if sequence.active:
                sequence.cancelled = True  # leaves the batch; its caller gets the failure
                sequence.events.put_nowait(failure)
                self._count_finish("error")
        self._running = []
        self._batch, self._joining = None, []
        self._failures.failed(failure)
