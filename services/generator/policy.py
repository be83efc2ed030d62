"""SchedulingPolicy: what the generator runs next, decided from state alone (no threads, no onnxruntime, no clock
of its own), so that tests can drive it step by step with made-up model outputs, as vLLM's scheduler tests do.

The rules:
- admission: refuse a request once max_running_sequences + max_waiting_requests are running or waiting;
- order: waiting requests start oldest first (none overtakes, so none starves), as many as fit the running slots,
  the token budget (prompt + max new tokens of every running sequence) and the prefill budget (padded prompt
  tokens of one prefill);
- prefill first: whenever a waiting request can start, the next step is its prefill; otherwise a decode of every
  running sequence;
- chunked prefill: a prompt longer than the prefill budget is prefilled a chunk per step (the executor cuts the
  chunks), and while it is, chunks and decodes of the others take turns, so a long prompt never stalls the running
  streams for more than one chunk;
- stopping a decode: a request that would start at once may stop the decode in progress, but never two decodes in
  a row are stopped, so decoding always advances;
- endings other than a finish are distinct outcomes: cancelled by the caller, deadline passed while waiting, or
  failed with the step. Cancellation is requested at any time and takes effect between steps, so the worker that
  runs a step never sees a sequence change under it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from services.core.errors import QueueFull
from services.generator.sequence import Outcome, Sequence


@dataclass(frozen=True)
class SchedulerBudgets:
    max_running_sequences: int
    max_batch_total_tokens: int
    max_prefill_tokens: int
    max_waiting_requests: int


@dataclass(frozen=True)
class Prefill:
    """Run these prompts; their sequences join the running batch at the next decode."""

    sequences: list[Sequence]


@dataclass(frozen=True)
class Decode:
    """One token for every running sequence; `stoppable`: a newcomer may stop it."""

    sequences: list[Sequence]
    stoppable: bool


Step = Prefill | Decode


class SchedulingPolicy:
    """The waiting queue, the running set and the rules above. Call from one thread (the event loop)."""

    def __init__(self, budgets: SchedulerBudgets) -> None:
        self.budgets = budgets
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._cancel_requests: list[Sequence] = []
        self._may_stop_decode = True  # false from a stopped decode until a decode goes through
        self._decoded_since_chunk = True  # false from a prompt's chunk until a decode goes through

    def accept(self, sequence: Sequence) -> None:
        """Queue a new request, or QueueFull naming the limits. Requests that arrive together wait for the next
        step even while slots are free: the limit counts everything taken in."""
        budgets, running = self.budgets, len(self._active_running())
        if running + len(self.waiting) >= budgets.max_running_sequences + budgets.max_waiting_requests:
            raise QueueFull(
                f"{running} requests running and {len(self.waiting)} waiting: at most max_running_sequences="
                f"{budgets.max_running_sequences} + max_waiting_requests={budgets.max_waiting_requests} at once; "
                "retry with backoff"
            )
        self.waiting.append(sequence)

    def starts_at_once(self, sequence: Sequence) -> bool:
        """Whether the next step would prefill `sequence`: first in line, a free slot, room in the token budget."""
        return (
            len(self.waiting) == 1
            and self.waiting[0] is sequence
            and self._has_room(len(active := self._active_running()), sum(s.reserved_tokens for s in active), sequence)
        )

    def cancel(self, sequence: Sequence) -> None:
        """The caller went away; takes effect at the next `apply_cancellations`."""
        self._cancel_requests.append(sequence)

    def apply_cancellations(self) -> list[Sequence]:
        """Between steps: the sequences that end as cancelled now (not those already finished or ended)."""
        ended = []
        for sequence in self._cancel_requests:
            if sequence.active:
                sequence.end(Outcome.CANCELLED)
                ended.append(sequence)
        self._cancel_requests = []
        return ended

    def expire(self, now: float) -> list[Sequence]:
        """Waiting sequences whose deadline to start has passed; they end with Outcome.DEADLINE."""
        expired = [s for s in self.waiting if s.active and s.deadline is not None and now >= s.deadline]
        for sequence in expired:
            sequence.end(Outcome.DEADLINE)
        return expired

    def schedule(self) -> Step | None:
        """The next step, or None when there is nothing to run. Sequences that ended leave first."""
        self.running = [s for s in self.running if s.active]
        self.waiting = deque(s for s in self.waiting if s.active)
        admitted = self._admit()
        if admitted:
            self.running.extend(admitted)
            self._decoded_since_chunk = False
            return Prefill(admitted)
        prefilling = [s for s in self.running if not s.output_ids]  # a long prompt between its chunks
        decoding = [s for s in self.running if s.output_ids]
        if prefilling and (self._decoded_since_chunk or not decoding):
            self._decoded_since_chunk = False
            return Prefill(prefilling[:1])  # the oldest first: one chunk within the prefill budget
        if decoding:
            return Decode(decoding, stoppable=self._may_stop_decode)
        return None

    def decode_stopped(self) -> None:
        """The decode was stopped for a newcomer: the next decode may not be."""
        self._may_stop_decode = False

    def decode_done(self) -> None:
        self._may_stop_decode = True
        self._decoded_since_chunk = True

    def fail_running(self) -> list[Sequence]:
        """The step failed: every running sequence ends with Outcome.FAILED; returns them."""
        failed = self._active_running()
        for sequence in failed:
            sequence.end(Outcome.FAILED)
        self.running = []
        return failed

    @property
    def queue_depth(self) -> int:
        """Requests waiting beyond the free running slots: the queue that fills up to QueueFull."""
        return max(0, len(self.running) + len(self.waiting) - self.budgets.max_running_sequences)

    def _active_running(self) -> list[Sequence]:
        return [s for s in self.running if s.active]

    def _admit(self) -> list[Sequence]:
        reserved = sum(s.reserved_tokens for s in self.running)
        admitted: list[Sequence] = []
        widest = 0
        while self.waiting:
            sequence = self.waiting[0]
            width = max(widest, len(sequence.prompt_ids))
            if not self._has_room(len(self.running) + len(admitted), reserved, sequence) or (
                admitted and width * (len(admitted) + 1) > self.budgets.max_prefill_tokens
            ):
                break
            self.waiting.popleft()
            admitted.append(sequence)
            reserved += sequence.reserved_tokens
            widest = width
        return admitted

    def _has_room(self, running: int, reserved_tokens: int, sequence: Sequence) -> bool:
        budgets = self.budgets
        return (
            running < budgets.max_running_sequences
            and reserved_tokens + sequence.reserved_tokens <= budgets.max_batch_total_tokens
        )
