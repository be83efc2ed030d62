"""ContinuousScheduler: iteration-level batching of one model's sequences (as in Orca, vLLM, TGI).

One asyncio task per model runs the loop schedule -> step -> update:
- schedule (event loop): cancellations and expired deadlines take effect, then the policy (policy.py) picks the
  next step: a prefill of the waiting requests that fit, else a decode of every running sequence;
- step (worker thread): the executor (executor.py) runs ONE forward pass, sampling and detokenizing. A request that
  would start at once stops a stoppable decode in progress (onnxruntime gives up between graph nodes; the batch is
  left as it was and decoded again after the prefill), so that it waits for its own prefill only;
- update (event loop): publish text deltas to the callers and record the step (observer.py); finished and ended
  sequences leave the batch before the next step and free their slot and cache.
The loop and the worker strictly alternate, so the batch and the sequences are never touched by both at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from services.core.errors import DeadlineExceeded, ModelFailure, Unavailable
from services.core.repository import ModelVersion
from services.core.runner import FailureStreak, RunStop, RunStopped
from services.generator.decoder import DecoderRunner
from services.generator.executor import StepExecutor, StepResult
from services.generator.observer import SchedulerMetrics
from services.generator.policy import Decode, Prefill, SchedulerBudgets, SchedulingPolicy, Step
from services.generator.prefix_cache import PrefixCache
from services.generator.sequence import Outcome, Sequence

log = logging.getLogger(__name__)


class ContinuousScheduler:
    """Runs submitted sequences to completion in a shared, changing batch. `submit` raises QueueFull when
    max_running_sequences + max_waiting_requests are running or waiting, and Unavailable while closing; expired
    waiting sequences receive DeadlineExceeded; a failed step gives every running sequence a ModelFailure."""

    def __init__(
        self,
        decoder: DecoderRunner,
        budgets: SchedulerBudgets,
        pad_id: int,
        model: ModelVersion,
        on_fatal: Callable[[str], None],
        prefix_cache: PrefixCache,
    ) -> None:
        self.policy = SchedulingPolicy(budgets)
        self._executor = StepExecutor(decoder, pad_id, prefix_cache, budgets.max_prefill_tokens)
        self._metrics = SchedulerMetrics(self.policy, prefix_cache, model.metric_labels)
        self._label = model_label = model.label
        self._decode_stop: RunStop | None = None  # set while a decode that a newcomer may stop is running
        self._wakeup = asyncio.Event()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"decode-{model_label}")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failures = FailureStreak(model_label, "decode steps", on_fatal)

    @property
    def running(self) -> int:
        return sum(1 for s in self.policy.running if s.active)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"scheduler-{self._label}")

    def submit(self, sequence: Sequence) -> None:
        """Queue a sequence; its deltas arrive on `sequence.events`."""
        if self._closing or self._task is None:
            raise Unavailable("the server is draining and accepts no new work; retry on another replica")
        self.policy.accept(sequence)
        self._wakeup.set()
        if self._decode_stop is not None and self.policy.starts_at_once(sequence):
            self._decode_stop.request()

    def cancel(self, sequence: Sequence) -> None:
        """The caller went away: the sequence leaves before the next step (a no-op once it finished)."""
        self.policy.cancel(sequence)
        self._wakeup.set()

    async def aclose(self) -> None:
        """Refuse new sequences, finish the running and waiting ones, stop the loop and the worker."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._worker.shutdown(wait=True)
        self._metrics.close()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._end_early(loop.time())
            step = self.policy.schedule()
            if step is None:
                self._executor.reset()  # frees the cache of sequences that ended
                if self._closing and not self.policy.waiting:
                    return
                self._wakeup.clear()
                if not self.policy.waiting:
                    await self._wakeup.wait()
                continue
            result = await self._run(loop, step)
            if result is not None:
                self._update(step, result)
            # Let callers' handlers run (stream writes, cancellations) between steps.
            await asyncio.sleep(0)

    async def _run(self, loop: asyncio.AbstractEventLoop, step: Step) -> StepResult | None:
        """The step on the worker thread; None when it was stopped or failed (its sequences are told)."""
        stop = self._decode_stop = RunStop() if isinstance(step, Decode) and step.stoppable else None
        if isinstance(step, Prefill):
            admitted_at = time.perf_counter()
            for sequence in step.sequences:
                sequence.admitted_at = sequence.admitted_at or admitted_at
        try:
            result = await loop.run_in_executor(self._worker, self._executor.run, step, stop)
        except RunStopped:
            self._metrics.stopped_step()
            self.policy.decode_stopped()
            return None
        except ModelFailure as failure:
            self._fail_running(failure)
            return None
        except Exception as error:  # a bug in a step fails its sequences, not the loop that serves the rest
            log.exception("%s: step failed unexpectedly", self._label)
            self._fail_running(ModelFailure(f"unexpected {error!r}"))
            return None
        finally:
            self._decode_stop = None
        if isinstance(step, Decode):
            self.policy.decode_done()
        self._failures.succeeded()
        return result

    def _end_early(self, now: float) -> None:
        """Between steps: cancellations take effect, and waiting requests whose deadline passed are told."""
        self._metrics.ended(self.policy.apply_cancellations(), Outcome.CANCELLED)
        expired = self.policy.expire(now)
        for sequence in expired:
            sequence.events.put_nowait(
                DeadlineExceeded("deadline exceeded while waiting for a free slot; no token was generated")
            )
        self._metrics.ended(expired, Outcome.DEADLINE)

    def _update(self, step: Step, result: StepResult) -> None:
        # Callers that left during the step get nothing of it.
        self._metrics.ended(self.policy.apply_cancellations(), Outcome.CANCELLED)
        self._metrics.step(result)
        if isinstance(step, Prefill):
            for sequence in step.sequences:
                self._metrics.first_token(sequence)
        for sequence, delta in result.deltas:
            if sequence.ended is not None:
                continue
            sequence.events.put_nowait(delta)
            if delta.finish is not None:
                self._metrics.finished(sequence)

    def _fail_running(self, failure: ModelFailure) -> None:
        log.error("%s: step failed: %s", self._label, failure)
        failed = self.policy.fail_running()
        for sequence in failed:
            sequence.events.put_nowait(failure)
        self._metrics.ended(failed, Outcome.FAILED)
        self._executor.reset()
        self._failures.failed(failure)
